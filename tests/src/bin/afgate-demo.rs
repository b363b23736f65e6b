//! The demo: builds the lab node of SPEC §3 (a node namespace with afgate's ports, two
//! overlay pods, the top-of-rack gateway and a host behind it), starts afgate on it, pushes
//! real traffic (ping, TCP bulk, UDP request/response from the kernel's own stacks) through
//! it for a bounded time while printing afgate's live per-port rates, then stops afgate and
//! tears the lab down.
//!
//! Usage (root): afgate-demo [--secs N]   (default 20, at most 300)

use afgate_tests::lab::Lab;
use afgate_tests::peer;
use afgate_tests::ping::ping;
use afgate_tests::process::Afgate;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = match args.iter().position(|a| a == "--secs") {
        Some(i) => args.get(i + 1).context("--secs needs a value")?.parse().context("--secs")?,
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
    let server = peer::tcp_server(&lab.ext.ns, &format!("{ext}:8080"), "ext", secs as u32 + 10)?;
    let userver = peer::udp_server(&lab.ext.ns, &format!("{ext}:5353"), "ext-dns", secs as u32 + 10)?;
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);

    println!("demo: pod 10.20.9.60 → ext {ext}: TCP bulk, UDP request/response and ping for {secs} s");
    let tcp = {
        let (ns, stop, bytes) = (lab.pod.ns.clone(), stop.clone(), bytes.clone());
        std::thread::spawn(move || {
            // Bounded: each connection moves 20 MB, at most one connection a loop, until the deadline.
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match peer::tcp_client(&ns, &format!("{ext}:8080"), 20_000_000, 15) {
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
    drop(server);
    drop(userver);
    afgate.stop()?;
    show(&afgate, &mut shown);
    println!(
        "demo: TCP moved {} MB through afgate and back; {udp_ok} UDP replies; ping {}/{} (ttl {:?})",
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
