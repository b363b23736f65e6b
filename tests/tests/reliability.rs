//! Reliability in the lab (issue #7, items 4, 5, 7 and 9; docs/reliability.md): a SYN flood
//! against a ClusterIP with a small conntrack table while established flows carry data, with
//! and without the flood guard; the first datagrams of one UDP flow racing through two
//! workers; a stalled worker; invalid API requests under traffic; pod source validation.
//! Each test prints its figures (`--nocapture` shows them).
//!
//! ```text
//!   pod  10.20.9.60 ──┐                 ┌── gw ── ext 10.186.200.10 (backends :8080 tcp,
//!   pod2 10.20.9.41 ──┤ node (afgate) ──┘                            :5353 udp)
//! ```

use afgate_tests::capture::Capture;
use afgate_tests::lab::{Lab, NodeLab};
use afgate_tests::peer;
use afgate_tests::ping::{parse_ping, ping};
use afgate_tests::process::Afgate;
use afgate_tests::rel_lab::{
    api_raw, ctl_json, final_stats, num, stall_thread, stress, stress_result, u64s, worker_tid,
    xps_one_cpu_per_queue,
};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VIP: &str = "10.96.10.1";
const DNS_VIP: &str = "10.96.0.10";

/// Starts afgate on the lab's config with `cores` workers plus `extra` YAML; returns it and
/// its API socket.
fn start(lab: &NodeLab, workers: usize, extra: &str) -> Result<(Afgate, PathBuf)> {
    let cores: Vec<String> = (0..workers).map(|c| c.to_string()).collect();
    let yaml = lab
        .afgate_config_yaml()
        .replace("cores: [0]", &format!("cores: [{}]", cores.join(", ")))
        + extra;
    let path = lab.lab.tmp().join("afgate.yaml");
    std::fs::write(&path, yaml)?;
    let api = lab.lab.tmp().join("afgate.sock");
    let afgate = Afgate::start(&lab.node, &path)?;
    Ok((afgate, api))
}

fn stats(api: &std::path::Path) -> Result<Value> {
    ctl_json(api, &["stats"])
}

/// Frames received per worker (worker i serves queue i of every port), from live stats.
fn worker_rx(s: &Value) -> Vec<u64> {
    let mut per = Vec::new();
    for port in s["ports"].as_object().into_iter().flat_map(|m| m.values()) {
        for q in port["queues"].as_array().into_iter().flatten() {
            let i = num(q, &["queue"]) as usize;
            if per.len() <= i {
                per.resize(i + 1, 0);
            }
            per[i] += num(q, &["rx_packets"]);
        }
    }
    per
}

