//! `afgate run`: load the configuration, bring the fast path up, report what was attached,
//! then wait for SIGINT/SIGTERM (printing live per-port rates if asked), and take
//! everything down again.

use crate::config::Config;
use crate::runtime::{PortSpec, Runtime, RuntimeConfig};
use crate::stats;
use afgate_bpf::{ModeRequest, PassRule, SteerConfig};
use afgate_dataplane::sys;
use afgate_dataplane::tables::Shared;
use afgate_dataplane::worker::WorkerConfig;
use afgate_dataplane::xsk::socket::RingSizes;
use afgate_dataplane::xsk::{BindMode, UmemLayout};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Print per-port rates every this many seconds.
    pub stats_interval: Option<f64>,
    /// Stop by itself after this many seconds (demo and tests).
    pub duration: Option<f64>,
    /// The control socket; overrides the config's `api.socket`.
    pub api: Option<PathBuf>,
    /// The metrics listener; overrides the config's `api.metrics_addr`.
    pub metrics: Option<std::net::SocketAddr>,
    /// Require a running afgate to take over from (`crate::handover`); without it, one is
    /// taken over if found.
    pub takeover: bool,
}

/// Neighbour cache size: ample for a node's pods and gateways.
pub const NEIGH_CAPACITY: usize = 65_536;

pub fn runtime_config(cfg: &Config) -> RuntimeConfig {
    let w = &cfg.workers;
    let bind = match cfg.ports.first().map(|p| p.af_xdp) {
        Some(crate::config::BindCfg::Copy) => BindMode::Copy,
        Some(crate::config::BindCfg::Zerocopy) => BindMode::ZeroCopy,
        _ => BindMode::Auto,
    };
    RuntimeConfig {
        ports: cfg
            .ports
            .iter()
            .map(|p| PortSpec {
                name: p.name.clone(),
                device: p.device.clone(),
                xdp_mode: match p.xdp_mode {
                    crate::config::XdpModeCfg::Auto => ModeRequest::Auto,
                    crate::config::XdpModeCfg::Native => ModeRequest::Native,
                    crate::config::XdpModeCfg::Skb => ModeRequest::Skb,
                },
                steer: SteerConfig {
                    own_mac: [0; 6],
                    only_own_mac: p.only_own_mac,
                    passthru: cfg
                        .passthrough
                        .iter()
                        .map(|r| PassRule {
                            addr: r.addr,
                            port: r.port,
                            proto: r.proto.number(),
                        })
                        .collect(),
                },
            })
            .collect(),
        workers: w
            .cores
            .iter()
            .enumerate()
            .map(|(i, &core)| WorkerConfig {
                index: i,
                core: Some(core),
                poll: w.poll.into(),
                batch: w.batch,
                idle_spins: w.idle_spins,
                rt_priority: w.rt_priority,
            })
            .collect(),
        layout: UmemLayout {
            frame_size: 4096,
            frames: w.umem_frames(cfg.ports.len()),
            fill_size: w.ring_size,
            comp_size: w.ring_size,
        },
        rings: RingSizes {
            rx: w.ring_size,
            tx: w.ring_size,
        },
        bind,
        epoch: None,
        takeover: false,
    }
}

