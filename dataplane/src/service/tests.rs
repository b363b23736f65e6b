use super::*;

pub(crate) fn backend(last: u8, weight: u16) -> Backend {
    Backend {
        addr: Ipv4Addr::new(10, 20, 9, last),
        port: 8080,
        weight,
        state: BackendState::Ready,
        local: true,
    }
}

pub(crate) fn spec(id: u32, sched: Scheduler, backends: Vec<Backend>) -> ServiceSpec {
    ServiceSpec {
        id,
        name: format!("svc{id}"),
        proto: PROTO_TCP,
        port: 80,
        cluster_ip: Some(Ipv4Addr::new(10, 96, 10, id as u8)),
        node_port: None,
        external_ips: vec![],
        lb_ips: vec![],
        scheduler: sched,
        affinity_timeout: None,
        etp_local: false,
        backends,
    }
}

fn flow(client: u8, port: u16) -> FlowKey {
    FlowKey {
        client: Ipv4Addr::new(10, 186, 200, client),
        client_port: port,
        proto: PROTO_TCP,
    }
}

fn histogram(svc: &Service, n: usize, f: impl Fn(usize) -> FlowKey) -> Vec<usize> {
    let local = WorkerLocal::default();
    let mut h = vec![0; svc.backends().len()];
    for i in 0..n {
        let b = svc.pick(&svc.all, &f(i), &local, true, |_| 0).unwrap();
        h[b] += 1;
    }
    h
}

#[test]
fn lookup_by_frontend_kind() {
    let mut t = ServiceTable::new();
    let mut s = spec(1, Scheduler::Rr, vec![backend(60, 1)]);
    s.node_port = Some(31234);
    s.external_ips = vec![Ipv4Addr::new(192, 0, 2, 1)];
    s.lb_ips = vec![Ipv4Addr::new(192, 0, 2, 2)];
    t.upsert(s).unwrap();
    let vip = Ipv4Addr::new(10, 96, 10, 1);
    assert_eq!(
        t.lookup(vip, 80, PROTO_TCP, false).unwrap().1,
        Frontend::ClusterIp
    );
    assert!(t.lookup(vip, 80, PROTO_UDP, false).is_none());
    assert!(t.lookup(vip, 81, PROTO_TCP, false).is_none());
    let node = Ipv4Addr::new(10, 186, 153, 103);
    assert!(
        t.lookup(node, 31234, PROTO_TCP, false).is_none(),
        "not local"
    );
    assert_eq!(
        t.lookup(node, 31234, PROTO_TCP, true).unwrap().1,
        Frontend::NodePort
    );
    assert_eq!(
        t.lookup(Ipv4Addr::new(192, 0, 2, 1), 80, PROTO_TCP, false)
            .unwrap()
            .1,
        Frontend::ExternalIp
    );
    assert_eq!(
        t.lookup(Ipv4Addr::new(192, 0, 2, 2), 80, PROTO_TCP, false)
            .unwrap()
            .1,
        Frontend::LoadBalancer
    );
    assert!(t.is_vip(vip) && t.is_vip(Ipv4Addr::new(192, 0, 2, 2)));
    assert!(!t.is_vip(node));
    assert!(t.remove(1).is_some());
    assert!(t.lookup(vip, 80, PROTO_TCP, false).is_none());
    assert!(!t.is_vip(vip));
}

#[test]
fn conflicts_are_rejected_and_generation_follows_backends() {
    let mut t = ServiceTable::new();
    t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1)]))
        .unwrap();
    let mut other = spec(2, Scheduler::Rr, vec![]);
    other.cluster_ip = Some(Ipv4Addr::new(10, 96, 10, 1));
    let e = t.upsert(other).unwrap_err();
    assert!(e.to_string().contains("10.96.10.1:80/tcp"), "{e}");
    let g1 = t.get(1).unwrap().generation;
    let slot = t.get(1).unwrap().slot;
    let mut same = spec(1, Scheduler::Wrr, vec![backend(60, 1)]);
    same.name = "renamed".into();
    t.upsert(same).unwrap();
    assert_eq!(t.get(1).unwrap().generation, g1, "backends unchanged");
    t.upsert(spec(1, Scheduler::Rr, vec![backend(60, 1), backend(41, 1)]))
        .unwrap();
    assert_eq!(t.get(1).unwrap().generation, g1 + 1);
    assert_eq!(t.get(1).unwrap().slot, slot, "slot is stable");
}