/// Each worker's free-frame gauge, from live stats.
fn free_frames(s: &Value) -> Vec<u64> {
    s["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| num(w, &["free_frames"]))
        .collect()
}

fn web_service(ext: &str) -> String {
    format!(
        "services:\n  - {{ name: web, cluster_ip: {VIP}, port: 80, target_port: 8080, backends: [{{ addr: {ext}, local: false }}] }}\n  - {{ name: dns, cluster_ip: {DNS_VIP}, port: 53, protocol: udp, target_port: 5353, backends: [{{ addr: {ext}, local: false }}] }}\n"
    )
}

/// One flood run: established flows first, then the flood, with the table sampled while it
/// runs. Returns (final stats, the established flows' result, the largest entry count seen,
/// the flood's figures, new connections made during the flood).
struct FloodRun {
    stats: Value,
    held: Value,
    max_entries: u64,
    capacity: u64,
    flood: Value,
    new_conns: Option<peer::ConnsResult>,
}

const CT_CAPACITY: u32 = 4096;
const HELD_CONNS: u32 = 16;

fn flood_run(extra: &str) -> Result<FloodRun> {
    let lab = Lab::node_lab()?;
    let ext = lab.addrs.ext_ip.to_string();
    let (mut afgate, api) = start(
        &lab,
        1,
        &format!(
            "{}conntrack: {{ capacity: {CT_CAPACITY} }}\n{extra}",
            web_service(&ext)
        ),
    )?;
    let _server = peer::tcp_server(&lab.ext.ns, &format!("{ext}:8080"), "b1", 50)?;
    // Established flows: connected before the flood, exchanging a line every 100 ms on each
    // connection for 14 s, across the whole flood.
    let held = stress(
        &lab.pod.ns,
        &[
            "tcp-hold",
            "--connect",
            &format!("{VIP}:80"),
            "--conns",
            &HELD_CONNS.to_string(),
            "--secs",
            "14",
            "--interval-ms",
            "100",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    // Random sources from 172.16.0.0/12: the backend's SYN-ACKs to them die at the gateway
    // (no route), so only the flood's SYNs cross afgate, as in a spoofed-source attack.
    let flood = stress(
        &lab.pod.ns,
        &[
            "syn-flood",
            "--dev",
            &lab.pod.dev,
            "--src-mac",
            &lab.pod.mac.to_string(),
            "--dst-mac",
            &lab.ports.pod60.mac.to_string(),
            "--dst",
            &format!("{VIP}:80"),
            "--src-net",
            "172.16.0.0/12",
            "--count",
            "2000000",
            "--secs",
            "6",
        ],
    )?;
    let begun = Instant::now();
    let mut max_entries = 0;
    let mut capacity = 0;
    let mut new_conns = None;
    while begun.elapsed() < Duration::from_secs(7) {
        let c = ctl_json(&api, &["conntrack", "count"])?;
        max_entries = max_entries.max(num(&c, &["entries"]));
        capacity = num(&c, &["capacity"]);
        if new_conns.is_none() && begun.elapsed() > Duration::from_secs(2) {
            // New connections in the middle of the flood.
            new_conns = Some(peer::tcp_conns(&lab.pod.ns, &format!("{VIP}:80"), 10, 20)?);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let flood = stress_result(flood, Duration::from_secs(20))?;
    let held = stress_result(held, Duration::from_secs(40))?;
    let c = ctl_json(&api, &["conntrack", "count"])?;
    max_entries = max_entries.max(num(&c, &["entries"]));
    afgate.stop()?;
    let stats = final_stats(&afgate.log())?;
    Ok(FloodRun {
        stats,
        held,
        max_entries,
        capacity,
        flood,
        new_conns,
    })
}

fn check_held(r: &FloodRun, label: &str) {
    let per_conn = u64s(&r.held["per_conn"]);
    let rounds = num(&r.held, &["rounds"]);
    assert_eq!(per_conn.len(), HELD_CONNS as usize, "{label}: {}", r.held);
    assert!(
        r.held["failed"].as_array().is_some_and(Vec::is_empty),
        "{label}: an established flow was lost: {}",
        r.held
    );
    // Every flow kept exchanging data through the flood: each answered every round.
    assert!(
        per_conn.iter().all(|&n| n == rounds && n >= 20),
        "{label}: {}",
        r.held
    );
}

#[test]
fn syn_flood_keeps_established_flows_and_the_table_bounded() -> Result<()> {
    // Without the guard: the table fills, early drop evicts unreplied flood entries only.
    let plain = flood_run("")?;
    let s = &plain.stats;
    println!(
        "syn flood, no guard: flood {} | afgate rx on pod60 {} | table max {} of {} | early_drops {} full_drops {} inserts {} | drops conntrack_full {} | held {} conns x {} rounds, failed {} | new conns during flood {:?}",
        plain.flood,
        num(s, &["ports", "pod60", "rx_packets"]),
        plain.max_entries,
        plain.capacity,
        num(s, &["conntrack", "early_drops"]),
        num(s, &["conntrack", "full_drops"]),
        num(s, &["conntrack", "inserts"]),
        num(s, &["drops", "conntrack_full"]),
        HELD_CONNS,
        num(&plain.held, &["rounds"]),
        plain.held["failed"],
        plain.new_conns,
    );
    assert_eq!(plain.capacity, u64::from(CT_CAPACITY));
    assert!(
        plain.max_entries <= plain.capacity,
        "table over capacity: {} > {}",
        plain.max_entries,
        plain.capacity
    );
    assert!(
        num(s, &["conntrack", "early_drops"]) > 0,
        "the flood filled the table: {s}"
    );
    assert!(num(&plain.flood, &["sent"]) > u64::from(CT_CAPACITY) * 4);
    check_held(&plain, "no guard");

    // With the guard: above 500 new flows/s the flood goes untracked, by Maglev; the table
    // stays small and new connections made during the flood still work (their replies are
    // un-DNATed statelessly when they were not tracked).
    let guarded = flood_run("reliability:\n  flood_guard: { new_flows_per_sec: 500 }\n")?;
    let g = &guarded.stats;
    println!(
        "syn flood, guard at 500/s: flood {} | afgate rx on pod60 {} | table max {} of {} | flood_guard_untracked {} flood_guard_reply {} | early_drops {} inserts {} | held {} conns x {} rounds, failed {} | new conns during flood {:?}",
        guarded.flood,
        num(g, &["ports", "pod60", "rx_packets"]),
        guarded.max_entries,
        guarded.capacity,
        num(g, &["events", "flood_guard_untracked"]),
        num(g, &["events", "flood_guard_reply"]),
        num(g, &["conntrack", "early_drops"]),
        num(g, &["conntrack", "inserts"]),
        HELD_CONNS,
        num(&guarded.held, &["rounds"]),
        guarded.held["failed"],
        guarded.new_conns,
    );
    assert!(
        num(g, &["events", "flood_guard_untracked"]) > u64::from(CT_CAPACITY),
        "the guard engaged: {g}"
    );
    assert!(guarded.max_entries <= guarded.capacity);
    check_held(&guarded, "guard");
    // New connections during the flood: some SYNs are lost in the overloaded rx ring (as
    // without the guard), but those that cross complete their handshake, so the SYN-ACKs of
    // untracked flows were un-DNATed statelessly back to the VIP.
    let nc = guarded.new_conns.as_ref().context("new conns")?;
    let ok: u64 = nc.ids.values().sum();
    assert!(ok >= 3, "new connections during the guarded flood: {nc:?}");
    assert!(num(g, &["events", "flood_guard_reply"]) > 0, "{g}");
    Ok(())
}

#[test]
fn udp_first_datagrams_racing_on_two_workers_make_one_entry() -> Result<()> {
    let lab = Lab::node_lab_with(|b| b.queues(2))?;
    let ext = lab.addrs.ext_ip.to_string();
    // Each CPU sends by its own tx queue of the pod's veth, so the racing threads (pinned to
    // both CPUs) hand their datagrams to both of afgate's rx queues, i.e. both workers.
    xps_one_cpu_per_queue(&lab.pod.ns, &lab.pod.dev, 2)?;
    let (mut afgate, api) = start(&lab, 2, &web_service(&ext))?;
    let server = peer::udp_server(&lab.ext.ns, &format!("{ext}:5353"), "dns", 50)?;
    let (threads, rounds) = (8u64, 200u64);
    let race = stress(
        &lab.pod.ns,
        &[
            "udp-race",
            "--connect",
            &format!("{DNS_VIP}:53"),
            "--threads",
            &threads.to_string(),
            "--rounds",
            &rounds.to_string(),
            "--timeout-ms",
            "2000",
        ],
    )?;
    let r = stress_result(race, Duration::from_secs(150))?;
    let entries = ctl_json(
        &api,
        &["conntrack", "list", "-p", "udp", "--limit", "100000"],
    )?;
    let s = ctl_json(&api, &["conntrack", "count"])?;
    let backend_got = peer::accepted_clients(&server).len();
    drop(server);
    afgate.stop()?;

    // Entries per client port (the original tuple's source port).
    let mut per_port: BTreeMap<u64, u64> = BTreeMap::new();
    for e in entries["entries"].as_array().context("entries")? {
        if e["orig"]["dst"] == DNS_VIP {
            *per_port.entry(num(e, &["orig", "sport"])).or_default() += 1;
        }
    }
    let rounds_v = r["per_round"].as_array().context("per_round")?;
    let mut one_entry = 0;
    let mut bad = Vec::new();
    for round in rounds_v {
        let v = u64s(round);
        let (port, sent, replies) = (v[0], v[1], v[2]);
        let n = per_port.get(&port).copied().unwrap_or(0);
        if n == 1 && sent == threads && replies == sent {
            one_entry += 1;
        } else {
            bad.push((port, sent, replies, n));
        }
    }
    let fin = final_stats(&afgate.log())?;
    println!(
        "udp race: {rounds} rounds x {threads} threads: sent {} backend received {backend_got} replies {} | rounds with exactly one entry and every reply: {one_entry} | conntrack inserts {} insert_races {} | per-worker rx {:?} | bad rounds {bad:?}",
        r["sent"],
        r["replies"],
        num(&s, &["inserts"]),
        num(&s, &["insert_races"]),
        u64s(&fin["worker_rx_packets"]),
    );
    assert_eq!(num(&r, &["sent"]), threads * rounds, "{r}");
    // One insert per round: every other first datagram found the entry (a race or a hit).
    assert_eq!(num(&s, &["inserts"]), rounds, "{s}");
    assert!(
        bad.is_empty(),
        "rounds that lost a datagram or tracked it twice: {bad:?}"
    );
    // The backend saw every datagram.
    assert_eq!(backend_got, (threads * rounds) as usize);
    let workers = u64s(&fin["worker_rx_packets"]);
    assert!(
        workers.len() == 2 && workers.iter().all(|&n| n > 0),
        "both workers received: {workers:?}"
    );
    Ok(())
}

#[test]
fn a_stalled_worker_stops_only_its_queues_and_leaks_nothing() -> Result<()> {
    let lab = Lab::node_lab_with(|b| b.queues(2))?;
    let ext = lab.addrs.ext_ip.to_string();
    let (mut afgate, api) = start(&lab, 2, &web_service(&ext))?;
    let server = peer::udp_server(&lab.ext.ns, &format!("{ext}:5353"), "u", 50)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_free = free_frames(&stats(&api)?);
    // 16 flows straight to ext (no NAT), a datagram each every 20 ms for 10 s: connected
    // sockets hash onto both tx queues, so both workers carry some.
    let flows = stress(
        &lab.pod.ns,
        &[
            "udp-flows",
            "--connect",
            &format!("{ext}:5353"),
            "--flows",
            "16",
            "--secs",
            "10",
            "--interval-ms",
            "20",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(2500));
    let tid = worker_tid(afgate.pid(), 1)?;
    let stall = Duration::from_secs(3);
    let staller = std::thread::spawn(move || stall_thread(tid, stall));
    // Both samples well inside the stall, even if a `ctl` call is slow on a loaded machine.
    std::thread::sleep(Duration::from_millis(400));
    let a = stats(&api)?;
    std::thread::sleep(Duration::from_millis(1500));
    let b = stats(&api)?;
    let stalled_for = staller
        .join()
        .map_err(|_| anyhow::anyhow!("staller panicked"))??;
    let during: Vec<i64> = worker_rx(&b)
        .iter()
        .zip(worker_rx(&a))
        .map(|(b, a)| *b as i64 - a as i64)
        .collect();
    let f = stress_result(flows, Duration::from_secs(30))?;
    let after = stats(&api)?;
    let since: Vec<i64> = worker_rx(&after)
        .iter()
        .zip(worker_rx(&b))
        .map(|(x, b)| *x as i64 - b as i64)
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let end_free = free_frames(&stats(&api)?);
    drop(server);
    afgate.stop()?;
    let sent: u64 = u64s(&f["sent"]).iter().sum();
    let got = u64s(&f["received"]);
    let received: u64 = got.iter().sum();
    println!(
        "worker stall: worker 1 stopped {stalled_for:?}; rx per worker in 1.5 s of the stall {during:?}; after it {since:?}; udp flows sent {sent} received {received} (per flow {got:?}); free frames idle {idle_free:?} → after {end_free:?}"
    );
    assert_eq!(during.len(), 2);
    assert!(during[0] > 20, "worker 0 kept forwarding: {during:?}");
    assert_eq!(during[1], 0, "worker 1 was stopped: {during:?}");
    assert!(since[1] > 0, "worker 1 resumed: {since:?}");
    // Flows served by worker 0 alone lost nothing; no flow lost more than the stall's share.
    assert!(got.iter().all(|&n| n > 0), "{got:?}");
    assert!(received * 10 >= sent * 6, "{received} of {sent}");
    assert_eq!(idle_free, end_free, "frames leaked");
    Ok(())
}

#[test]
fn invalid_api_requests_leave_forwarding_untouched() -> Result<()> {
    let lab = Lab::node_lab()?;
    let ext = lab.addrs.ext_ip.to_string();
    let (mut afgate, api) = start(&lab, 1, "")?;
    let gen0 = ctl_json(&api, &["status"])?["generation"].clone();
    let routes0 = ctl_json(&api, &["route", "list"])?;
    let bg = lab
        .pod
        .ns
        .spawn(&["ping", "-n", "-c", "20", "-i", "0.2", "-W", "1", &ext])?;
    std::thread::sleep(Duration::from_millis(600));
    let huge = vec![b'x'; 2 << 20];
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"garbage".to_vec()),
        ("not an object", b"[1,2,3]".to_vec()),
        ("op not a string", br#"{"op":42}"#.to_vec()),
        ("unknown op", br#"{"op":"no_such_op"}"#.to_vec()),
        ("missing fields", br#"{"op":"route_add"}"#.to_vec()),
        ("not utf-8", b"\xff\xfe\xfd".to_vec()),
        ("over the size limit", huge),
    ];
    let mut refused = 0;
    for (what, line) in &bad {
        let r = api_raw(&api, line).with_context(|| what.to_string())?;
        assert_eq!(r["ok"], false, "{what}: {r}");
        refused += 1;
    }
    // Well-formed requests that name things that do not exist.
    for args in [
        &["route", "add", "10.99.0.0/16", "dev", "nosuchport"][..],
        &["route", "del", "10.98.0.0/16"][..],
    ] {
        assert!(ctl_json(&api, args).is_err(), "{args:?} was accepted");
        refused += 1;
    }
    assert_eq!(ctl_json(&api, &["status"])?["generation"], gen0);
    assert_eq!(ctl_json(&api, &["route", "list"])?, routes0);
    let out = bg.finish(Duration::from_secs(20))?;
    let p = parse_ping(&String::from_utf8_lossy(&out.stdout)).context("ping")?;
    println!(
        "invalid API requests: {refused} refused, generation unchanged; ping across them {}/{}",
        p.received, p.sent
    );
    assert_eq!((p.sent, p.received), (20, 20), "no loss");
    assert!(afgate.is_running());
    Ok(())
}

#[test]
fn antispoof_drops_a_pod_sending_with_another_pods_address() -> Result<()> {
    let lab = Lab::node_lab()?;
    let ext = lab.addrs.ext_ip.to_string();
    let pod2 = lab.addrs.pod2_ip.to_string();
    // pod60 validated (allowed: its route, 10.20.9.60/32); pod41 not.
    let (mut afgate, api) = start(
        &lab,
        1,
        "reliability:\n  antispoof:\n    - { port: pod60 }\n",
    )?;
    let legit = ping(&lab.pod.ns, &ext, 5, Duration::from_secs(2))?;
    // The pod takes pod2's address and sends with it.
    lab.pod
        .ns
        .ip(&["addr", "add", &format!("{pod2}/32"), "dev", &lab.pod.dev])?;
    let cap = Capture::start(
        &lab.ext.ns,
        &lab.ext.dev,
        &format!("icmp and src host {pod2}"),
        10,
        6,
    )?;
    let before = num(&stats(&api)?, &["drops", "spoofed_source"]);
    let out = lab.pod.ns.exec(&[
        "ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "-I", &pod2, &ext,
    ])?;
    let spoofed = parse_ping(&String::from_utf8_lossy(&out.stdout)).context("ping")?;
    let after = num(&stats(&api)?, &["drops", "spoofed_source"]);
    let seen = cap.stop()?;
    // pod2 itself, from its own port, is unaffected.
    let real_pod2 = ping(&lab.pod2.ns, &ext, 3, Duration::from_secs(2))?;
    afgate.stop()?;
    println!(
        "antispoof: legit ping {}/{}; spoofed ping {}/{} with {} frames at ext; spoofed_source +{}; pod2's own ping {}/{}",
        legit.received,
        legit.sent,
        spoofed.received,
        spoofed.sent,
        seen.len(),
        after - before,
        real_pod2.received,
        real_pod2.sent
    );
    assert_eq!((legit.sent, legit.received), (5, 5));
    assert_eq!(spoofed.received, 0);
    assert!(seen.is_empty(), "spoofed frames reached ext: {seen:?}");
    assert!(after - before >= 5, "{before} → {after}");
    assert_eq!((real_pod2.sent, real_pod2.received), (3, 3));
    Ok(())
}
