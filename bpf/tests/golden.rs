//! Golden packets through `afgate_steer` with BPF_PROG_TEST_RUN, Katran
//! style: a table of {description, frame, expected action, expected
//! counter}. Each case runs on a fresh program instance so the counter check
//! is exact (that counter +1, every other counter 0).

mod common;

use std::net::Ipv4Addr;

use afgate_bpf::{PassRule, SteerConfig, SteerProgram, SteerStat};
use common::*;

const XDP_PASS: u32 = 2;

const NODE: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 103);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);

struct Case {
    description: &'static str,
    frame: Vec<u8>,
    action: u32,
    stat: SteerStat,
}

fn cfg() -> SteerConfig {
    SteerConfig {
        own_mac: PORT_MAC,
        only_own_mac: true,
        passthru: vec![
            PassRule::tcp(NODE, 22),
            PassRule {
                addr: NODE,
                port: 0,
                proto: 1, // ICMP, any "port"
            },
        ],
    }
}

fn cases() -> Vec<Case> {
    let ssh = ipv4(CLIENT, NODE, 6, &tcp_syn(40000, 22));
    let dns = ipv4(CLIENT, POD, 17, &udp(40000, 53, b"q"));
    vec![
        Case {
            description: "LACPDU (ethertype 0x8809) -> kernel",
            frame: eth(LACP_MAC, PEER_MAC, 0x8809, &[1, 1, 0, 0]),
            action: XDP_PASS,
            stat: SteerStat::PassLacp,
        },
        Case {
            description: "STP BPDU to 01:80:c2:00:00:00 -> kernel",
            frame: eth(STP_MAC, PEER_MAC, 0x0026, &[0x42, 0x42, 0x03, 0, 0]),
            action: XDP_PASS,
            stat: SteerStat::PassLinkLocal,
        },
        Case {
            description: "LLDP to 01:80:c2:00:00:0e -> kernel",
            frame: eth([1, 0x80, 0xc2, 0, 0, 0x0e], PEER_MAC, 0x88cc, &[0; 8]),
            action: XDP_PASS,
            stat: SteerStat::PassLinkLocal,
        },
        Case {
            description: "unicast for another MAC, only_own_mac -> kernel",
            frame: eth(OTHER_MAC, PEER_MAC, 0x0800, &dns),
            action: XDP_PASS,
            stat: SteerStat::PassOtherMac,
        },
        Case {
            description: "TCP to node:22 (passthru exact) -> kernel",
            frame: eth(PORT_MAC, PEER_MAC, 0x0800, &ssh),
            action: XDP_PASS,
            stat: SteerStat::PassRule,
        },
        Case {
            description: "TCP to node:22 inside 802.1Q vid 1155 -> kernel",
            frame: eth(PORT_MAC, PEER_MAC, 0x8100, &vlan(1155, 0x0800, &ssh)),
            action: XDP_PASS,
            stat: SteerStat::PassRule,
        },
        Case {
            description: "ICMP to node (passthru addr,0,proto) -> kernel",
            frame: eth(
                PORT_MAC,
                PEER_MAC,
                0x0800,
                &ipv4(CLIENT, NODE, 1, &[8, 0, 0, 0]),
            ),
            action: XDP_PASS,
            stat: SteerStat::PassRule,
        },
        Case {
            description: "TCP to node:80 (no rule) -> dataplane, no socket -> fallback",
            frame: eth(
                PORT_MAC,
                PEER_MAC,
                0x0800,
                &ipv4(CLIENT, NODE, 6, &tcp_syn(1, 80)),
            ),
            action: XDP_PASS,
            stat: SteerStat::PassNoSocket,
        },
        Case {
            description: "ordinary UDP to a pod -> dataplane, no socket -> fallback",
            frame: eth(PORT_MAC, PEER_MAC, 0x0800, &dns),
            action: XDP_PASS,
            stat: SteerStat::PassNoSocket,
        },
        Case {
            description: "broadcast ARP (not other-MAC) -> dataplane, fallback",
            frame: eth(BCAST, PEER_MAC, 0x0806, &[0; 28]),
            action: XDP_PASS,
            stat: SteerStat::PassNoSocket,
        },
        Case {
            description: "runt: 802.1Q tag cut short -> kernel, malformed",
            frame: eth(PORT_MAC, PEER_MAC, 0x8100, &[0x04]),
            action: XDP_PASS,
            stat: SteerStat::Malformed,
        },
        Case {
            description: "runt: IPv4 header cut short -> kernel, malformed",
            frame: eth(PORT_MAC, PEER_MAC, 0x0800, &ssh[..12]),
            action: XDP_PASS,
            stat: SteerStat::Malformed,
        },
        Case {
            description: "IPv4 with ihl < 5 -> kernel, malformed",
            frame: {
                let mut p = ssh.clone();
                p[0] = 0x44;
                eth(PORT_MAC, PEER_MAC, 0x0800, &p)
            },
            action: XDP_PASS,
            stat: SteerStat::Malformed,
        },
        Case {
            description: "TCP ports cut short -> kernel, malformed",
            frame: eth(PORT_MAC, PEER_MAC, 0x0800, &ssh[..22]),
            action: XDP_PASS,
            stat: SteerStat::Malformed,
        },
    ]
}

#[test]
fn golden_steer_table() {
    if !root() {
        return;
    }
    let mut failures = Vec::new();
    for case in cases() {
        let prog = SteerProgram::load(&cfg()).expect("load");
        let run = prog.test_run(&case.frame, 1).expect("test_run");
        let stats = prog.stats().expect("stats");
        let counters_ok = SteerStat::ALL
            .iter()
            .all(|&s| stats.get(s) == u64::from(s == case.stat));
        if run.retval != case.action || !counters_ok {
            failures.push(format!(
                "{}: action {} (want {}), stats {stats:?} (want {} = 1)",
                case.description,
                run.retval,
                case.action,
                case.stat.name()
            ));
        }
        assert_eq!(
            run.data_out, case.frame,
            "{}: frame modified",
            case.description
        );
    }
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}

