//! Scenarios: each builds (or reuses) a [`BenchLab`], runs its variants — afgate and the
//! references it is compared with, in the same run on the same veths — and returns a
//! [`ScenarioResult`] for the report. One file per scenario; the machinery (a trial, the
//! devices under test, the per-variant measurement [`measure_with`]: max rate, zero-loss
//! search, latency at half the zero-loss rate) is here; every scenario measures each of its
//! variants with it.
//!
//! A trial: start the sink (AF_XDP on the sink's veth), start the generator, wait for it, let
//! the sink drain, read both JSON reports. Every process is bounded by its own `--duration`
//! and `--count`, and by the [`Proc`] guard that kills it on drop.

pub mod clusterip;
pub mod conntrack;
pub mod dns;
pub mod flows;
pub mod fullpath;
pub mod l3fwd;
pub mod newconn;
pub mod services;
pub mod vxlan;
pub mod workers;

use crate::generator::GenReport;
use crate::packet::Proto;
use crate::sink::{Latency, SinkReport};
use crate::topo::{self, BenchLab};
use crate::xdpgen::Engine;
use afgate_tests::{Afgate, Netns, Proc};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of the one JSON line a child prints as its result.
pub const REPORT_PREFIX: &str = "afgate-bench: report ";
pub const READY: &str = "afgate-bench: ready";

/// How long each kind of trial runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timing {
    pub max_secs: f64,
    pub search_secs: f64,
    pub search_trials: u32,
    pub latency_secs: f64,
    /// Seconds of each rated trial of a forwarding-rate [`ladder`].
    #[serde(default)]
    pub ladder_secs: f64,
    /// Trials per variant and offered load of a [`ladder`] (their median counts).
    #[serde(default)]
    pub ladder_repeats: u32,
}

impl Timing {
    /// 8 s of traffic per variant: max 1.5 s, 5 zero-loss probes of 1 s, latency 1.5 s
    /// (~60 variants: the full suite stays near a quarter of an hour).
    pub fn full() -> Timing {
        Timing {
            max_secs: 1.5,
            search_secs: 1.0,
            search_trials: 5,
            latency_secs: 1.5,
            ladder_secs: 1.0,
            ladder_repeats: 3,
        }
    }
    /// The CI suite (< 5 min for every scenario): 2 bisection steps, half-second trials.
    pub fn quick() -> Timing {
        Timing {
            max_secs: 0.5,
            search_secs: 0.4,
            search_trials: 2,
            latency_secs: 0.4,
            ladder_secs: 0.4,
            ladder_repeats: 1,
        }
    }
    /// The `#[test]`: numbers exist, nothing more.
    pub fn smoke() -> Timing {
        Timing {
            max_secs: 0.4,
            search_secs: 0.3,
            search_trials: 1,
            latency_secs: 0.3,
            ladder_secs: 0.3,
            ladder_repeats: 1,
        }
    }
}

/// The sink stops this long after the last packet.
pub const SINK_IDLE_MS: &str = "300";

/// What a run is allowed to use, and where the binaries are.
#[derive(Debug, Clone)]
pub struct Env {
    pub bench_bin: PathBuf,
    pub xskfwd_bin: PathBuf,
    pub afgate_bin: PathBuf,
    pub timing: Timing,
    /// Core of the generator and the sink.
    pub load_core: usize,
    /// Core of the forwarder under test (afgate's worker, xskfwd, kernel RPS).
    pub dut_core: usize,
    /// Packets per trial never exceed this times the trial's seconds.
    pub max_pps: f64,
    /// The generator engine for traffic it supports (the others always use `xsk`).
    pub engine: Engine,
    /// veth receive NAPI in kthreads pinned to the receiving side's core (d0 → DUT core,
    /// the sink's device → load core) instead of softirq on the sending core.
    /// `AFGATE_BENCH_NAPI=softirq` turns it off.
    pub threaded_napi: bool,
}

impl Env {
    /// Binaries next to the running executable (`target/<profile>/`), or one level up when it
    /// is a test in `target/<profile>/deps/`.
    pub fn locate(timing: Timing) -> Result<Env> {
        let exe = std::env::current_exe()?;
        let find = |name: &str, env: &str| -> Result<PathBuf> {
            if let Some(p) = std::env::var_os(env) {
                return Ok(PathBuf::from(p));
            }
            let mut dir = exe.parent();
            for _ in 0..2 {
                let Some(d) = dir else { break };
                let c = d.join(name);
                if c.is_file() {
                    return Ok(c);
                }
                dir = d.parent();
            }
            bail!(
                "{name} not found next to {} (build it: cargo build --release -p afgate -p afgate-bench), or set ${env}",
                exe.display()
            )
        };
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let core = |var: &str, default: usize| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Ok(Env {
            bench_bin: find("afgate-bench", "AFGATE_BENCH_BIN")?,
            xskfwd_bin: find("afgate-xskfwd", "AFGATE_XSKFWD_BIN")?,
            afgate_bin: find("afgate", "AFGATE_BIN")?,
            timing,
            load_core: core("AFGATE_BENCH_LOAD_CORE", if ncpu > 1 { 1 } else { 0 }),
            dut_core: core("AFGATE_BENCH_DUT_CORE", 0),
            max_pps: 30e6,
            engine: crate::xdpgen::pick_engine(),
            threaded_napi: std::env::var("AFGATE_BENCH_NAPI").as_deref() != Ok("softirq"),
        })
    }
}

/// The traffic of a trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Traffic {
    pub proto: Proto,
    pub flows: u32,
    pub size: usize,
    /// `afgate-bench gen` options that replace the trial's defaults (`dst-ip`, `dst-mac`,
    /// `dport`, `src-ip`) or add to them (`vxlan`), without the leading dashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gen_args: Vec<(String, String)>,
}

impl Traffic {
    pub fn udp64(flows: u32) -> Traffic {
        Traffic {
            proto: Proto::Udp,
            flows,
            size: 64,
            gen_args: Vec::new(),
        }
    }
}

