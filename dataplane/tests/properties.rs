//! Properties of the pipeline's rewrites over arbitrary frames (proptest):
//! - 802.1Q: push then pop (the ingress stage on a trunk) gives back the frame, for any VID;
//! - VXLAN: what `encap` sends, returned by the remote VTEP, decapsulates to the same IPv4
//!   packet (routing's TTL decrement aside), and its outer header is valid;
//! - checksums are valid, per etherparse (an independent implementation), after every
//!   rewrite the pipeline makes: TTL, VLAN push/pop, VXLAN outer, DNAT, un-DNAT, MASQUERADE.

use afgate_dataplane::frame::Frame;
use afgate_dataplane::fuzz::{DNS_VIP, VIP, full_lab, tagged};
use afgate_dataplane::pipeline::testing::*;
use afgate_dataplane::pipeline::{Action, RxMeta, vlan, vxlan};
use afgate_dataplane::tables::PortId;
use afgate_dataplane::wire::vlan::Tag;
use core::net::Ipv4Addr;
use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures print the shrunk input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The frame inside a buffer with the UMEM's headroom.
fn buffer(f: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
    buf
}

fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    syn: bool,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), ttl)
        .tcp(ports.0, ports.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5000) };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// The frame without its 802.1Q tag, if it has one.
fn untagged(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    if f[12..14] == [0x81, 0x00] {
        f.drain(12..16);
    }
    f
}

/// Checks the checksums of a frame as it leaves: the 802.1Q tag removed, and for VXLAN the
/// outer IPv4 header plus the inner frame (the outer UDP checksum is 0, as Linux sends it).
/// Returns the innermost frame.
fn valid_out(f: &[u8]) -> Vec<u8> {
    let f = untagged(f);
    if f[23] == 17 && f[36..38] == [0x12, 0xb5] {
        let outer = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
        assert_eq!(outer, REMOTE_CTL_IP, "VXLAN to the remote VTEP");
        assert_eq!(f[40..42], [0, 0], "outer UDP checksum 0");
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..])
            .unwrap()
            .to_header();
        assert_eq!(
            ip.calc_header_checksum(),
            ip.header_checksum,
            "outer ip checksum"
        );
        let inner = f[50..].to_vec();
        assert_valid_l4(&inner);
        return inner;
    }
    assert_valid_l4(&f);
    f
}

fn ip_of(f: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(f[30], f[31], f[32], f[33])
}

/// Runs `test` on `cfg().cases` values of `strategy`, failing with the shrunk input. (The
/// labs are built once per property, outside the cases: building one takes tens of ms.)
fn check<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: core::fmt::Debug,
{
    let mut runner = proptest::test_runner::TestRunner::new(cfg());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 14..1514)
        .prop_filter("a second tag is refused by design", |b| {
            !matches!([b[12], b[13]], [0x81, 0x00] | [0x88, 0xa8])
        })
}

/// Any frame (any EtherType but a second tag), any VID: pushing a tag and removing it
/// again is the identity, and the tag carries the VID.
#[test]
fn vlan_push_then_pop_is_identity() {
    check((frame_bytes(), 1u16..4095), |(body, vid)| {
        let mut buf = buffer(&body);
        let mut f = Frame::new(&mut buf, HEADROOM, body.len());
        prop_assert!(vlan::push(&mut f, vid));
        prop_assert_eq!(f.len(), body.len() + 4);
        prop_assert_eq!(f.headroom(), HEADROOM - 4);
        let tag = Tag::new_checked(&f.data()[14..]).unwrap();
        prop_assert_eq!(tag.vid(), vid);
        prop_assert_eq!(&f.data()[..12], &body[..12]);
        prop_assert!(f.remove_gap(12, 4));
        prop_assert_eq!(f.data(), &body[..]);
        prop_assert_eq!(f.headroom(), HEADROOM);
        Ok(())
    });
}

/// The same through the pipeline's own pop: a frame tagged 1155 on the trunk arrives on
/// trunk.1155 untagged, byte for byte.
#[test]
fn vlan_push_then_ingress_pop_is_identity() {
    let lab = Lab::overlay();
    check(frame_bytes(), |body| {
        let mut buf = buffer(&body);
        let mut f = Frame::new(&mut buf, HEADROOM, body.len());
        prop_assert!(vlan::push(&mut f, 1155));
        let mut meta = RxMeta {
            port: TRUNK,
            vlan: None,
        };
        prop_assert_eq!(vlan::ingress(&mut f, &mut meta, &lab.ctx()), Ok(()));
        prop_assert_eq!((meta.port, meta.vlan), (TRUNK_1155, Some(1155)));
        prop_assert_eq!(f.data(), &body[..]);
        Ok(())
    });
}

