//! Neighbours afgate looks after itself, in the node lab: gratuitous ARP for the node's
//! addresses when it starts (the gateway learns the node without asking), and aging of
//! learned entries with short timeouts (a neighbour in use is re-ARPed with a unicast
//! request and stays; one no one sends to expires).

use afgate_tests::Mac;
use afgate_tests::capture::{self, Capture};
use afgate_tests::lab::{Lab, NodeLab};
use afgate_tests::ping::ping;
use afgate_tests::process::{Afgate, Proc, afgate_bin};
use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};

/// `afgate ctl --api SOCK neigh list` (answers within seconds; bounded anyway).
fn neigh_list(lab: &NodeLab, afgate: &Afgate) -> Result<String> {
    let bin = afgate_bin();
    let api = lab.lab.tmp().join("afgate.sock");
    let argv = [
        bin.to_str().context("utf-8")?,
        "ctl",
        "--api",
        api.to_str().context("utf-8")?,
        "neigh",
        "list",
    ];
    let out = Proc::spawn(&argv, false)?.finish(Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "afgate ctl neigh failed: {}\nafgate log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            afgate.log()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn gratuitous_arp_at_start_teaches_the_gateway() -> Result<()> {
    // Linux creates entries from gratuitous ARP only with arp_accept (a ToR gateway that
    // wants fast failover has it); without it, it would only update an existing entry.
    let lab = Lab::node_lab_with(|b| b.sysctl(NodeLab::GW, "net.ipv4.conf.eth0.arp_accept", "1"))?;
    let gw = &lab.gw;
    gw.ns.exec_ok(&["ip", "neigh", "flush", "dev", &gw.dev])?;
    let biz_ip = lab.addrs.biz_ip.to_string();
    let before = gw.ns.exec_ok(&["ip", "neigh", "show", &biz_ip])?;
    assert!(
        before.trim().is_empty(),
        "gw knows the node already: {before}"
    );

    let cap = Capture::start(&gw.ns, &gw.dev, "arp", 20, 15)?;
    let cfg = lab.afgate_config_file()?;
    let mut afgate = Afgate::start(&lab.node, &cfg)?;
    // Injected right after `ready`; give the worker and the wire a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut neigh = String::new();
    while Instant::now() < deadline {
        neigh = gw.ns.exec_ok(&["ip", "neigh", "show", &biz_ip])?;
        if neigh.contains(&lab.ports.biz.mac.to_string()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = cap.stop()?;
    afgate.stop()?;
    let log = afgate.log();

    let garp: Vec<_> = seen
        .iter()
        .filter(|l| l.contains(&format!("Request who-has {biz_ip} tell {biz_ip}")))
        .collect();
    assert_eq!(garp.len(), 1, "one announcement on biz: {seen:#?}\n{log}");
    let (src, dst) = capture::macs(garp[0]).context("macs")?;
    assert_eq!(src, lab.ports.biz.mac, "{}", garp[0]);
    assert_eq!(dst, Mac([0xff; 6]), "broadcast: {}", garp[0]);
    assert!(
        !seen
            .iter()
            .any(|l| l.contains(&format!("who-has {biz_ip} tell {}", lab.addrs.gw_ip))),
        "gw did not have to ask: {seen:#?}"
    );
    assert!(
        neigh.contains(&lab.ports.biz.mac.to_string()),
        "gw learned the node from the announcement: {neigh:?}\n{log}"
    );
    assert!(
        log.contains(&format!("gratuitous ARP sent for {biz_ip}")),
        "{log}"
    );
    // Frames were injected by the worker (and, with no address, the pod ports sent none).
    let stats = log
        .lines()
        .find_map(|l| l.strip_prefix("afgate: final-stats "))
        .context("final-stats")?;
    let s: serde_json::Value = serde_json::from_str(stats)?;
    assert_eq!(s["events"]["frames_injected"].as_u64(), Some(1), "{s}");
    Ok(())
}

#[test]
fn used_neighbours_are_refreshed_unused_ones_expire() -> Result<()> {
    let lab = Lab::node_lab()?;
    // The pods are learned from their ARP for 169.254.1.1 instead of configured, and age
    // in seconds instead of minutes.
    let pod_ip = lab.addrs.pod_ip.to_string();
    let pod2_ip = lab.addrs.pod2_ip.to_string();
    let yaml: String = lab
        .afgate_config_yaml()
        .lines()
        .filter(|l| {
            !l.contains(&format!("ip: {pod_ip},")) && !l.contains(&format!("ip: {pod2_ip},"))
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + "neighbors_aging: { refresh_s: 2, expire_s: 6 }\n";
    let cfg = lab.lab.tmp().join("afgate.yaml");
    std::fs::write(&cfg, &yaml)?;

    let cap = Capture::start(&lab.pod.ns, &lab.pod.dev, "arp", 60, 25)?;
    let mut afgate = Afgate::start(&lab.node, &cfg)?;

    // pod2 talks once: learned, used for the reply, then never again.
    let p2 = ping(
        &lab.pod2.ns,
        &lab.addrs.gw_ip.to_string(),
        1,
        Duration::from_secs(2),
    )?;
    assert_eq!(p2.received, 1, "pod2 reaches gw; log:\n{}", afgate.log());
    let pod2_done = Instant::now();
    let learned = neigh_list(&lab, &afgate)?;
    assert!(learned.contains(&pod2_ip), "pod2 learned: {learned}");

    // The pod talks all along (50 pings, 10 s): its entry goes stale every 2 s while in use.
    let pinger = {
        let ns = lab.pod.ns.clone();
        let ext = lab.addrs.ext_ip.to_string();
        std::thread::spawn(move || ping(&ns, &ext, 50, Duration::from_secs(2)))
    };
    // pod2's entry is removed 6-8 s after it was learned (whole seconds, 1 s ticks).
    std::thread::sleep(Duration::from_millis(8_500).saturating_sub(pod2_done.elapsed()));
    let aged = neigh_list(&lab, &afgate)?;
    let p = pinger.join().expect("pinger thread")?;
    let seen = cap.stop()?;
    afgate.stop()?;
    let log = afgate.log();

    assert!(
        !aged.contains(&pod2_ip),
        "unused pod2 expired: {aged}\n{log}"
    );
    assert!(
        aged.contains(&pod_ip),
        "the pod in use stayed: {aged}\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("afgate: neighbours expired:") && l.contains(&pod2_ip)),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("afgate: neighbours expired:") && l.contains(&pod_ip)),
        "the pod in use never expired: {log}"
    );
    assert!(
        p.received >= 49,
        "forwarding kept using the entry: {p:?}\n{log}"
    );
    // afgate's refresh: a unicast request from the pod port's MAC to the pod, from the pod
    // gateway address (pod ports have none of their own).
    let refresh: Vec<_> = seen
        .iter()
        .filter(|l| {
            l.contains(&format!(
                "Request who-has {pod_ip} tell {}",
                lab.addrs.pod_gw
            ))
        })
        .collect();
    assert!(
        refresh.len() >= 2,
        "refreshed every ~2-3 s: {seen:#?}\n{log}"
    );
    for l in &refresh {
        let (src, dst) = capture::macs(l).context("macs")?;
        assert_eq!(
            (src, dst),
            (lab.ports.pod60.mac, lab.pod.mac),
            "unicast: {l}"
        );
    }
    // ...answered, so the entry was confirmed rather than re-learned by a broadcast.
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("Reply {pod_ip} is-at"))
                && l.contains(&lab.pod.mac.to_string())),
        "{seen:#?}"
    );
    Ok(())
}
