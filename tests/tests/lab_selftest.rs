//! Tests of the lab itself, with the kernel doing the forwarding (no afgate): the topology
//! works, captures see what they should, and nothing is left behind, also after a panic.
//!
//! These run as root and never skip: a machine that cannot create namespaces fails them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use afgate_tests::capture::{self, Capture};
use afgate_tests::peer;
use afgate_tests::{Lab, Netns, NodeLab, ping};

const SERVER_SECS: u32 = 20;

fn lab() -> NodeLab {
    Lab::node_lab().expect("build node_lab (needs root, netns, veth, ethtool)")
}

#[test]
fn node_lab_kernel_forwards_pod_to_ext() {
    let lab = lab();
    let ext_ip = lab.addrs.ext_ip.to_string();

    // ICMP both ways through two kernel routers: ext's reply (TTL 64) reaches the pod at 62.
    let p = ping(&lab.pod.ns, &ext_ip, 3, Duration::from_secs(5)).unwrap();
    assert_eq!((p.sent, p.received), (3, 3), "{p:?}");
    assert_eq!(p.ttl, Some(62), "{p:?}");

    // TCP: the server in ext sees the pod's own address (no NAT on the way), and the frames
    // ext receives come from gw's MAC with TTL 62.
    let cap = Capture::start(&lab.ext.ns, &lab.ext.dev, "tcp port 8080", 50, 15).unwrap();
    let server = peer::tcp_server(&lab.ext.ns, "0.0.0.0:8080", "ext1", SERVER_SECS).unwrap();
    let r = peer::tcp_client(&lab.pod.ns, &format!("{ext_ip}:8080"), 100_000, 10).unwrap();
    assert_eq!(r.reply.id, "ext1");
    assert_eq!(r.reply.client_ip(), "10.20.9.60");
    assert_eq!(r.reply.local, format!("{ext_ip}:8080"));
    assert!(r.echoed, "{}", r.stdout);
    let clients = peer::accepted_clients(&server);
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert!(clients[0].starts_with("10.20.9.60:"), "{clients:?}");

    let lines = cap.stop().unwrap();
    let inbound: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains(&format!(
                "10.20.9.60.{} > {ext_ip}.8080",
                r.local.rsplit(':').next().unwrap()
            ))
        })
        .collect();
    assert!(
        !inbound.is_empty(),
        "no pod->ext frames captured:\n{}",
        lines.join("\n")
    );
    for l in &inbound {
        assert_eq!(capture::macs(l), Some((lab.gw_ext_mac, lab.ext.mac)), "{l}");
        assert_eq!(capture::ttl(l), Some(62), "{l}");
        assert!(capture::vlans(l).is_empty(), "{l}");
    }
}

#[test]
fn node_lab_kernel_forwards_pod_to_pod_and_gateway_answers() {
    let lab = lab();
    // pod -> pod2: one hop (node), proxy ARP for 169.254.1.1 on both pod ports.
    let p = ping(
        &lab.pod.ns,
        &lab.addrs.pod2_ip.to_string(),
        2,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!((p.received, p.ttl), (2, Some(63)), "{p:?}");
    // The pod resolved its gateway to the node port's MAC by proxy ARP.
    let neigh = lab.pod.ns.ip(&["neigh", "show", "169.254.1.1"]).unwrap();
    assert!(
        neigh.contains(&lab.ports.pod60.mac.to_string()),
        "pod's neighbour for 169.254.1.1: {neigh:?}"
    );
    // UDP, pod2 -> ext.
    let _srv = peer::udp_server(&lab.ext.ns, "10.186.200.10:5353", "u1", SERVER_SECS).unwrap();
    let r = peer::udp_client(&lab.pod2.ns, "10.186.200.10:5353", 3, 5).unwrap();
    assert_eq!((r.sent, r.received), (3, 3), "{r:?}");
    assert_eq!(r.replies[0].client_ip(), "10.20.9.41");
    assert_eq!(r.replies[0].id, "u1");
}

/// With TX checksum offload disabled on the veths, frames reach the node's ports (where afgate
/// reads them) with complete L4 checksums, and TCP still works end to end.
#[test]
fn node_ports_receive_complete_checksums() {
    let lab = lab();
    let cap = Capture::start(&lab.node, "pod60", "tcp port 8081", 40, 15).unwrap();
    let _server = peer::tcp_server(&lab.ext.ns, "0.0.0.0:8081", "ext1", SERVER_SECS).unwrap();
    let r = peer::tcp_client(&lab.pod.ns, "10.186.200.10:8081", 20_000, 10).unwrap();
    assert!(r.echoed);
    let lines = cap.stop().unwrap();
    let from_pod: Vec<&String> = lines.iter().filter(|l| l.contains("10.20.9.60.")).collect();
    assert!(!from_pod.is_empty(), "{}", lines.join("\n"));
    for l in &from_pod {
        assert!(l.contains("(correct)") && !l.contains("incorrect"), "{l}");
    }
}

#[test]
fn afgate_config_names_the_lab() {
    let lab = lab();
    let path = lab.afgate_config_file().unwrap();
    let y = std::fs::read_to_string(path).unwrap();
    for needle in [
        "cores: [0]",
        "device: biz",
        "role: uplink",
        "addresses: [10.186.153.103/24]",
        "device: pod60",
        "role: pod",
        "{ dst: 10.20.9.60/32, dev: pod60 }",
        "{ dst: 0.0.0.0/0, via: 10.186.153.254, dev: biz }",
        "{ ip: 10.186.153.254, mac: \"02:af:03:00:00:02\", dev: biz }",
    ] {
        assert!(y.contains(needle), "{needle:?} missing from\n{y}");
    }
    // The MAC in the config is the one the gateway really has.
    let link = lab.gw.ns.ip(&["link", "show", "eth0"]).unwrap();
    assert!(link.contains("02:af:03:00:00:02"), "{link}");
}

/// A panic inside a lab scope still deletes every namespace (and with them the veths).
#[test]
fn panicking_test_leaves_nothing_behind() {
    let mut names = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = lab();
        names = lab.lab.netns_names();
        // A running server inside must not keep the namespace alive either.
        let _s = peer::tcp_server(&lab.ext.ns, "0.0.0.0:9000", "x", SERVER_SECS).unwrap();
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 5);
    let left = Netns::list_all().unwrap();
    for n in &names {
        assert!(!left.contains(n), "{n} survived the panic: {left:?}");
    }
    assert_no_root_veth(&names);
}

