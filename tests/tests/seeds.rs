//! The seeds' end-to-end paths through afgate (issue 4, SPEC B5, B8–B11), each with real
//! kernel peers and checks of what the far side received. Topology in
//! `afgate_tests::seeds_lab`.

use afgate_tests::capture::Capture;
use afgate_tests::peer;
use afgate_tests::ping::ping;
use afgate_tests::process::Afgate;
use afgate_tests::seeds_lab::*;
use anyhow::{Context, Result};
use std::time::Duration;

fn bad_checksum(line: &str) -> bool {
    line.contains("bad cksum") || line.contains("incorrect")
}

/// Underlay pod (VLAN 1155) → ClusterIP → backend on the remote node's overlay: the seeds'
/// MASQUERADE rule SNATs to the ctl address (the egress towards the overlay), the frame
/// leaves VXLAN VNI 2 from ctl to the remote's ctl, and the reply comes back de-NATed and
/// tagged 1155.
#[test]
fn underlay_pod_to_clusterip_with_a_remote_overlay_backend() -> Result<()> {
    let l = SeedsLab::build()?;
    let cfg = l.config_file(Underlay::Direct, &[(RPOD_IP, 8080)])?;
    let mut afgate = Afgate::start(&l.node, &cfg)?;
    let _server = peer::tcp_server(&l.rpod, &format!("{RPOD_IP}:8080"), "rpod", 40)?;
    let vx = Capture::start(&l.remote, "eth0", "udp port 4789", 400, 40)?;
    let tagged = Capture::start(&l.sw, "n0", "", 400, 40)?;
    for _ in 0..3 {
        let c = peer::tcp_client(&l.upod, &format!("{VIP}:80"), 5_000, 15)
            .with_context(|| afgate.log())?;
        assert!(c.echoed, "{}", c.stdout);
        assert_eq!(c.reply.id, "rpod");
        // MASQUERADE towards the overlay: the ctl address, not biz or the VLAN address.
        assert_eq!(c.reply.client_ip(), NODE_CTL_IP.to_string());
    }
    let seen = vx.stop()?;
    // tcpdump prints the inner frame of each VXLAN packet on a line of its own, right after
    // the outer one.
    let out: Vec<_> = seen
        .iter()
        .zip(seen.iter().skip(1))
        .filter(|(outer, _)| {
            outer.contains(&format!("{NODE_CTL_IP}."))
                && outer.contains(&format!("> {REMOTE_CTL_IP}.4789"))
        })
        .collect();
    assert!(out.len() >= 10, "{seen:#?}");
    eprintln!("remote eth0: {}\n  {}", out[0].0, out[0].1);
    for (outer, inner) in &out {
        assert!(
            outer.contains("VXLAN") && outer.contains("vni 2"),
            "{outer}"
        );
        assert!(
            inner.contains(&format!("{NODE_CTL_IP}."))
                && inner.contains(&format!("> {RPOD_IP}.8080")),
            "inner: SNATed to ctl, DNATed to the backend: {inner}"
        );
        assert!(
            !bad_checksum(outer) && !bad_checksum(inner) && inner.contains("(correct)"),
            "{outer}\n{inner}"
        );
    }
    // The client's wire: every frame of the flow is tagged 1155 both ways, and the replies
    // come from the VIP (de-NATed), to the pod's own address.
    let seen = tagged.stop()?;
    let replies: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("{VIP}.80 > {UPOD_IP}.")))
        .collect();
    let requests: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("{UPOD_IP}.")) && l.contains(&format!("> {VIP}.80")))
        .collect();
    assert!(replies.len() >= 6 && requests.len() >= 6, "{seen:#?}");
    eprintln!("switch n0: {}\nswitch n0: {}", requests[0], replies[0]);
    for line in replies.iter().chain(&requests) {
        assert!(line.contains("vlan 1155"), "{line}");
        assert!(!bad_checksum(line), "{line}");
    }
    for line in &replies {
        assert!(
            line.contains(&format!("{TRUNK_MAC} > ")) && line.contains("(correct)"),
            "from afgate's trunk, TCP sum checked by tcpdump: {line}"
        );
    }
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "service_new_flow"]) >= 3, "{s}");
    assert!(num(&s, &["events", "snat_new_flow"]) >= 3, "{s}");
    assert!(num(&s, &["events", "vxlan_encap"]) >= 10, "{s}");
    assert!(num(&s, &["events", "vlan_push"]) >= 6, "{s}");
    Ok(())
}

