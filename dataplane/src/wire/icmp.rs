//! ICMP for IPv4 (RFC 792).
//!
//! Every message starts with type, code, checksum and a 4-byte "rest of header" whose
//! meaning depends on the type: identifier/sequence for echo, unused or next-hop MTU
//! (RFC 1191 §4) for Destination Unreachable. The checksum covers the whole ICMP message,
//! so wrap the *entire* IP payload, not just the header.
//!
//! For error messages, [`Packet::payload`] is the quoted datagram: its IP header plus at
//! least 8 bytes of its payload (RFC 792; RFC 1812 §4.3.2.3 allows more). Its IP total
//! length describes the *original* packet, so parse it with
//! [`Ipv4Packet::check_header_len`](crate::wire::ipv4::Packet::check_header_len), not
//! `check_len`; the quoted L4 ports are the first 4 bytes after that header.

use super::{Error, Result, checksum};

enum_with_unknown! {
    /// ICMP message types (RFC 792, IANA "ICMP Type Numbers").
    pub enum Message(u8) {
        /// Echo reply (RFC 792).
        EchoReply = 0,
        /// Destination unreachable (RFC 792).
        DstUnreachable = 3,
        /// Redirect (RFC 792).
        Redirect = 5,
        /// Echo request (RFC 792).
        EchoRequest = 8,
        /// Router advertisement (RFC 1256).
        RouterAdvert = 9,
        /// Router solicitation (RFC 1256).
        RouterSolicit = 10,
        /// Time exceeded (RFC 792).
        TimeExceeded = 11,
        /// Parameter problem (RFC 792).
        ParamProblem = 12,
        /// Timestamp (RFC 792).
        Timestamp = 13,
        /// Timestamp reply (RFC 792).
        TimestampReply = 14,
    }
}

impl Message {
    /// An error message that quotes an offending datagram (RFC 1122 §3.2.2); conntrack
    /// treats these as RELATED to the quoted flow.
    #[inline]
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Message::DstUnreachable
                | Message::Redirect
                | Message::TimeExceeded
                | Message::ParamProblem
        )
    }
}

enum_with_unknown! {
    /// Codes of Destination Unreachable (RFC 792, RFC 1812 §5.2.7.1).
    pub enum DstUnreachable(u8) {
        /// Network unreachable.
        NetUnreachable = 0,
        /// Host unreachable.
        HostUnreachable = 1,
        /// Protocol unreachable.
        ProtoUnreachable = 2,
        /// Port unreachable.
        PortUnreachable = 3,
        /// Fragmentation needed and DF set; carries the next-hop MTU (RFC 1191 §4).
        FragRequired = 4,
        /// Source route failed.
        SrcRouteFailed = 5,
        /// Destination network unknown.
        DstNetUnknown = 6,
        /// Destination host unknown.
        DstHostUnknown = 7,
        /// Communication administratively prohibited (RFC 1812).
        AdminProhibit = 13,
    }
}

enum_with_unknown! {
    /// Codes of Time Exceeded (RFC 792).
    pub enum TimeExceeded(u8) {
        /// TTL exceeded in transit.
        TtlExpired = 0,
        /// Fragment reassembly time exceeded.
        FragExpired = 1,
    }
}

mod field {
    use crate::wire::Field;

    // RFC 792, common to all messages.
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    // Echo / echo reply.
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    // Destination unreachable, fragmentation needed (RFC 1191 §4).
    pub const MTU: Field = 6..8;
    pub const DATA: usize = 8;
}

/// Length of the ICMP header (type, code, checksum, rest of header).
pub const HEADER_LEN: usize = field::DATA;

