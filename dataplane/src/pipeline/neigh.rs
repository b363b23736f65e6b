//! Next-hop resolution (SPEC B11): the neighbour's MAC from the shared cache, or, when it is
//! unknown, a copy of the frame waits in the ARP pending queue
//! ([`crate::tables::neigh::PendingArp`], whose doc says why a copy) and the frame itself
//! becomes a broadcast ARP request for it.
//!
//! Requests are rate-limited to one per neighbour per second across all workers
//! ([`crate::tables::neigh::ArpLimiter`]); frames in between are queued too, up to
//! [`crate::tables::neigh::PENDING_PER_NEIGH`] per neighbour and 64 in all, and the rest are
//! dropped as `neigh_queue_full`. The workers release the queue once per pass
//! ([`release_held`]): a frame whose neighbour resolved is sent ([`send_held`]), one that
//! waited [`crate::tables::neigh::PENDING_TIMEOUT_MS`] is dropped as `neigh_timeout`.
//! Entries are learned by `pipeline::arp` from every ARP frame;
//! aging (a unicast re-ARP for entries in use older than `refresh_s`, removal after
//! `expire_s`; defaults [`crate::tables::neigh::REFRESH_AFTER_S`] and
//! [`crate::tables::neigh::EXPIRE_AFTER_S`]) and gratuitous ARP are the control thread's
//! (`control::neigh_ctl`), through the workers' injection queues (`worker::Injector`), with
//! frames built by [`arp_frame`]. This stage only marks entries in use
//! ([`crate::tables::NeighCache::touch`]).

use super::{Action, Ctx};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::neigh::Released;
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
    unresolved(frame, ctx, out, out_id, neighbour)
}

