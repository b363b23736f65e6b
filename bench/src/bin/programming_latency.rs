//! Programming latency: how long adding or removing one backend takes with N services
//! loaded, from the API request to the new snapshot being published (what a worker loads
//! at its next batch).
//!
//! For each N the control side holds N services of 4 backends each; the bench alternates
//! `backend add` and `backend del` on services picked pseudo-randomly, through
//! `Control::handle` (in-process: validation, clone of the snapshot, rebuild of the one
//! service, publication) and through the Unix socket (plus JSON and a round trip). It
//! reports p50/p99/max per N and, as the reference measured in the same run, the ratio to
//! N = 1: the cost that grows with the table size. Goal: p99 < 1 ms at the largest N.
//!
//! `cargo run --release -p afgate-bench --bin programming_latency -- [--sizes 1,1000,10000,100000] [--ops 2000]`

use afgate::api::svc::{BackendReq, Proto};
use afgate::api::{Control, Request};
use afgate::config::Config;
use afgate_dataplane::service::{Backend, BackendState, MAX_SERVICES, Scheduler, ServiceSpec};
use afgate_dataplane::tables::Shared;
use hdrhistogram::Histogram;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const CONFIG: &str = r#"
workers: { cores: [0] }
ports:
  - { name: biz, device: biz, role: uplink, addresses: [10.186.153.103/24] }
"#;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1)
}

fn control(n: u32) -> anyhow::Result<Control> {
    let cfg = Config::parse(CONFIG, Path::new("bench.yaml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tables = cfg.tables(&|_| Ok(([2, 0, 0, 0, 0, 1], 1500)))?;
    let started = Instant::now();
    for i in 0..n {
        let backends = (0..4)
            .map(|b| Backend {
                addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 20, 0, 0)) + i * 8 + b),
                port: 8080,
                weight: 1,
                state: BackendState::Ready,
                local: false,
            })
            .collect();
        tables
            .services
            .upsert(ServiceSpec {
                id: i + 1,
                name: format!("svc-{i}"),
                proto: 6,
                port: 80,
                cluster_ip: Some(vip(i)),
                node_port: None,
                external_ips: Vec::new(),
                lb_ips: Vec::new(),
                scheduler: Scheduler::Rr,
                affinity_timeout: None,
                etp_local: false,
                backends,
            })
            .map_err(|e| anyhow::anyhow!("loading service {i}: {e}"))?;
        if n >= 10_000 && (i + 1) % (n / 4) == 0 {
            eprintln!("  loaded {}/{n} services", i + 1);
        }
    }
    eprintln!(
        "  {n} services loaded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Control::detached(cfg, tables, Shared::new(1024)))
}

fn req(i: u32, add: bool) -> Request {
    let b = BackendReq {
        proto: Proto::Tcp,
        addr: vip(i),
        port: 80,
        backend: Ipv4Addr::new(10, 30, 0, 1),
        backend_port: Some(8080),
        weight: None,
        local: false,
    };
    if add {
        Request::BackendAdd(b)
    } else {
        Request::BackendDel(b)
    }
}

struct Row {
    n: u32,
    inproc: Histogram<u64>,
    socket: Histogram<u64>,
    /// The parts of one change: cloning the snapshot, rebuilding the one service in the
    /// clone, dropping a snapshot (what happens to the old one once no worker holds it).
    clone: Histogram<u64>,
    upsert: Histogram<u64>,
    drop: Histogram<u64>,
}

