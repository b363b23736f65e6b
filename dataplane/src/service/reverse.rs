//! The reverse index the flood guard un-DNATs replies with (`pipeline::flood`, rule 3):
//! backend `addr:port/proto` → the ClusterIP `VIP:port` of the one service that lists it.
//!
//! Why an index and not a scan of the services: rule 3 asks for every TCP/UDP packet that
//! misses conntrack and is not to a service while the guard is configured, which includes
//! plain forwarded traffic; a scan would be O(services × backends) per packet. Here it is
//! one hash (the frontend index's) and one probe.
//!
//! Only services a stateless reply can stand for enter it: a ClusterIP and no session
//! affinity (the guard never leaves their flows untracked otherwise). A backend listed by
//! two such services with different VIPs answers `None`: the reply does not say which VIP
//! its client used. The index keeps every registration (a multiset per backend), so when
//! one of the two services goes, the other's answer comes back.
//!
//! It lives in the [`ServiceTable`](super::ServiceTable) and changes with it, copy-on-write
//! like the table's other indexes, and a service change touches only the backends it added
//! or removed (a backend set that only changed weights or states touches nothing). Unlike
//! them it is a two-level tree of [`FAN`]² small tables ([`Tree`]): it holds every
//! backend, several per service, so a flat 256-shard split would make each change copy a
//! large shard; the tree makes a change copy two arrays of [`FAN`] pointers and one small
//! table, and a snapshot clone bump one reference count.

use super::{Entry, Key, MAX_BACKENDS, ServiceSpec, Sharded, hash64, key};
use core::net::Ipv4Addr;
use hashbrown::HashTable;
use std::sync::Arc;

/// A ClusterIP frontend packed as `vip << 16 | port` (48 bits).
type Target = u64;

const TARGET: u64 = (1 << 48) - 1;
/// Registrations of `first` (bits 48..63): only one service listing one backend twice gives
/// a key the same target twice, so there are at most [`MAX_BACKENDS`].
const REFS_SHIFT: u32 = 48;
const REF: u64 = 1 << REFS_SHIFT;
const REFS: u64 = ((1 << 15) - 1) << REFS_SHIFT;
const _: () = assert!(MAX_BACKENDS < 1 << 15);
/// Other targets are registered too (in [`BackendIndex::shared`]): the answer is `None`.
const AMBIGUOUS: u64 = 1 << 63;

#[inline]
fn target(vip: Ipv4Addr, port: u16) -> Target {
    (u64::from(u32::from(vip)) << 16) | u64::from(port)
}

/// One backend key: its first target, how often that is registered, and whether others
/// are. 16 bytes and `Copy` (no list inline): copying a leaf table for the next snapshot
/// copies plain words, and freeing the old one needs no walk over its entries.
#[derive(Debug, Clone, Copy)]
struct BackendEntry {
    key: Key,
    /// `AMBIGUOUS | refs << 48 | first target`.
    val: u64,
}

/// log2 of [`FAN`].
const FAN_BITS: u32 = 6;
/// Pointers per tree level: at 400,000 backends a leaf table holds about 100.
const FAN: usize = 1 << FAN_BITS;

type Leaf = Arc<HashTable<BackendEntry>>;
type Group = Arc<[Leaf; FAN]>;

/// A hash map of [`BackendEntry`] as a copy-on-write tree: a root of [`FAN`] groups of
/// [`FAN`] leaf tables, all `Arc`s shared with the snapshot it was cloned from until written.
#[derive(Debug, Clone)]
struct Tree {
    root: Arc<[Group; FAN]>,
    len: usize,
}

impl Default for Tree {
    fn default() -> Self {
        // Empty leaves and groups share one allocation each until first written.
        let leaf: Leaf = Arc::new(HashTable::new());
        let group: Group = Arc::new(core::array::from_fn(|_| leaf.clone()));
        Tree {
            root: Arc::new(core::array::from_fn(|_| group.clone())),
            len: 0,
        }
    }
}

/// The root and group slots of hash `h`: bits 40..52, apart from the bits hashbrown uses
/// (the low ones for the bucket, the top 7 for its tag).
#[inline]
fn slots(h: u64) -> (usize, usize) {
    let i = (h >> 40) as usize;
    (i & (FAN - 1), (i >> FAN_BITS) & (FAN - 1))
}

impl Tree {
    #[inline]
    fn get(&self, k: Key) -> Option<&BackendEntry> {
        let h = hash64(k);
        let (a, b) = slots(h);
        self.root[a][b].find(h, |e| e.key == k)
    }

