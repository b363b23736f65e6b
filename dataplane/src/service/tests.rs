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
