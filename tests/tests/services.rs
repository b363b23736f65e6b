//! Services through afgate in the lab (SPEC B1–B4, B6, B7): real kernel clients reach
//! ClusterIP, DNS and NodePort services whose backends are kernel servers (`afgate-peer`) in
//! the pod namespaces and behind the gateway; each server says which backend answered and
//! which client address it saw, so the tests check scheduling, DNAT, SNAT and the reply
//! translation (a kernel TCP client only completes a handshake whose SYN-ACK comes from the
//! VIP it connected to).
//!
//! ```text
//!   pod  10.20.9.60 ──┐                 ┌── gw ── ext 10.186.200.10, .11, .12 (backends b1-b3)
//!   pod2 10.20.9.41 ──┤ node (afgate) ──┘
//! ```
//!
//! MASQUERADE from the VLAN-1155 underlay, ICMP error translation, backend removal mid-flow,
//! a full conntrack table and endpoint churn are `services_nat.rs`.

use afgate_tests::lab::{Lab, NodeLab};
use afgate_tests::peer;
use afgate_tests::process::Afgate;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

const VIP: &str = "10.96.10.1";
const DNS_VIP: &str = "10.96.0.10";
const HAIRPIN_VIP: &str = "10.96.10.2";
const EMPTY_VIP: &str = "10.96.10.3";
const EXT_BACKENDS: [&str; 3] = ["10.186.200.10", "10.186.200.11", "10.186.200.12"];

fn final_stats(log: &str) -> Result<serde_json::Value> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("afgate: final-stats "))
        .context("no final-stats line")?;
    Ok(serde_json::from_str(line)?)
}

fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// The node lab, ext with two more addresses (three backends behind the gateway).
fn lab() -> Result<NodeLab> {
    let lab = Lab::node_lab()?;
    for a in &EXT_BACKENDS[1..] {
        lab.ext
            .ns
            .ip(&["addr", "add", &format!("{a}/24"), "dev", &lab.ext.dev])?;
    }
    Ok(lab)
}

/// Writes the lab's config plus `services` YAML and starts afgate.
fn start(lab: &NodeLab, services: &str) -> Result<Afgate> {
    let path = lab.lab.tmp().join("afgate.yaml");
    let yaml = format!("{}{services}", lab.afgate_config_yaml());
    std::fs::write(&path, yaml)?;
    // A control socket of its own: tests run in parallel, each with its own afgate.
    let sock = lab.lab.tmp().join("afgate.sock");
    Afgate::start_with(
        &lab.node,
        &path,
        &["--api", sock.to_str().context("tmp path")?],
    )
}

fn ext_backends(sched: &str, weights: [u16; 3]) -> String {
    let mut y = format!(
        "services:\n  - name: web\n    cluster_ip: {VIP}\n    port: 80\n    target_port: 8080\n    scheduler: {sched}\n    backends:\n"
    );
    for (a, w) in EXT_BACKENDS.iter().zip(weights) {
        y += &format!("      - {{ addr: {a}, weight: {w}, local: false }}\n");
    }
    y
}

fn ext_servers(lab: &NodeLab) -> Result<Vec<afgate_tests::Proc>> {
    EXT_BACKENDS
        .iter()
        .enumerate()
        .map(|(i, a)| {
            peer::tcp_server(
                &lab.ext.ns,
                &format!("{a}:8080"),
                &format!("b{}", i + 1),
                30,
            )
        })
        .collect()
}

#[test]
fn clusterip_rr_gives_exact_thirds_and_replies_come_from_the_vip() -> Result<()> {
    let lab = lab()?;
    let mut afgate = start(&lab, &ext_backends("rr", [1, 1, 1]))?;
    let servers = ext_servers(&lab)?;
    let c = peer::tcp_conns(&lab.pod.ns, &format!("{VIP}:80"), 30, 20)?;
    assert_eq!(c.failed, 0, "{c:?}\n{}", afgate.log());
    let counts: Vec<u64> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| c.ids.get(*b).copied().unwrap_or(0))
        .collect();
    assert_eq!(counts, vec![10, 10, 10], "{c:?}");
    // A full exchange with payload: the client talked to the VIP (its kernel accepted the
    // VIP-sourced replies) and the backend saw the pod's own address (no SNAT).
    let r = peer::tcp_client(&lab.pod.ns, &format!("{VIP}:80"), 100_000, 10)?;
    assert!(r.echoed, "{}", r.stdout);
    assert_eq!(r.reply.client_ip(), lab.addrs.pod_ip.to_string());
    drop(servers);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert_eq!(num(&s, &["events", "service_new_flow"]), 31, "{s}");
    assert!(num(&s, &["conntrack", "inserts"]) >= 31, "{s}");
    Ok(())
}

#[test]
fn wrr_follows_weights_and_sh_keeps_a_client() -> Result<()> {
    let lab = lab()?;
    let mut afgate = start(&lab, &ext_backends("wrr", [3, 2, 1]))?;
    let servers = ext_servers(&lab)?;
    let c = peer::tcp_conns(&lab.pod.ns, &format!("{VIP}:80"), 30, 20)?;
    assert_eq!(c.failed, 0, "{c:?}");
    let counts: Vec<u64> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| c.ids.get(*b).copied().unwrap_or(0))
        .collect();
    assert_eq!(counts, vec![15, 10, 5], "{c:?}");
    drop(servers);
    afgate.stop()?;

    let mut afgate = start(&lab, &ext_backends("sh", [1, 1, 1]))?;
    let servers = ext_servers(&lab)?;
    let c = peer::tcp_conns(&lab.pod.ns, &format!("{VIP}:80"), 10, 20)?;
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(c.ids.len(), 1, "one client, one backend: {c:?}");
    drop(servers);
    afgate.stop()?;
    Ok(())
}

