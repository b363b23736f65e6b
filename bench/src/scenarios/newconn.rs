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
use super::{Dut, Env, ScenarioResult, Traffic, VariantResult, measure_with, trial};
use crate::packet::Proto;
use crate::topo::BenchLab;
use anyhow::Result;
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
            target_port: clusterip::TARGET_PORT,
        })
        .collect();
    v.push(Svc {
        name: "default/web:http".into(),
        ip: clusterip::VIP,
        port: 80,
        udp: false,
        backends: clusterip::BACKENDS.to_vec(),
        target_port: clusterip::TARGET_PORT,
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
        super::variant_budget(env) + 60.0,
    )?;
    let start_secs = t0.elapsed().as_secs_f64();
    let api = clusterip::api_socket(lab, &format!("newconn-{n}"));
    let v = variant_syn(
        env,
        lab,
        Dut::AfgateAdaptive,
        &format!("afgate/{n}"),
        n,
        Some(&api),
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
    api: Option<&std::path::Path>,
    progress: &dyn Fn(&str),
) -> VariantResult {
    let desc = format!(
        "{}: {n} services, SYNs to the last one",
        if dut == Dut::Kernel {
            "kernel + kube-proxy iptables rules"
        } else {
            "afgate, 1 worker"
        }
    );
    // Every trial starts from an empty table (kernel: conntrack -F; afgate: `afgate ctl
    // conntrack flush`) and sends from its own source addresses: a trial sends at most SYNS
    // packets, i.e. 4 addresses of 60000 ports.
    let mut i = 0u32;
    let mut run = |rate: Option<f64>, secs: f64| {
        let src = Ipv4Addr::new(10, 0, 1, (2 + (i % 60) * 4) as u8);
        i += 1;
        match api {
            Some(sock) => drop(clusterip::afgate_ctl(env, sock, &["conntrack", "flush"])?),
            None => flush_conntrack(lab),
        }
        // measure_with's calls: max, the bisection, then latency (the last), whose rate is
        // capped at LAT_RATE as in the earlier runs.
        let latency = i == env.timing.search_trials + 2;
        let rate = rate.map(|r| if latency { r.min(LAT_RATE) } else { r });
        trial(env, lab, dut, &syns(src), rate, secs)
    };
    measure_with(env, name, &desc, &mut run, progress)
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
    let running = super::start(env, lab, Dut::Kernel, super::variant_budget(env))?;
    let v = variant_syn(
        env,
        lab,
        Dut::Kernel,
        &format!("iptables/{n}"),
        n,
        None,
        progress,
    );
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
        r.ratio(
            &format!("afgate/{n}"),
            &format!("iptables/{n}"),
            Some(format!("afgate/iptables ({n} services)")),
        );
    }
    r.notes.push(format!(
        "Latency columns: one-way latency of SYNs at half the zero-loss rate, at most {} kpps, each a new connection (the \"new-flow latency\"). Every trial starts with an empty connection table (kernel: conntrack -F; afgate: `afgate ctl conntrack flush`) and fresh source addresses.",
        LAT_RATE / 1e3
    ));
    Ok(r)
}
