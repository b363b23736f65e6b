//! "dns": UDP request/response through the cluster DNS ClusterIP 10.96.0.10:53 → three
//! backends 10.0.2.10–12:53 behind the DUT, afgate against the kernel with kube-proxy's
//! iptables and nftables rules, and both against plain forwarding to one backend.
//!
//! The generator sends 64-byte "queries" from g0 and receives the answers on the same AF_XDP
//! socket (`gen --responses`); a reflector on s0 (`afgate-bench reflect`) answers every
//! query with the same frame, addresses and ports swapped, so the answer carries the query's
//! stamp. Both directions cross the DUT: DNAT + masquerade on the way in, the reverse
//! translation on the way back. The rate is answers per second of sending, the loss is
//! queries without an answer, the latency is the round trip. No DNS parsing anywhere (a
//! real server's cost is not what is measured); the frames are UDP port 53, which is all a
//! service dataplane looks at.

use super::clusterip::{
    Svc, afgate_yaml, kernel_backends, kernel_clear, load_iptables, load_nft, start_afgate,
};
use super::{
    Dut, Env, ScenarioResult, Trial, drop_counters, measure_with, parse_report, spawn_ready,
};
use crate::generator::GenReport;
use crate::topo::{self, BenchLab};
use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

pub const NAME: &str = "dns";

pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn kube_dns() -> Svc {
    Svc {
        name: "kube-system/kube-dns:dns".into(),
        ip: DNS_VIP,
        port: 53,
        udp: true,
        backends: super::clusterip::BACKENDS.to_vec(),
        target_port: 53,
    }
}

/// One request/response trial: reflector on s0, the generator with `--responses` on g0.
fn rr_trial(
    env: &Env,
    lab: &BenchLab,
    dst: Ipv4Addr,
    flows: u32,
    rate: Option<f64>,
    secs: f64,
) -> Result<Trial> {
    let bin = env.bench_bin.to_string_lossy().into_owned();
    let load = env.load_core.to_string();
    let refl_secs = format!("{:.2}", secs + 10.0);
    let argv = [
        bin.as_str(),
        "reflect",
        "--dev",
        "s0",
        "--duration",
        &refl_secs,
        "--core",
        &load,
    ];
    let mut refl = spawn_ready(&lab.sink, &argv).context("starting the reflector")?;
    if env.threaded_napi {
        lab.pin_napi(&lab.sink, "s0", env.load_core, true)?;
    }
    let path = [
        (&lab.generator, "g0"),
        (&lab.dut, "d0"),
        (&lab.dut, "d1"),
        (&lab.sink, "s0"),
    ];
    let before = drop_counters(&path);
    let count = (rate.unwrap_or(env.max_pps).min(env.max_pps) * secs).ceil() as u64;
    let (count_s, secs_s, flows_s) = (
        count.max(1).to_string(),
        format!("{secs:.3}"),
        flows.to_string(),
    );
    let (smac, dmac, sip, dip) = (
        topo::GEN_MAC.to_string(),
        topo::DUT_IN_MAC.to_string(),
        topo::GEN_IP.to_string(),
        dst.to_string(),
    );
    let mut gen_argv = vec![
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
        "53",
        "--proto",
        "udp",
        "--flows",
        &flows_s,
        "--count",
        &count_s,
        "--duration",
        &secs_s,
        "--core",
        &load,
        "--responses",
    ];
    let rate_s = rate.map(|r| format!("{r:.0}"));
    if let Some(r) = &rate_s {
        gen_argv.extend(["--rate", r.as_str()]);
    }
    let gen_proc = lab.generator.spawn(&gen_argv)?;
    let out = gen_proc.finish(Duration::from_secs_f64(secs + 20.0))?;
    let mut generator: GenReport = parse_report(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("generator: {}", String::from_utf8_lossy(&out.stderr)))?;
    refl.signal(libc::SIGINT);
    refl.wait_timeout(Duration::from_secs(5))?;
    let refl_rep: Option<crate::reflect::ReflectReport> = parse_report(&refl.stdout()).ok();
    let after = drop_counters(&path);
    let mut path_drops: Vec<(String, u64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let b = before.iter().find(|p| &p.0 == k).map_or(0, |p| p.1);
            (*v > b).then(|| (k.clone(), v - b))
        })
        .collect();
    if let Some(r) = refl_rep {
        path_drops.push(("reflector:rx".into(), r.rx));
        path_drops.push(("reflector:tx".into(), r.tx));
        path_drops.push(("reflector:dropped".into(), r.dropped));
    }
    let sink = generator.responses.take().context("no responses report")?;
    let loss = if generator.sent == 0 {
        1.0
    } else {
        1.0 - sink.received as f64 / generator.sent as f64
    };
    Ok(Trial {
        requested_pps: rate,
        generator,
        sink,
        loss,
        path_drops,
    })
}