/// Underlay pod → ClusterIP → underlay backend on the same VLAN, as the seeds do it: the
/// translated frame (SNAT to biz) goes to the default gateway on biz, which routes it back
/// to the VLAN 1155 segment; the backend's reply returns the same way.
#[test]
fn underlay_backend_through_the_gateway() -> Result<()> {
    let l = SeedsLab::build()?;
    let cfg = l.config_file(Underlay::ViaGateway, &[(UBK_IP, 8080)])?;
    let mut afgate = Afgate::start(&l.node, &cfg)?;
    let _server = peer::tcp_server(&l.ubk, &format!("{UBK_IP}:8080"), "ubk", 40)?;
    let gw = Capture::start(&l.gw, "biz0", "tcp port 8080", 400, 40)?;
    for _ in 0..3 {
        let c = peer::tcp_client(&l.upod, &format!("{VIP}:80"), 5_000, 15)
            .with_context(|| afgate.log())?;
        assert!(c.echoed, "{}", c.stdout);
        assert_eq!(c.reply.id, "ubk");
        assert_eq!(c.reply.client_ip(), BIZ_IP.to_string(), "MASQUERADE to biz");
    }
    let seen = gw.stop()?;
    let translated: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("{BIZ_IP}.")) && l.contains(&format!("> {UBK_IP}.8080")))
        .collect();
    assert!(translated.len() >= 6, "the gateway carries them: {seen:#?}");
    eprintln!("gw biz0: {}", translated[0]);
    for line in &translated {
        assert!(!line.contains("vlan"), "untagged on biz: {line}");
        assert!(!bad_checksum(line) && line.contains("(correct)"), "{line}");
    }
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "snat_new_flow"]) >= 3, "{s}");
    Ok(())
}

/// The same with `trunk.1155` holding the subnet: afgate sends the translated frame straight
/// back out of the trunk it came in on (hairpin return) and the gateway sees none of it.
#[test]
fn underlay_backend_by_hairpin_return() -> Result<()> {
    let l = SeedsLab::build()?;
    let cfg = l.config_file(Underlay::Direct, &[(UBK_IP, 8080)])?;
    let mut afgate = Afgate::start(&l.node, &cfg)?;
    let _server = peer::tcp_server(&l.ubk, &format!("{UBK_IP}:8080"), "ubk", 40)?;
    let gw_biz = Capture::start(&l.gw, "biz0", "tcp", 400, 40)?;
    let gw_1155 = Capture::start(&l.gw, "u1155", "tcp", 400, 40)?;
    let tagged = Capture::start(&l.sw, "n0", "", 400, 40)?;
    for _ in 0..3 {
        let c = peer::tcp_client(&l.upod, &format!("{VIP}:80"), 5_000, 15)
            .with_context(|| afgate.log())?;
        assert!(c.echoed, "{}", c.stdout);
        assert_eq!(c.reply.id, "ubk");
        // MASQUERADE to the egress interface's address: trunk.1155's.
        assert_eq!(c.reply.client_ip(), NODE_1155_IP.to_string());
    }
    let (biz, u1155) = (gw_biz.stop()?, gw_1155.stop()?);
    assert!(
        biz.is_empty() && u1155.is_empty(),
        "no gateway trip: {biz:#?} {u1155:#?}"
    );
    let seen = tagged.stop()?;
    let translated: Vec<_> = seen
        .iter()
        .filter(|l| {
            l.contains(&format!("{TRUNK_MAC} > "))
                && l.contains(&format!("{NODE_1155_IP}."))
                && l.contains(&format!("> {UBK_IP}.8080"))
        })
        .collect();
    assert!(translated.len() >= 6, "{seen:#?}");
    eprintln!(
        "gw biz0/u1155: {} / {} packets; switch n0: {}",
        biz.len(),
        u1155.len(),
        translated[0]
    );
    for line in &translated {
        assert!(line.contains("vlan 1155"), "{line}");
        assert!(!bad_checksum(line) && line.contains("(correct)"), "{line}");
    }
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "snat_new_flow"]) >= 3, "{s}");
    Ok(())
}