/// Labs built concurrently in threads get distinct names and all work.
#[test]
fn parallel_labs_do_not_collide() {
    let handles: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let lab = lab();
                let p = ping(&lab.pod.ns, "10.186.200.10", 1, Duration::from_secs(5)).unwrap();
                assert_eq!(p.received, 1);
                lab.lab.netns_names()
            })
        })
        .collect();
    // Join every thread before asserting: a panic here while other threads still hold labs
    // would detach them, and the process could exit before their Drops run.
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    let mut all: Vec<String> = results
        .into_iter()
        .flat_map(|r| r.expect("lab thread panicked"))
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "duplicate namespace names");
    let left = Netns::list_all().unwrap();
    assert!(all.iter().all(|n| !left.contains(n)), "{left:?}");
    for name in &all {
        assert!(name.len() <= 15, "{name}");
    }
}

/// The lab creates veths directly inside namespaces; nothing of ours may show up in the root.
fn assert_no_root_veth(names: &[String]) {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for n in names {
        assert!(
            !text.contains(n.as_str()),
            "veth of {n} in the root namespace: {text}"
        );
    }
    for dev in ["pod60", "pod41", "biz"] {
        assert!(
            !text.contains(&format!(": {dev}")),
            "{dev} in the root namespace: {text}"
        );
    }
}

/// Afgate's process contract, exercised with a stand-in script: readiness line, log capture,
/// SIGTERM stop, SIGKILL, and a clear error when it never becomes ready.
#[test]
fn afgate_process_contract_with_stand_in() {
    let ns = Netns::new("prc").unwrap();
    let dir = afgate_tests::TempDir::new("standin").unwrap();
    let script = dir.path().join("fake-afgate");
    // Prints its arguments and the readiness line, then waits (bounded) for a signal; on
    // SIGTERM it says so and exits 0.
    std::fs::write(
        &script,
        "#!/bin/sh\ntrap 'echo got-term; exit 0' TERM\necho \"args: $*\"\necho 'afgate: ready'\n\
         i=0; while [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n",
    )
    .unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    let config = dir.path().join("afgate.yaml");

    let mut a = afgate_tests::Afgate::start_bin(&script, &ns, &config, &[]).unwrap();
    assert!(a.is_running());
    assert!(
        a.log()
            .contains(&format!("args: run -c {}", config.display())),
        "{}",
        a.log()
    );
    let status = a.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(a.log().contains("got-term"), "{}", a.log());

    let mut b = afgate_tests::Afgate::start_bin(&script, &ns, &config, &[]).unwrap();
    let status = b.kill().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    // A binary that exits without the readiness line: the error carries its output.
    let err =
        afgate_tests::Afgate::start_bin(std::path::Path::new("/bin/false"), &ns, &config, &[])
            .err()
            .expect("must fail");
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
}
