//! Services and NAT (SPEC B1–B7, B13, B14), between classification and routing: every
//! IPv4 packet is first looked up in conntrack by its 5-tuple.
//!
//! - **Hit** (original direction): DNAT/SNAT are re-applied from the entry; (reply
//!   direction): un-NAT, source back to VIP:port and destination back to the client (B4).
//!   The entry holds the backend, so established flows survive backend changes (B14); only
//!   a UDP entry whose backend is gone from the service is dropped and rescheduled.
//! - **Miss** on a service frontend: no ready backend → REJECT as kube-proxy does (TCP RST,
//!   ICMP port unreachable); else affinity, then the scheduler, DNAT to the backend, and the
//!   SNAT decision (hairpin, MASQUERADE rules, externalTrafficPolicy: Cluster) made on the
//!   egress port of a route lookup on the backend (B8). The entry is inserted before the
//!   packet is rewritten; if another worker won the race for the same tuple (UDP DNS), its
//!   entry is used.
//! - **ICMP errors** quoting a tracked flow are translated back, outer and inner (B13).
//! - **ICMP echo to a service address** is answered by the node, as kube-proxy's IPVS mode
//!   does (the VIPs sit on `kube-ipvs0`, a local device): ping then tells whether a VIP is
//!   programmed, without inventing a port for a protocol that has none. Other ICMP to a VIP,
//!   and TCP/UDP to a port no service has, is dropped (`vip_no_service`).

use super::{Action, Ctx, RxMeta, icmp, local, nat, route};
use crate::conntrack::{Dir, Flow, Hit, InsertError, Tuple};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::service::{
    BackendState, FlowKey, Frontend, MARK_MASQ, PROTO_TCP, PROTO_UDP, Service, SnatTo,
};
use crate::wire::icmp::{DstUnreachable, Message};
use crate::wire::{
    EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, ethernet, tcp,
};
use core::net::Ipv4Addr;

/// Ports tried for one SNAT before giving up: the client's own, then this many from the
/// worker's range.
const SNAT_TRIES: usize = 16;

/// What classification does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Not a service or tracked flow: the normal path (node address, or forward).
    Continue,
    /// Translated: route on the new destination.
    Route,
    /// Finished here (rejected, answered, dropped).
    Done(Action),
}

