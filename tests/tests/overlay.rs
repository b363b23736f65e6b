//! Overlay and underlay plumbing in the lab (SPEC B8-B11): VXLAN with the kernel's own vxlan
//! device as the remote VTEP, an underlay pod on VLAN 1155 behind a trunk, a bond of two
//! uplinks. Topology in `afgate_tests::overlay_lab`.

use afgate_tests::capture::Capture;
use afgate_tests::overlay_lab::*;
use afgate_tests::peer;
use afgate_tests::ping::ping;
use afgate_tests::process::Afgate;
use anyhow::{Context, Result};
use std::time::Duration;

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

#[test]
fn vxlan_tcp_both_directions_with_the_kernel_vtep() -> Result<()> {
    let l = OverlayLab::build()?;
    let mut afgate = Afgate::start(&l.node, &l.config_file(4789)?)?;
    let cap = Capture::start(&l.remote, "eth0", "udp port 4789", 400, 30)?;

    // Local pod → remote pod.
    let server = peer::tcp_server(&l.rpod, &format!("{RPOD_IP}:8080"), "rpod", 30)?;
    let c = peer::tcp_client(&l.pod, &format!("{RPOD_IP}:8080"), 20_000, 15)
        .with_context(|| afgate.log())?;
    assert!(c.echoed, "{}", c.stdout);
    assert_eq!(c.reply.client_ip(), POD_IP.to_string());
    drop(server);
    // Remote pod → local pod.
    let server = peer::tcp_server(&l.pod, &format!("{POD_IP}:8081"), "pod", 30)?;
    let c = peer::tcp_client(&l.rpod, &format!("{POD_IP}:8081"), 20_000, 15)
        .with_context(|| afgate.log())?;
    assert!(c.echoed, "{}", c.stdout);
    assert_eq!(c.reply.client_ip(), RPOD_IP.to_string());
    drop(server);

    let seen = cap.stop()?;
    let from_node: Vec<_> = seen
        .iter()
        .filter(|l| {
            l.contains(&format!("{NODE_CTL_IP}.")) && l.contains(&format!("> {REMOTE_CTL_IP}.4789"))
        })
        .collect();
    assert!(from_node.len() >= 10, "{seen:#?}");
    for line in &from_node {
        assert!(line.contains("VXLAN") && line.contains("vni 2"), "{line}");
        assert!(
            !line.contains("bad cksum") && !line.contains("incorrect"),
            "{line}"
        );
    }
    // tcpdump -v flags a wrong outer IPv4 checksum ("bad cksum", checked above); the inner
    // TCP checksums were checked by the remote kernel, which accepted every segment (the
    // echo came back intact). The UDP checksum is 0, as Linux's vxlan device sends it.
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "vxlan_encap"]) >= 10, "{s}");
    assert!(num(&s, &["events", "vxlan_decap"]) >= 10, "{s}");
    Ok(())
}

#[test]
fn wrong_vni_is_dropped_and_counted_and_df_too_big_gets_frag_needed() -> Result<()> {
    let l = OverlayLab::build()?;
    // The pod link at 1500 so the pod may send more than the overlay carries.
    l.pod.ip(&["link", "set", "eth0", "mtu", "1500"])?;
    l.node.ip(&["link", "set", "pod60", "mtu", "1500"])?;
    let mut afgate = Afgate::start(&l.node, &l.config_file(4789)?)?;

    // A second kernel vxlan device with VNI 3 towards the node, more specific route.
    let r = &l.remote;
    r.ip(&[
        "link",
        "add",
        "vxlan.3",
        "type",
        "vxlan",
        "id",
        "3",
        "local",
        &REMOTE_CTL_IP.to_string(),
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "eth0",
    ])?;
    r.ip(&["link", "set", "vxlan.3", "up"])?;
    let mac = NODE_VXLAN_MAC.to_string();
    r.ip(&[
        "neigh",
        "replace",
        "10.20.9.0",
        "lladdr",
        &mac,
        "dev",
        "vxlan.3",
        "nud",
        "permanent",
    ])?;
    r.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        &mac,
        "dev",
        "vxlan.3",
        "dst",
        &NODE_CTL_IP.to_string(),
    ])?;
    r.ip(&[
        "route",
        "replace",
        &format!("{POD_IP}/32"),
        "via",
        "10.20.9.0",
        "dev",
        "vxlan.3",
        "onlink",
    ])?;
    let p = ping(&l.rpod, &POD_IP.to_string(), 3, Duration::from_secs(1))?;
    assert_eq!(p.received, 0, "VNI 3 is not configured");
    r.ip(&["route", "del", &format!("{POD_IP}/32")])?;
    // Back on VNI 2 it works.
    let p = ping(&l.rpod, &POD_IP.to_string(), 3, Duration::from_secs(2))?;
    assert_eq!(p.received, 3, "{}", afgate.log());

    // DF and 1488 bytes: bigger than the overlay's 1450.
    let out = l.pod.exec(&[
        "ping",
        "-n",
        "-M",
        "do",
        "-s",
        "1460",
        "-c",
        "1",
        "-W",
        "2",
        &RPOD_IP.to_string(),
    ])?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "{text}"
    );
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["drops", "vxlan_unknown_vni"]) >= 3, "{s}");
    assert!(num(&s, &["events", "icmp_unreachable_sent"]) >= 1, "{s}");
    Ok(())
}

