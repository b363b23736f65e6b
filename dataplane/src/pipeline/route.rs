//! Forwarding: longest-prefix match on the destination, TTL and MTU checks (the MTU of the
//! egress interface: 1450 for the VXLAN overlay), then [`super::egress::to_nexthop`]: VXLAN
//! encapsulation, the next hop's MAC from the neighbour cache — or, when it is unknown, the
//! frame is turned into an ARP request for that neighbour (a copy of the packet waits in
//! the ARP pending queue until the reply) — VLAN tag and bond member.

use super::nexthop_cache::{Egress, Stamp};
use super::{Action, Ctx, RxMeta, flow, icmp};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::tables::Port;
use crate::tables::overlay::PortKind;
use crate::tables::ports::{POD_GATEWAY, PortRole};
use crate::wire::icmp::{DstUnreachable, Message, TimeExceeded};
use crate::wire::{Ipv4Packet, ethernet, ipv4};
use core::net::Ipv4Addr;

#[inline]
pub fn forward(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    // A known destination: the egress chosen for its previous frame, still valid for this
    // snapshot and neighbour cache (`pipeline::nexthop_cache`). Classify has checked the
    // IPv4 header; one fixed-size view lets every access below go unchecked. TTL and MTU
    // errors take the full path.
    const FIXED: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    if let Some(h) = frame.data_mut().first_chunk_mut::<FIXED>() {
        let dst = Ipv4Addr::new(h[30], h[31], h[32], h[33]);
        let total_len = u16::from_be_bytes([h[16], h[17]]);
        if h[22] > 1
            && let Some(e) = ctx.local.nexthops.get(dst, ctx)
            && total_len <= e.mtu
        {
            Ipv4Packet::new_unchecked(&mut h[ethernet::HEADER_LEN..]).decrement_ttl();
            if let Some(index) = e.overlay {
                return encap_cached(frame, meta, ctx, &e, index);
            }
            h[0..6].copy_from_slice(&e.dst_mac);
            h[6..12].copy_from_slice(&e.src_mac);
            return Action::Tx(e.port);
        }
    }
    forward_uncached(frame, meta, ctx)
}

/// A cached route into an overlay: encapsulation (from the worker's VTEP entry when it has
/// one, `vxlan::encap_cached`).
#[inline(never)]
pub(super) fn encap_cached(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    e: &Egress,
    index: u16,
) -> Action {
    super::vxlan::encap_cached(frame, meta, ctx, e, index)
}

/// [`forward`] through the FIB, port table and neighbour cache, filling the next-hop cache
/// for the destination when its route has one next hop off the overlay. Out of line: the
/// frames of known destinations do not carry its body.
#[inline(never)]
fn forward_uncached(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    // Before the lookups: a change racing with them leaves the entry already stale.
    let stamp = Stamp::now(ctx);
    let (dst, ttl, total_len, dont_frag, nh, single) = {
        let ip = Ipv4Packet::new_unchecked(&frame.data()[ethernet::HEADER_LEN..]);
        let dst = ip.dst_addr();
        let route = ctx.tables.fib.lookup(dst);
        // The flow hash only when ECMP has a choice to make: most routes have one next hop.
        let nh = route
            .and_then(|r| match r.nexthops.as_slice() {
                [one] => Some(one),
                _ => r.select(flow::hash_v4(&ip)),
            })
            .copied();
        let single = route.is_some_and(|r| r.nexthops.len() == 1);
        (dst, ip.ttl(), ip.total_len(), ip.dont_frag(), nh, single)
    };
    let Some(nh) = nh else {
        ctx.counters.dropped(DropReason::NoRoute);
        return icmp::error(
            frame,
            meta,
            ctx,
            Message::DstUnreachable,
            DstUnreachable::NetUnreachable.into(),
            [0; 4],
        )
        .unwrap_or(Action::Drop(DropReason::NoRoute));
    };
    if ttl <= 1 {
        ctx.counters.dropped(DropReason::TtlExceeded);
        return icmp::error(
            frame,
            meta,
            ctx,
            Message::TimeExceeded,
            TimeExceeded::TtlExpired.into(),
            [0; 4],
        )
        .unwrap_or(Action::Drop(DropReason::TtlExceeded));
    }
    let Some(out) = ctx.tables.ports.get(nh.port) else {
        return Action::Drop(DropReason::PortDown);
    };
    if total_len > out.mtu {
        if !dont_frag {
            return Action::Drop(DropReason::TooBig);
        }
        ctx.counters.dropped(DropReason::TooBig);
        let mtu = out.mtu.to_be_bytes();
        return icmp::error(
            frame,
            meta,
            ctx,
            Message::DstUnreachable,
            DstUnreachable::FragRequired.into(),
            [0, 0, mtu[0], mtu[1]],
        )
        .unwrap_or(Action::Drop(DropReason::TooBig));
    }
    Ipv4Packet::new_unchecked(&mut frame.data_mut()[ethernet::HEADER_LEN..]).decrement_ttl();
    if single {
        let cache = &ctx.local.nexthops;
        match out.kind {
            PortKind::Vxlan { index } => {
                cache.fill_overlay(ctx, stamp, dst, out, index, nh.neighbour(dst))
            }
            _ => cache.fill_resolved(ctx, stamp, dst, out, nh.port, nh.neighbour(dst)),
        }
    }
    // VXLAN encapsulation, next-hop MAC (or ARP request), VLAN tag, bond member.
    super::egress::to_nexthop(frame, meta, ctx, &nh, dst)
}

