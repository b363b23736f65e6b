//! "workers": afgate with 1 and with 2 workers on veths with 2 rx/tx queues, 64-byte UDP.
//!
//! A veth delivers a frame to the peer's rx queue with the index of the sender's tx queue,
//! so the traffic is spread by sending from two generator processes, one AF_XDP socket on
//! g0's tx queue 0 and one on queue 1 (`afgate-bench gen --queue`). With one worker, afgate
//! serves only queue 0, so that variant gets one generator (queue 0); with two, each worker
//! gets its own generator and queue. The same two generators pinned the same way also feed
//! the kernel (RPS off: each rx queue's softirq runs where its generator runs).
//!
//! The sink's AF_XDP socket serves one queue only, so here the forwarded packets are counted
//! from s0's `rx_packets` (all queues) and dropped by an iptables raw-table DROP in the sink namespace;
//! no latency is measured in this scenario.

use super::clusterip::{afgate_yaml, start_afgate_with};
use super::{Env, Running, ScenarioResult, Trial};
use crate::generator::GenReport;
use crate::topo::{self, BenchLab};
use afgate_tests::{End, Lab, VethSpec};
use anyhow::{Context, Result, bail};
use std::time::Duration;

pub const NAME: &str = "workers";

fn build() -> Result<BenchLab> {
    let lab = Lab::builder()
        .netns("gen")
        .netns("dut")
        .netns("sink")
        .veth(
            VethSpec::new(
                End::new("gen", "g0")
                    .mac(topo::GEN_MAC)
                    .addr("10.0.1.2/24")
                    .dataplane(),
                End::new("dut", "d0")
                    .mac(topo::DUT_IN_MAC)
                    .addr("10.0.1.1/24")
                    .dataplane(),
            )
            .queues(2),
        )
        .veth(
            VethSpec::new(
                End::new("dut", "d1")
                    .mac(topo::DUT_OUT_MAC)
                    .addr("10.0.2.1/24")
                    .dataplane(),
                End::new("sink", "s0")
                    .mac(topo::SINK_MAC)
                    .addr("10.0.2.2/24")
                    .dataplane(),
            )
            .queues(2),
        )
        .neigh("dut", "d1", topo::SINK_IP, topo::SINK_MAC)
        .build()
        .context("building the multi-queue lab")?;
    let sink = lab.ns("sink").clone();
    // No matchall classifier in this kernel: drop in the raw table, before conntrack.
    sink.exec_ok(&[
        "iptables",
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-i",
        "s0",
        "-j",
        "DROP",
    ])?;
    Ok(BenchLab {
        generator: lab.ns("gen").clone(),
        dut: lab.ns("dut").clone(),
        sink,
        lab,
    })
}

fn rx_packets(lab: &BenchLab) -> Result<u64> {
    let s = lab
        .sink
        .exec_ok(&["cat", "/sys/class/net/s0/statistics/rx_packets"])?;
    Ok(s.trim().parse()?)
}

