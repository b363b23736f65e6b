use super::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Barrier};

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn tuple(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Tuple {
    Tuple {
        src,
        dst,
        sport,
        dport,
        proto,
    }
}

/// A plain flow: no translation, replies are the reverse tuple.
fn plain(t: Tuple) -> Flow {
    Flow {
        orig: t,
        reply: t.reverse(),
        ..Flow::default()
    }
}

fn table(capacity: u32) -> Conntrack {
    Conntrack::new(Config {
        capacity,
        timeouts: Timeouts::default(),
    })
}

fn tcp_flow(n: u16) -> Flow {
    plain(tuple(
        ip(10, 20, 9, 60),
        40000 + n,
        ip(10, 96, 10, 1),
        80,
        6,
    ))
}

fn udp_flow(n: u16) -> Flow {
    plain(tuple(
        ip(10, 20, 9, 60),
        30000 + n,
        ip(10, 96, 0, 10),
        53,
        17,
    ))
}

#[test]
fn both_directions_find_one_flow_with_nat() {
    let ct = table(64);
    // DNAT to backend 10.20.4.5:8080 with SNAT to 10.186.152.103:61000.
    let f = Flow {
        orig: tuple(ip(10, 20, 9, 60), 40000, ip(10, 96, 10, 1), 80, 6),
        reply: tuple(ip(10, 20, 4, 5), 8080, ip(10, 186, 152, 103), 61000, 6),
        service: 7,
        backend: 3,
        generation: 1,
        mark: 0x4000,
    };
    let h = ct.insert(f, 0).unwrap();
    assert_eq!(
        (h.dir, h.flow, h.state, h.replied),
        (Dir::Original, f, TcpState::None, false)
    );
    let o = ct.lookup(&f.orig, 1).unwrap();
    let r = ct.lookup(&f.reply, 1).unwrap();
    assert_eq!((o.slot, o.dir), (h.slot, Dir::Original));
    assert_eq!((r.slot, r.dir, r.flow), (h.slot, Dir::Reply, f));
    // The untranslated reverse of orig is not the reply.
    assert!(ct.lookup(&f.orig.reverse(), 1).is_none());
    assert_eq!(ct.count(), 1);
    assert!(ct.remove(h.slot));
    assert!(!ct.remove(h.slot));
    assert!(ct.lookup(&f.orig, 1).is_none() && ct.lookup(&f.reply, 1).is_none());
    assert_eq!(ct.count(), 0);
}

#[test]
fn insert_same_orig_returns_existing_and_reply_clash_is_refused() {
    let ct = table(64);
    let f = udp_flow(1);
    let h = ct.insert(f, 0).unwrap();
    let mut g = f;
    g.backend = 99;
    let again = ct.insert(g, 0).unwrap();
    assert_eq!((again.slot, again.flow), (h.slot, f));
    assert_eq!(ct.stats().insert_races, 1);
    // Another client whose translation would produce the same reply tuple.
    let mut other = udp_flow(2);
    other.reply = f.reply;
    assert_eq!(ct.insert(other, 0), Err(InsertError::Clash));
    // A packet whose tuple is the reply of a live flow gets that flow, as a reply.
    let rev = ct.insert(plain(f.reply), 0).unwrap();
    assert_eq!((rev.slot, rev.dir), (h.slot, Dir::Reply));
    assert_eq!(ct.count(), 1);
}

/// Drives one TCP flow through flags and checks state and timeout after each step.
#[test]
fn tcp_state_machine_and_timeouts() {
    use TcpState::*;
    let ct = table(64);
    let t = Timeouts::default();
    let f = tcp_flow(1);
    let h = ct.insert(f, 100).unwrap();
    let steps: &[(Dir, u8, TcpState, u32)] = &[
        (Dir::Original, SYN, SynSent, t.tcp_syn_sent),
        (Dir::Reply, SYN | ACK, SynRecv, t.tcp_syn_recv),
        (Dir::Original, ACK, Established, t.tcp_established),
        (Dir::Original, ACK | 0x08, Established, t.tcp_established),
        (Dir::Original, FIN | ACK, FinWait, t.tcp_fin_wait),
        (Dir::Reply, ACK, CloseWait, t.tcp_close_wait),
        (Dir::Reply, FIN | ACK, LastAck, t.tcp_last_ack),
        (Dir::Original, ACK, TimeWait, t.tcp_time_wait),
        (Dir::Original, SYN, SynSent, t.tcp_syn_sent),
        (Dir::Reply, RST, Close, t.tcp_close),
    ];
    let mut now = 100;
    for &(dir, flags, want, timeout) in steps {
        now += 1;
        ct.update(&h, dir, flags, 60, now);
        let v = ct.lookup(&f.orig, now).unwrap();
        assert_eq!(v.state, want, "after {dir:?} {flags:#x}");
        let e = &ct.entries(now)[0];
        assert_eq!(
            (e.state, e.timeout_left),
            (want, timeout),
            "after {dir:?} {flags:#x}"
        );
        // Alive one second before the deadline, dead at it.
        assert!(ct.lookup(&f.orig, now + timeout - 1).is_some());
        assert!(ct.lookup(&f.orig, now + timeout).is_none());
        assert!(ct.lookup(&f.reply, now + timeout).is_none());
    }
    let e = &ct.entries(now)[0];
    assert_eq!(e.packets, [6, 4]);
    assert_eq!(e.bytes, [360, 240]);
    assert!(e.replied);
}

#[test]
fn tcp_simultaneous_fin_and_midstream_pickup() {
    use TcpState::*;
    let (o, r) = (Dir::Original, Dir::Reply);
    let s = |steps: &[(Dir, u8)], from: TcpState| {
        steps
            .iter()
            .fold((from, 0u8), |(st, fins), &(d, fl)| {
                tcp::next(st, fins, d, fl)
            })
            .0
    };
    assert_eq!(
        s(&[(o, FIN | ACK), (r, FIN | ACK), (o, ACK)], Established),
        TimeWait
    );
    assert_eq!(
        s(
            &[(r, FIN | ACK), (o, ACK), (o, FIN | ACK), (r, ACK)],
            Established
        ),
        TimeWait
    );
    assert_eq!(s(&[(o, ACK)], None), Established);
    assert_eq!(s(&[(o, SYN), (o, SYN)], None), SynSent);
    assert_eq!(s(&[(o, SYN), (r, SYN)], None), SynRecv);
    assert_eq!(s(&[(r, RST)], Established), Close);
    // A FIN repeated by the same side does not move on.
    assert_eq!(s(&[(o, FIN | ACK), (o, FIN | ACK)], Established), FinWait);
}

#[test]
fn udp_replied_gets_stream_timeout_and_icmp_30s() {
    let ct = table(64);
    let f = udp_flow(1);
    let h = ct.insert(f, 0).unwrap();
    ct.update(&h, Dir::Original, 0, 80, 0);
    assert!(ct.lookup(&f.orig, 29).is_some());
    assert!(ct.lookup(&f.orig, 30).is_none(), "unreplied UDP: 30 s");
    let g = udp_flow(2);
    let h = ct.insert(g, 0).unwrap();
    ct.update(&h, Dir::Reply, 0, 80, 10);
    let hit = ct.lookup(&g.orig, 11).unwrap();
    assert!(hit.replied);
    assert!(ct.lookup(&g.orig, 129).is_some());
    assert!(
        ct.lookup(&g.orig, 130).is_none(),
        "replied UDP: 120 s after last packet"
    );
    let p = plain(tuple(ip(10, 20, 9, 60), 7, ip(10, 96, 10, 1), 7, 1));
    ct.insert(p, 0).unwrap();
    assert!(ct.lookup(&p.reply, 29).is_some());
    assert!(ct.lookup(&p.reply, 30).is_none());
}

#[test]
fn gc_frees_expired_incrementally_and_slots_are_reused() {
    let ct = table(16);
    for i in 0..16 {
        ct.insert(udp_flow(i), 0).unwrap();
    }
    assert_eq!(ct.count(), 16);
    assert_eq!(ct.gc(10, 16), 0);
    let mut freed = 0;
    for _ in 0..4 {
        freed += ct.gc(30, 4);
    }
    assert_eq!(freed, 16);
    assert_eq!(ct.count(), 0);
    assert_eq!(ct.stats().expired, 16);
    for i in 100..116 {
        ct.insert(udp_flow(i), 31).unwrap();
    }
    assert_eq!(ct.entries(31).len(), 16);
    assert_eq!(ct.flush(), 16);
    assert_eq!(ct.count(), 0);
}

#[test]
fn early_drop_evicts_oldest_unreplied_never_replied_or_established() {
    // A 16-slot table: the early-drop window covers all of it.
    let ct = table(16);
    let mut hits = Vec::new();
    for i in 0..16u16 {
        let h = ct.insert(udp_flow(i), u32::from(i)).unwrap();
        hits.push(h);
    }
    // Flows 0..8 are replied; 8..16 are not; flow 8 is the oldest unreplied.
    for h in &hits[..8] {
        ct.update(h, Dir::Reply, 0, 1, 20);
    }
    let h = ct.insert(udp_flow(100), 20).unwrap();
    assert!(ct.lookup(&udp_flow(100).orig, 20).is_some());
    assert!(
        ct.lookup(&udp_flow(8).orig, 20).is_none(),
        "oldest unreplied evicted"
    );
    assert!(ct.lookup(&udp_flow(9).orig, 20).is_some());
    assert_eq!(ct.stats().early_drops, 1);
    ct.update(&h, Dir::Reply, 0, 1, 20);
    // Evict the rest of the unreplied ones; then the table holds only replied flows.
    for i in 101..108 {
        ct.insert(udp_flow(i), 21).unwrap();
        let h = ct.lookup(&udp_flow(i).orig, 21).unwrap();
        ct.update(&h, Dir::Reply, 0, 1, 21);
    }
    assert_eq!(ct.stats().early_drops, 8);
    assert_eq!(ct.insert(udp_flow(200), 22), Err(InsertError::Full));
    assert_eq!(ct.stats().full_drops, 1);
    for i in 0..8 {
        assert!(
            ct.lookup(&udp_flow(i).orig, 22).is_some(),
            "replied flow {i} kept"
        );
    }
    // Once they expire, the insert reclaims one instead of failing.
    assert!(ct.insert(udp_flow(200), 200).is_ok());
    assert_eq!(ct.stats().expired, 1);
}

#[test]
fn full_of_established_tcp_is_full() {
    let ct = table(8);
    for i in 0..8 {
        let h = ct.insert(tcp_flow(i), 0).unwrap();
        // Picked up mid-stream: established but never replied. Still not evictable.
        ct.update(&h, Dir::Original, ACK, 40, 0);
        assert_eq!(
            ct.lookup(&tcp_flow(i).orig, 0).unwrap().state,
            TcpState::Established
        );
    }
    assert_eq!(ct.insert(tcp_flow(100), 1), Err(InsertError::Full));
    assert_eq!(ct.insert(udp_flow(100), 1), Err(InsertError::Full));
    let s = ct.stats();
    assert_eq!(
        (s.full_drops, s.early_drops, s.entries, s.capacity),
        (2, 0, 8, 8)
    );
    // An unreplied SYN_SENT flow, however, is evictable.
    let ct = table(1);
    let h = ct.insert(tcp_flow(1), 0).unwrap();
    ct.update(&h, Dir::Original, SYN, 40, 0);
    assert!(ct.insert(tcp_flow(2), 1).is_ok());
}

#[test]
fn backend_conns_counts_active_and_inactive() {
    let ct = table(64);
    for i in 0..5u16 {
        let mut f = tcp_flow(i);
        f.service = 1;
        f.backend = u32::from(i % 2);
        let h = ct.insert(f, 0).unwrap();
        ct.update(&h, Dir::Original, SYN, 60, 0);
        if i < 3 {
            ct.update(&h, Dir::Reply, SYN | ACK, 60, 0);
            ct.update(&h, Dir::Original, ACK, 60, 0);
        }
    }
    // backend 0: flows 0, 2 (established), 4 (syn_sent); backend 1: 1 (established), 3.
    assert_eq!(ct.backend_conns(1, 0, 1), (2, 1));
    assert_eq!(ct.backend_conns(1, 1, 1), (1, 1));
    assert_eq!(ct.backend_conns(2, 0, 1), (0, 0));
}

#[test]
fn update_after_reuse_does_not_touch_the_new_flow() {
    let ct = table(1);
    let old = ct.insert(udp_flow(1), 0).unwrap();
    assert!(ct.remove(old.slot));
    let new = ct.insert(udp_flow(2), 0).unwrap();
    assert_eq!(new.slot, old.slot);
    ct.update(&old, Dir::Reply, 0, 100, 5);
    let v = &ct.entries(5)[0];
    assert_eq!((v.replied, v.packets, v.timeout_left), (false, [0, 0], 25));
}

/// Per home bucket: the overflow count in its control word equals the entries of that home
/// that sit in a later bucket.
fn check_overflow_counts(ct: &Conntrack) {
    let mut want = vec![0u64; ct.buckets.len()];
    for (bi, b) in ct.buckets.iter().enumerate() {
        for e in &b.e {
            let v = e.load(Ordering::Relaxed);
            if v != 0 {
                let home = ct.bucket_of((v >> 32) as u32);
                if home != bi {
                    want[home] += 1;
                }
            }
        }
    }
    for (bi, b) in ct.buckets.iter().enumerate() {
        assert_eq!(b.ctl.load(Ordering::Relaxed) >> 32, want[bi], "bucket {bi}");
        assert_eq!(b.ctl.load(Ordering::Relaxed) & LOCKED, 0);
    }
}

#[test]
fn tuples_of_one_home_bucket_overflow_into_the_next_and_back() {
    let ct = table(256);
    // 20 flows whose original tuple has home bucket 5: 7 fit, 13 overflow.
    let flows: Vec<Flow> = (0..u16::MAX)
        .map(udp_flow)
        .filter(|f| ct.bucket_of(f.orig.hash()) == 5)
        .take(20)
        .collect();
    assert_eq!(flows.len(), 20);
    let hits: Vec<Hit> = flows.iter().map(|f| ct.insert(*f, 0).unwrap()).collect();
    assert!(ct.buckets[5].ctl.load(Ordering::Relaxed) >> 32 >= 13);
    check_overflow_counts(&ct);
    for f in &flows {
        assert_eq!(ct.lookup(&f.orig, 1).unwrap().flow, *f);
        assert_eq!(ct.lookup(&f.reply, 1).unwrap().dir, Dir::Reply);
    }
    for h in &hits[..10] {
        assert!(ct.remove(h.slot));
    }
    check_overflow_counts(&ct);
    for f in &flows[10..] {
        assert!(ct.lookup(&f.orig, 1).is_some());
    }
    // 4 buckets x 7 = 28 places for one home: the 29th tuple of this home is refused.
    let more: Vec<Flow> = (0..u16::MAX)
        .map(tcp_flow)
        .filter(|f| ct.bucket_of(f.orig.hash()) == 5)
        .take(40)
        .collect();
    let refused = more
        .iter()
        .filter(|f| ct.insert(**f, 0) == Err(InsertError::Full))
        .count();
    assert!(refused > 0, "the probe window is bounded");
    check_overflow_counts(&ct);
    ct.flush();
    check_overflow_counts(&ct);
    assert!(
        ct.buckets
            .iter()
            .all(|b| b.ctl.load(Ordering::Relaxed) == 0)
    );
}

// ---------------------------------------------------------------------------------------------
// Model test (STYLE §12): the table against a HashMap oracle.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Insert flow from (orig index, reply choice).
    Insert(u8, u8),
    Lookup(u8),
    /// Update the flow found by tuple, in the direction it was found, with flags.
    Update(u8, u8),
    Remove(u8),
    Gc,
    Advance(u32),
}