/// encap then (returned by the remote VTEP) decap: the inner IPv4 packet comes out unchanged
/// but for the TTL routing decrements; the outer header is valid.
#[test]
fn vxlan_encap_then_decap_is_identity() {
    let lab = Lab::overlay();
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..1350),
        any::<u16>(),
        any::<u16>(),
        2u8..=255,
        1u8..127,
    );
    check(strategy, |(payload, sport, dport, ttl, src_host)| {
        let src = Ipv4Addr::new(10, 20, 4, src_host);
        let x = udp_frame(
            REMOTE_VXLAN_MAC,
            lab.mac(VXLAN),
            src,
            POD60_IP,
            ttl,
            sport,
            dport,
            &payload,
        );
        let mut buf = buffer(&x);
        let mut f = Frame::new(&mut buf, HEADROOM, x.len());
        let dev = lab.tables.ports.get(VXLAN).unwrap();
        let ctx = lab.ctx();
        let meta = RxMeta {
            port: VXLAN,
            vlan: None,
        };
        prop_assert_eq!(
            vxlan::encap(&mut f, &meta, &ctx, 0, dev, REMOTE_VTEP),
            Action::Tx(CTL)
        );
        let outer = f.data().to_vec();
        // Outer: our ctl address to the remote's, IPv4 and UDP valid, VNI 2.
        let p = etherparse::SlicedPacket::from_ethernet(&outer).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("outer not IPv4")
        };
        let h = ip.header().to_header();
        prop_assert_eq!(h.calc_header_checksum(), h.header_checksum);
        prop_assert_eq!(
            (h.source, h.destination),
            (CTL_IP.octets(), REMOTE_CTL_IP.octets())
        );
        prop_assert_eq!(usize::from(h.total_len), outer.len() - 14);
        let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else {
            panic!("outer not UDP")
        };
        prop_assert_eq!(u.destination_port(), 4789);
        prop_assert_eq!(usize::from(u.length()), outer.len() - 34);
        let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
        prop_assert!(u.checksum() == 0 || u.checksum() == want);
        prop_assert_eq!(&u.payload()[..8], &[0x08, 0, 0, 0, 0, 0, 2, 0][..]);
        let inner = &u.payload()[8..];
        prop_assert_eq!(
            &inner[12..],
            &x[12..],
            "inner frame changed beyond its MACs"
        );
        assert_valid_l4(inner);

        // The remote VTEP sends the same inner packet back, to us, inner MACs swapped.
        let mut back = outer.clone();
        back[0..6].copy_from_slice(&lab.mac(CTL));
        back[6..12].copy_from_slice(&REMOTE_CTL_MAC);
        back[26..30].copy_from_slice(&REMOTE_CTL_IP.octets());
        back[30..34].copy_from_slice(&CTL_IP.octets());
        let i = 14 + 20 + 8 + 8;
        let (d, s) = (back[i..i + 6].to_vec(), back[i + 6..i + 12].to_vec());
        back[i..i + 6].copy_from_slice(&s);
        back[i + 6..i + 12].copy_from_slice(&d);
        let out = lab.run(CTL, back);
        prop_assert_eq!(out.action, Action::Tx(POD60));
        let (a, b) = (&out.frame[14..], &x[14..]);
        prop_assert_eq!(a.len(), b.len());
        prop_assert_eq!(a[8], b[8] - 1, "TTL");
        prop_assert_eq!(&a[..8], &b[..8]);
        prop_assert_eq!(&a[12..], &b[12..]);
        assert_valid_l4(&out.frame);
        Ok(())
    });
}

fn l4_strategy() -> impl Strategy<Value = (Vec<u8>, u16, u16, u8, bool, bool)> {
    (
        proptest::collection::vec(any::<u8>(), 0..1400),
        1024u16..,
        1u16..,
        2u8..=255,
        any::<bool>(),
        any::<bool>(),
    )
}

/// A UDP or TCP frame, checksums valid (etherparse).
fn l4_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    (is_tcp, syn, ttl): (bool, bool, u8),
    payload: &[u8],
) -> Vec<u8> {
    if is_tcp {
        tcp_frame(macs, src, dst, ports, syn, ttl, payload)
    } else {
        udp_frame(macs.0, macs.1, src, dst, ttl, ports.0, ports.1, payload)
    }
}