pub fn run(opts: &RunOptions) -> anyhow::Result<()> {
    let cfg = Config::load(&opts.config)?;
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for (i, c) in cfg.workers.cores.iter().enumerate() {
        if *c >= ncpu {
            bail!(
                "{}: workers.cores[{i}]: core {c} does not exist; this machine has cores 0-{}",
                opts.config.display(),
                ncpu - 1
            );
        }
    }
    // Building thousands of services (scheduler tables each) takes a while: say so.
    let building = Instant::now();
    if cfg.services.len() >= 1000 {
        println!(
            "afgate: building tables: {} services, {} routes…",
            cfg.services.len(),
            cfg.routes.len()
        );
        std::io::stdout().flush().ok();
    }
    let many = cfg.services.len() >= 1000;
    let mut tables = cfg
        .tables_with_progress(
            &|dev| Ok((sys::device_mac(dev)?, sys::device_mtu(dev)?)),
            &mut |done, total| {
                if many {
                    println!("afgate: building tables: {done}/{total} services");
                    std::io::stdout().flush().ok();
                }
            },
        )
        .with_context(|| format!("{}: reading the ports' devices", opts.config.display()))?;
    if cfg.services.len() >= 1000 {
        println!(
            "afgate: built {} services in {:.2} s",
            tables.services.len(),
            building.elapsed().as_secs_f64()
        );
    }
    for p in &cfg.ports {
        let queues = sys::device_rx_queues(&p.device)?;
        if (queues as usize) < cfg.workers.cores.len() {
            bail!(
                "port {}: device {} has {queues} rx queue(s) but {} workers are configured; each worker serves one queue of every port",
                p.name,
                p.device,
                cfg.workers.cores.len()
            );
        }
    }
    // Bond members whose link is down at start carry nothing; `poll_bond_carrier` follows
    // changes while running.
    let bond_members = cfg.bond_members();
    let mut carrier: Vec<bool> = bond_members
        .iter()
        .map(|(id, dev)| {
            let up = sys::device_carrier(dev);
            tables.bonds.set_member_up(*id, up);
            up
        })
        .collect();
    let mut last_carrier_poll = Instant::now();
    let api_path = opts
        .api
        .clone()
        .or_else(|| cfg.api.socket.clone())
        .unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET));
    let mut restart = crate::handover::Startup::prepare(&cfg, &api_path, opts.takeover)?;
    let shared = Shared::with_conntrack_table(NEIGH_CAPACITY, restart.take_conntrack());
    let lc_services = cfg
        .services
        .iter()
        .any(|s| s.scheduler == crate::config::services::SchedulerCfg::Lc);
    let mut last_gc = Instant::now();
    let mut last_lc = Instant::now();
    for (ip, mac, port) in cfg.static_neighbours() {
        shared.neigh.set_static(ip, mac, port);
    }
    let mut rcfg = runtime_config(&cfg);
    for (spec, port) in rcfg.ports.iter_mut().zip(tables.ports.iter()) {
        spec.steer.own_mac = port.mac;
    }
    rcfg.epoch = restart.epoch();
    rcfg.takeover = restart.is_takeover();
    let nworkers = rcfg.workers.len();
    let poll = cfg.workers.poll;
    let metrics_addr = opts.metrics.or(cfg.api.metrics_addr);
    // Bound before the ports are taken over, so a busy socket or address fails start-up
    // with nothing attached.
    // Programs loaded and UMEMs made before a predecessor lets go of the queues.
    let mut prepared = Runtime::prepare(rcfg, tables, shared)?;
    // Frames in the gap are dropped, not handed to a kernel that would reset NATed flows.
    prepared.hold_predecessor(cfg.restart.hold());
    // A predecessor stops forwarding and closes its API here: the forwarding gap starts.
    restart.release()?;
    let listener = crate::api::bind(&api_path)?;
    let metrics_listener = metrics_addr.map(crate::metrics::bind).transpose()?;
    let rt = match prepared.start() {
        Ok(rt) => rt,
        Err(e) => {
            // Nothing will serve the socket: do not leave it behind.
            let _ = std::fs::remove_file(&api_path);
            return Err(e.into());
        }
    };
    let ctl = Arc::new(crate::api::Control::new(
        cfg.clone(),
        rt.tables.clone(),
        rt.shared.clone(),
        rt.counters.clone(),
        rt.obs.clone(),
        rt.capture.clone(),
        rt.epoch,
        Box::new(|dev| Ok((sys::device_mac(dev)?, sys::device_mtu(dev)?))),
    ));
    let api_stop = Arc::new(AtomicBool::new(false));
    let mut api_threads = Vec::new();
    {
        let (ctl, stop) = (ctl.clone(), api_stop.clone());
        api_threads.push(
            std::thread::Builder::new()
                .name("afgate-api".into())
                .spawn(move || crate::api::serve(ctl, listener, stop))?,
        );
    }
    if let Some(l) = metrics_listener {
        let (ctl, stop) = (ctl.clone(), api_stop.clone());
        api_threads.push(
            std::thread::Builder::new()
                .name("afgate-metrics".into())
                .spawn(move || crate::metrics::serve(ctl, l, stop))?,
        );
    }
    for a in &rt.attached {
        let zc = a.sockets.iter().all(|s| s.2);
        println!(
            "afgate: port {} device {} ifindex {}: XDP {} mode{}; AF_XDP {} on queue(s) {}",
            a.port,
            a.device,
            a.ifindex,
            a.xdp_mode,
            if a.replaced_stale {
                " (replaced a stale program)"
            } else {
                ""
            },
            if zc { "zero-copy" } else { "copy" },
            a.sockets
                .iter()
                .map(|s| format!("{}→worker {}", s.1, s.0))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    println!(
        "afgate: {nworkers} worker(s) on cores {:?}, poll {:?}",
        cfg.workers.cores, poll
    );
    println!("afgate: api {}", api_path.display());
    if let Some(a) = metrics_addr {
        println!("afgate: metrics http://{a}/metrics");
    }
    let handover = restart.started(rt.forwarding_since, rt.held_drops)?;
    println!("afgate: ready");
    std::io::stdout().flush().ok();
    // Gratuitous ARP for the node's addresses now that workers run; aging from here on.
    let mut neigh = crate::neigh_ctl::NeighCtl::start(cfg.neighbors_aging, &rt);

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    let start = Instant::now();
    let mut last = (
        Instant::now(),
        stats::collect(&rt.counters, &rt.tables.load()),
    );
    let mut successor = None;
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(s) = handover.as_ref().and_then(|h| h.poll()) {
            successor = Some(s);
            break;
        }
        if !bond_members.is_empty() && last_carrier_poll.elapsed() >= BOND_POLL {
            last_carrier_poll = Instant::now();
            // Under the API's lock: a carrier change and an API change must not both
            // publish a clone of the same snapshot (one would be lost).
            let _g = ctl.lock();
            poll_bond_carrier(&rt, &bond_members, &mut carrier);
        }
        if opts
            .duration
            .is_some_and(|d| start.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        ctl.observe_generations();
        neigh.poll(&rt);
        if last_gc.elapsed() >= CT_GC_EVERY {
            last_gc = Instant::now();
            conntrack_gc(&rt);
        }
        if lc_services && last_lc.elapsed() >= LC_RECOUNT_EVERY {
            last_lc = Instant::now();
            lc_recount(&rt);
        }
        if let Some(iv) = opts.stats_interval
            && last.0.elapsed().as_secs_f64() >= iv
        {
            let now = stats::collect(&rt.counters, &rt.tables.load());
            print_rates(&last.1, &now, last.0.elapsed().as_secs_f64());
            last = (Instant::now(), now);
        }
    }
    if let Some(s) = successor {
        // Closed now, so the successor can bind the path as soon as it forwards.
        drop(handover);
        return hand_over(s, rt, ctl, api_stop, api_threads, &api_path, metrics_addr);
    }
    if let Some(h) = &handover {
        let _ = std::fs::remove_file(h.path());
    }
    let mut final_stats = stats::collect(&rt.counters, &rt.tables.load());
    final_stats.conntrack = rt.shared.conntrack.stats().into();
    println!(
        "afgate: final-stats {}",
        serde_json::to_string(&final_stats)?
    );
    api_stop.store(true, Ordering::Relaxed);
    crate::api::wake(&api_path);
    if let Some(a) = metrics_addr {
        crate::metrics::wake(a);
    }
    for t in api_threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&api_path);
    drop(ctl);
    let nports = rt.attached.len();
    let errors = rt.stop();
    for e in &errors {
        eprintln!("afgate: {e}");
    }
    println!(
        "afgate: stopped; detached XDP from {} of {nports} port(s)",
        nports - errors.len()
    );
    Ok(())
}

