//! The operator's commands: `afgate ctl …` (routes, neighbours, stats, services, backends,
//! conntrack, Kubernetes manifests), `afgate reload`, `afgate trace`, `afgate capture`. All
//! talk to the running afgate over the control socket; `-o json` prints the API's answer
//! as JSON for scripts.

use crate::api::{DEFAULT_SOCKET, NeighSpec, Request, svc};
use crate::capture::{CaptureRequest, Dir};
use crate::client;
use crate::config::{Cidr, Config, NextHopCfg, RouteCfg};
use crate::trace::{self, FrameSpec};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The control socket of the running afgate.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub api: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Debug, Subcommand)]
pub enum CtlCmd {
    /// Routes, in `ip route` syntax.
    Route {
        #[command(subcommand)]
        cmd: RouteCmd,
    },
    /// Neighbours (ARP), in `ip neigh` syntax.
    Neigh {
        #[command(subcommand)]
        cmd: NeighCmd,
    },
    /// Per port and queue counters, drops by reason, events, per-worker busy ratio and
    /// latency, programming latency.
    Stats,
    /// Table generation, uptime and sizes.
    Status,
    /// The Prometheus exposition, as `/metrics` serves it.
    Metrics,
    /// Virtual services, laid out like `ipvsadm -Ln`.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// A service's backends (real servers).
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Tracked connections, like `conntrack -L`.
    Conntrack {
        #[command(subcommand)]
        cmd: ConntrackCmd,
    },
    /// Program Kubernetes Service and EndpointSlice manifests (YAML, `kubectl get -o yaml`).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// This node's name (endpoints with this nodeName are local); default: the hostname.
        #[arg(long)]
        node_name: Option<String>,
        #[arg(long, value_enum, default_value_t = Sched::Rr)]
        scheduler: Sched,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sched {
    Rr,
    Wrr,
    Lc,
    Sh,
    Random,
    Maglev,
}

impl From<Sched> for svc::SchedulerArg {
    fn from(s: Sched) -> Self {
        match s {
            Sched::Rr => svc::SchedulerArg::Rr,
            Sched::Wrr => svc::SchedulerArg::Wrr,
            Sched::Lc => svc::SchedulerArg::Lc,
            Sched::Sh => svc::SchedulerArg::Sh,
            Sched::Random => svc::SchedulerArg::Random,
            Sched::Maglev => svc::SchedulerArg::Maglev,
        }
    }
}

/// `-t VIP:PORT` or `-u VIP:PORT`, as ipvsadm takes them.
#[derive(Debug, Args)]
pub struct SvcArg {
    /// A TCP service address:port.
    #[arg(
        short = 't',
        long = "tcp-service",
        value_name = "ADDR:PORT",
        conflicts_with = "udp"
    )]
    pub tcp: Option<String>,
    /// A UDP service address:port.
    #[arg(short = 'u', long = "udp-service", value_name = "ADDR:PORT")]
    pub udp: Option<String>,
}

fn addr_port(s: &str, what: &str) -> anyhow::Result<(Ipv4Addr, Option<u16>)> {
    let (a, p) = match s.rsplit_once(':') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u16>()
                    .map_err(|_| anyhow!("{what} {s:?}: bad port"))?,
            ),
        ),
        None => (s, None),
    };
    Ok((
        a.parse()
            .map_err(|_| anyhow!("{what} {s:?}: bad address"))?,
        p,
    ))
}

