//! Services (kube-proxy's job, SPEC B1–B3, B5–B7, B14): the [`ServiceTable`] the control
//! thread publishes inside [`crate::tables::Tables`], the per-worker scheduler state
//! ([`WorkerLocal`]) and the shared session-affinity table ([`Affinity`]).
//!
//! A service is looked up by the packet's (destination address, destination port, protocol):
//! ClusterIP, external IPs and load-balancer IPs are exact keys; a NodePort is keyed on the
//! wildcard address `0.0.0.0` and only consulted when the destination is a node address, so
//! adding or removing a node address never requires rebuilding services.
//!
//! Build aside, swap (STYLE §9): each [`Service`] is an immutable `Arc`, built with its
//! scheduler tables (ready lists, smooth-WRR sequence, Maglev table) when its backend set
//! changes. [`ServiceTable::upsert`] rebuilds only the changed service; cloning the table for
//! the next snapshot copies pointers.

pub mod affinity;
pub mod maglev;

pub use affinity::{Affinity, LcCounts};

use crate::tables::PortId;
use crate::wire::Ipv4Cidr;
use core::cell::Cell;
use core::net::Ipv4Addr;
use hashbrown::{HashMap, HashSet};
use std::sync::Arc;

/// At most this many services; a service's `slot` indexes per-worker scheduler state.
pub const MAX_SERVICES: usize = 16_384;
/// At most this many backends per service (scheduler tables hold `u16` indices).
pub const MAX_BACKENDS: usize = 4096;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Round robin over ready backends (IPVS `rr`).
    Rr,
    /// Weighted round robin, smooth (nginx-style) interleaving (IPVS `wrr`).
    Wrr,
    /// Least connections: fewest active conntrack entries (IPVS `lc`).
    Lc,
    /// Source hash: the client address picks the backend (IPVS `sh`), via the Maglev table.
    Sh,
    /// Uniform random (iptables `statistic --mode random`).
    Random,
    /// Weighted Maglev over the 5-tuple: consistent across nodes and backend changes.
    #[default]
    Maglev,
}

impl Scheduler {
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Sh => "sh",
            Scheduler::Random => "random",
            Scheduler::Maglev => "maglev",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendState {
    /// Takes new flows.
    #[default]
    Ready,
    /// Draining: keeps its established flows, takes no new ones (B14).
    Terminating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u16,
    pub state: BackendState,
    /// The backend runs on this node (externalTrafficPolicy: Local picks only these).
    pub local: bool,
}

impl Backend {
    /// The backend's key in conntrack entries (`Flow::backend`): its address, unique within
    /// a service (validated by the config), and stable across snapshots unlike an index.
    #[inline]
    pub fn key(&self) -> u32 {
        u32::from(self.addr)
    }
}

/// How a packet reached the service: decides externalTrafficPolicy and masquerading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl Frontend {
    /// Traffic from outside the cluster: externalTrafficPolicy applies.
    #[inline]
    pub fn is_external(self) -> bool {
        !matches!(self, Frontend::ClusterIp)
    }
}

/// What the control side declares for one service (one port of a Kubernetes Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Stable across snapshots; conntrack entries refer to it.
    pub id: u32,
    pub name: String,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub port: u16,
    pub cluster_ip: Option<Ipv4Addr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub lb_ips: Vec<Ipv4Addr>,
    pub scheduler: Scheduler,
    /// ClientIP session affinity with this timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy: Local (true) or Cluster (false).
    pub etp_local: bool,
    pub backends: Vec<Backend>,
}

/// The scheduler tables over one set of candidate backends (all ready, or the local ready).
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// Indices of ready backends with weight > 0.
    pub ready: Box<[u16]>,
    /// Smooth weighted round-robin order over `ready` (indices into `backends`).
    pub wrr: Box<[u16]>,
    /// Maglev lookup table (indices into `backends`).
    pub maglev: Box<[u16]>,
}

