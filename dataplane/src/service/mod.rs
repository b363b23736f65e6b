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
//! changes. [`ServiceTable::upsert`] rebuilds only the changed service and touches only its
//! own index keys; the indexes are sharded copy-on-write maps, so cloning the table for the
//! next snapshot copies shard pointers and a change copies the few shards it writes.

pub mod affinity;
pub mod maglev;
mod reverse;

pub use affinity::{Affinity, LcCounts};

use crate::tables::PortId;
use crate::wire::Ipv4Cidr;
use core::cell::Cell;
use core::net::Ipv4Addr;
use hashbrown::HashTable;
use std::sync::Arc;

/// At most this many services; a service's `slot` indexes per-worker scheduler state.
pub const MAX_SERVICES: usize = 262_144;
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

/// Packed frontend key: address << 32 | port << 8 | protocol.
type Key = u64;

#[inline]
fn key(addr: Ipv4Addr, port: u16, proto: u8) -> Key {
    (u64::from(u32::from(addr)) << 32) | (u64::from(port) << 8) | u64::from(proto)
}

fn key_name(k: Key) -> String {
    let addr = Ipv4Addr::from((k >> 32) as u32);
    let proto = if k as u8 == PROTO_TCP { "tcp" } else { "udp" };
    format!("{addr}:{}/{proto}", (k >> 8) as u16)
}

/// Shards per index: one change copies one shard (about N / 256 entries) instead of the
/// whole map, and cloning a table for the next snapshot bumps 256 reference counts per
/// index instead of copying N entries.
const SHARDS: usize = 256;

/// splitmix64's finalizer: every output bit depends on every input bit, so the shard (bits
/// 32..40), hashbrown's bucket (low bits) and its tag (top 7 bits) are independent.
#[inline]
fn hash64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn shard_of(h: u64) -> usize {
    (h >> 32) as usize & (SHARDS - 1)
}

/// An entry of a [`Sharded`] index: its hash is a function of its key alone.
trait Entry: Clone {
    fn key(&self) -> u64;
}

/// A hash index split into [`SHARDS`] copy-on-write shards. The hash is computed once per
/// lookup and picks both the shard and the bucket inside it.
#[derive(Debug, Clone)]
struct Sharded<T> {
    shards: Box<[Arc<HashTable<T>>]>,
    len: usize,
}

impl<T: Entry> Default for Sharded<T> {
    fn default() -> Self {
        // Empty shards share one allocation until first written.
        let empty = Arc::new(HashTable::new());
        Sharded {
            shards: (0..SHARDS).map(|_| empty.clone()).collect(),
            len: 0,
        }
    }
}

impl<T: Entry> Sharded<T> {
    #[inline]
    fn get(&self, k: u64) -> Option<&T> {
        let h = hash64(k);
        self.shards[shard_of(h)].find(h, |e| e.key() == k)
    }

    fn shard_mut(&mut self, h: u64) -> &mut HashTable<T> {
        Arc::make_mut(&mut self.shards[shard_of(h)])
    }

    fn get_mut(&mut self, k: u64) -> Option<&mut T> {
        let h = hash64(k);
        self.shard_mut(h).find_mut(h, |e| e.key() == k)
    }

