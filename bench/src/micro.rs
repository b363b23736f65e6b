//! Per-stage micro-benchmarks: the same frame run through one path of the pipeline (or one
//! wire helper) N times, in process, no I/O. Two measures:
//!
//! - ns/packet from the clock: quick, but noisy on a shared 2-core machine;
//! - instructions/packet under `valgrind --tool=callgrind` (`afgate-micro --callgrind`): the
//!   stage runs N packets in one process and 0 in another, and (total − baseline) / N is the
//!   stage's instruction count — repeatable to the instruction on any machine.
//!
//! The tables are built from a YAML config through afgate's own `Config::tables`, so the
//! micro-benchmarks see exactly what `afgate run` would build.

use crate::packet::{self, Proto, TrafficSpec};
use afgate::config::Config;
use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::frame::Frame;
use afgate_dataplane::pipeline::{self, Ctx, RxMeta};
use afgate_dataplane::tables::{PortId, Shared, Tables};
use afgate_dataplane::wire::{self, EtherType};
use anyhow::{Context, Result};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

const CONFIG: &str = "\
workers: { cores: [0] }
ports:
  - { name: d0, device: d0, role: uplink, addresses: [10.0.1.1/24] }
  - { name: d1, device: d1, role: uplink, addresses: [10.0.2.1/24] }
routes:
  - { dst: 10.8.0.0/16, via: 10.0.2.2, dev: d1 }
neighbors:
  - { ip: 10.0.2.2, mac: \"02:af:b2:00:00:02\", dev: d1 }
";

const D0_MAC: [u8; 6] = [0x02, 0xaf, 0xb1, 0, 0, 1];
const D1_MAC: [u8; 6] = [0x02, 0xaf, 0xb2, 0, 0, 1];
const GEN_MAC: [u8; 6] = [0x02, 0xaf, 0xb1, 0, 0, 2];

/// A stage to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Ethernet + IPv4 + UDP views with length and header-checksum checks.
    Parse,
    /// The whole l3 forward path: classify, LPM, TTL, neighbour MAC rewrite.
    Route,
    /// An ARP request for the node's address, answered in place.
    Arp,
    /// An ICMP echo request to the node, answered in place.
    Icmp,
    /// 802.1Q tag insert then strip.
    VlanPushPop,
    /// The generator's per-packet patch (flow, sequence, timestamp, incremental checksums).
    GenStamp,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Parse,
        Stage::Route,
        Stage::Arp,
        Stage::Icmp,
        Stage::VlanPushPop,
        Stage::GenStamp,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Route => "route",
            Stage::Arp => "arp",
            Stage::Icmp => "icmp",
            Stage::VlanPushPop => "vlan-push-pop",
            Stage::GenStamp => "gen-stamp",
        }
    }
}

pub struct Bench {
    tables: Tables,
    shared: Shared,
    counters: WorkerCounters,
    spec: TrafficSpec,
}

