//! `afgate-bench run`: builds the lab once, runs the chosen scenarios with a progress line per
//! step, and writes the results folder. `--quick` fails only on a broken scenario (no packet
//! through a variant), never on a number.

use crate::report::{self, Report, RunInfo};
use crate::scenarios::{self, Env, Timing};
use crate::topo::BenchLab;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub quick: bool,
    pub smoke: bool,
    pub scenario: Option<String>,
    pub out: PathBuf,
    pub flows: u32,
}

pub const SCENARIOS: &[&str] = &[
    scenarios::l3fwd::NAME,
    scenarios::flows::NAME,
    scenarios::clusterip::NAME,
    scenarios::newconn::NAME,
    scenarios::services::NAME,
    scenarios::vxlan::NAME,
    scenarios::workers::NAME,
    scenarios::dns::NAME,
    scenarios::fullpath::NAME,
    scenarios::conntrack::NAME,
];

fn cmd_out(argv: &[&str]) -> String {
    std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Set by SIGINT/SIGTERM during `run`: the runner stops at the next trial and unwinds, so
/// every lab guard (namespaces, XDP programs, the raised nf_conntrack_max) is dropped
/// instead of being left behind by a killed process.
static INTERRUPTED: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

/// Whether the run was interrupted by SIGINT/SIGTERM.
pub fn interrupted() -> bool {
    INTERRUPTED
        .get()
        .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
}

/// Fails once the run was interrupted; called before every trial.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (SIGINT/SIGTERM)");
    }
    Ok(())
}

pub fn run(opts: &RunOptions) -> Result<Report> {
    if INTERRUPTED.get().is_none() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal ends the process at once (exit 130), as a user pressing ^C
            // twice expects; the first one lets the run unwind and clean up.
            signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
            signal_hook::flag::register(sig, flag.clone())?;
        }
        let _ = INTERRUPTED.set(flag);
    }
    let timing = if opts.smoke {
        Timing::smoke()
    } else if opts.quick {
        Timing::quick()
    } else {
        Timing::full()
    };
    let env = Env::locate(timing)?;
    let chosen: Vec<&str> = match &opts.scenario {
        Some(s) if SCENARIOS.contains(&s.as_str()) => vec![s.as_str()],
        Some(s) => bail!("unknown scenario {s:?}; known: {SCENARIOS:?}"),
        None if opts.smoke => vec![scenarios::l3fwd::NAME],
        None => SCENARIOS.to_vec(),
    };
    let t0 = Instant::now();
    let progress = |m: &str| eprintln!("[{:>6.1}s] {m}", t0.elapsed().as_secs_f64());
    progress(&format!("building the lab; scenarios {chosen:?}"));
    let lab = BenchLab::build()?;
    let mut rep = Report {
        info: RunInfo {
            date: cmd_out(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            host: cmd_out(&["uname", "-n"]),
            kernel: cmd_out(&["uname", "-r"]),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mode: if opts.smoke {
                "smoke".into()
            } else if opts.quick {
                "quick".into()
            } else {
                "full".into()
            },
            pinning: format!(
                "generator and sink on core {}; the forwarder under test (afgate's worker, afgate-xskfwd, the kernel's forwarding via RPS on d0) on core {}. {}",
                env.load_core,
                env.dut_core,
                if env.threaded_napi {
                    "veth receive NAPI in pinned kthreads: d0's on the DUT core (normal priority), the sink device's on the load core (SCHED_FIFO 50); devices without an XDP program keep softirq on the sending core."
                } else {
                    "veth receive work (XDP on d0, the devmap redirect) runs in softirq on the core that sends, i.e. the generator's (AFGATE_BENCH_NAPI=softirq)."
                }
            ),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        },
        scenarios: Vec::new(),
    };
    let mut broken = Vec::new();
    for name in chosen {
        if interrupted() {
            broken.push(format!("{name}: not run (interrupted)"));
            continue;
        }
        let res = match name {
            "l3fwd" => scenarios::l3fwd::run(&env, &lab, opts.flows, &progress),
            "flows" => scenarios::flows::run(&env, &lab, opts.quick || opts.smoke, &progress),
            "clusterip" => scenarios::clusterip::run(&env, &lab, opts.flows, &progress),
            "newconn" => scenarios::newconn::run(&env, &lab, opts.quick || opts.smoke, &progress),
            "services" => scenarios::services::run(&env, &lab, opts.quick || opts.smoke, &progress),
            "vxlan" => scenarios::vxlan::run(&env, &lab, opts.flows, &progress),
            "workers" => scenarios::workers::run(&env, opts.flows, &progress),
            "dns" => scenarios::dns::run(&env, &lab, opts.flows, &progress),
            "fullpath" => scenarios::fullpath::run(&env, &lab, opts.flows, &progress),
            "conntrack" => {
                scenarios::conntrack::run(&env, &lab, opts.quick || opts.smoke, &progress)
            }
            _ => unreachable!("checked above"),
        };
        match res {
            Ok(r) => {
                for v in &r.variants {
                    if let Some(e) = &v.error {
                        broken.push(format!("{name}/{}: {e}", v.name));
                    }
                }
                // A zero-loss series may be 0 (nothing passed); a rate series may not.
                if r.sweep
                    .iter()
                    .any(|p| p.2 <= 0.0 && !p.1.ends_with("zero-loss"))
                {
                    broken.push(format!("{name}: a sweep point forwarded nothing"));
                }
                rep.scenarios.push(r);
            }
            Err(e) => broken.push(format!("{name}: {e:#}")),
        }
        report::write(&opts.out, &rep)?;
    }
    drop(lab);
    progress(&format!("results in {}", opts.out.display()));
    if !broken.is_empty() {
        bail!("broken scenario(s):\n  {}", broken.join("\n  "));
    }
    Ok(rep)
}
