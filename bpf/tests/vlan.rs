//! The tc 802.1Q access-port shim on a veth.
//!
//!   [ns peer]  10.186.155.6/27 afgv0 {shim vid 1155} ---veth--- afgv1  [ns dp]
//!                                                              AF_PACKET
//! The dp side plays the trunk: it injects tagged/untagged frames and reads
//! what the peer sends. Both namespaces are deleted on drop.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use afgate_bpf::{Error, VlanShim};
use common::*;

const VID: u16 = 1155;
const POD: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 6);
const TRUNK: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 1);

struct Lab {
    peer: Netns,
    dp: Netns,
}

fn lab() -> Lab {
    let peer = Netns::new();
    let dp = Netns::new();
    dp.ip(&format!(
        "link add afgv1 type veth peer name afgv0 netns {}",
        peer.name
    ));
    dp.ip("link set afgv1 up");
    peer.ip("link set afgv0 up");
    peer.ip("link set lo up");
    peer.ip(&format!("addr add {POD}/27 dev afgv0"));
    Lab { peer, dp }
}

fn tc_filters(ns: &Netns, dir: &str) -> String {
    sh(&["tc", "-n", &ns.name, "filter", "show", "dev", "afgv0", dir])
}

#[test]
fn bad_vid_is_refused() {
    let err = VlanShim::attach("afgv0", 0).expect_err("vid 0");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(VlanShim::attach("afgv0", 4095).is_err());
}

#[test]
fn shim_attaches_filters_listed_and_detach_removes_them() {
    if !root() {
        return;
    }
    let lab = lab();
    let shim = lab
        .peer
        .run(|| VlanShim::attach("afgv0", VID).expect("attach"));
    assert_eq!(shim.vid(), VID);
    let ing = tc_filters(&lab.peer, "ingress");
    let eg = tc_filters(&lab.peer, "egress");
    assert!(
        ing.contains("afg_vlan_pop") && ing.contains("direct-action"),
        "{ing}"
    );
    assert!(
        eg.contains("afg_vlan_push") && eg.contains("direct-action"),
        "{eg}"
    );

    // Attaching again replaces (same handle/prio), no duplicates.
    let again = lab
        .peer
        .run(|| VlanShim::attach("afgv0", VID).expect("re-attach"));
    assert_eq!(
        tc_filters(&lab.peer, "ingress")
            .lines()
            .filter(|l| l.contains("afg_vlan_pop"))
            .count(),
        1
    );
    drop(shim); // filters persist past the value

    lab.peer.run(|| again.detach().expect("detach"));
    assert!(!tc_filters(&lab.peer, "ingress").contains("afgate"));
    assert!(!tc_filters(&lab.peer, "egress").contains("afgate"));
}

/// Ingress: tag `vid` and priority tags are popped and reach the peer's UDP
/// socket; another VLAN is dropped; untagged passes.
#[test]
fn shim_pops_own_vid_drops_other_vids() {
    if !root() {
        return;
    }
    let lab = lab();
    let pod_mac = lab.peer.mac("afgv0");
    let sock = lab.peer.run(|| {
        let _shim = VlanShim::attach("afgv0", VID).expect("attach");
        let s = UdpSocket::bind(SocketAddrV4::new(POD, 9999)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    lab.dp.run(|| {
        let tx = RawSock::bind("afgv1");
        let dgram = |tag: &[u8]| ipv4(TRUNK, POD, 17, &udp(40000, 9999, tag));
        tx.send(&eth(
            pod_mac,
            PEER_MAC,
            0x8100,
            &vlan(VID + 1, 0x0800, &dgram(b"other-vid")),
        ));
        tx.send(&eth(
            pod_mac,
            PEER_MAC,
            0x8100,
            &vlan(VID, 0x0800, &dgram(b"own-vid")),
        ));
        tx.send(&eth(
            pod_mac,
            PEER_MAC,
            0x8100,
            &vlan(0, 0x0800, &dgram(b"prio-tag")),
        ));
        tx.send(&eth(pod_mac, PEER_MAC, 0x0800, &dgram(b"untagged")));
    });
    let mut got = HashSet::new();
    let end = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    while Instant::now() < end && got.len() < 4 {
        if let Ok(n) = sock.recv(&mut buf) {
            got.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let want: HashSet<String> = ["own-vid", "prio-tag", "untagged"].map(String::from).into();
    assert_eq!(got, want);
}

/// Egress: what the peer sends leaves tagged with `vid`.
#[test]
fn shim_pushes_vid_on_egress() {
    if !root() {
        return;
    }
    let lab = lab();
    let trunk_mac = lab.dp.mac("afgv1");
    lab.peer.ip(&format!(
        "neigh add {TRUNK} lladdr {} dev afgv0",
        trunk_mac.map(|b| format!("{b:02x}")).join(":")
    ));
    let rx = lab.dp.run(|| RawSock::bind("afgv1"));
    lab.peer.run(|| {
        let _shim = VlanShim::attach("afgv0", VID).expect("attach");
        let s = UdpSocket::bind(SocketAddrV4::new(POD, 0)).unwrap();
        s.send_to(b"from-pod", SocketAddrV4::new(TRUNK, 7)).unwrap();
    });
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let Some((frame, tci)) = rx.recv(Duration::from_millis(200)) else {
            continue;
        };
        if !frame.windows(8).any(|w| w == b"from-pod") {
            continue; // IPv6 RS/ND and such
        }
        // The receive path moves an in-band tag to metadata before taps;
        // accept the tag in either place.
        let in_bytes =
            (frame[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([frame[14], frame[15]]));
        let vid = tci.or(in_bytes).map(|t| t & 0x0fff);
        assert_eq!(vid, Some(VID), "frame {frame:02x?} tci {tci:?}");
        return;
    }
    panic!("no frame from the pod");
}