/// [`resolve`] for a next hop whose MAC is unknown: hold a copy, ARP for it. Out of line so
/// that the resolved case, nearly every frame, inlines into routing without this body.
#[inline(never)]
fn unresolved(
    frame: &mut Frame,
    ctx: &Ctx,
    out: &Port,
    out_id: PortId,
    neighbour: Ipv4Addr,
) -> Action {
    let now_ms = (ctx.now_ns / 1_000_000) as u32;
    if !ctx.may_mutate() {
        crate::trace_step!(
            ctx,
            "neigh",
            "{neighbour} unresolved: frame held, ARP request instead"
        );
    } else {
        let held = ctx
            .shared
            .arp_pending
            .park(neighbour, out_id, frame.data(), now_ms)
            .is_ok();
        if held {
            ctx.counters.event(Event::NeighQueued);
        }
        if !ctx.shared.arp_limit.allow(neighbour, now_ms) {
            // The copy (if any) waits for the reply to the request already sent.
            return Action::Drop(if held {
                DropReason::Consumed
            } else {
                DropReason::NeighQueueFull
            });
        }
        if !held {
            // The request still goes out; this frame is lost.
            ctx.counters.dropped(DropReason::NeighQueueFull);
        }
    }
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

/// Once per worker pass while frames are held: hands each frame whose next hop has
/// resolved to `send` (which copies it into a frame of its own and calls [`send_held`]) and
/// drops those that waited too long, counted as `neigh_timeout`. Tracing never releases.
#[inline]
pub fn release_held(ctx: &Ctx, mut send: impl FnMut(&Released<'_>)) {
    if ctx.shared.arp_pending.is_empty() || !ctx.may_mutate() {
        return;
    }
    let now_ms = (ctx.now_ns / 1_000_000) as u32;
    ctx.shared.arp_pending.release(
        now_ms,
        |ip| ctx.shared.neigh.lookup(ip).is_some(),
        |r| {
            if r.expired {
                ctx.counters.dropped(DropReason::NeighTimeout);
            } else {
                send(r);
            }
        },
    );
}

/// Finishes a released frame (copied into `frame`, as it was when held: routed, not yet
/// tagged): the resolved neighbour's MAC, then [`super::egress::output`] (VLAN tag, bond
/// member).
pub fn send_held(frame: &mut Frame, ctx: &Ctx, out_id: PortId, neighbour: Ipv4Addr) -> Action {
    let Some(out) = ctx.tables.ports.get(out_id) else {
        return Action::Drop(DropReason::PortDown);
    };
    // Removed again between the release check and now (`neigh del`): as if never answered.
    let Some(n) = ctx.shared.neigh.lookup(neighbour) else {
        return Action::Drop(DropReason::NeighTimeout);
    };
    if frame.len() < ethernet::HEADER_LEN {
        return Action::Drop(DropReason::Malformed);
    }
    let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
    eth.set_dst_addr(EthernetAddress(n.mac));
    eth.set_src_addr(EthernetAddress(out.mac));
    ctx.counters.event(Event::NeighQueueSent);
    super::egress::output(frame, out_id, ctx)
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
    use crate::tables::neigh::{PENDING_PER_NEIGH, PENDING_TIMEOUT_MS};

    /// Runs every held frame that is due through [`release_held`] and [`send_held`], as the
    /// worker does, each in a buffer of its own.
    fn release(lab: &Lab, now_ns: u64) -> Vec<Out> {
        let ctx = lab.ctx_at(now_ns);
        let mut out = Vec::new();
        release_held(&ctx, |r| {
            let mut buf = vec![0u8; 4096];
            let len = r.copy_to(&mut buf[HEADROOM..]);
            let mut f = Frame::new(&mut buf, HEADROOM, len);
            let action = send_held(&mut f, &ctx, r.port, r.neighbour);
            out.push(Out {
                action,
                frame: f.data().to_vec(),
            });
        });
        out
    }

    #[test]
    fn unresolved_requests_are_rate_limited_and_frames_held() {
        let lab = Lab::new();
        let f = |n: u8| udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, &[n]);
        assert_eq!(lab.run(BIZ, f(0)).action, Action::Tx(POD41));
        // Same second: no second broadcast; the frame waits too.
        assert_eq!(
            lab.run(BIZ, f(1)).action,
            Action::Drop(DropReason::Consumed)
        );
        assert_eq!(lab.event(Event::ArpRequestSent), 1);
        assert_eq!(lab.event(Event::NeighQueued), 2);
        // A second later, one more request.
        assert_eq!(
            lab.run_at(BIZ, f(2), 2_100_000_000).action,
            Action::Tx(POD41)
        );
        assert_eq!(lab.event(Event::ArpRequestSent), 2);
        assert_eq!(lab.shared.arp_pending.len(), 3);
    }

    #[test]
    fn held_frames_are_sent_in_order_when_the_neighbour_resolves() {
        let lab = Lab::new();
        let sent: Vec<_> = (0..3u8)
            .map(|n| udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, &[n]))
            .collect();
        for f in &sent {
            lab.run(BIZ, f.clone());
        }
        assert!(release(&lab, 1_500_000_000).is_empty(), "still unresolved");
        lab.shared.neigh.learn(POD41_IP, POD41_MAC, POD41, 1);
        let out = release(&lab, 1_500_000_000);
        assert_eq!(out.len(), 3);
        for (o, f) in out.iter().zip(&sent) {
            assert_eq!(o.action, Action::Tx(POD41));
            let eth = EthernetFrame::new_checked(&o.frame[..]).unwrap();
            assert_eq!(eth.dst_addr().0, POD41_MAC);
            assert_eq!(eth.src_addr().0, lab.mac(POD41));
            // Routed before it was held (TTL 29), otherwise byte for byte the same.
            assert_eq!(o.frame[14..], lab_routed(f)[14..]);
            assert_valid_l4(&o.frame);
        }
        assert_eq!(lab.event(Event::NeighQueueSent), 3);
        assert!(lab.shared.arp_pending.is_empty());
        assert!(release(&lab, 2_000_000_000).is_empty(), "sent once");
    }

    /// What forwarding to POD41 makes of `f` with the neighbour known: the IP header after
    /// the TTL decrement.
    fn lab_routed(f: &[u8]) -> Vec<u8> {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, POD41_MAC, POD41, 0);
        lab.run(BIZ, f.to_vec()).frame
    }

    #[test]
    fn held_frames_time_out_and_overflow_is_counted() {
        let lab = Lab::new();
        let f = |n: u8| udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, &[n]);
        let actions: Vec<_> = (0..PENDING_PER_NEIGH as u8 + 2)
            .map(|n| lab.run(BIZ, f(n)).action)
            .collect();
        assert_eq!(lab.event(Event::NeighQueued), PENDING_PER_NEIGH as u64);
        // The worker counts returned drops: the two that found the queue full.
        assert_eq!(
            actions[PENDING_PER_NEIGH..],
            [Action::Drop(DropReason::NeighQueueFull); 2]
        );
        // Unanswered: dropped after the timeout (held at 1 s), not before.
        let timeout_ns = u64::from(PENDING_TIMEOUT_MS) * 1_000_000;
        assert!(release(&lab, 1_000_000_000 + timeout_ns - 1_000_000).is_empty());
        assert_eq!(lab.drop(DropReason::NeighTimeout), 0);
        assert!(release(&lab, 1_000_000_000 + timeout_ns).is_empty());
        assert_eq!(lab.drop(DropReason::NeighTimeout), PENDING_PER_NEIGH as u64);
        assert!(lab.shared.arp_pending.is_empty());
    }

    #[test]
    fn held_frame_to_a_vlan_subinterface_is_tagged_on_release() {
        let lab = Lab::overlay();
        let f = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            UPOD_IP,
            64,
            1000,
            53,
            b"q",
        );
        let req = lab.run(POD60, f);
        assert_eq!(req.action, Action::Tx(TRUNK), "the request, tagged");
        lab.shared.neigh.learn(UPOD_IP, UPOD_MAC, TRUNK_1155, 1);
        let out = release(&lab, 1_100_000_000);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action, Action::Tx(TRUNK));
        // The MACs of the resolved neighbour, then the 802.1Q tag egress pushes on release.
        let o = &out[0].frame;
        assert_eq!(o[..6], UPOD_MAC);
        assert_eq!(o[12..14], [0x81, 0x00]);
        assert_eq!(u16::from_be_bytes([o[14], o[15]]) & 0xfff, 1155);
        let mut untagged = o[..12].to_vec();
        untagged.extend_from_slice(&o[16..]);
        assert_valid_l4(&untagged);
    }

    #[test]
    fn tracing_an_unresolved_frame_holds_nothing() {
        let lab = Lab::new();
        let trace = crate::pipeline::Trace::default();
        let mut ctx = lab.ctx();
        ctx.trace = Some(&trace);
        let f = udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, b"x");
        let mut buf = vec![0u8; 4096];
        buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(&f);
        let mut fr = Frame::new(&mut buf, HEADROOM, f.len());
        let meta = crate::pipeline::RxMeta {
            port: BIZ,
            vlan: None,
        };
        crate::pipeline::process(&mut fr, &meta, &ctx);
        assert!(lab.shared.arp_pending.is_empty());
        assert!(
            trace
                .steps()
                .iter()
                .any(|(s, w)| *s == "neigh" && w.contains("held"))
        );
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
