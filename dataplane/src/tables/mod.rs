//! What the pipeline reads: an immutable [`Tables`] snapshot the control thread builds aside
//! and publishes with one pointer swap, and [`Shared`] state the workers update themselves
//! (learned neighbours; later conntrack), lock-free.

pub mod bond;
pub mod fib;
pub mod neigh;
pub mod overlay;
pub mod ports;

pub use fib::{Fib, NextHop, Route};
pub use neigh::NeighCache;
pub use overlay::{PortKind, VlanMode};
pub use ports::{Port, PortId, PortRole, Ports};

use core::net::Ipv4Addr;
use hashbrown::HashMap;

/// One published configuration. Workers load it once per batch; the control thread never
/// mutates a published snapshot, it builds the next one.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub ports: Ports,
    pub fib: Fib,
    /// The node's own addresses and the port each is configured on: ARP and ICMP echo
    /// are answered for these.
    pub local: HashMap<Ipv4Addr, PortId>,
    /// Bumped on every publication; lets tests and `ctl` tell snapshots apart.
    pub generation: u64,
    /// VXLAN overlays and their remote VTEPs (`pipeline::vxlan`).
    pub vxlan: overlay::Vxlan,
    /// VLAN subinterfaces by (parent, vid) (`pipeline::vlan`).
    pub subifs: overlay::SubIfs,
    /// Bonds and their live members (`pipeline::bond`).
    pub bonds: bond::Bonds,
    /// Services, their backends and scheduler tables, and MASQUERADE rules
    /// (`pipeline::service`).
    pub services: crate::service::ServiceTable,
    /// Allowed source prefixes per pod port (`pipeline::antispoof`); empty: no validation.
    pub antispoof: crate::pipeline::antispoof::AntiSpoof,
    /// The new-flow rate above which ClusterIP flows go untracked (`pipeline::flood`).
    pub flood_guard: crate::pipeline::flood::FloodGuard,
}

impl Tables {
    #[inline]
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.local.contains_key(&addr)
    }
}

/// State shared by all workers and written on the packet path.
#[derive(Debug)]
pub struct Shared {
    pub neigh: NeighCache,
    /// One ARP request per unresolved neighbour per second (`pipeline::neigh`).
    pub arp_limit: neigh::ArpLimiter,
    /// Frames waiting for their next hop's ARP reply (`pipeline::neigh`), sent by whichever
    /// worker sees the neighbour resolve.
    pub arp_pending: neigh::PendingArp,
    /// ClientIP session affinity (`service::affinity`).
    pub affinity: crate::service::Affinity,
    /// Flows per service backend for the `lc` scheduler (`service::affinity::LcCounts`).
    pub lc: crate::service::LcCounts,
    /// Connection tracking: every NATed flow, both directions (`conntrack`).
    pub conntrack: crate::conntrack::Conntrack,
}

/// Conntrack size of [`Shared::new`]: enough for tests and small nodes without making every
/// test table allocate netfilter's default 262144 slots; `afgate run` sizes it from the
/// config with [`Shared::with_conntrack`].
pub const DEFAULT_CONNTRACK_CAPACITY: u32 = 16_384;

impl Shared {
    pub fn new(neigh_capacity: usize) -> Self {
        Shared::with_conntrack(
            neigh_capacity,
            crate::conntrack::Config {
                capacity: DEFAULT_CONNTRACK_CAPACITY,
                ..Default::default()
            },
        )
    }

    pub fn with_conntrack(neigh_capacity: usize, conntrack: crate::conntrack::Config) -> Self {
        Shared::with_conntrack_table(neigh_capacity, crate::conntrack::Conntrack::new(conntrack))
    }

    /// With a table built elsewhere (a shared segment adopted across restarts).
    pub fn with_conntrack_table(
        neigh_capacity: usize,
        conntrack: crate::conntrack::Conntrack,
    ) -> Self {
        Shared {
            neigh: NeighCache::new(neigh_capacity),
            arp_limit: neigh::ArpLimiter::new(neigh_capacity.min(4096)),
            arp_pending: neigh::PendingArp::new(),
            affinity: crate::service::Affinity::default(),
            lc: crate::service::LcCounts::default(),
            conntrack,
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new(4096)
    }
}
