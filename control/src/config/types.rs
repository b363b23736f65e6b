//! The configuration schema. Field docs here are the reference; docs/configuration.md
//! shows them with a complete example.

use afgate_dataplane::tables::{NextHop, Port, PortId, PortRole, Ports, Tables};
use afgate_dataplane::wire::{EthernetAddress, Ipv4Cidr};
use afgate_dataplane::worker::PollMode;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix written `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub Ipv4Cidr);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ipv4Cidr::from_str(&s).map(Cidr).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not an IPv4 prefix; write it as a.b.c.d/len with len 0-32"
            ))
        })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A MAC address written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EthernetAddress::from_str(&s)
            .map(|m| Mac(m.0))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a MAC address; write it as aa:bb:cc:dd:ee:ff"
                ))
            })
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&EthernetAddress(self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads and how they poll.
    #[serde(default)]
    pub workers: WorkersCfg,
    /// The kernel devices afgate owns.
    pub ports: Vec<PortCfg>,
    /// Static routes. Connected routes for port addresses are added automatically.
    #[serde(default)]
    pub routes: Vec<RouteCfg>,
    /// Static neighbours (permanent ARP entries).
    #[serde(default)]
    pub neighbors: Vec<NeighCfg>,
    /// IPv4 traffic the kernel keeps: the XDP program passes it before it reaches afgate
    /// (management SSH, the node's own control traffic).
    #[serde(default)]
    pub passthrough: Vec<PassCfg>,
    /// Bonds of uplink ports (see `config::overlay`).
    #[serde(default)]
    pub bonds: Vec<super::overlay::BondCfg>,
    /// VXLAN overlays and their remote VTEPs (see `config::overlay`).
    #[serde(default)]
    pub vxlan: super::overlay::VxlanCfg,
    /// The control socket and the metrics listener (see `crate::api::ApiCfg`).
    #[serde(default)]
    pub api: crate::api::ApiCfg,
    /// Services (ClusterIP, NodePort, external and LB IPs) and their backends (see
    /// `config::services`).
    #[serde(default)]
    pub services: Vec<super::services::ServiceCfg>,
    /// SNAT rules (see `config::services`).
    #[serde(default)]
    pub masquerade: Vec<super::services::MasqCfg>,
    /// Connection-tracking size and timeouts (see `config::services`).
    #[serde(default)]
    pub conntrack: super::services::ConntrackCfg,
    /// When learned neighbours are refreshed and removed (see `config::neigh`).
    #[serde(default)]
    pub neighbors_aging: super::neigh::NeighAgingCfg,
    /// Flood guard and pod source validation, both off by default (see
    /// `config::reliability`).
    #[serde(default)]
    pub reliability: super::reliability::ReliabilityCfg,
    /// Conntrack state kept across restarts and the handover socket (see
    /// `crate::handover::RestartCfg`).
    #[serde(default)]
    pub restart: crate::handover::RestartCfg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PollCfg {
    Busy,
    Wakeup,
    #[default]
    Adaptive,
}

impl From<PollCfg> for PollMode {
    fn from(p: PollCfg) -> PollMode {
        match p {
            PollCfg::Busy => PollMode::Busy,
            PollCfg::Wakeup => PollMode::Wakeup,
            PollCfg::Adaptive => PollMode::Adaptive,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersCfg {
    /// One pinned worker per listed core; worker i serves rx/tx queue i of every port.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    /// busy: never sleep (cores dedicated to NIC queues); wakeup: sleep in poll(2) whenever
    /// idle; adaptive: spin while busy, sleep after `idle_spins` empty passes.
    #[serde(default)]
    pub poll: PollCfg,
    /// Frames taken off one rx ring per pass, 32-1024.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Empty passes before an adaptive worker sleeps.
    #[serde(default = "default_idle_spins")]
    pub idle_spins: u32,
    /// UMEM frames per worker (4 KiB each), a power of two, 1024-262144. Default: enough
    /// to stock every port's fill and tx rings, rounded up to a power of two.
    #[serde(default)]
    pub frames: Option<u32>,
    /// Entries in each rx, tx, fill and completion ring, a power of two, 64-16384.
    #[serde(default = "default_ring")]
    pub ring_size: u32,
    /// Run the worker threads under SCHED_FIFO at this priority (1-99; unset: the normal
    /// scheduler). For cores the worker shares with the kernel's receive work, as on veth:
    /// with `poll: wakeup` the worker and the device's NAPI then take turns a batch at a
    /// time (see `afgate_dataplane::worker::set_realtime`). Not with `poll: busy`.
    #[serde(default)]
    pub rt_priority: Option<u8>,
}

fn default_cores() -> Vec<usize> {
    vec![0]
}
fn default_batch() -> usize {
    64
}
fn default_idle_spins() -> u32 {
    256
}
impl WorkersCfg {
    /// UMEM frames per worker: as configured, or what `ports` ports' fill and tx rings hold.
    pub fn umem_frames(&self, ports: usize) -> u32 {
        self.frames.unwrap_or_else(|| {
            (ports.max(1) as u64 * 2 * self.ring_size as u64)
                .next_power_of_two()
                .clamp(4096, 262_144) as u32
        })
    }
}
fn default_ring() -> u32 {
    // 2048 rx slots hold ~4 ms of a 500 kpps burst: room for a worker woken late from
    // poll(2) on a core it shares with softirq work.
    2048
}

impl Default for WorkersCfg {
    fn default() -> Self {
        WorkersCfg {
            cores: default_cores(),
            poll: PollCfg::default(),
            batch: default_batch(),
            idle_spins: default_idle_spins(),
            frames: None,
            rt_priority: None,
            ring_size: default_ring(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RoleCfg {
    /// Towards the top-of-rack gateway (biz).
    #[default]
    Uplink,
    /// A local pod's veth: proxy ARP for 169.254.1.1.
    Pod,
    /// The control network (VXLAN outer source).
    Ctl,
}

impl From<RoleCfg> for PortRole {
    fn from(r: RoleCfg) -> PortRole {
        match r {
            RoleCfg::Uplink => PortRole::Uplink,
            RoleCfg::Pod => PortRole::Pod,
            RoleCfg::Ctl => PortRole::Ctl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeCfg {
    /// Native (driver) mode where the device supports it, skb mode otherwise.
    #[default]
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BindCfg {
    /// Zero-copy where the driver supports it, copy otherwise.
    #[default]
    Auto,
    Copy,
    Zerocopy,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortCfg {
    /// afgate's name for the port (used by routes, neighbours, the CLI).
    pub name: String,
    /// The kernel network device.
    pub device: String,
    #[serde(default)]
    pub role: RoleCfg,
    /// The node's addresses on this port, with prefix length (`10.186.153.103/24`).
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    /// MTU; default: the device's.
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub xdp_mode: XdpModeCfg,
    #[serde(default)]
    pub af_xdp: BindCfg,
    /// Pass unicast frames addressed to other MACs to the kernel instead of dropping them.
    #[serde(default = "yes")]
    pub only_own_mac: bool,
    /// 802.1Q: `{ access: VID }` or `{ trunk: [VIDs], native: VID }` (see `config::overlay`).
    #[serde(default)]
    pub vlan: Option<super::overlay::VlanCfg>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NextHopCfg {
    pub via: Option<Ipv4Addr>,
    pub dev: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCfg {
    /// Destination prefix; `0.0.0.0/0` is the default route.
    pub dst: Cidr,
    /// Gateway (always onlink). Without it the route is `scope link`: the destination
    /// itself is resolved on `dev`.
    #[serde(default)]
    pub via: Option<Ipv4Addr>,
    /// Egress port name. Give either `dev` (with optional `via`) or `nexthops`.
    #[serde(default)]
    pub dev: Option<String>,
    /// Equal-cost next hops, chosen per flow by hash.
    #[serde(default)]
    pub nexthops: Vec<NextHopCfg>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NeighCfg {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub dev: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProtoCfg {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl ProtoCfg {
    pub fn number(self) -> u8 {
        match self {
            ProtoCfg::Any => 0,
            ProtoCfg::Tcp => 6,
            ProtoCfg::Udp => 17,
            ProtoCfg::Icmp => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassCfg {
    /// Destination address (a node address).
    pub addr: Ipv4Addr,
    #[serde(default)]
    pub proto: ProtoCfg,
    /// Destination port; 0 or absent: any.
    #[serde(default)]
    pub port: u16,
}

/// What the tables need to know about a kernel device: its MAC and MTU.
pub type DeviceFacts<'a> = dyn Fn(&str) -> std::io::Result<([u8; 6], u16)> + 'a;

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Config {
    /// Whole-file checks; each problem as (field path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        let mut err = |f: String, m: String| errs.push((f, m));
        let w = &self.workers;
        if w.cores.is_empty() {
            err("workers.cores".into(), "at least one core is needed".into());
        }
        let mut seen = HashSet::new();
        for (i, c) in w.cores.iter().enumerate() {
            if *c >= 1024 {
                err(
                    format!("workers.cores[{i}]"),
                    format!("core {c} is out of range 0-1023"),
                );
            }
            if !seen.insert(c) {
                err(
                    format!("workers.cores[{i}]"),
                    format!("core {c} is listed twice; one worker per core"),
                );
            }
        }
        if !(32..=1024).contains(&w.batch) {
            err(
                "workers.batch".into(),
                format!("{} is out of range; allowed: 32-1024", w.batch),
            );
        }
        if let Some(frames) = w.frames
            && (!frames.is_power_of_two() || !(1024..=262_144).contains(&frames))
        {
            err(
                "workers.frames".into(),
                format!("{frames} is not allowed; a power of two in 1024-262144"),
            );
        }
        if let Some(p) = w.rt_priority {
            if !(1..=99).contains(&p) {
                err(
                    "workers.rt_priority".into(),
                    format!("{p} is out of range; allowed: 1-99"),
                );
            } else if w.poll == PollCfg::Busy {
                err(
                    "workers.rt_priority".into(),
                    "a real-time worker that never sleeps (poll: busy) starves the kernel's \
                     receive work on its core; use poll: wakeup or adaptive"
                        .into(),
                );
            }
        }
        if !w.ring_size.is_power_of_two() || !(64..=16_384).contains(&w.ring_size) {
            err(
                "workers.ring_size".into(),
                format!("{} is not allowed; a power of two in 64-16384", w.ring_size),
            );
        }
        if self.ports.is_empty() {
            err("ports".into(), "at least one port is needed".into());
        }
        if self.ports.len() > 64 {
            err(
                "ports".into(),
                format!("{} ports; at most 64 are supported", self.ports.len()),
            );
        }
        let needed = self.ports.len() as u64 * 2 * w.ring_size as u64;
        if let Some(frames) = w.frames
            && (frames as u64) < needed
        {
            err(
                "workers.frames".into(),
                format!(
                    "{} frames cannot stock {} ports' fill and tx rings of {}; use at least {}",
                    frames,
                    self.ports.len(),
                    w.ring_size,
                    needed.next_power_of_two()
                ),
            );
        }
        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if !valid_name(&p.name) {
                err(
                    format!("ports[{i}].name"),
                    format!(
                        "{:?} is not a valid name: 1-15 of a-z A-Z 0-9 - _ .",
                        p.name
                    ),
                );
            }
            if !names.insert(p.name.as_str()) {
                err(
                    format!("ports[{i}].name"),
                    format!("port name {:?} is used twice", p.name),
                );
            }
            if !valid_name(&p.device) {
                err(
                    format!("ports[{i}].device"),
                    format!(
                        "{:?} is not a valid device name: 1-15 of a-z A-Z 0-9 - _ .",
                        p.device
                    ),
                );
            }
            if !devices.insert(p.device.as_str()) {
                err(
                    format!("ports[{i}].device"),
                    format!("device {:?} is used by two ports", p.device),
                );
            }
            if let Some(m) = p.mtu
                && !(68..=9000).contains(&m)
            {
                err(
                    format!("ports[{i}].mtu"),
                    format!("{m} is out of range; allowed: 68-9000"),
                );
            }
            for (j, a) in p.addresses.iter().enumerate() {
                let ip = a.0.address();
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback()
                {
                    err(
                        format!("ports[{i}].addresses[{j}]"),
                        format!("{ip} cannot be a node address"),
                    );
                }
                if !addrs.insert(ip) {
                    err(
                        format!("ports[{i}].addresses[{j}]"),
                        format!("{ip} is configured twice"),
                    );
                }
            }
        }
        // Routes and neighbours may name logical interfaces too (bond0, biz.1155, vxlan.2).
        let port_exists = |n: &str| self.interface_id(n).is_some();
        let mut dsts = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let net = r.dst.0.network();
            if !dsts.insert((net.address(), net.prefix_len())) {
                err(
                    format!("routes[{i}].dst"),
                    format!("a route to {net} is configured twice"),
                );
            }
            match (&r.dev, r.nexthops.is_empty()) {
                (Some(_), false) => err(
                    format!("routes[{i}]"),
                    "give either dev/via or nexthops, not both".into(),
                ),
                (None, true) => err(
                    format!("routes[{i}].dev"),
                    "missing: give dev (and optional via) or nexthops".into(),
                ),
                (None, false) if r.via.is_some() => err(
                    format!("routes[{i}].via"),
                    "with nexthops, give via inside each next hop".into(),
                ),
                _ => {}
            }
            if let Some(d) = &r.dev
                && !port_exists(d)
            {
                err(format!("routes[{i}].dev"), format!("no port named {d:?}"));
            }
            for (j, nh) in r.nexthops.iter().enumerate() {
                if !port_exists(&nh.dev) {
                    err(
                        format!("routes[{i}].nexthops[{j}].dev"),
                        format!("no port named {:?}", nh.dev),
                    );
                }
            }
        }
        for (i, n) in self.neighbors.iter().enumerate() {
            if !port_exists(&n.dev) {
                err(
                    format!("neighbors[{i}].dev"),
                    format!("no port named {:?}", n.dev),
                );
            }
            if !EthernetAddress(n.mac.0).is_unicast() {
                err(
                    format!("neighbors[{i}].mac"),
                    format!("{} is not a unicast MAC", EthernetAddress(n.mac.0)),
                );
            }
        }
        errs.extend(self.validate_overlay());
        errs.extend(self.validate_services());
        errs.extend(self.validate_neigh());
        errs.extend(self.validate_reliability());
        errs.extend(self.restart.validate_restart());
        errs
    }

    /// The id of a port or logical interface by name.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.interface_id(name)
    }

    /// Builds the dataplane tables. `device` tells each port's MAC and MTU (from the
    /// system when running; made up by `check`).
    pub fn tables(&self, device: &DeviceFacts<'_>) -> std::io::Result<Tables> {
        self.tables_with_progress(device, &mut |_, _| {})
    }

    /// [`Config::tables`], reporting (services built, services in total) as it goes, for
    /// start-up output on nodes with many services.
    pub fn tables_with_progress(
        &self,
        device: &DeviceFacts<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> std::io::Result<Tables> {
        let mut ports = Vec::with_capacity(self.ports.len());
        let mut tables = Tables::default();
        tables.fib = afgate_dataplane::tables::Fib::new();
        for (i, p) in self.ports.iter().enumerate() {
            let (mac, dev_mtu) = device(&p.device)?;
            let id = PortId(i as u16);
            ports.push(Port {
                id,
                name: p.name.clone(),
                device: p.device.clone(),
                role: p.role.into(),
                mac,
                addrs: p
                    .addresses
                    .iter()
                    .map(|a| (a.0.address(), a.0.prefix_len()))
                    .collect(),
                mtu: p.mtu.unwrap_or(dev_mtu),
                ..Default::default()
            });
            for a in &p.addresses {
                tables.local.insert(a.0.address(), id);
                let net = a.0.network();
                // Connected route, unless a static route to the same prefix overrides it.
                if tables.fib.get(net.address(), net.prefix_len()).is_none() {
                    tables.fib.insert(
                        net.address(),
                        net.prefix_len(),
                        vec![NextHop {
                            port: id,
                            via: None,
                        }],
                    );
                }
            }
        }
        self.build_overlay(&mut ports, &mut tables);
        tables.ports = Ports::new(ports);
        for r in &self.routes {
            let nexthops = match &r.dev {
                Some(dev) => vec![NextHop {
                    port: self.port_id(dev).unwrap_or_default(),
                    via: r.via,
                }],
                None => r
                    .nexthops
                    .iter()
                    .map(|nh| NextHop {
                        port: self.port_id(&nh.dev).unwrap_or_default(),
                        via: nh.via,
                    })
                    .collect(),
            };
            let net = r.dst.0.network();
            tables.fib.insert(net.address(), net.prefix_len(), nexthops);
        }
        tables.services = self.service_table_with_progress(progress);
        self.build_reliability(&mut tables);
        Ok(tables)
    }

    /// Static neighbours as (ip, mac, port).
    pub fn static_neighbours(&self) -> Vec<(Ipv4Addr, [u8; 6], PortId)> {
        self.neighbors
            .iter()
            .filter_map(|n| Some((n.ip, n.mac.0, self.port_id(&n.dev)?)))
            .collect()
    }
}
