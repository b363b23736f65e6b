//! What a worker tells the control thread besides its counters: a forwarding-latency
//! histogram, which table generation it first forwarded with (programming latency), and
//! frame copies for `afgate capture`.
//!
//! All of it follows the counters' rule: the worker is the only writer of its histogram and
//! generation marks (relaxed load+store), readers sum. Capture copies go through two bounded
//! lock-free queues of buffers the control thread allocated up front, so the packet path
//! never allocates: an empty free queue means the copy is dropped and counted.

use crate::counters::Counter;
use crate::wire::{EtherType, EthernetFrame, IpProtocol, Ipv4Packet, ethernet};
use arc_swap::ArcSwapOption;
use core::net::Ipv4Addr;
use core::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use crossbeam::queue::ArrayQueue;
use std::sync::Arc;

/// Sub-buckets per power of two: latencies are known to within 1/8 (12.5 %).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^40 ns (~18 minutes) get their own bucket; larger ones share the last.
const MAX_EXP: usize = 40;
/// Number of buckets of a [`LatencyHist`].
pub const LATENCY_BUCKETS: usize = (MAX_EXP - SUB_BITS as usize + 1) * SUB + SUB;

/// A log-linear histogram of nanoseconds (the bucket layout of an HDR histogram with three
/// significant bits) whose buckets are single-writer counters, so the control thread reads
/// it while the worker records, without a lock or a copy.
#[derive(Debug)]
pub struct LatencyHist {
    buckets: Box<[Counter]>,
    count: Counter,
    sum: Counter,
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist {
            buckets: (0..LATENCY_BUCKETS).map(|_| Counter::default()).collect(),
            count: Counter::default(),
            sum: Counter::default(),
        }
    }
}

/// The bucket a value falls in.
#[inline]
pub fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() as usize; // >= SUB_BITS
    if exp > MAX_EXP {
        return LATENCY_BUCKETS - 1;
    }
    let sub = ((v >> (exp - SUB_BITS as usize)) as usize) & (SUB - 1);
    (exp - SUB_BITS as usize + 1) * SUB + sub
}

/// The largest value that falls in bucket `i` (inclusive).
pub fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = i / SUB - 1 + SUB_BITS as usize;
    let sub = (i % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS as usize);
    ((SUB as u64 + sub) << (exp - SUB_BITS as usize)) + width - 1
}

impl LatencyHist {
    /// Records `n` samples of `v` nanoseconds each.
    #[inline]
    pub fn record_n(&self, v: u64, n: u64) {
        self.buckets[bucket_of(v)].add(n);
        self.count.add(n);
        self.sum.add(v.saturating_mul(n));
    }

    pub fn count(&self) -> u64 {
        self.count.get()
    }

    pub fn sum(&self) -> u64 {
        self.sum.get()
    }

    /// The bucket counts, index by index (see [`bucket_upper`]).
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.iter().map(|c| c.get()).collect()
    }
}

/// The value below which `q` (0..=1) of the samples in `buckets` fall, as the upper bound of
/// the bucket that holds the q-th sample; 0 when there are none.
pub fn quantile(buckets: &[u64], q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &c) in buckets.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_upper(i);
        }
    }
    bucket_upper(buckets.len() - 1)
}

/// Which way a captured frame was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// As received, before the pipeline.
    In,
    /// As transmitted, after the pipeline rewrote it.
    Out,
}

/// Bytes of a frame kept by a capture; longer frames are truncated (pcap's snaplen).
pub const SNAPLEN: usize = 2048;

/// One captured frame, in a buffer allocated by the control thread.
#[derive(Debug)]
pub struct Captured {
    /// Dataplane clock (nanoseconds since start).
    pub ts_ns: u64,
    pub port: u16,
    pub dir: Direction,
    pub worker: u16,
    /// Length on the wire; `len` of it were kept.
    pub orig_len: u32,
    pub len: u32,
    pub data: [u8; SNAPLEN],
}

