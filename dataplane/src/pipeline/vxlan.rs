//! VXLAN (SPEC B9, RFC 7348), interoperable with Linux's vxlan device.
//!
//! Encapsulation ([`encap`]): the routed inner frame gets the overlay's inner MACs (the
//! remote vxlan device's MAC, ours as source), then the outer header prebuilt for its VTEP at
//! configuration time (`tables::overlay::OuterHeader`) is copied into the headroom in front
//! of it: no payload byte moves. Per packet only the IPv4 total length and checksum (one
//! incremental update from the prebuilt base), the UDP length and the UDP source port (the
//! inner flow hash, so that ECMP and bond hashing in the underlay keep a flow on one path
//! and spread flows, as Linux's `udp_flow_src_port`) are written. The outer frame is then
//! routed like any other: FIB lookup of the remote VTEP's address, its next hop's MAC from
//! the neighbour cache (or an ARP request in its place), VLAN/bond on the way out.
//!
//! Decapsulation ([`decap`]): UDP to a node address on the VXLAN port, with the I flag, a
//! VNI some overlay has, from one of that overlay's VTEPs (anything else is dropped and
//! counted), loses its outer headers and goes through classification again as a frame
//! received on the overlay's interface: routing delivers it to the local pod.
//!
//! Inner frames are checked against the overlay MTU by routing (`route::forward` with the
//! VXLAN interface's MTU, 1450): DF and too big gets an ICMP fragmentation-needed to the
//! inner source with that MTU.

use super::nexthop_cache::Stamp;
use super::{Action, Ctx, RxMeta, classify, flow, neigh};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::Port;
use crate::tables::overlay::{OUTER_LEN, PortKind};
use crate::wire::{
    EtherType, EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket, VxlanHeader,
    VxlanRepr, checksum, ethernet, ipv4, udp, vxlan,
};
use core::net::Ipv4Addr;

/// Lowest UDP source port used (Linux's default `srcport` range starts at the ephemeral
/// range; any port but the VXLAN one works for receivers).
const SPORT_BASE: u16 = 32768;

/// Encapsulates the routed frame towards the VTEP of `inner_via` on overlay `index`.
pub fn encap(
    frame: &mut Frame,
    _meta: &RxMeta,
    ctx: &Ctx,
    index: u16,
    dev: &Port,
    inner_via: Ipv4Addr,
) -> Action {
    let Some(overlay) = ctx.tables.vxlan.overlay(index) else {
        return Action::Drop(DropReason::PortDown);
    };
    let Some(vtep) = overlay.vtep_for(inner_via) else {
        crate::trace_step!(ctx, "vxlan", "no VTEP for {inner_via} on {}", dev.name);
        return Action::Drop(DropReason::VxlanNoVtep);
    };
    let inner_len = frame.len();
    let hash = {
        let d = frame.data();
        match Ipv4Packet::new_checked(&d[ethernet::HEADER_LEN..]) {
            Ok(ip) => flow::hash_v4(&ip),
            Err(_) => 0,
        }
    };
    // The route to the VTEP from this worker's next-hop cache when it has one next hop and
    // a resolved neighbour; otherwise looked up (it may change: bond members, ECMP, without
    // the overlay's configuration changing; the cache is stamped with the snapshot).
    let cached = ctx.local.nexthops.get(vtep.remote, ctx);
    let mut uncached = None;
    let mtu = match cached {
        Some(e) => e.mtu,
        None => {
            let stamp = Stamp::now(ctx);
            let Some(route) = ctx.tables.fib.lookup(vtep.remote) else {
                return Action::Drop(DropReason::NoRoute);
            };
            let Some(onh) = route.select(hash).copied() else {
                return Action::Drop(DropReason::NoRoute);
            };
            let Some(uplink) = ctx.tables.ports.get(onh.port) else {
                return Action::Drop(DropReason::PortDown);
            };
            if matches!(uplink.kind, PortKind::Vxlan { .. }) {
                // VXLAN over VXLAN: a routing loop in the configuration.
                return Action::Drop(DropReason::NoRoute);
            }
            if route.nexthops.len() == 1 {
                ctx.local.nexthops.fill_resolved(
                    ctx,
                    stamp,
                    vtep.remote,
                    uplink,
                    onh.port,
                    onh.neighbour(vtep.remote),
                );
            }
            uncached = Some((onh, uplink));
            uplink.mtu
        }
    };
    let outer_ip_len = inner_len + OUTER_LEN;
    if outer_ip_len > usize::from(mtu) {
        return Action::Drop(DropReason::TooBig);
    }
    {
        let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
        eth.set_dst_addr(EthernetAddress(vtep.inner_mac));
        eth.set_src_addr(EthernetAddress(dev.mac));
    }
    if !frame.push_front(ethernet::HEADER_LEN + OUTER_LEN) {
        return Action::Drop(DropReason::NoHeadroom);
    }
    let d = frame.data_mut();
    d[12..14].copy_from_slice(&u16::from(EtherType::Ipv4).to_be_bytes());
    let l3 = ethernet::HEADER_LEN;
    d[l3..l3 + OUTER_LEN].copy_from_slice(&vtep.outer.bytes);
    {
        let total = outer_ip_len as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut d[l3..l3 + ipv4::HEADER_LEN]);
        ip.set_total_len(total);
        ip.set_checksum(checksum::update16(vtep.outer.csum_base, 0, total));
    }
    {
        let mut u = UdpPacket::new_unchecked(
            &mut d[l3 + ipv4::HEADER_LEN..l3 + ipv4::HEADER_LEN + udp::HEADER_LEN],
        );
        u.set_len((inner_len + udp::HEADER_LEN + vxlan::HEADER_LEN) as u16);
        u.set_src_port(SPORT_BASE | (hash as u16 & 0x7fff));
    }
    ctx.counters.event(Event::VxlanEncap);
    crate::trace_step!(ctx, "vxlan", "VNI {} to VTEP {}", overlay.vni, vtep.remote);
    match (cached, uncached) {
        (Some(e), _) => {
            let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
            eth.set_dst_addr(EthernetAddress(e.dst_mac));
            eth.set_src_addr(EthernetAddress(e.src_mac));
            Action::Tx(e.port)
        }
        (None, Some((onh, uplink))) => {
            neigh::resolve(frame, ctx, uplink, onh.port, onh.neighbour(vtep.remote))
        }
        (None, None) => Action::Drop(DropReason::NoRoute),
    }
}

