//! Restart (upgrade) without losing flows (issue 7 item 8): established TCP flows through a
//! ClusterIP (DNAT to a local pod) and through a MASQUERADEd ClusterIP (DNAT to a host behind
//! the gateway plus SNAT to the node's biz address) keep exchanging while a second afgate
//! takes over from the first (`afgate run --takeover`: shared conntrack segment, handover
//! socket). A fixed-rate UDP probe through afgate measures the forwarding gap at the far end:
//! the largest receive gap overlapping the takeover; the largest elsewhere in the run (this
//! shared machine's scheduling noise) is printed beside it.
//!
//! ```text
//!   pod 10.20.9.60 ── clients ──► 10.96.10.1:80 ─DNAT─► pod2 10.20.9.41:8080 (echo)
//!                   ── clients ──► 10.96.10.5:80 ─DNAT+SNAT(10.186.153.103)─► gw ─► ext :8080 (echo)
//!                   ── probe 1000/s ─────────────────────────────────────────► ext :9999 (gap)
//! ```
//!
//! The node kernel is set up like a real node's: it forwards (ip_forward=1, the fail-open
//! path) and owns the biz address that SNAT uses. While neither afgate has sockets bound
//! (the gap), frames reaching that kernel would be forwarded un-NATed or answered with RST,
//! resetting exactly the flows a handover keeps; the new afgate therefore sets a hold in the
//! old steering programs (`restart.hold_ms`), which drops those frames instead (TCP
//! retransmits them). The frames it dropped (`held_drops`) are printed.
//!
//! The crash test still keeps the node kernel from forwarding: after a SIGKILL nothing holds,
//! the kernel gets the traffic (fail-open by design) until the next afgate forwards.

use afgate_tests::lab::{Lab, NodeLab};
use afgate_tests::process::{Afgate, Proc};
use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};

const LOCAL_VIP: &str = "10.96.10.1";
const SNAT_VIP: &str = "10.96.10.5";
/// Flows per service; 2 × 150 = 300 flows, so 99.9 % means every one.
const FLOWS: u32 = 150;
/// How long each client exchanges; the restart happens a few seconds in.
const RUN_SECS: u64 = 14;
const PROBE_RATE: u32 = 1000;
const MAX_GAP_MS: f64 = 200.0;
/// The servers' answer delay in the takeover test; with the clients' 50 ms pause, each flow
/// has a reply in flight 30 ms of every 80 ms.
const ECHO_DELAY_MS: &str = "30";

fn flows_bin() -> &'static str {
    env!("CARGO_BIN_EXE_afgate-flows")
}

fn spawn(ns: &afgate_tests::netns::Netns, args: &[&str]) -> Result<Proc> {
    let mut argv = vec![flows_bin()];
    argv.extend_from_slice(args);
    ns.spawn(&argv)
}

