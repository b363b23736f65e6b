//! The demo: builds the lab node of SPEC §3 (a node namespace with afgate's ports, two
//! overlay pods, the top-of-rack gateway and a host behind it), starts afgate on it,
//! programs a ClusterIP service through the CLI (`afgate ctl`), pushes real traffic (TCP
//! bulk through the service VIP, UDP request/response, ping — the kernel's own stacks at
//! both ends) through it for a bounded time while printing afgate's live per-port rates,
//! shows the service, conntrack and counters through the CLI, then stops afgate and tears
//! the lab down.
//!
//! Usage (root): afgate-demo [--secs N]   (default 20, at most 300)

use afgate_tests::lab::Lab;
use afgate_tests::netns::Netns;
use afgate_tests::peer;
use afgate_tests::ping::ping;
use afgate_tests::process::{Afgate, afgate_bin};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = match args.iter().position(|a| a == "--secs") {
        Some(i) => args
            .get(i + 1)
            .context("--secs needs a value")?
            .parse()
            .context("--secs")?,
        None => 20,
    };
    if !(5..=300).contains(&secs) {
        bail!("--secs must be 5-300");
    }
    println!("demo: building the lab (namespaces node, pod, pod2, gw, ext)");
    let lab = Lab::node_lab()?;
    let cfg = lab.afgate_config_file()?;
    println!("demo: afgate config:\n{}", std::fs::read_to_string(&cfg)?);
    let mut afgate = Afgate::start_with(&lab.node, &cfg, &["--stats", "1"])?;
    let mut shown = 0;
    let show = |afgate: &Afgate, shown: &mut usize| {
        let log = afgate.log();
        for line in log.lines().skip(*shown) {
            println!("{line}");
        }
        *shown = log.lines().count();
    };
    show(&afgate, &mut shown);

    let ext = lab.addrs.ext_ip;
    let sock = lab.lab.tmp().join("afgate.sock");
    let sock = sock.to_str().context("socket path")?.to_string();
    let ctl = |args: &[&str]| -> Result<String> {
        let bin = afgate_bin();
        let mut argv = vec![bin.to_str().unwrap_or("afgate"), "ctl", "--api", &sock];
        argv.extend_from_slice(args);
        println!("demo: $ afgate ctl {}", args.join(" "));
        let out = run_in(&lab.node, &argv)?;
        print!("{out}");
        Ok(out)
    };
    ctl(&["route", "list"])?;
    ctl(&["neigh", "list"])?;
    // A ClusterIP service with two backends: a host behind the gateway and the second pod.
    let vip = "10.96.10.1:80";
    ctl(&["service", "add", "-t", vip, "-s", "rr", "--name", "web"])?;
    ctl(&["backend", "add", "-t", vip, "-r", &format!("{ext}:8080")])?;
    ctl(&[
        "backend",
        "add",
        "-t",
        vip,
        "-r",
        &format!("{}:8080", lab.addrs.pod2_ip),
        "--local",
    ])?;
    let server = peer::tcp_server(&lab.ext.ns, &format!("{ext}:8080"), "ext", secs as u32 + 10)?;
    let server2 = peer::tcp_server(
        &lab.pod2.ns,
        &format!("{}:8080", lab.addrs.pod2_ip),
        "pod41",
        secs as u32 + 10,
    )?;
    let spread = peer::tcp_conns(&lab.pod.ns, vip, 10, 10)?;
    println!(
        "demo: 10 connections to {vip} from the pod were answered by {:?}",
        spread.ids
    );
    let userver = peer::udp_server(
        &lab.ext.ns,
        &format!("{ext}:5353"),
        "ext-dns",
        secs as u32 + 10,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);

    println!(
        "demo: pod 10.20.9.60 → VIP {vip}: TCP bulk; pod 10.20.9.41 → ext {ext}: UDP request/response; for {secs} s"
    );
    let tcp = {
        let (ns, stop, bytes) = (lab.pod.ns.clone(), stop.clone(), bytes.clone());
        std::thread::spawn(move || {
            // Bounded: each connection moves 20 MB, at most one connection a loop, until the deadline.
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match peer::tcp_client(&ns, vip, 20_000_000, 15) {
                    Ok(r) if r.echoed => {
                        bytes.fetch_add(2 * 20_000_000, Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
    };
    let udp = {
        let (ns, stop) = (lab.pod2.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(r) = peer::udp_client(&ns, &format!("{ext}:5353"), 200, 5) {
                    ok += r.received;
                }
            }
            ok
        })
    };
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        show(&afgate, &mut shown);
    }
    let p = ping(&lab.pod.ns, &ext.to_string(), 5, Duration::from_secs(2))?;
    stop.store(true, Ordering::Relaxed);
    tcp.join().ok();
    let udp_ok = udp.join().unwrap_or(0);
    ctl(&["service", "list"])?;
    ctl(&["conntrack", "count"])?;
    ctl(&["stats"])?;
    drop(server);
    drop(server2);
    drop(userver);
    afgate.stop()?;
    show(&afgate, &mut shown);
    println!(
        "demo: TCP moved {} MB through the VIP and back; {udp_ok} UDP replies; ping {}/{} (ttl {:?})",
        bytes.load(Ordering::Relaxed) / 1_000_000,
        p.received,
        p.sent,
        p.ttl
    );
    println!("demo: tearing the lab down");
    drop(lab);
    println!("demo: done");
    Ok(())
}

/// Runs a command in the lab namespace and returns its stdout, failing with its stderr.
fn run_in(ns: &Netns, argv: &[&str]) -> Result<String> {
    let out = ns.exec(argv)?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