/// A view of an ICMPv4 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Err` if the buffer is shorter than 8 bytes.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code (interpret with [`DstUnreachable`]/[`TimeExceeded`] by type).
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum as on the wire.
    #[inline]
    pub fn checksum(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Bytes 4..8, whatever the type.
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        let mut r = [0u8; 4];
        r.copy_from_slice(&self.buffer.as_ref()[field::REST]);
        r
    }

    /// Echo identifier (echo request/reply). Ping through a NAT rewrites this like a port.
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (echo request/reply).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191 §4); 0 from old routers.
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::MTU)
    }

    /// Everything after the 8-byte header: echo data, or the quoted datagram of an error.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        super::clamped(self.buffer.as_ref(), field::DATA, usize::MAX)
    }

    /// The checksum over the whole message is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the type.
    #[inline]
    pub fn set_msg_type(&mut self, v: Message) {
        self.buffer.as_mut()[field::TYPE] = v.into();
    }

    /// Sets the code.
    #[inline]
    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    /// Sets the checksum.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets bytes 4..8.
    #[inline]
    pub fn set_rest_of_header(&mut self, v: [u8; 4]) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&v);
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::ECHO_IDENT, v);
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::ECHO_SEQNO, v);
    }

    /// Sets the next-hop MTU (bytes 6..8; bytes 4..6 are "unused" and left alone).
    #[inline]
    pub fn set_next_hop_mtu(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::MTU, v);
    }

    /// Mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        super::clamped_mut(self.buffer.as_mut(), field::DATA, usize::MAX)
    }

    /// Recomputes the checksum over the whole buffer (ICMP has no pseudo-header).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(!sum);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The ICMP headers afgate parses and builds: echo (ping to a VIP, B13) and the errors it
/// generates or translates (TTL expiry, fragmentation needed, unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Destination unreachable; `next_hop_mtu` is meaningful for `FragRequired` (else 0).
    DstUnreachable {
        /// Reason.
        code: DstUnreachable,
        /// Next-hop MTU (RFC 1191 §4).
        next_hop_mtu: u16,
    },
    /// Time exceeded.
    TimeExceeded {
        /// Reason.
        code: TimeExceeded,
    },
}