impl Pool {
    fn build(backends: &[Backend], pick: impl Fn(&Backend) -> bool) -> Pool {
        let ready: Vec<u16> = (0..backends.len())
            .filter(|&i| {
                let b = &backends[i];
                b.state == BackendState::Ready && b.weight > 0 && pick(b)
            })
            .map(|i| i as u16)
            .collect();
        let weighted: Vec<(Ipv4Addr, u16, u16)> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let w = if ready.contains(&(i as u16)) {
                    b.weight
                } else {
                    0
                };
                (b.addr, b.port, w)
            })
            .collect();
        Pool {
            wrr: smooth_wrr(backends, &ready),
            maglev: maglev::build(&weighted),
            ready: ready.into_boxed_slice(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

/// Longest WRR sequence kept; weights are scaled down to fit.
const MAX_WRR_SEQ: u64 = 4096;

/// nginx's smooth weighted round robin, unrolled once into a sequence: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c, so bursts spread too.
fn smooth_wrr(backends: &[Backend], ready: &[u16]) -> Box<[u16]> {
    if ready.is_empty() {
        return Box::new([]);
    }
    let g = ready
        .iter()
        .fold(0u64, |g, &i| gcd(g, backends[i as usize].weight as u64));
    let mut w: Vec<u64> = ready
        .iter()
        .map(|&i| backends[i as usize].weight as u64 / g.max(1))
        .collect();
    let total: u64 = w.iter().sum();
    if total > MAX_WRR_SEQ {
        for x in &mut w {
            *x = (*x * MAX_WRR_SEQ / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    let mut cur = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for k in 0..w.len() {
            cur[k] += w[k] as i64;
            if cur[k] > cur[best] {
                best = k;
            }
        }
        cur[best] -= total as i64;
        seq.push(ready[best]);
    }
    seq.into_boxed_slice()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One service as the workers see it: its spec plus the scheduler tables built from it.
#[derive(Debug, Clone)]
pub struct Service {
    pub spec: ServiceSpec,
    /// Dense index for per-worker state ([`WorkerLocal`]); stable while the service exists.
    pub slot: u32,
    /// Bumped when the backend set changes; conntrack entries remember the one they were
    /// scheduled under, so a matching generation proves the backend is still valid.
    pub generation: u32,
    pub all: Pool,
    /// Local ready backends, for externalTrafficPolicy: Local.
    pub local: Pool,
}

impl Service {
    #[inline]
    pub fn id(&self) -> u32 {
        self.spec.id
    }

    #[inline]
    pub fn backends(&self) -> &[Backend] {
        &self.spec.backends
    }

    /// The backend with conntrack key `key`, if it is still configured.
    #[inline]
    pub fn backend_by_key(&self, key: u32) -> Option<(usize, &Backend)> {
        self.spec
            .backends
            .iter()
            .enumerate()
            .find(|(_, b)| b.key() == key)
    }

    /// The candidates for a new flow that came in through `fe`.
    #[inline]
    pub fn pool(&self, fe: Frontend) -> &Pool {
        if fe.is_external() && self.spec.etp_local {
            &self.local
        } else {
            &self.all
        }
    }
}

/// What a scheduler needs to know about the flow being placed.
#[derive(Debug, Clone, Copy)]
pub struct FlowKey {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub proto: u8,
}

impl FlowKey {
    /// The Maglev lookup hash: a fixed function of the flow, the same on every node.
    #[inline]
    fn flow_hash(&self) -> u32 {
        crate::pipeline::flow::mix(
            u32::from(self.client),
            u32::from(self.client_port),
            u32::from(self.proto),
            0x6d61_676c,
        )
    }

    #[inline]
    fn client_hash(&self) -> u32 {
        crate::pipeline::flow::mix(u32::from(self.client), 0, 0, 0x7368_0000)
    }
}

impl Service {
    /// Picks a backend index for a new flow from `pool`. `advance` is false for a dry run
    /// (trace): cursors stay put. `conns(backend)` gives a backend's active connections for
    /// `lc`. `None` when the pool is empty.
    #[inline]
    pub fn pick(
        &self,
        pool: &Pool,
        flow: &FlowKey,
        local: &WorkerLocal,
        advance: bool,
        conns: impl Fn(&Backend) -> u32,
    ) -> Option<usize> {
        if pool.ready.is_empty() {
            return None;
        }
        let n = pool.ready.len() as u32;
        let i = match self.spec.scheduler {
            Scheduler::Rr => pool.ready[(local.next_cursor(self.slot, advance) % n) as usize],
            Scheduler::Wrr => {
                let c = local.next_cursor(self.slot, advance);
                pool.wrr[(c % pool.wrr.len() as u32) as usize]
            }
            Scheduler::Random => pool.ready[((local.random() as u64 * n as u64) >> 32) as usize],
            Scheduler::Sh => table_pick(&pool.maglev, flow.client_hash()),
            Scheduler::Maglev => table_pick(&pool.maglev, flow.flow_hash()),
            Scheduler::Lc => {
                // Fewest active connections per unit of weight (IPVS wlc's overhead rule);
                // ties go round robin so an idle service still spreads.
                let start = local.next_cursor(self.slot, advance) % n;
                let mut best = pool.ready[start as usize];
                let mut best_cost = u64::MAX;
                for k in 0..n {
                    let i = pool.ready[((start + k) % n) as usize];
                    let b = &self.spec.backends[i as usize];
                    let cost = (conns(b) as u64 * 256) / b.weight.max(1) as u64;
                    if cost < best_cost {
                        best = i;
                        best_cost = cost;
                    }
                }
                best
            }
        };
        Some(i as usize)
    }
}

#[inline]
fn table_pick(table: &[u16], hash: u32) -> u16 {
    table[((hash as u64 * table.len() as u64) >> 32) as usize]
}

/// SNAT target of a masquerade rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatTo {
    /// The address of the port the translated packet leaves by (MASQUERADE).
    Egress,
    /// A fixed address (SNAT --to-source).
    Address(Ipv4Addr),
}

/// One MASQUERADE rule (SPEC B5): matched against the packet as it arrived (before DNAT),
/// like iptables' PREROUTING mark + POSTROUTING MASQUERADE pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqRule {
    pub src: Ipv4Cidr,
    pub in_port: Option<PortId>,
    pub in_vlan: Option<u16>,
    pub dst: Ipv4Cidr,
    pub to: SnatTo,
    /// The mark recorded on the conntrack entry (kube-proxy's 0x200 / 0x4000).
    pub mark: u32,
}

impl MasqRule {
    #[inline]
    pub fn matches(&self, src: Ipv4Addr, dst: Ipv4Addr, port: PortId, vlan: Option<u16>) -> bool {
        self.src.contains(src)
            && self.dst.contains(dst)
            && self.in_port.is_none_or(|p| p == port)
            && self.in_vlan.is_none_or(|v| Some(v) == vlan)
    }
}

/// Conntrack mark of flows masqueraded for hairpin or externalTrafficPolicy: Cluster
/// (kube-proxy's KUBE-MARK-MASQ).
pub const MARK_MASQ: u32 = 0x4000;

/// Error from [`ServiceTable::upsert`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("{0} is already served by service {1:?}")]
    Conflict(String, String),
    #[error("too many services (at most {MAX_SERVICES})")]
    TooMany,
    #[error("too many backends (at most {MAX_BACKENDS})")]
    TooManyBackends,
}

type Key = (u32, u16, u8);

#[inline]
fn key(addr: Ipv4Addr, port: u16, proto: u8) -> Key {
    (u32::from(addr), port, proto)
}

/// All services of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    services: Vec<Option<Arc<Service>>>,
    by_front: HashMap<Key, (u32, Frontend)>,
    by_id: HashMap<u32, u32>,
    /// Every ClusterIP / external / LB address: ICMP echo to these is answered.
    vips: HashSet<u32>,
    pub masquerade: Vec<MasqRule>,
}

impl ServiceTable {
    pub fn new() -> Self {
        ServiceTable::default()
    }

    fn frontends(spec: &ServiceSpec) -> Vec<(Key, Frontend)> {
        let mut v = Vec::new();
        if let Some(ip) = spec.cluster_ip {
            v.push((key(ip, spec.port, spec.proto), Frontend::ClusterIp));
        }
        if let Some(np) = spec.node_port {
            v.push((
                key(Ipv4Addr::UNSPECIFIED, np, spec.proto),
                Frontend::NodePort,
            ));
        }
        for ip in &spec.external_ips {
            v.push((key(*ip, spec.port, spec.proto), Frontend::ExternalIp));
        }
        for ip in &spec.lb_ips {
            v.push((key(*ip, spec.port, spec.proto), Frontend::LoadBalancer));
        }
        v
    }

    /// Adds or replaces the service with `spec.id`, rebuilding only its tables. The
    /// generation is bumped when the backend set changed.
    pub fn upsert(&mut self, spec: ServiceSpec) -> Result<(), ServiceError> {
        if spec.backends.len() > MAX_BACKENDS {
            return Err(ServiceError::TooManyBackends);
        }
        for (k, _) in Self::frontends(&spec) {
            if let Some((slot, _)) = self.by_front.get(&k)
                && let Some(other) = self.get_slot(*slot)
                && other.id() != spec.id
            {
                let addr = Ipv4Addr::from(k.0);
                let proto = if k.2 == PROTO_TCP { "tcp" } else { "udp" };
                return Err(ServiceError::Conflict(
                    format!("{addr}:{}/{proto}", k.1),
                    other.spec.name.clone(),
                ));
            }
        }
        let (slot, generation) = match self.by_id.get(&spec.id) {
            Some(&slot) => {
                let old = self.get_slot(slot).cloned();
                let generation = match &old {
                    Some(o) if o.spec.backends == spec.backends => o.generation,
                    Some(o) => o.generation.wrapping_add(1),
                    None => 1,
                };
                self.unindex(slot);
                (slot, generation)
            }
            None => {
                let slot = match self.services.iter().position(Option::is_none) {
                    Some(s) => s,
                    None if self.services.len() < MAX_SERVICES => {
                        self.services.push(None);
                        self.services.len() - 1
                    }
                    None => return Err(ServiceError::TooMany),
                };
                (slot as u32, 1)
            }
        };
        let svc = Service {
            all: Pool::build(&spec.backends, |_| true),
            local: Pool::build(&spec.backends, |b| b.local),
            slot,
            generation,
            spec,
        };
        for (k, fe) in Self::frontends(&svc.spec) {
            self.by_front.insert(k, (slot, fe));
            if fe != Frontend::NodePort {
                self.vips.insert(k.0);
            }
        }
        self.by_id.insert(svc.id(), slot);
        self.services[slot as usize] = Some(Arc::new(svc));
        Ok(())
    }

    fn unindex(&mut self, slot: u32) {
        self.by_front.retain(|_, (s, _)| *s != slot);
        self.vips = self
            .by_front
            .iter()
            .filter(|(_, (_, fe))| *fe != Frontend::NodePort)
            .map(|(k, _)| k.0)
            .collect();
    }

    /// Removes a service; its tracked flows keep their translation until they expire.
    pub fn remove(&mut self, id: u32) -> Option<Arc<Service>> {
        let slot = self.by_id.remove(&id)?;
        self.unindex(slot);
        self.services.get_mut(slot as usize)?.take()
    }

    #[inline]
    fn get_slot(&self, slot: u32) -> Option<&Arc<Service>> {
        self.services.get(slot as usize)?.as_ref()
    }

    #[inline]
    pub fn get(&self, id: u32) -> Option<&Service> {
        self.get_slot(*self.by_id.get(&id)?).map(|s| &**s)
    }

    /// The service for a packet to `dst:port/proto`. `dst_is_local` enables NodePorts.
    #[inline]
    pub fn lookup(
        &self,
        dst: Ipv4Addr,
        port: u16,
        proto: u8,
        dst_is_local: bool,
    ) -> Option<(&Service, Frontend)> {
        if self.by_front.is_empty() {
            return None;
        }
        let hit = self.by_front.get(&key(dst, port, proto)).or_else(|| {
            if dst_is_local {
                self.by_front.get(&key(Ipv4Addr::UNSPECIFIED, port, proto))
            } else {
                None
            }
        })?;
        Some((self.get_slot(hit.0)?, hit.1))
    }

    /// `addr` is a ClusterIP, external IP or load-balancer IP of some service.
    #[inline]
    pub fn is_vip(&self, addr: Ipv4Addr) -> bool {
        !self.vips.is_empty() && self.vips.contains(&u32::from(addr))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().flatten().map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Nothing to do on the packet path: no services and no masquerade rules.
    #[inline]
    pub fn is_inert(&self) -> bool {
        self.by_front.is_empty() && self.masquerade.is_empty()
    }
}

/// Per-worker scheduler state, owned by one worker and passed in [`crate::pipeline::Ctx`].
///
/// `Cell`s, not atomics in the shared snapshot: round-robin cursors and the PRNG are touched
/// on every new flow, and a shared atomic would bounce its cache line between cores on each
/// one (and be reset by every snapshot swap). Per-worker cursors make each worker exactly
/// round-robin over its own flows; with N workers the global spread is N interleaved exact
/// round-robins, which is what IPVS does per CPU too.
#[derive(Debug)]
pub struct WorkerLocal {
    /// Round-robin / WRR / lc-tie cursor per service slot.
    cursors: Box<[Cell<u32>]>,
    rng: Cell<u64>,
    /// Next SNAT port candidate, as an offset into [`SNAT_PORTS`]. Workers start at
    /// different offsets, so they rarely race for one port; a race is caught by conntrack's
    /// clash check anyway.
    port_next: Cell<u32>,
}

/// Ports SNAT may pick (Linux's default `ip_local_port_range` is 32768–60999).
pub const SNAT_PORTS: core::ops::RangeInclusive<u16> = 32768..=60999;

const SNAT_SPAN: u32 = (*SNAT_PORTS.end() - *SNAT_PORTS.start()) as u32 + 1;

impl WorkerLocal {
    /// State for worker `index`.
    pub fn new(index: usize) -> Self {
        WorkerLocal {
            cursors: (0..MAX_SERVICES).map(|_| Cell::new(0)).collect(),
            rng: Cell::new(
                0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
            ),
            // Eight evenly spaced starting points (more workers share them).
            port_next: Cell::new((index as u32 % 8) * (SNAT_SPAN / 8)),
        }
    }

    /// The value of service `slot`'s cursor, advanced when `advance` (not in a dry run).
    #[inline]
    pub fn next_cursor(&self, slot: u32, advance: bool) -> u32 {
        let c = &self.cursors[slot as usize % MAX_SERVICES];
        let v = c.get();
        if advance {
            c.set(v.wrapping_add(1));
        }
        v
    }

    /// xorshift64*: cheap, good enough to spread flows, never seeded from the clock.
    #[inline]
    pub fn random(&self) -> u32 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// The next SNAT source port candidate.
    #[inline]
    pub fn snat_port(&self) -> u16 {
        let n = self.port_next.get();
        self.port_next.set((n + 1) % SNAT_SPAN);
        *SNAT_PORTS.start() + n as u16
    }
}

impl Default for WorkerLocal {
    fn default() -> Self {
        WorkerLocal::new(0)
    }
}

#[cfg(test)]
mod tests;