fn json_line(out: &str, what: &str) -> Result<serde_json::Value> {
    let l = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result: {out}"))?;
    Ok(serde_json::from_str(l)?)
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn config(lab: &NodeLab) -> Result<std::path::PathBuf> {
    let a = &lab.addrs;
    let state = lab.lab.tmp().join("conntrack.shm");
    let yaml = format!(
        "{}services:
  - {{ name: local, cluster_ip: {LOCAL_VIP}, port: 80, target_port: 8080, backends: [{{ addr: {pod2} }}] }}
  - {{ name: ext, cluster_ip: {SNAT_VIP}, port: 80, target_port: 8080, backends: [{{ addr: {ext}, local: false }}] }}
masquerade:
  - {{ src: {pod}/32, dst: {SNAT_VIP}/32 }}
conntrack:
  capacity: 65536
restart:
  state: {state}
",
        lab.afgate_config_yaml(),
        pod2 = a.pod2_ip,
        ext = a.ext_ip,
        pod = a.pod_ip,
        state = state.display(),
    );
    let path = lab.lab.tmp().join("afgate.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

#[test]
fn established_flows_survive_a_takeover() -> Result<()> {
    let lab = Lab::node_lab()?;
    // A real node: the kernel forwards and owns the SNAT address (module docs).
    lab.node.sysctl("net.ipv4.ip_forward", "1")?;
    let biz = lab
        .node
        .ip(&["-4", "-o", "addr", "show", "dev", &lab.ports.biz.dev])?;
    if !biz.contains("inet ") {
        bail!(
            "the node lab's biz port {} has no address: {biz}",
            lab.ports.biz.dev
        );
    }
    let cfg = config(&lab)?;
    let server_secs = (RUN_SECS + 40).to_string();
    let mut servers = Vec::new();
    for ns in [&lab.pod2.ns, &lab.ext.ns] {
        // Late answers keep replies on the wire at every moment, so the gap meets
        // server-to-client traffic too (what a forwarding kernel resets), not only requests.
        let mut s = spawn(
            ns,
            &[
                "echo-server",
                "--listen",
                "0.0.0.0:8080",
                "--secs",
                &server_secs,
                "--delay-ms",
                ECHO_DELAY_MS,
            ],
        )?;
        s.wait_for_stdout("listening", Duration::from_secs(10))?;
        servers.push(s);
    }
    let probe_secs = (RUN_SECS + 6).to_string();
    let mut probe_rx = spawn(
        &lab.ext.ns,
        &[
            "probe-recv",
            "--listen",
            "0.0.0.0:9999",
            "--secs",
            &probe_secs,
        ],
    )?;
    probe_rx.wait_for_stdout("listening", Duration::from_secs(10))?;

    let mut old = Afgate::start(&lab.node, &cfg)?;
    let count = FLOWS.to_string();
    let run = RUN_SECS.to_string();
    let mut clients = Vec::new();
    for vip in [LOCAL_VIP, SNAT_VIP] {
        let mut c = spawn(
            &lab.pod.ns,
            &[
                "clients",
                "--connect",
                &format!("{vip}:80"),
                "--count",
                &count,
                "--secs",
                &run,
                "--interval-ms",
                "50",
                "--timeout-ms",
                "5000",
            ],
        )?;
        c.wait_for_stdout("connected", Duration::from_secs(30))
            .with_context(|| format!("clients of {vip}"))?;
        if !c.stdout().contains("connected all") {
            bail!(
                "not every flow to {vip} connected before the restart: {}",
                c.output_tail()
            );
        }
        clients.push((vip, c));
    }
    // The probe starts after the clients so its gap is the restart's, not the flows' setup.
    let probe_tx = spawn(
        &lab.pod.ns,
        &[
            "probe-send",
            "--connect",
            &format!("{}:9999", lab.addrs.ext_ip),
            "--rate",
            &PROBE_RATE.to_string(),
            "--secs",
            &(RUN_SECS - 1).to_string(),
        ],
    )?;
    std::thread::sleep(Duration::from_secs(4));

    let t0 = Instant::now();
    let window_start = unix_ms();
    let mut new = Afgate::start_with(&lab.node, &cfg, &["--takeover"])?;
    let ready = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let window_end = unix_ms() + 100;
    let old_log = old.log();
    if old.is_running() {
        bail!("the old afgate did not exit after the handover:\n{old_log}");
    }

    let mut results = Vec::new();
    for (vip, c) in clients {
        let out = c.finish(Duration::from_secs(RUN_SECS + 30))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        results.push((vip, json_line(&stdout, "clients")?));
    }
    let _ = probe_tx.finish(Duration::from_secs(RUN_SECS + 10))?;
    let probe_out = probe_rx.finish(Duration::from_secs(30))?;
    let probe = json_line(&String::from_utf8_lossy(&probe_out.stdout), "probe-recv")?;
    new.stop()?;
    let new_log = new.log();

    // The restart's gap: the largest receive gap overlapping the takeover (from starting the
    // new afgate to the old one's exit); gaps elsewhere are this shared machine's noise,
    // reported beside it. Gaps under 10 ms are not listed (then the gap is < 10 ms).
    let (mut gap_ms, mut noise_ms) = (0.0f64, 0.0f64);
    for g in probe["gaps"].as_array().context("gaps")? {
        let (a, b) = (g[0].as_u64().unwrap_or(0), g[1].as_u64().unwrap_or(0));
        let len = b.saturating_sub(a) as f64;
        if b > u64::try_from(window_start)? && a < u64::try_from(window_end)? {
            gap_ms = gap_ms.max(len);
        } else {
            noise_ms = noise_ms.max(len);
        }
    }
    let (mut flows, mut completed) = (0, 0);
    for (vip, r) in &results {
        println!(
            "restart: {vip}: {}/{} flows completed every exchange ({} exchanges, min {} per flow; reset {}, timeout {}, other {}) {}",
            num(r, "completed"),
            num(r, "flows"),
            num(r, "exchanges"),
            num(r, "min_exchanges"),
            num(r, "reset"),
            num(r, "timeout"),
            num(r, "other"),
            r["errors"]
        );
        flows += num(r, "flows");
        completed += num(r, "completed");
    }
    let survived = completed as f64 * 100.0 / flows.max(1) as f64;
    let self_gap = new_log
        .lines()
        .find(|l| l.contains("took over from pid"))
        .unwrap_or("(no takeover line)");
    let held_drops = self_gap
        .split("held_drops ")
        .nth(1)
        .and_then(|t| t.split(' ').next()?.parse::<u64>().ok());
    println!(
        "restart: node kernel forwarding and owning the SNAT address; held_drops {} (frames the old steering program dropped in the gap instead of passing them to the kernel)",
        held_drops.map_or("none (no hold)".into(), |n| n.to_string())
    );
    println!(
        "restart: {completed}/{flows} flows survived ({survived:.2} %); forwarding gap at the receiver during the takeover {gap_ms:.0} ms (largest gap elsewhere in the run {}; probe {PROBE_RATE}/s, {} received); new afgate ready {:.0} ms after start; {self_gap}",
        if noise_ms > 0.0 {
            format!("{noise_ms:.0} ms")
        } else {
            "< 10 ms".into()
        },
        num(&probe, "received"),
        ready.as_secs_f64() * 1e3
    );

    assert!(
        old_log.contains("afgate: handed over"),
        "old afgate log:\n{old_log}"
    );
    assert!(
        held_drops.is_some(),
        "the new afgate set no hold in the old program:\n{new_log}"
    );
    let adopted = new_log
        .lines()
        .find_map(|l| {
            l.split("adopted ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("the new afgate adopted no flows:\n{new_log}"))?;
    assert!(
        adopted >= 2 * u64::from(FLOWS),
        "adopted {adopted} flows, expected ≥ {}:\n{new_log}",
        2 * FLOWS
    );
    assert!(
        completed * 1000 >= flows * 999 && flows == 2 * u64::from(FLOWS),
        "only {completed} of {flows} flows survived the restart\nold:\n{old_log}\nnew:\n{new_log}"
    );
    assert!(
        gap_ms <= MAX_GAP_MS,
        "forwarding gap {gap_ms:.1} ms > {MAX_GAP_MS} ms\nnew:\n{new_log}"
    );
    assert!(
        num(&probe, "received") >= u64::from(PROBE_RATE) * (RUN_SECS - 4),
        "probe: {probe}"
    );
    drop(servers);
    Ok(())
}

/// The segment also outlives a crash: afgate is SIGKILLed under load and started again (no
/// predecessor to hand over, so frames go to the kernel, which drops them, until the new one
/// forwards); it adopts the flows, and TCP's retransmissions carry them over the outage.
#[test]
fn flows_survive_a_crash_and_a_plain_restart() -> Result<()> {
    const N: u32 = 50;
    let lab = Lab::node_lab()?;
    lab.node.sysctl("net.ipv4.ip_forward", "0")?;
    lab.node.ip(&["addr", "flush", "dev", &lab.ports.biz.dev])?;
    let cfg = config(&lab)?;
    let mut servers = Vec::new();
    for ns in [&lab.pod2.ns, &lab.ext.ns] {
        let mut s = spawn(
            ns,
            &["echo-server", "--listen", "0.0.0.0:8080", "--secs", "60"],
        )?;
        s.wait_for_stdout("listening", Duration::from_secs(10))?;
        servers.push(s);
    }
    let mut old = Afgate::start(&lab.node, &cfg)?;
    let count = N.to_string();
    let mut clients = Vec::new();
    for vip in [LOCAL_VIP, SNAT_VIP] {
        let mut c = spawn(
            &lab.pod.ns,
            &[
                "clients",
                "--connect",
                &format!("{vip}:80"),
                "--count",
                &count,
                "--secs",
                "10",
                "--interval-ms",
                "50",
                "--timeout-ms",
                "8000",
            ],
        )?;
        c.wait_for_stdout("connected", Duration::from_secs(30))?;
        if !c.stdout().contains("connected all") {
            bail!("not every flow to {vip} connected: {}", c.output_tail());
        }
        clients.push(c);
    }
    std::thread::sleep(Duration::from_secs(3));
    old.kill()?;
    let t0 = Instant::now();
    let mut new = Afgate::start(&lab.node, &cfg)?;
    let outage = t0.elapsed();
    let mut completed = 0;
    for c in clients {
        let out = c.finish(Duration::from_secs(40))?;
        let r = json_line(&String::from_utf8_lossy(&out.stdout), "clients")?;
        println!("crash-restart: {r}");
        completed += num(&r, "completed");
    }
    new.stop()?;
    let log = new.log();
    let adopted = log
        .lines()
        .find_map(|l| {
            l.split("adopted ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no flows adopted:\n{log}"))?;
    println!(
        "crash-restart: {completed}/{} flows survived a SIGKILL and a plain restart; {adopted} flows adopted; the new afgate was ready {:.0} ms after the kill",
        2 * N,
        outage.as_secs_f64() * 1e3
    );
    assert!(adopted >= u64::from(2 * N), "{log}");
    assert_eq!(completed, u64::from(2 * N), "{log}");
    drop(servers);
    Ok(())
}

/// Without a predecessor, `--takeover` refuses to start rather than silently starting fresh.
#[test]
fn takeover_without_a_running_afgate_fails() -> Result<()> {
    let lab = Lab::node_lab()?;
    let cfg = config(&lab)?;
    let bin = afgate_tests::process::afgate_bin();
    let out = lab.node.exec(&[
        bin.to_str().context("afgate path")?,
        "run",
        "-c",
        cfg.to_str().context("config path")?,
        "--takeover",
        "--duration",
        "1",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no running afgate answers"), "{err}");
    Ok(())
}
