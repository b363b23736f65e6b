//! First stage: is this a frame for us at all, and which protocol handles it.

use super::{Action, Ctx, RxMeta, antispoof, arp, local, route};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::wire::{EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, ethernet};

#[inline]
pub fn run(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    let Some(port) = ctx.tables.ports.get(meta.port) else {
        return Action::Drop(DropReason::PortDown);
    };
    let Some(h) = frame.data().first_chunk::<{ ethernet::HEADER_LEN }>() else {
        return Action::Drop(DropReason::Malformed);
    };
    // Raw compares first: almost every frame is IPv4 to the port's own MAC, told apart
    // without building the enums.
    let ipv4_type = h[12..14] == [0x08, 0x00];
    if h[0] & 0x01 == 0 && h[..6] != port.mac {
        crate::trace_step!(
            ctx,
            "classify",
            "dst MAC {} is not port {}'s",
            EthernetAddress(*h.first_chunk::<6>().unwrap_or(&[0; 6])),
            port.name
        );
        return Action::Drop(DropReason::OtherMac);
    }
    if ipv4_type && ctx.trace.is_none() {
        return ipv4(frame, meta, ctx);
    }
    let eth = EthernetFrame::new_unchecked(frame.data());
    crate::trace_step!(
        ctx,
        "classify",
        "port {} ({}), ethertype {:?}",
        port.name,
        port.role.name(),
        eth.ethertype()
    );
    match eth.ethertype() {
        EtherType::Arp => match antispoof::check_arp(frame, meta, ctx) {
            Ok(()) => arp::run(frame, meta, ctx),
            Err(reason) => Action::Drop(reason),
        },
        EtherType::Ipv4 => ipv4(frame, meta, ctx),
        EtherType::Ipv6 => Action::Drop(DropReason::Ipv6),
        _ => Action::Drop(DropReason::UnsupportedEthertype),
    }
}

#[inline]
fn ipv4(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    // A tracked flow this worker translated before (`flow_cache`): checked, translated and
    // routed without the conntrack lookup.
    if let Some(action) = super::flow_cache::fast(frame, meta, ctx) {
        return action;
    }
    let l3 = &frame.data()[ethernet::HEADER_LEN..];
    let Ok(ip) = Ipv4Packet::new_checked(l3) else {
        return Action::Drop(DropReason::Malformed);
    };
    if !ip.is_valid_version() {
        return Action::Drop(DropReason::Malformed);
    }
    if !ip.verify_checksum() {
        return Action::Drop(DropReason::BadIpChecksum);
    }
    if let Err(reason) = antispoof::check_ipv4(ip.src_addr(), meta, ctx) {
        return Action::Drop(reason);
    }
    // Trailing Ethernet padding (frames shorter than 60 bytes) is not part of the packet.
    let end = ethernet::HEADER_LEN + ip.total_len() as usize;
    let dst = ip.dst_addr();
    if end < frame.len() && !frame.set_len(end) {
        return Action::Drop(DropReason::Malformed);
    }
    // VXLAN to a node address: the inner frame goes through classification again.
    if let Some(action) = super::vxlan::decap(frame, meta, ctx) {
        return action;
    }
    // Services/NAT: a conntrack hit is translated, a VIP scheduled and DNATed; either way
    // the packet is routed on its translated address (SPEC B8).
    match super::service::run(frame, meta, ctx) {
        super::service::Next::Continue => {}
        super::service::Next::Route => return route::forward(frame, meta, ctx),
        super::service::Next::Done(action) => return action,
    }
    if ctx.tables.is_local(dst) {
        crate::trace_step!(ctx, "classify", "{dst} is a node address");
        return local::run(frame, meta, ctx);
    }
    route::forward(frame, meta, ctx)
}