/// The address afgate speaks from on `port` when it originates a frame there: the port's
/// own address, on a pod port the pod gateway (the only address pods know the node by), on
/// a VXLAN interface its VTEP's (the ctl address: MASQUERADE towards the overlay, SPEC B5),
/// else the first address of any port.
pub fn source_addr(port: &Port, ctx: &Ctx) -> Option<Ipv4Addr> {
    // The tunnel first: a VXLAN interface's role is whatever its config defaulted to.
    port.primary_addr()
        .or_else(|| match port.kind {
            PortKind::Vxlan { index } => ctx.tables.vxlan.overlay(index).map(|o| o.local),
            _ => None,
        })
        .or(if port.role == PortRole::Pod {
            Some(POD_GATEWAY)
        } else {
            None
        })
        .or_else(|| ctx.tables.ports.iter().find_map(|p| p.primary_addr()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::counters::Event;
    use crate::wire::{ArpPacket, ArpRepr, EtherType, EthernetFrame, IpProtocol};

    #[test]
    fn forwards_pod_to_outside_via_gateway() {
        let lab = Lab::new();
        let f = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            EXT_IP,
            64,
            1000,
            53,
            b"hello",
        );
        let out = lab.run(POD60, f);
        assert_eq!(out.action, Action::Tx(BIZ));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, GW_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(BIZ));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert_eq!(ip.ttl(), 63);
        assert!(ip.verify_checksum(), "incremental TTL checksum");
        assert_eq!((ip.src_addr(), ip.dst_addr()), (POD60_IP, EXT_IP));
        assert_valid_l4(&out.frame);
    }

    #[test]
    fn forwards_to_pod_on_scope_link_route() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, POD41_MAC, POD41, 0);
        let f = udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, b"x");
        let out = lab.run(BIZ, f);
        assert_eq!(out.action, Action::Tx(POD41));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, POD41_MAC);
        assert_eq!(Ipv4Packet::new_checked(&out.frame[14..]).unwrap().ttl(), 29);
    }

    #[test]
    fn a_vxlan_interface_speaks_from_its_vtep_address() {
        let lab = Lab::overlay();
        let ctx = lab.ctx();
        // As the control plane builds it (`config::overlay`): role pod.
        let vx = Port {
            role: PortRole::Pod,
            ..lab.tables.ports.get(VXLAN).unwrap().clone()
        };
        assert_eq!(
            source_addr(&vx, &ctx),
            Some(CTL_IP),
            "not the first port's (biz)"
        );
    }

    #[test]
    fn unresolved_neighbour_becomes_arp_request() {
        let lab = Lab::new();
        let f = udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, b"x");
        let out = lab.run(BIZ, f);
        assert_eq!(out.action, Action::Tx(POD41));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Arp);
        assert!(eth.dst_addr().is_broadcast());
        let req = ArpRepr::parse(&ArpPacket::new_checked(&out.frame[14..]).unwrap()).unwrap();
        assert_eq!(req.target_protocol_addr, POD41_IP);
        assert_eq!(req.source_protocol_addr, POD_GATEWAY);
        // The frame itself waits for the reply (`pipeline::neigh`).
        assert_eq!(lab.event(Event::NeighQueued), 1);
    }

    #[test]
    fn ttl_one_gets_time_exceeded_from_ingress_address() {
        let lab = Lab::new();
        let f = udp_frame(
            GW_MAC,
            lab.mac(BIZ),
            EXT_IP,
            POD41_IP,
            1,
            53,
            1000,
            b"payload!",
        );
        let orig = f.clone();
        let out = lab.run(BIZ, f);
        assert_eq!(out.action, Action::Tx(BIZ));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, GW_MAC);
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.next_header()),
            (BIZ_IP, EXT_IP, IpProtocol::Icmp)
        );
        let icmp = crate::wire::IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Message::TimeExceeded);
        assert!(icmp.verify_checksum());
        // Quotes the original IP header and first 8 bytes of its payload.
        assert_eq!(icmp.payload(), &orig[14..14 + 28]);
        assert_eq!(lab.drop(DropReason::TtlExceeded), 1);
        assert_eq!(lab.event(Event::IcmpTimeExceededSent), 1);
    }

    #[test]
    fn too_big_with_df_gets_frag_needed() {
        let lab = Lab::new();
        let payload = vec![7u8; 1460];
        let f = udp_frame(
            GW_MAC,
            lab.mac(BIZ),
            EXT_IP,
            POD60_IP,
            30,
            53,
            1000,
            &payload,
        );
        let out = lab.run(BIZ, f);
        assert_eq!(out.action, Action::Tx(BIZ));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        let icmp = crate::wire::IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Message::DstUnreachable);
        assert_eq!(icmp.code(), 4);
        assert_eq!(icmp.next_hop_mtu(), 1450);
    }

    #[test]
    fn no_route_is_counted() {
        let mut lab = Lab::new();
        lab.tables.fib.remove(Ipv4Addr::UNSPECIFIED, 0);
        let f = udp_frame(POD60_MAC, lab.mac(POD60), POD60_IP, EXT_IP, 64, 1, 2, b"");
        let out = lab.run(POD60, f);
        assert_eq!(lab.drop(DropReason::NoRoute), 1);
        // an ICMP net unreachable goes back to the pod
        assert_eq!(out.action, Action::Tx(POD60));
    }
}
