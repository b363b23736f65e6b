//! The `afgate` binary.

use afgate::config::Config;
use afgate::run::{RunOptions, run};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "afgate",
    version,
    about = "A userspace AF_XDP dataplane for Kubernetes nodes and gateways"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the dataplane with a configuration file until SIGINT/SIGTERM.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Print per-port packet rates every SECS seconds.
        #[arg(long, value_name = "SECS")]
        stats: Option<f64>,
        /// Stop by itself after SECS seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// The control socket (default: the config's api.socket, else /run/afgate/afgate.sock).
        #[arg(long, value_name = "PATH")]
        api: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9469).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Take over from the afgate running with this configuration, keeping its flows
        /// (needs restart.state); fail if none runs. Without it, one found is taken over.
        #[arg(long)]
        takeover: bool,
    },
    /// Talk to the running afgate: routes, neighbours, stats, services, conntrack.
    Ctl(afgate::ctl::CtlArgs),
    /// Apply a changed configuration file to the running afgate (all or nothing).
    Reload {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long, value_name = "PATH", default_value = afgate::api::DEFAULT_SOCKET)]
        api: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = afgate::ctl::Output::Text)]
        output: afgate::ctl::Output,
    },
    /// Show what the pipeline does with a described frame (a dry run).
    Trace(afgate::ctl::TraceArgs),
    /// Copy a port's frames into a pcap file.
    Capture(afgate::ctl::CaptureArgs),
    /// Validate a configuration file without touching the system.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            stats,
            duration,
            api,
            metrics,
            takeover,
        } => match run(&RunOptions {
            config,
            stats_interval: stats,
            duration,
            api,
            metrics,
            takeover,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("afgate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Ctl(a) => report(afgate::ctl::run(&a)),
        Cmd::Reload {
            config,
            api,
            output,
        } => report(afgate::ctl::reload(&api, &config, output)),
        Cmd::Trace(a) => report(afgate::ctl::trace(&a)),
        Cmd::Capture(a) => report(afgate::ctl::capture(&a)),
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} ports, {} routes, {} neighbours, {} workers)",
                    config.display(),
                    c.ports.len(),
                    c.routes.len(),
                    c.neighbors.len(),
                    c.workers.cores.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
