//! Services and NAT in the lab, the behaviours `services.rs` does not cover (SPEC B5, B12–B14,
//! issue #7 item 6): MASQUERADE from the VLAN-1155 underlay, ICMP errors translated back,
//! backends removed while flows run, a full conntrack table, endpoint churn under load.
//! Every peer is a kernel TCP/UDP socket in a lab namespace; backends record when and from
//! which address they received (`afgate_tests::svc_lab`), clients check what came back, and
//! every test reads afgate's final counters.
//!
//! ```text
//!   node lab:     pod  10.20.9.60 ──┐                 ┌── gw ── ext 10.186.200.10-13 (backends)
//!                 pod2 10.20.9.41 ──┤ node (afgate) ──┘
//!   overlay lab:  upod 10.186.155.6 [VLAN 1155 shim] ── node (afgate) ── vxlan ── rpod 10.20.4.5
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use afgate_tests::capture::Capture;
use afgate_tests::lab::{Lab, NodeLab};
use afgate_tests::overlay_lab::{self as ol, OverlayLab};
use afgate_tests::peer;
use afgate_tests::process::Afgate;
use afgate_tests::svc_lab::{
    Api, Backend, RawCapture, TcpConn, final_stats, in_ns, inet_checksum, num, reply_id, udp_socket,
};
use anyhow::{Context, Result, bail, ensure};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EXT: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 186, 200, 10),
    Ipv4Addr::new(10, 186, 200, 11),
    Ipv4Addr::new(10, 186, 200, 12),
    Ipv4Addr::new(10, 186, 200, 13),
];
const NODE_CTL_IP: Ipv4Addr = ol::NODE_CTL_IP;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The node lab with ext holding every address of [`EXT`] (backends behind the gateway).
fn node_lab() -> Result<NodeLab> {
    let lab = Lab::node_lab()?;
    for a in &EXT[1..] {
        lab.ext
            .ns
            .ip(&["addr", "add", &format!("{a}/24"), "dev", &lab.ext.dev])?;
    }
    Ok(lab)
}

/// Starts afgate on the node lab with `extra` YAML appended; returns it and its API.
fn start(lab: &NodeLab, base: String, extra: &str) -> Result<(Afgate, Api)> {
    let path = lab.lab.tmp().join("afgate.yaml");
    std::fs::write(&path, format!("{base}{extra}"))?;
    let sock = lab.lab.tmp().join("afgate.sock");
    let afgate = Afgate::start_with(
        &lab.node,
        &path,
        &["--api", sock.to_str().context("tmp path")?],
    )?;
    Ok((afgate, Api::new(&sock)))
}

