//! `afgate-xskfwd`: the minimal AF_XDP forwarder reference (see `afgate_bench::fwd`).

use afgate_bench::fwd::{FwdConfig, run};
use afgate_bench::scenarios::{READY, REPORT_PREFIX};
use afgate_bench::xskio::stop_flag;
use afgate_tests::Mac;
use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "afgate-xskfwd",
    about = "Minimal AF_XDP forwarder: rx on one port, tx on another, MAC rewrite only"
)]
struct Cli {
    #[arg(long)]
    in_dev: String,
    #[arg(long)]
    out_dev: String,
    /// Destination MAC written into every forwarded frame.
    #[arg(long)]
    dst_mac: Mac,
    /// Stop by itself after SECS seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Spin when idle instead of sleeping in poll(2).
    #[arg(long)]
    busy: bool,
    #[arg(long)]
    core: Option<usize>,
}

fn main() -> ExitCode {
    let c = Cli::parse();
    let cfg = FwdConfig {
        in_dev: c.in_dev,
        out_dev: c.out_dev,
        dst_mac: c.dst_mac.0,
        duration: c.duration,
        busy: c.busy,
        core: c.core,
    };
    let res = stop_flag().and_then(|stop| {
        run(&cfg, &stop, || {
            println!("{READY}");
            let _ = std::io::stdout().flush();
        })
    });
    match res {
        Ok(r) => {
            println!(
                "{REPORT_PREFIX}{}",
                serde_json::to_string(&r).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("afgate-xskfwd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
