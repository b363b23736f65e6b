//! "conntrack": established-flow rate against the size of the connection table. The table
//! is filled with N UDP flows to the ClusterIP (1k, 10k, 100k, 1M; each flow one packet
//! through the DUT, so one entry each, until the table holds ≥ 98 % of N or three passes
//! were made), then 1024 of those flows — already tracked — are measured (max rate,
//! zero-loss search, latency). afgate (its conntrack, capacity 2M) against the kernel's
//! nf_conntrack behind kube-proxy's iptables rules with the same number of entries.
//!
//! Entries must outlive the run: UDP timeouts are raised to 600 s on both sides (the kernel's
//! unreplied-UDP default is 30 s). The kernel's `nf_conntrack_max` is global (settable only
//! from the initial namespace): it is raised for the 1M point and restored afterwards; its
//! hash table size (`nf_conntrack_buckets`) is left as the host has it and reported.

use super::clusterip::{
    afgate_ctl, afgate_yaml, api_socket, iptables_rules, kernel_backends, kernel_clear,
    load_iptables, start_afgate, to, web,
};
use super::{Dut, Env, ScenarioResult, VariantResult, measure_with, trial};
use crate::packet::Proto;
use crate::topo::{self, BenchLab};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

pub const NAME: &str = "conntrack";

/// Rate of the filling traffic: well under every DUT's new-flow rate seen here, so that
/// most flows get their entry in the first pass.
const FILL_PPS: f64 = 100_000.0;
const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Restores the host's nf_conntrack_max when dropped.
struct CtMax(Option<String>);

impl CtMax {
    fn raise(min: u64) -> Result<CtMax> {
        let cur = std::fs::read_to_string(CT_MAX).context(CT_MAX)?;
        if cur.trim().parse::<u64>().unwrap_or(0) >= min {
            return Ok(CtMax(None));
        }
        std::fs::write(CT_MAX, min.to_string()).context("raising nf_conntrack_max")?;
        Ok(CtMax(Some(cur.trim().to_string())))
    }
}

impl Drop for CtMax {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = std::fs::write(CT_MAX, v);
        }
    }
}