#[inline]
pub fn run(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Next {
    // A node with no services and no NAT rules, and no flows left from ones it had, has
    // nothing to translate: plain forwarding skips the conntrack lookup entirely.
    if ctx.tables.services.is_inert() && ctx.shared.conntrack.count() == 0 {
        return Next::Continue;
    }
    let l3 = &frame.data()[ethernet::HEADER_LEN..];
    let ip = Ipv4Packet::new_unchecked(l3);
    let Some((t, flags)) = nat::tuple_of(&ip) else {
        if ip.frag_offset() != 0 && ctx.tables.services.is_vip(ip.dst_addr()) {
            return Next::Done(Action::Drop(DropReason::NatFragment));
        }
        if nat::icmp_error_payload(&ip).is_some() {
            return related(frame, ctx);
        }
        if ctx.tables.services.is_vip(ip.dst_addr()) {
            return Next::Done(Action::Drop(DropReason::VipNoService));
        }
        return Next::Continue;
    };
    let bytes = ip.total_len() as u32;
    // Before the lookup, so that a flow going live after it shows (`fill_untracked`).
    let (addrs, ports) = t.addrs_ports();
    let epoch = ctx.shared.conntrack.live_epoch(addrs, ports);
    if let Some(hit) = ctx.shared.conntrack.lookup(&t, ctx.now_s) {
        if still_valid(&hit, ctx) {
            return tracked(frame, meta, ctx, &t, &hit, flags, bytes);
        }
        crate::trace_step!(ctx, "service", "{t:?}: backend removed, rescheduling");
        if ctx.may_mutate() {
            ctx.shared.conntrack.remove(hit.slot);
            ctx.counters.event(Event::ServiceRebalanced);
        }
    }
    let services = &ctx.tables.services;
    if services.is_inert() {
        return untracked(frame, meta, ctx, &t, epoch);
    }
    if t.proto == u8::from(IpProtocol::Icmp) {
        if services.is_vip(t.dst) {
            if Message::from(ip.payload()[0]) == Message::EchoRequest {
                crate::trace_step!(ctx, "service", "echo to VIP {}: answered", t.dst);
                ctx.counters.event(Event::VipEchoReply);
                return Next::Done(local::run(frame, meta, ctx));
            }
            return Next::Done(Action::Drop(DropReason::VipNoService));
        }
        return masquerade_only(frame, meta, ctx, &t, flags, bytes, epoch);
    }
    match services.lookup_with(t.dst, t.dport, t.proto, || ctx.tables.is_local(t.dst)) {
        Some((svc, fe)) => new_flow(frame, meta, ctx, svc, fe, &t, flags, bytes),
        None if services.is_vip(t.dst) => Next::Done(Action::Drop(DropReason::VipNoService)),
        // A reply of a flow the flood guard did not track (`pipeline::flood`).
        None => super::flood::reply(frame, ctx, &t)
            .unwrap_or_else(|| masquerade_only(frame, meta, ctx, &t, flags, bytes, epoch)),
    }
}

/// A flow this stage leaves alone (conntrack missed with `epoch`, not to a service, no
/// masquerade rule): routed untranslated unless it is for the node, which the flow cache then
/// remembers so that its next packets skip this stage.
#[inline]
fn untracked(frame: &Frame, meta: &RxMeta, ctx: &Ctx, t: &Tuple, epoch: u64) -> Next {
    // For the node: classification delivers it (and says so in a trace).
    if ctx.tables.is_local(t.dst) {
        return Next::Continue;
    }
    super::flow_cache::fill_untracked(frame.data(), meta, ctx, t, epoch);
    // Routed untranslated: what classification would do after its own node-address lookup,
    // which this one makes redundant.
    Next::Route
}

/// B14: a UDP entry must not keep sending to a backend that was removed from its service
/// (there is no connection to drain; kube-proxy flushes such entries). TCP entries keep their
/// backend until they close or expire — once established: a connection the backend never
/// answered (its SYN being retransmitted after a removal) is still a new flow, and a new flow
/// never goes to a removed backend.
#[inline]
fn still_valid(hit: &Hit, ctx: &Ctx) -> bool {
    let f = &hit.flow;
    if f.service == 0 || hit.dir != Dir::Original {
        return true;
    }
    let movable = f.orig.proto == PROTO_UDP || (f.orig.proto == PROTO_TCP && !hit.replied);
    if !movable {
        return true;
    }
    match ctx.tables.services.get(f.service) {
        Some(s) if s.generation == f.generation => true,
        Some(s) => s.backend_by_key(f.backend).is_some(),
        None => false,
    }
}

#[inline]
fn tracked(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    t: &Tuple,
    hit: &Hit,
    flags: u8,
    bytes: u32,
) -> Next {
    let original = hit.dir == Dir::Original;
    let to = nat::translated(&hit.flow, original);
    crate::trace_step!(ctx, "conntrack", "{:?} hit → {to:?}", hit.dir);
    super::flow_cache::fill(frame.data(), meta, ctx, t, hit, &to);
    nat::rewrite(&mut frame.data_mut()[ethernet::HEADER_LEN..], &to);
    if ctx.may_mutate() {
        ctx.shared
            .conntrack
            .update(hit, hit.dir, flags, bytes, ctx.now_s);
    }
    Next::Route
}

/// The address a translated packet to `dst` would leave from (the egress port's address, or
/// the pod gateway on a pod port): MASQUERADE's source.
#[inline]
fn egress_addr(dst: Ipv4Addr, ctx: &Ctx) -> Option<Ipv4Addr> {
    let route = ctx.tables.fib.lookup(dst)?;
    let nh = route.nexthops.first()?;
    let port = ctx.tables.ports.get(nh.port)?;
    route::source_addr(port, ctx)
}

#[allow(clippy::too_many_arguments)]
fn new_flow(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    svc: &Service,
    fe: Frontend,
    t: &Tuple,
    flags: u8,
    bytes: u32,
) -> Next {
    let pool = svc.pool(fe);
    if pool.is_empty() {
        crate::trace_step!(
            ctx,
            "service",
            "{}: no ready backend, reject",
            svc.spec.name
        );
        ctx.counters.event(Event::ServiceReject);
        return Next::Done(reject(frame, meta, ctx, t));
    }
    // Above the flood guard's rate, ClusterIP flows go by Maglev untracked.
    if let Some(next) = super::flood::new_flow(frame, meta, ctx, svc, fe, t, flags) {
        return next;
    }
    let now = ctx.now_s;
    let id = svc.id();
    let mut pick = None;
    if let Some(timeout) = svc.spec.affinity_timeout
        && let Some(key) = ctx.shared.affinity.get(id, t.src, timeout, now)
        && let Some((i, _)) = svc.backend_by_key(key)
        && pool.ready.contains(&(i as u16))
    {
        pick = Some(i);
    }
    let flow_key = FlowKey {
        client: t.src,
        client_port: t.sport,
        proto: t.proto,
    };
    let Some(i) = pick.or_else(|| {
        svc.pick(pool, &flow_key, ctx.local, ctx.may_mutate(), |b| {
            ctx.shared.lc.get(id, b.key())
        })
    }) else {
        return Next::Done(reject(frame, meta, ctx, t));
    };
    let b = svc.backends()[i];
    debug_assert_eq!(b.state, BackendState::Ready);
    if ctx.may_mutate() {
        if svc.spec.affinity_timeout.is_some() {
            ctx.shared.affinity.set(id, t.src, b.key(), now);
        }
        if svc.spec.scheduler == crate::service::Scheduler::Lc {
            ctx.shared.lc.bump(id, b.key());
        }
    }
    // The SNAT decision, in kube-proxy's order: hairpin, the node's MASQUERADE rules (matched
    // on the packet as it arrived), then externalTrafficPolicy: Cluster for outside traffic.
    let masq = ctx
        .tables
        .services
        .masquerade
        .iter()
        .find(|r| r.matches(t.src, t.dst, meta.port, meta.vlan));
    let snat = if t.src == b.addr {
        Some((SnatTo::Egress, MARK_MASQ))
    } else if let Some(r) = masq {
        Some((r.to, r.mark))
    } else if fe.is_external() && !svc.spec.etp_local {
        Some((SnatTo::Egress, MARK_MASQ))
    } else {
        None
    };
    crate::trace_step!(
        ctx,
        "service",
        "{} via {fe:?}: backend {}:{} ({}), snat {snat:?}",
        svc.spec.name,
        b.addr,
        b.port,
        svc.spec.scheduler.name()
    );
    ctx.counters.event(Event::ServiceNewFlow);
    let flow = Flow {
        orig: *t,
        reply: Tuple {
            src: b.addr,
            dst: t.src,
            sport: b.port,
            dport: t.sport,
            proto: t.proto,
        },
        service: id,
        backend: b.key(),
        generation: svc.generation,
        mark: 0,
    };
    commit(frame, ctx, flow, snat, flags, bytes)
}

/// Traffic that is not for a service but matches a MASQUERADE rule (e.g. a pod reaching
/// outside the cluster) is source-NATed and tracked; everything else passes untouched and
/// untracked.
#[inline]
#[allow(clippy::too_many_arguments)]
fn masquerade_only(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    t: &Tuple,
    flags: u8,
    bytes: u32,
    epoch: u64,
) -> Next {
    // Most nodes forward most traffic untranslated: no rules, no call.
    if ctx.tables.services.masquerade.is_empty() {
        return untracked(frame, meta, ctx, t, epoch);
    }
    masquerade_rules(frame, meta, ctx, t, flags, bytes, epoch)
}

#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn masquerade_rules(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    t: &Tuple,
    flags: u8,
    bytes: u32,
    epoch: u64,
) -> Next {
    let Some(r) = ctx
        .tables
        .services
        .masquerade
        .iter()
        .find(|r| r.matches(t.src, t.dst, meta.port, meta.vlan))
    else {
        return untracked(frame, meta, ctx, t, epoch);
    };
    // Only the first packet of a flow starts tracking, as in netfilter: ICMP echo replies
    // or TCP segments of flows we never saw pass untouched.
    if t.proto == u8::from(IpProtocol::Icmp) {
        let ip = Ipv4Packet::new_unchecked(&frame.data()[ethernet::HEADER_LEN..]);
        if Message::from(ip.payload()[0]) != Message::EchoRequest {
            return Next::Continue;
        }
    }
    let flow = Flow {
        orig: *t,
        reply: t.reverse(),
        service: 0,
        backend: 0,
        generation: 0,
        mark: 0,
    };
    commit(frame, ctx, flow, Some((r.to, r.mark)), flags, bytes)
}