/// The old process's side of a handover: stop serving the API and forwarding, tell the
/// successor, and exit without detaching XDP or touching the sockets' paths (both are the
/// successor's now). The conntrack segment stays; the successor maps it.
fn hand_over(
    mut successor: crate::handover::Successor,
    mut rt: Runtime,
    ctl: Arc<crate::api::Control>,
    api_stop: Arc<AtomicBool>,
    api_threads: Vec<std::thread::JoinHandle<()>>,
    api_path: &std::path::Path,
    metrics_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    println!("afgate: handing over to a new afgate");
    api_stop.store(true, Ordering::Relaxed);
    crate::api::wake(api_path);
    if let Some(a) = metrics_addr {
        crate::metrics::wake(a);
    }
    for t in api_threads {
        let _ = t.join();
    }
    drop(ctl);
    let stopping = Instant::now();
    rt.stop_workers();
    successor.released(stopping.elapsed())?;
    let mut final_stats = stats::collect(&rt.counters, &rt.tables.load());
    final_stats.conntrack = rt.shared.conntrack.stats().into();
    println!(
        "afgate: final-stats {}",
        serde_json::to_string(&final_stats)?
    );
    std::io::stdout().flush().ok();
    if successor.wait_done() {
        // Our programs were replaced by the successor's: stop() detaches only its own.
        let _ = rt.stop();
        println!(
            "afgate: handed over; exiting with XDP and conntrack state left to the new afgate"
        );
    } else {
        let nports = rt.attached.len();
        let errors = rt.stop();
        println!(
            "afgate: the new afgate did not take over; detached XDP from {} of {nports} port(s) (fail-open)",
            nports - errors.len()
        );
    }
    Ok(())
}

