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
}

/// Neighbour cache size: ample for a node's pods and gateways.
const NEIGH_CAPACITY: usize = 65_536;

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
            })
            .collect(),
        layout: UmemLayout {
            frame_size: 4096,
            frames: w.frames,
            fill_size: w.ring_size,
            comp_size: w.ring_size,
        },
        rings: RingSizes {
            rx: w.ring_size,
            tx: w.ring_size,
        },
        bind,
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
    let tables = cfg
        .tables(&|dev| Ok((sys::device_mac(dev)?, sys::device_mtu(dev)?)))
        .with_context(|| format!("{}: reading the ports' devices", opts.config.display()))?;
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
    let shared = Shared::new(NEIGH_CAPACITY);
    for (ip, mac, port) in cfg.static_neighbours() {
        shared.neigh.set_static(ip, mac, port);
    }
    let mut rcfg = runtime_config(&cfg);
    for (spec, port) in rcfg.ports.iter_mut().zip(tables.ports.iter()) {
        spec.steer.own_mac = port.mac;
    }
    let nworkers = rcfg.workers.len();
    let poll = cfg.workers.poll;
    let rt = Runtime::start(rcfg, tables, shared)?;
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
    println!("afgate: ready");
    std::io::stdout().flush().ok();

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    let start = Instant::now();
    let mut last = (
        Instant::now(),
        stats::collect(&rt.counters, &rt.tables.load()),
    );
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if opts
            .duration
            .is_some_and(|d| start.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        if let Some(iv) = opts.stats_interval
            && last.0.elapsed().as_secs_f64() >= iv
        {
            let now = stats::collect(&rt.counters, &rt.tables.load());
            print_rates(&last.1, &now, last.0.elapsed().as_secs_f64());
            last = (Instant::now(), now);
        }
    }
    let final_stats = stats::collect(&rt.counters, &rt.tables.load());
    println!(
        "afgate: final-stats {}",
        serde_json::to_string(&final_stats)?
    );
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
