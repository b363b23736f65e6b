//! "newconn": new connections per second — TCP SYNs, every one a fresh five-tuple and so a
//! new conntrack entry and a new backend choice — through a ClusterIP service while N
//! services are configured, afgate against the kernel with kube-proxy's iptables rules. The
//! target service is the LAST one in KUBE-SERVICES: iptables walks that chain rule by rule
//! for every new connection (established ones skip the nat table), which is what kube-proxy's
//! rule count costs. New-flow latency: one-way latency of SYNs at a fixed 20 kpps.

use super::clusterip::{
    self, Svc, afgate_yaml, flush_conntrack, iptables_rules, kernel_backends, kernel_clear,
    load_iptables, start_afgate,
};
use super::{Dut, Env, ScenarioResult, Traffic, VariantResult, trial};
use crate::packet::Proto;
use crate::topo::BenchLab;
use anyhow::{Result, bail};
use std::net::Ipv4Addr;

pub const NAME: &str = "newconn";

/// SYNs per trial at most: below the kernel's nf_conntrack_max (262144 here), so neither side
/// runs into a full table.
pub const SYNS: u64 = 200_000;
/// SYN rate of the new-flow latency trial.
pub const LAT_RATE: f64 = 20_000.0;
/// iptables loads taking longer than this are not attempted at a larger size.
pub const LOAD_CAP_SECS: f64 = 60.0;

/// `n` services: `n - 1` one-backend fillers, then the target (3 backends) last.
pub fn services(n: usize) -> Vec<Svc> {
    let mut v: Vec<Svc> = (0..n.saturating_sub(1))
        .map(|i| Svc {
            name: format!("bench/s{i}:http"),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 16, 0)) + i as u32),
            port: 80,
            udp: false,
            backends: vec![clusterip::BACKENDS[i % 3]],
        })
        .collect();
    v.push(Svc {
        name: "default/web:http".into(),
        ip: clusterip::VIP,
        port: 80,
        udp: false,
        backends: clusterip::BACKENDS.to_vec(),
    });
    v
}

/// Fresh SYNs to the target: `flows` covers every packet of a trial, so no tuple repeats;
/// `src` keeps the latency trial's tuples apart from the max trial's.
pub fn syns(src: Ipv4Addr) -> Traffic {
    let mut t = clusterip::to(Proto::TcpSyn, 1_000_000, clusterip::VIP, 80);
    t.gen_args.push(("count".into(), SYNS.to_string()));
    t.gen_args.push(("src-ip".into(), src.to_string()));
    t
}

/// One point: afgate with `n` services configured. Returns the variant (max SYN rate and
/// new-flow latency) or its failure.
pub fn afgate_point(
    env: &Env,
    lab: &BenchLab,
    n: usize,
    progress: &dyn Fn(&str),
) -> Result<(VariantResult, f64)> {
    let svcs = services(n);
    let y = afgate_yaml(&[env.dut_core], &svcs, "conntrack:\n  capacity: 1048576\n");
    let t0 = std::time::Instant::now();
    let running = start_afgate(
        env,
        lab,
        &format!("newconn-{n}"),
        &y,
        env.timing.max_secs + env.timing.latency_secs + 90.0,
    )?;
    let start_secs = t0.elapsed().as_secs_f64();
    let v = variant_syn(
        env,
        lab,
        Dut::AfgateAdaptive,
        &format!("afgate/{n}"),
        n,
        progress,
    );
    let stats = running.stop(lab)?;
    Ok((
        VariantResult {
            dut_stats: stats,
            ..v
        },
        start_secs,
    ))
}

