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
    },
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
        } => match run(&RunOptions {
            config,
            stats_interval: stats,
            duration,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("afgate: {e:#}");
                ExitCode::FAILURE
            }
        },
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