/// If the frame is VXLAN to a node address, decapsulates it and runs the inner frame
/// through the pipeline; `None` if it is not VXLAN for us. Called by classify on IPv4 frames
/// whose header (checksum, length) it has already checked.
///
/// The two tests that turn away almost every frame (no overlay configured, not UDP) are
/// inlined into classify; the rest of decapsulation stays out of line so that the frames
/// that are not VXLAN do not pay for its call frame.
#[inline(always)]
pub fn decap(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    if !ctx.tables.vxlan.is_enabled()
        || frame.data().get(ethernet::HEADER_LEN + 9) != Some(&u8::from(IpProtocol::Udp))
    {
        return None;
    }
    decap_udp(frame, meta, ctx)
}

#[inline(never)]
fn decap_udp(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    let vx = &ctx.tables.vxlan;
    if !vx.is_enabled() {
        return None;
    }
    let (outer_len, vni, src) = {
        let ip = Ipv4Packet::new_unchecked(&frame.data()[ethernet::HEADER_LEN..]);
        if ip.protocol() != u8::from(IpProtocol::Udp)
            || ip.is_fragment()
            || !ctx.tables.is_local(ip.dst_addr())
        {
            return None;
        }
        let Ok(u) = UdpPacket::new_checked(ip.payload()) else {
            return None;
        };
        if u.dst_port() != vx.udp_port {
            return None;
        }
        if let Some(p) = ctx.tables.ports.get(meta.port)
            && matches!(p.kind, PortKind::Vxlan { .. })
        {
            // VXLAN inside VXLAN is not unwrapped twice.
            return None;
        }
        let Ok(h) = VxlanHeader::new_checked(u.payload()) else {
            return Some(Action::Drop(DropReason::Malformed));
        };
        let Ok(r) = VxlanRepr::parse(&h) else {
            return Some(Action::Drop(DropReason::Malformed));
        };
        let outer = ethernet::HEADER_LEN
            + usize::from(ip.header_len())
            + udp::HEADER_LEN
            + vxlan::HEADER_LEN;
        (outer, r.vni, ip.src_addr())
    };
    let Some(overlay) = vx.by_vni(vni) else {
        crate::trace_step!(ctx, "vxlan", "VNI {vni} from {src}: no such overlay");
        return Some(Action::Drop(DropReason::VxlanUnknownVni));
    };
    if !overlay.knows_remote(src) {
        crate::trace_step!(ctx, "vxlan", "VNI {vni} from {src}: not a VTEP of it");
        return Some(Action::Drop(DropReason::VxlanUnknownVtep));
    }
    if frame.len() < outer_len + ethernet::HEADER_LEN || !frame.pull_front(outer_len) {
        return Some(Action::Drop(DropReason::Malformed));
    }
    ctx.counters.event(Event::VxlanDecap);
    crate::trace_step!(ctx, "vxlan", "VNI {vni} from {src}: decapsulated");
    let inner = RxMeta {
        port: overlay.port,
        vlan: None,
    };
    Some(classify::run(frame, &inner, ctx))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::wire::icmp::Message;

    fn to_remote(lab: &Lab, len: usize) -> Vec<u8> {
        udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            REMOTE_POD_IP,
            64,
            40000,
            5201,
            &vec![0x5a; len],
        )
    }

    #[test]
    fn encap_builds_linux_compatible_outer_headers() {
        let lab = Lab::overlay();
        let inner = to_remote(&lab, 100);
        let out = lab.run(POD60, inner.clone());
        assert_eq!(out.action, Action::Tx(CTL));
        let f = &out.frame;
        let p = etherparse::SlicedPacket::from_ethernet(f).expect("outer parses");
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.dst_addr().0, REMOTE_CTL_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(CTL));
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (CTL_IP, REMOTE_CTL_IP));
        assert_eq!(ip.total_len() as usize, f.len() - 14);
        assert!(!ip.dont_frag());
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("udp")
        };
        assert_eq!(u.destination_port(), 4789);
        assert!(u.source_port() >= 32768);
        assert_eq!(u.length() as usize, f.len() - 34);
        assert_eq!(u.checksum(), 0);
        let vx = VxlanHeader::new_checked(&f[42..]).unwrap();
        assert_eq!(VxlanRepr::parse(&vx), Ok(VxlanRepr { vni: 2 }));
        // The inner frame: remote vxlan MAC, ours, TTL decremented, checksums intact.
        let innerf = &f[50..];
        assert_eq!(innerf.len(), inner.len());
        let ieth = EthernetFrame::new_checked(innerf).unwrap();
        assert_eq!(ieth.dst_addr().0, REMOTE_VXLAN_MAC);
        assert_eq!(ieth.src_addr().0, lab.mac(VXLAN));
        assert_eq!(Ipv4Packet::new_checked(&innerf[14..]).unwrap().ttl(), 63);
        assert_valid_l4(innerf);
        assert_eq!(lab.event(Event::VxlanEncap), 1);
    }

    #[test]
    fn source_port_follows_the_inner_flow() {
        let lab = Lab::overlay();
        let sport = |p: u16| {
            let f = udp_frame(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                REMOTE_POD_IP,
                64,
                p,
                80,
                b"x",
            );
            let out = lab.run(POD60, f);
            UdpPacket::new_checked(&out.frame[34..]).unwrap().src_port()
        };
        assert_eq!(sport(1000), sport(1000));
        let distinct: std::collections::HashSet<u16> = (0..32).map(|p| sport(2000 + p)).collect();
        assert!(distinct.len() > 16, "{distinct:?}");
    }

    #[test]
    fn decap_delivers_to_the_local_pod() {
        let lab = Lab::overlay();
        // What the remote kernel sends: encapsulate with our own encap and swap roles.
        let inner = udp_frame(
            REMOTE_VXLAN_MAC,
            lab.mac(VXLAN),
            REMOTE_POD_IP,
            POD60_IP,
            64,
            5201,
            40000,
            b"reply",
        );
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner);
        let out = lab.run(CTL, f);
        assert_eq!(out.action, Action::Tx(POD60));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, POD60_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.ttl()),
            (REMOTE_POD_IP, POD60_IP, 63)
        );
        assert_valid_l4(&out.frame);
        assert_eq!(lab.event(Event::VxlanDecap), 1);
    }

    #[test]
    fn decap_rejects_unknown_vni_and_vtep() {
        let lab = Lab::overlay();
        let inner = udp_frame(
            REMOTE_VXLAN_MAC,
            lab.mac(VXLAN),
            REMOTE_POD_IP,
            POD60_IP,
            64,
            1,
            2,
            b"x",
        );
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 3, &inner);
        assert_eq!(
            lab.run(CTL, f).action,
            Action::Drop(DropReason::VxlanUnknownVni)
        );
        let f = vxlan_frame(&lab, Ipv4Addr::new(10, 186, 152, 99), 2, &inner);
        assert_eq!(
            lab.run(CTL, f).action,
            Action::Drop(DropReason::VxlanUnknownVtep)
        );
        // No I flag.
        let mut f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner);
        f[42] = 0;
        assert_eq!(lab.run(CTL, f).action, Action::Drop(DropReason::Malformed));
        // Truncated inner frame.
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner[..10]);
        assert_eq!(lab.run(CTL, f).action, Action::Drop(DropReason::Malformed));
    }

    #[test]
    fn df_too_big_for_the_overlay_gets_frag_needed_1450() {
        let lab = Lab::overlay();
        // 1451-byte IP packet from a pod with MTU 1450 on its side... as a pod MTU would
        // forbid, but a pod with a bigger MTU could send it.
        let f = to_remote(&lab, 1451 - 28);
        let out = lab.run(POD60, f);
        assert_eq!(out.action, Action::Tx(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert_eq!(ip.dst_addr(), POD60_IP);
        let icmp = crate::wire::IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (Message::DstUnreachable, 4));
        assert_eq!(icmp.next_hop_mtu(), 1450);
        // Exactly 1450 fits and is encapsulated into a 1500-byte outer packet.
        let out = lab.run(POD60, to_remote(&lab, 1450 - 28));
        assert_eq!(out.action, Action::Tx(CTL));
        assert_eq!(
            Ipv4Packet::new_checked(&out.frame[14..])
                .unwrap()
                .total_len(),
            1500
        );
    }

    #[test]
    fn unresolved_underlay_neighbour_becomes_arp_on_ctl() {
        let lab = Lab::overlay();
        lab.shared.neigh.remove(REMOTE_CTL_IP);
        let out = lab.run(POD60, to_remote(&lab, 10));
        assert_eq!(out.action, Action::Tx(CTL));
        let r = crate::wire::ArpRepr::parse(
            &crate::wire::ArpPacket::new_checked(&out.frame[14..]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (r.source_protocol_addr, r.target_protocol_addr),
            (CTL_IP, REMOTE_CTL_IP)
        );
    }
}
