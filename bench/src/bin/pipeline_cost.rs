//! In-process cost of the pipeline per packet for service traffic, with plain forwarding
//! measured in the same run as the reference (the ratio is the claim, not the ns).
//!
//! ```text
//! pipeline_cost [--packets N] [--mode all|forward|established|new]
//! ```
//!
//! - `forward`: pod → outside, no service, no NAT (the reference).
//! - `established`: pod → ClusterIP, a tracked flow: conntrack hit, DNAT re-applied.
//! - `new`: pod → ClusterIP, every packet a new flow (distinct source port): conntrack
//!   miss, Maglev, insert, DNAT. The table is flushed between rounds so it never fills.
//!
//! Each packet is copied from its template into the frame buffer first (the pipeline rewrites
//! it); that copy is in every mode, reference included. Instructions per packet:
//! `bench/pipeline_cost_callgrind.sh` runs this under `valgrind --tool=callgrind` at two
//! packet counts and divides the difference.

use afgate_dataplane::conntrack;
use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::frame::Frame;
use afgate_dataplane::pipeline::{self, Action, Ctx, RxMeta};
use afgate_dataplane::service::{
    Backend, BackendState, PROTO_TCP, Scheduler, ServiceSpec, ServiceTable, WorkerLocal,
};
use afgate_dataplane::tables::{NextHop, Port, PortId, PortRole, Ports, Shared, Tables};
use afgate_dataplane::wire::{
    EtherType, EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket,
    ethernet, tcp,
};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

const BIZ: PortId = PortId(0);
const POD60: PortId = PortId(1);
const POD41: PortId = PortId(2);
const POD60_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
const POD41_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 41);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 10);
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 254);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
const HEADROOM: usize = 256;
/// New flows per round before the table is flushed (well under its capacity).
const ROUND: usize = 8192;

fn mac(last: u8) -> [u8; 6] {
    [0x02, 0xaf, 0, 0, 0, last]
}

fn tables() -> Tables {
    let port = |id: PortId, name: &str, role, last: u8, addrs: Vec<(Ipv4Addr, u8)>, mtu| Port {
        id,
        name: name.into(),
        device: name.into(),
        role,
        mac: mac(last),
        addrs,
        mtu,
        ..Default::default()
    };
    let mut t = Tables {
        ports: Ports::new(vec![
            port(
                BIZ,
                "biz",
                PortRole::Uplink,
                1,
                vec![(Ipv4Addr::new(10, 186, 153, 103), 24)],
                1500,
            ),
            port(POD60, "pod60", PortRole::Pod, 2, vec![], 1450),
            port(POD41, "pod41", PortRole::Pod, 3, vec![], 1450),
        ]),
        ..Default::default()
    };
    t.local.insert(Ipv4Addr::new(10, 186, 153, 103), BIZ);
    let nh = |port, via| vec![NextHop { port, via }];
    t.fib
        .insert(Ipv4Addr::new(10, 186, 153, 0), 24, nh(BIZ, None));
    t.fib.insert(POD60_IP, 32, nh(POD60, None));
    t.fib.insert(POD41_IP, 32, nh(POD41, None));
    t.fib.insert(Ipv4Addr::UNSPECIFIED, 0, nh(BIZ, Some(GW_IP)));
    let mut s = ServiceTable::new();
    let backends = (0..8)
        .map(|i| Backend {
            addr: Ipv4Addr::new(10, 20, 9, 41 + i),
            port: 8080,
            weight: 1,
            state: BackendState::Ready,
            local: true,
        })
        .collect();
    s.upsert(ServiceSpec {
        id: 1,
        name: "web".into(),
        proto: PROTO_TCP,
        port: 80,
        cluster_ip: Some(VIP),
        node_port: None,
        external_ips: vec![],
        lb_ips: vec![],
        scheduler: Scheduler::Maglev,
        affinity_timeout: None,
        etp_local: false,
        backends,
    })
    .expect("one service");
    t.services = s;
    t
}