#[test]
fn underlay_pod_on_vlan_1155_is_untagged_and_tagged() -> Result<()> {
    let l = OverlayLab::build()?;
    let mut afgate = Afgate::start(&l.node, &l.config_file(4789)?)?;
    let cap = Capture::start(&l.upod, "eth0", "", 200, 30)?;
    let p = ping(&l.upod, &UPOD_GW.to_string(), 3, Duration::from_secs(2))?;
    assert_eq!(
        p.received,
        3,
        "afgate answers on biz.1155's address; {}",
        afgate.log()
    );
    let server = peer::tcp_server(&l.pod, &format!("{POD_IP}:8082"), "pod", 30)?;
    let c = peer::tcp_client(&l.upod, &format!("{POD_IP}:8082"), 10_000, 15)
        .with_context(|| afgate.log())?;
    assert!(c.echoed, "{}", c.stdout);
    assert_eq!(c.reply.client_ip(), UPOD_IP.to_string());
    drop(server);
    let seen = cap.stop()?;
    // Every frame on the pod's wire carries VLAN 1155 in both directions (tcpdump -e shows
    // the tag the shim pushed and the one afgate pushed).
    let from_node: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("{} >", Mac::lab(13, 1))))
        .collect();
    let to_node: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("{} >", Mac::lab(13, 2))))
        .collect();
    assert!(from_node.len() >= 5 && to_node.len() >= 5, "{seen:#?}");
    for line in from_node.iter().chain(&to_node) {
        assert!(line.contains("vlan 1155"), "{line}");
    }
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "vlan_pop"]) >= 5, "{s}");
    assert!(num(&s, &["events", "vlan_push"]) >= 5, "{s}");
    Ok(())
}

#[test]
fn bond_spreads_flows_and_survives_a_member_going_down() -> Result<()> {
    let l = OverlayLab::build()?;
    let mut afgate = Afgate::start(&l.node, &l.config_file(4789)?)?;
    let _server = peer::tcp_server(&l.gw, &format!("{GW_IP}:8080"), "gw", 60)?;
    let syns = "tcp[tcpflags] & tcp-syn != 0 and dst port 8080";
    let c0 = Capture::start(&l.gw, "gw0", syns, 200, 30)?;
    let c1 = Capture::start(&l.gw, "gw1", syns, 200, 30)?;
    let r = peer::tcp_conns(&l.pod, &format!("{GW_IP}:8080"), 40, 20)?;
    assert_eq!(r.failed, 0, "{r:?}\n{}", afgate.log());
    let (s0, s1) = (c0.stop()?.len(), c1.stop()?.len());
    assert!(s0 >= 5 && s1 >= 5, "both members carry flows: {s0} {s1}");

    // Member up1 loses its link (the switch side goes down): its flows move to up0.
    l.gw.ip(&["link", "set", "gw1", "down"])?;
    std::thread::sleep(Duration::from_millis(800));
    let c0 = Capture::start(&l.gw, "gw0", syns, 200, 30)?;
    let r = peer::tcp_conns(&l.pod, &format!("{GW_IP}:8080"), 30, 20)?;
    assert_eq!(r.failed, 0, "{r:?}\n{}", afgate.log());
    let s0 = c0.stop()?.len();
    assert!(s0 >= 30, "all new flows on up0: {s0}");
    afgate.stop()?;
    let log = afgate.log();
    assert!(log.contains("bond member up1 down"), "{log}");
    Ok(())
}

use afgate_tests::Mac;