impl Captured {
    pub fn new_boxed() -> Box<Captured> {
        Box::new(Captured {
            ts_ns: 0,
            port: 0,
            dir: Direction::In,
            worker: 0,
            orig_len: 0,
            len: 0,
            data: [0; SNAPLEN],
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[..(self.len as usize).min(SNAPLEN)]
    }
}

/// A small packet filter (a subset of pcap-filter: host/src/dst/net, port/src port/dst port,
/// protocol, and/or/not), evaluated by the worker on frames of a captured port only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Host(Ipv4Addr),
    Src(Ipv4Addr),
    Dst(Ipv4Addr),
    /// `net a.b.c.d/len` (either address).
    Net(Ipv4Addr, u8),
    Port(u16),
    SrcPort(u16),
    DstPort(u16),
    /// IP protocol number (`tcp`, `udp`, `icmp`).
    Proto(u8),
    /// Any IPv4 frame.
    Ip,
    Arp,
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

/// The fields a filter looks at, parsed once per frame.
struct Fields {
    arp: bool,
    ip: Option<(Ipv4Addr, Ipv4Addr, u8)>,
    ports: Option<(u16, u16)>,
}

fn fields(frame: &[u8]) -> Fields {
    let mut f = Fields {
        arp: false,
        ip: None,
        ports: None,
    };
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return f;
    };
    let (mut ethertype, mut off) = (eth.ethertype(), ethernet::HEADER_LEN);
    // One 802.1Q tag: captures on a trunk see tagged frames.
    if ethertype == EtherType::Vlan && frame.len() >= off + 4 {
        ethertype = EtherType::from(u16::from_be_bytes([frame[off + 2], frame[off + 3]]));
        off += 4;
    }
    match ethertype {
        EtherType::Arp => f.arp = true,
        EtherType::Ipv4 => {
            if let Ok(ip) = Ipv4Packet::new_checked(&frame[off..]) {
                let proto = ip.next_header();
                f.ip = Some((ip.src_addr(), ip.dst_addr(), u8::from(proto)));
                let p = ip.payload();
                if matches!(proto, IpProtocol::Tcp | IpProtocol::Udp)
                    && !ip.is_fragment()
                    && p.len() >= 4
                {
                    f.ports = Some((
                        u16::from_be_bytes([p[0], p[1]]),
                        u16::from_be_bytes([p[2], p[3]]),
                    ));
                }
            }
        }
        _ => {}
    }
    f
}

fn in_net(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    u32::from(a) & mask == u32::from(net) & mask
}

impl Filter {
    pub fn matches(&self, frame: &[u8]) -> bool {
        if *self == Filter::All {
            return true;
        }
        self.eval(&fields(frame))
    }

    fn eval(&self, f: &Fields) -> bool {
        let ip = f.ip;
        match self {
            Filter::All => true,
            Filter::Host(a) => ip.is_some_and(|(s, d, _)| s == *a || d == *a),
            Filter::Src(a) => ip.is_some_and(|(s, _, _)| s == *a),
            Filter::Dst(a) => ip.is_some_and(|(_, d, _)| d == *a),
            Filter::Net(n, l) => ip.is_some_and(|(s, d, _)| in_net(s, *n, *l) || in_net(d, *n, *l)),
            Filter::Port(p) => f.ports.is_some_and(|(s, d)| s == *p || d == *p),
            Filter::SrcPort(p) => f.ports.is_some_and(|(s, _)| s == *p),
            Filter::DstPort(p) => f.ports.is_some_and(|(_, d)| d == *p),
            Filter::Proto(p) => ip.is_some_and(|(_, _, x)| x == *p),
            Filter::Ip => ip.is_some(),
            Filter::Arp => f.arp,
            Filter::Not(a) => !a.eval(f),
            Filter::And(a, b) => a.eval(f) && b.eval(f),
            Filter::Or(a, b) => a.eval(f) || b.eval(f),
        }
    }
}

/// One running capture: which ports and directions, the filter, and the two queues.
#[derive(Debug)]
pub struct CaptureSession {
    /// Bit p: copy frames received on port p (p < 64).
    pub rx_ports: u64,
    /// Bit p: copy frames transmitted on port p.
    pub tx_ports: u64,
    pub filter: Filter,
    free: ArrayQueue<Box<Captured>>,
    full: ArrayQueue<Box<Captured>>,
    /// Copies lost because every buffer was in use (the reader fell behind).
    pub dropped: AtomicU64,
}

impl CaptureSession {
    /// A session with `buffers` preallocated frame buffers.
    pub fn new(rx_ports: u64, tx_ports: u64, filter: Filter, buffers: usize) -> Self {
        let n = buffers.max(1);
        let free = ArrayQueue::new(n);
        for _ in 0..n {
            let _ = free.push(Captured::new_boxed());
        }
        CaptureSession {
            rx_ports,
            tx_ports,
            filter,
            free,
            full: ArrayQueue::new(n),
            dropped: AtomicU64::new(0),
        }
    }