/// A TCP segment from pod60 with valid checksums.
fn tcp_frame(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let payload = 64;
    let mut f = vec![0u8; ethernet::HEADER_LEN + 20 + tcp::HEADER_LEN + payload];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(EthernetAddress(mac(2)));
    eth.set_src_addr(EthernetAddress([0x02, 0, 0, 0, 0x60, 1]));
    eth.set_ethertype(EtherType::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]);
    Ipv4Repr {
        src_addr: POD60_IP,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp::HEADER_LEN + payload,
        ttl: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
    }
    .emit(&mut ip);
    ip.fill_checksum();
    let mut t = TcpPacket::new_unchecked(&mut f[ethernet::HEADER_LEN + 20..]);
    t.set_src_port(sport);
    t.set_dst_port(dport);
    t.set_seq_number(1000);
    t.set_ack_number(1);
    t.set_header_len(tcp::HEADER_LEN as u8);
    t.set_flags(flags);
    t.set_window_len(65535);
    t.fill_checksum(POD60_IP, dst);
    f
}

struct Bench {
    tables: Tables,
    shared: Shared,
    counters: WorkerCounters,
    local: WorkerLocal,
}

impl Bench {
    fn new() -> Bench {
        let shared = Shared::with_conntrack(
            1024,
            conntrack::Config {
                capacity: 16_384,
                ..Default::default()
            },
        );
        shared.neigh.set_static(GW_IP, [2, 0, 0, 0, 0xfe, 1], BIZ);
        for i in 0..8 {
            shared.neigh.set_static(
                Ipv4Addr::new(10, 20, 9, 41 + i),
                [2, 0, 0, 0, 0x41, i],
                POD41,
            );
        }
        Bench {
            tables: tables(),
            shared,
            counters: WorkerCounters::new(3),
            local: WorkerLocal::default(),
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            tables: &self.tables,
            shared: &self.shared,
            counters: &self.counters,
            now_s: 1,
            now_ns: 1_000_000_000,
            trace: None,
            local: &self.local,
        }
    }

    /// Runs `n` packets cycling through `templates`; returns ns per packet.
    fn run(&self, templates: &[Vec<u8>], n: usize, flush_every: Option<usize>) -> f64 {
        let ctx = self.ctx();
        let meta = RxMeta {
            port: POD60,
            vlan: None,
        };
        let mut buf = vec![0u8; 4096];
        let start = Instant::now();
        for i in 0..n {
            if let Some(k) = flush_every
                && i % k == 0
                && i > 0
            {
                self.shared.conntrack.flush();
            }
            let t = &templates[i % templates.len()];
            buf[HEADROOM..HEADROOM + t.len()].copy_from_slice(t);
            let mut f = Frame::new(&mut buf, HEADROOM, t.len());
            let a = pipeline::process(&mut f, &meta, &ctx);
            debug_assert!(matches!(a, Action::Tx(_)), "{a:?}");
            black_box(a);
        }
        start.elapsed().as_nanos() as f64 / n as f64
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = get("--packets")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let mode = get("--mode").unwrap_or_else(|| "all".into());
    let b = Bench::new();

    let forward = vec![tcp_frame(EXT_IP, 40000, 80, tcp::flags::ACK)];
    // One tracked flow: its SYN creates the entry, its ACKs are measured.
    let syn = tcp_frame(VIP, 40000, 80, tcp::flags::SYN);
    let established = vec![tcp_frame(VIP, 40000, 80, tcp::flags::ACK)];
    // Fresh source ports: every packet a new flow within a round (flushed between rounds;
    // the flush is amortised over ROUND packets and included).
    let new: Vec<Vec<u8>> = (0..ROUND)
        .map(|i| tcp_frame(VIP, 1024 + i as u16, 80, tcp::flags::SYN))
        .collect();

    let mut results = Vec::new();
    let want = |m: &str| mode == "all" || mode == m;
    if want("forward") {
        results.push(("forward", b.run(&forward, n, None)));
    }
    if want("established") {
        b.run(std::slice::from_ref(&syn), 1, None);
        results.push(("established", b.run(&established, n, None)));
    }
    if want("new") {
        b.shared.conntrack.flush();
        results.push(("new", b.run(&new, n, Some(ROUND))));
    }
    let reference = results.iter().find(|r| r.0 == "forward").map(|r| r.1);
    for (name, ns) in &results {
        match reference {
            Some(r) => println!(
                "pipeline_cost {name}: {ns:.1} ns/packet ({:.2}x forward)",
                ns / r
            ),
            None => println!("pipeline_cost {name}: {ns:.1} ns/packet"),
        }
    }
    println!(
        "pipeline_cost: {} packets per mode, conntrack entries at end {}",
        n,
        b.shared.conntrack.count()
    );
}