/// Conntrack garbage collection: a slice of the table every 100 ms, sized so that the
/// whole table is swept about every 10 s (expired entries are misses meanwhile, and a full
/// table reclaims expired slots on insert, so sweeping only bounds how long they linger).
const CT_GC_EVERY: Duration = Duration::from_millis(100);

fn conntrack_gc(rt: &crate::runtime::Runtime) {
    let ct = &rt.shared.conntrack;
    let budget = (ct.capacity() / 100).max(1024);
    ct.gc(rt.now_s(), budget);
}

/// How often the `lc` scheduler's per-backend flow counts are recounted from conntrack.
const LC_RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// One pass over conntrack, counting live flows per (service, backend), published for the
/// workers' `lc` scheduler (see `service::LcCounts`).
fn lc_recount(rt: &crate::runtime::Runtime) {
    let mut counts: std::collections::HashMap<(u32, u32), u64> = Default::default();
    for e in rt.shared.conntrack.entries(rt.now_s()) {
        if e.service != 0 {
            *counts.entry((e.service, e.backend)).or_default() += 1;
        }
    }
    rt.shared
        .lc
        .publish(counts.into_iter().map(|((s, b), n)| (s, b, n)));
}

/// How often bond members' carrier is polled (Linux bonding's `miimon` is typically 100).
const BOND_POLL: Duration = Duration::from_millis(200);

/// Publishes a snapshot with the bond's live members whenever a member's carrier changed, so
/// its flows rehash onto the others at the workers' next batch.
fn poll_bond_carrier(
    rt: &Runtime,
    members: &[(afgate_dataplane::tables::PortId, String)],
    carrier: &mut [bool],
) {
    let mut next: Option<afgate_dataplane::tables::Tables> = None;
    for ((id, dev), was) in members.iter().zip(carrier.iter_mut()) {
        let up = sys::device_carrier(dev);
        if up == *was {
            continue;
        }
        *was = up;
        println!(
            "afgate: bond member {dev} {}",
            if up { "up" } else { "down" }
        );
        let t = next.get_or_insert_with(|| (**rt.tables.load()).clone());
        t.bonds.set_member_up(*id, up);
    }
    if let Some(mut t) = next {
        t.generation += 1;
        rt.publish(t);
    }
}

fn print_rates(before: &stats::Stats, now: &stats::Stats, secs: f64) {
    let mut line = String::from("afgate: rates");
    for (name, p) in &now.ports {
        let b = before.ports.get(name).cloned().unwrap_or_default();
        let rx = (p.rx_packets - b.rx_packets) as f64 / secs;
        let tx = (p.tx_packets - b.tx_packets) as f64 / secs;
        line += &format!("  {name}: rx {rx:.0} pps tx {tx:.0} pps");
    }
    let drops: u64 = now
        .drops
        .iter()
        .filter(|(k, _)| **k != "consumed")
        .map(|(_, v)| v)
        .sum();
    line += &format!("  drops {drops}");
    println!("{line}");
}