/// What forwards between the generator and the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dut {
    /// Generator straight into the sink: what the measurement itself can do.
    Wire,
    /// The DUT namespace's kernel (ip_forward), its softirq steered to the DUT core (RPS).
    Kernel,
    /// XDP devmap redirect d0 → d1 inside the driver: the in-kernel ceiling.
    XdpCeiling,
    /// The minimal AF_XDP forwarder (`afgate-xskfwd`), adaptive polling.
    XskFwd,
    AfgateAdaptive,
    AfgateBusy,
    /// afgate with its worker at real-time priority, sleeping whenever idle (`poll: wakeup`,
    /// `rt_priority`): on a core shared with the veth NAPI thread, the two then take turns
    /// a batch at a time.
    AfgateRt,
}

impl Dut {
    pub fn name(self) -> &'static str {
        match self {
            Dut::Wire => "wire",
            Dut::Kernel => "kernel",
            Dut::XdpCeiling => "xdp-ceiling",
            Dut::XskFwd => "xskfwd",
            Dut::AfgateAdaptive => "afgate-adaptive",
            Dut::AfgateBusy => "afgate-busy",
            Dut::AfgateRt => "afgate-rt",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Dut::Wire => "generator → sink over one veth pair, no forwarder",
            Dut::Kernel => "kernel ip_forward in the DUT namespace (RPS to the DUT core)",
            Dut::XdpCeiling => "XDP devmap redirect d0→d1 (afgate_bpf::DevmapRedirect), no rewrite",
            Dut::XskFwd => "minimal AF_XDP forwarder: rx→tx + MAC rewrite, adaptive poll",
            Dut::AfgateAdaptive => "afgate, 1 worker, poll adaptive",
            Dut::AfgateBusy => "afgate, 1 worker, poll busy",
            Dut::AfgateRt => "afgate, 1 worker, poll wakeup, SCHED_FIFO (rt_priority 10)",
        }
    }
}

/// The real-time priority of `afgate-rt`'s worker: above the veth NAPI thread it shares its
/// core with (`afgate_dataplane::worker::set_realtime`).
pub const RT_PRIORITY: u8 = 10;

/// afgate's `workers:` section for `cores`, polling as `dut` does (an afgate variant; any
/// other is taken as `afgate-rt`, the way afgate is meant to run on a core shared with the
/// veth NAPI thread: sleeping whenever idle, at [`RT_PRIORITY`]).
pub fn workers_yaml(cores: &[usize], dut: Dut) -> String {
    let cores: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    let poll = match dut {
        Dut::AfgateAdaptive => "adaptive".to_string(),
        Dut::AfgateBusy => "busy".to_string(),
        _ => format!("wakeup\n  rt_priority: {RT_PRIORITY}"),
    };
    format!(
        "workers:\n  cores: [{}]\n  poll: {poll}\n",
        cores.join(", ")
    )
}

/// A running device under test; dropping it stops it.
pub struct Running {
    dut: Dut,
    afgate: Option<Afgate>,
    proc: Option<Proc>,
    lab_forward: bool,
}

impl Running {
    /// afgate's `final-stats` (and the helpers' reports) after stopping.
    pub fn stop(mut self, lab: &BenchLab) -> Result<Option<serde_json::Value>> {
        let mut out = None;
        if let Some(mut a) = self.afgate.take() {
            a.stop()?;
            out = a
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("afgate: final-stats "))
                .and_then(|j| serde_json::from_str(j).ok());
        }
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGINT);
            p.wait_timeout(Duration::from_secs(5))?;
            out = p
                .stdout()
                .lines()
                .find_map(|l| l.strip_prefix(REPORT_PREFIX))
                .and_then(|j| serde_json::from_str(j).ok());
        }
        if self.lab_forward {
            lab.ip_forward(false)?;
            lab.rps(&lab.dut, "d0", "0")?;
        }
        let _ = self.dut;
        Ok(out)
    }
}

/// Starts `dut` in the lab, for at most `secs`.
pub fn start(env: &Env, lab: &BenchLab, dut: Dut, secs: f64) -> Result<Running> {
    let secs_s = format!("{:.1}", secs.max(1.0));
    let core = env.dut_core.to_string();
    let mut r = Running {
        dut,
        afgate: None,
        proc: None,
        lab_forward: false,
    };
    match dut {
        Dut::Wire => {}
        Dut::Kernel => {
            if env.engine == Engine::Xdp {
                // The xdp engine transmits with veth's ndo_xdp_xmit, which delivers only
                // into a peer with an XDP program: XDP_PASS on d0, then the usual stack.
                let bin = env.bench_bin.to_string_lossy().into_owned();
                let argv = [
                    bin.as_str(),
                    "xdp-pass",
                    "--dev",
                    "d0",
                    "--duration",
                    &secs_s,
                ];
                r.proc = Some(spawn_ready(&lab.dut, &argv)?);
            }
            lab.ip_forward(true)?;
            lab.rps(&lab.dut, "d0", &format!("{:x}", 1u64 << env.dut_core))?;
            r.lab_forward = true;
        }
        Dut::XdpCeiling => {
            let bin = env.bench_bin.to_string_lossy().into_owned();
            let argv = [
                bin.as_str(),
                "xdp-redirect",
                "--in-dev",
                "d0",
                "--out-dev",
                "d1",
                "--duration",
                &secs_s,
            ];
            r.proc = Some(spawn_ready(&lab.dut, &argv)?);
        }
        Dut::XskFwd => {
            let bin = env.xskfwd_bin.to_string_lossy().into_owned();
            let mac = topo::SINK_MAC.to_string();
            let argv = [
                bin.as_str(),
                "--in-dev",
                "d0",
                "--out-dev",
                "d1",
                "--dst-mac",
                &mac,
                "--duration",
                &secs_s,
                "--core",
                &core,
            ];
            r.proc = Some(spawn_ready(&lab.dut, &argv)?);
        }
        Dut::AfgateAdaptive | Dut::AfgateBusy | Dut::AfgateRt => {
            let name = match dut {
                Dut::AfgateBusy => "busy",
                Dut::AfgateRt => "rt",
                _ => "adaptive",
            };
            let cfg = lab.afgate_config(name, &workers_yaml(&[env.dut_core], dut))?;
            // Its own control socket: the default one may belong to another afgate (a test).
            let api = lab.lab.tmp().join(format!("afgate-{name}.sock"));
            let api = api.to_string_lossy();
            r.afgate = Some(
                Afgate::start_bin(
                    &env.afgate_bin,
                    &lab.dut,
                    &cfg,
                    &["--duration", &secs_s, "--api", &api],
                )
                .context("starting afgate")?,
            );
        }
    }
    // d0 has a NAPI once its XDP program is attached (by the DUT itself or xdp-pass); the
    // kernel variant on the xsk engine has none and forwards via RPS instead.
    let d0_xdp = dut != Dut::Wire && (dut != Dut::Kernel || env.engine == Engine::Xdp);
    if env.threaded_napi && d0_xdp {
        lab.pin_napi(&lab.dut, "d0", env.dut_core, false)?;
    }
    Ok(r)
}

