//! The fast path in the lab: a pod pings and talks TCP through afgate to a host behind the
//! gateway; the far side's capture and afgate's counters say afgate did the forwarding (the
//! node kernel's own forwarding counter does not move); stopping afgate detaches XDP, and
//! SIGKILL leaves no black hole.

use afgate_tests::capture::{self, Capture};
use afgate_tests::lab::NodeLab;
use afgate_tests::netns::Netns;
use afgate_tests::peer;
use afgate_tests::ping::ping;
use afgate_tests::process::Afgate;
use anyhow::{Context, Result};
use std::time::Duration;

/// The node kernel's count of datagrams it forwarded itself (`Ip: ForwDatagrams`).
fn kernel_forwarded(ns: &Netns) -> Result<u64> {
    let snmp = ns.exec_ok(&["cat", "/proc/net/snmp"])?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (
        lines.next().context("Ip header")?,
        lines.next().context("Ip values")?,
    );
    let idx = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .context("ForwDatagrams")?;
    Ok(values
        .split_whitespace()
        .nth(idx)
        .context("value")?
        .parse()?)
}

/// XDP programs attached in `ns`, as `ip -o link` shows them.
fn xdp_links(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.exec_ok(&["ip", "-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter(|l| l.contains(" xdp"))
        .map(|l| l.to_string())
        .collect())
}

/// Parses the `afgate: final-stats {json}` line afgate prints when it stops.
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
fn ping_and_tcp_cross_afgate_not_the_kernel() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab()?;
    let cfg = lab.afgate_config_file()?;
    let mut afgate = Afgate::start(&lab.node, &cfg)?;
    let fwd_before = kernel_forwarded(&lab.node)?;

    // What arrives at ext: from the pod, TTL 64 - afgate - gw = 62.
    let cap = Capture::start(&lab.ext.ns, &lab.ext.dev, "icmp", 10, 15)?;
    let biz_cap = Capture::start(&lab.gw.ns, &lab.gw.dev, "icmp", 10, 15)?;
    let p = ping(
        &lab.pod.ns,
        &lab.addrs.ext_ip.to_string(),
        5,
        Duration::from_secs(2),
    )?;
    assert_eq!(
        (p.sent, p.received),
        (5, 5),
        "pings through afgate; log:\n{}",
        afgate.log()
    );
    assert_eq!(p.ttl, Some(62), "reply crossed gw and afgate");
    let seen = cap.stop()?;
    let requests: Vec<_> = seen.iter().filter(|l| l.contains("echo request")).collect();
    assert_eq!(requests.len(), 5, "{seen:#?}");
    for l in &requests {
        assert!(
            l.contains(&format!("{} > {}", lab.addrs.pod_ip, lab.addrs.ext_ip)),
            "{l}"
        );
        assert_eq!(capture::ttl(l), Some(62), "{l}");
    }
    // On the biz wire the frames come from the node port's MAC (afgate's rewrite), TTL 63.
    let biz_seen = biz_cap.stop()?;
    let biz_req: Vec<_> = biz_seen
        .iter()
        .filter(|l| l.contains("echo request"))
        .collect();
    assert_eq!(biz_req.len(), 5, "{biz_seen:#?}");
    for l in &biz_req {
        let (src, dst) = capture::macs(l).context("macs")?;
        assert_eq!(src, lab.ports.biz.mac, "{l}");
        assert_eq!(dst, lab.ports.biz.peer_mac, "{l}");
        assert_eq!(capture::ttl(l), Some(63), "{l}");
    }

    // TCP with the kernel's own stacks at both ends.
    let c = tcp_pod_to_ext(&lab)?;
    assert_eq!(
        c.reply.client_ip(),
        lab.addrs.pod_ip.to_string(),
        "server saw the pod's address"
    );

    // The pod's gateway MAC came from (proxy) ARP for 169.254.1.1 = the pod60 port's MAC.
    let neigh = lab
        .pod
        .ns
        .exec_ok(&["ip", "neigh", "show", "169.254.1.1"])?;
    assert!(neigh.contains(&lab.ports.pod60.mac.to_string()), "{neigh}");

    let fwd_after = kernel_forwarded(&lab.node)?;
    afgate.stop()?;
    let log = afgate.log();
    assert_eq!(
        fwd_after, fwd_before,
        "the node kernel forwarded nothing while afgate ran"
    );
    let s = final_stats(&log)?;
    // 5 echo requests + TCP segments went pod60 → biz, replies biz → pod60.
    assert!(num(&s, &["ports", "pod60", "rx_packets"]) >= 5 + 100, "{s}");
    assert!(num(&s, &["ports", "biz", "tx_packets"]) >= 5 + 100, "{s}");
    assert!(num(&s, &["ports", "pod60", "tx_packets"]) >= 5 + 10, "{s}");
    assert!(num(&s, &["events", "proxy_arp_reply"]) >= 1, "{s}");
    // Stopping detached every program.
    assert!(log.contains("detached XDP from 3 of 3 port(s)"), "{log}");
    assert_eq!(xdp_links(&lab.node)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn node_address_answers_ping_and_ttl_expiry_answers_time_exceeded() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab()?;
    let cfg = lab.afgate_config_file()?;
    let mut afgate = Afgate::start(&lab.node, &cfg)?;
    let p = ping(
        &lab.gw.ns,
        &lab.addrs.biz_ip.to_string(),
        3,
        Duration::from_secs(2),
    )?;
    assert_eq!(p.received, 3);
    // TTL 1 from the pod expires at afgate, which answers from the pod gateway address.
    let out = lab.pod.ns.exec(&[
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "2",
        "-t",
        "1",
        &lab.addrs.ext_ip.to_string(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From 169.254.1.1") && text.contains("Time to live exceeded"),
        "{text}"
    );
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "icmp_echo_reply"]) >= 3, "{s}");
    assert_eq!(num(&s, &["events", "icmp_time_exceeded_sent"]), 1, "{s}");
    assert_eq!(num(&s, &["drops", "ttl_exceeded"]), 1, "{s}");
    Ok(())
}

