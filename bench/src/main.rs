//! `afgate-bench`: `run` (the scenario runner) and the pieces it starts in lab namespaces:
//! `gen`, `sink`, `xdp-redirect`.

use afgate_bench::generator::{self, GenConfig};
use afgate_bench::packet::{Proto, TrafficSpec, VxlanSpec};
use afgate_bench::runner::{self, RunOptions};
use afgate_bench::scenarios::{READY, REPORT_PREFIX};
use afgate_bench::sink::{self, SinkConfig};
use afgate_bench::xdpgen::{self, Engine};
use afgate_bench::xskio::stop_flag;
use afgate_tests::Mac;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "afgate-bench",
    about = "afgate benchmarks: generator, sink, scenario runner"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios on a fresh lab and write report.md, raw.json and SVG plots.
    Run {
        /// Short trials (< 5 min); fails only on a broken scenario, never on a number.
        #[arg(long)]
        quick: bool,
        /// Tiny trials (seconds): only checks that every variant forwards something.
        #[arg(long, hide = true)]
        smoke: bool,
        /// One scenario (l3fwd, flows); default: all.
        #[arg(long)]
        scenario: Option<String>,
        /// Results folder; default results/<UTC date-time>.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Flows of the l3fwd scenario.
        #[arg(long, default_value_t = 1024)]
        flows: u32,
    },
    /// Send prebuilt frames from an AF_XDP socket (run inside the generator's namespace).
    Gen(GenArgs),
    /// Receive, count and time frames on an AF_XDP socket (inside the sink's namespace).
    Sink {
        #[arg(long)]
        dev: String,
        #[arg(long, default_value_t = 1024)]
        flows: u32,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many stamped packets (0: no limit).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Stop this long after the last packet (0: only at the deadline or on SIGINT).
        #[arg(long, default_value_t = 0)]
        idle_ms: u64,
        #[arg(long)]
        core: Option<usize>,
        #[arg(long)]
        busy: bool,
    },
    /// Answer every IPv4 UDP/TCP frame on DEV by sending it back, addresses and ports
    /// swapped (the server of request/response trials), until SIGINT or the deadline.
    Reflect {
        #[arg(long)]
        dev: String,
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        #[arg(long)]
        core: Option<usize>,
    },
    /// Hold an XDP_PASS program on DEV (so a veth accepts XDP-transmitted frames from its
    /// peer) until SIGINT or the deadline.
    XdpPass {
        #[arg(long)]
        dev: String,
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
    /// Hold the XDP devmap redirect IN → OUT (the in-kernel ceiling) until SIGINT or the
    /// deadline.
    XdpRedirect {
        #[arg(long)]
        in_dev: String,
        #[arg(long)]
        out_dev: String,
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long)]
    dev: String,
    #[arg(long)]
    src_mac: Mac,
    #[arg(long)]
    dst_mac: Mac,
    #[arg(long)]
    src_ip: Ipv4Addr,
    #[arg(long)]
    dst_ip: Ipv4Addr,
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    proto: Proto,
    /// Distinct five-tuples (source port, then source address, varies).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    flows: u32,
    #[arg(long, default_value_t = 1024)]
    sport: u16,
    /// Source ports before the source address steps.
    #[arg(long, default_value_t = 60000)]
    sports: u16,
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// Frame size on the wire, FCS included.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(64..=1518))]
    size: u16,
    #[arg(long)]
    vlan: Option<u16>,
    /// VXLAN-encapsulate: VNI,outer-src-ip,outer-dst-ip,outer-src-mac,outer-dst-mac.
    #[arg(long)]
    vxlan: Option<String>,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    duration: f64,
    /// Packets per second; default: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long)]
    core: Option<usize>,
    /// xsk: AF_XDP socket, any traffic; xdp: in-kernel live frames, plain UDP, much faster.
    #[arg(long, value_enum, default_value_t = Engine::Xsk)]
    engine: Engine,
    /// Tx queue of `dev` to send on (a veth delivers to the peer's rx queue of that index).
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// Also receive on the socket and report the replies (request/response; xsk engine).
    #[arg(long)]
    responses: bool,
}