const UNIVERSE: u8 = 24;

/// A small universe of tuples so that repeats and reply clashes are common.
fn universe(i: u8) -> Tuple {
    let i = i % UNIVERSE;
    let proto = [6, 17, 1][usize::from(i % 3)];
    tuple(
        ip(10, 0, 0, 1 + (i / 3) % 2),
        if proto == 1 {
            9
        } else {
            1000 + u16::from(i / 6)
        },
        ip(10, 96, 0, 1),
        if proto == 1 { 9 } else { 80 },
        proto,
    )
}

fn model_flow(o: u8, r: u8) -> Flow {
    let orig = universe(o);
    // Either untranslated or "DNATed" to one of two backends keeping the ports.
    let reply = match r % 3 {
        0 => orig.reverse(),
        k => Tuple {
            src: ip(10, 20, 4, k),
            ..orig.reverse()
        },
    };
    Flow {
        orig,
        reply,
        service: u32::from(o),
        backend: u32::from(r),
        ..Flow::default()
    }
}

#[derive(Clone, Debug)]
struct ModelEntry {
    flow: Flow,
    ts: u32,
    state: TcpState,
    fins: u8,
    replied: bool,
}

struct Model {
    t: Timeouts,
    /// keyed by orig tuple; holds only not-removed, not-collected entries.
    flows: Vec<ModelEntry>,
}