/// Applies the SNAT decision to `flow`, tracks it (retrying SNAT ports on a clash) and
/// rewrites the packet from the tracked entry.
fn commit(
    frame: &mut Frame,
    ctx: &Ctx,
    mut flow: Flow,
    snat: Option<(SnatTo, u32)>,
    flags: u8,
    bytes: u32,
) -> Next {
    if let Some((to, mark)) = snat {
        let addr = match to {
            SnatTo::Address(a) => Some(a),
            SnatTo::Egress => egress_addr(flow.reply.src, ctx),
        };
        // No route to the backend: leave the source alone; routing will drop the packet
        // and say why (no_route) without leaving an entry behind.
        let Some(addr) = addr else {
            nat::rewrite(
                &mut frame.data_mut()[ethernet::HEADER_LEN..],
                &flow.reply.reverse(),
            );
            return Next::Route;
        };
        flow.reply.dst = addr;
        flow.mark = mark;
        ctx.counters.event(Event::SnatNewFlow);
    }
    if !ctx.may_mutate() {
        nat::rewrite(
            &mut frame.data_mut()[ethernet::HEADER_LEN..],
            &flow.reply.reverse(),
        );
        return Next::Route;
    }
    let ct = &ctx.shared.conntrack;
    let mut hit = None;
    for attempt in 0..=SNAT_TRIES {
        match ct.insert(flow, ctx.now_s) {
            Ok(h) => {
                hit = Some(h);
                break;
            }
            Err(InsertError::Full) => return Next::Done(Action::Drop(DropReason::ConntrackFull)),
            // Only a SNATed flow can move to another port; without SNAT the reply tuple is
            // the client's own, and another flow (through another VIP) already holds it.
            Err(InsertError::Clash) if snat.is_some() && attempt < SNAT_TRIES => {
                ctx.counters.event(Event::SnatPortRetry);
                let p = ctx.local.snat_port();
                flow.reply.dport = p;
                if flow.orig.proto == u8::from(IpProtocol::Icmp) {
                    flow.reply.sport = p;
                }
            }
            Err(InsertError::Clash) => break,
        }
    }
    let Some(hit) = hit else {
        return Next::Done(Action::Drop(DropReason::NatNoPort));
    };
    // The entry returned may be another worker's (same original tuple inserted first): its
    // translation wins, so both packets of a racing pair go to one backend.
    let to = nat::translated(&hit.flow, true);
    nat::rewrite(&mut frame.data_mut()[ethernet::HEADER_LEN..], &to);
    ct.update(&hit, Dir::Original, flags, bytes, ctx.now_s);
    Next::Route
}

/// ICMP errors about a tracked flow (RELATED): translated back so that the peer that sent
/// the quoted packet recognises it. Also applied by `icmp::error` to the errors afgate
/// builds itself.
pub(super) fn related(frame: &mut Frame, ctx: &Ctx) -> Next {
    let l3 = &frame.data()[ethernet::HEADER_LEN..];
    let ip = Ipv4Packet::new_unchecked(l3);
    let Some(msg) = nat::icmp_error_payload(&ip) else {
        return Next::Continue;
    };
    let Some(q) = nat::quoted(msg) else {
        return Next::Continue;
    };
    let Some(hit) = ctx.shared.conntrack.lookup(&q.tuple.reverse(), ctx.now_s) else {
        return Next::Continue;
    };
    crate::trace_step!(ctx, "conntrack", "ICMP error about {:?}: related", q.tuple);
    ctx.counters.event(Event::NatIcmpRelated);
    nat::rewrite_icmp_error(
        &mut frame.data_mut()[ethernet::HEADER_LEN..],
        &q.tuple,
        &hit.flow,
        hit.dir == Dir::Original,
    );
    Next::Route
}

