#![allow(unsafe_code)]
//! The sink: an AF_XDP socket fed by afgate's own steering program, counting per flow,
//! detecting loss (sequence gaps) and reordering, and measuring one-way latency from the
//! generator's CLOCK_MONOTONIC stamp into an HDR histogram.

use crate::packet;
use crate::xskio::{Port, monotonic_ns, pin};
use afgate_dataplane::xsk::XdpDesc;
use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub dev: String,
    /// Flows the generator sends (sizes the per-flow state).
    pub flows: u32,
    /// Seconds to run at most.
    pub duration: f64,
    /// Stop after this many stamped packets (0: no limit).
    pub count: u64,
    /// Stop this long after the last packet once something was received (0: never).
    pub idle_ms: u64,
    pub core: Option<usize>,
    /// Spin instead of sleeping in poll(2) when idle.
    pub busy: bool,
}

/// Latency summary, ns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// (quantile, ns) points for a CDF plot.
    pub cdf: Vec<(f64, u64)>,
}

impl Latency {
    fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let qs = [
            0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995,
            0.999, 0.9999, 1.0,
        ];
        Latency {
            samples: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            cdf: qs.iter().map(|&q| (q, h.value_at_quantile(q))).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkReport {
    /// Stamped packets of known flows.
    pub received: u64,
    /// Frames without a stamp (ARP, the kernel's own packets) or of unknown flows.
    pub other: u64,
    pub flows_seen: u32,
    /// Packets skipped over by a flow's sequence (late arrivals are subtracted again).
    pub gaps: u64,
    /// Packets that arrived after a later packet of their flow.
    pub reordered: u64,
    /// From the first to the last stamped packet.
    pub rx_secs: f64,
    pub rx_pps: f64,
    /// `XDP_STATISTICS` of the sink's socket: frames the kernel dropped because the sink's
    /// rx ring was full or its fill ring empty — loss that is the sink's, not the DUT's.
    pub xsk_rx_dropped: u64,
    pub xsk_rx_ring_full: u64,
    pub xsk_fill_empty: u64,
    pub latency: Latency,
}

const FRAMES: u32 = 65536;
const RING: u32 = 16384;

/// Per-flow accounting of stamped frames: loss (sequence gaps), reordering and latency.
/// Shared by the sink and the generator's response receiver (`gen --responses`).
pub struct Tally {
    /// Next expected sequence per flow; u32::MAX marks "never seen".
    next: Vec<u32>,
    hist: Histogram<u64>,
    pub rep: SinkReport,
}

impl Tally {
    pub fn new(flows: u32) -> Result<Tally> {
        Ok(Tally {
            next: vec![u32::MAX; flows.max(1) as usize],
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?,
            rep: SinkReport::default(),
        })
    }

    /// Accounts one frame received at `now32` (low 32 bits of [`monotonic_ns`]).
    #[inline]
    pub fn frame(&mut self, frame: Option<&mut [u8]>, now32: u32) {
        let Some(s) = frame.and_then(|f| packet::parse(f)) else {
            self.rep.other += 1;
            return;
        };
        let Some(exp) = self.next.get_mut(s.flow as usize) else {
            self.rep.other += 1;
            return;
        };
        let rep = &mut self.rep;
        rep.received += 1;
        if *exp == u32::MAX {
            rep.flows_seen += 1;
            rep.gaps += u64::from(s.seq);
            *exp = s.seq.wrapping_add(1);
        } else if s.seq >= *exp {
            rep.gaps += u64::from(s.seq - *exp);
            *exp = s.seq.wrapping_add(1);
        } else {
            rep.reordered += 1;
            rep.gaps = rep.gaps.saturating_sub(1);
        }
        // A stamp from the future (clock read before the frame was patched on another
        // core) counts as 0 ns rather than 4 s.
        let lat = now32.wrapping_sub(s.ts);
        let lat = if lat > u32::MAX / 2 { 0 } else { lat };
        let _ = self.hist.record(u64::from(lat).max(1));
    }

    /// The report, with `rx_secs`/`rx_pps` from the first and last receive times (ns).
    pub fn finish(mut self, first: u64, last: u64) -> SinkReport {
        self.rep.rx_secs = last.saturating_sub(first) as f64 / 1e9;
        self.rep.rx_pps = if self.rep.rx_secs > 0.0 {
            self.rep.received as f64 / self.rep.rx_secs
        } else {
            0.0
        };
        self.rep.latency = Latency::from_hist(&self.hist);
        self.rep
    }
}

pub fn run(cfg: &SinkConfig, stop: &AtomicBool, ready: impl FnOnce()) -> Result<SinkReport> {
    pin(cfg.core);
    let mut port = Port::open(&cfg.dev, true, FRAMES, RING)?;
    let mut tally = Tally::new(cfg.flows)?;
    let mut rx = vec![XdpDesc::default(); 64];
    let mut scratch = vec![0u64; 1024];
    port.refill(&mut scratch);
    ready();

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cfg.duration);
    let (mut first, mut last) = (0u64, 0u64);
    let mut last_rx = Instant::now();
    let mut idle: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let n = port.xsk.rx.consume(&mut rx);
        if n == 0 {
            idle += 1;
            // Past 256 idle rounds every round sleeps up to 10 ms: check the clock each time,
            // or the idle stop would come up to 64 sleeps late.
            if idle & 63 == 0 || idle > 256 {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if cfg.idle_ms > 0
                    && tally.rep.received > 0
                    && now.duration_since(last_rx) >= Duration::from_millis(cfg.idle_ms)
                {
                    break;
                }
            }
            if !cfg.busy && idle > 256 {
                port.refill(&mut scratch);
                port.wait_rx(10);
            } else {
                core::hint::spin_loop();
            }
            continue;
        }
        idle = 0;
        let now_ns = monotonic_ns();
        for d in &rx[..n] {
            // SAFETY: the descriptor came off our rx ring; the frame is ours until it goes
            // back on the fill ring below.
            tally.frame(unsafe { port.frame(d.addr, d.len as usize) }, now_ns as u32);
            port.pool.free(d.addr);
        }
        if tally.rep.received > 0 {
            if first == 0 {
                first = now_ns;
            }
            last = now_ns;
            last_rx = Instant::now();
        }
        port.refill(&mut scratch);
        if tally.rep.received >= cfg.count && cfg.count > 0 {
            break;
        }
    }
    let mut rep = tally.finish(first, last);
    if let Some(st) = port.xsk.kernel_stats() {
        rep.xsk_rx_dropped = st.rx_dropped();
        rep.xsk_rx_ring_full = st.rx_ring_full();
        rep.xsk_fill_empty = st.rx_fill_ring_empty_descs();
    }
    Ok(rep)
}