/// Sends one packet of each of `n` flows to the VIP through the DUT, no sink listening.
fn fill(env: &Env, lab: &BenchLab, n: u32) -> Result<()> {
    let bin = env.bench_bin.to_string_lossy().into_owned();
    let secs = f64::from(n) / FILL_PPS + 5.0;
    let (n_s, rate_s, secs_s, core) = (
        n.to_string(),
        format!("{FILL_PPS:.0}"),
        format!("{secs:.1}"),
        env.load_core.to_string(),
    );
    let (smac, dmac, sip, dip) = (
        topo::GEN_MAC.to_string(),
        topo::DUT_IN_MAC.to_string(),
        topo::GEN_IP.to_string(),
        super::clusterip::VIP.to_string(),
    );
    let argv = [
        bin.as_str(),
        "gen",
        "--dev",
        "g0",
        "--src-mac",
        &smac,
        "--dst-mac",
        &dmac,
        "--src-ip",
        &sip,
        "--dst-ip",
        &dip,
        "--dport",
        "80",
        "--proto",
        "udp",
        "--flows",
        &n_s,
        "--count",
        &n_s,
        "--rate",
        &rate_s,
        "--duration",
        &secs_s,
        "--core",
        &core,
    ];
    let p = lab.generator.spawn(&argv)?;
    let out = p.finish(Duration::from_secs_f64(secs + 20.0))?;
    anyhow::ensure!(
        out.status.success(),
        "filling generator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Fills the table to ≥ 98 % of `n` (at most three passes); returns the entries counted.
fn fill_to(
    env: &Env,
    lab: &BenchLab,
    n: u32,
    count: &dyn Fn() -> Result<u64>,
    progress: &dyn Fn(&str),
) -> Result<u64> {
    let t0 = Instant::now();
    let mut have = count()?;
    for pass in 1..=3 {
        if have as f64 >= 0.98 * f64::from(n) {
            break;
        }
        fill(env, lab, n)?;
        // Entries are created as the last packets pass; give the DUT a moment.
        std::thread::sleep(Duration::from_millis(300));
        have = count()?;
        progress(&format!(
            "fill pass {pass}: {have} entries for {n} flows ({:.1} s)",
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(have)
}

/// One size: fill, then measure `(dut, name prefix)` as `prefix/n`.
fn point(
    env: &Env,
    lab: &BenchLab,
    (dut, prefix): (Dut, &str),
    desc: &str,
    n: u32,
    count: &dyn Fn() -> Result<u64>,
    progress: &dyn Fn(&str),
) -> Result<(VariantResult, u64)> {
    let entries = fill_to(env, lab, n, count, progress)?;
    // The measured flows are the first 1024 of the filled ones (same tuples): hits only.
    let t = to(Proto::Udp, 1024.min(n), super::clusterip::VIP, 80);
    let mut v = measure_with(
        env,
        &format!("{prefix}/{n}"),
        &format!("{desc}; {entries} entries in the table"),
        &mut |rate, secs| trial(env, lab, dut, &t, rate, secs),
        progress,
    );
    let after = count()?;
    v.description
        .push_str(&format!(" ({after} after the measurement)"));
    Ok((v, entries))
}

pub fn run(
    env: &Env,
    lab: &BenchLab,
    quick: bool,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let sizes: &[u32] = if quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: "established-flow rate (1024 tracked UDP flows through the ClusterIP 10.96.10.1:80, DNAT + masquerade) with N entries in the connection table, 64-byte UDP, one forwarding core".into(),
        sweep_axis: Some("conntrack entries".into()),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let udp: Vec<_> = web().into_iter().filter(|s| s.udp).collect();
    let budget = sizes.len() as f64 * (super::variant_budget(env) + 40.0);

    let y = afgate_yaml(
        &[env.dut_core],
        &udp,
        "conntrack:\n  capacity: 2097152\n  timeouts: { udp: 600, udp_stream: 600 }\n",
    );
    let running = start_afgate(env, lab, "conntrack", &y, budget)?;
    let sock = api_socket(lab, "conntrack");
    let afgate_count = || -> Result<u64> {
        let out = afgate_ctl(env, &sock, &["conntrack", "count"])?;
        out.trim()
            .parse()
            .with_context(|| format!("afgate ctl conntrack count: {out:?}"))
    };
    for &n in sizes {
        let (v, e) = point(
            env,
            lab,
            (Dut::AfgateAdaptive, "afgate"),
            "afgate, 1 worker (adaptive poll), conntrack capacity 2097152",
            n,
            &afgate_count,
            &p,
        )?;
        r.notes
            .push(format!("afgate, {n} flows filled: {e} conntrack entries"));
        if v.error.is_none() {
            r.sweep.push((e as f64, "afgate".into(), v.max_rx_pps));
            r.sweep
                .push((e as f64, "afgate zero-loss".into(), v.zero_loss_pps));
        }
        r.variants.push(v);
    }
    let stats = running.stop(lab)?;
    if let Some(v) = r.variants.last_mut() {
        v.dut_stats = stats;
    }

    kernel_clear(lab);
    kernel_backends(lab)?;
    load_iptables(lab, &iptables_rules(&udp))?;
    let _max = CtMax::raise(u64::from(*sizes.last().unwrap_or(&0)) * 6 / 5 + 1024)?;
    for k in [
        "net.netfilter.nf_conntrack_udp_timeout",
        "net.netfilter.nf_conntrack_udp_timeout_stream",
    ] {
        lab.dut.sysctl(k, "600")?;
    }
    let buckets =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_buckets").unwrap_or_default();
    let running = super::start(env, lab, Dut::Kernel, budget)?;
    let kernel_count = || -> Result<u64> {
        let s = lab
            .dut
            .exec_ok(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
        Ok(s.trim().parse()?)
    };
    for &n in sizes {
        let (v, e) = point(
            env,
            lab,
            (Dut::Kernel, "iptables"),
            "kernel nf_conntrack + kube-proxy iptables rules (RPS to the DUT core)",
            n,
            &kernel_count,
            &p,
        )?;
        r.notes
            .push(format!("kernel, {n} flows filled: {e} conntrack entries"));
        if v.error.is_none() {
            r.sweep.push((e as f64, "iptables".into(), v.max_rx_pps));
            r.sweep
                .push((e as f64, "iptables zero-loss".into(), v.zero_loss_pps));
        }
        r.variants.push(v);
    }
    kernel_clear(lab);
    running.stop(lab)?;
    for k in [
        "net.netfilter.nf_conntrack_udp_timeout",
        "net.netfilter.nf_conntrack_udp_timeout_stream",
    ] {
        let _ = lab
            .dut
            .sysctl(k, if k.ends_with("stream") { "120" } else { "30" });
    }
    for &n in sizes {
        r.ratio(
            &format!("afgate/{n}"),
            &format!("iptables/{n}"),
            Some(format!("afgate/iptables ({n} entries)")),
        );
    }
    r.notes.push(format!(
        "Kernel: nf_conntrack_max raised for the run if below 1.2 × the largest size (global, restored afterwards); nf_conntrack_buckets = {} (the host's). UDP timeouts 600 s on both sides so the filled entries outlive the run.",
        buckets.trim()
    ));
    r.notes.push("Filling: one packet per flow at 100 kpps, no sink; the measured 1024 flows are the first of the filled ones, i.e. table hits.".into());
    Ok(r)
}
