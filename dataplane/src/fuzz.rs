//! Fuzz harness bodies, shared by the bounded runs of the test suite
//! (`dataplane/tests/fuzz_quick.rs`) and the libFuzzer targets in `fuzz/`, so that both check
//! exactly the same invariants.
//!
//! - [`PipelineHarness`]: the lab node with every stage configured (VLAN trunk and
//!   subinterface, VXLAN overlay, bond, services with NAT and MASQUERADE, a small conntrack),
//!   one arbitrary frame per input on any receiving port; after each frame it checks what the
//!   worker relies on (see [`PipelineHarness::run`]).
//! - [`wire`]: every view's `new_checked`, then every getter, at every offset of the input.
//! - [`seeds`]: real frames for every path, built with etherparse (an independent encoder), as
//!   the starting corpus; [`Mutator`] derives inputs from them for the bounded runs.
//!
//! A pipeline input is `[port selector, clock step, frame bytes...]`.

use crate::conntrack;
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::pipeline::testing::*;
use crate::pipeline::{Action, RxMeta, process};
use crate::service::{
    Backend, MasqRule, PROTO_TCP, PROTO_UDP, Scheduler, ServiceSpec, ServiceTable, SnatTo,
};
use crate::tables::{PortId, PortKind, Shared};
use crate::wire::{self, Ipv4Cidr};
use core::hint::black_box;
use core::net::Ipv4Addr;

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const NODE_PORT: u16 = 31234;
/// An external IP of a service (externalTrafficPolicy Local).
pub const EXT_SVC_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 50);
/// Small on purpose: a long run fills it, so "table full" and eviction are exercised too.
pub const CONNTRACK_CAPACITY: u32 = 256;
pub const NEIGH_CAPACITY: usize = 64;
/// The UMEM chunk size afgate uses, headroom included.
pub const BUF_LEN: usize = 4096;

/// A service with no ClusterIP (its frontends are set by the caller).
fn svc(id: u32, proto: u8, port: u16, backends: Vec<Backend>) -> ServiceSpec {
    ServiceSpec {
        cluster_ip: None,
        ..cluster_ip_service(id, Ipv4Addr::UNSPECIFIED, port, proto, backends)
    }
}

/// The overlay lab node (`Lab::overlay`: VLAN trunk, VXLAN, bond) plus services on every
/// kind of backend path, a MASQUERADE rule for the underlay pods, and small shared tables.
pub fn full_lab() -> Lab {
    let mut lab = Lab::overlay();
    lab.shared = Shared::with_conntrack(
        NEIGH_CAPACITY,
        conntrack::Config {
            capacity: CONNTRACK_CAPACITY,
            ..Default::default()
        },
    );
    let n = &lab.shared.neigh;
    n.set_static(GW_IP, GW_MAC, BIZ);
    n.set_static(POD60_IP, POD60_MAC, POD60);
    n.set_static(POD41_IP, POD41_MAC, POD41);
    n.set_static(REMOTE_CTL_IP, REMOTE_CTL_MAC, CTL);
    n.set_static(BOND_GW_IP, BOND_GW_MAC, BOND);
    n.set_static(UPOD_IP, UPOD_MAC, TRUNK_1155);
    let mut t = ServiceTable::new();
    let specs = [
        ServiceSpec {
            cluster_ip: Some(VIP),
            node_port: Some(NODE_PORT),
            ..svc(
                1,
                PROTO_TCP,
                80,
                vec![be(POD41_IP, 8080), be(POD60_IP, 8080), be(UPOD_IP, 8080)],
            )
        },
        ServiceSpec {
            cluster_ip: Some(DNS_VIP),
            scheduler: Scheduler::Maglev,
            affinity_timeout: Some(10),
            ..svc(
                2,
                PROTO_UDP,
                53,
                vec![
                    be(POD41_IP, 53),
                    be(REMOTE_POD_IP, 53),
                    be(BOND_GW_NET_HOST, 53),
                ],
            )
        },
        ServiceSpec {
            external_ips: vec![EXT_SVC_IP],
            etp_local: true,
            scheduler: Scheduler::Lc,
            ..svc(3, PROTO_TCP, 443, vec![be(POD60_IP, 8443)])
        },
    ];
    for s in specs {
        t.upsert(s).expect("fuzz lab services are valid");
    }
    t.masquerade.push(MasqRule {
        src: Ipv4Cidr::new(Ipv4Addr::new(10, 186, 155, 0), 27).expect("valid"),
        in_port: None,
        in_vlan: Some(1155),
        dst: Ipv4Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 16).expect("valid"),
        to: SnatTo::Egress,
        mark: 0x200,
    });
    lab.tables.services = t;
    lab
}

