//! "conntrack": established-flow rate against the size of the connection table. The table
//! is filled with N UDP flows from pod-CIDR clients (not masqueraded) to the ClusterIP (1k, 10k, 100k, 1M; each flow one packet
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
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub const NAME: &str = "conntrack";

/// Rate of the filling traffic: well under every DUT's new-flow rate seen here, so that
/// most flows get their entry in the first pass.
const FILL_PPS: f64 = 100_000.0;
/// Clients in the pod CIDR: kube-proxy does not masquerade them (`! -s 10.244.0.0/16`), and
/// neither does afgate here. Masqueraded, the table could not grow past the SNAT ports of
/// one address: ~64k per backend and port (193 536 entries for 3 backends in a first run).
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
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
/// Returns the generator's report (what it really sent, and how fast).
fn fill(env: &Env, lab: &BenchLab, n: u32) -> Result<crate::generator::GenReport> {
    let bin = env.bench_bin.to_string_lossy().into_owned();
    let secs = f64::from(n) / FILL_PPS * 1.5 + 5.0;
    let (n_s, rate_s, secs_s, core) = (
        n.to_string(),
        format!("{FILL_PPS:.0}"),
        format!("{secs:.1}"),
        env.load_core.to_string(),
    );
    let (smac, dmac, sip, dip) = (
        topo::GEN_MAC.to_string(),
        topo::DUT_IN_MAC.to_string(),
        CLIENT.to_string(),
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
    super::parse_report(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "filling generator: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
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
        let g = fill(env, lab, n)?;
        // Entries are created as the last packets pass; give the DUT a moment.
        std::thread::sleep(Duration::from_millis(300));
        have = count()?;
        progress(&format!(
            "fill pass {pass}: generator sent {} packets in {:.1} s ({:.0} pps), {have} entries for {n} flows ({:.1} s)",
            g.sent,
            g.secs,
            g.offered_pps,
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
    let mut t = to(Proto::Udp, 1024.min(n), super::clusterip::VIP, 80);
    t.gen_args.push(("src-ip".into(), CLIENT.to_string()));
    let filled = if entries as f64 >= 0.9 * f64::from(n) {
        String::new()
    } else {
        format!(" — NOT FILLED: {entries} of {n}")
    };
    let mut v = measure_with(
        env,
        &format!("{prefix}/{n}"),
        &format!("{desc}; {entries} entries in the table{filled}"),
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
        description: "established-flow rate (1024 tracked UDP flows from pod-CIDR clients 10.244.0.0/16 through the ClusterIP 10.96.10.1:80: DNAT + conntrack, no masquerade) with N entries in the connection table, 64-byte UDP, one forwarding core".into(),
        sweep_axis: Some("conntrack entries".into()),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let udp: Vec<_> = web().into_iter().filter(|s| s.udp).collect();
    let budget = sizes.len() as f64 * (super::variant_budget(env) + 40.0);

    let y = afgate_yaml(
        &[env.dut_core],
        &udp,
        &format!(
            "routes:\n  - {{ dst: 10.244.0.0/16, via: {}, dev: d0 }}\n\
             conntrack:\n  capacity: 2097152\n  timeouts: {{ udp: 600, udp_stream: 600 }}\n",
            topo::GEN_IP
        ),
    )
    .replacen(
        "masquerade:\n  - { dst: 10.96.0.0/15, to: egress }\n",
        "",
        1,
    )
    .replacen(
        "neighbors:\n",
        &format!(
            "neighbors:\n  - {{ ip: {}, mac: \"{}\", dev: d0 }}\n",
            topo::GEN_IP,
            topo::GEN_MAC
        ),
        1,
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
            "afgate, 1 worker (poll wakeup, rt_priority 10), conntrack capacity 2097152",
            n,
            &afgate_count,
            &p,
        )?;
        r.notes
            .push(format!("afgate, {n} flows filled: {e} conntrack entries"));
        if v.error.is_none() {
            r.sweep.push((f64::from(n), "afgate".into(), v.max_rx_pps));
            r.sweep
                .push((f64::from(n), "afgate zero-loss".into(), v.zero_loss_pps));
        }
        r.variants.push(v);
    }
    let stats = running.stop(lab)?;
    if let Some(v) = r.variants.last_mut() {
        v.dut_stats = stats;
    }

    kernel_clear(lab);
    kernel_backends(lab)?;
    // The pod CIDR lives behind the generator, as on a node; no strict reverse-path check.
    lab.dut.ip(&[
        "route",
        "replace",
        "10.244.0.0/16",
        "via",
        &topo::GEN_IP.to_string(),
        "dev",
        "d0",
    ])?;
    lab.dut.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    lab.dut.sysctl("net.ipv4.conf.d0.rp_filter", "0")?;
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
            r.sweep
                .push((f64::from(n), "iptables".into(), v.max_rx_pps));
            r.sweep
                .push((f64::from(n), "iptables zero-loss".into(), v.zero_loss_pps));
        }
        r.variants.push(v);
    }
    kernel_clear(lab);
    running.stop(lab)?;
    let _ = lab.dut.ip(&["route", "del", "10.244.0.0/16"]);
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
    r.notes.push("Filling: one packet per flow at 100 kpps, no sink; the measured 1024 flows are the first of the filled ones, i.e. table hits. Clients are in the pod CIDR (10.244.0.2 onwards, 60000 source ports per address), so neither side masquerades: with masquerade to one address the table stops at the SNAT port space (~64k per backend:port; a first run with masqueraded clients stalled at 193 536 kernel / ~180 000 afgate entries).".into());
    Ok(r)
}
