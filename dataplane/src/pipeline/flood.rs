//! The flood guard (issue #7.4): Katran's fallback for afgate. Above a configured rate of new
//! flows per worker, new ClusterIP flows are no longer inserted into conntrack; they are sent
//! to the backend the service's Maglev table picks for their 5-tuple, which is a pure
//! function of the flow and the backend set, so every packet of the flow (on any worker)
//! reaches the same backend without state. A SYN flood then cannot evict or starve the
//! tracked flows: the table keeps what it had, and early drop has nothing new to push out.
//!
//! Three rules, all inactive until `new_flows_per_sec` is set:
//! 1. **Engaged** (this worker saw more than the limit in this second or the last): a new
//!    flow to a ClusterIP is DNATed to its Maglev backend and not tracked
//!    (`flood_guard_untracked`).
//! 2. **Mid-flow TCP** (no SYN) to a ClusterIP that misses conntrack goes the same stateless
//!    way, engaged or not: it is a flow that started while the guard was engaged, and Maglev
//!    gives it the backend it started on. Tracking it now with another scheduler could move
//!    it.
//! 3. **Replies**: a TCP/UDP packet that misses conntrack and comes from `backend:port` of
//!    exactly one ClusterIP service is un-DNATed statelessly: its source becomes
//!    `VIP:port` (`flood_guard_reply`).
//!
//! Limits (docs/reliability.md): only ClusterIP frontends without SNAT (no hairpin, no
//! MASQUERADE rule, no session affinity) are guarded, the rest is always tracked; a backend
//! `addr:port` shared by two services cannot be un-DNATed statelessly (the reply passes
//! untranslated and the client resets); while the guard is configured, a client talking to a
//! backend's `addr:targetPort` directly (not through the VIP) gets its replies rewritten to
//! the VIP, so enable it only where backends are reached through their services; an untracked
//! flow moves if its service's backend set changes (Maglev moves few flows, but some); a UDP
//! flow that began untracked is tracked (and may be rescheduled) once the guard disengages.
//! Rule 3 is one probe of a reverse index (backend `addr:port/proto` → VIP, built with the
//! service table; `service::reverse`), so its cost per packet does not grow with the number
//! of services or backends; keeping the index costs a service change only the backends it
//! adds or removes.

use super::{Ctx, RxMeta, nat};
use crate::conntrack::Tuple;
use crate::counters::Event;
use crate::frame::Frame;
use crate::service::{Frontend, PROTO_TCP, PROTO_UDP, Service};
use crate::wire::{ethernet, tcp};
use core::cell::Cell;

/// The guard's configuration, part of the published tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodGuard {
    /// New flows per second per worker above which the worker stops tracking new ClusterIP
    /// flows; 0 turns the guard off.
    pub new_flows_per_sec: u32,
}

impl FloodGuard {
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.new_flows_per_sec != 0
    }
}

/// One worker's new-flow rate, in whole dataplane seconds. Cells: only its worker touches it
/// (it lives in [`crate::service::WorkerLocal`]).
#[derive(Debug, Default)]
pub struct WorkerFlood {
    second: Cell<u32>,
    this: Cell<u32>,
    last: Cell<u32>,
}

impl WorkerFlood {
    /// Counts one new flow at `now_s` (unless `count` is false: a dry run) and says whether
    /// it may be tracked: no when this second's or the last second's count is over `limit`.
    /// Looking one second back keeps the guard engaged across the boundary of a sustained
    /// flood instead of tracking the first `limit` flows of every second.
    #[inline]
    pub fn admit(&self, now_s: u32, limit: u32, count: bool) -> bool {
        let (mut this, mut last) = (self.this.get(), self.last.get());
        let second = self.second.get();
        if now_s != second {
            last = if now_s == second.wrapping_add(1) {
                this
            } else {
                0
            };
            this = 0;
        }
        this = this.saturating_add(1);
        if count {
            self.second.set(now_s);
            self.this.set(this);
            self.last.set(last);
        }
        this <= limit && last <= limit
    }

    /// Whether the guard is engaged on this worker at `now_s`, without counting anything.
    pub fn engaged(&self, now_s: u32, limit: u32) -> bool {
        limit != 0 && !self.admit(now_s, limit, false)
    }
}

