//! `afgate-micro`: per-stage ns/packet, and with `--callgrind` instructions/packet
//! ((total − baseline) / N under `valgrind --tool=callgrind`). See `afgate_bench::micro`.

use afgate_bench::micro::{Bench, Stage, callgrind_total};
use anyhow::{Context, Result, bail};
use clap::Parser;
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(
    name = "afgate-micro",
    about = "Per-stage micro-benchmarks of afgate's pipeline"
)]
struct Cli {
    /// Only this stage; default: all.
    #[arg(long, value_enum)]
    stage: Option<Stage>,
    /// Packets per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    packets: u64,
    /// Count instructions under callgrind instead of timing.
    #[arg(long)]
    callgrind: bool,
    /// Internal: run exactly `packets` packets of `stage` once and exit (what callgrind runs).
    #[arg(long, hide = true)]
    once: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afgate-micro: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let b = Bench::new()?;
    let stages: Vec<Stage> = cli.stage.map_or(Stage::ALL.to_vec(), |s| vec![s]);
    if cli.once {
        let s = cli.stage.context("--once needs --stage")?;
        std::hint::black_box(b.run(s, cli.packets));
        return Ok(());
    }
    if cli.callgrind {
        let exe = std::env::current_exe()?;
        let dir = afgate_tests::TempDir::new("micro")?;
        let n = cli.packets.min(200_000);
        println!("| stage | instructions/packet (callgrind, N={n}) |\n|---|---:|");
        for s in stages {
            let mut totals = [0u64; 2];
            for (i, count) in [0, n].into_iter().enumerate() {
                let out = dir.path().join(format!("{}-{count}.out", s.name()));
                let st = Command::new("timeout")
                    .args(["300", "valgrind", "--tool=callgrind", "--quiet"])
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(&exe)
                    .args([
                        "--once",
                        "--stage",
                        s.name(),
                        "--packets",
                        &count.to_string(),
                    ])
                    .status()
                    .context("valgrind (apt-get install valgrind)")?;
                if !st.success() {
                    bail!("callgrind run of {} failed: {st}", s.name());
                }
                totals[i] = callgrind_total(&out)?;
            }
            let per = totals[1].saturating_sub(totals[0]) as f64 / n as f64;
            println!("| {} | {per:.1} |", s.name());
        }
        return Ok(());
    }
    println!(
        "| stage | ns/packet (best of 5, N={}) |\n|---|---:|",
        cli.packets
    );
    for s in stages {
        println!("| {} | {:.1} |", s.name(), b.time(s, cli.packets, 5));
    }
    Ok(())
}
