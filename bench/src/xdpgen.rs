//! The `xdp` generator engine: the stamp is written by an XDP program that the kernel runs
//! over one template frame (`BPF_PROG_TEST_RUN` with live frames, [`afgate_bpf::TrafficGen`]),
//! and every run transmits its frame out of the generator's device. The whole per-packet loop
//! stays in the kernel, so it outruns what the AF_XDP copy-mode generator could offer.
//!
//! Calls go in chunks: as large as possible when unlimited (the per-call setup is tens of
//! microseconds), a short burst when rate-limited, with a token bucket between chunks. Bounded
//! by the packet count and the duration like the `xsk` engine; reports the same [`GenReport`].
//!
//! Only plain UDP (no 802.1Q tag, no VXLAN): the program patches fixed offsets.

use crate::generator::{GenConfig, GenReport};
use crate::packet::{self, Proto};
use crate::xskio::pin;
use anyhow::{Context, Result, bail};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Which generator sends the frames.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// AF_XDP socket (copy mode on veth): any traffic, ~0.5 Mpps on veth.
    #[default]
    Xsk,
    /// In-kernel XDP live frames (Linux ≥ 5.18): plain UDP only, several Mpps.
    Xdp,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Xsk => "xsk",
            Engine::Xdp => "xdp",
        }
    }

    /// Whether this engine can send `spec`'s traffic.
    pub fn supports(self, spec_proto: Proto, vlan: bool, vxlan: bool) -> bool {
        match self {
            Engine::Xsk => true,
            Engine::Xdp => spec_proto == Proto::Udp && !vlan && !vxlan,
        }
    }
}

/// Largest chunk per kernel call when sending as fast as possible.
const MAX_CHUNK: u64 = 65_536;

pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> Result<GenReport> {
    let spec = &cfg.spec;
    if !Engine::Xdp.supports(spec.proto, spec.vlan.is_some(), spec.vxlan.is_some()) {
        bail!("the xdp engine sends plain UDP only (no --vlan, --vxlan, TCP): use --engine xsk");
    }
    pin(cfg.core);
    let t = packet::build(spec);
    let flows = spec.flows.max(1);
    let mut tg = afgate_bpf::TrafficGen::load(flows, spec.sports, &t.bytes)
        .context("loading the XDP traffic generator")?;
    tg.set_batch(u32::try_from(cfg.batch).unwrap_or(afgate_bpf::trafficgen::MAX_BATCH));
    // Rate-limited: each call costs 15–50 ms of kernel setup (page pool, measured with
    // strace on 6.18), so pacing is in 50 ms bursts: fine for a mean rate, not for latency.
    let chunk_cap = cfg.rate.map_or(MAX_CHUNK, |r| {
        ((r * 50e-3) as u64).clamp(u64::from(cfg.batch.max(1) as u32), MAX_CHUNK)
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cfg.duration);
    let mut sent: u64 = 0;
    let mut calls: u64 = 0;
    let mut tokens = 0.0f64;
    let mut last_refill = start;
    while sent < cfg.count && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut want = chunk_cap.min(cfg.count - sent);
        if cfg.rate.is_none() {
            // Keep the last call from overrunning the deadline by more than ~10 %: assume
            // 10 Mpps for sizing the chunks of the last 100 ms.
            let left = deadline.duration_since(now).as_secs_f64();
            want = want.min(((left * 10e6) as u64).max(256));
        }
        if let Some(rate) = cfg.rate {
            tokens =
                (tokens + now.duration_since(last_refill).as_secs_f64() * rate).min(want as f64);
            last_refill = now;
            if tokens < want as f64 {
                let wait = (want as f64 - tokens) / rate;
                // Sleep, never spin: the sink shares this core.
                if wait > 100e-6 {
                    std::thread::sleep(Duration::from_secs_f64(wait - 50e-6));
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            tokens -= want as f64;
        }
        let n = tg.run(&cfg.dev, want as u32)?;
        calls += 1;
        // Fewer than asked: a signal interrupted the call; the stop flag decides.
        sent += n;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(GenReport {
        responses: None,
        sent,
        secs,
        offered_pps: sent as f64 / secs.max(1e-9),
        requested_pps: cfg.rate,
        frame_len: t.bytes.len() + 4,
        flows,
        tx_invalid: 0,
        kicks_per_kpkt: calls as f64 * 1000.0 / sent.max(1) as f64,
        engine: Engine::Xdp,
    })
}

/// The engine for a scenario run: `$AFGATE_BENCH_ENGINE` (`xsk` or `xdp`) if set, else `xdp`
/// when this kernel runs live frames (probed on `lo`, whose missing XDP transmit drops the
/// one probe frame), else `xsk`.
pub fn pick_engine() -> Engine {
    match std::env::var("AFGATE_BENCH_ENGINE").as_deref() {
        Ok("xsk") => return Engine::Xsk,
        Ok("xdp") => return Engine::Xdp,
        _ => {}
    }
    let spec = packet::TrafficSpec {
        proto: Proto::Udp,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: std::net::Ipv4Addr::new(127, 0, 0, 2),
        dst_ip: std::net::Ipv4Addr::new(127, 0, 0, 3),
        sport_base: 1024,
        sports: 1,
        dport: 9,
        flows: 1,
        frame_len: 64,
        vlan: None,
        vxlan: None,
    };
    let t = packet::build(&spec);
    match afgate_bpf::TrafficGen::load(1, 1, &t.bytes).and_then(|g| g.run("lo", 1)) {
        Ok(1) => Engine::Xdp,
        Ok(n) => {
            eprintln!("afgate-bench: xdp generator probe stamped {n} frames; using xsk");
            Engine::Xsk
        }
        Err(e) => {
            eprintln!("afgate-bench: xdp generator unavailable ({e}); using xsk");
            Engine::Xsk
        }
    }
}