    /// Inserts `e`, replacing the entry with the same key; returns the replaced one.
    fn insert(&mut self, e: T) -> Option<T> {
        let k = e.key();
        let h = hash64(k);
        match self
            .shard_mut(h)
            .entry(h, |x| x.key() == k, |x| hash64(x.key()))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(core::mem::replace(o.get_mut(), e))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(e);
                self.len += 1;
                None
            }
        }
    }

    fn remove(&mut self, k: u64) -> Option<T> {
        let h = hash64(k);
        // Not copying a shard only to find the key absent.
        self.shards[shard_of(h)].find(h, |e| e.key() == k)?;
        let (e, _) = self
            .shard_mut(h)
            .find_entry(h, |e| e.key() == k)
            .ok()?
            .remove();
        self.len -= 1;
        Some(e)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

#[derive(Debug, Clone)]
struct FrontEntry {
    key: Key,
    fe: Frontend,
    svc: Arc<Service>,
}

impl Entry for FrontEntry {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
}

#[derive(Debug, Clone)]
struct IdEntry(Arc<Service>);

impl Entry for IdEntry {
    #[inline]
    fn key(&self) -> u64 {
        u64::from(self.0.spec.id)
    }
}

/// A VIP and how many frontends use it: shared addresses are counted, not rebuilt.
#[derive(Debug, Clone, Copy)]
struct VipEntry {
    addr: u32,
    refs: u32,
}

impl Entry for VipEntry {
    #[inline]
    fn key(&self) -> u64 {
        u64::from(self.addr)
    }
}

/// Words per slot-bitmap chunk; 64 chunks of 64 words give [`MAX_SERVICES`] bits.
const SLOT_WORDS: usize = 64;
const SLOT_CHUNK: usize = SLOT_WORDS * 64;
const _: () = assert!(MAX_SERVICES == 64 * SLOT_CHUNK);

/// Which slots are taken: 64 copy-on-write chunks plus a mask of the full ones, so
/// allocating scans at most one chunk and a change copies 512 bytes.
#[derive(Debug, Clone)]
struct Slots {
    chunks: Box<[Arc<[u64; SLOT_WORDS]>]>,
    full: u64,
}

impl Default for Slots {
    fn default() -> Self {
        let empty = Arc::new([0u64; SLOT_WORDS]);
        Slots {
            chunks: (0..64).map(|_| empty.clone()).collect(),
            full: 0,
        }
    }
}

impl Slots {
    fn alloc(&mut self) -> Option<u32> {
        let c = (!self.full).trailing_zeros() as usize;
        if c == 64 {
            return None;
        }
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let w = chunk.iter().position(|w| *w != u64::MAX)?;
        let b = (!chunk[w]).trailing_zeros() as usize;
        chunk[w] |= 1 << b;
        if chunk.iter().all(|w| *w == u64::MAX) {
            self.full |= 1 << c;
        }
        Some((c * SLOT_CHUNK + w * 64 + b) as u32)
    }

    fn free(&mut self, slot: u32) {
        let s = slot as usize;
        let (c, w, b) = (s / SLOT_CHUNK, s % SLOT_CHUNK / 64, s % 64);
        Arc::make_mut(&mut self.chunks[c])[w] &= !(1 << b);
        self.full &= !(1 << c);
    }
}

/// All services of one snapshot.
///
/// Every index is [`Sharded`] and a change touches only the keys of the service it changes
/// (its old and new frontends, its id, the reference counts of its VIPs), so programming
/// one service costs the same with 10 or 100,000 loaded.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    by_front: Sharded<FrontEntry>,
    by_id: Sharded<IdEntry>,
    /// Every ClusterIP / external / LB address: ICMP echo to these is answered.
    vips: Sharded<VipEntry>,
    /// The addresses of `vips`, as a filter the packet path asks first: most packets are
    /// not to a service, and a zero counter says so with one load instead of two hash
    /// probes (frontend and VIP index).
    vip_filter: VipFilter,
    /// NodePort frontends: while there are none, a lookup never asks whether the destination
    /// is a node address.
    node_ports: usize,
    slots: Slots,
    /// Backend → ClusterIP, for the flood guard's stateless replies (`reverse`).
    by_backend: reverse::BackendIndex,
    pub masquerade: Vec<MasqRule>,
}

/// log2 of [`VipFilter`]'s counters.
const VIP_FILTER_BITS: u32 = 14;

/// A counting filter over VIP addresses: a zero counter proves an address is no VIP. Shared
/// copy-on-write between snapshots (one 16 KiB copy on the first change after a clone);
/// counters saturate and then stay set, which only costs the probe the filter would save.
#[derive(Debug, Clone)]
struct VipFilter(Arc<[u8; 1 << VIP_FILTER_BITS]>);

impl Default for VipFilter {
    fn default() -> Self {
        VipFilter(Arc::new([0; 1 << VIP_FILTER_BITS]))
    }
}

impl VipFilter {
    /// Fibonacci hashing: the top bits of the product depend on every bit of the address.
    #[inline]
    fn index(addr: u32) -> usize {
        (addr.wrapping_mul(0x9E37_79B1) >> (32 - VIP_FILTER_BITS)) as usize
    }

    #[inline]
    fn may_contain(&self, addr: u32) -> bool {
        self.0[Self::index(addr)] != 0
    }