fn run(n: u32, ops: u32) -> anyhow::Result<Row> {
    let ctl = Arc::new(control(n)?);
    let mut inproc = Histogram::<u64>::new(3)?;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut pick = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as u32
    };
    for _ in 0..ops / 2 {
        let i = pick();
        for add in [true, false] {
            let t = Instant::now();
            let r = ctl.handle(req(i, add));
            inproc.record(t.elapsed().as_nanos() as u64)?;
            anyhow::ensure!(r.ok, "{:?}", r.error);
        }
    }
    // Where the time goes: the same change taken apart.
    let (mut clone, mut upsert, mut dropped) = (
        Histogram::<u64>::new(3)?,
        Histogram::<u64>::new(3)?,
        Histogram::<u64>::new(3)?,
    );
    for _ in 0..(ops / 4).max(1) {
        let i = pick();
        let cur = ctl.tables.load_full();
        let t = Instant::now();
        let mut next = (*cur).clone();
        clone.record(t.elapsed().as_nanos() as u64)?;
        let Some((svc, _)) = next.services.lookup(vip(i), 80, 6, false) else {
            anyhow::bail!("service {i} missing");
        };
        let mut spec = svc.spec.clone();
        spec.backends.pop();
        let t = Instant::now();
        next.services
            .upsert(spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        upsert.record(t.elapsed().as_nanos() as u64)?;
        let t = Instant::now();
        drop(next);
        dropped.record(t.elapsed().as_nanos() as u64)?;
    }
    // The same through the socket, as `afgate ctl backend add` does it.
    let dir = std::env::temp_dir().join(format!("afgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("api.sock");
    let listener = afgate::api::bind(&path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (ctl, stop) = (ctl.clone(), stop.clone());
        std::thread::spawn(move || afgate::api::serve(ctl, listener, stop))
    };
    let mut socket = Histogram::<u64>::new(3)?;
    for _ in 0..(ops / 4).max(1) {
        let i = pick();
        for add in [true, false] {
            let t = Instant::now();
            afgate::client::request(&path, &req(i, add))?;
            socket.record(t.elapsed().as_nanos() as u64)?;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    afgate::api::wake(&path);
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        n,
        inproc,
        socket,
        clone,
        upsert,
        drop: dropped,
    })
}

fn main() -> anyhow::Result<()> {
    let mut sizes = vec![1u32, 1000, 10_000, 100_000];
    let mut ops = 2000u32;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--sizes" => {
                sizes = args
                    .get(i + 1)
                    .ok_or_else(|| anyhow::anyhow!("--sizes N,N,..."))?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?;
                i += 1;
            }
            "--ops" => {
                ops = args
                    .get(i + 1)
                    .ok_or_else(|| anyhow::anyhow!("--ops N"))?
                    .parse()?;
                i += 1;
            }
            a => anyhow::bail!("unknown argument {a}"),
        }
        i += 1;
    }
    let mut rows = Vec::new();
    for &n in &sizes {
        let n2 = n.min(MAX_SERVICES as u32);
        if n2 != n {
            eprintln!("N={n}: the service table holds at most {MAX_SERVICES}; measuring {n2}");
        }
        eprintln!(
            "N={n2}: {ops} in-process ops, {} socket ops",
            (ops / 4).max(1) * 2
        );
        rows.push(run(n2, ops)?);
    }
    let base = rows
        .first()
        .map(|r| r.inproc.value_at_quantile(0.5))
        .unwrap_or(1)
        .max(1);
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "services",
        "p50_us",
        "p99_us",
        "max_us",
        "p50/p50(N1)",
        "sock_p50",
        "sock_p99",
        "clone_p50",
        "upsert_p50",
        "drop_p50"
    );
    for r in &rows {
        let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:>8} {:>10.1} {:>10.1} {:>10.1} {:>12.2} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.n,
            us(&r.inproc, 0.5),
            us(&r.inproc, 0.99),
            r.inproc.max() as f64 / 1000.0,
            r.inproc.value_at_quantile(0.5) as f64 / base as f64,
            us(&r.socket, 0.5),
            us(&r.socket, 0.99),
            us(&r.clone, 0.5),
            us(&r.upsert, 0.5),
            us(&r.drop, 0.5),
        );
    }
    if let Some(last) = rows.last() {
        let p99 = last.inproc.value_at_quantile(0.99) as f64 / 1e6;
        println!(
            "goal p99 < 1 ms at N={}: {} ({p99:.3} ms)",
            last.n,
            if p99 < 1.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