#[test]
fn dns_udp_service_answers_through_the_vip() -> Result<()> {
    let lab = lab()?;
    let pod2 = lab.addrs.pod2_ip;
    let mut afgate = start(
        &lab,
        &format!(
            "services:\n  - {{ name: dns, cluster_ip: {DNS_VIP}, port: 53, protocol: udp, backends: [{{ addr: {pod2} }}] }}\n"
        ),
    )?;
    let server = peer::udp_server(&lab.pod2.ns, &format!("{pod2}:53"), "dns", 20)?;
    let r = peer::udp_client(&lab.pod.ns, &format!("{DNS_VIP}:53"), 5, 10)?;
    assert_eq!((r.sent, r.received), (5, 5), "{}", afgate.log());
    for rep in &r.replies {
        assert_eq!(rep.id, "dns");
        assert_eq!(rep.client_ip(), lab.addrs.pod_ip.to_string());
    }
    drop(server);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert_eq!(num(&s, &["events", "service_new_flow"]), 1, "one flow: {s}");
    Ok(())
}

fn nodeport_yaml(policy: &str, pod2: std::net::Ipv4Addr) -> String {
    format!(
        "services:\n  - {{ name: np, type: nodeport, cluster_ip: {VIP}, port: 80, target_port: 8080, node_port: 31234, external_traffic_policy: {policy}, backends: [{{ addr: {pod2} }}] }}\n"
    )
}

#[test]
fn nodeport_cluster_policy_snats_and_local_policy_keeps_the_client() -> Result<()> {
    let lab = lab()?;
    let pod2 = lab.addrs.pod2_ip;
    let biz = lab.addrs.biz_ip;
    for (policy, seen) in [
        ("cluster", "169.254.1.1".to_string()),
        ("local", lab.addrs.ext_ip.to_string()),
    ] {
        let mut afgate = start(&lab, &nodeport_yaml(policy, pod2))?;
        let server = peer::tcp_server(&lab.pod2.ns, &format!("{pod2}:8080"), "np", 20)?;
        let r = peer::tcp_client(&lab.ext.ns, &format!("{biz}:31234"), 50_000, 10)
            .with_context(|| afgate.log())?;
        assert!(r.echoed, "{}", r.stdout);
        assert_eq!(
            r.reply.client_ip(),
            seen,
            "{policy}: the source the backend saw"
        );
        drop(server);
        afgate.stop()?;
        let s = final_stats(&afgate.log())?;
        let snat = num(&s, &["events", "snat_new_flow"]);
        assert_eq!(snat, u64::from(policy == "cluster"), "{policy}: {s}");
    }
    Ok(())
}

#[test]
fn hairpin_a_backend_reaching_its_own_vip_is_answered() -> Result<()> {
    let lab = lab()?;
    let pod = lab.addrs.pod_ip;
    let mut afgate = start(
        &lab,
        &format!(
            "services:\n  - {{ name: self, cluster_ip: {HAIRPIN_VIP}, port: 80, target_port: 8080, backends: [{{ addr: {pod} }}] }}\n"
        ),
    )?;
    let server = peer::tcp_server(&lab.pod.ns, &format!("{pod}:8080"), "me", 20)?;
    let r = peer::tcp_client(&lab.pod.ns, &format!("{HAIRPIN_VIP}:80"), 10_000, 10)
        .with_context(|| afgate.log())?;
    assert!(r.echoed, "{}", r.stdout);
    // Source-NATed to the pod gateway, so the pod's reply comes back through the node.
    assert_eq!(r.reply.client_ip(), "169.254.1.1");
    drop(server);
    afgate.stop()?;
    Ok(())
}

#[test]
fn service_without_backends_is_rejected_at_once() -> Result<()> {
    let lab = lab()?;
    let mut afgate = start(
        &lab,
        &format!(
            "services:\n  - {{ name: empty, cluster_ip: {EMPTY_VIP}, port: 80, backends: [] }}\n  - {{ name: emptyu, cluster_ip: {EMPTY_VIP}, port: 53, protocol: udp, backends: [] }}\n"
        ),
    )?;
    let t0 = Instant::now();
    let e = peer::tcp_client(&lab.pod.ns, &format!("{EMPTY_VIP}:80"), 0, 5)
        .expect_err("no backends: connect must fail");
    assert!(format!("{e:#}").contains("refused"), "{e:#}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "refused at once, not timed out"
    );
    let u = peer::udp_client(&lab.pod.ns, &format!("{EMPTY_VIP}:53"), 1, 2)?;
    assert_eq!(u.received, 0);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert_eq!(num(&s, &["events", "service_reject"]), 2, "{s}");
    assert!(num(&s, &["events", "icmp_unreachable_sent"]) >= 1, "{s}");
    Ok(())
}
