//! XDP attach/detach on real veths inside a scratch network namespace.
//!
//! Topology (all inside one `afgbpf-<pid>-<n>` namespace):
//!   afg0 ---veth--- afg1 [afgate_steer, native]
//! frames are injected with AF_PACKET on afg0 and counted by the program on
//! afg1. The namespace (and with it every veth and program) is deleted by
//! `Netns`'s Drop, even when an assertion fails.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use afgate_bpf::{
    DevmapRedirect, ModeRequest, PassRule, PortSteering, SteerConfig, XdpMode, XdpPass, detach_any,
    xdp_attached,
};
use common::*;

const NODE: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 103);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 1);

fn cfg(ns: &Netns, dev: &str) -> SteerConfig {
    SteerConfig {
        own_mac: ns.mac(dev),
        only_own_mac: false,
        passthru: vec![PassRule::tcp(NODE, 22)],
    }
}

#[test]
fn native_attach_steers_live_frames_and_detaches() {
    if !root() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "afg0", "afg1");
    let cfg = cfg(&ns, "afg1");
    let ns_ref = &ns;
    ns.run(move || {
        let port = PortSteering::attach("afg1", &cfg, ModeRequest::Native).expect("attach");
        assert_eq!(port.mode(), XdpMode::Native);
        assert_eq!(port.mode().to_string(), "native");
        assert!(!port.replaced_stale());
        assert_eq!(
            xdp_attached("afg1").unwrap(),
            Some((port.prog_id(), XdpMode::Native))
        );
        assert!(
            ns_ref
                .ip("-o link show dev afg1")
                .contains(&format!("prog/xdp id {}", port.prog_id()))
        );

        // The skeleton is gone; the attached program and our map handles
        // must still work: live frames are counted.
        let tx = RawSock::bind("afg0");
        let to = cfg.own_mac;
        tx.send(&eth(
            to,
            PEER_MAC,
            0x0800,
            &ipv4(CLIENT, NODE, 6, &tcp_syn(1, 22)),
        ));
        tx.send(&eth(LACP_MAC, PEER_MAC, 0x8809, &[1, 1, 0, 0]));
        for _ in 0..3 {
            tx.send(&eth(
                to,
                PEER_MAC,
                0x0800,
                &ipv4(CLIENT, NODE, 17, &udp(1, 53, b"x")),
            ));
        }
        let ok = wait_for(3, || {
            let s = port.stats().unwrap();
            s.pass_rule == 1 && s.pass_lacp == 1 && s.pass_no_socket >= 3
        });
        assert!(ok, "stats {:?}", port.stats().unwrap());

        // set_passthru on the attached program takes effect live.
        port.set_passthru(&[]).unwrap();
        tx.send(&eth(
            to,
            PEER_MAC,
            0x0800,
            &ipv4(CLIENT, NODE, 6, &tcp_syn(1, 22)),
        ));
        assert!(wait_for(3, || port.stats().unwrap().pass_no_socket >= 4));
        assert_eq!(port.stats().unwrap().pass_rule, 1);

        assert!(port.detach().expect("detach"), "was ours");
        assert_eq!(xdp_attached("afg1").unwrap(), None);
        assert!(!detach_any("afg1").unwrap());
    });
}

#[test]
fn stale_program_after_crash_is_found_and_replaced() {
    if !root() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "afg0", "afg1");
    let cfg = cfg(&ns, "afg1");
    ns.run(move || {
        // "Crash": the process loses the handle without detaching.
        let first = PortSteering::attach("afg1", &cfg, ModeRequest::Auto).expect("attach");
        let first_id = first.prog_id();
        std::mem::forget(first);
        assert_eq!(
            xdp_attached("afg1").unwrap(),
            Some((first_id, XdpMode::Native))
        );

        // The next run replaces it.
        let second = PortSteering::attach("afg1", &cfg, ModeRequest::Auto).expect("re-attach");
        assert!(second.replaced_stale());
        assert_ne!(second.prog_id(), first_id);
        assert_eq!(
            xdp_attached("afg1").unwrap(),
            Some((second.prog_id(), XdpMode::Native))
        );
        let second_id = second.prog_id();
        std::mem::forget(second);

        // Cleanup tooling finds and removes whatever is there.
        assert_eq!(xdp_attached("afg1").unwrap().map(|a| a.0), Some(second_id));
        assert!(detach_any("afg1").expect("detach_any"));
        assert_eq!(xdp_attached("afg1").unwrap(), None);
        assert!(!detach_any("afg1").expect("nothing left"));
    });
}

#[test]
fn skb_mode_then_native_replaces_across_modes_and_drop_detaches() {
    if !root() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "afg0", "afg1");
    let cfg = cfg(&ns, "afg1");
    let ns_ref = &ns;
    ns.run(move || {
        let skb = PortSteering::attach("afg1", &cfg, ModeRequest::Skb).expect("skb attach");
        assert_eq!(skb.mode(), XdpMode::Skb);
        assert_eq!(skb.mode().to_string(), "skb");
        assert_eq!(
            xdp_attached("afg1").unwrap(),
            Some((skb.prog_id(), XdpMode::Skb))
        );
        std::mem::forget(skb);

        {
            let native = PortSteering::attach("afg1", &cfg, ModeRequest::Native).expect("native");
            assert!(native.replaced_stale(), "skb-mode program counts as stale");
            let link = ns_ref.ip("-d -o link show dev afg1");
            assert!(!link.contains("xdpgeneric"), "{link}");
            assert!(!link.contains("xdpmulti"), "{link}");
            // Dropped here: Drop detaches.
        }
        assert_eq!(xdp_attached("afg1").unwrap(), None);
    });
}

