//! The lab's node as tables, and frame builders, for testing stages frame by frame.

use super::{Action, Ctx, RxMeta, process};
use crate::counters::{DropReason, Event, WorkerCounters};
use crate::frame::Frame;
use crate::service::{Backend, BackendState, Scheduler, ServiceSpec};
use crate::tables::{NextHop, Port, PortId, PortRole, Ports, Shared, Tables};
use core::net::Ipv4Addr;

/// A ready, local backend of weight 1.
pub fn be(addr: Ipv4Addr, port: u16) -> Backend {
    Backend {
        addr,
        port,
        weight: 1,
        state: BackendState::Ready,
        local: true,
    }
}

/// A round-robin ClusterIP service `vip:port/proto` and nothing else.
pub fn cluster_ip_service(
    id: u32,
    vip: Ipv4Addr,
    port: u16,
    proto: u8,
    backends: Vec<Backend>,
) -> ServiceSpec {
    ServiceSpec {
        id,
        name: format!("svc{id}"),
        proto,
        port,
        cluster_ip: Some(vip),
        node_port: None,
        external_ips: vec![],
        lb_ips: vec![],
        scheduler: Scheduler::Rr,
        affinity_timeout: None,
        etp_local: false,
        backends,
    }
}

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
    pub local: crate::service::WorkerLocal,
}

pub struct Out {
    pub action: Action,
    pub frame: Vec<u8>,
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
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
            ..Default::default()
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
            local: crate::service::WorkerLocal::default(),
        }
    }

    /// `ip/32 dev port`: a connected host route (a pod's).
    pub fn route_link(&mut self, ip: Ipv4Addr, port: PortId) {
        self.tables
            .fib
            .insert(ip, 32, vec![NextHop { port, via: None }]);
    }

    /// A pod at `ip` behind `port`: its /32 route and its MAC as a static neighbour.
    pub fn add_pod(&mut self, ip: Ipv4Addr, mac: [u8; 6], port: PortId) {
        self.route_link(ip, port);
        self.shared.neigh.set_static(ip, mac, port);
    }

    pub fn mac(&self, p: PortId) -> [u8; 6] {
        self.tables.ports.get(p).unwrap().mac
    }

    pub fn run(&self, port: PortId, frame: Vec<u8>) -> Out {
        self.run_at(port, frame, 1_000_000_000)
    }

    /// The context stages get, at dataplane time 1 s.
    pub fn ctx(&self) -> Ctx<'_> {
        self.ctx_at(1_000_000_000)
    }

    pub fn ctx_at(&self, now_ns: u64) -> Ctx<'_> {
        Ctx {
            tables: &self.tables,
            shared: &self.shared,
            counters: &self.counters,
            now_s: (now_ns / 1_000_000_000) as u32,
            now_ns,
            trace: None,
            local: &self.local,
        }
    }

    /// [`Lab::run`] at dataplane time `now_ns`.
    pub fn run_at(&self, port: PortId, frame: Vec<u8>, now_ns: u64) -> Out {
        let mut buf = vec![0u8; 4096];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
        let ctx = self.ctx_at(now_ns);
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

// The overlay/underlay node (`Lab::overlay`): Lab::new's ports plus a ctl port, a trunk with
// VLAN 1155 and its subinterface, a VXLAN device towards one remote node, and a bond of two
// uplinks.
pub const CTL: PortId = PortId(3);
pub const TRUNK: PortId = PortId(4);
pub const UP0: PortId = PortId(5);
pub const UP1: PortId = PortId(6);
pub const TRUNK_1155: PortId = PortId(7);
pub const VXLAN: PortId = PortId(8);
pub const BOND: PortId = PortId(9);

pub const CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 152, 103);
pub const REMOTE_CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 152, 104);
pub const REMOTE_VTEP: Ipv4Addr = Ipv4Addr::new(10, 20, 4, 0);
pub const REMOTE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 4, 5);
pub const UPOD_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 6);
pub const UPOD_GW: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 30);
pub const BOND_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 160, 103);
pub const BOND_GW_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 160, 254);
pub const BOND_GW_NET_HOST: Ipv4Addr = Ipv4Addr::new(10, 186, 170, 5);

pub const REMOTE_CTL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x52, 0x01];
pub const REMOTE_VXLAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x52, 0x02];
pub const UPOD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x55, 0x06];
pub const BOND_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];