    fn add(&mut self, addr: u32) {
        let c = &mut Arc::make_mut(&mut self.0)[Self::index(addr)];
        *c = c.saturating_add(1);
    }

    fn remove(&mut self, addr: u32) {
        let c = &mut Arc::make_mut(&mut self.0)[Self::index(addr)];
        if *c != u8::MAX {
            *c = c.saturating_sub(1);
        }
    }
}

impl ServiceTable {
    pub fn new() -> Self {
        ServiceTable::default()
    }

    fn frontends(spec: &ServiceSpec) -> impl Iterator<Item = (Key, Frontend)> + '_ {
        let (port, proto) = (spec.port, spec.proto);
        spec.cluster_ip
            .map(|ip| (key(ip, port, proto), Frontend::ClusterIp))
            .into_iter()
            .chain(
                spec.node_port
                    .map(|np| (key(Ipv4Addr::UNSPECIFIED, np, proto), Frontend::NodePort)),
            )
            .chain(
                spec.external_ips
                    .iter()
                    .map(move |ip| (key(*ip, port, proto), Frontend::ExternalIp)),
            )
            .chain(
                spec.lb_ips
                    .iter()
                    .map(move |ip| (key(*ip, port, proto), Frontend::LoadBalancer)),
            )
    }

    /// Adds or replaces the service with `spec.id`, rebuilding only its tables. The
    /// generation is bumped when the backend set changed.
    pub fn upsert(&mut self, spec: ServiceSpec) -> Result<(), ServiceError> {
        if spec.backends.len() > MAX_BACKENDS {
            return Err(ServiceError::TooManyBackends);
        }
        for (k, _) in Self::frontends(&spec) {
            if let Some(other) = self.by_front.get(k)
                && other.svc.id() != spec.id
            {
                return Err(ServiceError::Conflict(
                    key_name(k),
                    other.svc.spec.name.clone(),
                ));
            }
        }
        let mut prev = None;
        let (slot, generation) = match self.by_id.get(u64::from(spec.id)) {
            Some(IdEntry(old)) => {
                let old = prev.insert(old.clone());
                self.unindex(&old.spec);
                let generation = if old.spec.backends == spec.backends {
                    old.generation
                } else {
                    old.generation.wrapping_add(1)
                };
                (old.slot, generation)
            }
            None => (self.slots.alloc().ok_or(ServiceError::TooMany)?, 1),
        };
        let svc = Arc::new(Service {
            all: Pool::build(&spec.backends, |_| true),
            local: Pool::build(&spec.backends, |b| b.local),
            slot,
            generation,
            spec,
        });
        for (k, fe) in Self::frontends(&svc.spec) {
            self.by_front.insert(FrontEntry {
                key: k,
                fe,
                svc: svc.clone(),
            });
            if fe != Frontend::NodePort {
                let addr = (k >> 32) as u32;
                match self.vips.get_mut(u64::from(addr)) {
                    Some(v) => v.refs += 1,
                    None => {
                        self.vips.insert(VipEntry { addr, refs: 1 });
                        self.vip_filter.add(addr);
                    }
                }
            } else {
                self.node_ports += 1;
            }
        }
        self.by_backend
            .update(prev.as_ref().map(|p| &p.spec), Some(&svc.spec));
        self.by_id.insert(IdEntry(svc));
        Ok(())
    }

    /// Drops the frontend keys and VIP references of `spec`, and nothing else.
    fn unindex(&mut self, spec: &ServiceSpec) {
        for (k, fe) in Self::frontends(spec) {
            // A spec may list one key twice (a ClusterIP that is also an external IP); the
            // second removal finds it gone. VIP counts follow the list, so they still match.
            let removed = self.by_front.remove(k).is_some();
            if fe != Frontend::NodePort {
                let addr = u64::from((k >> 32) as u32);
                if let Some(v) = self.vips.get_mut(addr) {
                    v.refs -= 1;
                    if v.refs == 0 {
                        self.vips.remove(addr);
                        self.vip_filter.remove(addr as u32);
                    }
                }
            } else if removed {
                self.node_ports -= 1;
            }
        }
    }

    /// Removes a service; its tracked flows keep their translation until they expire.
    pub fn remove(&mut self, id: u32) -> Option<Arc<Service>> {
        let IdEntry(old) = self.by_id.remove(u64::from(id))?;
        self.unindex(&old.spec);
        self.by_backend.update(Some(&old.spec), None);
        self.slots.free(old.slot);
        Some(old)
    }

    #[inline]
    pub fn get(&self, id: u32) -> Option<&Service> {
        self.by_id.get(u64::from(id)).map(|e| &*e.0)
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
        self.lookup_with(dst, port, proto, || dst_is_local)
    }

    /// [`Self::lookup`] for the packet path: `dst_is_local` is asked only when a NodePort
    /// could match (the destination is no VIP and NodePorts exist), and a destination the
    /// VIP filter rules out costs no hash probe.
    #[inline]
    pub fn lookup_with(
        &self,
        dst: Ipv4Addr,
        port: u16,
        proto: u8,
        dst_is_local: impl FnOnce() -> bool,
    ) -> Option<(&Service, Frontend)> {
        if self.by_front.len == 0 {
            return None;
        }
        if self.vip_filter.may_contain(u32::from(dst))
            && let Some(hit) = self.by_front.get(key(dst, port, proto))
        {
            return Some((&hit.svc, hit.fe));
        }
        if self.node_ports == 0 || !dst_is_local() {
            return None;
        }
        let hit = self.by_front.get(key(Ipv4Addr::UNSPECIFIED, port, proto))?;
        Some((&hit.svc, hit.fe))
    }

    /// `addr` is a ClusterIP, external IP or load-balancer IP of some service.
    #[inline]
    pub fn is_vip(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        self.vips.len != 0
            && self.vip_filter.may_contain(a)
            && self.vips.get(u64::from(a)).is_some()
    }

    /// The ClusterIP `VIP:port` a reply from backend `addr:port/proto` un-DNATs to without
    /// conntrack (the flood guard's rule 3): the one ClusterIP service without session
    /// affinity that lists the backend; `None` if none does, or two with different VIPs.
    /// One hash and one probe, whatever the number of services.
    #[inline]
    pub fn backend_vip(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<(Ipv4Addr, u16)> {
        self.by_backend.get(addr, port, proto)
    }

    /// Every service, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.by_id.iter().map(|e| &*e.0)
    }

    pub fn len(&self) -> usize {
        self.by_id.len
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.len == 0
    }

    /// Nothing to do on the packet path: no services and no masquerade rules.
    #[inline]
    pub fn is_inert(&self) -> bool {
        self.by_front.len == 0 && self.masquerade.is_empty()
    }

    /// The frontend index as (address, port, protocol) → (service id, kind), and the VIP
    /// reference counts: what a table rebuilt from scratch must equal (tests).
    #[cfg(test)]
    pub(crate) fn index_view(
        &self,
    ) -> (
        std::collections::BTreeMap<Key, (u32, Frontend)>,
        std::collections::BTreeMap<u32, u32>,
    ) {
        (
            self.by_front
                .iter()
                .map(|e| (e.key, (e.svc.id(), e.fe)))
                .collect(),
            self.vips.iter().map(|v| (v.addr, v.refs)).collect(),
        )
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
    /// Round-robin / WRR / lc-tie cursor per service slot: dense, so a cursor is one indexed
    /// load (4 bytes × [`MAX_SERVICES`] = 1 MiB per worker, allocated once). A hash of slots
    /// onto fewer cursors would make colliding `rr` services step each other's cursor.
    cursors: Box<[Cell<u32>]>,
    rng: Cell<u64>,
    /// Next SNAT port candidate, as an offset into [`SNAT_PORTS`]. Workers start at
    /// different offsets, so they rarely race for one port; a race is caught by conntrack's
    /// clash check anyway.
    port_next: Cell<u32>,
    /// This worker's new-flow rate, for the flood guard (`pipeline::flood`).
    pub flood: crate::pipeline::flood::WorkerFlood,
    /// Destination → egress decisions of this worker (`pipeline::nexthop_cache`).
    pub nexthops: crate::pipeline::nexthop_cache::NextHopCache,
    /// Tracked flows' translations of this worker (`pipeline::flow_cache`).
    pub flows: crate::pipeline::flow_cache::FlowCache,
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
            flood: Default::default(),
            nexthops: Default::default(),
            flows: Default::default(),
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