/// Frames shorter than an Ethernet header cannot be injected: the kernel
/// refuses them in BPF_PROG_TEST_RUN (EINVAL) and pads them on AF_PACKET
/// send, so the program's `eth + 1 > data_end` branch is verified-only.
#[test]
fn shorter_than_ethernet_is_rejected_by_test_run() {
    if !root() {
        return;
    }
    let prog = SteerProgram::load(&cfg()).expect("load");
    let err = prog.test_run(&[0u8; 10], 1).expect_err("10-byte frame");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
}

#[test]
fn passthru_set_is_replaced() {
    if !root() {
        return;
    }
    let prog = SteerProgram::load(&cfg()).expect("load");
    let ssh = eth(
        PORT_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(CLIENT, NODE, 6, &tcp_syn(1, 22)),
    );
    let web = eth(
        PORT_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(CLIENT, NODE, 6, &tcp_syn(1, 80)),
    );
    prog.test_run(&ssh, 1).unwrap();
    assert_eq!(prog.stats().unwrap().pass_rule, 1);

    // New set: TCP 80 only; 22 must be gone, 80 present.
    prog.set_passthru(&[PassRule::tcp(NODE, 80)]).unwrap();
    prog.test_run(&ssh, 1).unwrap();
    prog.test_run(&web, 1).unwrap();
    let s = prog.stats().unwrap();
    assert_eq!((s.pass_rule, s.pass_no_socket), (2, 1), "{s:?}");

    // Whole-host rule (addr,0,0) catches every protocol.
    prog.set_passthru(&[PassRule::host(NODE)]).unwrap();
    prog.test_run(&ssh, 1).unwrap();
    assert_eq!(prog.stats().unwrap().pass_rule, 3);

    // A port without a protocol is refused; the set is unchanged.
    let bad = PassRule {
        addr: NODE,
        port: 22,
        proto: 0,
    };
    assert!(prog.set_passthru(&[bad]).is_err());
    prog.set_passthru(&[]).unwrap();
    prog.test_run(&ssh, 1).unwrap();
    assert_eq!(prog.stats().unwrap().pass_no_socket, 2);
}

#[test]
fn register_xsk_rejects_bad_queue_and_unregister_is_idempotent() {
    if !root() {
        return;
    }
    let prog = SteerProgram::load(&cfg()).expect("load");
    assert!(prog.register_xsk(64, 3).is_err());
    assert!(prog.register_xsk(0, -1).is_err());
    // fd 0 is not an AF_XDP socket: the kernel refuses it.
    assert!(prog.register_xsk(0, 0).is_err());
    prog.unregister_xsk(0).expect("empty slot");
    prog.unregister_xsk(63).expect("empty slot");
}

const XDP_DROP: u32 = 1;

/// The handover hold: with no socket on the queue and the hold running, frames for the
/// dataplane are dropped (held_drop); everything the program always passes (LACP,
/// link-local, other MACs, passthru rules, malformed) still goes to the kernel; once the
/// deadline passes, or the hold is cleared, the fail-open fallback is back.
#[test]
fn hold_drops_only_dataplane_frames_and_lapses() {
    if !root() {
        return;
    }
    let dns = eth(
        PORT_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(CLIENT, POD, 17, &udp(40000, 53, b"q")),
    );
    let arp = eth(BCAST, PEER_MAC, 0x0806, &[0; 28]);
    let check = |prog: &SteerProgram, frame: &[u8], action: u32, stat: SteerStat, what: &str| {
        let before = prog.stats().expect("stats");
        let run = prog.test_run(frame, 1).expect("test_run");
        let after = prog.stats().expect("stats");
        let delta_ok = SteerStat::ALL
            .iter()
            .all(|&s| after.get(s) - before.get(s) == u64::from(s == stat));
        assert!(
            run.retval == action && delta_ok,
            "{what}: action {} (want {action}), stats {before:?} -> {after:?} (want {} + 1)",
            run.retval,
            stat.name()
        );
    };

    let prog = SteerProgram::load(&cfg()).expect("load");
    prog.set_hold(std::time::Duration::from_secs(30)).unwrap();
    check(
        &prog,
        &dns,
        XDP_DROP,
        SteerStat::HeldDrop,
        "UDP to a pod, holding",
    );
    check(&prog, &arp, XDP_DROP, SteerStat::HeldDrop, "ARP, holding");
    for case in cases() {
        if case.stat != SteerStat::PassNoSocket {
            check(
                &prog,
                &case.frame,
                case.action,
                case.stat,
                &format!("{} (holding)", case.description),
            );
        }
    }

    // Cleared: the fallback again.
    prog.clear_hold().unwrap();
    check(
        &prog,
        &dns,
        XDP_PASS,
        SteerStat::PassNoSocket,
        "hold cleared",
    );

    // Expired without anyone clearing it (a successor that died mid-handover).
    prog.set_hold(std::time::Duration::from_millis(20)).unwrap();
    check(
        &prog,
        &dns,
        XDP_DROP,
        SteerStat::HeldDrop,
        "before the deadline",
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    check(
        &prog,
        &dns,
        XDP_PASS,
        SteerStat::PassNoSocket,
        "after the deadline",
    );
    assert_eq!(prog.stats().unwrap().held_drop, 3);
}