#[test]
fn sigkill_fails_open_and_a_restart_takes_over() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab()?;
    let cfg = lab.afgate_config_file()?;
    let ext = lab.addrs.ext_ip.to_string();
    let mut afgate = Afgate::start(&lab.node, &cfg)?;
    assert_eq!(
        ping(&lab.pod.ns, &ext, 2, Duration::from_secs(2))?.received,
        2
    );
    afgate.kill()?;
    // The programs stay attached with no socket behind them: XDP_PASS hands every frame to
    // the kernel, which forwards as it did before afgate.
    assert_eq!(xdp_links(&lab.node)?.len(), 3, "programs left in place");
    let before = kernel_forwarded(&lab.node)?;
    let p = ping(&lab.pod.ns, &ext, 5, Duration::from_secs(2))?;
    assert_eq!(p.received, 5, "no black hole after SIGKILL");
    assert!(
        kernel_forwarded(&lab.node)? >= before + 10,
        "the kernel forwarded them"
    );

    // A new afgate replaces the stale programs and forwards again.
    let mut again = Afgate::start(&lab.node, &cfg)?;
    assert!(
        again.log().contains("replaced a stale program"),
        "{}",
        again.log()
    );
    let before = kernel_forwarded(&lab.node)?;
    assert_eq!(
        ping(&lab.pod.ns, &ext, 3, Duration::from_secs(2))?.received,
        3
    );
    assert_eq!(
        kernel_forwarded(&lab.node)?,
        before,
        "afgate forwards again"
    );
    again.stop()?;
    assert_eq!(xdp_links(&lab.node)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn resolves_neighbours_by_arp_without_static_entries() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab()?;
    let yaml = lab.lab.tmp().join("no-neigh.yaml");
    let text = lab.afgate_config_yaml();
    let text = text
        .split("neighbors:")
        .next()
        .context("config has a neighbors section")?;
    std::fs::write(&yaml, text)?;
    let mut afgate = Afgate::start(&lab.node, &yaml)?;
    // The first packet to an unknown neighbour becomes an ARP request; ping's next ones pass.
    let p = ping(
        &lab.pod.ns,
        &lab.addrs.ext_ip.to_string(),
        6,
        Duration::from_secs(2),
    )?;
    assert!(p.received >= 4, "{p:?}\n{}", afgate.log());
    let c = peer::tcp_client(&lab.pod2.ns, &format!("{}:9", lab.addrs.ext_ip), 0, 3);
    drop(c); // no server: only the ARP for pod2 matters, learned from its gateway query
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "arp_request_sent"]) >= 1, "{s}");
    assert!(num(&s, &["events", "arp_learned"]) >= 2, "{s}");
    Ok(())
}