impl Model {
    fn timeout(&self, e: &ModelEntry) -> u32 {
        let t = &self.t;
        match e.flow.orig.proto {
            6 => match e.state {
                TcpState::None | TcpState::SynSent => t.tcp_syn_sent,
                TcpState::SynRecv => t.tcp_syn_recv,
                TcpState::Established => t.tcp_established,
                TcpState::FinWait => t.tcp_fin_wait,
                TcpState::CloseWait => t.tcp_close_wait,
                TcpState::LastAck => t.tcp_last_ack,
                TcpState::TimeWait => t.tcp_time_wait,
                TcpState::Close => t.tcp_close,
            },
            1 => t.icmp,
            _ if e.replied => t.udp_stream,
            _ => t.udp,
        }
    }
    fn live(&self, e: &ModelEntry, now: u32) -> bool {
        now < e.ts + self.timeout(e)
    }
    fn reclaim(&mut self, t: &Tuple, now: u32) {
        let flows = std::mem::take(&mut self.flows);
        self.flows = flows
            .into_iter()
            .filter(|e| self.live(e, now) || (e.flow.orig != *t && e.flow.reply != *t))
            .collect();
    }
    fn find(&self, t: &Tuple, now: u32) -> Option<(usize, Dir)> {
        self.flows.iter().enumerate().find_map(|(i, e)| {
            if !self.live(e, now) {
                None
            } else if e.flow.orig == *t {
                Some((i, Dir::Original))
            } else if e.flow.reply == *t {
                Some((i, Dir::Reply))
            } else {
                None
            }
        })
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Insert(a, b)),
        3 => any::<u8>().prop_map(Op::Lookup),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Update(a, b)),
        1 => any::<u8>().prop_map(Op::Remove),
        1 => Just(Op::Gc),
        2 => prop_oneof![0..5u32, 5..40u32, 100..200u32].prop_map(Op::Advance),
    ]
}