impl Lab {
    pub fn overlay() -> Self {
        use crate::tables::bond::{Bond, BondHash, Bonds};
        use crate::tables::overlay::{
            OuterHeader, Overlay, PortKind, VidSet, VlanMode, Vtep, Vxlan,
        };
        let mut lab = Lab::new();
        let mut ports: Vec<Port> = lab.tables.ports.iter().cloned().collect();
        let bond_mac = [0x02, 0xaf, 0, 0, 0, 0x20];
        let port = |id: PortId, name: &str, mac: [u8; 6], addrs: Vec<(Ipv4Addr, u8)>, mtu| Port {
            id,
            name: name.into(),
            device: name.into(),
            mac,
            addrs,
            mtu,
            ..Default::default()
        };
        ports.push(Port {
            role: PortRole::Ctl,
            ..port(
                CTL,
                "ctl",
                [0x02, 0xaf, 0, 0, 0, 0x10],
                vec![(CTL_IP, 24)],
                1500,
            )
        });
        ports.push(Port {
            vlan: VlanMode::Trunk {
                vids: VidSet::new([1155]),
                native: None,
            },
            ..port(TRUNK, "trunk", [0x02, 0xaf, 0, 0, 0, 0x11], vec![], 1500)
        });
        for (id, name) in [(UP0, "up0"), (UP1, "up1")] {
            ports.push(Port {
                kind: PortKind::BondMember { bond: BOND },
                ..port(id, name, bond_mac, vec![], 1500)
            });
        }
        ports.push(Port {
            kind: PortKind::Vlan {
                parent: TRUNK,
                vid: 1155,
            },
            ..port(
                TRUNK_1155,
                "trunk.1155",
                [0x02, 0xaf, 0, 0, 0, 0x11],
                vec![(UPOD_GW, 27)],
                1500,
            )
        });
        ports.push(Port {
            kind: PortKind::Vxlan { index: 0 },
            ..port(VXLAN, "vxlan.2", [0x02, 0xaf, 0, 0, 0, 0x12], vec![], 1450)
        });
        ports.push(Port {
            kind: PortKind::Bond { index: 0 },
            ..port(BOND, "bond0", bond_mac, vec![(BOND_IP, 24)], 1500)
        });
        lab.tables.ports = Ports::new(ports);
        let t = &mut lab.tables;
        let nh = |port, via| vec![NextHop { port, via }];
        t.local.insert(CTL_IP, CTL);
        t.local.insert(UPOD_GW, TRUNK_1155);
        t.local.insert(BOND_IP, BOND);
        t.fib
            .insert(Ipv4Addr::new(10, 186, 152, 0), 24, nh(CTL, None));
        t.fib
            .insert(Ipv4Addr::new(10, 186, 155, 0), 27, nh(TRUNK_1155, None));
        t.fib.insert(
            Ipv4Addr::new(10, 20, 4, 0),
            25,
            nh(VXLAN, Some(REMOTE_VTEP)),
        );
        t.fib
            .insert(Ipv4Addr::new(10, 186, 160, 0), 24, nh(BOND, None));
        t.fib.insert(
            Ipv4Addr::new(10, 186, 170, 0),
            24,
            nh(BOND, Some(BOND_GW_IP)),
        );
        t.vxlan = Vxlan::new(
            4789,
            vec![Overlay {
                port: VXLAN,
                vni: 2,
                local: CTL_IP,
                vteps: vec![Vtep {
                    inner_via: REMOTE_VTEP,
                    inner_mac: REMOTE_VXLAN_MAC,
                    remote: REMOTE_CTL_IP,
                    outer: OuterHeader::new(CTL_IP, REMOTE_CTL_IP, 4789, 2),
                }],
            }],
        );
        t.subifs.insert(TRUNK, 1155, TRUNK_1155);
        t.bonds = Bonds {
            bonds: vec![Bond {
                port: BOND,
                members: vec![UP0, UP1],
                up: vec![UP0, UP1],
                hash: BondHash::Layer34,
            }],
        };
        lab.shared
            .neigh
            .set_static(REMOTE_CTL_IP, REMOTE_CTL_MAC, CTL);
        lab.shared.neigh.set_static(BOND_GW_IP, BOND_GW_MAC, BOND);
        lab.counters = WorkerCounters::new(10);
        lab
    }
}

/// A broadcast ARP request from `src_mac`/`spa` for `tpa`.
pub fn arp_request_frame(src_mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    use crate::wire::{
        ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame,
    };
    let mut f = vec![0u8; 60];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(EthernetAddress(src_mac));
    eth.set_ethertype(EtherType::Arp);
    ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(src_mac),
        source_protocol_addr: spa,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: tpa,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
    f
}

/// `inner` in VXLAN (`vni`) from the remote node `src` to the node's ctl address, as Linux's
/// vxlan device sends it (UDP checksum 0), built with etherparse.
pub fn vxlan_frame(lab: &Lab, src: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let b = etherparse::PacketBuilder::ethernet2(REMOTE_CTL_MAC, lab.mac(CTL))
        .ipv4(src.octets(), CTL_IP.octets(), 64)
        .udp(45000, 4789);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, &payload).unwrap();
    // Linux sends VXLAN over IPv4 without a UDP checksum.
    out[40] = 0;
    out[41] = 0;
    out
}
