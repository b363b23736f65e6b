#![allow(unsafe_code)]
//! The generator: every UMEM frame gets the template once; per packet only the stamp is
//! patched ([`packet::stamp`]) and the descriptor goes back on the tx ring. Bounded by a packet
//! count and a duration, at a fixed rate (token bucket refilled per batch) or as fast as the
//! path takes it.
//!
//! Packet `k` belongs to flow `k % flows` with per-flow sequence `k / flows`, so the sink can
//! check every flow's order without the generator keeping per-flow state.

use crate::packet::{self, Template, TrafficSpec};
use crate::sink::{SinkReport, Tally};
use crate::xdpgen::Engine;
use crate::xskio::{Port, monotonic_ns, pin};
use afgate_dataplane::xsk::XdpDesc;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub dev: String,
    pub spec: TrafficSpec,
    /// Packets to send at most.
    pub count: u64,
    /// Seconds to send at most.
    pub duration: f64,
    /// Packets per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    pub batch: usize,
    pub core: Option<usize>,
    /// The device's tx queue to send on.
    pub queue: u32,
    /// Also receive on the same socket and account the stamped frames that come back (a
    /// request/response trial: a reflector answers each request, the reply carries the
    /// request's stamp, so the latency is the round trip).
    pub responses: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenReport {
    /// Frames the kernel took off the tx ring (completed).
    pub sent: u64,
    /// From the first send to the last completion.
    pub secs: f64,
    pub offered_pps: f64,
    pub requested_pps: Option<f64>,
    pub frame_len: usize,
    pub flows: u32,
    /// `XDP_STATISTICS`: descriptors the kernel rejected.
    pub tx_invalid: u64,
    /// sendto(2) calls per 1000 packets: the cost copy mode puts on the generator.
    pub kicks_per_kpkt: f64,
    /// Which engine sent (`kicks_per_kpkt` counts its kernel calls for `xdp`).
    #[serde(default)]
    pub engine: Engine,
    /// With `responses`: the replies, counted like the sink counts (latency = round trip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<SinkReport>,
}

const FRAMES: u32 = 4096;
/// With `responses`, this many of the UMEM's frames are kept for receiving: they never hold
/// a template, so a reply written into one cannot corrupt a later request.
const RX_FRAMES: usize = 2048;

/// The receiving half of a request/response trial: frames of its own, circulated between
/// the fill and rx rings without going through the transmit pool.
struct Responses {
    tally: Tally,
    descs: Vec<XdpDesc>,
    fill: Vec<u64>,
    first: u64,
    last: u64,
}

impl Responses {
    /// Accounts what is on the rx ring and gives the frames back to the fill ring.
    /// Returns the number of frames taken.
    fn poll(&mut self, port: &mut Port) -> usize {
        let n = port.xsk.rx.consume(&mut self.descs);
        if n == 0 {
            return 0;
        }
        let now = monotonic_ns();
        for (i, d) in self.descs[..n].iter().enumerate() {
            // SAFETY: the descriptor came off our rx ring; the frame is ours until it goes
            // back on the fill ring below.
            self.tally
                .frame(unsafe { port.frame(d.addr, d.len as usize) }, now as u32);
            self.fill[i] = port.umem.chunk_of(d.addr);
        }
        // Never short: exactly RX_FRAMES frames circulate, and the fill ring holds that many.
        port.xsk.fill.produce(&self.fill[..n]);
        if port.xsk.fill.needs_wakeup() {
            port.xsk.kick_rx();
        }
        if self.first == 0 {
            self.first = now;
        }
        self.last = now;
        n
    }
}

pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> Result<GenReport> {
    pin(cfg.core);
    let mut port = Port::open_queue(&cfg.dev, cfg.queue, cfg.responses, FRAMES, 2048)?;
    let Template { bytes, layout } = packet::build(&cfg.spec);
    let len = bytes.len();
    // Every frame gets the template once, up front.
    let mut all = vec![0u64; FRAMES as usize];
    let n = port.pool.alloc_into(&mut all);
    for &a in &all[..n] {
        // SAFETY: the frame just came out of our pool; nothing else refers to it.
        let Some(f) = (unsafe { port.frame(a, len) }) else {
            bail!("UMEM frame {a:#x} out of range");
        };
        f.copy_from_slice(&bytes);
    }
    let keep = if cfg.responses {
        RX_FRAMES.min(n / 2)
    } else {
        0
    };
    for &a in &all[keep..n] {
        port.pool.free(a);
    }
    let mut responses = if cfg.responses {
        let put = port.xsk.fill.produce(&all[..keep]);
        if put < keep {
            bail!("fill ring took {put} of {keep} frames");
        }
        Some(Responses {
            tally: Tally::new(cfg.spec.flows)?,
            descs: vec![XdpDesc::default(); 64],
            fill: vec![0u64; 64],
            first: 0,
            last: 0,
        })
    } else {
        None
    };

    let flows = cfg.spec.flows.max(1);
    let batch = cfg.batch.clamp(1, 256);
    let mut addrs = vec![0u64; batch];
    let mut descs = vec![XdpDesc::default(); batch];
    let mut comp = vec![0u64; 512];
    let mut queued: u64 = 0;
    let mut completed: u64 = 0;
    let mut kicks: u64 = 0;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cfg.duration);
    let mut tokens: f64 = 0.0;
    let mut last_refill = start;
    // Small bursts at low rates: a whole batch stamped at once would put the batch's own
    // transmit time into the latency of its last packets.
    let burst_cap = cfg
        .rate
        .map_or(batch as f64, |r| (r * 50e-6).clamp(1.0, batch as f64));
    set_timer_slack_ns(1000);

    while queued < cfg.count && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(r) = responses.as_mut() {
            r.poll(&mut port);
        }
        let c = port.xsk.comp.consume(&mut comp);
        for &a in &comp[..c] {
            port.pool.free(a);
        }
        completed += c as u64;
        let mut want = batch.min((cfg.count - queued) as usize);
        if cfg.rate.is_some() {
            want = want.min(burst_cap as usize);
        }
        if let Some(rate) = cfg.rate {
            tokens = (tokens + now.duration_since(last_refill).as_secs_f64() * rate).min(burst_cap);
            last_refill = now;
            if tokens < want as f64 {
                if tokens < 1.0 {
                    let wait = (want as f64 - tokens) / rate;
                    // Never spin: the sink shares this core, and a spinning generator would
                    // only let it run at scheduler ticks, adding milliseconds to the very
                    // latency it measures. Sleep through long waits, yield through short.
                    if wait > 100e-6 {
                        let nap = Duration::from_secs_f64(wait - 50e-6);
                        // A reply arriving during the nap would wait for its end and
                        // count the nap as round-trip time: wake on it instead.
                        match responses.as_ref() {
                            Some(_) => port.wait_rx_for(nap),
                            None => std::thread::sleep(nap),
                        }
                    } else {
                        std::thread::yield_now();
                    }
                    continue;
                }
                want = tokens as usize;
            }
        }
        let got = port.pool.alloc_into(&mut addrs[..want]);
        if got == 0 {
            // Everything is in flight: let the kernel transmit.
            port.xsk.kick_tx();
            kicks += 1;
            let c = port.xsk.comp.consume(&mut comp);
            for &a in &comp[..c] {
                port.pool.free(a);
            }
            completed += c as u64;
            continue;
        }
        let ts = monotonic_ns() as u32;
        for i in 0..got {
            let k = queued + i as u64;
            let flow = (k % u64::from(flows)) as u32;
            let seq = (k / u64::from(flows)) as u32;
            // SAFETY: the frame came out of our pool (completed or never sent).
            if let Some(f) = unsafe { port.frame(addrs[i], len) } {
                packet::stamp(f, &layout, &cfg.spec, flow, seq, ts);
            }
            descs[i] = XdpDesc {
                addr: addrs[i],
                len: len as u32,
                options: 0,
            };
        }
        let put = port.xsk.tx.produce(&descs[..got]);
        for &a in &addrs[put..got] {
            port.pool.free(a);
        }
        queued += put as u64;
        if cfg.rate.is_some() {
            tokens -= put as f64;
        }
        kicks += u64::from(port.kick_tx());
    }
    // Drain: the kernel completes what is still on the tx ring (bounded wait).
    let drain_until = Instant::now() + Duration::from_millis(500);
    while completed < queued && Instant::now() < drain_until {
        kicks += u64::from(port.kick_tx());
        let c = port.xsk.comp.consume(&mut comp);
        for &a in &comp[..c] {
            port.pool.free(a);
        }
        completed += c as u64;
        if c == 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Replies still in flight: until 300 ms pass without one (at most 2 s).
    let responses = responses.map(|mut r| {
        let until = Instant::now() + Duration::from_secs(2);
        let mut quiet = Instant::now();
        while Instant::now() < until && quiet.elapsed() < Duration::from_millis(300) {
            if r.poll(&mut port) > 0 {
                quiet = Instant::now();
            } else {
                port.wait_rx(10);
            }
        }
        let mut rep = r.tally.finish(r.first, r.last);
        if let Some(st) = port.xsk.kernel_stats() {
            rep.xsk_rx_dropped = st.rx_dropped();
            rep.xsk_rx_ring_full = st.rx_ring_full();
            rep.xsk_fill_empty = st.rx_fill_ring_empty_descs();
        }
        rep
    });
    let stats = port.xsk.kernel_stats();
    Ok(GenReport {
        sent: completed,
        secs,
        offered_pps: completed as f64 / secs.max(1e-9),
        requested_pps: cfg.rate,
        frame_len: len + 4,
        flows,
        tx_invalid: stats.map(|s| s.tx_invalid_descs()).unwrap_or(0),
        kicks_per_kpkt: kicks as f64 * 1000.0 / (completed.max(1) as f64),
        engine: Engine::Xsk,
        responses,
    })
}

/// Sleeps in the rate limiter should end when asked, not up to the default 50 µs later.
#[allow(unsafe_code)]
fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}