#[test]
fn rr_gives_exact_shares_and_skips_terminating() {
    let mut b = vec![backend(1, 1), backend(2, 1), backend(3, 1), backend(4, 1)];
    b[3].state = BackendState::Terminating;
    let mut t = ServiceTable::new();
    t.upsert(spec(1, Scheduler::Rr, b)).unwrap();
    let h = histogram(t.get(1).unwrap(), 30, |i| flow(1, i as u16));
    assert_eq!(h, vec![10, 10, 10, 0]);
}

#[test]
fn wrr_follows_weights_smoothly() {
    let mut t = ServiceTable::new();
    t.upsert(spec(
        1,
        Scheduler::Wrr,
        vec![backend(1, 5), backend(2, 1), backend(3, 1)],
    ))
    .unwrap();
    let svc = t.get(1).unwrap();
    assert_eq!(&*svc.all.wrr, &[0, 0, 1, 0, 2, 0, 0]);
    let h = histogram(svc, 70, |i| flow(1, i as u16));
    assert_eq!(h, vec![50, 10, 10]);
}

#[test]
fn sh_keeps_a_client_on_one_backend() {
    let mut t = ServiceTable::new();
    t.upsert(spec(
        1,
        Scheduler::Sh,
        (1..=5).map(|i| backend(i, 1)).collect(),
    ))
    .unwrap();
    let svc = t.get(1).unwrap();
    let h = histogram(svc, 50, |i| flow(7, 1000 + i as u16));
    assert_eq!(h.iter().filter(|&&c| c > 0).count(), 1, "{h:?}");
    // Different clients spread.
    let h = histogram(svc, 500, |i| flow(i as u8, 1000));
    assert!(h.iter().all(|&c| c > 50), "{h:?}");
}

#[test]
fn maglev_and_random_spread_by_weight() {
    for sched in [Scheduler::Maglev, Scheduler::Random] {
        let mut t = ServiceTable::new();
        t.upsert(spec(1, sched, vec![backend(1, 1), backend(2, 3)]))
            .unwrap();
        let h = histogram(t.get(1).unwrap(), 8000, |i| flow((i % 251) as u8, i as u16));
        if sched == Scheduler::Random {
            // Random ignores weights (as iptables mode does).
            assert!(h[0] > 3400 && h[1] > 3400, "{h:?}");
        } else {
            assert!(h[1] > h[0] * 2 && h[1] < h[0] * 4, "{sched:?} {h:?}");
        }
    }
}

#[test]
fn lc_picks_fewest_connections() {
    let mut t = ServiceTable::new();
    t.upsert(spec(
        1,
        Scheduler::Lc,
        vec![backend(1, 1), backend(2, 1), backend(3, 1)],
    ))
    .unwrap();
    let svc = t.get(1).unwrap();
    let local = WorkerLocal::default();
    let conns = |b: &Backend| match b.addr.octets()[3] {
        1 => 5,
        2 => 1,
        _ => 3,
    };
    for _ in 0..5 {
        assert_eq!(
            svc.pick(&svc.all, &flow(1, 1), &local, true, conns),
            Some(1)
        );
    }
}

#[test]
fn etp_local_pool_has_only_local_backends() {
    let mut b = vec![backend(1, 1), backend(2, 1)];
    b[0].local = false;
    let mut s = spec(1, Scheduler::Rr, b);
    s.etp_local = true;
    let mut t = ServiceTable::new();
    t.upsert(s).unwrap();
    let svc = t.get(1).unwrap();
    assert_eq!(&*svc.pool(Frontend::NodePort).ready, &[1]);
    assert_eq!(&*svc.pool(Frontend::ClusterIp).ready, &[0, 1]);
}

#[test]
fn no_ready_backends_picks_nothing() {
    let mut b = backend(1, 1);
    b.state = BackendState::Terminating;
    let mut t = ServiceTable::new();
    t.upsert(spec(1, Scheduler::Maglev, vec![b])).unwrap();
    let svc = t.get(1).unwrap();
    assert!(svc.all.is_empty());
    assert_eq!(
        svc.pick(&svc.all, &flow(1, 1), &WorkerLocal::default(), true, |_| 0),
        None
    );
}