/// Rules 1 and 2, called for a conntrack miss on a service frontend before the scheduler
/// runs. `Some` when the flow was sent statelessly; `None` to track it as usual.
#[inline]
pub fn new_flow(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    svc: &Service,
    fe: Frontend,
    t: &Tuple,
    flags: u8,
) -> Option<super::service::Next> {
    let limit = ctx.tables.flood_guard.new_flows_per_sec;
    if limit == 0 || fe != Frontend::ClusterIp || svc.spec.affinity_timeout.is_some() {
        return None;
    }
    // SNAT needs a tracked port; such flows are tracked (and early drop protects them).
    if ctx
        .tables
        .services
        .masquerade
        .iter()
        .any(|r| r.matches(t.src, t.dst, meta.port, meta.vlan))
    {
        return None;
    }
    let mid_flow = t.proto == PROTO_TCP && flags & tcp::flags::SYN == 0;
    if !mid_flow && ctx.local.flood.admit(ctx.now_s, limit, ctx.may_mutate()) {
        return None;
    }
    let pool = svc.pool(fe);
    let table = &pool.maglev;
    if table.is_empty() {
        return None;
    }
    // The same hash as `Scheduler::Maglev`, so a service scheduled by Maglev keeps its
    // flows on one backend whether the guard is engaged or not.
    let h = super::flow::mix(
        u32::from(t.src),
        u32::from(t.sport),
        u32::from(t.proto),
        0x6d61_676c,
    );
    let i = table[((h as u64 * table.len() as u64) >> 32) as usize];
    let b = svc.backends().get(i as usize)?;
    // Hairpin (a backend reaching its own VIP) must be SNATed: tracked.
    if b.addr == t.src {
        return None;
    }
    let to = Tuple {
        src: t.src,
        dst: b.addr,
        sport: t.sport,
        dport: b.port,
        proto: t.proto,
    };
    crate::trace_step!(
        ctx,
        "flood",
        "{}: {} → backend {}:{} by Maglev, not tracked",
        svc.spec.name,
        if mid_flow {
            "untracked mid-flow TCP"
        } else {
            "guard engaged"
        },
        b.addr,
        b.port
    );
    ctx.counters.event(Event::FloodGuardUntracked);
    nat::rewrite(&mut frame.data_mut()[ethernet::HEADER_LEN..], &to);
    Some(super::service::Next::Route)
}