    /// Copies `frame` if it passes the filter. Called by workers; never allocates.
    #[inline]
    pub fn offer(&self, frame: &[u8], port: u16, dir: Direction, worker: u16, ts_ns: u64) {
        if !self.filter.matches(frame) {
            return;
        }
        let Some(mut buf) = self.free.pop() else {
            // Several workers may count here at once: a read-modify-write, but only while a
            // capture overflows.
            self.dropped.fetch_add(1, Relaxed);
            return;
        };
        let len = frame.len().min(SNAPLEN);
        buf.data[..len].copy_from_slice(&frame[..len]);
        buf.len = len as u32;
        buf.orig_len = frame.len() as u32;
        buf.ts_ns = ts_ns;
        buf.port = port;
        buf.dir = dir;
        buf.worker = worker;
        // `full` has room for every buffer, so this cannot fail; if it did the buffer is
        // simply freed.
        let _ = self.full.push(buf);
    }

    /// Takes the next captured frame (control thread).
    pub fn take(&self) -> Option<Box<Captured>> {
        self.full.pop()
    }

    /// Returns a buffer taken with [`CaptureSession::take`] for reuse.
    pub fn give_back(&self, buf: Box<Captured>) {
        let _ = self.free.push(buf);
    }
}

/// The capture slot all workers look at: the flag is read once per batch, the session only
/// when it is set.
#[derive(Debug, Default)]
pub struct CaptureCtl {
    active: AtomicBool,
    session: ArcSwapOption<CaptureSession>,
}

impl CaptureCtl {
    /// Starts `s`; false if a capture is already running.
    pub fn start(&self, s: Arc<CaptureSession>) -> bool {
        let prev = self
            .session
            .compare_and_swap(&None::<Arc<CaptureSession>>, Some(s));
        if prev.is_some() {
            return false;
        }
        self.active.store(true, Relaxed);
        true
    }

    pub fn stop(&self) {
        self.active.store(false, Relaxed);
        self.session.store(None);
    }

    /// The running session, if any (once per batch).
    #[inline]
    pub fn current(&self) -> Option<Arc<CaptureSession>> {
        if !self.active.load(Relaxed) {
            return None;
        }
        self.session.load_full()
    }
}

/// Per-worker observations besides counters.
#[derive(Debug)]
pub struct WorkerObs {
    /// Time to run a batch through the pipeline, divided by its frames: ns per frame.
    pub latency: LatencyHist,
    /// The newest table generation this worker forwarded a frame with, and when (dataplane
    /// clock, ns): with the publication time this gives the programming latency.
    gen_used: AtomicU64,
    gen_used_at_ns: AtomicU64,
    pub capture: Arc<CaptureCtl>,
}

impl WorkerObs {
    pub fn new(capture: Arc<CaptureCtl>) -> Self {
        WorkerObs {
            latency: LatencyHist::default(),
            gen_used: AtomicU64::new(0),
            gen_used_at_ns: AtomicU64::new(0),
            capture,
        }
    }