pub(crate) fn spawn_ready(ns: &Netns, argv: &[&str]) -> Result<Proc> {
    let mut p = ns.spawn(argv)?;
    p.wait_for_stdout(READY, Duration::from_secs(20))?;
    Ok(p)
}

/// One trial's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trial {
    pub requested_pps: Option<f64>,
    pub generator: GenReport,
    pub sink: SinkReport,
    /// 1 − received/sent.
    pub loss: f64,
    /// Drop and error counters of the path's veths that moved during the trial (`ethtool -S`
    /// and `ip -s link`), to tell where loss happened.
    pub path_drops: Vec<(String, u64)>,
}

impl Trial {
    /// Forwarded rate: packets the sink counted over the generator's sending time (the sink's
    /// own first-to-last window would flatter a DUT that buffers).
    pub fn rx_pps(&self) -> f64 {
        self.sink.received as f64 / self.generator.secs.max(1e-9)
    }
}

/// Runs the generator into the sink once.
pub fn trial(
    env: &Env,
    lab: &BenchLab,
    dut: Dut,
    traffic: &Traffic,
    rate: Option<f64>,
    secs: f64,
) -> Result<Trial> {
    let (gen_dev, sink_dev, dst_mac) = if dut == Dut::Wire {
        ("g1", "s1", topo::WIRE_SINK_MAC)
    } else {
        ("g0", "s0", topo::DUT_IN_MAC)
    };
    let src_mac = if dut == Dut::Wire {
        topo::WIRE_GEN_MAC
    } else {
        topo::GEN_MAC
    };
    let bin = env.bench_bin.to_string_lossy().into_owned();
    let load = env.load_core.to_string();
    let flows = traffic.flows.to_string();
    let sink_secs = format!("{:.2}", secs + 10.0);
    let sink_argv = [
        bin.as_str(),
        "sink",
        "--dev",
        sink_dev,
        "--flows",
        &flows,
        "--duration",
        &sink_secs,
        "--idle-ms",
        SINK_IDLE_MS,
        "--core",
        &load,
    ];
    let mut sink = spawn_ready(&lab.sink, &sink_argv).context("starting the sink")?;
    if env.threaded_napi {
        // The sink's XDP program (and so its device's NAPI) is new with every sink.
        lab.pin_napi(&lab.sink, sink_dev, env.load_core, true)?;
    }
    let path: Vec<(&Netns, &str)> = if dut == Dut::Wire {
        vec![(&lab.generator, "g1"), (&lab.sink, "s1")]
    } else {
        vec![
            (&lab.generator, "g0"),
            (&lab.dut, "d0"),
            (&lab.dut, "d1"),
            (&lab.sink, "s0"),
        ]
    };
    let before = drop_counters(&path);

    let count = (rate.unwrap_or(env.max_pps).min(env.max_pps) * secs).ceil() as u64;
    let (count_s, secs_s) = (count.max(1).to_string(), format!("{secs:.3}"));
    let (size, smac, dmac) = (
        traffic.size.to_string(),
        src_mac.to_string(),
        dst_mac.to_string(),
    );
    let proto = match traffic.proto {
        Proto::Udp => "udp",
        Proto::TcpSyn => "tcp-syn",
        Proto::TcpAck => "tcp-ack",
    };
    let sip = topo::GEN_IP.to_string();
    let dip = topo::SINK_IP.to_string();
    let mut gen_argv = vec![
        bin.as_str(),
        "gen",
        "--dev",
        gen_dev,
        "--src-mac",
        &smac,
        "--dst-mac",
        &dmac,
        "--src-ip",
        &sip,
        "--dst-ip",
        &dip,
        "--proto",
        proto,
        "--flows",
        &flows,
        "--size",
        &size,
        "--count",
        &count_s,
        "--duration",
        &secs_s,
        "--core",
        &load,
    ];
    // Rate-limited trials stay on xsk: each live-frames call costs 15–50 ms of kernel setup
    // on this kernel, so the xdp engine can only pace in coarse bursts.
    if rate.is_none()
        && env.engine.supports(
            traffic.proto,
            false,
            traffic
                .gen_args
                .iter()
                .any(|(k, _)| k == "vxlan" || k == "vlan"),
        )
    {
        gen_argv.extend(["--engine", env.engine.name()]);
    }
    let rate_s = rate.map(|r| format!("{r:.0}"));
    if let Some(r) = &rate_s {
        gen_argv.extend(["--rate", r.as_str()]);
    }
    let extra: Vec<String> = traffic
        .gen_args
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect();
    for pair in extra.chunks(2) {
        match gen_argv.iter().position(|a| *a == pair[0]) {
            Some(i) => gen_argv[i + 1] = pair[1].as_str(),
            None => gen_argv.extend([pair[0].as_str(), pair[1].as_str()]),
        }
    }
    let gen_proc = lab.generator.spawn(&gen_argv)?;
    let label = gen_proc.label().to_string();
    let out = gen_proc.finish(Duration::from_secs_f64(secs + 20.0))?;
    let generator: GenReport =
        parse_report(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
            format!(
                "generator `{label}`: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    // The sink stops by itself after SINK_IDLE_MS without a packet; if nothing arrived, stop it.
    if sink.wait_timeout(Duration::from_secs(3))?.is_none() {
        sink.signal(libc::SIGINT);
        sink.wait_timeout(Duration::from_secs(3))?;
    }
    let s: SinkReport =
        parse_report(&sink.stdout()).with_context(|| format!("sink: {}", sink.output_tail()))?;
    let after = drop_counters(&path);
    let path_drops = after
        .iter()
        .filter_map(|(k, v)| {
            let b = before.iter().find(|p| &p.0 == k).map_or(0, |p| p.1);
            (*v > b).then(|| (k.clone(), v - b))
        })
        .collect();
    let loss = if generator.sent == 0 {
        1.0
    } else {
        1.0 - (s.received as f64 / generator.sent as f64)
    };
    Ok(Trial {
        requested_pps: rate,
        generator,
        sink: s,
        loss,
        path_drops,
    })
}

/// Every drop/error counter of the given devices, as `dev:name`: `ethtool -S` and the
/// link's rx/tx_dropped, read with one process per namespace (this runs twice per trial).
pub(crate) fn drop_counters(devs: &[(&Netns, &str)]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < devs.len() {
        let ns = devs[i].0;
        let mut script = String::new();
        while i < devs.len() && devs[i].0.name() == ns.name() {
            let d = devs[i].1;
            script.push_str(&format!(
                "echo '@ {d}'; ethtool -S {d} 2>/dev/null; \
                 echo \"rx_dropped: $(cat /sys/class/net/{d}/statistics/rx_dropped)\"; \
                 echo \"tx_dropped: $(cat /sys/class/net/{d}/statistics/tx_dropped)\"; "
            ));
            i += 1;
        }
        let Ok(o) = ns.exec(&["sh", "-c", &script]) else {
            continue;
        };
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut dev = "";
        for l in text.lines() {
            if let Some(d) = l.strip_prefix("@ ") {
                dev = d;
            } else if let Some((k, v)) = l.trim().split_once(':')
                && (k.contains("drop") || k.contains("err"))
                && let Ok(v) = v.trim().parse::<u64>()
            {
                out.push((format!("{dev}:{}", k.trim()), v));
            }
        }
    }
    out
}

pub(crate) fn parse_report<T: serde::de::DeserializeOwned>(stdout: &str) -> Result<T> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT_PREFIX))
        .context("no report line")?;
    Ok(serde_json::from_str(line)?)
}