/// Every counter the pipeline may bump, flattened, to check that none goes backwards.
fn counter_values(lab: &Lab, out: &mut Vec<u64>) {
    out.clear();
    out.extend(lab.counters.drops.iter().map(|c| c.get()));
    out.extend(lab.counters.events.iter().map(|c| c.get()));
    for p in lab.counters.ports.iter() {
        out.extend([p.rx_packets.get(), p.tx_packets.get(), p.drops.get()]);
    }
}

/// The lab node and its state across inputs (learned neighbours and tracked flows carry over
/// from one input to the next, as they do in a worker).
pub struct PipelineHarness {
    pub lab: Lab,
    /// Physical ports a frame can arrive on (bond members included, logical ports not).
    rx_ports: Vec<PortId>,
    buf: Vec<u8>,
    now_ns: u64,
    before: Vec<u64>,
    after: Vec<u64>,
    /// Actions seen: forwarded frames, and drops by reason (what a run reports).
    pub forwarded: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl Default for PipelineHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl PipelineHarness {
    pub fn new() -> Self {
        let lab = full_lab();
        let rx_ports = lab
            .tables
            .ports
            .iter()
            .filter(|p| matches!(p.kind, PortKind::Phys | PortKind::BondMember { .. }))
            .map(|p| p.id)
            .collect();
        PipelineHarness {
            lab,
            rx_ports,
            buf: vec![0; BUF_LEN],
            now_ns: 1_000_000_000,
            before: Vec::new(),
            after: Vec::new(),
            forwarded: 0,
            drops: [0; DropReason::COUNT],
        }
    }

    /// Runs one input, `[port selector, clock step, frame...]`, and panics if an invariant
    /// breaks:
    /// - the pipeline does not panic;
    /// - `Tx(port)`: the port exists and is one a worker has a socket on (physical or bond
    ///   member), the frame holds at least an Ethernet header and fits the buffer, the
    ///   headroom it used stays inside the buffer, and an IPv4 frame's header checksum is
    ///   valid (every drop of a bad one happens on ingress, every rewrite keeps it right);
    /// - no counter goes down;
    /// - the neighbour cache and conntrack hold no more entries than their capacity.
    pub fn run(&mut self, data: &[u8]) {
        let [sel, step, frame @ ..] = data else {
            return;
        };
        let frame = &frame[..frame.len().min(BUF_LEN - HEADROOM)];
        let port = self.rx_ports[usize::from(*sel) % self.rx_ports.len()];
        // Mostly small steps; a large one now and then so timeouts and GC paths run.
        self.now_ns += match step {
            0..=239 => u64::from(*step) * 1_000_000,
            _ => u64::from(*step - 239) * 30_000_000_000,
        };
        counter_values(&self.lab, &mut self.before);
        self.buf[..HEADROOM].fill(0xa5);
        self.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let ctx = self.lab.ctx_at(self.now_ns);
        let mut f = Frame::new(&mut self.buf, HEADROOM, frame.len());
        let action = process(&mut f, &RxMeta { port, vlan: None }, &ctx);
        assert!(f.start() + f.len() <= BUF_LEN, "frame outside its buffer");
        match action {
            Action::Tx(out) => {
                self.forwarded += 1;
                let p = self.lab.tables.ports.get(out);
                assert!(
                    p.is_some_and(|p| matches!(
                        p.kind,
                        PortKind::Phys | PortKind::BondMember { .. }
                    )),
                    "Tx to {out:?}, which no worker socket serves: {p:?}"
                );
                let d = f.data();
                assert!(d.len() >= wire::ethernet::HEADER_LEN, "Tx of a runt");
                check_ipv4_header(d);
            }
            Action::Drop(r) => {
                self.drops[r as usize] += 1;
                // The worker counts the drop; the harness does the same so "only grows"
                // covers drop counters too.
                self.lab.counters.dropped(r);
            }
        }
        counter_values(&self.lab, &mut self.after);
        for (i, (b, a)) in self.before.iter().zip(&self.after).enumerate() {
            assert!(a >= b, "counter {i} went down: {b} -> {a}");
        }
        let ct = &self.lab.shared.conntrack;
        assert!(
            ct.count() <= u64::from(ct.capacity()),
            "conntrack over capacity"
        );
        assert!(
            self.lab.shared.neigh.entries().len() <= NEIGH_CAPACITY.next_power_of_two(),
            "neighbour cache over capacity"
        );
    }

    /// The events counted so far (for reports).
    pub fn event(&self, e: Event) -> u64 {
        self.lab.event(e)
    }
}

/// An IPv4 frame leaving the pipeline (after any 802.1Q tag) has a valid header checksum.
fn check_ipv4_header(d: &[u8]) {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([d[off], d[off + 1]]);
    if ethertype == 0x8100 && d.len() >= 18 {
        off += 4;
        ethertype = u16::from_be_bytes([d[off], d[off + 1]]);
    }
    if ethertype != 0x0800 {
        return;
    }
    let ip = wire::Ipv4Packet::new_checked(&d[off + 2..]).expect("forwarded IPv4 parses");
    assert!(
        ip.verify_checksum(),
        "forwarded IPv4 header checksum is wrong"
    );
}

/// Parses `data` with every wire view, at every offset up to 64 (a header may start
/// anywhere in a frame), and reads every field: none may panic once `new_checked` said Ok.
pub fn wire(data: &[u8]) {
    for off in 0..data.len().min(64) {
        wire_at(&data[off..]);
    }
}

fn wire_at(d: &[u8]) {
    use wire::*;
    if let Ok(p) = EthernetFrame::new_checked(d) {
        black_box((p.dst_addr(), p.src_addr(), p.ethertype(), p.payload()));
    }
    if let Ok(p) = VlanTag::new_checked(d) {
        black_box((
            p.tci(),
            p.pcp(),
            p.dei(),
            p.vid(),
            p.ethertype(),
            p.payload(),
        ));
    }
    if let Ok(p) = ArpPacket::new_checked(d) {
        black_box((
            p.hardware_type(),
            p.protocol_type(),
            p.hardware_len(),
            p.protocol_len(),
            p.operation(),
            p.source_hardware_addr(),
            p.source_protocol_addr(),
            p.target_hardware_addr(),
            p.target_protocol_addr(),
        ));
        let _ = black_box(ArpRepr::parse(&p));
    }
    if let Ok(p) = Ipv4Packet::new_checked(d) {
        black_box((
            p.version(),
            p.is_valid_version(),
            p.header_len(),
            p.dscp_ecn(),
            p.dscp(),
            p.ecn(),
            p.total_len(),
            p.ident(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
            p.ttl(),
            p.next_header(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
        ));
        black_box((p.header(), p.options(), p.payload(), p.verify_checksum()));
        let _ = black_box(p.check_header_len());
        let _ = black_box(Ipv4Repr::parse(&p));
        let (src, dst) = (p.src_addr(), p.dst_addr());
        let _ = black_box(crate::pipeline::nat::tuple_of(&p));
        let _ = black_box(crate::pipeline::nat::icmp_error_payload(&p));
        if let Ok(u) = UdpPacket::new_checked(p.payload()) {
            black_box(u.verify_checksum(src, dst));
        }
        if let Ok(t) = TcpPacket::new_checked(p.payload()) {
            black_box(t.verify_checksum(src, dst));
        }
    }
    if let Ok(p) = Ipv6Packet::new_checked(d) {
        black_box((
            p.version(),
            p.is_valid_version(),
            p.traffic_class(),
            p.flow_label(),
            p.payload_len(),
            p.next_header(),
            p.hop_limit(),
            p.src_addr(),
            p.dst_addr(),
            p.payload(),
        ));
    }
    if let Ok(p) = IcmpPacket::new_checked(d) {
        black_box((
            p.msg_type(),
            p.code(),
            p.checksum(),
            p.rest_of_header(),
            p.echo_ident(),
            p.echo_seq_no(),
            p.next_hop_mtu(),
            p.payload(),
            p.verify_checksum(),
        ));
        let _ = black_box(IcmpRepr::parse(&p));
        let _ = black_box(crate::pipeline::nat::quoted(d));
    }
    if let Ok(p) = UdpPacket::new_checked(d) {
        black_box((
            p.src_port(),
            p.dst_port(),
            p.len(),
            p.checksum(),
            p.payload(),
        ));
    }
    if let Ok(p) = TcpPacket::new_checked(d) {
        black_box((
            p.src_port(),
            p.dst_port(),
            p.seq_number(),
            p.ack_number(),
            p.header_len(),
            p.flags(),
            p.fin(),
            p.syn(),
            p.rst(),
            p.psh(),
            p.ack(),
            p.urg(),
            p.ece(),
            p.cwr(),
        ));
        black_box((
            p.window_len(),
            p.checksum(),
            p.urgent_at(),
            p.options(),
            p.payload(),
        ));
    }
    if let Ok(p) = VxlanHeader::new_checked(d) {
        black_box((p.flags(), p.has_vni(), p.vni(), p.payload()));
        let _ = black_box(VxlanRepr::parse(&p));
    }
    black_box(checksum::data(d));
}

fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    syn: bool,
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(ports.0, ports.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5000) };
    let mut out = Vec::new();
    b.write(&mut out, b"GET / HTTP/1.0\r\n")
        .expect("in-memory write");
    out
}

/// `f` with an 802.1Q tag for `vid` after the MAC addresses.
pub fn tagged(f: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&f[12..]);
    out
}