fn variant_syn(
    env: &Env,
    lab: &BenchLab,
    dut: Dut,
    name: &str,
    n: usize,
    progress: &dyn Fn(&str),
) -> VariantResult {
    // The latency trial's tuples start at another source address; the max trial sends at
    // most SYNS packets, which stay below 10.0.1.10 (60000 ports per address).
    let max_t = syns(Ipv4Addr::new(10, 0, 1, 2));
    let lat_t = syns(Ipv4Addr::new(10, 0, 1, 100));
    let desc = format!(
        "{}: {n} services, SYNs to the last one",
        if dut == Dut::Kernel {
            "kernel + kube-proxy iptables rules"
        } else {
            "afgate, 1 worker"
        }
    );
    let mut v = VariantResult {
        name: name.into(),
        description: desc,
        ..Default::default()
    };
    let res = (|| -> Result<()> {
        let max = trial(env, lab, dut, &max_t, None, env.timing.max_secs)?;
        v.max_rx_pps = max.rx_pps();
        progress(&format!(
            "{name}: {} SYNs offered at {:.3} Mpps, {:.3} Mpps forwarded (loss {:.2} %)",
            max.generator.sent,
            max.generator.offered_pps / 1e6,
            v.max_rx_pps / 1e6,
            max.loss * 100.0
        ));
        let received = max.sink.received;
        v.max = max;
        if received == 0 {
            bail!("no SYN went through {name}");
        }
        if dut == Dut::Kernel {
            flush_conntrack(lab);
        }
        // Below the DUT's capacity, or the latency measured is the queue's.
        let lat_rate = LAT_RATE.min(v.max_rx_pps * 0.5).max(200.0);
        let lt = trial(
            env,
            lab,
            dut,
            &lat_t,
            Some(lat_rate),
            env.timing.latency_secs,
        )?;
        v.latency = lt.sink.latency.clone();
        progress(&format!(
            "{name}: new-flow latency at {:.1} kpps: p50 {} ns, p99 {} ns (loss {:.2} %)",
            lat_rate / 1e3,
            v.latency.p50,
            v.latency.p99,
            lt.loss * 100.0
        ));
        v.latency_trial = Some(lt);
        Ok(())
    })();
    if let Err(e) = res {
        progress(&format!("{name}: FAILED: {e:#}"));
        v.error = Some(format!("{e:#}"));
    }
    v
}

pub fn kernel_point(
    env: &Env,
    lab: &BenchLab,
    n: usize,
    progress: &dyn Fn(&str),
) -> Result<(VariantResult, f64)> {
    kernel_clear(lab);
    kernel_backends(lab)?;
    let rules = iptables_rules(&services(n));
    let load = load_iptables(lab, &rules)?;
    progress(&format!(
        "iptables-restore of {n} services ({} lines): {load:.2} s",
        rules.lines().count()
    ));
    let running = super::start(
        env,
        lab,
        Dut::Kernel,
        env.timing.max_secs + env.timing.latency_secs + 60.0,
    )?;
    let v = variant_syn(env, lab, Dut::Kernel, &format!("iptables/{n}"), n, progress);
    running.stop(lab)?;
    kernel_clear(lab);
    Ok((v, load))
}

pub fn run(
    env: &Env,
    lab: &BenchLab,
    quick: bool,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let counts: &[usize] = if quick {
        &[10, 10_000]
    } else {
        &[10, 1_000, 10_000]
    };
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: format!(
            "new TCP connections per second (SYNs, every one a new five-tuple, ≤ {SYNS} per trial) to the last of N ClusterIP services; new-flow latency at {} kpps",
            LAT_RATE / 1e3
        ),
        sweep_axis: Some("services".into()),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let mut last_load = 0.0;
    for &n in counts {
        let (a, secs) = afgate_point(env, lab, n, &p)?;
        r.notes
            .push(format!("afgate with {n} services: started in {secs:.1} s"));
        r.sweep.push((n as f64, "afgate".into(), a.max_rx_pps));
        r.variants.push(a);
        // Loading grows with the rule count; skip sizes that would exceed the cap.
        if last_load * 10.0 > LOAD_CAP_SECS {
            r.notes.push(format!(
                "iptables with {n} services not measured: the previous size took {last_load:.1} s to load"
            ));
            continue;
        }
        let (k, load) = kernel_point(env, lab, n, &p)?;
        last_load = load;
        r.notes.push(format!(
            "iptables-restore of {n} services' kube-proxy rules took {load:.2} s"
        ));
        r.sweep.push((n as f64, "iptables".into(), k.max_rx_pps));
        r.variants.push(k);
    }
    for &n in counts {
        let a = r.variant(&format!("afgate/{n}")).map(|v| v.max_rx_pps);
        let k = r.variant(&format!("iptables/{n}")).map(|v| v.max_rx_pps);
        if let (Some(a), Some(k)) = (a, k)
            && k > 0.0
        {
            r.ratios
                .push((format!("afgate/iptables ({n} services)"), a / k));
        }
    }
    r.notes.push(format!(
        "Latency columns: one-way latency of SYNs at {} kpps (half the max rate if that is lower), each a new connection (the \"new-flow latency\"). Zero-loss not searched.",
        LAT_RATE / 1e3
    ));
    Ok(r)
}