fn parse_vxlan(s: &str) -> Result<VxlanSpec> {
    let p: Vec<&str> = s.split(',').collect();
    anyhow::ensure!(p.len() == 5, "--vxlan VNI,SRC_IP,DST_IP,SRC_MAC,DST_MAC");
    Ok(VxlanSpec {
        vni: p[0].parse()?,
        src_ip: p[1].parse()?,
        dst_ip: p[2].parse()?,
        src_mac: p[3].parse::<Mac>()?.0,
        dst_mac: p[4].parse::<Mac>()?.0,
    })
}

fn report<T: serde::Serialize>(r: &T) -> Result<()> {
    println!("{REPORT_PREFIX}{}", serde_json::to_string(r)?);
    std::io::stdout().flush()?;
    Ok(())
}

fn ready() {
    println!("{READY}");
    let _ = std::io::stdout().flush();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res: Result<()> = (|| match cli.cmd {
        Cmd::Run {
            quick,
            smoke,
            scenario,
            out,
            flows,
        } => {
            let out = out.unwrap_or_else(|| {
                let d = std::process::Command::new("date")
                    .args(["-u", "+%Y-%m-%d-%H%M"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_else(|_| "latest".into());
                PathBuf::from("results").join(d)
            });
            runner::run(&RunOptions {
                quick,
                smoke,
                scenario,
                out,
                flows,
            })
            .map(drop)
        }
        Cmd::Gen(a) => {
            let spec = TrafficSpec {
                proto: a.proto,
                src_mac: a.src_mac.0,
                dst_mac: a.dst_mac.0,
                src_ip: a.src_ip,
                dst_ip: a.dst_ip,
                sport_base: a.sport,
                sports: a.sports.max(1),
                dport: a.dport,
                flows: a.flows,
                frame_len: usize::from(a.size),
                vlan: a.vlan,
                vxlan: a.vxlan.as_deref().map(parse_vxlan).transpose()?,
            };
            anyhow::ensure!(
                !a.responses || a.engine == Engine::Xsk,
                "--responses needs the xsk engine"
            );
            let stop = stop_flag()?;
            let run = match a.engine {
                Engine::Xsk => generator::run,
                Engine::Xdp => xdpgen::run,
            };
            let r = run(
                &GenConfig {
                    dev: a.dev,
                    spec,
                    count: a.count,
                    duration: a.duration,
                    rate: a.rate,
                    batch: a.batch,
                    core: a.core,
                    queue: a.queue,
                    responses: a.responses,
                },
                &stop,
            )?;
            report(&r)
        }
        Cmd::Sink {
            dev,
            flows,
            duration,
            count,
            idle_ms,
            core,
            busy,
        } => {
            let stop = stop_flag()?;
            let r = sink::run(
                &SinkConfig {
                    dev,
                    flows,
                    duration,
                    count,
                    idle_ms,
                    core,
                    busy,
                },
                &stop,
                ready,
            )?;
            report(&r)
        }
        Cmd::Reflect {
            dev,
            duration,
            core,
        } => {
            let stop = stop_flag()?;
            let r = afgate_bench::reflect::run(
                &afgate_bench::reflect::ReflectConfig {
                    dev,
                    duration,
                    core,
                },
                &stop,
                ready,
            )?;
            report(&r)
        }
        Cmd::XdpPass { dev, duration } => {
            let stop = stop_flag()?;
            let p = afgate_bpf::XdpPass::attach(&dev, afgate_bpf::ModeRequest::Native)?;
            ready();
            let end = Instant::now() + Duration::from_secs_f64(duration);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            p.detach()?;
            report(&serde_json::json!({ "detached": true }))
        }
        Cmd::XdpRedirect {
            in_dev,
            out_dev,
            duration,
        } => {
            let stop = stop_flag()?;
            let r = afgate_bpf::DevmapRedirect::attach(
                &in_dev,
                &out_dev,
                afgate_bpf::ModeRequest::Native,
            )?;
            ready();
            let end = Instant::now() + Duration::from_secs_f64(duration);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            r.detach()?;
            report(&serde_json::json!({ "detached": true }))
        }
    })();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
