//! Ports: the kernel devices afgate owns and what each is for.

use core::net::Ipv4Addr;

/// Index of a port in [`Ports`]; also the index of its per-port counters and queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortId(pub u16);

impl PortId {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a port connects to; decides which node behaviours apply on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortRole {
    /// Towards the top-of-rack gateway (the seeds' `biz` bridge behind bond0).
    #[default]
    Uplink,
    /// A local pod's veth: /32 routes, proxy ARP for the pod gateway 169.254.1.1.
    Pod,
    /// The node's control network: VXLAN outer source.
    Ctl,
}

impl PortRole {
    pub fn name(self) -> &'static str {
        match self {
            PortRole::Uplink => "uplink",
            PortRole::Pod => "pod",
            PortRole::Ctl => "ctl",
        }
    }
}

/// The pod gateway address every overlay pod routes through (seeds/001: `default via
/// 169.254.1.1 dev eth0 onlink`); the node answers ARP for it on pod ports.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Port {
    pub id: PortId,
    pub name: String,
    pub device: String,
    pub role: PortRole,
    pub mac: [u8; 6],
    /// Configured addresses with their prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    pub mtu: u16,
    /// 802.1Q handling on this wire (physical ports and bonds; see `tables::overlay`).
    pub vlan: super::overlay::VlanMode,
    /// Physical, bond member, or a logical interface (VLAN subinterface, bond, VXLAN).
    pub kind: super::overlay::PortKind,
}

impl Port {
    /// The address used as the source of frames afgate originates on this port (ICMP
    /// errors, ARP requests, masquerade): the first configured address.
    pub fn primary_addr(&self) -> Option<Ipv4Addr> {
        self.addrs.first().map(|a| a.0)
    }

    pub fn has_addr(&self, addr: Ipv4Addr) -> bool {
        self.addrs.iter().any(|a| a.0 == addr)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Ports {
    ports: Vec<Port>,
}

impl Ports {
    pub fn new(ports: Vec<Port>) -> Self {
        debug_assert!(ports.iter().enumerate().all(|(i, p)| p.id.index() == i));
        Ports { ports }
    }

    #[inline]
    pub fn get(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.index())
    }

    pub fn by_name(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Port> {
        self.ports.iter()
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}