/// Runs one trial: `rate` packets per second (`None`: as fast as the generator can) for
/// `secs` seconds.
pub type TrialFn<'a> = dyn FnMut(Option<f64>, f64) -> Result<Trial> + 'a;

/// The zero-loss threshold (RFC 2544 / TRex NDR style): below 0.01 % loss passes.
pub const NDR_LOSS: f64 = 1e-4;

/// RFC 2544-style zero-loss search: the highest offered rate with loss below `threshold`,
/// `env.timing.search_trials` trials between 0 and `hi` (what the max-rate trial offered).
/// The first probe is just under `fwd`, the rate the DUT forwarded at max: under overload
/// that is usually close to the answer, so even the two steps of `--quick` land near it;
/// then bisection. Bounds move by what the generator actually offered, which can fall short
/// of the rate asked. Returns (rate, every trial).
pub fn zero_loss(
    env: &Env,
    run: &mut TrialFn,
    hi: f64,
    fwd: f64,
    threshold: f64,
    progress: &dyn Fn(&str),
) -> Result<(f64, Vec<Trial>)> {
    let (mut lo, mut hi) = (0.0f64, hi.max(fwd));
    let mut best = 0.0;
    let mut all = Vec::new();
    let mut rate = fwd * 0.95;
    for i in 0..env.timing.search_trials {
        crate::runner::check_interrupted()?;
        let t = run(Some(rate), env.timing.search_secs)?;
        let offered = t.generator.offered_pps.min(rate);
        let pass = t.generator.sent > 0 && t.loss < threshold;
        progress(&format!(
            "zero-loss trial {}/{}: {:.3} Mpps offered, loss {:.4} % → {}",
            i + 1,
            env.timing.search_trials,
            offered / 1e6,
            t.loss * 100.0,
            if pass { "pass" } else { "fail" }
        ));
        all.push(t);
        if pass {
            best = f64::max(best, offered);
            lo = lo.max(offered);
        } else {
            hi = hi.min(offered);
        }
        if hi <= lo {
            break;
        }
        rate = (lo + hi) / 2.0;
    }
    Ok((best, all))
}

/// One device under test in a scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VariantResult {
    pub name: String,
    pub description: String,
    /// As-fast-as-possible trial.
    pub max: Trial,
    pub max_rx_pps: f64,
    pub zero_loss_pps: f64,
    pub search: Vec<Trial>,
    /// Trial at half the zero-loss rate (or a tenth of the maximum when nothing passed).
    pub latency_trial: Option<Trial>,
    pub latency: Latency,
    /// afgate's final-stats or a helper's report.
    pub dut_stats: Option<serde_json::Value>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    pub traffic: Option<Traffic>,
    pub variants: Vec<VariantResult>,
    /// Named ratios (`afgate-busy/kernel`, ...), of max forwarded rates.
    pub ratios: Vec<(String, f64)>,
    /// The same ratios of zero-loss rates (where both sides have one).
    #[serde(default)]
    pub ndr_ratios: Vec<(String, f64)>,
    /// (x, series, y) points for a line plot; empty when the scenario has none.
    pub sweep: Vec<(f64, String, f64)>,
    pub sweep_axis: Option<String>,
    pub notes: Vec<String>,
    /// Forwarding-rate ladders ([`ladder`]), one per DUT phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ladders: Vec<LadderResult>,
    /// Same-run ratios of the ladders' MFR and PDR ([`ScenarioResult::ladder_ratio`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ladder_ratios: Vec<LadderRatio>,
}

