//! The TCP state machine: a pure function of (state, FINs seen, direction, flags), shaped
//! after netfilter's `tcp_conntracks` table (nf_conntrack_proto_tcp.c) without its window
//! tracking: the dataplane only needs the state to pick a timeout and to tell active
//! (established) from inactive connections.

use super::{Dir, TcpState};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// `fins`: bit 0 = the original direction sent a FIN, bit 1 = the reply direction did.
/// Returns the next (state, fins).
pub fn next(state: TcpState, fins: u8, dir: Dir, flags: u8) -> (TcpState, u8) {
    use TcpState::*;
    if flags & RST != 0 {
        return (Close, fins);
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    let fin = flags & FIN != 0;
    let me = match dir {
        Dir::Original => 1u8,
        Dir::Reply => 2u8,
    };
    match state {
        None => {
            if syn && !ack && dir == Dir::Original {
                (SynSent, 0)
            } else if ack && !syn {
                // Mid-stream pickup (netfilter's tcp_loose=1): a flow that started before we
                // did, or whose first packets went another way, is taken as established.
                (Established, 0)
            } else {
                (None, fins)
            }
        }
        SynSent => match dir {
            // SYN-ACK, or a bare SYN for a simultaneous open.
            Dir::Reply if syn => (SynRecv, fins),
            _ => (SynSent, fins),
        },
        SynRecv => {
            if dir == Dir::Original && ack && !syn {
                if fin {
                    (FinWait, me)
                } else {
                    (Established, fins)
                }
            } else {
                (SynRecv, fins)
            }
        }
        Established | FinWait | CloseWait | LastAck => {
            if fin {
                let fins = fins | me;
                if fins == 3 {
                    (LastAck, fins)
                } else {
                    (FinWait, fins)
                }
            } else if ack {
                match state {
                    // The side that has not closed acknowledges the other's FIN.
                    FinWait if fins & me == 0 => (CloseWait, fins),
                    LastAck => (TimeWait, fins),
                    s => (s, fins),
                }
            } else {
                (state, fins)
            }
        }
        TimeWait | Close => {
            if syn && !ack && dir == Dir::Original {
                // The client reuses the tuple: a new connection on the same entry.
                (SynSent, 0)
            } else {
                (state, fins)
            }
        }
    }
}