/// Rule 3, called for a TCP/UDP conntrack miss that is not to a service: a reply of an
/// untracked flow, un-DNATed by the one ClusterIP service that has its source as a backend.
#[inline]
pub fn reply(frame: &mut Frame, ctx: &Ctx, t: &Tuple) -> Option<super::service::Next> {
    if !ctx.tables.flood_guard.is_enabled() || (t.proto != PROTO_TCP && t.proto != PROTO_UDP) {
        return None;
    }
    // O(1): a reverse index kept with the service table (`service::reverse`), since this
    // runs for every untracked TCP/UDP packet, forwarded traffic included.
    let (vip, port) = ctx.tables.services.backend_vip(t.src, t.sport, t.proto)?;
    let to = Tuple {
        src: vip,
        dst: t.dst,
        sport: port,
        dport: t.dport,
        proto: t.proto,
    };
    crate::trace_step!(
        ctx,
        "flood",
        "untracked reply from backend {}:{} → from {vip}:{port}",
        t.src,
        t.sport
    );
    ctx.counters.event(Event::FloodGuardReply);
    nat::rewrite(&mut frame.data_mut()[ethernet::HEADER_LEN..], &to);
    Some(super::service::Next::Route)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::counters::DropReason;
    use crate::pipeline::Action;
    use crate::service::{Backend, ServiceTable};
    use crate::wire::{EthernetFrame, Ipv4Packet, TcpPacket};
    use core::net::Ipv4Addr;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
    const B1: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 10);
    const B2: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 11);

    fn lab(limit: u32) -> Lab {
        let mut lab = Lab::new();
        lab.shared.neigh.set_static(POD41_IP, POD41_MAC, POD41);
        // Remote backends (behind the gateway), as the flood guard's Maglev pick sees them.
        let remote = |addr| Backend {
            local: false,
            ..be(addr, 8080)
        };
        let mut t = ServiceTable::new();
        t.upsert(cluster_ip_service(
            1,
            VIP,
            80,
            PROTO_TCP,
            vec![remote(B1), remote(B2)],
        ))
        .unwrap();
        lab.tables.services = t;
        lab.tables.flood_guard = FloodGuard {
            new_flows_per_sec: limit,
        };
        lab
    }

    fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(POD60_MAC, [0x02, 0xaf, 0, 0, 0, 2])
            .ipv4(src.octets(), dst.octets(), 64)
            .tcp(sport, dport, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(5000) };
        let mut out = Vec::new();
        b.write(&mut out, b"").unwrap();
        out
    }

    fn reply(lab: &Lab, from: Ipv4Addr, sport: u16, dport: u16) -> Out {
        let b = etherparse::PacketBuilder::ethernet2(GW_MAC, lab.mac(BIZ))
            .ipv4(from.octets(), POD60_IP.octets(), 64)
            .tcp(sport, dport, 7000, 64240)
            .syn()
            .ack(1001);
        let mut out = Vec::new();
        b.write(&mut out, b"").unwrap();
        lab.run(BIZ, out)
    }

    fn dst_of(frame: &[u8]) -> (Ipv4Addr, u16) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap().dst_addr();
        let t = TcpPacket::new_unchecked(&frame[34..]);
        (ip, t.dst_port())
    }

    fn src_of(frame: &[u8]) -> (Ipv4Addr, u16) {
        let ip = Ipv4Packet::new_unchecked(&frame[14..]).src_addr();
        (ip, TcpPacket::new_unchecked(&frame[34..]).src_port())
    }

    #[test]
    fn rate_window_engages_above_the_limit_and_releases_after_a_quiet_second() {
        let w = WorkerFlood::default();
        assert!((0..3).all(|_| w.admit(10, 3, true)));
        assert!(!w.admit(10, 3, true), "4th in one second");
        assert!(w.engaged(10, 3));
        // The next second still looks back at the flood.
        assert!(!w.admit(11, 3, true));
        // A dry run counts nothing.
        let before = w.this.get();
        w.admit(11, 3, false);
        assert_eq!(w.this.get(), before);
        // Two seconds later (no flood in second 12) it tracks again.
        assert!(w.admit(13, 3, true));
        assert!(!w.engaged(13, 3));
        // A gap of more than a second forgets the flood entirely.
        for _ in 0..10 {
            w.admit(20, 3, true);
        }
        assert!(w.admit(25, 3, true));
    }

    #[test]
    fn off_by_default_every_flow_is_tracked() {
        let lab = lab(0);
        for p in 0..20u16 {
            let out = lab.run(POD60, tcp(POD60_IP, VIP, 10_000 + p, 80, true));
            assert_eq!(out.action, Action::Tx(BIZ));
        }
        assert_eq!(lab.shared.conntrack.count(), 20);
        assert_eq!(lab.event(Event::FloodGuardUntracked), 0);
    }

    #[test]
    fn above_the_limit_new_flows_go_by_maglev_untracked_and_replies_are_un_natted() {
        let lab = lab(5);
        let mut backends = std::collections::BTreeSet::new();
        for p in 0..50u16 {
            let out = lab.run(POD60, tcp(POD60_IP, VIP, 20_000 + p, 80, true));
            assert_eq!(out.action, Action::Tx(BIZ));
            assert_valid_l4(&out.frame);
            let (dst, dport) = dst_of(&out.frame);
            assert_eq!(dport, 8080);
            backends.insert(dst);
        }
        assert_eq!(
            lab.shared.conntrack.count(),
            5,
            "only the first 5 are tracked"
        );
        assert_eq!(lab.event(Event::FloodGuardUntracked), 45);
        assert_eq!(lab.event(Event::ServiceNewFlow), 5);
        assert_eq!(backends.len(), 2, "both backends used");
        assert_eq!(lab.drop(DropReason::ConntrackFull), 0);

        // An untracked flow: its SYN, then its ACK (mid-flow) reach the same backend.
        let syn = lab.run(POD60, tcp(POD60_IP, VIP, 30_000, 80, true));
        let ack = lab.run(POD60, tcp(POD60_IP, VIP, 30_000, 80, false));
        assert_eq!(dst_of(&syn.frame), dst_of(&ack.frame));
        let (backend, _) = dst_of(&syn.frame);
        // The backend's SYN-ACK leaves from the VIP, valid checksums.
        let r = reply(&lab, backend, 8080, 30_000);
        assert_eq!(r.action, Action::Tx(POD60));
        assert_eq!(src_of(&r.frame), (VIP, 80));
        assert_valid_l4(&r.frame);
        assert_eq!(lab.event(Event::FloodGuardReply), 1);
        // A tracked flow's reply still comes from conntrack, not from the guard.
        let tracked = lab.run(POD60, tcp(POD60_IP, VIP, 20_000, 80, false));
        let (b0, _) = dst_of(&tracked.frame);
        let r = reply(&lab, b0, 8080, 20_000);
        assert_eq!(src_of(&r.frame), (VIP, 80));
        assert_eq!(lab.event(Event::FloodGuardReply), 1);
    }

    #[test]
    fn mid_flow_tcp_without_an_entry_is_stateless_even_when_quiet() {
        let lab = lab(1000);
        let out = lab.run(POD60, tcp(POD60_IP, VIP, 40_000, 80, false));
        assert_eq!(out.action, Action::Tx(BIZ));
        assert_eq!(lab.shared.conntrack.count(), 0);
        assert_eq!(lab.event(Event::FloodGuardUntracked), 1);
    }

    #[test]
    fn a_backend_of_two_services_is_not_guessed() {
        let mut lab = lab(1);
        let mut spec = lab.tables.services.get(1).unwrap().spec.clone();
        spec.id = 2;
        spec.name = "web2".into();
        spec.cluster_ip = Some(Ipv4Addr::new(10, 96, 10, 2));
        let mut t = lab.tables.services.clone();
        t.upsert(spec).unwrap();
        lab.tables.services = t;
        let r = reply(&lab, B1, 8080, 50_000);
        assert_eq!(src_of(&r.frame), (B1, 8080), "left alone");
        assert_eq!(lab.event(Event::FloodGuardReply), 0);
    }

    #[test]
    fn forwarded_traffic_and_replies_of_deleted_services_pass_untranslated() {
        let mut lab = lab(1);
        let other = Ipv4Addr::new(10, 186, 200, 99);
        let r = reply(&lab, other, 8080, 50_000);
        assert_eq!(r.action, Action::Tx(POD60));
        assert_eq!(src_of(&r.frame), (other, 8080), "not a backend");
        let r = reply(&lab, B1, 8081, 50_000);
        assert_eq!(src_of(&r.frame), (B1, 8081), "a backend's other port");
        assert_eq!(lab.event(Event::FloodGuardReply), 0);
        assert_eq!(src_of(&reply(&lab, B2, 8080, 50_000).frame), (VIP, 80));
        let mut t = lab.tables.services.clone();
        t.remove(1).unwrap();
        lab.tables.services = t;
        let r = reply(&lab, B2, 8080, 50_000);
        assert_eq!(src_of(&r.frame), (B2, 8080), "service deleted");
        assert_eq!(lab.event(Event::FloodGuardReply), 1);
    }

    #[test]
    fn guarded_flows_replies_and_spoof_drops_allocate_nothing() {
        let mut lab = lab(1);
        lab.tables.antispoof = crate::pipeline::antispoof::AntiSpoof::new(&[(
            POD60,
            vec![crate::wire::Ipv4Cidr::new(POD60_IP, 32).unwrap()],
        )]);
        let mut frames: Vec<(crate::tables::PortId, Vec<u8>)> = Vec::new();
        for p in 0..300u16 {
            frames.push((POD60, tcp(POD60_IP, VIP, 1000 + p, 80, true)));
            frames.push((POD60, tcp(POD60_IP, VIP, 1000 + p, 80, false)));
            frames.push((POD60, tcp(POD41_IP, VIP, 1000 + p, 80, true)));
        }
        let b = etherparse::PacketBuilder::ethernet2(GW_MAC, lab.mac(BIZ))
            .ipv4(B1.octets(), POD60_IP.octets(), 64)
            .tcp(8080, 1299, 7000, 64240)
            .ack(1001);
        let mut reply = Vec::new();
        b.write(&mut reply, b"").unwrap();
        frames.push((BIZ, reply));
        let ctx = lab.ctx();
        let mut buf = vec![0u8; 4096];
        let mut run = |frames: &[(crate::tables::PortId, Vec<u8>)]| {
            let mut actions = [0u32; 2];
            for (port, f) in frames {
                buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
                let mut frame = Frame::new(&mut buf, HEADROOM, f.len());
                let meta = RxMeta {
                    port: *port,
                    vlan: None,
                };
                match crate::pipeline::process(&mut frame, &meta, &ctx) {
                    Action::Tx(_) => actions[0] += 1,
                    Action::Drop(_) => actions[1] += 1,
                }
            }
            actions
        };
        run(&frames[..3]);
        let before = crate::no_alloc::allocations();
        let actions = run(&frames);
        assert_eq!(crate::no_alloc::allocations() - before, 0);
        assert_eq!(
            actions,
            [601, 300],
            "guarded SYNs and ACKs + reply sent, spoofs dropped"
        );
        assert!(lab.event(Event::FloodGuardUntracked) >= 590);
        assert!(lab.event(Event::FloodGuardReply) >= 1);
    }

    #[test]
    fn a_trace_counts_nothing_and_tracks_nothing() {
        let lab = lab(1);
        lab.run(POD60, tcp(POD60_IP, VIP, 1, 80, true));
        lab.run(POD60, tcp(POD60_IP, VIP, 2, 80, true));
        let trace = crate::pipeline::Trace::default();
        let mut ctx = lab.ctx();
        ctx.trace = Some(&trace);
        let mut buf = vec![0u8; 4096];
        let f = tcp(POD60_IP, VIP, 3, 80, true);
        buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(&f);
        let mut frame = Frame::new(&mut buf, HEADROOM, f.len());
        let before = lab.local.flood.this.get();
        let a = crate::pipeline::process(
            &mut frame,
            &RxMeta {
                port: POD60,
                vlan: None,
            },
            &ctx,
        );
        assert_eq!(a, Action::Tx(BIZ));
        assert_eq!(lab.local.flood.this.get(), before);
        assert!(trace.steps().iter().any(|(s, _)| *s == "flood"));
    }
}