impl Bench {
    pub fn new() -> Result<Bench> {
        let cfg =
            Config::parse(CONFIG, Path::new("micro.yaml")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tables = cfg
            .tables(&|dev| Ok((if dev == "d0" { D0_MAC } else { D1_MAC }, 1500)))
            .context("tables")?;
        let shared = Shared::new(1024);
        for (ip, mac, port) in cfg.static_neighbours() {
            shared.neigh.set_static(ip, mac, port);
        }
        Ok(Bench {
            counters: WorkerCounters::new(tables.ports.iter().count()),
            tables,
            shared,
            spec: TrafficSpec {
                proto: Proto::Udp,
                src_mac: GEN_MAC,
                dst_mac: D0_MAC,
                src_ip: Ipv4Addr::new(10, 0, 1, 2),
                dst_ip: Ipv4Addr::new(10, 0, 2, 2),
                sport_base: 1024,
                sports: 1024,
                dport: 9,
                flows: 1024,
                frame_len: 64,
                vlan: None,
                vxlan: None,
            },
        })
    }

    fn frame(&self, stage: Stage) -> Vec<u8> {
        match stage {
            Stage::Arp => {
                let mut f = vec![0u8; 42];
                f[..6].copy_from_slice(&[0xff; 6]);
                f[6..12].copy_from_slice(&GEN_MAC);
                f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                wire::ArpRepr {
                    operation: wire::ArpOperation::Request,
                    source_hardware_addr: wire::EthernetAddress(GEN_MAC),
                    source_protocol_addr: Ipv4Addr::new(10, 0, 1, 2),
                    target_hardware_addr: wire::EthernetAddress([0; 6]),
                    target_protocol_addr: Ipv4Addr::new(10, 0, 1, 1),
                }
                .emit(&mut wire::ArpPacket::new_unchecked(&mut f[14..]));
                f
            }
            Stage::Icmp => {
                let mut t = packet::build(&self.spec).bytes;
                // Turn the UDP template into an ICMP echo request to the node.
                let l3 = 14;
                t[l3 + 9] = 1;
                t[l3 + 16..l3 + 20].copy_from_slice(&[10, 0, 1, 1]);
                t[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
                let c = !wire::checksum::data(&t[l3..l3 + 20]);
                t[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
                let l4 = l3 + 20;
                t[l4] = 8;
                t[l4 + 1] = 0;
                t[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
                let c = !wire::checksum::data(&t[l4..]);
                t[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
                t
            }
            _ => packet::build(&self.spec).bytes,
        }
    }

    /// Runs `n` packets through `stage`; returns a value so nothing is optimised away.
    pub fn run(&self, stage: Stage, n: u64) -> u64 {
        let template = self.frame(stage);
        let len = template.len();
        let mut buf = vec![0u8; 2048];
        let head = 256;
        let ctx = Ctx {
            tables: &self.tables,
            shared: &self.shared,
            counters: &self.counters,
            now_s: 1,
            now_ns: 1_000_000_000,
            trace: None,
            local: &afgate_dataplane::service::WorkerLocal::default(),
        };
        let meta = RxMeta {
            port: PortId(0),
            vlan: None,
        };
        let lay = packet::build(&self.spec).layout;
        let mut acc = 0u64;
        for i in 0..n {
            // Every packet starts from the pristine frame, as a fresh rx would (the
            // pipeline rewrites in place). The copy is part of the baseline-free cost of
            // every stage alike: 60 bytes.
            buf[head..head + len].copy_from_slice(&template);
            match stage {
                Stage::Parse => {
                    let f = &buf[head..head + len];
                    let e = wire::EthernetFrame::new_checked(f).ok();
                    let ok = e.and_then(|_eth| {
                        let ip = wire::Ipv4Packet::new_checked(&f[14..]).ok()?;
                        ip.verify_checksum().then_some(())?;
                        let u = wire::UdpPacket::new_checked(&f[34..]).ok()?;
                        Some(u.dst_port())
                    });
                    acc = acc.wrapping_add(u64::from(ok.unwrap_or(0)));
                }
                Stage::Route | Stage::Arp | Stage::Icmp => {
                    let mut fr = Frame::new(&mut buf, head, len);
                    let a = pipeline::process(&mut fr, black_box(&meta), &ctx);
                    acc = acc.wrapping_add(matches!(a, pipeline::Action::Tx(_)) as u64);
                }
                Stage::VlanPushPop => {
                    let s = &mut buf[head - 4..head + len];
                    let _ = wire::vlan::insert(s, EtherType::Vlan, 1155);
                    let v = wire::vlan::strip(&mut buf[head - 4..head + len]).unwrap_or(0);
                    acc = acc.wrapping_add(u64::from(v));
                }
                Stage::GenStamp => {
                    let f = &mut buf[head..head + len];
                    packet::stamp(
                        f,
                        &lay,
                        &self.spec,
                        (i % 1024) as u32,
                        (i / 1024) as u32,
                        i as u32,
                    );
                    acc = acc.wrapping_add(u64::from(f[40]));
                }
            }
            black_box(&mut buf);
        }
        acc
    }

    /// ns/packet by the clock, best of `rounds`.
    pub fn time(&self, stage: Stage, n: u64, rounds: u32) -> f64 {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            black_box(self.run(stage, n));
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        best
    }
}

/// Total instructions of a callgrind run (the `summary:` line of its output file).
pub fn callgrind_total(out_file: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(out_file)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no summary line in callgrind output")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each measured path does what it is named for: forwarded, answered, tagged and untagged.
    #[test]
    fn every_stage_takes_its_path() {
        let b = Bench::new().unwrap();
        for s in [Stage::Route, Stage::Arp, Stage::Icmp] {
            assert_eq!(b.run(s, 3), 3, "{} did not end in Tx", s.name());
        }
        assert_eq!(b.run(Stage::VlanPushPop, 2), 2 * 1155);
        assert_eq!(b.run(Stage::Parse, 1), 9);
    }
}