impl Repr {
    /// Parses the header of a message whose checksum is correct; `Err` for a bad checksum
    /// or a type not listed in [`Repr`].
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error);
        }
        match p.msg_type() {
            Message::EchoRequest => Ok(Repr::EchoRequest {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
            }),
            Message::EchoReply => Ok(Repr::EchoReply {
                ident: p.echo_ident(),
                seq_no: p.echo_seq_no(),
            }),
            Message::DstUnreachable => Ok(Repr::DstUnreachable {
                code: DstUnreachable::from(p.code()),
                next_hop_mtu: p.next_hop_mtu(),
            }),
            Message::TimeExceeded => Ok(Repr::TimeExceeded {
                code: TimeExceeded::from(p.code()),
            }),
            _ => Err(Error),
        }
    }

    /// Header bytes [`emit`](Self::emit) writes: 8.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header and fills the checksum over the **whole** buffer, so write
    /// the payload (echo data, or the quoted datagram) first.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        match *self {
            Repr::EchoRequest { ident, seq_no } | Repr::EchoReply { ident, seq_no } => {
                let ty = if matches!(self, Repr::EchoRequest { .. }) {
                    Message::EchoRequest
                } else {
                    Message::EchoReply
                };
                p.set_msg_type(ty);
                p.set_code(0);
                p.set_echo_ident(ident);
                p.set_echo_seq_no(seq_no);
            }
            Repr::DstUnreachable { code, next_hop_mtu } => {
                p.set_msg_type(Message::DstUnreachable);
                p.set_code(code.into());
                p.set_rest_of_header([0; 4]);
                p.set_next_hop_mtu(next_hop_mtu);
            }
            Repr::TimeExceeded { code } => {
                p.set_msg_type(Message::TimeExceeded);
                p.set_code(code.into());
                p.set_rest_of_header([0; 4]);
            }
        }
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn echo_round_trip() {
        let mut buf = [0u8; 12];
        buf[8..].copy_from_slice(b"ping");
        let r = Repr::EchoRequest {
            ident: 0x1234,
            seq_no: 7,
        };
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        r.emit(&mut p);
        assert!(p.verify_checksum());
        assert_eq!(p.msg_type(), Message::EchoRequest);
        assert_eq!(p.payload(), b"ping");
        assert_eq!(Repr::parse(&p), Ok(r));
        p.set_echo_seq_no(8);
        assert_eq!(Repr::parse(&p), Err(Error)); // checksum now stale
    }

    #[test]
    fn frag_needed() {
        let mut buf = [0u8; 8 + 28];
        let r = Repr::DstUnreachable {
            code: DstUnreachable::FragRequired,
            next_hop_mtu: 1450,
        };
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.payload_mut()[0] = 0x45;
        r.emit(&mut p);
        assert_eq!(p.rest_of_header(), [0, 0, 0x05, 0xaa]);
        assert_eq!(p.next_hop_mtu(), 1450);
        assert_eq!(Repr::parse(&p), Ok(r));
        assert!(p.msg_type().is_error());
        assert!(!Message::EchoReply.is_error());

        let r = Repr::TimeExceeded {
            code: TimeExceeded::TtlExpired,
        };
        r.emit(&mut p);
        assert_eq!(Repr::parse(&p), Ok(r));
        assert_eq!(r.buffer_len(), 8);
    }

    #[test]
    fn unknown_type() {
        let mut buf = [0u8; 8];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(Message::from(42));
        p.fill_checksum();
        assert_eq!(p.msg_type(), Message::Unknown(42));
        assert_eq!(Repr::parse(&p), Err(Error));
        assert_eq!(Packet::new_checked(&buf[..7]), Err(Error));
    }

    proptest! {
        /// Any 8+ byte message: our fields equal etherparse's, and after our fill_checksum,
        /// etherparse's checksum of the same header and payload agrees.
        #[test]
        fn agrees_with_etherparse(
            ident: u16, seq: u16, reply: bool,
            payload in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let echo = etherparse::IcmpEchoHeader { id: ident, seq };
            let ty = if reply { etherparse::Icmpv4Type::EchoReply(echo) } else { etherparse::Icmpv4Type::EchoRequest(echo) };
            let h = etherparse::Icmpv4Header::with_checksum(ty, &payload);
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);

            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(p.checksum(), h.checksum);
            prop_assert_eq!((p.echo_ident(), p.echo_seq_no()), (ident, seq));
            prop_assert_eq!(p.payload(), &payload[..]);

            let mut out = vec![0u8; b.len()];
            out[8..].copy_from_slice(&payload);
            let r = if reply { Repr::EchoReply { ident, seq_no: seq } } else { Repr::EchoRequest { ident, seq_no: seq } };
            r.emit(&mut Packet::new_unchecked(&mut out[..]));
            prop_assert_eq!(out, b);
        }

        #[test]
        fn raw_fields_agree(bytes in proptest::collection::vec(any::<u8>(), 8..64)) {
            let s = etherparse::Icmpv4Slice::from_slice(&bytes).unwrap();
            let p = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(u8::from(p.msg_type()), s.type_u8());
            prop_assert_eq!(p.code(), s.code_u8());
            prop_assert_eq!(p.checksum(), s.checksum());
            prop_assert_eq!(p.rest_of_header(), s.bytes5to8());
        }

        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut b = bytes;
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.msg_type(), p.code(), p.checksum(), p.rest_of_header(), p.echo_ident());
                let _ = (p.echo_seq_no(), p.next_hop_mtu(), p.payload().len(), p.verify_checksum());
                if let Ok(r) = Repr::parse(&p) {
                    r.emit(&mut p);
                    prop_assert_eq!(Repr::parse(&p), Ok(r));
                }
                p.set_rest_of_header([1, 2, 3, 4]);
                p.set_next_hop_mtu(1);
                p.set_echo_ident(1);
                p.set_code(1);
                let _ = p.payload_mut().len();
                p.fill_checksum();
                prop_assert!(p.verify_checksum());
            }
        }
    }
}