/// An IPv4/UDP frame with 8 bytes of IP options (record route, NOPs, end), checksums valid.
pub fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..14].to_vec();
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    out.extend_from_slice(&ip[..ihl]);
    out.extend_from_slice(&[7, 7, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&ip[ihl..]);
    let mut p = wire::Ipv4Packet::new_unchecked(&mut out[14..]);
    p.set_header_len((ihl + 8) as u8);
    let total = p.total_len() + 8;
    p.set_total_len(total);
    p.fill_checksum();
    out
}

/// Real frames for every path of the lab node, as `(receiving port, frame)`.
pub fn seed_frames() -> Vec<(PortId, Vec<u8>)> {
    let lab = Lab::overlay();
    let m = |p| lab.mac(p);
    let udp = |sm, dm, s, d, ttl, sp, dp| udp_frame(sm, dm, s, d, ttl, sp, dp, b"payload-1234");
    let mut v = vec![
        (
            POD60,
            udp(POD60_MAC, m(POD60), POD60_IP, EXT_IP, 64, 1000, 53),
        ),
        (BIZ, udp(GW_MAC, m(BIZ), EXT_IP, POD60_IP, 30, 53, 1000)),
        (BIZ, udp(GW_MAC, m(BIZ), EXT_IP, POD60_IP, 1, 53, 1000)),
        (
            POD60,
            udp(POD60_MAC, m(POD60), POD60_IP, DNS_VIP, 64, 40000, 53),
        ),
        (
            POD60,
            udp(POD60_MAC, m(POD60), POD60_IP, REMOTE_POD_IP, 64, 40001, 7),
        ),
        (
            BIZ,
            icmp_echo_frame(GW_MAC, m(BIZ), GW_IP, BIZ_IP, 64, 1, 1, b"ping"),
        ),
        (
            POD60,
            icmp_echo_frame(POD60_MAC, m(POD60), POD60_IP, VIP, 64, 2, 1, b"ping"),
        ),
        (
            POD60,
            tcp(POD60_MAC, m(POD60), POD60_IP, VIP, (40000, 80), true),
        ),
        (
            POD60,
            tcp(POD60_MAC, m(POD60), POD60_IP, VIP, (40000, 80), false),
        ),
        (
            POD41,
            tcp(
                POD41_MAC,
                m(POD41),
                POD41_IP,
                POD60_IP,
                (8080, 40000),
                false,
            ),
        ),
        (
            BIZ,
            tcp(GW_MAC, m(BIZ), EXT_IP, BIZ_IP, (50000, NODE_PORT), true),
        ),
        (
            BIZ,
            tcp(GW_MAC, m(BIZ), GW_IP, EXT_SVC_IP, (50001, 443), true),
        ),
        (BIZ, arp_request_frame(GW_MAC, GW_IP, BIZ_IP)),
        (
            POD60,
            arp_request_frame(POD60_MAC, POD60_IP, crate::tables::ports::POD_GATEWAY),
        ),
        (
            BIZ,
            with_ip_options(&udp(GW_MAC, m(BIZ), EXT_IP, POD60_IP, 30, 53, 1000)),
        ),
    ];
    let inner = udp(
        REMOTE_VXLAN_MAC,
        m(VXLAN),
        REMOTE_POD_IP,
        POD60_IP,
        64,
        5000,
        6000,
    );
    v.push((CTL, vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner)));
    v.push((CTL, vxlan_frame(&lab, REMOTE_CTL_IP, 3, &inner)));
    let upod = udp(UPOD_MAC, m(TRUNK_1155), UPOD_IP, DNS_VIP, 64, 41000, 53);
    v.push((TRUNK, tagged(&upod, 0x8100, 1155)));
    v.push((TRUNK, tagged(&tagged(&upod, 0x8100, 1155), 0x8100, 7)));
    v.push((
        TRUNK,
        tagged(
            &tcp(UPOD_MAC, m(TRUNK_1155), UPOD_IP, VIP, (41001, 80), true),
            0x8100,
            1155,
        ),
    ));
    v.push((
        UP0,
        udp(
            BOND_GW_MAC,
            m(BOND),
            BOND_GW_NET_HOST,
            POD41_IP,
            60,
            53,
            41002,
        ),
    ));
    // A first fragment (MF) and a later one of a datagram to a service address.
    let mut frag = udp(POD60_MAC, m(POD60), POD60_IP, DNS_VIP, 64, 40002, 53);
    {
        let mut ip = wire::Ipv4Packet::new_unchecked(&mut frag[14..]);
        ip.set_dont_frag(false);
        ip.set_more_frags(true);
        ip.fill_checksum();
    }
    v.push((POD60, frag.clone()));
    {
        let mut ip = wire::Ipv4Packet::new_unchecked(&mut frag[14..]);
        ip.set_more_frags(false);
        ip.set_frag_offset(1480);
        ip.fill_checksum();
    }
    v.push((POD60, frag));
    v
}