#[test]
fn two_workers_each_serve_a_queue_of_every_port() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab_with(|b| b.queues(2))?;
    let yaml = lab.lab.tmp().join("two-workers.yaml");
    std::fs::write(
        &yaml,
        lab.afgate_config_yaml()
            .replace("cores: [0]", "cores: [0, 1]"),
    )?;
    let mut afgate = Afgate::start(&lab.node, &yaml)?;
    assert!(
        afgate.log().contains("0→worker 0, 1→worker 1"),
        "{}",
        afgate.log()
    );
    let server = peer::tcp_server(
        &lab.ext.ns,
        &format!("{}:8080", lab.addrs.ext_ip),
        "ext",
        30,
    )?;
    // Distinct source ports hash to both tx queues of the pod's veth, so both workers see traffic.
    let r = peer::tcp_conns(&lab.pod.ns, &format!("{}:8080", lab.addrs.ext_ip), 24, 20)?;
    assert_eq!(r.failed, 0, "{r:?}");
    drop(server);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    let per_worker: Vec<u64> = s["worker_rx_packets"]
        .as_array()
        .context("workers")?
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per_worker.len(), 2, "{s}");
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers forwarded: {per_worker:?}"
    );
    Ok(())
}

/// 200 kB from the pod to an echo server on ext, through afgate, echoed back intact.
fn tcp_pod_to_ext(lab: &NodeLab) -> Result<peer::TcpClientResult> {
    let addr = format!("{}:8080", lab.addrs.ext_ip);
    let _server = peer::tcp_server(&lab.ext.ns, &addr, "ext", 20)?;
    let c = peer::tcp_client(&lab.pod.ns, &addr, 200_000, 10)?;
    assert!(c.echoed, "payload echoed intact: {}", c.stdout);
    Ok(c)
}

/// The scheduling policy and real-time priority of afgate's thread named `name`
/// (/proc/PID/task/TID/stat fields 41 and 40).
fn thread_sched(pid: u32, name: &str) -> Result<(u32, u32)> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        if std::fs::read_to_string(dir.join("comm"))?.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // Fields after the parenthesised command name, which may itself contain spaces.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state), so field n is f[n - 3].
        return Ok((f[41 - 3].parse()?, f[40 - 3].parse()?));
    }
    anyhow::bail!("no thread {name} in process {pid}")
}

#[test]
fn real_time_worker_forwards_and_runs_under_sched_fifo() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab()?;
    let yaml =
        lab.afgate_config_yaml()
            .replacen("poll: adaptive", "poll: wakeup\n  rt_priority: 5", 1);
    assert!(yaml.contains("rt_priority: 5"), "{yaml}");
    let cfg = lab.lab.tmp().join("afgate-rt.yaml");
    std::fs::write(&cfg, yaml)?;
    let mut afgate = Afgate::start(&lab.node, &cfg)?;
    // SCHED_FIFO is policy 1; the control thread stays under the normal scheduler (0).
    assert_eq!(thread_sched(afgate.pid(), "afgate-w0")?, (1, 5));
    assert_eq!(thread_sched(afgate.pid(), "afgate")?.0, 0);

    let p = ping(
        &lab.pod.ns,
        &lab.addrs.ext_ip.to_string(),
        5,
        Duration::from_secs(2),
    )?;
    assert_eq!((p.sent, p.received), (5, 5), "log:\n{}", afgate.log());
    tcp_pod_to_ext(&lab)?;
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["ports", "biz", "tx_packets"]) >= 5 + 100, "{s}");
    // The kernel's socket statistics are copied into the port counters (zero here: the
    // worker keeps up with a ping and one TCP stream).
    assert_eq!(num(&s, &["ports", "pod60", "xsk_fill_empty"]), 0, "{s}");
    assert!(s["ports"]["pod60"].get("xsk_rx_ring_full").is_some(), "{s}");
    Ok(())
}