/// Local overlay pod → outside the cluster (behind the default gateway): SNAT to the biz
/// address, the reply de-SNATed back to the pod.
#[test]
fn overlay_pod_to_outside_via_snat_on_biz() -> Result<()> {
    let l = SeedsLab::build()?;
    let cfg = l.config_file(Underlay::Direct, &[])?;
    let mut afgate = Afgate::start(&l.node, &cfg)?;
    let _server = peer::tcp_server(&l.ext, &format!("{EXT_IP}:8080"), "ext", 40)?;
    let cap = Capture::start(&l.ext, "eth0", "tcp port 8080", 400, 40)?;
    for _ in 0..3 {
        let c = peer::tcp_client(&l.pod, &format!("{EXT_IP}:8080"), 5_000, 15)
            .with_context(|| afgate.log())?;
        assert!(c.echoed, "{}", c.stdout);
        assert_eq!(c.reply.id, "ext");
        assert_eq!(c.reply.client_ip(), BIZ_IP.to_string(), "SNAT to biz");
        assert!(c.local.starts_with(&POD_IP.to_string()), "{}", c.stdout);
    }
    let seen = cap.stop()?;
    assert!(seen.len() >= 12, "{seen:#?}");
    for line in &seen {
        assert!(
            !line.contains(&POD_IP.to_string()),
            "pod address leaked: {line}"
        );
        assert!(!bad_checksum(line), "{line}");
    }
    let from_node: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("{BIZ_IP}.")) && l.contains(&format!("> {EXT_IP}.8080")))
        .collect();
    assert!(from_node.len() >= 6, "{seen:#?}");
    eprintln!("ext eth0: {}", from_node[0]);
    for line in &from_node {
        assert!(line.contains("(correct)"), "{line}");
    }
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "snat_new_flow"]) >= 3, "{s}");
    Ok(())
}

/// Neighbours: the first packet to an unresolved next hop waits for the ARP reply and is
/// delivered (Linux's `unres_qlen`), instead of becoming the ARP request and being lost.
#[test]
fn first_packet_to_an_unresolved_next_hop_is_delivered() -> Result<()> {
    let l = SeedsLab::build()?;
    let cfg = l.config_file(Underlay::Direct, &[])?;
    let mut afgate = Afgate::start(&l.node, &cfg)?;
    // One echo each, one try: to the outside via the unresolved gateway on biz, and to an
    // unresolved underlay pod on trunk.1155 (tagged on release).
    let p = ping(&l.pod, &EXT_IP.to_string(), 1, Duration::from_secs(5))?;
    assert_eq!(p.received, 1, "via the gateway: {p:?}\n{}", afgate.log());
    let p = ping(&l.pod, &UPOD_IP.to_string(), 1, Duration::from_secs(5))?;
    assert_eq!(
        p.received,
        1,
        "to the underlay pod: {p:?}\n{}",
        afgate.log()
    );
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    eprintln!("events: {}", s["events"]);
    assert!(num(&s, &["events", "neigh_queued"]) >= 2, "{s}");
    assert!(num(&s, &["events", "neigh_queue_sent"]) >= 2, "{s}");
    assert_eq!(num(&s, &["drops", "neigh_timeout"]), 0, "{s}");
    assert_eq!(num(&s, &["drops", "neigh_queue_full"]), 0, "{s}");
    Ok(())
}
