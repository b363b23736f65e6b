//! Next-hop resolution (SPEC B11): the neighbour's MAC from the shared cache, or, when it is
//! unknown, the frame itself becomes a broadcast ARP request for it.
//!
//! Requests are rate-limited to one per neighbour per second across all workers
//! ([`crate::tables::neigh::ArpLimiter`], whose doc says why this is preferred to a queue of
//! frames waiting for resolution); frames to an unresolved neighbour in between are dropped
//! as `neigh_rate_limited`. Entries are learned by `pipeline::arp` from every ARP frame;
//! aging (a unicast re-ARP for entries in use older than `refresh_s`, removal after
//! `expire_s`; defaults [`crate::tables::neigh::REFRESH_AFTER_S`] and
//! [`crate::tables::neigh::EXPIRE_AFTER_S`]) and gratuitous ARP are the control thread's
//! (`control::neigh_ctl`), through the workers' injection queues (`worker::Injector`), with
//! frames built by [`arp_frame`]. This stage only marks entries in use
//! ([`crate::tables::NeighCache::touch`]).

use super::{Action, Ctx};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::{Port, PortId};
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, ethernet,
};
use core::net::Ipv4Addr;

/// Sets the frame's MACs for `neighbour` on `out` (a port or logical interface with id
/// `out_id`), or turns the frame into an ARP request for it.
#[inline]
pub fn resolve(
    frame: &mut Frame,
    ctx: &Ctx,
    out: &Port,
    out_id: PortId,
    neighbour: Ipv4Addr,
) -> Action {
    if let Some(n) = ctx.shared.neigh.lookup(neighbour) {
        crate::trace_step!(ctx, "neigh", "{neighbour} is {}", EthernetAddress(n.mac));
        // In-use marks for aging: one shared write per neighbour per second, not per frame.
        if !n.permanent && n.used != ctx.now_s.max(1) && ctx.may_mutate() {
            ctx.shared.neigh.touch(neighbour, ctx.now_s);
        }
        let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
        eth.set_dst_addr(EthernetAddress(n.mac));
        eth.set_src_addr(EthernetAddress(out.mac));
        return Action::Tx(out_id);
    }
    let now_ms = (ctx.now_ns / 1_000_000) as u32;
    if ctx.may_mutate() && !ctx.shared.arp_limit.allow(neighbour, now_ms) {
        crate::trace_step!(ctx, "neigh", "{neighbour} unresolved, request already sent");
        return Action::Drop(DropReason::NeighRateLimited);
    }
    crate::trace_step!(ctx, "neigh", "{neighbour} unresolved: ARP request instead");
    ctx.counters.dropped(DropReason::NeighUnresolved);
    ctx.counters.event(Event::ArpRequestSent);
    let source = super::route::source_addr(out, ctx).unwrap_or(Ipv4Addr::UNSPECIFIED);
    if !frame.set_len(ARP_FRAME_LEN) {
        return Action::Drop(DropReason::Malformed);
    }
    arp_frame(
        frame.data_mut(),
        ArpOperation::Request,
        out.mac,
        source,
        neighbour,
    );
    Action::Tx(out_id)
}

/// An ARP frame padded to the Ethernet minimum.
pub const ARP_FRAME_LEN: usize = 60;

/// Writes a broadcast ARP frame from `mac`/`source` about `target` into `buf` (at least
/// [`ARP_FRAME_LEN`] bytes; the rest is zeroed padding). A request with `target ==
/// source` is a gratuitous ARP (RFC 5227 §3: an announcement).
pub fn arp_frame(
    buf: &mut [u8],
    operation: ArpOperation,
    mac: [u8; 6],
    source: Ipv4Addr,
    target: Ipv4Addr,
) {
    buf.fill(0);
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(EthernetAddress(mac));
    eth.set_ethertype(EtherType::Arp);
    ArpRepr {
        operation,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: source,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(
        &mut buf[ethernet::HEADER_LEN..],
    ));
}

/// A generated frame for the injection path: a gratuitous ARP (or an aging re-ARP request)
/// for `target` from `port`. Returns the frame bytes.
pub fn arp_request_bytes(port: &Port, source: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut b = [0u8; ARP_FRAME_LEN];
    arp_frame(&mut b, ArpOperation::Request, port.mac, source, target);
    b
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn unresolved_requests_are_rate_limited_per_neighbour() {
        let lab = Lab::new();
        let f = || udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, b"x");
        assert_eq!(lab.run(BIZ, f()).action, Action::Tx(POD41));
        // Same second: no second broadcast.
        assert_eq!(
            lab.run(BIZ, f()).action,
            Action::Drop(DropReason::NeighRateLimited)
        );
        assert_eq!(lab.event(Event::ArpRequestSent), 1);
        // A second later, one more.
        assert_eq!(
            lab.run_at(BIZ, f(), 2_100_000_000).action,
            Action::Tx(POD41)
        );
        assert_eq!(lab.event(Event::ArpRequestSent), 2);
    }

    #[test]
    fn forwarding_marks_learned_neighbours_in_use() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, POD41_MAC, POD41, 0);
        let f = || udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, b"x");
        assert_eq!(lab.shared.neigh.lookup(POD41_IP).unwrap().used, 0);
        assert_eq!(
            lab.run_at(BIZ, f(), 7_000_000_000).action,
            Action::Tx(POD41)
        );
        assert_eq!(lab.shared.neigh.lookup(POD41_IP).unwrap().used, 7);
    }

    #[test]
    fn gratuitous_arp_announces_own_address() {
        let lab = Lab::new();
        let port = lab.tables.ports.get(BIZ).unwrap();
        let b = arp_request_bytes(port, BIZ_IP, BIZ_IP);
        let eth = EthernetFrame::new_checked(&b[..]).unwrap();
        assert!(eth.dst_addr().is_broadcast());
        let r = ArpRepr::parse(&ArpPacket::new_checked(&b[14..]).unwrap()).unwrap();
        assert_eq!(r.operation, ArpOperation::Request);
        assert_eq!(
            (r.source_protocol_addr, r.target_protocol_addr),
            (BIZ_IP, BIZ_IP)
        );
        assert_eq!(r.source_hardware_addr.0, port.mac);
    }
}
