//! Per-path cost of the whole pipeline (`pipeline::process`), in process, no I/O, on the lab
//! node of docs/configuration.md built through afgate's own `Config::tables`:
//!
//! ```text
//! pipeline_paths [--packets N] [--path NAME] [--callgrind]
//! ```
//!
//! - `forward`: pod60 → outside via the default route on `biz`, no NAT (the reference).
//! - `established`: pod60 → ClusterIP (Maglev, 8 backends on pod41), a tracked TCP flow: conntrack
//!   hit, DNAT re-applied.
//! - `new`: pod60 → ClusterIP, every packet a new flow (conntrack miss, Maglev, insert);
//!   the table is flushed every 8192 flows and the flush is included.
//! - `vxlan-encap`: pod60 → a remote overlay pod: route over `vxlan.2`, encapsulated from the
//!   VTEP's prebuilt header, out on `ctl`.
//! - `vxlan-decap`: VXLAN VNI 2 from the remote VTEP on `ctl` → decapsulated → pod60.
//! - `vlan`: tagged VLAN 1155 on the `biz` trunk → popped → pod60, and in turn
//!   pod60 → an underlay pod on `biz.1155` → tag pushed (one pop or one push per packet).
//!
//! ns/packet is from the clock, best of 3 (noisy on a shared machine; `forward` is measured
//! in the same run and each path's ratio to it is printed). With `--callgrind` the binary
//! re-runs itself under `valgrind --tool=callgrind` with N and 2N packets and prints
//! (Ir(2N) − Ir(N)) / N: instructions per packet, set-up cancelled, repeatable — for the
//! whole loop (copying the frame into the buffer, the call, checking the action) and, with
//! `--toggle-collect`, for `pipeline::process` alone.

use afgate::config::Config;
use afgate_bench::packet::{self, Proto, TrafficSpec, VxlanSpec};
use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::frame::Frame;
use afgate_dataplane::pipeline::{self, Action, Ctx, RxMeta};
use afgate_dataplane::service::WorkerLocal;
use afgate_dataplane::tables::{PortId, Shared, Tables};
use anyhow::{Context, Result, bail};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const CONFIG: &str = "\
workers: { cores: [0] }
ports:
  - name: biz
    device: biz
    role: uplink
    addresses: [10.186.153.103/24]
    vlan:
      trunk: [1155]
      addresses: { 1155: [10.186.155.30/27] }
  - { name: ctl, device: ctl, role: ctl, addresses: [10.186.152.103/24] }
  - { name: pod60, device: pod60, role: pod, mtu: 1450 }
  - { name: pod41, device: pod41, role: pod, mtu: 1450 }
