//! The lab's node as tables, and frame builders, for testing stages frame by frame.

use super::{Action, Ctx, RxMeta, process};
use crate::counters::{DropReason, Event, WorkerCounters};
use crate::frame::Frame;
use crate::tables::{NextHop, Port, PortId, PortRole, Ports, Shared, Tables};
use core::net::Ipv4Addr;

pub const BIZ: PortId = PortId(0);
pub const POD60: PortId = PortId(1);
pub const POD41: PortId = PortId(2);

pub const BIZ_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 103);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 254);
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 10);
pub const POD60_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
pub const POD41_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 41);

pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
pub const POD60_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x60, 0x01];
pub const POD41_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x41, 0x01];

/// Headroom every test frame gets, as a UMEM frame would.
pub const HEADROOM: usize = 256;

pub struct Lab {
    pub tables: Tables,
    pub shared: Shared,
    pub counters: WorkerCounters,
}

pub struct Out {
    pub action: Action,
    pub frame: Vec<u8>,
}

impl Lab {
    pub fn new() -> Self {
        let port = |id: PortId, name: &str, role, last: u8, addrs: Vec<(Ipv4Addr, u8)>, mtu| Port {
            id,
            name: name.into(),
            device: name.into(),
            role,
            mac: [0x02, 0xaf, 0, 0, 0, last],
            addrs,
            mtu,
        };
        let ports = Ports::new(vec![
            port(BIZ, "biz", PortRole::Uplink, 1, vec![(BIZ_IP, 24)], 1500),
            port(POD60, "pod60", PortRole::Pod, 2, vec![], 1450),
            port(POD41, "pod41", PortRole::Pod, 3, vec![], 1450),
        ]);
        let mut tables = Tables {
            ports,
            ..Default::default()
        };
        tables.local.insert(BIZ_IP, BIZ);
        let nh = |port, via| vec![NextHop { port, via }];
        tables
            .fib
            .insert(Ipv4Addr::new(10, 186, 153, 0), 24, nh(BIZ, None));
        tables.fib.insert(POD60_IP, 32, nh(POD60, None));
        tables.fib.insert(POD41_IP, 32, nh(POD41, None));
        tables
            .fib
            .insert(Ipv4Addr::UNSPECIFIED, 0, nh(BIZ, Some(GW_IP)));
        let shared = Shared::new(256);
        shared.neigh.set_static(GW_IP, GW_MAC, BIZ);
        shared.neigh.set_static(POD60_IP, POD60_MAC, POD60);
        Lab {
            tables,
            shared,
            counters: WorkerCounters::new(3),
        }
    }

    pub fn mac(&self, p: PortId) -> [u8; 6] {
        self.tables.ports.get(p).unwrap().mac
    }

    pub fn run(&self, port: PortId, frame: Vec<u8>) -> Out {
        let mut buf = vec![0u8; 4096];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
        let ctx = Ctx {
            tables: &self.tables,
            shared: &self.shared,
            counters: &self.counters,
            now_s: 1,
            now_ns: 1_000_000_000,
            trace: None,
        };
        let mut f = Frame::new(&mut buf, HEADROOM, frame.len());
        let action = process(&mut f, &RxMeta { port, vlan: None }, &ctx);
        Out {
            action,
            frame: f.data().to_vec(),
        }
    }

    pub fn drop(&self, r: DropReason) -> u64 {
        self.counters.drop_count(r)
    }

    pub fn event(&self, e: Event) -> u64 {
        self.counters.event_count(e)
    }
}

/// An Ethernet/IPv4/UDP frame with valid checksums (built with etherparse, an independent
/// implementation).
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    set_df(&mut out);
    out
}

#[allow(clippy::too_many_arguments)]
pub fn icmp_echo_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4_echo_request(id, seq);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

/// Sets DF (as Linux does for UDP/TCP with PMTU discovery) and fixes the header checksum.
fn set_df(frame: &mut [u8]) {
    let mut ip = crate::wire::Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_dont_frag(true);
    ip.fill_checksum();
}

/// Checks IPv4 and L4 checksums of `frame` with etherparse.
pub fn assert_valid_l4(frame: &[u8]) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum, "ip checksum");
    match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
            assert_eq!(u.checksum(), want, "udp checksum");
        }
        Some(etherparse::TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "tcp checksum");
        }
        _ => {}
    }
}