/// The seeds as pipeline inputs: `[port index, clock step, frame...]`.
pub fn seeds() -> Vec<Vec<u8>> {
    seed_frames()
        .into_iter()
        .map(|(p, f)| {
            let mut v = vec![p.0 as u8, 1];
            v.extend_from_slice(&f);
            v
        })
        .collect()
}

/// A small deterministic mutator (xorshift): bit flips, byte sets to boundary values,
/// truncation, extension, splices of two seeds. For the bounded runs, which must not depend
/// on libFuzzer; the long runs use libFuzzer's own mutators and coverage feedback.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Writes a mutation of `corpus[..]` into `out`.
    pub fn mutate(&mut self, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&corpus[self.below(corpus.len())]);
        for _ in 0..1 + self.below(4) {
            let len = out.len();
            match self.below(8) {
                0 | 1 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                2 if len > 0 => {
                    let i = self.below(len);
                    out[i] = [0, 1, 0x7f, 0x80, 0xff, 5, 0x45, 0x0f][self.below(8)];
                }
                3 if len > 2 => {
                    // Bias towards the header bytes, where parsing decisions live.
                    let i = self.below(len.min(64));
                    out[i] = self.next_u64() as u8;
                }
                4 => out.truncate(self.below(len + 1)),
                5 => {
                    let n = self.below(64);
                    for _ in 0..n {
                        out.push(self.next_u64() as u8);
                    }
                }
                6 => {
                    let other = &corpus[self.below(corpus.len())];
                    let at = self.below(len + 1);
                    out.truncate(at);
                    let from = self.below(other.len());
                    out.extend_from_slice(&other[from..]);
                }
                _ if len > 4 => {
                    // A 16-bit length/port/type field set to a boundary value.
                    let i = self.below(len - 1);
                    let v: u16 = [0, 1, 0xffff, 0x8000, 20, 1500, 4789, 0x8100][self.below(8)];
                    out[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
                _ => {}
            }
        }
    }
}