vxlan:
  port: 4789
  overlays:
    - name: vxlan.2
      vni: 2
      local: 10.186.152.103
      mtu: 1450
      vteps:
        - { via: 10.20.4.0, mac: \"02:af:78:00:00:04\", remote: 10.186.152.104 }
routes:
  - { dst: 10.20.9.60/32, dev: pod60 }
  - { dst: 10.20.9.41/32, dev: pod41 }
  - { dst: 10.20.9.32/27, dev: pod41 }
  - { dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }
  - { dst: 0.0.0.0/0, via: 10.186.153.254, dev: biz }
neighbors:
  - { ip: 10.186.153.254, mac: \"02:af:03:00:00:02\", dev: biz }
  - { ip: 10.186.152.104, mac: \"02:af:03:00:00:04\", dev: ctl }
  - { ip: 10.20.9.60, mac: \"02:00:00:00:60:01\", dev: pod60 }
  - { ip: 10.20.9.41, mac: \"02:00:00:00:41:01\", dev: pod41 }
  - { ip: 10.20.9.42, mac: \"02:00:00:00:41:02\", dev: pod41 }
  - { ip: 10.20.9.43, mac: \"02:00:00:00:41:03\", dev: pod41 }
  - { ip: 10.20.9.44, mac: \"02:00:00:00:41:04\", dev: pod41 }
  - { ip: 10.20.9.45, mac: \"02:00:00:00:41:05\", dev: pod41 }
  - { ip: 10.20.9.46, mac: \"02:00:00:00:41:06\", dev: pod41 }
  - { ip: 10.20.9.47, mac: \"02:00:00:00:41:07\", dev: pod41 }
  - { ip: 10.20.9.48, mac: \"02:00:00:00:41:08\", dev: pod41 }
  - { ip: 10.186.155.5, mac: \"02:00:00:00:55:05\", dev: biz.1155 }
services:
  - name: web
    cluster_ip: 10.96.10.1
    port: 80
    protocol: tcp
    target_port: 8080
    backends:
      - { addr: 10.20.9.41 }
      - { addr: 10.20.9.42 }
      - { addr: 10.20.9.43 }
      - { addr: 10.20.9.44 }
      - { addr: 10.20.9.45 }
      - { addr: 10.20.9.46 }
      - { addr: 10.20.9.47 }
      - { addr: 10.20.9.48 }
";

const BIZ: PortId = PortId(0);
const CTL: PortId = PortId(1);
const POD60: PortId = PortId(2);
const BIZ_MAC: [u8; 6] = [0x02, 0xaf, 0, 0, 0, 1];
const CTL_MAC: [u8; 6] = [0x02, 0xaf, 0, 0, 0, 2];
const POD60_MAC: [u8; 6] = [0x02, 0xaf, 0, 0, 0, 3];
const POD41_MAC: [u8; 6] = [0x02, 0xaf, 0, 0, 0, 4];
const POD60_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
const HEADROOM: usize = 256;
/// New flows per round before the table is flushed (well under its capacity).
const ROUND: u32 = 8192;

const PATHS: [&str; 6] = [
    "forward",
    "established",
    "new",
    "vxlan-encap",
    "vxlan-decap",
    "vlan",
];

/// One path: frames (cycled), each with its ingress port and the port it must leave by.
struct Flows {
    frames: Vec<(Vec<u8>, PortId, PortId)>,
    /// Flush conntrack every this many packets (the `new` path).
    flush_every: Option<usize>,
}

struct Bench {
    tables: Tables,
    shared: Shared,
    counters: WorkerCounters,
    local: WorkerLocal,
}

fn spec(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> TrafficSpec {
    TrafficSpec {
        proto: Proto::TcpAck,
        src_mac,
        dst_mac,
        src_ip: src,
        dst_ip: dst,
        sport_base: 40000,
        sports: 1,
        dport: 80,
        flows: 1,
        frame_len: 128,
        vlan: None,
        vxlan: None,
    }
}

impl Bench {
    fn new() -> Result<Bench> {
        let cfg = Config::parse(CONFIG, Path::new("pipeline_paths.yaml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tables = cfg
            .tables(&|dev| {
                let mac = match dev {
                    "biz" => BIZ_MAC,
                    "ctl" => CTL_MAC,
                    "pod60" => POD60_MAC,
                    _ => POD41_MAC,
                };
                Ok((mac, 1500))
            })
            .context("tables")?;
        let shared = Shared::new(1024);
        for (ip, mac, port) in cfg.static_neighbours() {
            shared.neigh.set_static(ip, mac, port);
        }
        Ok(Bench {
            counters: WorkerCounters::new(tables.ports.len()),
            tables,
            shared,
            local: WorkerLocal::default(),
        })
    }

    fn port(&self, name: &str) -> PortId {
        self.tables.ports.by_name(name).expect("port").id
    }

    fn path(&self, name: &str) -> Result<Flows> {
        let pod = spec(
            [0x02, 0, 0, 0, 0x60, 1],
            POD60_MAC,
            POD60_IP,
            Ipv4Addr::new(10, 186, 200, 10),
        );
        let one = |s: &TrafficSpec, rx, tx| Flows {
            frames: vec![(packet::build(s).bytes, rx, tx)],
            flush_every: None,
        };
        Ok(match name {
            "forward" => one(&pod, POD60, BIZ),
            "established" => {
                let s = TrafficSpec { dst_ip: VIP, ..pod };
                one(&s, POD60, self.port("pod41"))
            }
            "new" => {
                let s = TrafficSpec {
                    dst_ip: VIP,
                    proto: Proto::TcpSyn,
                    ..pod
                };
                let lay = packet::build(&s);
                let frames = (0..ROUND)
                    .map(|f| {
                        let mut b = lay.bytes.clone();
                        packet::stamp(
                            &mut b,
                            &lay.layout,
                            &TrafficSpec {
                                sports: 60000,
                                flows: ROUND,
                                ..s.clone()
                            },
                            f,
                            0,
                            0,
                        );
                        (b, POD60, self.port("pod41"))
                    })
                    .collect();
                Flows {
                    frames,
                    flush_every: Some(ROUND as usize),
                }
            }
            "vxlan-encap" => {
                let s = TrafficSpec {
                    dst_ip: Ipv4Addr::new(10, 20, 4, 11),
                    ..pod
                };
                one(&s, POD60, CTL)
            }
            "vxlan-decap" => {
                let s = TrafficSpec {
                    src_mac: [0x02, 0xaf, 0x78, 0, 0, 4],
                    dst_mac: [0x02, 0xaf, 0x78, 0, 0, 2],
                    src_ip: Ipv4Addr::new(10, 20, 4, 11),
                    dst_ip: POD60_IP,
                    vxlan: Some(VxlanSpec {
                        src_mac: [0x02, 0xaf, 3, 0, 0, 4],
                        dst_mac: CTL_MAC,
                        src_ip: Ipv4Addr::new(10, 186, 152, 104),
                        dst_ip: Ipv4Addr::new(10, 186, 152, 103),
                        vni: 2,
                    }),
                    ..pod
                };
                one(&s, CTL, POD60)
            }
            "vlan" => {
                let tagged = TrafficSpec {
                    src_mac: [0x02, 0, 0, 0, 0x55, 5],
                    dst_mac: BIZ_MAC,
                    src_ip: Ipv4Addr::new(10, 186, 155, 5),
                    dst_ip: POD60_IP,
                    vlan: Some(1155),
                    ..pod.clone()
                };
                let to_underlay = TrafficSpec {
                    dst_ip: Ipv4Addr::new(10, 186, 155, 5),
                    ..pod
                };
                Flows {
                    frames: vec![
                        (packet::build(&tagged).bytes, BIZ, POD60),
                        (packet::build(&to_underlay).bytes, POD60, BIZ),
                    ],
                    flush_every: None,
                }
            }
            _ => bail!("unknown path {name}; one of {PATHS:?}"),
        })
    }

    /// Runs `n` packets of `path`; every one must leave by its expected port.
    fn run(&self, path: &Flows, n: usize) -> Result<()> {
        let ctx = Ctx {
            tables: &self.tables,
            shared: &self.shared,
            counters: &self.counters,
            now_s: 1,
            now_ns: 1_000_000_000,
            trace: None,
            local: &self.local,
        };
        let mut buf = vec![0u8; 2048];
        let mut wrong = 0usize;
        let mut last = None;
        for i in 0..n {
            if let Some(k) = path.flush_every
                && i % k == 0
                && i > 0
            {
                self.shared.conntrack.flush();
            }
            let (t, rx, tx) = &path.frames[i % path.frames.len()];
            buf[HEADROOM..HEADROOM + t.len()].copy_from_slice(t);
            let mut f = Frame::new(&mut buf, HEADROOM, t.len());
            let meta = RxMeta {
                port: *rx,
                vlan: None,
            };
            let a = process_one(&mut f, black_box(&meta), &ctx);
            if a != Action::Tx(*tx) {
                wrong += 1;
                last = Some(a);
            }
            black_box(&mut buf);
        }
        if wrong > 0 {
            bail!("{wrong} of {n} packets did not take the path (last: {last:?})");
        }
        Ok(())
    }

    fn prime(&self, name: &str, path: &Flows) -> Result<()> {
        if name == "established" {
            // The flow's SYN creates the entry; its ACKs are measured.
            let mut syn = path.frames[0].0.clone();
            let l4 = 14 + 20;
            syn[l4 + 13] = 0x02;
            let c = u16::from_be_bytes([syn[l4 + 16], syn[l4 + 17]]);
            let c = afgate_dataplane::wire::checksum::update16(c, 0x5010, 0x5002);
            syn[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
            let p = Flows {
                frames: vec![(syn, path.frames[0].1, path.frames[0].2)],
                flush_every: None,
            };
            self.run(&p, 1)?;
        }
        Ok(())
    }
}

/// The pipeline and nothing else: kept out of line so that callgrind can count inside it
/// alone (`--toggle-collect`), apart from the loop that feeds it.
#[inline(never)]
fn process_one(f: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    pipeline::process(f, meta, ctx)
}

/// Instructions per packet of `path` under callgrind: the whole loop (frame copy, the
/// call, the check), or with `only_pipeline` just what runs inside [`process_one`].
fn callgrind(path: &str, n: u64, only_pipeline: bool) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let dir = afgate_tests::TempDir::new("paths")?;
    let mut totals = [0u64; 2];
    for (i, count) in [n, 2 * n].into_iter().enumerate() {
        let out = dir.path().join(format!("{path}-{count}.out"));
        let mut cmd = Command::new("timeout");
        cmd.args(["600", "valgrind", "--tool=callgrind", "--quiet"]);
        if only_pipeline {
            cmd.arg("--toggle-collect=*process_one*");
        }
        let st = cmd
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&exe)
            .args(["--once", "--path", path, "--packets", &count.to_string()])
            .status()
            .context("valgrind (apt-get install valgrind)")?;
        if !st.success() {
            bail!("callgrind run of {path} failed: {st}");
        }
        totals[i] = afgate_bench::micro::callgrind_total(&out)?;
    }
    Ok(totals[1].saturating_sub(totals[0]) as f64 / n as f64)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let has = |k: &str| args.iter().any(|a| a == k);
    let n: u64 = get("--packets")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let paths: Vec<String> = match get("--path") {
        Some(p) => vec![p],
        None => PATHS.iter().map(|s| s.to_string()).collect(),
    };
    let b = Bench::new()?;
    if has("--once") {
        let p = b.path(&paths[0])?;
        b.prime(&paths[0], &p)?;
        return b.run(&p, n as usize);
    }
    if has("--callgrind") {
        let n = n.min(100_000);
        println!(
            "| path | instructions/packet (callgrind, N={n}) | of which pipeline::process |\n|---|---:|---:|"
        );
        for p in &paths {
            // A path that does not forward fails here, before valgrind runs it.
            let path = b.path(p)?;
            b.prime(p, &path)?;
            b.run(&path, path.frames.len() * 2)?;
            println!(
                "| {p} | {:.0} | {:.0} |",
                callgrind(p, n, false)?,
                callgrind(p, n, true)?
            );
        }
        return Ok(());
    }
    let mut results = Vec::new();
    for p in &paths {
        let path = b.path(p)?;
        b.prime(p, &path)?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            b.shared.conntrack.flush();
            b.prime(p, &path)?;
            let t = Instant::now();
            b.run(&path, n as usize)?;
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        results.push((p.clone(), best));
    }
    let reference = results.iter().find(|r| r.0 == "forward").map(|r| r.1);
    println!("| path | ns/packet (best of 3, N={n}) | × forward |\n|---|---:|---:|");
    for (p, ns) in &results {
        let ratio = reference.map_or("".into(), |r| format!("{:.2}", ns / r));
        println!("| {p} | {ns:.1} | {ratio} |");
    }
    Ok(())
}
