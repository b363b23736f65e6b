//! ICMP errors (time exceeded, unreachable, fragmentation needed), built in place of the
//! frame that caused them and sent back out of its ingress port to the previous hop's MAC.
//! Only the quoted bytes (the original IP header and 8 bytes of payload, RFC 792) move.

use super::{Action, Ctx, RxMeta, route};
use crate::counters::Event;
use crate::frame::Frame;
use crate::wire::icmp::Message;
use crate::wire::{
    EtherType, EthernetAddress, EthernetFrame, IcmpPacket, IpProtocol, Ipv4Packet, Ipv4Repr,
    ethernet, ipv4,
};

const ICMP_HEADER: usize = crate::wire::icmp::HEADER_LEN;

/// Replaces `frame` by an ICMP error of `msg`/`code` about it. `None` when no error may be
/// sent (RFC 1812 §4.3.2.7: not about ICMP errors, non-first fragments, or packets from a
/// broadcast, multicast or unspecified source).
pub fn error(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    msg: Message,
    code: u8,
    rest: [u8; 4],
) -> Option<Action> {
    let port = ctx.tables.ports.get(meta.port)?;
    let (orig_src, quote_len) = {
        let ip = Ipv4Packet::new_checked(&frame.data()[ethernet::HEADER_LEN..]).ok()?;
        let src = ip.src_addr();
        if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || ip.frag_offset() != 0
        {
            return None;
        }
        if ip.next_header() == IpProtocol::Icmp {
            let icmp = IcmpPacket::new_checked(ip.payload()).ok()?;
            if icmp.msg_type().is_error() {
                return None;
            }
        }
        let quote = (ip.header_len() as usize + 8).min(ip.total_len() as usize);
        (src, quote)
    };
    let from = route::source_addr(port, ctx)?;
    let prev_hop = EthernetFrame::new_unchecked(frame.data()).src_addr();

    let l3 = ethernet::HEADER_LEN;
    let quote_at = l3 + ipv4::HEADER_LEN + ICMP_HEADER;
    if !frame.set_len((quote_at + quote_len).max(frame.len())) {
        return None;
    }
    frame.data_mut().copy_within(l3..l3 + quote_len, quote_at);
    if !frame.set_len(quote_at + quote_len) {
        return None;
    }
    let data = frame.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    eth.set_dst_addr(prev_hop);
    eth.set_src_addr(EthernetAddress(port.mac));
    eth.set_ethertype(EtherType::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut data[l3..]);
    Ipv4Repr {
        src_addr: from,
        dst_addr: orig_src,
        next_header: IpProtocol::Icmp,
        payload_len: ICMP_HEADER + quote_len,
        ttl: 64,
        dscp_ecn: 0xc0, // CS6, as Linux sends ICMP errors
        ident: 0,
        dont_frag: false,
    }
    .emit(&mut ip);
    let mut icmp = IcmpPacket::new_unchecked(&mut data[l3 + ipv4::HEADER_LEN..]);
    icmp.set_msg_type(msg);
    icmp.set_code(code);
    icmp.set_rest_of_header(rest);
    icmp.fill_checksum();
    // The frame may already have been DNATed/SNATed (TTL or MTU of a service flow): the
    // sender knows only the untranslated packet, so the error is translated back as a
    // RELATED one, as netfilter does with the errors the node itself sends about NATed flows.
    super::service::related(frame, ctx);
    ctx.counters.event(match msg {
        Message::TimeExceeded => Event::IcmpTimeExceededSent,
        _ => Event::IcmpUnreachableSent,
    });
    Some(Action::Tx(meta.port))
}