impl SvcArg {
    fn get(&self) -> anyhow::Result<svc::ServiceRef> {
        let (proto, text) = match (&self.tcp, &self.udp) {
            (Some(t), None) => (svc::Proto::Tcp, t),
            (None, Some(u)) => (svc::Proto::Udp, u),
            _ => bail!("give the service as -t ADDR:PORT or -u ADDR:PORT"),
        };
        let (addr, port) = addr_port(text, "service")?;
        Ok(svc::ServiceRef {
            proto,
            addr,
            port: port.ok_or_else(|| anyhow!("service {text:?}: missing :PORT"))?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    #[command(alias = "show")]
    List,
    Add {
        #[command(flatten)]
        svc: SvcArg,
        #[arg(short = 's', long, value_enum, default_value_t = Sched::Rr)]
        scheduler: Sched,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        node_port: Option<u16>,
        #[arg(long = "external-ip")]
        external_ips: Vec<Ipv4Addr>,
        /// ClientIP session affinity timeout (seconds), like `ipvsadm -p`.
        #[arg(short = 'p', long)]
        affinity: Option<u32>,
        /// externalTrafficPolicy: Local.
        #[arg(long)]
        etp_local: bool,
    },
    #[command(alias = "delete")]
    Del {
        #[command(flatten)]
        svc: SvcArg,
    },
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    #[command(flatten)]
    pub svc: SvcArg,
    /// The backend, ADDR[:PORT] (default port: the service's).
    #[arg(short = 'r', long = "real-server", value_name = "ADDR[:PORT]")]
    pub real: String,
    #[arg(short = 'w', long)]
    pub weight: Option<u16>,
    /// The backend runs on this node (externalTrafficPolicy: Local picks only these).
    #[arg(long)]
    pub local: bool,
}

impl BackendArgs {
    fn get(&self) -> anyhow::Result<svc::BackendReq> {
        let s = self.svc.get()?;
        let (backend, backend_port) = addr_port(&self.real, "backend")?;
        Ok(svc::BackendReq {
            proto: s.proto,
            addr: s.addr,
            port: s.port,
            backend,
            backend_port,
            weight: self.weight,
            local: self.local,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    Add(BackendArgs),
    #[command(alias = "delete")]
    Del(BackendArgs),
    SetWeight(BackendArgs),
    /// No new flows; established ones continue until they end.
    Drain(BackendArgs),
}

#[derive(Debug, Args, Default)]
pub struct CtFilterArgs {
    #[arg(long)]
    pub src: Option<Ipv4Addr>,
    #[arg(long)]
    pub dst: Option<Ipv4Addr>,
    #[arg(long)]
    pub sport: Option<u16>,
    #[arg(long)]
    pub dport: Option<u16>,
    /// tcp, udp or icmp.
    #[arg(long, short = 'p')]
    pub proto: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum ConntrackCmd {
    #[command(alias = "show")]
    List(CtFilterArgs),
    Count,
    Flush,
}

#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// List routes.
    #[command(alias = "show")]
    List,
    /// `route add PREFIX [via GW] dev PORT` or `route add PREFIX nexthop via GW dev PORT …`.
    Add {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// Like add, replacing an existing route to the same prefix.
    Replace {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// `route del PREFIX`.
    #[command(alias = "delete")]
    Del {
        #[arg(trailing_var_arg = true, num_args = 1..)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NeighCmd {
    #[command(alias = "show")]
    List,
    /// `neigh add IP lladdr MAC dev PORT` (a permanent entry).
    Add {
        #[arg(trailing_var_arg = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// `neigh del IP [dev PORT]`.
    #[command(alias = "delete")]
    Del {
        #[arg(trailing_var_arg = true, num_args = 1..)]
        args: Vec<String>,
    },
}

/// `PREFIX` as `ip` writes it: `default`, `a.b.c.d`, `a.b.c.d/len`.
pub fn parse_prefix(s: &str) -> Result<Cidr, String> {
    let s = if s == "default" { "0.0.0.0/0" } else { s };
    let full = if s.contains('/') {
        s.to_string()
    } else {
        format!("{s}/32")
    };
    afgate_dataplane::wire::Ipv4Cidr::from_str(&full)
        .map(Cidr)
        .map_err(|_| format!("{s:?} is not a prefix (a.b.c.d/len or default)"))
}

/// Parses `ip route add` arguments after the command word.
pub fn parse_route(args: &[String]) -> Result<RouteCfg, String> {
    let mut it = args.iter().map(String::as_str).peekable();
    let dst = parse_prefix(it.next().ok_or("missing the destination prefix")?)?;
    let mut r = RouteCfg {
        dst,
        via: None,
        dev: None,
        nexthops: Vec::new(),
    };
    let addr = |w: Option<&str>, what: &str| -> Result<Ipv4Addr, String> {
        let w = w.ok_or(format!("{what} needs an address"))?;
        w.parse()
            .map_err(|_| format!("{what} {w:?} is not an IPv4 address"))
    };
    while let Some(w) = it.next() {
        match w {
            "via" => r.via = Some(addr(it.next(), "via")?),
            "dev" => r.dev = Some(it.next().ok_or("dev needs a port name")?.to_string()),
            "onlink" => {} // every gateway is onlink in afgate
            "scope" | "proto" | "metric" => {
                it.next(); // accepted for copy-paste from `ip route`, ignored
            }
            "nexthop" => {
                let mut nh = NextHopCfg {
                    via: None,
                    dev: String::new(),
                };
                while let Some(&k) = it.peek() {
                    match k {
                        "via" => {
                            it.next();
                            nh.via = Some(addr(it.next(), "nexthop via")?);
                        }
                        "dev" => {
                            it.next();
                            nh.dev = it.next().ok_or("nexthop dev needs a port name")?.into();
                        }
                        "weight" | "onlink" => {
                            it.next();
                            if k == "weight" {
                                it.next();
                            }
                        }
                        _ => break,
                    }
                }
                if nh.dev.is_empty() {
                    return Err("nexthop needs dev PORT".into());
                }
                r.nexthops.push(nh);
            }
            other => return Err(format!("{other:?} is not understood (via, dev, nexthop)")),
        }
    }
    Ok(r)
}

/// Parses `ip neigh add IP lladdr MAC dev PORT`.
pub fn parse_neigh(args: &[String]) -> Result<NeighSpec, String> {
    let mut it = args.iter().map(String::as_str);
    let ip = it.next().ok_or("missing the address")?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let (mut mac, mut dev) = (None, None);
    while let Some(w) = it.next() {
        match w {
            "lladdr" => {
                mac = Some(crate::api::parse_mac(
                    it.next().ok_or("lladdr needs a MAC")?,
                )?)
            }
            "dev" => dev = Some(it.next().ok_or("dev needs a port name")?.to_string()),
            "nud" => {
                it.next();
            }
            other => return Err(format!("{other:?} is not understood (lladdr, dev)")),
        }
    }
    Ok(NeighSpec {
        ip,
        mac: mac.ok_or("missing lladdr MAC")?,
        dev: dev.ok_or("missing dev PORT")?,
    })
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn route_lines(v: &Value) -> String {
    let mut out = String::new();
    for r in v.as_array().into_iter().flatten() {
        let dst = r["dst"].as_str().unwrap_or("?");
        let dst = match dst {
            "0.0.0.0/0" => "default".to_string(),
            d => d.strip_suffix("/32").unwrap_or(d).to_string(),
        };
        let nhs = r["nexthops"].as_array().cloned().unwrap_or_default();
        let one = |nh: &Value| match nh["via"].as_str() {
            Some(v) => format!("via {v} dev {}", nh["dev"].as_str().unwrap_or("?")),
            None => format!("dev {} scope link", nh["dev"].as_str().unwrap_or("?")),
        };
        if nhs.len() == 1 {
            out += &format!("{dst} {}\n", one(&nhs[0]));
        } else {
            out += &format!("{dst}\n");
            for nh in &nhs {
                out += &format!("\tnexthop {}\n", one(nh));
            }
        }
    }
    out
}

fn stats_text(v: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "generation {}  uptime {:.1}s  routes {}  services {}\n\n",
        v["generation"],
        v["uptime_s"].as_f64().unwrap_or(0.0),
        v["routes"],
        v["services"]
    );
    o += &format!(
        "{:<12} {:>5} {:>12} {:>14} {:>12} {:>14} {:>9}\n",
        "PORT", "QUEUE", "RX-PACKETS", "RX-BYTES", "TX-PACKETS", "TX-BYTES", "TX-DROPS"
    );
    for (name, p) in v["ports"].as_object().into_iter().flatten() {
        for q in p["queues"].as_array().into_iter().flatten() {
            o += &format!(
                "{:<12} {:>5} {:>12} {:>14} {:>12} {:>14} {:>9}\n",
                name,
                q["queue"].to_string(),
                q["rx_packets"].to_string(),
                q["rx_bytes"].to_string(),
                q["tx_packets"].to_string(),
                q["tx_bytes"].to_string(),
                q["tx_drops"].to_string()
            );
        }
    }
    o += "\nDROPS\n";
    for (r, n) in v["drops"].as_object().into_iter().flatten() {
        if n.as_u64().unwrap_or(0) > 0 {
            o += &format!("  {r:<28} {n}\n");
        }
    }
    o += "EVENTS\n";
    for (e, n) in v["events"].as_object().into_iter().flatten() {
        if n.as_u64().unwrap_or(0) > 0 {
            o += &format!("  {e:<28} {n}\n");
        }
    }
    o += "WORKERS\n";
    for w in v["workers"].as_array().into_iter().flatten() {
        let l = &w["latency"];
        o += &format!(
            "  worker {}: busy {:.1}%  latency/frame p50 {} ns p99 {} ns ({} frames)\n",
            w["worker"],
            w["busy_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            l["p50_ns"],
            l["p99_ns"],
            l["samples"]
        );
    }
    let p = &v["programming"];
    o += &format!(
        "PROGRAMMING  apply p50 {} ns p99 {} ns ({});  first frame p50 {} ns p99 {} ns ({})\n",
        p["apply"]["p50_ns"],
        p["apply"]["p99_ns"],
        p["apply"]["samples"],
        p["first_use"]["p50_ns"],
        p["first_use"]["p99_ns"],
        p["first_use"]["samples"]
    );
    o
}

/// Runs `afgate ctl …`.
pub fn run(a: &CtlArgs) -> anyhow::Result<()> {
    let api = a.api.as_path();
    let (req, text): (Request, fn(&Value) -> String) = match &a.cmd {
        CtlCmd::Route { cmd } => match cmd {
            RouteCmd::List => (Request::RouteList, route_lines),
            RouteCmd::Add { args } => (
                Request::RouteAdd(parse_route(args).map_err(|e| anyhow!("route add: {e}"))?),
                |_| String::new(),
            ),
            RouteCmd::Replace { args } => (
                Request::RouteReplace(
                    parse_route(args).map_err(|e| anyhow!("route replace: {e}"))?,
                ),
                |_| String::new(),
            ),
            RouteCmd::Del { args } => {
                let dst = args.first().context("route del: missing the prefix")?;
                (
                    Request::RouteDel {
                        dst: parse_prefix(dst).map_err(|e| anyhow!("route del: {e}"))?,
                    },
                    |_| String::new(),
                )
            }
        },
        CtlCmd::Neigh { cmd } => match cmd {
            NeighCmd::List => (Request::NeighList, |v| {
                let mut o = String::new();
                for n in v.as_array().into_iter().flatten() {
                    o += &format!(
                        "{} dev {} lladdr {} {}\n",
                        n["ip"].as_str().unwrap_or("?"),
                        n["dev"].as_str().unwrap_or("?"),
                        n["mac"].as_str().unwrap_or("?"),
                        n["state"].as_str().unwrap_or("?").to_uppercase()
                    );
                }
                o
            }),
            NeighCmd::Add { args } => (
                Request::NeighAdd(parse_neigh(args).map_err(|e| anyhow!("neigh add: {e}"))?),
                |_| String::new(),
            ),
            NeighCmd::Del { args } => {
                let ip = args.first().context("neigh del: missing the address")?;
                (
                    Request::NeighDel {
                        ip: ip
                            .parse()
                            .map_err(|_| anyhow!("neigh del: {ip:?} is not an IPv4 address"))?,
                    },
                    |_| String::new(),
                )
            }
        },
        CtlCmd::Stats => (Request::Stats, stats_text),
        CtlCmd::Status => (Request::Status, |v| {
            format!(
                "generation {} uptime {:.1}s ports {} routes {} services {} workers {}\n",
                v["generation"],
                v["uptime_s"].as_f64().unwrap_or(0.0),
                v["ports"],
                v["routes"],
                v["services"],
                v["workers"]
            )
        }),
        CtlCmd::Metrics => (Request::Metrics, |v| v.as_str().unwrap_or("").to_string()),
        CtlCmd::Service { cmd } => match cmd {
            ServiceCmd::List => (Request::ServiceList, ipvsadm),
            ServiceCmd::Add {
                svc: s,
                scheduler,
                name,
                node_port,
                external_ips,
                affinity,
                etp_local,
            } => {
                let r = s.get()?;
                (
                    Request::ServiceAdd(svc::ServiceAdd {
                        proto: r.proto,
                        addr: r.addr,
                        port: r.port,
                        name: name.clone(),
                        scheduler: (*scheduler).into(),
                        node_port: *node_port,
                        external_ips: external_ips.clone(),
                        affinity: *affinity,
                        etp_local: *etp_local,
                    }),
                    |_| String::new(),
                )
            }
            ServiceCmd::Del { svc: s } => (Request::ServiceDel(s.get()?), |_| String::new()),
        },
        CtlCmd::Backend { cmd } => {
            let req = match cmd {
                BackendCmd::Add(b) => Request::BackendAdd(b.get()?),
                BackendCmd::Del(b) => Request::BackendDel(b.get()?),
                BackendCmd::SetWeight(b) => {
                    if b.weight.is_none() {
                        bail!("backend set-weight: give -w WEIGHT");
                    }
                    Request::BackendSetWeight(b.get()?)
                }
                BackendCmd::Drain(b) => Request::BackendDrain(b.get()?),
            };
            (req, |_| String::new())
        }
        CtlCmd::Conntrack { cmd } => match cmd {
            ConntrackCmd::List(f) => (
                Request::ConntrackList(svc::CtFilter {
                    src: f.src,
                    dst: f.dst,
                    sport: f.sport,
                    dport: f.dport,
                    proto: f.proto.clone(),
                    limit: f.limit,
                }),
                conntrack_lines,
            ),
            ConntrackCmd::Count => (Request::ConntrackCount, |v| format!("{}\n", v["entries"])),
            ConntrackCmd::Flush => (Request::ConntrackFlush, |v| {
                format!(
                    "conntrack: connection tracking table has been emptied ({} entries)\n",
                    v["flushed"]
                )
            }),
        },
        CtlCmd::Apply {
            file,
            node_name,
            scheduler,
        } => {
            let manifests = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let node_name = node_name.clone().unwrap_or_else(hostname);
            (
                Request::Apply {
                    manifests,
                    node_name,
                    scheduler: (*scheduler).into(),
                },
                |v| {
                    let mut o = format!(
                        "{} service port(s) programmed, {} removed (generation {})\n",
                        v["services_programmed"], v["services_removed"], v["generation"]
                    );
                    for n in v["notes"].as_array().into_iter().flatten() {
                        o += &format!("note: {}\n", n.as_str().unwrap_or(""));
                    }
                    o
                },
            )
        }
    };
    let v = client::request(api, &req)?;
    match a.output {
        Output::Json => print_json(&v),
        Output::Text => print!("{}", text(&v)),
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `ipvsadm -Ln` layout, with afgate's extra columns after it.
pub fn ipvsadm(v: &Value) -> String {
    let mut o = String::from(
        "IP Virtual Server (afgate)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
    );
    for s in v.as_array().into_iter().flatten() {
        let proto = s["proto"].as_str().unwrap_or("?").to_uppercase();
        let port = &s["port"];
        let mut fronts: Vec<String> = Vec::new();
        if let Some(a) = s["addr"].as_str() {
            fronts.push(format!("{a}:{port}"));
        }
        for a in s["external_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(s["lb_ips"].as_array().into_iter().flatten())
        {
            fronts.push(format!("{}:{port}", a.as_str().unwrap_or("?")));
        }
        if let Some(np) = s["node_port"].as_u64() {
            fronts.push(format!("0.0.0.0:{np}"));
        }
        let mut flags = String::new();
        if let Some(t) = s["affinity_timeout"].as_u64() {
            flags += &format!(" persistent {t}");
        }
        if s["etp_local"].as_bool() == Some(true) {
            flags += " local";
        }
        for f in &fronts {
            o += &format!(
                "{proto:<4} {f:<21} {}{flags}   # {}\n",
                s["scheduler"].as_str().unwrap_or("?"),
                s["name"].as_str().unwrap_or("")
            );
            for b in s["backends"].as_array().into_iter().flatten() {
                let rs = format!("{}:{}", b["addr"].as_str().unwrap_or("?"), b["port"]);
                // A draining backend shows weight 0, as kube-proxy's IPVS mode does.
                let w = if b["state"] == "terminating" {
                    0
                } else {
                    b["weight"].as_u64().unwrap_or(0)
                };
                o += &format!(
                    "  -> {rs:<28} Masq    {w:<6} {:<10} {}\n",
                    b["active_conns"].to_string(),
                    b["inactive_conns"]
                );
            }
        }
    }
    o
}

/// `conntrack -L` layout.
pub fn conntrack_lines(v: &Value) -> String {
    let mut o = String::new();
    for e in v["entries"].as_array().into_iter().flatten() {
        let t = |t: &Value| {
            format!(
                "src={} dst={} sport={} dport={}",
                t["src"].as_str().unwrap_or("?"),
                t["dst"].as_str().unwrap_or("?"),
                t["sport"],
                t["dport"]
            )
        };
        let state = e["state"]
            .as_str()
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        let flags = if e["replied"].as_bool() == Some(true) {
            "[ASSURED] "
        } else {
            ""
        };
        let unreplied = if e["replied"].as_bool() == Some(true) {
            ""
        } else {
            "[UNREPLIED] "
        };
        o += &format!(
            "{:<8} {} {} {state}{} packets={} bytes={} {unreplied}{} packets={} bytes={} {flags}mark={} use=1\n",
            e["proto"].as_str().unwrap_or("?"),
            e["proto_num"],
            e["timeout"],
            t(&e["orig"]),
            e["packets"][0],
            e["bytes"][0],
            t(&e["reply"]),
            e["packets"][1],
            e["bytes"][1],
            e["mark"]
        );
    }
    o += &format!(
        "afgate conntrack: {} flow entries have been shown.\n",
        v["entries"].as_array().map(|a| a.len()).unwrap_or(0)
    );
    o
}

/// `afgate reload -c FILE`.
pub fn reload(api: &Path, file: &Path, output: Output) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // Validate locally first: the same checks, errors printed without a round trip.
    Config::parse(&text, file).map_err(|e| anyhow!("{e}\nnothing was applied"))?;
    let v = client::request(
        api,
        &Request::Reload {
            config: text,
            file: Some(file.display().to_string()),
        },
    )
    .map_err(|e| anyhow!("{e}\nnothing was applied"))?;
    match output {
        Output::Json => print_json(&v),
        Output::Text => println!(
            "reloaded {}: generation {}; routes +{} -{} ~{}; static neighbours +{} -{}; services {} → {}",
            file.display(),
            v["generation"],
            v["routes"]["added"],
            v["routes"]["removed"],
            v["routes"]["changed"],
            v["neighbors"]["added"],
            v["neighbors"]["removed"],
            v["services"]["before"],
            v["services"]["after"]
        ),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The port the frame arrives on.
    #[arg(long)]
    pub in_port: String,
    #[arg(long)]
    pub src: Ipv4Addr,
    #[arg(long)]
    pub dst: Ipv4Addr,
    /// tcp, udp or icmp (echo request).
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    #[arg(long, default_value_t = 40000)]
    pub sport: u16,
    #[arg(long, default_value_t = 80)]
    pub dport: u16,
    /// TCP flags (letters F S R P A).
    #[arg(long, default_value = "S")]
    pub flags: String,
    /// An 802.1Q tag on the frame.
    #[arg(long)]
    pub vlan: Option<u16>,
    #[arg(long, default_value_t = 64)]
    pub ttl: u8,
    /// Payload bytes after the L4 header.
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
    /// Source MAC (the destination MAC is the ingress port's).
    #[arg(long, default_value = "02:00:00:00:00:01")]
    pub src_mac: String,
    /// Offline: build the tables from this file instead of asking a running afgate.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub api: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `afgate trace …`.
pub fn trace(a: &TraceArgs) -> anyhow::Result<()> {
    let proto = match a.proto.to_ascii_lowercase().as_str() {
        "tcp" | "6" => 6,
        "udp" | "17" => 17,
        "icmp" | "1" => 1,
        p => bail!("--proto {p}: use tcp, udp or icmp"),
    };
    let frame = FrameSpec {
        src_mac: trace::parse_mac(&a.src_mac).map_err(|e| anyhow!("--src-mac: {e}"))?,
        dst_mac: [0; 6],
        vlan: a.vlan,
        src: a.src,
        dst: a.dst,
        proto,
        sport: a.sport,
        dport: a.dport,
        flags: a.flags.clone(),
        ttl: a.ttl,
        payload: a.payload,
    }
    .build()
    .map_err(|e| anyhow!("{e}"))?;
    let out: trace::TraceOut = match &a.config {
        Some(file) => {
            let cfg = Config::load(file).map_err(|e| anyhow!("{e}"))?;
            let tables = cfg.tables(&trace::offline_device)?;
            let shared = afgate_dataplane::tables::Shared::new(4096);
            for (ip, mac, port) in cfg.static_neighbours() {
                shared.neigh.set_static(ip, mac, port);
            }
            trace::run(&tables, &shared, &a.in_port, None, &frame, 1, 1_000_000_000)
                .map_err(|e| anyhow!("{e}"))?
        }
        None => serde_json::from_value(client::request(
            &a.api,
            &Request::Trace {
                in_port: a.in_port.clone(),
                frame: trace::to_hex(&frame),
                vlan: None,
            },
        )?)?,
    };
    match a.output {
        Output::Json => print_json(&serde_json::to_value(&out)?),
        Output::Text => print!("{}", trace::format(&out)),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The port to capture on.
    #[arg(long)]
    pub port: String,
    #[arg(long, value_enum, default_value_t = DirArg::Both)]
    pub dir: DirArg,
    /// A pcap-filter subset: host/src/dst/net/port/tcp/udp/icmp/ip/arp, and/or/not, ( ).
    #[arg(long)]
    pub filter: Option<String>,
    /// Stop after N frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after S seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// The pcap file to write.
    #[arg(short = 'w', long)]
    pub write: PathBuf,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub api: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirArg {
    In,
    Out,
    Both,
}

/// `afgate capture …`.
pub fn capture(a: &CaptureArgs) -> anyhow::Result<()> {
    if let Some(f) = &a.filter {
        crate::capture::parse_filter(f).map_err(|e| anyhow!("--filter: {e}"))?;
    }
    let req = CaptureRequest {
        port: a.port.clone(),
        dir: match a.dir {
            DirArg::In => Dir::In,
            DirArg::Out => Dir::Out,
            DirArg::Both => Dir::Both,
        },
        filter: a.filter.clone(),
        count: a.count,
        duration: a.duration,
    };
    let v = crate::capture::run_client(
        &a.api,
        &req,
        &a.write,
        || {
            // stderr, unbuffered: scripts (and the lab tests) wait for this line.
            eprintln!(
                "afgate: capturing on {} ({:?}), writing {}",
                a.port,
                a.dir,
                a.write.display()
            );
        },
        |_| {},
    )?;
    match a.output {
        Output::Json => print_json(&v),
        Output::Text => println!(
            "{} frames captured, {} dropped (stopped by {})",
            v["captured"],
            v["dropped"],
            v["stopped_by"].as_str().unwrap_or("?")
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ip_route_syntax() {
        let r = parse_route(&s(&["10.20.4.0/25", "via", "10.186.153.254", "dev", "biz"])).unwrap();
        assert_eq!(r.dst.0.to_string(), "10.20.4.0/25");
        assert_eq!(r.via, Some(Ipv4Addr::new(10, 186, 153, 254)));
        assert_eq!(r.dev.as_deref(), Some("biz"));
        let r = parse_route(&s(&[
            "default", "nexthop", "via", "1.1.1.1", "dev", "a", "nexthop", "via", "2.2.2.2", "dev",
            "b",
        ]))
        .unwrap();
        assert_eq!(r.dst.0.prefix_len(), 0);
        assert_eq!(r.nexthops.len(), 2);
        let r = parse_route(&s(&["10.20.9.60", "dev", "pod60", "scope", "link"])).unwrap();
        assert_eq!(r.dst.0.prefix_len(), 32);
        assert!(parse_route(&s(&["10.0.0.0/33", "dev", "x"])).is_err());
        assert!(parse_route(&s(&["10.0.0.0/8", "via"])).is_err());
        assert!(parse_route(&s(&["10.0.0.0/8", "bogus"])).is_err());
        let n = parse_neigh(&s(&[
            "10.1.1.1",
            "lladdr",
            "02:00:00:00:00:09",
            "dev",
            "biz",
        ]))
        .unwrap();
        assert_eq!(n.dev, "biz");
        assert!(parse_neigh(&s(&["10.1.1.1", "dev", "biz"])).is_err());
    }
}