pub fn run(
    env: &Env,
    lab: &BenchLab,
    flows: u32,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: format!(
            "UDP request/response (64-byte queries, each answered by a reflector on the backend side) through the ClusterIP {DNS_VIP}:53 → 3 backends :53, {flows} client flows, one forwarding core; rate = answers/s, latency = round trip"
        ),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let backend = super::clusterip::BACKENDS[0];
    let svcs = [kube_dns()];
    let gen_neigh = format!(
        "neighbors:\n  - {{ ip: {}, mac: \"{}\", dev: d0 }}\n",
        topo::GEN_IP,
        topo::GEN_MAC
    );

    // afgate: answers come back through it to the client, so it needs the client's MAC.
    let y = afgate_yaml(&[env.dut_core], &svcs, "").replacen("neighbors:\n", &gen_neigh, 1);
    let running = start_afgate(env, lab, "dns", &y, 2.0 * super::variant_budget(env))?;
    for (name, dst, desc) in [
        (
            "afgate-plain",
            backend,
            "afgate, same config, queries straight to one backend (no service)",
        ),
        (
            "afgate-dns",
            DNS_VIP,
            "afgate, 1 worker (poll wakeup, rt_priority 10): service DNAT + masquerade + conntrack, reverse NAT of the answers",
        ),
    ] {
        r.variants.push(measure_with(
            env,
            name,
            desc,
            &mut |rate, secs| rr_trial(env, lab, dst, flows, rate, secs),
            &p,
        ));
    }
    let stats = running.stop(lab)?;
    if let Some(v) = r.variants.last_mut() {
        v.dut_stats = stats;
    }

    kernel_clear(lab);
    kernel_backends(lab)?;
    lab.dut.ip(&[
        "neigh",
        "replace",
        &topo::GEN_IP.to_string(),
        "lladdr",
        &topo::GEN_MAC.to_string(),
        "dev",
        "d0",
        "nud",
        "permanent",
    ])?;
    let running = super::start(env, lab, Dut::Kernel, 3.0 * super::variant_budget(env))?;
    // The answers enter on d1, whose receive softirq would run on the reflector's core.
    lab.rps(&lab.dut, "d1", &format!("{:x}", 1u64 << env.dut_core))?;
    for (kind, desc) in [
        (
            "kernel-plain",
            "kernel ip_forward, no NAT rules (RPS to the DUT core on d0 and d1)",
        ),
        (
            "iptables",
            "kernel, kube-proxy iptables-mode nat rules (iptables-nft), conntrack, MASQUERADE",
        ),
        (
            "nftables",
            "kernel, kube-proxy nftables-mode rules (verdict map, numgen), conntrack, masquerade",
        ),
    ] {
        kernel_clear(lab);
        let dst = match kind {
            "iptables" => {
                load_iptables(lab, &super::clusterip::iptables_rules(&svcs))?;
                DNS_VIP
            }
            "nftables" => {
                load_nft(lab, &super::clusterip::nft_rules(&svcs))?;
                DNS_VIP
            }
            _ => backend,
        };
        r.variants.push(measure_with(
            env,
            kind,
            desc,
            &mut |rate, secs| rr_trial(env, lab, dst, flows, rate, secs),
            &p,
        ));
    }
    kernel_clear(lab);
    lab.rps(&lab.dut, "d1", "0")?;
    running.stop(lab)?;
    let _ = lab
        .dut
        .ip(&["neigh", "del", &topo::GEN_IP.to_string(), "dev", "d0"]);

    for b in ["iptables", "nftables", "afgate-plain", "kernel-plain"] {
        r.ratio("afgate-dns", b, None);
    }
    r.ratio("iptables", "kernel-plain", None);
    r.notes.push(
        "Latency here is the round trip generator → DUT → reflector → DUT → generator, read by the generator from the stamp its query carried. Rates are answers received per second of sending; loss = queries without an answer (either direction).".into(),
    );
    r.notes.push(
        "The answers' receive work on g0 (the generator's socket) runs in softirq on the core that transmitted them, the DUT core, for every variant; the reflector shares the load core with the generator.".into(),
    );
    Ok(r)
}
