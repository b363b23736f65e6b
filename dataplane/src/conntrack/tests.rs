use super::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};

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
        assert_eq!(b.ctl.load(Ordering::Relaxed), want[bi] << 32, "bucket {bi}");
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

/// Slots that are LIVE and hold `t` in either direction (only meaningful when quiescent).
fn live_holders(ct: &Conntrack, t: &Tuple) -> Vec<u32> {
    (0..ct.capacity)
        .filter(|&s| {
            ct.read_slot(s)
                .is_some_and(|(f, m)| m.life() == LIFE_LIVE && (f.orig == *t || f.reply == *t))
        })
        .collect()
}

/// Pops every free slot (the table is unusable afterwards): how many there were.
fn drain_free(ct: &Conntrack) -> u64 {
    let mut n = 0;
    while ct.pop_free().is_some() {
        n += 1;
    }
    n
}

/// `rounds` rounds in which `threads` threads call `op(table, thread, round)` at the same
/// instant; between rounds thread 0 alone runs `check(table, round, results)`. A barrier
/// lines the threads up; a spin until all have checked in on `go` then releases them
/// within nanoseconds of each other once all are running, which a futex wake-up alone
/// would not. Returns the failed checks (nothing panics
/// inside, so no thread is left waiting at the barrier).
fn race_rounds<R, Op, Check>(
    ct: &Arc<Conntrack>,
    threads: usize,
    rounds: u32,
    op: Op,
    check: Check,
) -> Vec<String>
where
    R: Send + 'static,
    Op: Fn(&Conntrack, usize, u32) -> R + Send + Sync + 'static,
    Check: Fn(&Conntrack, u32, Vec<R>) -> Result<(), String> + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(threads));
    let go = Arc::new(AtomicU32::new(0));
    let results: Arc<Mutex<Vec<Option<R>>>> =
        Arc::new(Mutex::new((0..threads).map(|_| None).collect()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let (op, check) = (Arc::new(op), Arc::new(check));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ct, barrier, go) = (ct.clone(), barrier.clone(), go.clone());
            let (results, failures) = (results.clone(), failures.clone());
            let (op, check) = (op.clone(), check.clone());
            std::thread::spawn(move || {
                for round in 0..rounds {
                    barrier.wait();
                    // Running for sure: check in, and go when every thread has.
                    go.fetch_add(1, Ordering::AcqRel);
                    let all = (round + 1) * threads as u32;
                    let mut spins = 0u32;
                    while go.load(Ordering::Acquire) < all && spins < 1_000_000 {
                        spins += 1;
                        if spins.is_multiple_of(256) {
                            // More threads than cores: let a late one run.
                            std::thread::yield_now();
                        } else {
                            core::hint::spin_loop();
                        }
                    }
                    let r = op(&ct, t, round);
                    results.lock().unwrap()[t] = Some(r);
                    barrier.wait();
                    if t == 0 {
                        let rs: Vec<R> = results
                            .lock()
                            .unwrap()
                            .iter_mut()
                            .filter_map(Option::take)
                            .collect();
                        if let Err(e) = check(&ct, round, rs) {
                            failures.lock().unwrap().push(e);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    failures.lock().unwrap().clone()
}

/// Flows per round in the racing tests: the threads insert them in the same order, so that
/// once both run they collide on each (a barrier alone lines them up only roughly on a
/// loaded machine).
const BATCH: u16 = 32;

/// Checks one racing round over `BATCH` flows: every thread got `Ok` with the flow's own
/// tuples, exactly one LIVE slot holds each, then flushes. Counts the flows whose racers
/// were told different flows in `disagreed`.
fn check_batch(
    ct: &Conntrack,
    round: u32,
    rs: &[Vec<Result<Flow, InsertError>>],
    disagreed: &AtomicU32,
) -> Result<(), String> {
    for k in 0..BATCH {
        let f = udp_flow(k);
        let got: Vec<_> = rs.iter().map(|r| r[usize::from(k)]).collect();
        if got.iter().any(|r| r.map(|g| g.orig) != Ok(f.orig)) {
            return Err(format!("round {round} flow {k}: {got:?}"));
        }
        let live = live_holders(ct, &f.orig);
        if live.len() != 1 {
            return Err(format!("round {round} flow {k}: live {live:?}"));
        }
        if ct.lookup(&f.reply, 0).map(|h| h.slot) != Some(live[0]) {
            return Err(format!("round {round} flow {k}: reply misses"));
        }
        if got.iter().any(|r| *r != got[0]) {
            disagreed.fetch_add(1, Ordering::Relaxed);
        }
    }
    if ct.count() != u64::from(BATCH) || ct.flush() != u32::from(BATCH) {
        return Err(format!("round {round}: count {}", ct.count()));
    }
    Ok(())
}

/// Each thread inserts the round's `BATCH` flows, picking backend = its number. Counts in
/// `concurrent` the inserts that returned a flow still PENDING: they ran while its insert
/// did, not after it.
fn insert_batch(
    ct: &Conntrack,
    t: usize,
    concurrent: &AtomicU32,
) -> Vec<Result<Flow, InsertError>> {
    (0..BATCH)
        .map(|k| {
            let mut f = udp_flow(k);
            f.backend = t as u32;
            let r = ct.insert(f, 0);
            if r.is_ok_and(|h| Meta(h.meta).life() == LIFE_PENDING) {
                concurrent.fetch_add(1, Ordering::Relaxed);
            }
            r.map(|h| h.flow)
        })
        .collect()
}

/// `threads` racers insert the same new flows every round (`insert_batch`, checked by
/// `check_batch`); no round may fail. Returns the table, its stats, and how many flows'
/// racers were translated differently / losers got their winner still PENDING.
fn race_same_flows(threads: usize, rounds: u32) -> (Arc<Conntrack>, Stats, u32, u32) {
    let ct = Arc::new(table(64));
    let disagreed = Arc::new(AtomicU32::new(0));
    let d = disagreed.clone();
    let concurrent = Arc::new(AtomicU32::new(0));
    let c = concurrent.clone();
    let failures = race_rounds(
        &ct,
        threads,
        rounds,
        move |ct, t, _| insert_batch(ct, t, &c),
        move |ct, round, rs| check_batch(ct, round, &rs, &d),
    );
    assert!(
        failures.is_empty(),
        "{} failed rounds: {failures:?}",
        failures.len()
    );
    let s = ct.stats();
    (
        ct,
        s,
        disagreed.load(Ordering::Relaxed),
        concurrent.load(Ordering::Relaxed),
    )
}

/// The Kubernetes UDP/DNS race with two workers: every round both insert the same new flows
/// (each would pick another backend) at the same instant; both must get `Ok` with the same
/// flow, and exactly one entry is live per flow.
#[test]
fn two_racing_inserts_of_one_flow_agree_on_one_entry() {
    const ROUNDS: u32 = 2000;
    let (ct, s, disagreed, concurrent) = race_same_flows(2, ROUNDS);
    let n = u64::from(ROUNDS) * u64::from(BATCH);
    println!(
        "2 racers: {n} flows ({ROUNDS} rounds x {BATCH}), insert_races {}, insert_lost {}, losers that got the winner still PENDING {}",
        s.insert_races, s.insert_lost, concurrent
    );
    assert_eq!(disagreed, 0);
    assert_eq!((s.inserts, s.insert_races), (n, n));
    assert_eq!(s.entries, 0);
    assert_eq!(drain_free(&ct), 64);
}

/// Four workers on the same new flows: exactly one entry each and no drop. With three or
/// more racers a loser may translate by a staged rival that a lower one then aborts (module
/// docs), so the flows returned may differ; how often is printed.
#[test]
fn four_racing_inserts_of_one_flow_make_one_entry() {
    const THREADS: usize = 4;
    const ROUNDS: u32 = 1000;
    let (ct, s, disagreed, concurrent) = race_same_flows(THREADS, ROUNDS);
    let n = u64::from(ROUNDS) * u64::from(BATCH);
    println!(
        "4 racers: {n} flows ({ROUNDS} rounds x {BATCH}), insert_races {}, insert_lost {}, losers that got the winner still PENDING {}, flows whose racers were translated differently {}",
        s.insert_races, s.insert_lost, concurrent, disagreed
    );
    assert_eq!(s.inserts, n);
    assert_eq!(s.insert_races, n * (THREADS as u64 - 1));
    assert_eq!(drain_free(&ct), 64);
}

/// Three clients whose translations collide on one reply tuple (SNAT picked the same port
/// for all): exactly one gets its entry, the others `Err(Clash)`.
#[test]
fn racing_inserts_sharing_a_reply_tuple_clash_all_but_one() {
    const THREADS: usize = 3;
    const ROUNDS: u32 = 3000;
    let reply = tuple(ip(10, 20, 4, 5), 53, ip(10, 186, 152, 103), 61000, 17);
    let mine = move |t: usize| Flow {
        reply,
        ..udp_flow(100 + t as u16)
    };
    let ct = Arc::new(table(64));
    let failures = race_rounds(
        &ct,
        THREADS,
        ROUNDS,
        move |ct, t, _| ct.insert(mine(t), 0).map(|h| h.flow),
        move |ct, round, rs| {
            let won: Vec<usize> = (0..rs.len()).filter(|&t| rs[t].is_ok()).collect();
            let [w] = won[..] else {
                return Err(format!("round {round}: {rs:?}"));
            };
            if rs[w] != Ok(mine(w))
                || rs
                    .iter()
                    .enumerate()
                    .any(|(t, r)| t != w && *r != Err(InsertError::Clash))
            {
                return Err(format!("round {round}: {rs:?}"));
            }
            let live = live_holders(ct, &reply);
            if live.len() != 1 || ct.count() != 1 {
                return Err(format!("round {round}: live {live:?} count {}", ct.count()));
            }
            if ct.flush() != 1 {
                return Err(format!("round {round}: flush"));
            }
            Ok(())
        },
    );
    assert!(
        failures.is_empty(),
        "{} failed rounds: {failures:?}",
        failures.len()
    );
    let s = ct.stats();
    println!(
        "clash racers: {ROUNDS} rounds x {THREADS}, insert_lost {}",
        s.insert_lost
    );
    assert_eq!(s.inserts, u64::from(ROUNDS));
    assert_eq!(drain_free(&ct), 64);
}

// ---------------------------------------------------------------------------------------------
// Insert arbitration, one decision at a time: `stage`, `arbitrate` and `settle` are the
// steps `insert` runs, so driving them in a chosen order replays an interleaving of
// concurrent inserts deterministically.
// ---------------------------------------------------------------------------------------------

/// `Conntrack::stage` with the hashes `insert` computes.
fn stage(ct: &Conntrack, f: &Flow, now: u32) -> Result<Staged, InsertError> {
    ct.stage(f, f.orig.hash(), f.reply.hash(), now)
}

/// Stages `f` in `slot` (which must be free): takes the slot out of the free stack first.
fn stage_in(ct: &Conntrack, slot: u32, f: &Flow) -> Staged {
    let mut held = Vec::new();
    while let Some(s) = ct.pop_free() {
        if s == slot {
            break;
        }
        held.push(s);
    }
    for s in held.into_iter().rev() {
        ct.push_free(s);
    }
    ct.push_free(slot);
    let st = stage(ct, f, 0).unwrap();
    assert_eq!(st.slot, slot);
    st
}

fn life(ct: &Conntrack, slot: u32) -> u64 {
    Meta(ct.slots[slot as usize].meta.load(Ordering::Relaxed)).life()
}

fn backend(f: Flow, b: u32) -> Flow {
    Flow { backend: b, ..f }
}

#[test]
fn a_staged_insert_is_invisible_until_live() {
    let ct = table(64);
    let f = udp_flow(1);
    let st = stage(&ct, &f, 0).unwrap();
    assert_eq!(life(&ct, st.slot), LIFE_PENDING);
    assert!(ct.lookup(&f.orig, 0).is_none() && ct.lookup(&f.reply, 0).is_none());
    assert!(ct.entries(0).is_empty());
    assert_eq!((ct.count(), ct.gc(1000, 64), ct.flush()), (0, 0, 0));
    assert!(!ct.remove(st.slot), "kills act on LIVE slots only");
    let v = ct.arbitrate(&st, &f, 0);
    assert!(matches!(v, Verdict::Win));
    let hit = ct.settle(&st, &f, v, 0).unwrap().unwrap();
    assert_eq!((hit.slot, hit.flow), (st.slot, f));
    assert_eq!(ct.lookup(&f.reply, 0).unwrap().slot, st.slot);
    assert_eq!((ct.count(), ct.stats().inserts), (1, 1));
}

/// Two staged inserts of one flow: the higher slot yields to the lower one and translates
/// by it even before it is LIVE; the lower one then goes LIVE.
#[test]
fn higher_staged_insert_yields_to_a_lower_pending_one() {
    let ct = table(64);
    let (fa, fb) = (backend(udp_flow(1), 1), backend(udp_flow(1), 2));
    let a = stage_in(&ct, 3, &fa);
    let b = stage_in(&ct, 5, &fb);
    let v = ct.arbitrate(&b, &fb, 0);
    let Verdict::Lose(Ok(h)) = v else {
        panic!("{v:?}");
    };
    assert_eq!((h.slot, h.dir, h.flow), (3, Dir::Original, fa));
    let got = ct.settle(&b, &fb, v, 0).unwrap().unwrap();
    assert_eq!(got.flow, fa);
    assert_eq!(life(&ct, 5), LIFE_FREE);
    let s = ct.stats();
    assert_eq!((s.insert_races, s.insert_lost), (1, 1));
    // The loser's entries are gone: the winner arbitrates alone.
    let v = ct.arbitrate(&a, &fa, 0);
    assert!(matches!(v, Verdict::Win), "{v:?}");
    assert_eq!(ct.settle(&a, &fa, v, 0).unwrap().unwrap().flow, fa);
    // `update` through the loser's hit, taken while the winner was PENDING, lands.
    ct.update(&got, Dir::Original, 0, 10, 1);
    assert_eq!(ct.entries(1)[0].packets, [1, 0]);
    assert_eq!(ct.count(), 1);
    assert_eq!(drain_free(&ct), 63);
}

/// The lowest staged insert aborts the higher one and goes LIVE; the higher one then sees a
/// LIVE rival and returns it.
#[test]
fn lowest_staged_insert_aborts_higher_rivals() {
    let ct = table(64);
    let (fa, fb, fc) = (
        backend(udp_flow(1), 1),
        backend(udp_flow(1), 2),
        backend(udp_flow(1), 3),
    );
    let a = stage_in(&ct, 2, &fa);
    let b = stage_in(&ct, 4, &fb);
    let c = stage_in(&ct, 6, &fc);
    let v = ct.arbitrate(&a, &fa, 0);
    assert!(matches!(v, Verdict::Win), "{v:?}");
    assert_eq!((life(&ct, 4), life(&ct, 6)), (LIFE_ABORTED, LIFE_ABORTED));
    let won = ct.settle(&a, &fa, v, 0).unwrap().unwrap();
    for (st, f) in [(b, fb), (c, fc)] {
        let v = ct.arbitrate(&st, &f, 0);
        let Verdict::Lose(Ok(h)) = v else {
            panic!("{v:?}");
        };
        assert_eq!((h.slot, h.flow, Meta(h.meta).life()), (2, fa, LIFE_LIVE));
        assert_eq!(ct.settle(&st, &f, v, 0).unwrap().unwrap().flow, fa);
    }
    assert_eq!(ct.count(), 1);
    assert_eq!(ct.lookup(&fa.reply, 0).unwrap().slot, won.slot);
    let s = ct.stats();
    assert_eq!((s.inserts, s.insert_races, s.insert_lost), (1, 2, 2));
    assert_eq!(drain_free(&ct), 63);
}

/// An insert that arbitrated alone (its rival had not published yet) and is then aborted by
/// that lower rival: its own LIVE CAS fails, and it finds and returns the rival.
#[test]
fn an_aborted_insert_returns_the_rival_that_aborted_it() {
    let ct = table(64);
    let (fa, fb) = (backend(udp_flow(1), 1), backend(udp_flow(1), 2));
    let b = stage_in(&ct, 5, &fb);
    let vb = ct.arbitrate(&b, &fb, 0);
    assert!(matches!(vb, Verdict::Win), "{vb:?}");
    let a = stage_in(&ct, 1, &fa);
    let va = ct.arbitrate(&a, &fa, 0);
    assert!(matches!(va, Verdict::Win), "{va:?}");
    assert_eq!(life(&ct, 5), LIFE_ABORTED);
    let got = ct.settle(&b, &fb, vb, 0).unwrap().unwrap();
    assert_eq!((got.slot, got.flow), (1, fa));
    assert_eq!(ct.settle(&a, &fa, va, 0).unwrap().unwrap().flow, fa);
    assert_eq!(ct.count(), 1);
    assert_eq!(drain_free(&ct), 63);
}

/// Aborted by a rival that itself lost meanwhile: nothing holds the tuple, so `settle`
/// says retry, and a fresh insert succeeds.
#[test]
fn an_aborted_insert_without_a_winner_retries() {
    let ct = table(64);
    let f = udp_flow(1);
    let st = stage(&ct, &f, 0).unwrap();
    let v = ct.arbitrate(&st, &f, 0);
    assert!(ct.abort(st.slot, st.meta).is_none());
    assert!(ct.settle(&st, &f, v, 0).is_none());
    assert_eq!((life(&ct, st.slot), ct.count()), (LIFE_FREE, 0));
    assert!(ct.lookup(&f.orig, 0).is_none());
    assert_eq!(ct.insert(f, 0).unwrap().flow, f);
    assert_eq!(ct.count(), 1);
    assert_eq!(drain_free(&ct), 63);
}

/// The abort CAS is the arbitration point: it fails on a rival that went LIVE first and
/// reports it, and it bumps the reuse generation so no hit on the aborted flow outlives it.
#[test]
fn abort_loses_to_a_rival_that_went_live_first() {
    let ct = table(64);
    let f = udp_flow(1);
    let st = stage(&ct, &f, 0).unwrap();
    let v = ct.arbitrate(&st, &f, 0);
    let live = ct.settle(&st, &f, v, 0).unwrap().unwrap();
    let got = ct.abort(st.slot, st.meta).unwrap();
    assert_eq!((got.life(), got.0), (LIFE_LIVE, live.meta));
    let g = udp_flow(2);
    let st = stage(&ct, &g, 0).unwrap();
    assert!(ct.abort(st.slot, st.meta).is_none());
    let m = Meta(ct.slots[st.slot as usize].meta.load(Ordering::Relaxed));
    assert_eq!((m.life(), m.reuse()), (LIFE_ABORTED, st.meta.reuse() + 1));
    // A second abort of the same incarnation finds it already aborted.
    assert!(ct.abort(st.slot, st.meta).is_none());
}

/// Staged inserts of two flows whose replies collide: the loser gets `Clash`, not the
/// other flow.
#[test]
fn staged_inserts_sharing_only_a_reply_tuple_clash() {
    let ct = table(64);
    let fa = udp_flow(1);
    let fb = Flow {
        reply: fa.reply,
        ..udp_flow(2)
    };
    let a = stage_in(&ct, 0, &fa);
    let b = stage_in(&ct, 1, &fb);
    let v = ct.arbitrate(&b, &fb, 0);
    assert!(matches!(v, Verdict::Lose(Err(InsertError::Clash))), "{v:?}");
    assert_eq!(ct.settle(&b, &fb, v, 0).unwrap(), Err(InsertError::Clash));
    let v = ct.arbitrate(&a, &fa, 0);
    assert!(ct.settle(&a, &fa, v, 0).unwrap().is_ok());
    assert_eq!(ct.stats().insert_races, 0);
    // A staged packet of the reverse direction (orig = the flow's reply) gets the flow, as
    // a reply.
    let rev = plain(fa.reply);
    let st = stage(&ct, &rev, 0).unwrap();
    let v = ct.arbitrate(&st, &rev, 0);
    let got = ct.settle(&st, &rev, v, 0).unwrap().unwrap();
    assert_eq!((got.slot, got.dir, got.flow), (a.slot, Dir::Reply, fa));
    assert_eq!(ct.count(), 1);
}

/// An expired LIVE rival is reclaimed, not obeyed.
#[test]
fn an_expired_live_rival_is_reclaimed() {
    let ct = table(64);
    let f = udp_flow(1);
    ct.insert(f, 0).unwrap();
    let g = backend(f, 5);
    let st = stage(&ct, &g, 100).unwrap();
    let v = ct.arbitrate(&st, &g, 100);
    assert!(matches!(v, Verdict::Win), "{v:?}");
    assert_eq!(ct.settle(&st, &g, v, 100).unwrap().unwrap().flow, g);
    assert_eq!((ct.count(), ct.stats().expired), (1, 1));
    assert_eq!(ct.lookup(&f.orig, 100).unwrap().flow, g);
    assert_eq!(drain_free(&ct), 63);
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

/// A full table of replied flows, one of which expired and holds the tuple being inserted
/// again, outside early drop's window: the look for the flow that follows the failed
/// staging reclaims it, and a second try succeeds instead of `Full`.
#[test]
fn a_full_table_makes_room_from_an_expired_holder_of_the_tuple() {
    let ct = table(128);
    // Slots are handed out in order; pick a flow whose own slot early drop does not see.
    let x = (0..128u16)
        .find(|&i| {
            let start = ((u64::from(udp_flow(i).orig.hash()) * 128) >> 32) as u16;
            (i + 128 - start) % 128 >= EARLY_DROP_WINDOW as u16
        })
        .unwrap();
    for i in 0..128 {
        let h = ct.insert(udp_flow(i), 0).unwrap();
        assert_eq!(h.slot, u32::from(i));
        ct.update(&h, Dir::Reply, 0, 1, if i == x { 0 } else { 100 });
    }
    // Flow x expired at 120 (replied UDP: 120 s), the others live until 220.
    let again = backend(udp_flow(x), 9);
    let h = ct.insert(again, 150).unwrap();
    assert_eq!((h.slot, h.flow, ct.count()), (u32::from(x), again, 128));
    let s = ct.stats();
    assert_eq!((s.expired, s.early_drops, s.full_drops), (1, 0, 0));
}