    /// Worker: a pass forwarded frames with table generation `generation` at `now_ns`.
    #[inline]
    pub fn note_generation(&self, generation: u64, now_ns: u64) {
        if generation > self.gen_used.load(Relaxed) {
            // Time first, generation last (release): a reader that sees the generation
            // sees its time.
            self.gen_used_at_ns.store(now_ns, Relaxed);
            self.gen_used.store(generation, Release);
        }
    }

    /// The newest generation used and when it was first used.
    pub fn generation_used(&self) -> (u64, u64) {
        let g = self.gen_used.load(Acquire);
        (g, self.gen_used_at_ns.load(Relaxed))
    }
}

impl Default for WorkerObs {
    fn default() -> Self {
        WorkerObs::new(Arc::new(CaptureCtl::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 20, 1 << 39, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last || v == 0, "monotonic at {v}");
            last = b;
            assert!(b < LATENCY_BUCKETS);
            if v < 1 << 40 {
                assert!(bucket_upper(b) >= v, "{v} <= upper({b})");
                if b > 0 {
                    assert!(bucket_upper(b - 1) < v, "{v} > upper({})", b - 1);
                }
            }
        }
    }

    #[test]
    fn quantiles_within_an_eighth() {
        let h = LatencyHist::default();
        for v in 1..=1000u64 {
            h.record_n(v * 100, 1);
        }
        let b = h.buckets();
        let p50 = quantile(&b, 0.5) as f64;
        let p99 = quantile(&b, 0.99) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.13, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.13, "{p99}");
        assert_eq!(h.count(), 1000);
        assert_eq!(quantile(&[0; 4], 0.5), 0);
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, b"x").unwrap();
        v
    }

    #[test]
    fn filter_matches_hosts_ports_protocols() {
        let f = udp([10, 20, 9, 60], [10, 96, 10, 1], 1000, 80);
        let host = Filter::Host(Ipv4Addr::new(10, 20, 9, 60));
        let port80 = Filter::Port(80);
        assert!(host.matches(&f));
        assert!(Filter::And(Box::new(host.clone()), Box::new(port80.clone())).matches(&f));
        assert!(!Filter::And(Box::new(host.clone()), Box::new(Filter::Proto(6))).matches(&f));
        assert!(Filter::Or(Box::new(Filter::Proto(6)), Box::new(Filter::Proto(17))).matches(&f));
        assert!(Filter::DstPort(80).matches(&f) && !Filter::SrcPort(80).matches(&f));
        assert!(Filter::Net(Ipv4Addr::new(10, 96, 0, 0), 16).matches(&f));
        assert!(!Filter::Arp.matches(&f));
        assert!(Filter::Not(Box::new(Filter::Arp)).matches(&f));
        assert!(!host.matches(&f[..20]), "truncated frame matches nothing");
    }

    #[test]
    fn session_drops_and_counts_when_full() {
        let s = CaptureSession::new(1, 0, Filter::All, 2);
        let f = udp([1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        for _ in 0..3 {
            s.offer(&f, 0, Direction::In, 0, 5);
        }
        assert_eq!(s.dropped.load(Relaxed), 1);
        let c = s.take().unwrap();
        assert_eq!(c.bytes(), &f[..]);
        s.give_back(c);
        s.offer(&f, 0, Direction::Out, 0, 6);
        assert!(s.take().is_some() && s.take().is_some() && s.take().is_none());
        let ctl = CaptureCtl::default();
        assert!(ctl.current().is_none());
        assert!(ctl.start(Arc::new(s)));
        assert!(!ctl.start(Arc::new(CaptureSession::new(0, 0, Filter::All, 1))));
        assert!(ctl.current().is_some());
        ctl.stop();
        assert!(ctl.current().is_none());
    }
}