/// kube-proxy's REJECT for a service without endpoints: TCP gets a RST (the client's
/// connect fails at once), anything else an ICMP port unreachable.
fn reject(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx, t: &Tuple) -> Action {
    if t.proto == PROTO_TCP {
        return tcp_rst(frame, meta, ctx).unwrap_or(Action::Drop(DropReason::Malformed));
    }
    icmp::error(
        frame,
        meta,
        ctx,
        Message::DstUnreachable,
        DstUnreachable::PortUnreachable.into(),
        [0; 4],
    )
    .unwrap_or(Action::Drop(DropReason::Malformed))
}

/// Turns a TCP segment into the RST that answers it (RFC 9293 §3.10.7.1), in place, sent
/// back out of the ingress port to the sender's MAC.
fn tcp_rst(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    let port = ctx.tables.ports.get(meta.port)?;
    let l3 = ethernet::HEADER_LEN;
    let (src, dst, sport, dport, seq, ack, flags, seg_len) = {
        let ip = Ipv4Packet::new_unchecked(&frame.data()[l3..]);
        let t = TcpPacket::new_checked(ip.payload()).ok()?;
        let hl = t.header_len() as usize;
        let payload = ip.payload().len().saturating_sub(hl) as u32;
        let f = t.flags();
        let seg_len =
            payload + u32::from(f & tcp::flags::SYN != 0) + u32::from(f & tcp::flags::FIN != 0);
        (
            ip.src_addr(),
            ip.dst_addr(),
            t.src_port(),
            t.dst_port(),
            t.seq_number(),
            t.ack_number(),
            f,
            seg_len,
        )
    };
    if flags & tcp::flags::RST != 0 {
        return Some(Action::Drop(DropReason::VipNoService));
    }
    const LEN: usize = 20 + tcp::HEADER_LEN;
    if !frame.set_len(l3 + LEN) {
        return None;
    }
    let data = frame.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    let sender = eth.src_addr();
    eth.set_dst_addr(sender);
    eth.set_src_addr(EthernetAddress(port.mac));
    Ipv4Repr {
        src_addr: dst,
        dst_addr: src,
        next_header: IpProtocol::Tcp,
        payload_len: tcp::HEADER_LEN,
        ttl: 64,
        dscp_ecn: 0,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut data[l3..l3 + 20]));
    let mut t = TcpPacket::new_unchecked(&mut data[l3 + 20..l3 + LEN]);
    t.set_src_port(dport);
    t.set_dst_port(sport);
    t.set_header_len(tcp::HEADER_LEN as u8);
    if flags & tcp::flags::ACK != 0 {
        t.set_seq_number(ack);
        t.set_ack_number(0);
        t.set_flags(tcp::flags::RST);
    } else {
        t.set_seq_number(0);
        t.set_ack_number(seq.wrapping_add(seg_len));
        t.set_flags(tcp::flags::RST | tcp::flags::ACK);
    }
    t.set_window_len(0);
    t.set_urgent_at(0);
    // A new 40-byte packet: summing it whole is as cheap as patching it.
    t.fill_checksum(dst, src);
    Some(Action::Tx(meta.port))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::service::{ServiceSpec, ServiceTable, SnatTo};
    use crate::tables::ports::POD_GATEWAY;
    use crate::wire::{IcmpPacket, Ipv4Cidr, UdpPacket};

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
    const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const EXT2_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 11);

    fn lab_with(specs: Vec<ServiceSpec>) -> Lab {
        let mut lab = Lab::new();
        lab.shared.neigh.set_static(POD41_IP, POD41_MAC, POD41);
        let mut t = ServiceTable::new();
        for s in specs {
            t.upsert(s).unwrap();
        }
        lab.tables.services = t;
        lab
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        syn: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(5000) };
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// (src, sport, dst, dport) of the frame's IPv4/L4 headers, checksums verified against
    /// etherparse's full recomputation.
    fn addrs(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
        assert_valid_l4(frame);
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let (s, d) = nat::tuple_of(&ip).map(|(t, _)| (t.sport, t.dport)).unwrap();
        (ip.src_addr(), s, ip.dst_addr(), d)
    }

    #[test]
    fn clusterip_tcp_dnat_then_reply_is_unnated() {
        let lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD41_IP, 8080)],
        )]);
        let syn = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        let out = lab.run(POD60, syn);
        assert_eq!(out.action, Action::Tx(POD41));
        assert_eq!(addrs(&out.frame), (POD60_IP, 40000, POD41_IP, 8080));
        assert_eq!(lab.event(Event::ServiceNewFlow), 1);
        // The backend answers; the client sees the VIP.
        let synack = tcp(
            POD41_MAC,
            lab.mac(POD41),
            POD41_IP,
            POD60_IP,
            8080,
            40000,
            false,
            b"",
        );
        let out = lab.run(POD41, synack);
        assert_eq!(out.action, Action::Tx(POD60));
        assert_eq!(addrs(&out.frame), (VIP, 80, POD60_IP, 40000));
        // Later client packets are translated from the entry, with payload.
        let data = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            false,
            b"GET / HTTP/1.1\r\n",
        );
        let out = lab.run(POD60, data);
        assert_eq!(addrs(&out.frame), (POD60_IP, 40000, POD41_IP, 8080));
        assert_eq!(lab.event(Event::ServiceNewFlow), 1, "one flow");
        assert_eq!(lab.shared.conntrack.count(), 1);
    }

    #[test]
    fn udp_dns_and_zero_checksum_stays_zero() {
        let lab = lab_with(vec![cluster_ip_service(
            2,
            DNS_VIP,
            53,
            PROTO_UDP,
            vec![be(POD41_IP, 53)],
        )]);
        let q = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            DNS_VIP,
            64,
            5353,
            53,
            b"query",
        );
        let out = lab.run(POD60, q.clone());
        assert_eq!(out.action, Action::Tx(POD41));
        assert_eq!(addrs(&out.frame), (POD60_IP, 5353, POD41_IP, 53));
        // A datagram without checksum keeps none (RFC 768).
        let mut nock = q;
        nock[14 + 20 + 6] = 0;
        nock[14 + 20 + 7] = 0;
        let out = lab.run(POD60, nock);
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(UdpPacket::new_checked(ip.payload()).unwrap().checksum(), 0);
        let r = udp_frame(
            POD41_MAC,
            lab.mac(POD41),
            POD41_IP,
            POD60_IP,
            64,
            53,
            5353,
            b"answer",
        );
        let out = lab.run(POD41, r);
        assert_eq!(addrs(&out.frame), (DNS_VIP, 53, POD60_IP, 5353));
    }

    #[test]
    fn the_dns_race_ends_in_one_entry() {
        // Two backends, round robin: without the race handling the second packet of the
        // same tuple would be scheduled to the other backend.
        let lab = lab_with(vec![cluster_ip_service(
            2,
            DNS_VIP,
            53,
            PROTO_UDP,
            vec![be(POD41_IP, 53), be(Ipv4Addr::new(10, 20, 9, 42), 53)],
        )]);
        let q = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            DNS_VIP,
            64,
            5353,
            53,
            b"A?",
        );
        let a = lab.run(POD60, q.clone());
        let b = lab.run(POD60, q);
        assert_eq!(addrs(&a.frame), addrs(&b.frame));
        assert_eq!(lab.shared.conntrack.count(), 1);
    }

    #[test]
    fn nodeport_with_cluster_policy_is_snated_and_replies_restored() {
        let mut s = cluster_ip_service(3, VIP, 80, PROTO_TCP, vec![be(POD41_IP, 8080)]);
        s.node_port = Some(31234);
        let lab = lab_with(vec![s]);
        let syn = tcp(
            GW_MAC,
            lab.mac(BIZ),
            EXT_IP,
            BIZ_IP,
            40000,
            31234,
            true,
            b"",
        );
        let out = lab.run(BIZ, syn);
        assert_eq!(out.action, Action::Tx(POD41));
        // Egress is a pod port: MASQUERADE to the pod gateway address.
        assert_eq!(addrs(&out.frame), (POD_GATEWAY, 40000, POD41_IP, 8080));
        let back = tcp(
            POD41_MAC,
            lab.mac(POD41),
            POD41_IP,
            POD_GATEWAY,
            8080,
            40000,
            false,
            b"",
        );
        let out = lab.run(POD41, back);
        assert_eq!(out.action, Action::Tx(BIZ));
        assert_eq!(addrs(&out.frame), (BIZ_IP, 31234, EXT_IP, 40000));
        assert_eq!(lab.event(Event::SnatNewFlow), 1);
    }

    #[test]
    fn nodeport_with_local_policy_keeps_the_client_and_uses_local_backends() {
        let mut remote = be(Ipv4Addr::new(10, 20, 4, 5), 8080);
        remote.local = false;
        let mut s = cluster_ip_service(3, VIP, 80, PROTO_TCP, vec![remote, be(POD41_IP, 8080)]);
        s.node_port = Some(31234);
        s.etp_local = true;
        let lab = lab_with(vec![s]);
        for port in 40000..40004 {
            let syn = tcp(GW_MAC, lab.mac(BIZ), EXT_IP, BIZ_IP, port, 31234, true, b"");
            let out = lab.run(BIZ, syn);
            assert_eq!(addrs(&out.frame), (EXT_IP, port, POD41_IP, 8080));
        }
        // ClusterIP traffic from a pod may still use both.
        let mut seen = std::collections::HashSet::new();
        for port in 40000..40004 {
            let syn = tcp(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                VIP,
                port,
                80,
                true,
                b"",
            );
            seen.insert(addrs(&lab.run(POD60, syn).frame).2);
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn hairpin_is_snated_to_the_pod_gateway() {
        let lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD60_IP, 8080)],
        )]);
        let syn = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        let out = lab.run(POD60, syn);
        assert_eq!(out.action, Action::Tx(POD60));
        assert_eq!(addrs(&out.frame), (POD_GATEWAY, 40000, POD60_IP, 8080));
        let back = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            POD_GATEWAY,
            8080,
            40000,
            false,
            b"",
        );
        let out = lab.run(POD60, back);
        assert_eq!(out.action, Action::Tx(POD60));
        assert_eq!(addrs(&out.frame), (VIP, 80, POD60_IP, 40000));
    }

    #[test]
    fn masquerade_rule_matches_port_and_cidrs() {
        let mut lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(GW_IP, 8080)],
        )]);
        lab.tables
            .services
            .masquerade
            .push(crate::service::MasqRule {
                src: "10.20.9.0/25".parse::<Ipv4Cidr>().unwrap(),
                in_port: Some(POD60),
                in_vlan: None,
                dst: "10.96.0.0/16".parse::<Ipv4Cidr>().unwrap(),
                to: SnatTo::Egress,
                mark: 0x200,
            });
        let syn = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        let out = lab.run(POD60, syn);
        assert_eq!(out.action, Action::Tx(BIZ));
        assert_eq!(addrs(&out.frame), (BIZ_IP, 40000, GW_IP, 8080));
        let e = lab.shared.conntrack.entries(1);
        assert_eq!(e[0].mark, 0x200);
        // Not from the rule's port: no SNAT.
        let syn = tcp(
            POD41_MAC,
            lab.mac(POD41),
            POD41_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        assert_eq!(
            addrs(&lab.run(POD41, syn).frame),
            (POD41_IP, 40000, GW_IP, 8080)
        );
        // A rule to a non-service destination masquerades plain forwarding too.
        lab.tables.services.masquerade[0].dst = "0.0.0.0/0".parse().unwrap();
        let f = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            EXT_IP,
            64,
            7000,
            53,
            b"x",
        );
        assert_eq!(addrs(&lab.run(POD60, f).frame), (BIZ_IP, 7000, EXT_IP, 53));
        let r = udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, BIZ_IP, 64, 53, 7000, b"y");
        let out = lab.run(BIZ, r);
        assert_eq!(out.action, Action::Tx(POD60));
        assert_eq!(addrs(&out.frame), (EXT_IP, 53, POD60_IP, 7000));
    }

    #[test]
    fn snat_port_clash_picks_another_port() {
        let mut s = cluster_ip_service(3, VIP, 80, PROTO_TCP, vec![be(POD41_IP, 8080)]);
        s.node_port = Some(31234);
        let lab = lab_with(vec![s]);
        let a = tcp(
            GW_MAC,
            lab.mac(BIZ),
            EXT_IP,
            BIZ_IP,
            40000,
            31234,
            true,
            b"",
        );
        let b = tcp(
            GW_MAC,
            lab.mac(BIZ),
            EXT2_IP,
            BIZ_IP,
            40000,
            31234,
            true,
            b"",
        );
        let (_, pa, _, _) = addrs(&lab.run(BIZ, a).frame);
        let (_, pb, _, _) = addrs(&lab.run(BIZ, b).frame);
        assert_eq!(pa, 40000);
        assert_ne!(pb, 40000);
        assert!(crate::service::SNAT_PORTS.contains(&pb));
        assert_eq!(lab.event(Event::SnatPortRetry), 1);
        // Each reply goes back to its own client.
        let back = tcp(
            POD41_MAC,
            lab.mac(POD41),
            POD41_IP,
            POD_GATEWAY,
            8080,
            pb,
            false,
            b"",
        );
        assert_eq!(
            addrs(&lab.run(POD41, back).frame),
            (BIZ_IP, 31234, EXT2_IP, 40000)
        );
    }

    #[test]
    fn no_ready_backend_rejects_tcp_with_rst_and_udp_with_port_unreachable() {
        let mut term = be(POD41_IP, 8080);
        term.state = BackendState::Terminating;
        let lab = lab_with(vec![
            cluster_ip_service(1, VIP, 80, PROTO_TCP, vec![term]),
            cluster_ip_service(2, DNS_VIP, 53, PROTO_UDP, vec![]),
        ]);
        let syn = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        let out = lab.run(POD60, syn);
        assert_eq!(out.action, Action::Tx(POD60));
        assert_eq!(addrs(&out.frame), (VIP, 80, POD60_IP, 40000));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.rst() && t.ack());
        assert_eq!(t.ack_number(), 1001, "SYN's seq + 1");
        assert_eq!(
            EthernetFrame::new_checked(&out.frame[..])
                .unwrap()
                .dst_addr()
                .0,
            POD60_MAC
        );
        let q = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            DNS_VIP,
            64,
            5353,
            53,
            b"q",
        );
        let out = lab.run(POD60, q);
        assert_eq!(out.action, Action::Tx(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (Message::DstUnreachable, 3));
        assert!(icmp.verify_checksum());
        assert_eq!(lab.event(Event::ServiceReject), 2);
        assert_eq!(lab.shared.conntrack.count(), 0);
    }

    #[test]
    fn vip_echo_is_answered_and_unknown_ports_dropped() {
        let lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD41_IP, 8080)],
        )]);
        let f = icmp_echo_frame(POD60_MAC, lab.mac(POD60), POD60_IP, VIP, 64, 7, 1, b"ping");
        let out = lab.run(POD60, f);
        assert_eq!(out.action, Action::Tx(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (VIP, POD60_IP));
        assert_eq!(lab.event(Event::VipEchoReply), 1);
        let f = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            81,
            true,
            b"",
        );
        assert_eq!(
            lab.run(POD60, f).action,
            Action::Drop(DropReason::VipNoService)
        );
    }

    /// An ICMP error quoting `inner` (the whole packet, as Linux quotes up to 576 bytes).
    fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        from_mac: [u8; 6],
        to_mac: [u8; 6],
        inner: &[u8],
    ) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(from_mac, to_mac)
            .ipv4(src.octets(), dst.octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ));
        let mut out = Vec::new();
        b.write(&mut out, inner).unwrap();
        out
    }

    #[test]
    fn icmp_errors_about_tracked_flows_are_translated_back() {
        let mut s = cluster_ip_service(2, DNS_VIP, 53, PROTO_UDP, vec![be(POD41_IP, 53)]);
        s.node_port = Some(31053);
        let lab = lab_with(vec![s]);
        let q = udp_frame(
            GW_MAC,
            lab.mac(BIZ),
            EXT_IP,
            BIZ_IP,
            64,
            5353,
            31053,
            b"query",
        );
        let sent = lab.run(BIZ, q.clone());
        assert_eq!(addrs(&sent.frame), (POD_GATEWAY, 5353, POD41_IP, 53));
        // The backend's host says port unreachable, quoting the packet as it received it.
        let err = icmp_error(
            POD41_IP,
            POD_GATEWAY,
            POD41_MAC,
            lab.mac(POD41),
            &sent.frame[14..],
        );
        let out = lab.run(POD41, err);
        assert_eq!(out.action, Action::Tx(BIZ));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (BIZ_IP, EXT_IP));
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(
            icmp.verify_checksum(),
            "ICMP checksum equals a full recomputation"
        );
        // The quoted packet is what the client sent, checksums and all (TTL aside: the
        // client's packet was decremented by afgate before the backend quoted it).
        let quoted = icmp.payload();
        let mut want = q[14..].to_vec();
        let mut got = quoted.to_vec();
        want[8] = 0;
        got[8] = 0;
        want[10..12].fill(0);
        got[10..12].fill(0);
        assert_eq!(got, want);
        let inner = etherparse::Ipv4HeaderSlice::from_slice(quoted)
            .unwrap()
            .to_header();
        assert_eq!(
            inner.calc_header_checksum(),
            inner.header_checksum,
            "inner ip checksum"
        );
        let udp = etherparse::UdpHeaderSlice::from_slice(&quoted[20..])
            .unwrap()
            .to_header();
        assert_eq!(
            udp.calc_checksum_ipv4(&inner, &quoted[28..]).unwrap(),
            udp.checksum,
            "inner udp"
        );
        assert_eq!(lab.event(Event::NatIcmpRelated), 1);

        // A router on the client side: time exceeded about a reply we sent (VIP → client).
        let r = udp_frame(
            POD41_MAC,
            lab.mac(POD41),
            POD41_IP,
            POD_GATEWAY,
            64,
            53,
            5353,
            b"answer",
        );
        let reply = lab.run(POD41, r);
        assert_eq!(addrs(&reply.frame), (BIZ_IP, 31053, EXT_IP, 5353));
        let mut err = icmp_error(GW_IP, BIZ_IP, GW_MAC, lab.mac(BIZ), &reply.frame[14..]);
        err[14 + 20] = 11; // time exceeded
        err[14 + 21] = 0;
        let mut m = IcmpPacket::new_unchecked(&mut err[34..]);
        m.fill_checksum();
        let out = lab.run(BIZ, err);
        assert_eq!(out.action, Action::Tx(POD41));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (GW_IP, POD41_IP),
            "router address kept"
        );
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        let quoted = icmp.payload();
        let inner = etherparse::Ipv4HeaderSlice::from_slice(quoted)
            .unwrap()
            .to_header();
        assert_eq!(inner.calc_header_checksum(), inner.header_checksum);
        assert_eq!(
            (inner.source, inner.destination),
            (POD41_IP.octets(), POD_GATEWAY.octets())
        );
        let udp = etherparse::UdpHeaderSlice::from_slice(&quoted[20..])
            .unwrap()
            .to_header();
        assert_eq!((udp.source_port, udp.destination_port), (53, 5353));
        assert_eq!(
            udp.calc_checksum_ipv4(&inner, &quoted[28..]).unwrap(),
            udp.checksum
        );
    }

    #[test]
    fn afgates_own_icmp_errors_about_translated_packets_are_translated_back() {
        // TTL 1 to a ClusterIP: afgate DNATs, then the route stage answers time exceeded
        // about the DNATed packet; the client must see the VIP it sent to, not the backend.
        let lab = lab_with(vec![cluster_ip_service(
            2,
            DNS_VIP,
            53,
            PROTO_UDP,
            vec![be(POD41_IP, 5353)],
        )]);
        let q = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            DNS_VIP,
            1,
            40000,
            53,
            b"query",
        );
        let out = lab.run(POD60, q.clone());
        assert_eq!(out.action, Action::Tx(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (POD_GATEWAY, POD60_IP));
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Message::TimeExceeded);
        assert!(icmp.verify_checksum(), "equals a full recomputation");
        let quoted = icmp.payload();
        let inner = etherparse::Ipv4HeaderSlice::from_slice(quoted)
            .unwrap()
            .to_header();
        assert_eq!(inner.calc_header_checksum(), inner.header_checksum);
        assert_eq!(
            (inner.source, inner.destination),
            (POD60_IP.octets(), DNS_VIP.octets())
        );
        // Only the first 8 bytes of UDP are quoted: ports, length, and the checksum the
        // client computed (translated back to its original value).
        assert_eq!(&quoted[20..28], &q[34..42]);
        assert_eq!(lab.event(Event::NatIcmpRelated), 1);
        assert_eq!(lab.event(Event::ServiceNewFlow), 1);
    }

    #[test]
    fn unanswered_tcp_moves_off_a_removed_backend_answered_tcp_stays() {
        let b2_ip = Ipv4Addr::new(10, 20, 9, 42);
        let mut lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD41_IP, 8080), be(b2_ip, 8080)],
        )]);
        lab.add_pod(b2_ip, POD41_MAC, POD41);
        let syn = |lab: &Lab, sport| {
            tcp(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                VIP,
                sport,
                80,
                true,
                b"",
            )
        };
        // Two connections to whichever backends the scheduler picks; the first gets an
        // answer from its backend, the second does not (its SYN will be retransmitted).
        let first = addrs(&lab.run(POD60, syn(&lab, 41000)).frame).2;
        let reply = tcp(
            POD41_MAC,
            lab.mac(POD41),
            first,
            POD60_IP,
            8080,
            41000,
            false,
            b"",
        );
        let back = lab.run(POD41, reply);
        assert_eq!(addrs(&back.frame).0, VIP, "the answer is de-NATed");
        let mut sport = 41001;
        let second = loop {
            let d = addrs(&lab.run(POD60, syn(&lab, sport)).frame).2;
            if d == first {
                break d;
            }
            sport += 1;
            assert!(sport < 41100, "the scheduler never picked {first} again");
        };
        // That backend is removed from the service.
        let keep = if first == POD41_IP { b2_ip } else { POD41_IP };
        let mut next = lab.tables.services.clone();
        next.upsert(cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(keep, 8080)],
        ))
        .unwrap();
        lab.tables.services = next;
        let rebalanced = lab.event(Event::ServiceRebalanced);
        // The answered (established) connection keeps its backend...
        let data = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            41000,
            80,
            false,
            b"x",
        );
        assert_eq!(addrs(&lab.run(POD60, data).frame).2, second);
        // ...the unanswered one's retransmitted SYN is scheduled anew, never to the removed one.
        assert_eq!(addrs(&lab.run(POD60, syn(&lab, sport)).frame).2, keep);
        assert_eq!(lab.event(Event::ServiceRebalanced), rebalanced + 1);
    }

    #[test]
    fn backend_changes_keep_tcp_flows_and_rebalance_udp() {
        let b1 = be(POD41_IP, 53);
        let b2 = be(Ipv4Addr::new(10, 20, 9, 42), 53);
        let mut lab = lab_with(vec![
            cluster_ip_service(1, VIP, 80, PROTO_TCP, vec![be(POD41_IP, 8080)]),
            cluster_ip_service(2, DNS_VIP, 53, PROTO_UDP, vec![b1, b2]),
        ]);
        lab.add_pod(Ipv4Addr::new(10, 20, 9, 42), POD41_MAC, POD41);
        let syn = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        assert_eq!(addrs(&lab.run(POD60, syn).frame).2, POD41_IP);
        let q = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            DNS_VIP,
            64,
            5353,
            53,
            b"q",
        );
        assert_eq!(
            addrs(&lab.run(POD60, q.clone()).frame).2,
            POD41_IP,
            "rr: first backend"
        );
        // Next snapshot: POD41 terminating in the TCP service, removed from the UDP one.
        let mut next = lab.tables.services.clone();
        let mut t = cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD41_IP, 8080), be(POD60_IP, 8080)],
        );
        t.backends[0].state = BackendState::Terminating;
        next.upsert(t).unwrap();
        next.upsert(cluster_ip_service(2, DNS_VIP, 53, PROTO_UDP, vec![b2]))
            .unwrap();
        lab.tables.services = next;
        // The established TCP flow keeps its (terminating) backend...
        let data = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            false,
            b"more",
        );
        assert_eq!(addrs(&lab.run(POD60, data).frame).2, POD41_IP);
        // ...new TCP flows never go to it...
        for p in 40001..40005 {
            let syn = tcp(POD60_MAC, lab.mac(POD60), POD60_IP, VIP, p, 80, true, b"");
            assert_eq!(addrs(&lab.run(POD60, syn).frame).2, POD60_IP);
        }
        // ...and the UDP flow moves off the removed backend on its next packet.
        assert_eq!(addrs(&lab.run(POD60, q).frame).2, b2.addr);
        assert_eq!(lab.event(Event::ServiceRebalanced), 1);
    }

    #[test]
    fn affinity_keeps_a_client_on_one_backend() {
        let mut s = cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![
                be(POD41_IP, 8080),
                be(Ipv4Addr::new(10, 20, 9, 42), 8080),
                be(EXT_IP, 8080),
            ],
        );
        s.affinity_timeout = Some(10800);
        let lab = lab_with(vec![s]);
        let mut seen = std::collections::HashSet::new();
        for p in 40000..40010 {
            let syn = tcp(POD60_MAC, lab.mac(POD60), POD60_IP, VIP, p, 80, true, b"");
            seen.insert(addrs(&lab.run(POD60, syn).frame).2);
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
    }

    #[test]
    fn a_trace_translates_but_tracks_nothing() {
        let lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD41_IP, 8080)],
        )]);
        let trace = crate::pipeline::Trace::default();
        let ctx = Ctx {
            trace: Some(&trace),
            ..lab.ctx()
        };
        let syn = tcp(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            VIP,
            40000,
            80,
            true,
            b"",
        );
        let mut buf = vec![0u8; 2048];
        buf[HEADROOM..HEADROOM + syn.len()].copy_from_slice(&syn);
        let mut f = Frame::new(&mut buf, HEADROOM, syn.len());
        let a = crate::pipeline::process(
            &mut f,
            &RxMeta {
                port: POD60,
                vlan: None,
            },
            &ctx,
        );
        assert_eq!(a, Action::Tx(POD41));
        assert_eq!(addrs(f.data()).2, POD41_IP);
        assert_eq!(lab.shared.conntrack.count(), 0);
        assert!(trace.steps().iter().any(|(s, _)| *s == "service"));
    }

    #[test]
    fn unrelated_traffic_is_untouched_and_untracked() {
        let lab = lab_with(vec![cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![be(POD41_IP, 8080)],
        )]);
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
        assert_eq!(addrs(&out.frame), (POD60_IP, 1000, EXT_IP, 53));
        assert_eq!(lab.shared.conntrack.count(), 0);
    }
}