/// TTL decrement (routing), VLAN pop on ingress and push on egress: checksums stay valid
/// for any UDP or TCP packet.
#[test]
fn checksums_valid_after_ttl_and_vlan_rewrites() {
    let lab = full_lab();
    check(
        l4_strategy(),
        |(payload, sport, dport, ttl, is_tcp, syn)| {
            let build = |macs, src, dst| {
                l4_frame(macs, src, dst, (sport, dport), (is_tcp, syn, ttl), &payload)
            };
            // pod -> outside (TTL, MAC rewrite)
            let out = lab.run(POD60, build((POD60_MAC, lab.mac(POD60)), POD60_IP, EXT_IP));
            prop_assert_eq!(out.action, Action::Tx(BIZ));
            prop_assert_eq!(out.frame[22], ttl - 1);
            assert_valid_l4(&out.frame);
            // outside -> underlay pod on VLAN 1155 (push)
            let out = lab.run(BIZ, build((GW_MAC, lab.mac(BIZ)), EXT_IP, UPOD_IP));
            prop_assert_eq!(out.action, Action::Tx(TRUNK));
            prop_assert_eq!(&out.frame[12..16], &[0x81, 0x00, 0x04, 0x83][..]);
            assert_valid_l4(&untagged(&out.frame));
            // underlay pod on VLAN 1155 -> pod (pop)
            let f = tagged(
                &build((UPOD_MAC, lab.mac(TRUNK_1155)), UPOD_IP, POD60_IP),
                0x8100,
                1155,
            );
            let out = lab.run(TRUNK, f);
            prop_assert_eq!(out.action, Action::Tx(POD60));
            assert_valid_l4(&out.frame);
            Ok(())
        },
    );
}

/// Service NAT: DNAT to a backend (local pod, VLAN, VXLAN or bond path), the reply
/// un-DNATed, and MASQUERADE of an underlay pod on VLAN 1155: checksums valid at every step.
#[test]
fn checksums_valid_after_nat() {
    let lab = full_lab();
    check(l4_strategy(), |(payload, sport, _, _, is_tcp, _)| {
        // Each case starts with no flows: the small fuzz-lab table must not fill up.
        lab.shared.conntrack.flush();
        let (vip, vport) = if is_tcp { (VIP, 80) } else { (DNS_VIP, 53) };
        let build = |macs, src, dst, ports: (u16, u16), syn| {
            l4_frame(macs, src, dst, ports, (is_tcp, syn, 64), &payload)
        };
        let out = lab.run(
            POD60,
            build(
                (POD60_MAC, lab.mac(POD60)),
                POD60_IP,
                vip,
                (sport, vport),
                true,
            ),
        );
        let Action::Tx(port) = out.action else {
            panic!("{:?}", out.action)
        };
        let f = valid_out(&out.frame);
        let backend = ip_of(&f);
        prop_assert_ne!(backend, vip);
        // The backend's reply, when it is one that answers from a pod port here.
        if port == POD41 {
            let bport = u16::from_be_bytes([f[36], f[37]]);
            let reply = build(
                (POD41_MAC, lab.mac(POD41)),
                backend,
                POD60_IP,
                (bport, sport),
                false,
            );
            let out = lab.run(POD41, reply);
            prop_assert_eq!(out.action, Action::Tx(POD60));
            assert_valid_l4(&out.frame);
            prop_assert_eq!(
                Ipv4Addr::new(out.frame[26], out.frame[27], out.frame[28], out.frame[29]),
                vip
            );
            prop_assert_eq!(u16::from_be_bytes([out.frame[34], out.frame[35]]), vport);
        }
        // An underlay pod on VLAN 1155 to the service: masqueraded to the egress address.
        let f = tagged(
            &build(
                (UPOD_MAC, lab.mac(TRUNK_1155)),
                UPOD_IP,
                vip,
                (sport, vport),
                true,
            ),
            0x8100,
            1155,
        );
        let out = lab.run(TRUNK, f);
        let Action::Tx(_) = out.action else {
            panic!("{:?}", out.action)
        };
        let f = valid_out(&out.frame);
        prop_assert_ne!(
            Ipv4Addr::new(f[26], f[27], f[28], f[29]),
            UPOD_IP,
            "not masqueraded"
        );
        Ok(())
    });
}

#[test]
fn lab_ports_are_distinct() {
    // The properties above name ports by constant; they must be the lab's.
    let lab = full_lab();
    for p in [BIZ, POD60, POD41, CTL, TRUNK, TRUNK_1155, VXLAN, UP0, UP1] {
        assert!(lab.tables.ports.get(p).is_some(), "{p:?}");
    }
    let _: PortId = BIZ;
}
