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
//! It lives in the [`ServiceTable`](super::ServiceTable) and changes with it: same
//! [`Sharded`] copy-on-write shards, and a service change touches only the backends it
//! added or removed (a backend set that only changed weights or states touches nothing).

use super::{Entry, Key, ServiceSpec, Sharded, key};
use core::net::Ipv4Addr;
use std::sync::Arc;

/// A ClusterIP frontend packed as `vip << 16 | port`.
type Target = u64;

#[inline]
fn target(vip: Ipv4Addr, port: u16) -> Target {
    (u64::from(u32::from(vip)) << 16) | u64::from(port)
}

/// The registrations of one backend key: `first` `refs` times, plus `others` — other
/// targets, none equal to `first`, `None` when there are none. The answer is `first`
/// exactly when `others` is `None`, so a lookup reads no list.
#[derive(Debug, Clone)]
struct BackendEntry {
    key: Key,
    first: Target,
    refs: u32,
    /// Rare (a backend shared by services): behind an `Arc` so the common entry stays
    /// small and cloning a shard for the next snapshot copies no list.
    others: Option<Arc<Vec<Target>>>,
}

impl Entry for BackendEntry {
    #[inline]
    fn key(&self) -> u64 {
        self.key
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct BackendIndex(Sharded<BackendEntry>);

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
        if self.0.len == 0 {
            return None;
        }
        let e = self.0.get(key(addr, port, proto))?;
        if e.others.is_some() {
            return None;
        }
        Some((Ipv4Addr::from((e.first >> 16) as u32), e.first as u16))
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
        let Some(e) = self.0.get_mut(k) else {
            self.0.insert(BackendEntry {
                key: k,
                first: t,
                refs: 1,
                others: None,
            });
            return;
        };
        if e.first == t {
            e.refs += 1;
        } else {
            let mut others = e.others.as_deref().cloned().unwrap_or_default();
            others.push(t);
            e.others = Some(Arc::new(others));
        }
    }

    fn remove(&mut self, k: Key, t: Target) {
        let Some(e) = self.0.get_mut(k) else {
            debug_assert!(false, "removing an unregistered backend");
            return;
        };
        if e.first == t {
            e.refs -= 1;
            if e.refs > 0 {
                return;
            }
            let Some(others) = e.others.take() else {
                self.0.remove(k);
                return;
            };
            // Promote one of the others; its copies become `refs`, the rest stay others.
            let next = others[0];
            let (same, rest): (Vec<Target>, Vec<Target>) = others.iter().partition(|&&o| o == next);
            e.first = next;
            e.refs = same.len() as u32;
            e.others = (!rest.is_empty()).then(|| Arc::new(rest));
        } else if let Some(others) = &e.others {
            let mut others = Vec::clone(others);
            if let Some(i) = others.iter().position(|&o| o == t) {
                others.swap_remove(i);
            } else {
                debug_assert!(false, "removing an unregistered target");
            }
            e.others = (!others.is_empty()).then(|| Arc::new(others));
        }
    }

    /// Every backend key and its answer, for comparing with a brute-force scan (tests).
    #[cfg(test)]
    fn view(&self) -> std::collections::BTreeMap<Key, Option<(Ipv4Addr, u16)>> {
        self.0
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
        assert_eq!(t.by_backend.0.len, 0);
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
        assert_eq!(t.by_backend.0.len, 0);
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