impl ScenarioResult {
    pub fn variant(&self, name: &str) -> Option<&VariantResult> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// A variant of any of the ladders.
    pub fn ladder_variant(&self, name: &str) -> Option<&LadderVariant> {
        self.ladders
            .iter()
            .flat_map(|l| l.variants.iter())
            .find(|v| v.name == name)
    }

    /// Adds a ladder; its failures also fail the variant of the same name (or, with no such
    /// variant, are added as one), so the runner reports the scenario as broken.
    pub fn push_ladder(&mut self, l: LadderResult) {
        for lv in &l.variants {
            let Some(e) = lv.error.as_ref().or(l.error.as_ref()) else {
                continue;
            };
            let e = format!("ladder: {e}");
            match self.variants.iter_mut().find(|v| v.name == lv.name) {
                Some(v) => {
                    v.error.get_or_insert(e);
                }
                None => self.variants.push(VariantResult {
                    name: lv.name.clone(),
                    error: Some(e),
                    ..Default::default()
                }),
            }
        }
        self.ladders.push(l);
    }

    /// Adds `a/b` of the ladders' MFR and PDR, when both variants exist and did not fail.
    pub fn ladder_ratio(&mut self, a: &str, b: &str) {
        let (Some(x), Some(y)) = (self.ladder_variant(a), self.ladder_variant(b)) else {
            return;
        };
        if x.error.is_some() || y.error.is_some() {
            return;
        }
        let div = |p: f64, q: f64| (p > 0.0 && q > 0.0).then(|| p / q);
        let r = LadderRatio {
            name: format!("{a}/{b}"),
            mfr: div(x.mfr_pps, y.mfr_pps),
            pdr: div(x.pdr_pps, y.pdr_pps),
            pdr_bound: x.pdr_at_top || y.pdr_at_top,
            core: div(x.core_pps(), y.core_pps()),
        };
        self.ladder_ratios.push(r);
    }

    /// Adds `label` (default `a/b`) = a's rate over b's, for max and zero-loss rates, when
    /// both variants exist and b forwarded something.
    pub fn ratio(&mut self, a: &str, b: &str, label: Option<String>) {
        let (Some(x), Some(y)) = (self.variant(a), self.variant(b)) else {
            return;
        };
        if x.error.is_some() || y.error.is_some() {
            return;
        }
        let (mx, my, nx, ny) = (x.max_rx_pps, y.max_rx_pps, x.zero_loss_pps, y.zero_loss_pps);
        let label = label.unwrap_or_else(|| format!("{a}/{b}"));
        if my > 0.0 {
            self.ratios.push((label.clone(), mx / my));
        }
        if ny > 0.0 {
            self.ndr_ratios.push((label, nx / ny));
        }
    }
}

/// Max rate, zero-loss rate and latency of one variant, whatever it is: `run` does one trial
/// on a DUT that is already running. A max-rate trial (generator as fast as it can), the
/// zero-loss search between 0 and the offered rate, then a latency trial at half the
/// zero-loss rate (a tenth of the max when no rate passed). A failure is recorded in
/// `error`, not returned: one broken variant must not hide the others.
pub fn measure_with(
    env: &Env,
    name: &str,
    description: &str,
    run: &mut TrialFn,
    progress: &dyn Fn(&str),
) -> VariantResult {
    let t = &env.timing;
    let mut v = VariantResult {
        name: name.into(),
        description: description.into(),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("{name}: {m}"));
    let res = (|| -> Result<()> {
        crate::runner::check_interrupted()?;
        let max = run(None, t.max_secs)?;
        v.max_rx_pps = max.rx_pps();
        p(&format!(
            "max: offered {:.3} Mpps, forwarded {:.3} Mpps, loss {:.2} %",
            max.generator.offered_pps / 1e6,
            v.max_rx_pps / 1e6,
            max.loss * 100.0
        ));
        let hi = max.generator.offered_pps.max(v.max_rx_pps);
        v.max = max;
        if v.max.sink.received == 0 {
            bail!("nothing went through {name}");
        }
        let (zl, search) = zero_loss(env, run, hi, v.max_rx_pps, NDR_LOSS, &p)?;
        v.zero_loss_pps = zl;
        v.search = search;
        let lat_rate = if zl > 0.0 {
            zl * 0.5
        } else {
            v.max_rx_pps * 0.1
        };
        crate::runner::check_interrupted()?;
        let lt = run(Some(lat_rate.max(1000.0)), t.latency_secs)?;
        v.latency = lt.sink.latency.clone();
        p(&format!(
            "latency at {:.3} Mpps: p50 {} ns, p99 {} ns, max {} ns (loss {:.2} %)",
            lat_rate.max(1000.0) / 1e6,
            v.latency.p50,
            v.latency.p99,
            v.latency.max,
            lt.loss * 100.0
        ));
        v.latency_trial = Some(lt);
        Ok(())
    })();
    if let Err(e) = res {
        p(&format!("FAILED: {e:#}"));
        v.error = Some(format!("{e:#}"));
    }
    v
}

/// [`measure_with`] of the standard trial on a DUT started (and stopped) here.
pub fn measure(
    env: &Env,
    lab: &BenchLab,
    dut: Dut,
    traffic: &Traffic,
    progress: &dyn Fn(&str),
) -> Result<VariantResult> {
    let running = start(env, lab, dut, variant_budget(env))?;
    let mut v = measure_with(
        env,
        dut.name(),
        dut.describe(),
        &mut |rate, secs| trial(env, lab, dut, traffic, rate, secs),
        progress,
    );
    v.dut_stats = running.stop(lab)?;
    Ok(v)
}

/// Upper bound of one [`measure_with`] in seconds (trial time plus per-trial overheads), for
/// the `--duration` of a DUT that serves `n` variants: `n * variant_budget`.
pub fn variant_budget(env: &Env) -> f64 {
    let t = &env.timing;
    t.max_secs + f64::from(t.search_trials) * (t.search_secs + 15.0) + t.latency_secs + 40.0
}

/// Offered loads of a forwarding-rate ladder, as fractions of the generator's capacity.
pub const LADDER_FRACTIONS: [f64; 6] = [0.35, 0.5, 0.65, 0.8, 0.9, 1.0];