/// Generators on the given (queue, core) pairs, as fast as they can, `flows` split between
/// them (disjoint source ports).
fn trial(
    env: &Env,
    lab: &BenchLab,
    gens: &[(u32, usize)],
    flows: u32,
    rate: Option<f64>,
    secs: f64,
) -> Result<Trial> {
    let bin = env.bench_bin.to_string_lossy().into_owned();
    let before = rx_packets(lab)?;
    let per = (flows / gens.len() as u32).max(1);
    let mut procs = Vec::new();
    for (i, &(q, core)) in gens.iter().enumerate() {
        let argv: Vec<String> = [
            "gen",
            "--dev",
            "g0",
            "--src-mac",
            &topo::GEN_MAC.to_string(),
            "--dst-mac",
            &topo::DUT_IN_MAC.to_string(),
            "--src-ip",
            &topo::GEN_IP.to_string(),
            "--dst-ip",
            &topo::SINK_IP.to_string(),
            "--flows",
            &per.to_string(),
            "--sport",
            &(1024 + i as u32 * per).to_string(),
            "--count",
            &((rate.unwrap_or(env.max_pps).min(env.max_pps) * secs / gens.len() as f64).ceil()
                as u64)
                .to_string(),
            "--duration",
            &format!("{secs:.3}"),
            "--core",
            &core.to_string(),
            "--queue",
            &q.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut full = vec![bin.as_str()];
        full.extend(argv.iter().map(String::as_str));
        // The rate is split evenly between the generators.
        let per_rate = rate.map(|r| format!("{:.0}", r / gens.len() as f64));
        if let Some(r) = &per_rate {
            full.extend(["--rate", r.as_str()]);
        }
        procs.push(lab.generator.spawn(&full)?);
    }
    let mut total = GenReport::default();
    for p in procs {
        let out = p.finish(Duration::from_secs_f64(secs + 20.0))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(super::REPORT_PREFIX))
            .with_context(|| format!("generator: {}", String::from_utf8_lossy(&out.stderr)))?;
        let g: GenReport = serde_json::from_str(line)?;
        total.sent += g.sent;
        total.secs = total.secs.max(g.secs);
        total.offered_pps += g.offered_pps;
        total.flows += g.flows;
        total.frame_len = g.frame_len;
    }
    std::thread::sleep(Duration::from_millis(300));
    let received = rx_packets(lab)?.saturating_sub(before);
    total.offered_pps = total.sent as f64 / total.secs.max(1e-9);
    let mut t = Trial {
        requested_pps: rate,
        generator: total,
        ..Default::default()
    };
    t.sink.received = received;
    t.loss = if t.generator.sent == 0 {
        1.0
    } else {
        1.0 - received as f64 / t.generator.sent as f64
    };
    Ok(t)
}

pub fn run(env: &Env, flows: u32, progress: &dyn Fn(&str)) -> Result<ScenarioResult> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < 2 {
        bail!("needs 2 cores");
    }
    let lab = build()?;
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: format!(
            "afgate 1 vs 2 workers, veths with 2 queues, 64-byte UDP, {flows} flows; forwarded = s0 rx_packets"
        ),
        ..Default::default()
    };
    let (c0, c1) = (env.dut_core, env.load_core);
    let cases = [
        (
            "afgate-1w",
            "afgate, 1 worker (core 0) on queue 0; 1 generator on tx queue 0 (core 1)",
            vec![c0],
            vec![(0, c1)],
        ),
        (
            "afgate-2w",
            "afgate, 2 workers (cores 0, 1) on queues 0, 1; 2 generators on tx queues 0 (core 1) and 1 (core 0)",
            vec![c0, c1],
            vec![(0, c1), (1, c0)],
        ),
        (
            "kernel-2q",
            "kernel ip_forward, both queues; the same 2 generators",
            vec![],
            vec![(0, c1), (1, c0)],
        ),
    ];
    for (name, desc, workers, gens) in cases {
        let budget = super::variant_budget(env);
        let running: Option<Running> = if workers.is_empty() {
            lab.ip_forward(true)?;
            None
        } else {
            let y = afgate_yaml(&workers, &[], "");
            Some(start_afgate_with(env, &lab, name, &y, budget, false)?)
        };
        let mut v = super::measure_with(
            env,
            name,
            desc,
            &mut |rate, secs| trial(env, &lab, &gens, flows, rate, secs),
            &p,
        );
        if let Some(run) = running {
            v.dut_stats = run.stop(&lab)?;
        } else {
            lab.ip_forward(false)?;
        }
        r.variants.push(v);
    }
    r.ratio("afgate-2w", "afgate-1w", None);
    r.ratio("afgate-2w", "kernel-2q", None);
    r.notes.push(
        "2 workers on a 2-core machine share both cores with the generators and all veth softirq work: this shows whether the second queue is served, not how afgate scales on dedicated cores. Zero-loss rates from s0's rx_packets against the generators' sent count (the rate split evenly between them); no latency (the sink is a counter here).".into(),
    );
    Ok(r)
}