    /// The leaf of `h`, unshared (copied with its path if a snapshot still holds it).
    fn leaf_mut(&mut self, h: u64) -> &mut HashTable<BackendEntry> {
        let (a, b) = slots(h);
        let group = &mut Arc::make_mut(&mut self.root)[a];
        Arc::make_mut(&mut Arc::make_mut(group)[b])
    }

    fn get_mut(&mut self, k: Key) -> Option<&mut BackendEntry> {
        // Not copying a path only to find the key absent.
        self.get(k)?;
        let h = hash64(k);
        self.leaf_mut(h).find_mut(h, |e| e.key == k)
    }

    /// Inserts `e`, whose key is absent.
    fn insert(&mut self, e: BackendEntry) {
        let h = hash64(e.key);
        self.leaf_mut(h).insert_unique(h, e, |x| hash64(x.key));
        self.len += 1;
    }

    fn remove(&mut self, k: Key) {
        let h = hash64(k);
        if let Ok(o) = self.leaf_mut(h).find_entry(h, |e| e.key == k) {
            o.remove();
            self.len -= 1;
        }
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &BackendEntry> {
        self.root
            .iter()
            .flat_map(|g| g.iter().flat_map(|l| l.iter()))
    }
}

/// The other targets of an [`AMBIGUOUS`] key, none equal to its first target (a multiset:
/// when services leave, the last one's answer comes back).
#[derive(Debug, Clone)]
struct SharedEntry {
    key: Key,
    others: Vec<Target>,
}

impl Entry for SharedEntry {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct BackendIndex {
    map: Tree,
    /// Behind one `Arc`: backends shared by services are rare, so a snapshot clone should
    /// not pay 256 more reference counts for them.
    shared: Arc<Sharded<SharedEntry>>,
}

/// The target `spec`'s backends un-DNAT to, if it may answer statelessly at all.
fn eligible(spec: &ServiceSpec) -> Option<Target> {
    let vip = spec.cluster_ip?;
    if spec.affinity_timeout.is_some() || !matches!(spec.proto, super::PROTO_TCP | super::PROTO_UDP)
    {
        return None;
    }
    Some(target(vip, spec.port))
}

/// `spec`'s backend keys, sorted (duplicates kept: the index is a multiset).
fn keys(spec: &ServiceSpec) -> Vec<Key> {
    let mut k: Vec<Key> = spec
        .backends
        .iter()
        .map(|b| key(b.addr, b.port, spec.proto))
        .collect();
    k.sort_unstable();
    k
}

impl BackendIndex {
    /// The ClusterIP `VIP:port` to un-DNAT a reply from `addr:port/proto` to: `None` when
    /// no eligible service has that backend, or two with different VIPs do.
    #[inline]
    pub(super) fn get(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<(Ipv4Addr, u16)> {
        if self.map.len == 0 {
            return None;
        }
        let e = self.map.get(key(addr, port, proto))?;
        if e.val & AMBIGUOUS != 0 {
            return None;
        }
        Some((Ipv4Addr::from((e.val >> 16) as u32), e.val as u16))
    }

    /// Moves the index from service `old` to `new` (`None`: absent), touching only the
    /// backend keys whose registration changed.
    pub(super) fn update(&mut self, old: Option<&ServiceSpec>, new: Option<&ServiceSpec>) {
        let old_t = old.and_then(|s| Some((eligible(s)?, s)));
        let new_t = new.and_then(|s| Some((eligible(s)?, s)));
        match (old_t, new_t) {
            (Some((ot, os)), Some((nt, ns))) if ot == nt => {
                // Same target: only the multiset difference of the backend keys changes.
                let (ok, nk) = (keys(os), keys(ns));
                let (mut i, mut j) = (0, 0);
                loop {
                    match (ok.get(i), nk.get(j)) {
                        (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
                        (Some(a), Some(b)) if a > b => {
                            self.add(*b, nt);
                            j += 1;
                        }
                        (None, Some(b)) => {
                            self.add(*b, nt);
                            j += 1;
                        }
                        (Some(a), _) => {
                            self.remove(*a, ot);
                            i += 1;
                        }
                        (None, None) => break,
                    }
                }
            }
            (o, n) => {
                if let Some((t, s)) = o {
                    for k in keys(s) {
                        self.remove(k, t);
                    }
                }
                if let Some((t, s)) = n {
                    for k in keys(s) {
                        self.add(k, t);
                    }
                }
            }
        }
    }

    fn add(&mut self, k: Key, t: Target) {
        let Some(e) = self.map.get_mut(k) else {
            self.map.insert(BackendEntry {
                key: k,
                val: REF | t,
            });
            return;
        };
        if e.val & TARGET == t {
            e.val += REF;
            return;
        }
        e.val |= AMBIGUOUS;
        let shared = Arc::make_mut(&mut self.shared);
        match shared.get_mut(k) {
            Some(s) => s.others.push(t),
            None => {
                shared.insert(SharedEntry {
                    key: k,
                    others: vec![t],
                });
            }
        }
    }

    fn remove(&mut self, k: Key, t: Target) {
        let Some(e) = self.map.get_mut(k) else {
            debug_assert!(false, "removing an unregistered backend");
            return;
        };
        let ambiguous = e.val & AMBIGUOUS != 0;
        if e.val & TARGET == t && e.val & REFS > REF {
            e.val -= REF;
            return;
        }
        if e.val & TARGET == t && !ambiguous {
            self.map.remove(k);
            return;
        }
        if !ambiguous {
            debug_assert!(false, "removing an unregistered target");
            return;
        }
        let shared = Arc::make_mut(&mut self.shared);
        let Some(s) = shared.get_mut(k) else {
            debug_assert!(false, "an ambiguous key without its others");
            return;
        };
        if e.val & TARGET == t {
            // The last registration of the first target: promote one of the others.
            let next = s.others[0];
            let before = s.others.len();
            s.others.retain(|&o| o != next);
            e.val = ((before - s.others.len()) as u64) << REFS_SHIFT | next | AMBIGUOUS;
        } else if let Some(i) = s.others.iter().position(|&o| o == t) {
            s.others.swap_remove(i);
        } else {
            debug_assert!(false, "removing an unregistered target");
        }
        if s.others.is_empty() {
            e.val &= !AMBIGUOUS;
            shared.remove(k);
        }
    }

    /// Every backend key and its answer, for comparing with a brute-force scan (tests).
    #[cfg(test)]
    fn view(&self) -> std::collections::BTreeMap<Key, Option<(Ipv4Addr, u16)>> {
        self.map
            .iter()
            .map(|e| {
                let (addr, port, proto) = ((e.key >> 32) as u32, (e.key >> 8) as u16, e.key as u8);
                (e.key, self.get(Ipv4Addr::from(addr), port, proto))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{backend, spec};
    use super::super::*;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const B60: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
    const B61: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 61);

    fn vip(id: u8) -> Option<(Ipv4Addr, u16)> {
        Some((Ipv4Addr::new(10, 96, 10, id), 80))
    }

    #[test]
    fn add_answers_its_vip_and_only_for_its_port_and_protocol() {
        let mut t = ServiceTable::new();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None, "empty table");
        t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1), backend(61, 0)]))
            .unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(1));
        assert_eq!(t.backend_vip(B61, 8080, PROTO_TCP), vip(1), "weight 0 too");
        assert_eq!(t.backend_vip(B60, 8081, PROTO_TCP), None);
        assert_eq!(t.backend_vip(B60, 8080, PROTO_UDP), None);
        assert_eq!(
            t.backend_vip(Ipv4Addr::new(10, 20, 9, 62), 8080, PROTO_TCP),
            None
        );
    }