/// Partial-drop rate threshold: a load passes when its median loss is at most 0.5 %. The
/// 0.01 % of [`NDR_LOSS`] is a handful of packets per trial here, i.e. noise.
pub const PDR_LOSS: f64 = 5e-3;

/// A rated trial that offered less than this fraction of its rate is reported as short.
pub const LADDER_SHORT: f64 = 0.97;

/// One trial of a ladder, with its place in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LadderTrial {
    pub variant: String,
    /// Index into [`LadderResult::loads`].
    pub step: usize,
    pub repeat: u32,
    /// Offered rate asked for.
    pub requested_pps: f64,
    /// What the generator achieved (sent / its sending time).
    pub offered_pps: f64,
    /// [`Trial::rx_pps`]: received by the sink over the generator's sending time.
    pub forwarded_pps: f64,
    pub loss: f64,
    /// The DUT core's busy time over the trial ([`cpu_times`]) and its share of the trial's
    /// wall time.
    #[serde(default)]
    pub dut_busy_secs: f64,
    #[serde(default)]
    pub dut_busy: f64,
    /// DUT core time per packet the sink received (0 when none).
    #[serde(default)]
    pub dut_ns_per_packet: f64,
    pub trial: Trial,
}

/// One variant at one offered load: medians over the repeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LadderStep {
    pub requested_pps: f64,
    pub offered_pps: f64,
    pub forwarded_pps: f64,
    pub loss: f64,
    pub trials: u32,
    /// Medians of the trials' DUT core share and time per packet.
    #[serde(default)]
    pub dut_busy: f64,
    #[serde(default)]
    pub dut_ns_per_packet: f64,
}

/// One variant's ladder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LadderVariant {
    pub name: String,
    /// Per load, in the order of [`LadderResult::loads`] (a failed variant may have fewer).
    pub steps: Vec<LadderStep>,
    /// Maximum forwarding rate (RFC 2285): the highest median forwarded rate over the loads.
    pub mfr_pps: f64,
    /// Median offered rate of the load where the MFR was reached.
    pub mfr_offered_pps: f64,
    /// Partial-drop rate: the median offered rate of the highest load whose median loss is at
    /// most [`PDR_LOSS`]; 0 when none.
    pub pdr_pps: f64,
    /// The PDR is the top load: the DUT kept up with all the generator offered, so the PDR
    /// (and likely the MFR) is a lower bound set by the generator.
    pub pdr_at_top: bool,
    /// Index into `steps` of the load where the MFR was reached.
    #[serde(default)]
    pub mfr_step: Option<usize>,
    pub error: Option<String>,
}

impl LadderVariant {
    /// The step where the MFR was reached.
    pub fn at_mfr(&self) -> Option<&LadderStep> {
        self.steps.get(self.mfr_step?)
    }

    /// What one core would forward at the DUT core's cost per packet at the MFR's load,
    /// busy all the time (1 / cost): the DUT's capacity on its core even when the load core,
    /// not the DUT, sets the MFR. 0 without a cost.
    pub fn core_pps(&self) -> f64 {
        match self.at_mfr() {
            Some(st) if st.dut_ns_per_packet > 0.0 => 1e9 / st.dut_ns_per_packet,
            _ => 0.0,
        }
    }
}

/// A forwarding-rate ladder over one running DUT ([`ladder`], [`ladder_phase`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LadderResult {
    /// Which DUT ran (`afgate`, `kernel`).
    pub phase: String,
    /// The generator's capacity the loads derive from ([`generator_capacity`]), and the trial
    /// that measured it.
    pub capacity_pps: f64,
    pub calibration: Option<Trial>,
    /// Offered rates asked for, ascending.
    pub loads: Vec<f64>,
    pub repeats: u32,
    pub secs: f64,
    pub variants: Vec<LadderVariant>,
    /// Every trial, in the order run.
    pub trials: Vec<LadderTrial>,
    /// Seconds from the first trial to the last, overheads included.
    pub wall_secs: f64,
    /// The ladder stopped early (interrupted, calibration failed).
    pub error: Option<String>,
}

/// `a/b` of two ladder variants' MFR and PDR (`None` where either side has none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LadderRatio {
    pub name: String,
    pub mfr: Option<f64>,
    pub pdr: Option<f64>,
    /// One side's PDR is a lower bound ([`LadderVariant::pdr_at_top`]).
    pub pdr_bound: bool,
    /// Of [`LadderVariant::core_pps`].
    #[serde(default)]
    pub core: Option<f64>,
}

/// Busy and total time of CPU `core` since boot, in seconds, from `/proc/stat`: user, nice,
/// system, irq and softirq are busy, idle and iowait are not; steal (time the hypervisor
/// gave to others) is neither.
pub fn cpu_times(core: usize) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let [user, nice, system, idle, iowait, irq, softirq, ..] = v[..] else {
        return None;
    };
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant of the C library; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let busy = user + nice + system + irq + softirq;
    Some((busy as f64 / hz, (busy + idle + iowait) as f64 / hz))
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The generator's capacity for `run`'s traffic: one trial asking for `env.max_pps`. Rated on
/// purpose: rated trials always use the `xsk` engine, while an unrated one may use the much
/// faster in-kernel engine, whose rate the ladder's rated steps could never offer.
pub fn generator_capacity(env: &Env, run: &mut TrialFn) -> Result<Trial> {
    crate::runner::check_interrupted()?;
    let t = run(Some(env.max_pps), env.timing.ladder_secs)?;
    if t.generator.sent == 0 {
        bail!("the generator sent nothing");
    }
    Ok(t)
}