/// Any tuple a test may look up: originals and every possible reply.
fn probe_tuple(i: u8) -> Tuple {
    model_flow(i % UNIVERSE, i / UNIVERSE).reply_or_orig(i)
}

trait ReplyOrOrig {
    fn reply_or_orig(&self, i: u8) -> Tuple;
}
impl ReplyOrOrig for Flow {
    fn reply_or_orig(&self, i: u8) -> Tuple {
        if i & 0x80 != 0 { self.reply } else { self.orig }
    }
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    const CAP: u32 = 256;
    let ct = table(CAP);
    let mut m = Model {
        t: Timeouts::default(),
        flows: Vec::new(),
    };
    let mut now = 1000u32;
    let flag_set = [SYN, SYN | ACK, ACK, FIN | ACK, RST, 0];
    for op in ops {
        match op {
            Op::Insert(o, r) => {
                let f = model_flow(o % UNIVERSE, r);
                let got = ct.insert(f, now);
                // Expired flows holding either tuple are reclaimed by the insert, orig first.
                m.reclaim(&f.orig, now);
                let orig_hit = m.find(&f.orig, now);
                if orig_hit.is_none() {
                    m.reclaim(&f.reply, now);
                }
                let want = if let Some((i, dir)) = orig_hit {
                    Ok((m.flows[i].flow, dir))
                } else if f.reply != f.orig && m.find(&f.reply, now).is_some() {
                    Err(InsertError::Clash)
                } else {
                    m.flows.push(ModelEntry {
                        flow: f,
                        ts: now,
                        state: TcpState::None,
                        fins: 0,
                        replied: false,
                    });
                    Ok((f, Dir::Original))
                };
                prop_assert_eq!(got.map(|h| (h.flow, h.dir)), want, "insert {:?}", f);
            }
            Op::Lookup(i) => {
                let t = probe_tuple(i);
                let got = ct.lookup(&t, now);
                let want = m.find(&t, now).map(|(i, d)| {
                    let e = &m.flows[i];
                    (e.flow, d, e.state, e.replied)
                });
                prop_assert_eq!(got.map(|h| (h.flow, h.dir, h.state, h.replied)), want);
            }
            Op::Update(i, fl) => {
                let t = probe_tuple(i);
                let got = ct.lookup(&t, now);
                prop_assert_eq!(got.is_some(), m.find(&t, now).is_some());
                if let (Some(h), Some((k, dir))) = (got, m.find(&t, now)) {
                    let flags = flag_set[usize::from(fl) % flag_set.len()];
                    let flags = if h.flow.orig.proto == 6 { flags } else { 0 };
                    ct.update(&h, h.dir, flags, 10, now);
                    let e = &mut m.flows[k];
                    if e.flow.orig.proto == 6 {
                        (e.state, e.fins) = tcp::next(e.state, e.fins, dir, flags);
                    }
                    e.ts = now;
                    e.replied |= dir == Dir::Reply;
                }
            }
            Op::Remove(i) => {
                let t = probe_tuple(i);
                if let Some(h) = ct.lookup(&t, now) {
                    prop_assert!(ct.remove(h.slot));
                    let (k, _) = m.find(&t, now).unwrap();
                    m.flows.remove(k);
                }
            }
            Op::Gc => {
                let freed = ct.gc(now, CAP);
                let before = m.flows.len();
                let flows = std::mem::take(&mut m.flows);
                m.flows = flows.into_iter().filter(|e| m.live(e, now)).collect();
                prop_assert_eq!(freed as usize, before - m.flows.len());
            }
            Op::Advance(d) => now += d,
        }
        prop_assert_eq!(ct.count(), m.flows.len() as u64);
        let live = m.flows.iter().filter(|e| m.live(e, now)).count();
        prop_assert_eq!(ct.entries(now).len(), live);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn model(ops in proptest::collection::vec(op_strategy(), 1..200)) {
        check(ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Threads
// ---------------------------------------------------------------------------------------------

#[test]
fn racing_inserts_of_one_flow_make_one_entry() {
    const THREADS: usize = 4;
    const ROUNDS: u16 = 1000;
    let ct = Arc::new(table(4096));
    // A barrier per round lines the threads up; the spin on `go` then releases them within
    // nanoseconds of each other, which a futex wake-up alone would not.
    let barrier = Arc::new(Barrier::new(THREADS));
    let go = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (ct, barrier, go) = (ct.clone(), barrier.clone(), go.clone());
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|round| {
                        let mut f = udp_flow(round);
                        // Each thread would pick a different backend: all must agree on one.
                        f.backend = t as u32;
                        if barrier.wait().is_leader() {
                            go.store(u32::from(round) + 1, Ordering::Release);
                        }
                        let mut spins = 0u32;
                        while go.load(Ordering::Acquire) <= u32::from(round) && spins < 1_000_000 {
                            core::hint::spin_loop();
                            spins += 1;
                        }
                        // No unwrap here: a panicking thread would leave the others at the barrier.
                        ct.insert(f, 0).map(|h| h.flow)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Result<Flow, InsertError>>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    for round in 0..usize::from(ROUNDS) {
        let first = results[0][round].unwrap();
        for r in &results {
            assert_eq!(r[round], Ok(first), "round {round}");
        }
        assert_eq!(ct.lookup(&first.orig, 0).unwrap().flow, first);
    }
    let s = ct.stats();
    assert_eq!(s.entries, u64::from(ROUNDS));
    assert_eq!(s.inserts, u64::from(ROUNDS));
    assert_eq!(s.insert_races, u64::from(ROUNDS) * (THREADS as u64 - 1));
}

/// Flows whose fields all derive from one number: a torn read breaks the relation.
fn checked_flow(n: u32) -> Flow {
    let orig = tuple(
        Ipv4Addr::from(0x0a00_0000 | (n & 0xff_ffff)),
        (n % 60000) as u16 + 1,
        ip(10, 96, 0, 1),
        80,
        [6, 17][(n % 2) as usize],
    );
    Flow {
        orig,
        reply: Tuple {
            src: Ipv4Addr::from(0x0a14_0000 | (n & 0xffff)),
            ..orig.reverse()
        },
        service: n,
        backend: n.wrapping_mul(2_654_435_761),
        generation: !n,
        mark: n.rotate_left(7),
    }
}

fn assert_consistent(h: &Hit, looked_up: &Tuple) {
    let n = h.flow.service;
    assert_eq!(h.flow, checked_flow(n), "torn flow");
    let t = if h.dir == Dir::Original {
        h.flow.orig
    } else {
        h.flow.reply
    };
    assert_eq!(t, *looked_up);
}

#[test]
fn concurrent_stress_has_no_torn_reads_and_consistent_counts() {
    const THREADS: u32 = 3;
    const ITERS: u32 = 60_000;
    const KEYS: u32 = 3000;
    // Smaller than the key space so early drop and Full happen under contention too.
    let ct = Arc::new(table(2048));
    let now = Arc::new(AtomicU32::new(0));
    let done = Arc::new(core::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (ct, now, done) = (ct.clone(), now.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !done.load(Ordering::Relaxed) && rounds < 1_000_000 {
                ct.gc(now.load(Ordering::Relaxed), 64);
                rounds += 1;
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (ct, now) = (ct.clone(), now.clone());
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9u32.wrapping_mul(t + 1);
                for i in 0..ITERS {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if t == 0 && i % 5000 == 0 {
                        // Time moves: some flows expire under the others' feet.
                        now.fetch_add(20, Ordering::Relaxed);
                    }
                    let ts = now.load(Ordering::Relaxed);
                    let f = checked_flow(x % KEYS);
                    let t = if x & (1 << 20) != 0 { f.reply } else { f.orig };
                    match (x >> 24) % 8 {
                        0..=2 => match ct.insert(f, ts) {
                            Ok(h) => assert_consistent(&h, &f.orig),
                            Err(InsertError::Full) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        },
                        3..=5 => {
                            if let Some(h) = ct.lookup(&t, ts) {
                                assert_consistent(&h, &t);
                                ct.update(&h, h.dir, ACK, 64, ts);
                            }
                        }
                        6 => {
                            if let Some(h) = ct.lookup(&t, ts) {
                                assert_consistent(&h, &t);
                                ct.remove(h.slot);
                            }
                        }
                        _ => {
                            if let Some(h) = ct.lookup(&t, ts) {
                                ct.update(&h, Dir::Reply, 0, 64, ts);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    gc.join().unwrap();
    // Quiescent: the live count, the entries and the free stack agree.
    let live = (0..ct.capacity)
        .filter(|&s| Meta(ct.slots[s as usize].meta.load(Ordering::Relaxed)).life() == LIFE_LIVE)
        .count() as u64;
    assert_eq!(ct.count(), live);
    let mut free = 0u64;
    while ct.pop_free().is_some() {
        free += 1;
    }
    assert_eq!(free + live, u64::from(ct.capacity));
    // Every index entry points at a live slot holding its tuple; every live flow has both.
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for b in ct.buckets.iter() {
        for e in &b.e {
            let v = e.load(Ordering::Relaxed);
            if v != 0 {
                *seen.entry(((v & SLOT_MASK) - 1) as u32).or_default() += 1;
            }
        }
    }
    assert_eq!(seen.len() as u64, live);
    assert!(seen.values().all(|&n| n == 2));
    check_overflow_counts(&ct);
    let far = now.load(Ordering::Relaxed) + 1_000_000;
    for s in 0..ct.capacity {
        if let Some((f, m)) = ct.read_slot(s)
            && m.life() == LIFE_LIVE
        {
            assert_eq!(f, checked_flow(f.service));
            assert_eq!(ct.lookup(&f.orig, 0).map(|h| h.slot), Some(s));
            assert_eq!(ct.lookup(&f.reply, 0).map(|h| h.slot), Some(s));
        }
    }
    assert_eq!(ct.gc(far, ct.capacity) as u64, live);
    assert_eq!(ct.count(), 0);
}