#[test]
fn snat_ports_stay_in_range_and_workers_start_apart() {
    let w0 = WorkerLocal::new(0);
    let w1 = WorkerLocal::new(1);
    let a: Vec<u16> = (0..30000).map(|_| w0.snat_port()).collect();
    assert!(a.iter().all(|p| SNAT_PORTS.contains(p)));
    assert_eq!(a[0], 32768);
    assert_eq!(a[28232], 32768, "wraps around");
    assert_ne!(w1.snat_port(), 32768);
}

mod incremental {
    //! The incremental index against a model: after every operation the table must equal
    //! one rebuilt from scratch from the services the model holds, and an earlier clone
    //! (a published snapshot) must not have changed.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(ServiceSpec),
        Remove(u32),
    }

    /// Few ids, addresses and ports, so VIPs are shared and conflicts are frequent.
    fn spec_strategy() -> impl Strategy<Value = ServiceSpec> {
        let addr = (1u8..=4).prop_map(|i| Ipv4Addr::new(10, 96, 0, i));
        (
            1u32..=6,
            prop::bool::ANY,
            prop_oneof![Just(80u16), Just(81)],
            prop::option::of(addr.clone()),
            prop::option::of(prop_oneof![Just(30001u16), Just(30002)]),
            prop::collection::vec(addr.clone(), 0..3),
            prop::collection::vec(addr, 0..2),
            prop::collection::vec((1u8..=3, 0u16..=2), 0..3),
        )
            .prop_map(|(id, udp, port, cip, np, ext, lb, bs)| {
                let mut backends: Vec<Backend> = Vec::new();
                for (last, w) in bs {
                    if backends.iter().all(|b| b.addr.octets()[3] != last) {
                        backends.push(backend(last, w));
                    }
                }
                ServiceSpec {
                    id,
                    name: format!("svc{id}"),
                    proto: if udp { PROTO_UDP } else { PROTO_TCP },
                    port,
                    cluster_ip: cip,
                    node_port: np,
                    external_ips: ext,
                    lb_ips: lb,
                    scheduler: Scheduler::Rr,
                    affinity_timeout: None,
                    etp_local: false,
                    backends,
                }
            })
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => spec_strategy().prop_map(Op::Upsert),
            1 => (1u32..=6).prop_map(Op::Remove),
        ]
    }

    type View = (BTreeMap<Key, (u32, Frontend)>, BTreeMap<u32, u32>);

    /// The index a table holding `model` must have, computed without the table.
    fn rebuilt(model: &BTreeMap<u32, (ServiceSpec, u32)>) -> View {
        let (mut front, mut vips) = (BTreeMap::new(), BTreeMap::new());
        for (spec, _) in model.values() {
            for (k, fe) in ServiceTable::frontends(spec) {
                front.insert(k, (spec.id, fe));
                if fe != Frontend::NodePort {
                    *vips.entry((k >> 32) as u32).or_insert(0) += 1;
                }
            }
        }
        (front, vips)
    }

    fn check(t: &ServiceTable, model: &BTreeMap<u32, (ServiceSpec, u32)>) {
        let want = rebuilt(model);
        assert_eq!(t.index_view(), want);
        assert_eq!(t.len(), model.len());
        // A table built from scratch agrees too.
        let mut fresh = ServiceTable::new();
        for (spec, _) in model.values() {
            fresh.upsert(spec.clone()).unwrap();
        }
        assert_eq!(fresh.index_view(), want);
        let mut slots = std::collections::BTreeSet::new();
        for (id, (spec, generation)) in model {
            let s = t.get(*id).expect("modelled service present");
            assert_eq!(&s.spec, spec);
            assert_eq!(s.generation, *generation);
            assert!(
                (s.slot as usize) < MAX_SERVICES && slots.insert(s.slot),
                "slots unique"
            );
        }
        for (k, (id, fe)) in &want.0 {
            let (addr, port, proto) = (Ipv4Addr::from((k >> 32) as u32), (k >> 8) as u16, *k as u8);
            let local = addr.is_unspecified();
            let probe = if local {
                Ipv4Addr::new(10, 186, 153, 103)
            } else {
                addr
            };
            let (s, f) = t.lookup(probe, port, proto, local).expect("frontend found");
            assert_eq!((s.id(), f), (*id, *fe));
        }
        for i in 1..=4 {
            let a = Ipv4Addr::new(10, 96, 0, i);
            assert_eq!(t.is_vip(a), want.1.contains_key(&u32::from(a)), "{a}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn incremental_index_equals_rebuild(ops in prop::collection::vec(op_strategy(), 1..40)) {
            let mut t = ServiceTable::new();
            let mut model: BTreeMap<u32, (ServiceSpec, u32)> = BTreeMap::new();
            for op in ops {
                let snapshot = t.clone();
                let before = t.index_view();
                match op {
                    Op::Upsert(spec) => {
                        let conflict = ServiceTable::frontends(&spec).any(|(k, _)| {
                            rebuilt(&model).0.get(&k).is_some_and(|(id, _)| *id != spec.id)
                        });
                        let r = t.upsert(spec.clone());
                        prop_assert_eq!(r.is_err(), conflict, "{:?}", r);
                        if !conflict {
                            let generation = match model.get(&spec.id) {
                                Some((old, g)) if old.backends == spec.backends => *g,
                                Some((_, g)) => g + 1,
                                None => 1,
                            };
                            model.insert(spec.id, (spec, generation));
                        }
                    }
                    Op::Remove(id) => {
                        prop_assert_eq!(t.remove(id).is_some(), model.remove(&id).is_some());
                    }
                }
                check(&t, &model);
                prop_assert_eq!(snapshot.index_view(), before, "a published clone changed");
            }
        }
    }

    #[test]
    fn nodeport_keys_are_wildcards_and_vips_are_shared() {
        let mut t = ServiceTable::new();
        let vip = Ipv4Addr::new(10, 96, 0, 1);
        let mut a = spec(1, Scheduler::Rr, vec![]);
        a.cluster_ip = Some(vip);
        a.node_port = Some(30001);
        let mut b = spec(2, Scheduler::Rr, vec![]);
        b.cluster_ip = Some(vip);
        b.port = 443;
        t.upsert(a.clone()).unwrap();
        t.upsert(b).unwrap();
        assert_eq!(t.index_view().1.get(&u32::from(vip)), Some(&2));
        // Same NodePort, other protocol: a different key.
        let mut c = spec(3, Scheduler::Rr, vec![]);
        c.cluster_ip = None;
        c.node_port = Some(30001);
        c.proto = PROTO_UDP;
        t.upsert(c).unwrap();
        let mut d = spec(4, Scheduler::Rr, vec![]);
        d.cluster_ip = None;
        d.node_port = Some(30001);
        assert!(
            t.upsert(d)
                .unwrap_err()
                .to_string()
                .contains("0.0.0.0:30001/tcp")
        );
        // Moving service 1 off the VIP keeps it a VIP for service 2.
        a.cluster_ip = Some(Ipv4Addr::new(10, 96, 0, 9));
        t.upsert(a).unwrap();
        assert!(t.is_vip(vip));
        assert!(t.lookup(vip, 80, PROTO_TCP, false).is_none());
        assert_eq!(t.lookup(vip, 443, PROTO_TCP, false).unwrap().0.id(), 2);
        t.remove(2);
        assert!(!t.is_vip(vip));
        assert!(!t.is_vip(Ipv4Addr::UNSPECIFIED), "NodePorts are not VIPs");
    }

    #[test]
    fn slots_fill_every_bit_then_refuse_and_reuse_freed() {
        let mut s = Slots::default();
        let mut seen = vec![false; MAX_SERVICES];
        for _ in 0..MAX_SERVICES {
            let x = s.alloc().unwrap() as usize;
            assert!(!seen[x]);
            seen[x] = true;
        }
        let full = s.clone();
        assert_eq!(s.alloc(), None);
        s.free(70_000);
        s.free(5);
        assert_eq!(s.alloc(), Some(5));
        assert_eq!(s.alloc(), Some(70_000));
        assert_eq!(s.alloc(), None);
        let mut f = full;
        assert_eq!(f.alloc(), None, "clone kept its own bitmap");
    }
}