/// A forwarding-rate ladder (RFC 2285 maximum forwarding rate, RFC 2544-style per-load
/// comparison) of variants served by one running DUT. For each load in `loads` (packets per
/// second, ascending) and each of `repeats`, every variant runs one rated trial of
/// `env.timing.ladder_secs`, the variants interleaved — one after the other at the same
/// load, the order rotated per repeat and load — so a slow drift of the machine hits all of
/// them alike. Per variant and load the medians over the repeats count: MFR = the highest
/// median forwarded rate, PDR = the offered rate of the highest load with median loss ≤
/// [`PDR_LOSS`]. A failing trial stops its variant (recorded in its `error`), not the
/// others; an interruption stops the ladder (`error`).
pub fn ladder(
    env: &Env,
    variants: &mut [(&str, &mut TrialFn)],
    loads: &[f64],
    repeats: u32,
    progress: &dyn Fn(&str),
) -> LadderResult {
    let secs = env.timing.ladder_secs;
    let repeats = repeats.max(1);
    let n = variants.len();
    let mut res = LadderResult {
        loads: loads.to_vec(),
        repeats,
        secs,
        variants: variants
            .iter()
            .map(|(name, _)| LadderVariant {
                name: (*name).to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    'ladder: for (step, &load) in loads.iter().enumerate() {
        for rep in 0..repeats {
            for k in 0..n {
                let i = (k + rep as usize + step) % n;
                if res.variants[i].error.is_some() {
                    continue;
                }
                if let Err(e) = crate::runner::check_interrupted() {
                    res.error = Some(format!("{e:#}"));
                    break 'ladder;
                }
                let name = variants[i].0;
                let before = cpu_times(env.dut_core);
                let outcome = (variants[i].1)(Some(load), secs);
                let (busy_s, busy) = match (before, cpu_times(env.dut_core)) {
                    (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0, (b1 - b0) / (t1 - t0)),
                    _ => (0.0, 0.0),
                };
                match outcome {
                    Ok(t) => {
                        let ns = if t.sink.received > 0 {
                            busy_s * 1e9 / t.sink.received as f64
                        } else {
                            0.0
                        };
                        let lt = LadderTrial {
                            variant: name.to_string(),
                            step,
                            repeat: rep,
                            requested_pps: load,
                            offered_pps: t.generator.offered_pps,
                            forwarded_pps: t.rx_pps(),
                            loss: t.loss,
                            dut_busy_secs: busy_s,
                            dut_busy: busy,
                            dut_ns_per_packet: ns,
                            trial: t,
                        };
                        progress(&format!(
                            "ladder {}/{} repeat {}/{} {name}: asked {:.3}, offered {:.3}, forwarded {:.3} Mpps, loss {:.2} %, DUT core {:.0} % busy, {:.0} ns/packet{}",
                            step + 1,
                            loads.len(),
                            rep + 1,
                            repeats,
                            load / 1e6,
                            lt.offered_pps / 1e6,
                            lt.forwarded_pps / 1e6,
                            lt.loss * 100.0,
                            lt.dut_busy * 100.0,
                            lt.dut_ns_per_packet,
                            if lt.offered_pps < load * LADDER_SHORT {
                                " (generator short)"
                            } else {
                                ""
                            }
                        ));
                        res.trials.push(lt);
                    }
                    Err(e) => {
                        progress(&format!("ladder {name}: FAILED: {e:#}"));
                        res.variants[i].error = Some(format!("{e:#}"));
                    }
                }
            }
        }
    }
    res.wall_secs = t0.elapsed().as_secs_f64();
    for v in &mut res.variants {
        for (step, &load) in loads.iter().enumerate() {
            let ts: Vec<&LadderTrial> = res
                .trials
                .iter()
                .filter(|t| t.variant == v.name && t.step == step)
                .collect();
            if ts.is_empty() {
                break;
            }
            let st = LadderStep {
                requested_pps: load,
                offered_pps: median(ts.iter().map(|t| t.offered_pps).collect()),
                forwarded_pps: median(ts.iter().map(|t| t.forwarded_pps).collect()),
                loss: median(ts.iter().map(|t| t.loss).collect()),
                trials: ts.len() as u32,
                dut_busy: median(ts.iter().map(|t| t.dut_busy).collect()),
                dut_ns_per_packet: median(ts.iter().map(|t| t.dut_ns_per_packet).collect()),
            };
            if st.forwarded_pps > v.mfr_pps {
                v.mfr_pps = st.forwarded_pps;
                v.mfr_offered_pps = st.offered_pps;
                v.mfr_step = Some(step);
            }
            if st.loss <= PDR_LOSS {
                v.pdr_pps = st.offered_pps;
                v.pdr_at_top = step + 1 == loads.len();
            }
            v.steps.push(st);
        }
        if v.error.is_none() && res.error.is_none() && v.mfr_pps <= 0.0 {
            v.error = Some(format!("nothing went through {} in the ladder", v.name));
        }
    }
    res
}

/// A whole ladder over a DUT that is already running (`dut` as for [`trial`]): the
/// generator's capacity G measured with the first variant's traffic, loads
/// [`LADDER_FRACTIONS`] × G, then [`ladder`] with `env.timing.ladder_repeats`.
pub fn ladder_phase(
    env: &Env,
    lab: &BenchLab,
    dut: Dut,
    phase: &str,
    variants: &[(&str, &Traffic)],
    progress: &dyn Fn(&str),
) -> LadderResult {
    let p = |m: &str| progress(&format!("{phase}: {m}"));
    let mut fns: Vec<Box<TrialFn>> = variants
        .iter()
        .map(|&(_, traffic)| {
            Box::new(move |rate: Option<f64>, secs: f64| trial(env, lab, dut, traffic, rate, secs))
                as Box<TrialFn>
        })
        .collect();
    let cal = match fns.first_mut() {
        Some(f) => generator_capacity(env, f.as_mut()),
        None => Err(anyhow::anyhow!("no variants")),
    };
    let cal = match cal {
        Ok(t) => t,
        Err(e) => {
            p(&format!("ladder: generator capacity FAILED: {e:#}"));
            return LadderResult {
                phase: phase.into(),
                variants: variants
                    .iter()
                    .map(|(n, _)| LadderVariant {
                        name: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
                error: Some(format!("generator capacity: {e:#}")),
                ..Default::default()
            };
        }
    };
    let g = cal.generator.offered_pps;
    p(&format!(
        "ladder: generator capacity {:.3} Mpps ({}), loads {:?} × G",
        g / 1e6,
        variants[0].0,
        LADDER_FRACTIONS
    ));
    let loads: Vec<f64> = LADDER_FRACTIONS.iter().map(|f| f * g).collect();
    let mut vs: Vec<(&str, &mut TrialFn)> = variants
        .iter()
        .zip(fns.iter_mut())
        .map(|(&(name, _), f)| (name, f.as_mut()))
        .collect();
    let mut res = ladder(env, &mut vs, &loads, env.timing.ladder_repeats, &p);
    res.phase = phase.into();
    res.capacity_pps = g;
    res.calibration = Some(cal);
    res
}

/// Upper bound of one [`ladder_phase`] of `n` variants in seconds, for the `--duration` of
/// the DUT serving it.
pub fn ladder_budget(env: &Env, n: usize) -> f64 {
    let t = &env.timing;
    let trials = LADDER_FRACTIONS.len() * n * t.ladder_repeats.max(1) as usize + 1;
    trials as f64 * (t.ladder_secs + 15.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn env() -> Env {
        Env {
            bench_bin: PathBuf::new(),
            xskfwd_bin: PathBuf::new(),
            afgate_bin: PathBuf::new(),
            timing: Timing::full(),
            load_core: 1,
            dut_core: 0,
            max_pps: 30e6,
            engine: Engine::Xsk,
            threaded_napi: false,
        }
    }

    /// A trial that offered `offered` for one second and delivered `fwd` of it.
    fn fake(offered: f64, fwd: f64) -> Trial {
        let sent = offered as u64;
        let received = fwd as u64;
        Trial {
            generator: GenReport {
                sent,
                secs: 1.0,
                offered_pps: offered,
                ..Default::default()
            },
            sink: SinkReport {
                received,
                ..Default::default()
            },
            loss: 1.0 - received as f64 / sent as f64,
            ..Default::default()
        }
    }

    #[test]
    fn ladder_interleaves_and_takes_medians() {
        let calls = RefCell::new(Vec::new());
        let n_a = RefCell::new(0u32);
        // a: lossless to 200 kpps, then collapses under overload; one outlier trial at
        // 100 kpps must not move the median.
        let mut a = |rate: Option<f64>, _secs: f64| -> Result<Trial> {
            let r = rate.unwrap();
            calls.borrow_mut().push(("a", r));
            *n_a.borrow_mut() += 1;
            Ok(match r as u64 {
                100_000 if *n_a.borrow() == 2 => fake(r, 10_000.0),
                100_000 | 200_000 => fake(r, r),
                _ => fake(r * 0.9, 150_000.0),
            })
        };
        // b: the generator falls short at the top and b keeps up with all of it.
        let mut b = |rate: Option<f64>, _secs: f64| -> Result<Trial> {
            let r = rate.unwrap();
            calls.borrow_mut().push(("b", r));
            let off = r.min(250_000.0);
            Ok(fake(off, off))
        };
        // c: fails at the second load; the others go on.
        let mut c = |rate: Option<f64>, _secs: f64| -> Result<Trial> {
            let r = rate.unwrap();
            calls.borrow_mut().push(("c", r));
            if r > 150_000.0 {
                bail!("boom");
            }
            Ok(fake(r, r))
        };
        let loads = [100_000.0, 200_000.0, 300_000.0];
        let mut vs: Vec<(&str, &mut TrialFn)> = vec![("a", &mut a), ("b", &mut b), ("c", &mut c)];
        let l = ladder(&env(), &mut vs, &loads, 3, &|_| {});
        drop(vs);
        let calls = calls.into_inner();

        // Load by load, every live variant once per repeat, the order rotating.
        let rates: Vec<f64> = calls.iter().map(|c| c.1).collect();
        assert!(rates.windows(2).all(|w| w[0] <= w[1]), "{calls:?}");
        assert_eq!(
            calls[..3].iter().map(|c| c.0).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            calls[3..6].iter().map(|c| c.0).collect::<Vec<_>>(),
            ["b", "c", "a"]
        );
        assert_eq!(calls.iter().filter(|c| c.0 == "c").count(), 4);
        assert_eq!(l.trials.len(), 9 + 9 + 3);
        assert!(l.error.is_none());

        let a = &l.variants[0];
        assert_eq!(a.steps.len(), 3);
        assert_eq!(
            a.steps[0].forwarded_pps, 100_000.0,
            "median ignores the outlier"
        );
        assert_eq!(a.mfr_pps, 200_000.0);
        assert_eq!(a.mfr_offered_pps, 200_000.0);
        assert_eq!(a.pdr_pps, 200_000.0);
        assert!(!a.pdr_at_top);
        assert!(a.error.is_none());

        let b = &l.variants[1];
        assert_eq!(b.mfr_pps, 250_000.0);
        assert_eq!(b.pdr_pps, 250_000.0);
        assert!(b.pdr_at_top);

        let c = &l.variants[2];
        assert_eq!(c.error.as_deref(), Some("boom"));
        assert_eq!(c.steps.len(), 1);

        let mut sc = ScenarioResult::default();
        sc.push_ladder(l);
        assert_eq!(
            sc.variant("c").and_then(|v| v.error.as_deref()),
            Some("ladder: boom")
        );
        sc.ladder_ratio("a", "b");
        sc.ladder_ratio("c", "b");
        assert_eq!(sc.ladder_ratios.len(), 1);
        let r = &sc.ladder_ratios[0];
        assert_eq!(r.mfr, Some(0.8));
        assert_eq!(r.pdr, Some(0.8));
        assert!(r.pdr_bound);
    }

    #[test]
    fn workers_yaml_per_afgate_variant() {
        assert_eq!(
            workers_yaml(&[0], Dut::AfgateRt),
            "workers:\n  cores: [0]\n  poll: wakeup\n  rt_priority: 10\n"
        );
        assert_eq!(
            workers_yaml(&[0, 1], Dut::AfgateAdaptive),
            "workers:\n  cores: [0, 1]\n  poll: adaptive\n"
        );
        assert_eq!(
            workers_yaml(&[1], Dut::AfgateBusy),
            "workers:\n  cores: [1]\n  poll: busy\n"
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