fn svc_yaml(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    proto: &str,
    sched: &str,
    backends: &[SocketAddr],
) -> String {
    let b: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr: {}, port: {}, local: false }}", b.ip(), b.port()))
        .collect();
    format!(
        "  - {{ name: {name}, cluster_ip: {vip}, port: {port}, protocol: {proto}, scheduler: {sched}, backends: [{}] }}\n",
        b.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// 1. MASQUERADE from the VLAN-1155 underlay (B5)
// ---------------------------------------------------------------------------------------------

/// An underlay pod on VLAN 1155 (tagged by the tc shim) reaches a ClusterIP whose backend is
/// a remote pod behind VXLAN: the backend sees the node's ctl address (the egress side of
/// the overlay), the client sees replies from VIP:80, tagged 1155. A client on the same VLAN
/// but outside the rule's source prefix keeps its own address.
#[test]
fn masquerade_from_vlan_1155_underlay_to_a_clusterip() -> Result<()> {
    let t0 = Instant::now();
    let l = OverlayLab::build()?;
    // .20 is on the pod's VLAN and subnet (/27) but outside the rule's /28.
    l.upod
        .ip(&["addr", "add", "10.186.155.20/27", "dev", "eth0"])?;
    // Without SNAT the remote node must route the reply back through the overlay itself.
    l.remote.ip(&[
        "route",
        "replace",
        "10.186.155.0/27",
        "via",
        "10.20.9.0",
        "dev",
        "vxlan.2",
        "onlink",
    ])?;
    let yaml = format!(
        "{}services:\n  - {{ name: web, cluster_ip: {VIP}, port: 80, target_port: 8080, backends: [{{ addr: {} }}] }}\n\
         masquerade:\n  - {{ src: 10.186.155.0/28, in_port: upod.1155, in_vlan: 1155, dst: 10.96.0.0/16, to: egress }}\n",
        l.config_yaml(4789),
        ol::RPOD_IP
    );
    let path = l.lab.tmp().join("afgate-masq.yaml");
    std::fs::write(&path, yaml)?;
    let mut afgate = Afgate::start(&l.node, &path)?;
    let server = peer::tcp_server(&l.rpod, &format!("{}:8080", ol::RPOD_IP), "rpod", 60)?;
    let cap = Capture::start(&l.upod, "eth0", "", 400, 60)?;

    let r = match peer::tcp_client(&l.upod, &format!("{VIP}:80"), 20_000, 20) {
        Ok(r) => r,
        Err(e) => {
            // What afgate counted and what the client's wire carried, to say where it broke.
            afgate.stop()?;
            let seen = cap.stop()?;
            bail!("{e:#}\n{}\n{seen:#?}", afgate.log());
        }
    };
    assert!(r.echoed, "{}", r.stdout);
    assert_eq!(
        r.reply.client_ip(),
        NODE_CTL_IP.to_string(),
        "MASQUERADE: the backend sees the egress port's address"
    );
    let seen = cap.stop()?;
    let vip_src = format!("{VIP}.80 > {}.", ol::UPOD_IP);
    let replies: Vec<&String> = seen.iter().filter(|l| l.contains(&vip_src)).collect();
    assert!(replies.len() >= 3, "replies from the VIP: {seen:#?}");
    for line in &replies {
        assert!(line.contains("vlan 1155"), "reply not tagged: {line}");
    }
    let leaked = format!("{}.8080 >", ol::RPOD_IP);
    assert!(
        !seen.iter().any(|l| l.contains(&leaked)),
        "an un-de-NATed reply reached the client: {seen:#?}"
    );

    // Outside the rule's source prefix: not masqueraded, the backend sees the client.
    l.upod.ip(&[
        "route",
        "replace",
        &format!("{VIP}/32"),
        "via",
        &ol::UPOD_GW.to_string(),
        "src",
        "10.186.155.20",
    ])?;
    let r =
        peer::tcp_client(&l.upod, &format!("{VIP}:80"), 5_000, 20).with_context(|| afgate.log())?;
    assert!(r.echoed, "{}", r.stdout);
    assert_eq!(r.reply.client_ip(), "10.186.155.20", "not masqueraded");
    drop(server);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert_eq!(num(&s, &["events", "service_new_flow"]), 2, "{s}");
    assert_eq!(
        num(&s, &["events", "snat_new_flow"]),
        1,
        "only the /28 client: {s}"
    );
    assert!(num(&s, &["events", "vlan_push"]) >= 6, "{s}");
    println!(
        "masquerade: {} tagged replies from {VIP}:80 at the client, backend saw {NODE_CTL_IP}; took {:.1}s",
        replies.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. ICMP errors translated back (B13)
// ---------------------------------------------------------------------------------------------

fn setsockopt_int(fd: i32, level: i32, opt: i32, val: i32) -> Result<()> {
    // SAFETY: `val` outlives the call and its size is passed; fd is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const val).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    ensure!(
        r == 0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn getsockopt_int(fd: i32, level: i32, opt: i32) -> Result<i32> {
    let mut val: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `val` and `len` outlive the call; len holds val's size.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&raw mut val).cast(), &raw mut len) };
    ensure!(
        r == 0,
        "getsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
    Ok(val)
}

/// One ICMP error as the client received it, its checksums verified.
#[derive(Debug)]
struct IcmpErr {
    src: Ipv4Addr,
    typ: u8,
    code: u8,
    mtu: u16,
    inner_src: SocketAddr,
    inner_dst: SocketAddr,
}

/// Parses an Ethernet/IPv4/ICMP error frame and checks every checksum in it: the outer IPv4
/// header, the ICMP message, the quoted IPv4 header, and the quoted UDP datagram when it is
/// quoted whole.
fn parse_icmp_error(f: &[u8]) -> Result<Option<IcmpErr>> {
    let ip = f.get(14..).context("short frame")?;
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || ip[9] != 1 {
        return Ok(None);
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let ip = ip.get(..total).context("truncated IPv4")?;
    ensure!(inet_checksum(0, &ip[..hl]) == 0, "outer IPv4 checksum");
    let icmp = &ip[hl..];
    if !matches!(icmp[0], 3 | 11) {
        return Ok(None);
    }
    ensure!(inet_checksum(0, icmp) == 0, "ICMP checksum");
    let q = icmp.get(8..).context("no quote")?;
    let qhl = usize::from(q[0] & 0x0f) * 4;
    ensure!(q.len() >= qhl + 8, "quote shorter than header + 8");
    ensure!(inet_checksum(0, &q[..qhl]) == 0, "quoted IPv4 checksum");
    ensure!(q[9] == 17, "quoted protocol {} (expected UDP)", q[9]);
    let a = |o: usize| Ipv4Addr::new(q[o], q[o + 1], q[o + 2], q[o + 3]);
    let (qs, qd) = (a(12), a(16));
    let u = &q[qhl..];
    let port = |o: usize| u16::from_be_bytes([u[o], u[o + 1]]);
    let ulen = usize::from(port(4));
    if u.len() >= ulen && port(6) != 0 {
        // Quoted in full: the UDP checksum must verify against the quoted addresses.
        let mut ph = 0u32;
        for w in [&q[12..14], &q[14..16], &q[16..18], &q[18..20]] {
            ph += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        ph += 17 + ulen as u32;
        ensure!(inet_checksum(ph, &u[..ulen]) == 0, "quoted UDP checksum");
    }
    Ok(Some(IcmpErr {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        typ: icmp[0],
        code: icmp[1],
        mtu: u16::from_be_bytes([icmp[6], icmp[7]]),
        inner_src: sa(qs, port(0)),
        inner_dst: sa(qd, port(2)),
    }))
}

/// A client's connected UDP sockets get ICMP errors about their flows from a ClusterIP:
/// port unreachable from the backend's kernel (→ ECONNREFUSED), fragmentation needed from
/// afgate itself (its egress MTU) and from a router behind it (→ the socket's path MTU),
/// time exceeded from afgate and from that router. The kernel only acts on them if outer and
/// quoted headers were translated back to VIP:port; the capture checks them byte by byte.
#[test]
fn icmp_errors_about_service_flows_are_translated_back() -> Result<()> {
    let t0 = Instant::now();
    let lab = node_lab()?;
    let pod = lab.addrs.pod_ip;
    let gw = lab.addrs.gw_ip;
    // Path: pod (1450) → afgate → biz (afgate's egress MTU 1200) → gw → ext (MTU 1000).
    lab.gw
        .ns
        .ip(&["link", "set", &lab.gw_ext_dev, "mtu", "1000"])?;
    lab.ext
        .ns
        .ip(&["link", "set", &lab.ext.dev, "mtu", "1000"])?;
    let base =
        lab.afgate_config_yaml()
            .replacen("role: uplink\n", "role: uplink\n    mtu: 1200\n", 1);
    let (unreach_vip, mtu_vip) = (Ipv4Addr::new(10, 96, 0, 20), Ipv4Addr::new(10, 96, 0, 21));
    let services = format!(
        "services:\n{}{}",
        svc_yaml(
            "closed",
            unreach_vip,
            53,
            "udp",
            "rr",
            &[sa(lab.addrs.pod2_ip, 5353)]
        ),
        svc_yaml("echo", mtu_vip, 9000, "udp", "rr", &[sa(EXT[0], 9000)]),
    );
    let (mut afgate, _api) = start(&lab, base, &services)?;
    let _echo = Backend::udp(&lab.ext.ns, sa(EXT[0], 9000), "b1", 60, false)?;
    let cap = RawCapture::start(&lab.pod.ns, "eth0", "icmp", 100, 60)?;

    // Port unreachable: nobody listens on the backend's 5353.
    let s = udp_socket(
        &lab.pod.ns,
        sa(Ipv4Addr::UNSPECIFIED, 0),
        sa(unreach_vip, 53),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut refused = false;
    for _ in 0..3 {
        s.send(b"query")?;
        let mut b = [0u8; 512];
        if let Err(e) = s.recv(&mut b)
            && e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "ECONNREFUSED from the VIP\n{}", afgate.log());

    // Fragmentation needed: DF on every datagram, the path MTU learnt from the errors.
    let m = udp_socket(&lab.pod.ns, sa(Ipv4Addr::UNSPECIFIED, 0), sa(mtu_vip, 9000))?;
    let fd = m.as_raw_fd();
    setsockopt_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )?;
    m.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut b = [0u8; 2048];
    m.send(b"hello")?;
    let n = m.recv(&mut b).context("echo through the VIP")?;
    assert_eq!(reply_id(&b[..n]).as_deref(), Some("b1"));
    let wait_mtu = |want: i32| -> Result<i32> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mtu = getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU)?;
            if mtu == want || Instant::now() >= deadline {
                return Ok(mtu);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // 1300 + 28 > afgate's 1200 on biz: afgate answers.
    m.send(&[0x55; 1300])?;
    assert_eq!(
        wait_mtu(1200)?,
        1200,
        "afgate's frag-needed reached the socket\n{}",
        afgate.log()
    );
    // With IP_PMTUDISC_DO the error is also reported to the socket (EMSGSIZE, pending).
    let pending = m.take_error()?.and_then(|e| e.raw_os_error());
    assert_eq!(pending, Some(libc::EMSGSIZE));
    let e = m
        .send(&[0x55; 1300])
        .expect_err("DF datagram above the path MTU");
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
    // 1100 + 28 passes afgate, not the gateway's 1000 towards ext: gw answers.
    m.send(&[0x66; 1100])?;
    assert_eq!(
        wait_mtu(1000)?,
        1000,
        "gw's frag-needed reached the socket\n{}",
        afgate.log()
    );
    let pending = m.take_error()?.and_then(|e| e.raw_os_error());
    assert_eq!(pending, Some(libc::EMSGSIZE));

    // Time exceeded: TTL 1 expires at afgate, TTL 2 at the gateway.
    let te = udp_socket(&lab.pod.ns, sa(Ipv4Addr::UNSPECIFIED, 0), sa(mtu_vip, 9000))?;
    let te_port = te.local_addr()?.port();
    for ttl in [1, 2] {
        te.set_ttl(ttl)?;
        te.send(b"ttl")?;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let frames = cap.stop()?;
    let mut errs = Vec::new();
    for f in &frames {
        if let Some(e) = parse_icmp_error(f).with_context(|| format!("frame {f:02x?}"))? {
            errs.push(e);
        }
    }
    for e in &errs {
        assert_eq!(e.inner_src.ip(), std::net::IpAddr::V4(pod), "{e:?}");
        assert!(
            [unreach_vip, mtu_vip].contains(&match e.inner_dst.ip() {
                std::net::IpAddr::V4(a) => a,
                std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            }),
            "quoted destination is not the VIP: {e:?}"
        );
    }
    let has = |src: Ipv4Addr, typ: u8, code: u8, mtu: u16, dst: SocketAddr| {
        errs.iter().any(|e| {
            e.src == src
                && e.typ == typ
                && e.code == code
                && e.inner_dst == dst
                && (typ != 3 || code != 4 || e.mtu == mtu)
        })
    };
    let pod_gw = lab.addrs.pod_gw;
    let cases = [
        (
            "port unreachable from the backend (outer source = VIP)",
            unreach_vip,
            3,
            3,
            0,
            sa(unreach_vip, 53),
        ),
        (
            "frag needed from afgate",
            pod_gw,
            3,
            4,
            1200,
            sa(mtu_vip, 9000),
        ),
        ("frag needed from gw", gw, 3, 4, 1000, sa(mtu_vip, 9000)),
        (
            "time exceeded at afgate",
            pod_gw,
            11,
            0,
            0,
            sa(mtu_vip, 9000),
        ),
        ("time exceeded at gw", gw, 11, 0, 0, sa(mtu_vip, 9000)),
    ];
    for (what, src, typ, code, mtu, dst) in cases {
        assert!(
            has(src, typ, code, mtu, dst),
            "{what}: not seen in {errs:#?}"
        );
    }
    assert!(
        errs.iter()
            .any(|e| e.typ == 11 && e.inner_src.port() == te_port),
        "{errs:#?}"
    );
    afgate.stop()?;
    let st = final_stats(&afgate.log())?;
    // From the backend's kernel and the gateway: port unreachable, frag needed, time exceeded.
    assert!(num(&st, &["events", "nat_icmp_related"]) >= 3, "{st}");
    println!(
        "icmp: {} ICMP errors at the client, all quoting VIP:port with valid checksums; took {:.1}s",
        errs.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Backend removal mid-flow (B14)
// ---------------------------------------------------------------------------------------------

fn open_many(ns: &afgate_tests::Netns, to: SocketAddr, n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|_| TcpConn::open(ns, to, Duration::from_secs(3)).map(|c| c.id()))
        .collect()
}

fn count(ids: &[String], id: &str) -> usize {
    ids.iter().filter(|i| *i == id).count()
}

/// A long-lived TCP connection keeps its backend, with data both ways, while that backend
/// is drained and then removed; new connections never reach it; a UDP flow whose backend is
/// removed moves to another on its next datagram; weight changes and additions steer new
/// flows.
#[test]
fn backend_removal_keeps_established_flows_and_reroutes_new_ones() -> Result<()> {
    let t0 = Instant::now();
    let lab = node_lab()?;
    let tcp_b: Vec<SocketAddr> = EXT[..3].iter().map(|a| sa(*a, 8080)).collect();
    let udp_b: Vec<SocketAddr> = EXT[..3].iter().map(|a| sa(*a, 5353)).collect();
    let services = format!(
        "services:\n{}{}",
        svc_yaml("web", VIP, 80, "tcp", "wrr", &tcp_b),
        svc_yaml("dns", DNS_VIP, 53, "udp", "rr", &udp_b),
    );
    let (mut afgate, api) = start(&lab, lab.afgate_config_yaml(), &services)?;
    let mut tcp_srv = Vec::new();
    let mut udp_srv = Vec::new();
    for (i, (t, u)) in tcp_b.iter().zip(&udp_b).enumerate() {
        tcp_srv.push(Backend::tcp(&lab.ext.ns, *t, &format!("b{}", i + 1), 90)?);
        udp_srv.push(Backend::udp(
            &lab.ext.ns,
            *u,
            &format!("b{}", i + 1),
            90,
            false,
        )?);
    }
    let web = sa(VIP, 80);
    let by_id = |id: &str| tcp_b[id[1..].parse::<usize>().unwrap_or(1) - 1];

    let mut long =
        TcpConn::open(&lab.pod.ns, web, Duration::from_secs(5)).with_context(|| afgate.log())?;
    long.echo(10_000)?;
    let x = long.id();
    let xi: usize = x[1..].parse::<usize>()? - 1;
    let x_addr = by_id(&x);

    // Drained: no new flows, the established one continues.
    api.backend("backend_drain", "tcp", web, x_addr, None)?;
    long.echo(10_000).context("established flow after drain")?;
    let ids = open_many(&lab.pod.ns, web, 12)?;
    assert_eq!(count(&ids, &x), 0, "new flows on drained {x}: {ids:?}");

    // Removed: the same.
    let removed_at = Instant::now();
    api.backend("backend_del", "tcp", web, x_addr, None)?;
    long.echo(50_000)
        .context("established flow after removal")?;
    let got = tcp_srv[xi].recvs_since(removed_at);
    let bytes: usize = got.iter().map(|r| r.len).sum();
    assert_eq!(
        bytes, 50_000,
        "the removed backend still serves its flow: {got:?}"
    );
    assert!(
        got.iter().all(|r| r.len > 0),
        "no new connection at {x}: {got:?}"
    );
    let ids = open_many(&lab.pod.ns, web, 12)?;
    assert_eq!(count(&ids, &x), 0, "new flows on removed {x}: {ids:?}");

    // Weights: of the two left, one at 3 takes three quarters of new flows.
    let rest: Vec<String> = (1..=3)
        .map(|i| format!("b{i}"))
        .filter(|i| *i != x)
        .collect();
    api.backend("backend_set_weight", "tcp", web, by_id(&rest[0]), Some(3))?;
    let ids = open_many(&lab.pod.ns, web, 40)?;
    let (heavy, light) = (count(&ids, &rest[0]), count(&ids, &rest[1]));
    assert!(
        (27..=33).contains(&heavy) && heavy + light == 40,
        "weights 3:1 over 40 flows: {ids:?}"
    );
    // Added back (weight 1 of 5): about a fifth of new flows.
    api.backend("backend_add", "tcp", web, x_addr, Some(1))?;
    let ids = open_many(&lab.pod.ns, web, 50)?;
    let back = count(&ids, &x);
    assert!((7..=13).contains(&back), "re-added {x} takes 1/5: {ids:?}");
    long.echo(1_000).context("established flow at the end")?;

    // UDP: the flow's backend removed, its next datagram is re-balanced, not black-holed.
    let dns = sa(DNS_VIP, 53);
    let u = udp_socket(&lab.pod.ns, sa(Ipv4Addr::UNSPECIFIED, 0), dns)?;
    u.set_read_timeout(Some(Duration::from_secs(2)))?;
    let ask = |tag: &str| -> Result<String> {
        u.send(tag.as_bytes())?;
        let mut b = [0u8; 512];
        let n = u
            .recv(&mut b)
            .with_context(|| format!("udp reply to {tag}"))?;
        reply_id(&b[..n]).context("reply without id")
    };
    let y = ask("q1")?;
    assert_eq!(ask("q2")?, y, "one flow, one backend");
    let yi: usize = y[1..].parse::<usize>()? - 1;
    let udp_removed_at = Instant::now();
    api.backend("backend_del", "udp", dns, udp_b[yi], None)?;
    let z = ask("q3").context("black-holed after its backend was removed")?;
    assert_ne!(z, y, "re-balanced away from the removed backend");
    assert_eq!(ask("q4")?, z, "and stays on the new one");
    assert!(udp_srv[yi].recvs_since(udp_removed_at).is_empty());

    drop(long);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "service_rebalanced"]) >= 1, "{s}");
    println!(
        "backend removal: long flow on {x} echoed 50000 B after removal; weights 3:1 gave {heavy}:{light}; re-added {x} took {back}/50; udp {y} -> {z}; took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Conntrack full (B12)
// ---------------------------------------------------------------------------------------------

/// A 1024-flow table (the smallest allowed) holding 200 established TCP flows is flooded
/// with 1500 unreplied UDP flows, then with 1100 replied ones: established flows keep
/// working throughout, the table never holds more than 1024 flows, unreplied flows are
/// evicted first (early drop, counted), and once only replied and established flows are
/// left, new flows are refused (`conntrack_full`, counted): netfilter's semantics.
#[test]
fn conntrack_full_early_drops_unreplied_and_keeps_established() -> Result<()> {
    const CAP: u64 = 1024;
    const ESTABLISHED: usize = 200;
    const UNREPLIED: u16 = 1500;
    const REPLIED: u16 = 1100;
    let t0 = Instant::now();
    let lab = node_lab()?;
    let (sink_vip, echo_vip) = (Ipv4Addr::new(10, 96, 0, 30), Ipv4Addr::new(10, 96, 0, 31));
    let services = format!(
        "services:\n{}{}{}conntrack:\n  capacity: {CAP}\n  timeouts: {{ udp: 600, udp_stream: 600 }}\n",
        svc_yaml("web", VIP, 80, "tcp", "rr", &[sa(EXT[0], 8080)]),
        svc_yaml("sink", sink_vip, 53, "udp", "rr", &[sa(EXT[0], 5353)]),
        svc_yaml("echo", echo_vip, 53, "udp", "rr", &[sa(EXT[1], 5353)]),
    );
    let (mut afgate, api) = start(&lab, lab.afgate_config_yaml(), &services)?;
    let _web = Backend::tcp(&lab.ext.ns, sa(EXT[0], 8080), "web", 120)?;
    let sink = Backend::udp(&lab.ext.ns, sa(EXT[0], 5353), "sink", 120, true)?;
    let _echo = Backend::udp(&lab.ext.ns, sa(EXT[1], 5353), "echo", 120, false)?;

    // The table's size, sampled all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (api, stop) = (api.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max = 0u64;
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(n) = api.conntrack_count() {
                    max = max.max(n);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            max
        })
    };

    let mut conns = Vec::new();
    for _ in 0..ESTABLISHED {
        conns.push(
            TcpConn::open(&lab.pod.ns, sa(VIP, 80), Duration::from_secs(3))
                .with_context(|| afgate.log())?,
        );
    }
    let check_established = |conns: &mut Vec<TcpConn>, when: &str| -> Result<()> {
        for (i, c) in conns.iter_mut().enumerate() {
            c.echo(100)
                .with_context(|| format!("established flow {i} {when}"))?;
        }
        Ok(())
    };
    check_established(&mut conns, "at start")?;

    // Unreplied flows: one datagram each from its own source port, paced.
    in_ns(&lab.pod.ns, || -> Result<()> {
        for i in 0..UNREPLIED {
            let s = std::net::UdpSocket::bind(sa(Ipv4Addr::UNSPECIFIED, 20000 + i))?;
            s.send_to(b"x", sa(sink_vip, 53))?;
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(500));
    let unreplied_delivered = sink.recvs().len();
    let after_unreplied = api.conntrack_count()?;
    check_established(&mut conns, "after the unreplied flood")?;

    // Replied flows, 20 at a time: each is answered, so once it is in, it stays.
    let mut answered = 0usize;
    for batch in 0..REPLIED / 20 {
        let socks: Vec<std::net::UdpSocket> = (0..20)
            .map(|i| {
                let p = 40000 + batch * 20 + i;
                udp_socket(&lab.pod.ns, sa(Ipv4Addr::UNSPECIFIED, p), sa(echo_vip, 53))
            })
            .collect::<Result<_>>()?;
        for s in &socks {
            s.send(b"y")?;
        }
        std::thread::sleep(Duration::from_millis(60));
        for s in &socks {
            s.set_nonblocking(true)?;
            let mut b = [0u8; 256];
            if s.recv(&mut b).is_ok() {
                answered += 1;
            }
        }
    }
    check_established(&mut conns, "with the table full")?;
    // A new TCP flow now: refused, unless its early-drop window still finds one of the few
    // unreplied entries left (a reply that came after the batch's wait), which it may evict.
    let early_before = api.metric("afgate_conntrack_early_drops_total")?;
    let late = TcpConn::open(&lab.pod.ns, sa(VIP, 80), Duration::from_secs(2));
    let late_ok = late.is_ok();
    drop(late);
    let early_after = api.metric("afgate_conntrack_early_drops_total")?;
    check_established(&mut conns, "after a new flow met the full table")?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_seen = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let at_end = api.conntrack_count()?;
    drop(conns);
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    let early = num(&s, &["conntrack", "early_drops"]);
    let full = num(&s, &["conntrack", "full_drops"]);
    let dropped = num(&s, &["drops", "conntrack_full"]);
    println!(
        "conntrack full (capacity {CAP}): {ESTABLISHED} established flows echoed throughout; \
         unreplied flood {UNREPLIED}: {unreplied_delivered} delivered, table {after_unreplied}; \
         replied {REPLIED}: {answered} answered; table max sampled {max_seen}, at end {at_end}; \
         early_drops {early}, full_drops {full}, drops.conntrack_full {dropped}; new TCP when full: {}; took {:.1}s",
        if late_ok { "accepted" } else { "refused" },
        t0.elapsed().as_secs_f64()
    );
    assert!(
        max_seen <= CAP && at_end <= CAP,
        "table above capacity: {max_seen} {at_end}"
    );
    assert!(num(&s, &["conntrack", "entries"]) <= CAP, "{s}");
    assert!(
        after_unreplied >= CAP - 32,
        "the flood filled the table: {after_unreplied}"
    );
    // Every unreplied flow beyond the free room evicted an older one or was refused.
    let beyond = ESTABLISHED as u64 + u64::from(UNREPLIED) - CAP;
    assert!(early + full >= beyond, "{s}");
    assert!(
        early >= beyond / 2,
        "unreplied flows are evicted first: {s}"
    );
    // Replied flows fill what the established ones leave, and no more.
    assert!(answered <= (CAP as usize) - ESTABLISHED, "{answered}");
    assert!(
        answered >= 500,
        "replied flows evict unreplied ones: {answered}"
    );
    let refused = usize::from(REPLIED) - answered;
    assert!(
        refused >= usize::from(REPLIED) + ESTABLISHED - CAP as usize,
        "{refused}"
    );
    assert!(full >= 1 && dropped >= 1, "refusals counted: {s}");
    assert!(dropped <= full, "{s}");
    if late_ok && early_after == early_before {
        bail!("a new TCP flow was admitted to a full table without evicting an unreplied one");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Endpoint churn under load (#7 item 6)
// ---------------------------------------------------------------------------------------------

/// One UDP datagram the load generator sent, and the backend that answered (if any).
struct Sent {
    at: Instant,
    flow: usize,
    answered: Option<String>,
}

/// UDP (16 flows, ~250 datagrams/s) and TCP (sequential short connections) load on a
/// ClusterIP while backends are removed, added, scaled to zero and back through the API: no
/// datagram or connection reaches a removed backend more than 1 s after its removal, and
/// after scale 0 → 2 every flow is served again.
#[test]
fn endpoint_churn_under_load_never_uses_removed_backends() -> Result<()> {
    const LOAD: Duration = Duration::from_secs(12);
    const FLOWS: usize = 16;
    let t0 = Instant::now();
    let lab = node_lab()?;
    let tcp_b: Vec<SocketAddr> = EXT.iter().map(|a| sa(*a, 8080)).collect();
    let udp_b: Vec<SocketAddr> = EXT.iter().map(|a| sa(*a, 5353)).collect();
    let (web, dns) = (sa(VIP, 80), sa(DNS_VIP, 53));
    let services = format!(
        "services:\n{}{}",
        svc_yaml("web", VIP, 80, "tcp", "rr", &tcp_b[..3]),
        svc_yaml("dns", DNS_VIP, 53, "udp", "rr", &udp_b[..3]),
    );
    let (mut afgate, api) = start(&lab, lab.afgate_config_yaml(), &services)?;
    let names = ["b1", "b2", "b3", "b4"];
    let mut tcp_srv = Vec::new();
    let mut udp_srv = Vec::new();
    for i in 0..4 {
        tcp_srv.push(Backend::tcp(&lab.ext.ns, tcp_b[i], names[i], 60)?);
        udp_srv.push(Backend::udp(&lab.ext.ns, udp_b[i], names[i], 60, false)?);
    }
    let socks: Vec<std::net::UdpSocket> = (0..FLOWS)
        .map(|_| udp_socket(&lab.pod.ns, sa(Ipv4Addr::UNSPECIFIED, 0), dns))
        .collect::<Result<_>>()?;
    // Warm-up: every flow answered once before the clock starts.
    for s in &socks {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send(b"seq=warm")?;
        let mut b = [0u8; 256];
        s.recv(&mut b).with_context(|| afgate.log())?;
        s.set_nonblocking(true)?;
    }
    let start = Instant::now();
    let end = start + LOAD;

    let udp_load = std::thread::spawn(move || {
        let mut sent: Vec<Sent> = Vec::new();
        let mut b = [0u8; 512];
        let mut next = Instant::now();
        let drain = |sent: &mut Vec<Sent>, b: &mut [u8]| {
            for s in &socks {
                while let Ok(n) = s.recv(b) {
                    let text = String::from_utf8_lossy(&b[..n]).into_owned();
                    let seq = text
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("seq="))
                        .and_then(|v| v.parse::<usize>().ok());
                    if let Some(i) = seq
                        && let Some(e) = sent.get_mut(i)
                    {
                        e.answered = reply_id(&b[..n]);
                    }
                }
            }
        };
        while Instant::now() < end {
            let i = sent.len();
            let flow = i % FLOWS;
            // A refused datagram (no backend: ICMP port unreachable) surfaces as an error on
            // a later call of that socket; it is a loss like any other.
            let _ = socks[flow].send(format!("seq={i}").as_bytes());
            sent.push(Sent {
                at: Instant::now(),
                flow,
                answered: None,
            });
            drain(&mut sent, &mut b);
            next += Duration::from_millis(4);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            drain(&mut sent, &mut b);
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    });
    let pod_ns = lab.pod.ns.clone();
    let tcp_load = std::thread::spawn(move || {
        let mut out: Vec<(Instant, Option<String>)> = Vec::new();
        while Instant::now() < end {
            let at = Instant::now();
            let r = TcpConn::open(&pod_ns, web, Duration::from_millis(800))
                .ok()
                .map(|c| c.id());
            out.push((at, r));
            std::thread::sleep(Duration::from_millis(10));
        }
        out
    });

    // The churn, on a fixed schedule: (at, op, backends).
    let schedule: [(u64, &str, &[usize]); 4] = [
        (2000, "backend_del", &[0]),
        (4000, "backend_add", &[3]),
        (6000, "backend_del", &[1, 2, 3]),
        (8000, "backend_add", &[0, 1]),
    ];
    // Per backend: (removed at, re-added at).
    let mut removed: Vec<(usize, Instant, Option<Instant>)> = Vec::new();
    let mut scaled_up = start;
    for (ms, op, which) in schedule {
        let due = start + Duration::from_millis(ms);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let at = Instant::now();
        for &i in which {
            api.backend(op, "udp", dns, udp_b[i], None)?;
            api.backend(op, "tcp", web, tcp_b[i], None)?;
            if op == "backend_del" {
                removed.push((i, at, None));
            } else if let Some(r) = removed.iter_mut().find(|r| r.0 == i && r.2.is_none()) {
                r.2 = Some(at);
            }
        }
        if op == "backend_add" {
            scaled_up = at;
        }
    }
    let sent = udp_load
        .join()
        .map_err(|_| anyhow::anyhow!("udp load panicked"))?;
    let conns = tcp_load
        .join()
        .map_err(|_| anyhow::anyhow!("tcp load panicked"))?;

    // No packet at a removed backend more than 1 s after its removal.
    let mut worst_ms = 0f64;
    for &(i, at, back) in &removed {
        let until = back.unwrap_or(end + Duration::from_secs(1));
        for (kind, srv) in [("udp", &udp_srv[i]), ("tcp", &tcp_srv[i])] {
            let late: Vec<f64> = srv
                .recvs_since(at)
                .iter()
                .filter(|r| r.at < until)
                .map(|r| (r.at - at).as_secs_f64() * 1000.0)
                .collect();
            let last = late.iter().copied().fold(0f64, f64::max);
            worst_ms = worst_ms.max(last);
            println!(
                "churn: {} {kind}: {} packets after removal, last {last:.1} ms after",
                names[i],
                late.len()
            );
            assert!(
                last <= 1000.0,
                "{} {kind} got a packet {last:.1} ms after removal",
                names[i]
            );
        }
    }
    let window = |from: Instant, to: Instant| {
        let w: Vec<&Sent> = sent.iter().filter(|s| s.at >= from && s.at < to).collect();
        let ok = w.iter().filter(|s| s.answered.is_some()).count();
        (ok, w.len())
    };
    let ms = |m: u64| start + Duration::from_millis(m);
    let pct = |(ok, n): (usize, usize)| 100.0 * ok as f64 / n.max(1) as f64;
    let phases = [
        ("3 backends", window(start, ms(2000))),
        ("b1 removed", window(ms(2000), ms(4000))),
        ("b4 added", window(ms(4000), ms(6000))),
        ("scaled to 0", window(ms(6000), ms(8000))),
        (
            "scaled to 2 (+1 s)",
            window(scaled_up + Duration::from_secs(1), end),
        ),
    ];
    for (name, w) in &phases {
        println!(
            "churn: udp {name}: {}/{} answered ({:.1}%)",
            w.0,
            w.1,
            pct(*w)
        );
    }
    let tcp_phase = |from: Instant, to: Instant| {
        let w: Vec<_> = conns.iter().filter(|c| c.0 >= from && c.0 < to).collect();
        (w.iter().filter(|c| c.1.is_some()).count(), w.len())
    };
    let tcp_after = tcp_phase(scaled_up + Duration::from_secs(1), end);
    let tcp_before = tcp_phase(start, ms(6000));
    println!(
        "churn: tcp before scale-0: {}/{} connected; after scale-up (+1 s): {}/{}",
        tcp_before.0, tcp_before.1, tcp_after.0, tcp_after.1
    );
    // How long after the scale-up each UDP flow waited for its first answer.
    let first_served_ms = (0..FLOWS)
        .filter_map(|f| {
            sent.iter()
                .find(|s| s.flow == f && s.at >= scaled_up && s.answered.is_some())
                .map(|s| (s.at - scaled_up).as_secs_f64() * 1000.0)
        })
        .fold(0f64, f64::max);
    println!("churn: after scale 0 -> 2 every udp flow answered within {first_served_ms:.1} ms");
    // After scale 0 → 2: every UDP flow answered again, only by b1/b2; TCP connects.
    let after: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.at >= scaled_up + Duration::from_secs(1))
        .collect();
    for f in 0..FLOWS {
        assert!(
            after.iter().any(|s| s.flow == f && s.answered.is_some()),
            "udp flow {f} black-holed after scale-up"
        );
    }
    assert!(
        after
            .iter()
            .filter_map(|s| s.answered.as_deref())
            .all(|id| id == "b1" || id == "b2"),
        "after scale-up only b1/b2 answer"
    );
    assert!(
        pct(phases[4].1) >= 90.0,
        "udp after scale-up: {:?}",
        phases[4].1
    );
    assert!(
        pct(phases[0].1) >= 90.0,
        "udp before churn: {:?}",
        phases[0].1
    );
    assert!(
        tcp_after.1 > 0 && tcp_after.0 * 10 >= tcp_after.1 * 9,
        "tcp after scale-up: {tcp_after:?}"
    );
    afgate.stop()?;
    let s = final_stats(&afgate.log())?;
    assert!(num(&s, &["events", "service_rebalanced"]) >= 1, "{s}");
    assert!(
        num(&s, &["events", "service_reject"]) >= 1,
        "scale-0 rejects: {s}"
    );
    println!(
        "churn: {} datagrams, {} connections; worst last packet at a removed backend {worst_ms:.1} ms after removal; took {:.1}s",
        sent.len(),
        conns.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