/// A takeover's hold, as `afgate run --takeover` uses it: the successor adopts the attached
/// (predecessor's) program, holds it while no socket is bound (live frames dropped, not
/// passed), installs its own program and ends the hold in both; a successor that gives up
/// (dropped before installing) ends the hold too.
#[test]
fn takeover_holds_the_predecessor_and_releases_it() {
    if !root() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "afg0", "afg1");
    let cfg = cfg(&ns, "afg1");
    ns.run(move || {
        let dns = eth(
            cfg.own_mac,
            PEER_MAC,
            0x0800,
            &ipv4(CLIENT, NODE, 17, &udp(1, 53, b"x")),
        );
        let ssh = eth(
            cfg.own_mac,
            PEER_MAC,
            0x0800,
            &ipv4(CLIENT, NODE, 6, &tcp_syn(1, 22)),
        );
        let old = PortSteering::attach("afg1", &cfg, ModeRequest::Native).expect("attach");
        let tx = RawSock::bind("afg0");

        // A successor that gives up before installing its program.
        {
            let mut quitter = PortSteering::load("afg1", &cfg).expect("load");
            assert!(quitter.adopt_attached_xsks().unwrap());
            assert!(quitter.hold_predecessor(Duration::from_secs(30)).unwrap());
            tx.send(&dns);
            assert!(wait_for(3, || old.stats().unwrap().held_drop >= 1));
        }
        let run = old.program().test_run(&dns, 1).unwrap();
        assert_eq!(
            run.retval, 2,
            "the quitter's hold cleared on drop: XDP_PASS"
        );
        let held_before = old.stats().unwrap().held_drop;

        let mut new = PortSteering::load("afg1", &cfg).expect("load");
        assert!(new.adopt_attached_xsks().unwrap());
        assert!(new.hold_predecessor(Duration::from_secs(30)).unwrap());
        for _ in 0..3 {
            tx.send(&dns);
        }
        tx.send(&ssh);
        assert!(
            wait_for(3, || {
                let s = old.stats().unwrap();
                s.held_drop >= held_before + 3 && s.pass_rule == 1
            }),
            "{:?}",
            old.stats().unwrap()
        );
        new.install(ModeRequest::Native).expect("install");
        assert!(new.replaced_stale());
        let held = new.end_hold().unwrap();
        assert!(
            held >= held_before + 3,
            "held drops of the predecessor: {held}"
        );
        let run = old.program().test_run(&dns, 1).unwrap();
        assert_eq!(run.retval, 2, "predecessor's hold cleared: XDP_PASS");
        tx.send(&dns);
        assert!(wait_for(3, || new.stats().unwrap().pass_no_socket >= 1));
        assert_eq!(new.stats().unwrap().held_drop, 0);
        assert!(!old.detach().unwrap(), "replaced");
        assert!(new.detach().unwrap());
    });
}

#[test]
fn detach_leaves_a_foreign_program_alone() {
    if !root() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "afg0", "afg1");
    let cfg = cfg(&ns, "afg1");
    ns.run(move || {
        let ours = PortSteering::attach("afg1", &cfg, ModeRequest::Native).expect("attach");
        // Someone else replaces it (e.g. a second dataplane instance).
        let theirs = PortSteering::attach("afg1", &cfg, ModeRequest::Native).expect("attach");
        assert!(!ours.detach().expect("detach"), "no longer ours");
        assert_eq!(
            xdp_attached("afg1").unwrap(),
            Some((theirs.prog_id(), XdpMode::Native))
        );
        assert!(theirs.detach().unwrap());
    });
}

#[test]
fn unknown_device_is_a_named_error() {
    if !root() {
        return;
    }
    let err = PortSteering::attach("afg-nope", &SteerConfig::default(), ModeRequest::Auto)
        .expect_err("no such device");
    assert_eq!(err.to_string(), "afg-nope: no such network device");
}

/// afg_devmap_fwd on afg1 forwards into afg2 -> afg3; afg3 runs the
/// steering program (an XDP program there enables veth's XDP receive path)
/// and counts the frames.
///   afg0 --- afg1 [devmap_redirect] ==> afg2 [xdp_pass] --- afg3 [steer]
#[test]
fn devmap_redirect_forwards_in_kernel() {
    if !root() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "afg0", "afg1");
    veth(&ns, "afg2", "afg3");
    let cfg = cfg(&ns, "afg3");
    ns.run(move || {
        let sink = PortSteering::attach("afg3", &cfg, ModeRequest::Native).expect("sink");
        let fwd = DevmapRedirect::attach("afg1", "afg2", ModeRequest::Native).expect("redirect");
        assert_eq!(fwd.mode(), XdpMode::Native);
        assert!(matches!(
            xdp_attached("afg2").unwrap(),
            Some((_, XdpMode::Native))
        ));

        let tx = RawSock::bind("afg0");
        let frame = eth(
            cfg.own_mac,
            PEER_MAC,
            0x0800,
            &ipv4(CLIENT, NODE, 17, &udp(1, 9, b"x")),
        );
        for _ in 0..50 {
            tx.send(&frame);
        }
        let ok = wait_for(3, || sink.stats().unwrap().pass_no_socket >= 50);
        assert!(ok, "sink stats {:?}", sink.stats().unwrap());

        fwd.detach().expect("detach");
        assert_eq!(xdp_attached("afg1").unwrap(), None);
        assert_eq!(xdp_attached("afg2").unwrap(), None);

        let pass = XdpPass::attach("afg2", ModeRequest::Auto).expect("pass");
        assert_eq!(pass.mode(), XdpMode::Native);
        pass.detach().unwrap();
        assert_eq!(xdp_attached("afg2").unwrap(), None);
        assert!(sink.detach().unwrap());
    });
}
