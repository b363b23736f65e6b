//! IPv4 addressed to the node itself. The XDP program passes to the kernel what the kernel
//! owns (SSH, the node's own control traffic); what still reaches here is answered only if
//! it is an ICMP echo request, so `ping <node address>` works through the dataplane.

use super::{Action, Ctx, RxMeta};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::wire::icmp::Message;
use crate::wire::{
    EthernetAddress, EthernetFrame, IcmpPacket, IpProtocol, Ipv4Packet, checksum, ethernet,
};

pub fn run(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    let Some(port) = ctx.tables.ports.get(meta.port) else {
        return Action::Drop(DropReason::PortDown);
    };
    let data = frame.data_mut();
    let (eth_bytes, l3) = data.split_at_mut(ethernet::HEADER_LEN);
    let mut ip = Ipv4Packet::new_unchecked(l3);
    if ip.next_header() != IpProtocol::Icmp {
        return Action::Drop(DropReason::LocalNotOurs);
    }
    if ip.is_fragment() {
        return Action::Drop(DropReason::LocalIcmpOther);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    {
        let Ok(mut icmp) = IcmpPacket::new_checked(ip.payload_mut()) else {
            return Action::Drop(DropReason::Malformed);
        };
        if icmp.msg_type() != Message::EchoRequest || icmp.code() != 0 {
            return Action::Drop(DropReason::LocalIcmpOther);
        }
        // Type 8 → 0 changes one 16-bit word of the message (RFC 1624).
        let c = checksum::update16(
            icmp.checksum(),
            (u8::from(Message::EchoRequest) as u16) << 8,
            0,
        );
        icmp.set_msg_type(Message::EchoReply);
        icmp.set_checksum(c);
    }
    // Swapping source and destination leaves the header sum unchanged; only the TTL moves.
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
    ip.set_ttl(64);
    ip.fill_checksum();
    let mut eth = EthernetFrame::new_unchecked(eth_bytes);
    let sender = eth.src_addr();
    eth.set_dst_addr(sender);
    eth.set_src_addr(EthernetAddress(port.mac));
    ctx.counters.event(Event::IcmpEchoReply);
    Action::Tx(meta.port)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn echo_request_to_node_is_answered() {
        let lab = Lab::new();
        let f = icmp_echo_frame(
            GW_MAC,
            lab.mac(BIZ),
            GW_IP,
            BIZ_IP,
            64,
            0x1234,
            7,
            b"abcdefgh",
        );
        let out = lab.run(BIZ, f);
        assert_eq!(out.action, Action::Tx(BIZ));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, GW_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(BIZ));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (BIZ_IP, GW_IP));
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Message::EchoReply);
        assert!(icmp.verify_checksum(), "incremental ICMP checksum");
        assert_eq!((icmp.echo_ident(), icmp.echo_seq_no()), (0x1234, 7));
        assert_eq!(icmp.payload(), b"abcdefgh");
        assert_eq!(lab.event(Event::IcmpEchoReply), 1);
    }

    #[test]
    fn tcp_to_node_is_not_ours() {
        let lab = Lab::new();
        let f = udp_frame(GW_MAC, lab.mac(BIZ), GW_IP, BIZ_IP, 64, 1, 2, b"");
        assert_eq!(
            lab.run(BIZ, f).action,
            Action::Drop(DropReason::LocalNotOurs)
        );
    }
}