    #[test]
    fn removed_backends_and_deleted_services_leave_the_index() {
        let mut t = ServiceTable::new();
        t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1), backend(61, 1)]))
            .unwrap();
        let published = t.clone();
        t.upsert(spec(1, Scheduler::Rr, vec![backend(61, 1)]))
            .unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None);
        assert_eq!(t.backend_vip(B61, 8080, PROTO_TCP), vip(1));
        assert_eq!(
            published.backend_vip(B60, 8080, PROTO_TCP),
            vip(1),
            "a published snapshot keeps its answer"
        );
        t.remove(1).unwrap();
        assert_eq!(t.backend_vip(B61, 8080, PROTO_TCP), None);
        assert_eq!(t.by_backend.map.len, 0);
    }

    #[test]
    fn a_shared_backend_answers_none_until_one_service_is_left() {
        let mut t = ServiceTable::new();
        t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1)]))
            .unwrap();
        t.upsert(spec(2, Scheduler::Rr, vec![backend(60, 1), backend(61, 1)]))
            .unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None, "two VIPs");
        assert_eq!(t.backend_vip(B61, 8080, PROTO_TCP), vip(2));
        t.upsert(spec(3, Scheduler::Rr, vec![backend(60, 1)]))
            .unwrap();
        t.remove(1).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None, "2 and 3 left");
        t.remove(3).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(2));
        // The service that registered first goes, the other's answer comes back.
        t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1)]))
            .unwrap();
        t.remove(2).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(1));
    }

    #[test]
    fn a_backend_listed_twice_by_one_service_is_counted_not_ambiguous() {
        // The config refuses this; the index must stay exact anyway.
        let mut t = ServiceTable::new();
        t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1), backend(60, 2)]))
            .unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(1));
        t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1)]))
            .unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(1), "one copy left");
        t.upsert(spec(1, Scheduler::Rr, vec![])).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None);
        assert_eq!(t.by_backend.map.len, 0);
    }

    #[test]
    fn affinity_nodeport_only_and_moved_vips_follow_eligibility() {
        let mut t = ServiceTable::new();
        let mut s = spec(1, Scheduler::Rr, vec![backend(60, 1)]);
        s.affinity_timeout = Some(10800);
        t.upsert(s.clone()).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None, "affinity");
        s.affinity_timeout = None;
        t.upsert(s.clone()).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(1));
        // An ineligible service sharing the backend does not make it ambiguous.
        let mut np = spec(2, Scheduler::Rr, vec![backend(60, 1)]);
        np.cluster_ip = None;
        np.node_port = Some(31234);
        t.upsert(np).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(1));
        s.cluster_ip = Some(Ipv4Addr::new(10, 96, 10, 9));
        t.upsert(s.clone()).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), vip(9), "VIP moved");
        s.cluster_ip = None;
        s.node_port = Some(31235);
        t.upsert(s).unwrap();
        assert_eq!(t.backend_vip(B60, 8080, PROTO_TCP), None);
        assert_eq!(t.by_backend.map.len, 0);
    }

    /// The rule-3 answer the old code computed by scanning every service.
    fn scan(
        model: &BTreeMap<u32, ServiceSpec>,
        a: Ipv4Addr,
        p: u16,
        proto: u8,
    ) -> Option<(Ipv4Addr, u16)> {
        let mut found = None;
        for s in model.values() {
            let Some(vip) = s.cluster_ip else { continue };
            if s.proto != proto || s.affinity_timeout.is_some() {
                continue;
            }
            if s.backends.iter().any(|b| b.addr == a && b.port == p) {
                match found {
                    None => found = Some((vip, s.port)),
                    Some(f) if f == (vip, s.port) => {}
                    Some(_) => return None,
                }
            }
        }
        found
    }

    fn spec_strategy() -> impl Strategy<Value = ServiceSpec> {
        (
            1u32..=5,
            prop::bool::ANY,
            prop::option::of(1u8..=4),
            prop::bool::weighted(0.2),
            prop::collection::vec((60u8..=63, prop_oneof![Just(8080u16), Just(8081)]), 0..4),
        )
            .prop_map(|(id, udp, cip, affinity, bs)| {
                let mut s = spec(id, Scheduler::Rr, vec![]);
                s.proto = if udp { PROTO_UDP } else { PROTO_TCP };
                s.cluster_ip = cip.map(|i| Ipv4Addr::new(10, 96, 10, i));
                s.node_port = s.cluster_ip.is_none().then_some(30000 + id as u16);
                s.affinity_timeout = affinity.then_some(60);
                for (last, port) in bs {
                    if s.backends.iter().all(|b| b.addr.octets()[3] != last) {
                        s.backends.push(Backend {
                            port,
                            ..backend(last, 1)
                        });
                    }
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// After any sequence of upserts and removes, the index answers what scanning the
        /// services would, for every backend key that could exist; a clone taken before a
        /// change keeps its answers.
        #[test]
        fn index_equals_a_scan_of_the_services(
            ops in prop::collection::vec(prop::option::of(spec_strategy()), 1..40),
            removes in prop::collection::vec(1u32..=5, 40),
        ) {
            let mut t = ServiceTable::new();
            let mut model: BTreeMap<u32, ServiceSpec> = BTreeMap::new();
            for (op, rm) in ops.into_iter().zip(removes) {
                let snapshot = t.clone();
                let before = snapshot.by_backend.view();
                match op {
                    Some(s) => {
                        if t.upsert(s.clone()).is_ok() {
                            model.insert(s.id, s);
                        }
                    }
                    None => {
                        prop_assert_eq!(t.remove(rm).is_some(), model.remove(&rm).is_some());
                    }
                }
                for last in 60u8..=63 {
                    for port in [8080u16, 8081] {
                        for proto in [PROTO_TCP, PROTO_UDP] {
                            let a = Ipv4Addr::new(10, 20, 9, last);
                            prop_assert_eq!(
                                t.backend_vip(a, port, proto),
                                scan(&model, a, port, proto),
                                "{}:{}/{}", a, port, proto
                            );
                        }
                    }
                }
                prop_assert_eq!(snapshot.by_backend.view(), before, "a published clone changed");
            }
        }
    }
}
