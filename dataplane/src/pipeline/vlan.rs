//! 802.1Q on ingress (SPEC B10): before anything else looks at a frame, find the interface
//! it arrived on. A bond member's frames arrive on the bond; on a trunk the tag is popped
//! and the frame arrives on the VLAN subinterface (`biz.1155`); on an access port the VLAN is
//! implied. `meta.vlan` then carries the ingress VLAN for NAT rules (SPEC B5).
//!
//! Tagging on egress is [`super::egress::output`]'s job: it pushes the tag of the
//! subinterface a frame leaves by.
//!
//! Popping moves the 12 MAC bytes 4 bytes back (`Frame::remove_gap`); the payload stays.

use super::{Ctx, RxMeta, bond};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::overlay::VlanMode;
use crate::wire::vlan::{TAG_LEN, Tag, VID_NONE};
use crate::wire::{EtherType, ethernet};

const VLAN: u16 = 0x8100;
const QINQ: u16 = 0x88a8;

/// Resolves the ingress interface: bond, VLAN pop, subinterface. `Err` names why the frame
/// is dropped.
#[inline]
pub fn ingress(frame: &mut Frame, meta: &mut RxMeta, ctx: &Ctx) -> Result<(), DropReason> {
    bond::ingress(meta, ctx);
    let Some(port) = ctx.tables.ports.get(meta.port) else {
        return Err(DropReason::PortDown);
    };
    let data = frame.data();
    if data.len() < ethernet::HEADER_LEN {
        // classify drops it as malformed.
        return Ok(());
    }
    // The raw value, not the open enum: most frames are untagged and leave at the first
    // compare.
    let ethertype = u16::from_be_bytes([data[12], data[13]]);
    match ethertype {
        VLAN => {}
        QINQ => {
            crate::trace_step!(ctx, "vlan", "802.1ad service tag: not carried");
            return Err(DropReason::VlanDoubleTagged);
        }
        _ => {
            // Untagged.
            meta.vlan = match &port.vlan {
                VlanMode::None => None,
                VlanMode::Access(vid) => Some(*vid),
                VlanMode::Trunk {
                    native: Some(vid), ..
                } => Some(*vid),
                VlanMode::Trunk { native: None, .. } => {
                    crate::trace_step!(
                        ctx,
                        "vlan",
                        "untagged on trunk {} without native VLAN",
                        port.name
                    );
                    return Err(DropReason::VlanNotAllowed);
                }
            };
            return Ok(());
        }
    }
    let Ok(tag) = Tag::new_checked(&data[ethernet::HEADER_LEN..]) else {
        return Err(DropReason::Malformed);
    };
    if matches!(tag.ethertype(), EtherType::Vlan | EtherType::QinQ) {
        crate::trace_step!(ctx, "vlan", "two tags on {}", port.name);
        return Err(DropReason::VlanDoubleTagged);
    }
    let vid = tag.vid();
    // A priority tag (VID 0) carries no VLAN: the frame belongs to the untagged VLAN.
    let (vlan, subif) = match (&port.vlan, vid) {
        (VlanMode::Access(a), VID_NONE) => (Some(*a), None),
        (
            VlanMode::Trunk {
                native: Some(n), ..
            },
            VID_NONE,
        ) => (Some(*n), None),
        (
            VlanMode::Trunk {
                native: Some(n), ..
            },
            v,
        ) if v == *n => (Some(*n), None),
        (VlanMode::Trunk { vids, .. }, v) if vids.contains(v) => {
            match ctx.tables.subifs.get(meta.port, v) {
                Some(sub) => (Some(v), Some(sub)),
                None => return Err(DropReason::VlanNotAllowed),
            }
        }
        _ => {
            crate::trace_step!(ctx, "vlan", "VLAN {vid} not carried by {}", port.name);
            return Err(DropReason::VlanNotAllowed);
        }
    };
    if !frame.remove_gap(12, TAG_LEN) {
        return Err(DropReason::Malformed);
    }
    ctx.counters.event(Event::VlanPop);
    crate::trace_step!(ctx, "vlan", "popped VLAN {vid} on {}", port.name);
    meta.vlan = vlan;
    if let Some(sub) = subif {
        meta.port = sub;
    }
    Ok(())
}

/// Inserts a tag for `vid` after the MAC addresses (only those 12 bytes move). False when
/// there is no headroom left.
#[inline]
#[must_use]
pub fn push(frame: &mut Frame, vid: u16) -> bool {
    if !frame.insert_gap(12, TAG_LEN) {
        return false;
    }
    let d = frame.data_mut();
    d[12..14].copy_from_slice(&u16::from(EtherType::Vlan).to_be_bytes());
    d[14..16].copy_from_slice(&crate::wire::vlan::tci(0, false, vid).to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Action, RxMeta};
    use super::*;
    use crate::wire::{EthernetFrame, Ipv4Packet};

    fn tagged(f: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
        let mut out = f[..12].to_vec();
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
        out.extend_from_slice(&f[12..]);
        out
    }

    fn from_upod(lab: &Lab, ttl: u8) -> Vec<u8> {
        udp_frame(
            UPOD_MAC,
            lab.mac(TRUNK),
            UPOD_IP,
            EXT_IP,
            ttl,
            1000,
            53,
            b"hi",
        )
    }

    #[test]
    fn trunk_pops_known_vlan_and_routes_out_untagged() {
        let lab = Lab::overlay();
        let out = lab.run(TRUNK, tagged(&from_upod(&lab, 64), 0x8100, 1155));
        assert_eq!(out.action, Action::Tx(BIZ));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        assert_eq!(eth.dst_addr().0, GW_MAC);
        assert_eq!(Ipv4Packet::new_checked(&out.frame[14..]).unwrap().ttl(), 63);
        assert_valid_l4(&out.frame);
        assert_eq!(lab.event(Event::VlanPop), 1);
    }

    #[test]
    fn ingress_sets_meta_vlan_and_subinterface() {
        let lab = Lab::overlay();
        let f = tagged(&from_upod(&lab, 64), 0x8100, 1155);
        let (mut buf, len) = (vec![0u8; 2048], f.len());
        buf[HEADROOM..HEADROOM + len].copy_from_slice(&f);
        let mut frame = Frame::new(&mut buf, HEADROOM, len);
        let mut meta = RxMeta {
            port: TRUNK,
            vlan: None,
        };
        ingress(&mut frame, &mut meta, &lab.ctx()).unwrap();
        assert_eq!((meta.port, meta.vlan), (TRUNK_1155, Some(1155)));
        assert_eq!(frame.len(), len - 4);
        assert_eq!(frame.data()[12..14], [0x08, 0x00]);
    }

    #[test]
    fn routed_to_subinterface_is_tagged() {
        let lab = Lab::overlay();
        lab.shared.neigh.learn(UPOD_IP, UPOD_MAC, TRUNK_1155, 0);
        let f = udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, UPOD_IP, 30, 53, 1000, b"x");
        let out = lab.run(BIZ, f);
        assert_eq!(out.action, Action::Tx(TRUNK));
        assert_eq!(crate::wire::vlan::vid_of(&out.frame), Some(1155));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, UPOD_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(TRUNK));
        // Strip the tag and the rest must be a valid frame.
        let mut f = out.frame.clone();
        f.drain(12..16);
        assert_valid_l4(&f);
        assert_eq!(lab.event(Event::VlanPush), 1);
    }

    #[test]
    fn arp_for_subinterface_address_is_answered_tagged() {
        let lab = Lab::overlay();
        let req = arp_request_frame(UPOD_MAC, UPOD_IP, UPOD_GW);
        let out = lab.run(TRUNK, tagged(&req, 0x8100, 1155));
        assert_eq!(out.action, Action::Tx(TRUNK));
        assert_eq!(crate::wire::vlan::vid_of(&out.frame), Some(1155));
        assert_eq!(lab.event(Event::ArpReply), 1);
        assert_eq!(lab.shared.neigh.lookup(UPOD_IP).unwrap().port, TRUNK_1155);
    }

    #[test]
    fn unknown_double_and_untagged_frames_are_dropped() {
        let lab = Lab::overlay();
        let f = from_upod(&lab, 64);
        let cases = [
            (tagged(&f, 0x8100, 1999), DropReason::VlanNotAllowed),
            (tagged(&f, 0x88a8, 1155), DropReason::VlanDoubleTagged),
            (
                tagged(&tagged(&f, 0x8100, 7), 0x8100, 1155),
                DropReason::VlanDoubleTagged,
            ),
            (f.clone(), DropReason::VlanNotAllowed),
            (
                tagged(&f, 0x8100, 1155)[..16].to_vec(),
                DropReason::Malformed,
            ),
        ];
        for (frame, why) in cases {
            assert_eq!(lab.run(TRUNK, frame).action, Action::Drop(why));
        }
        // Tagged frames on a port without VLANs.
        assert_eq!(
            lab.run(BIZ, tagged(&f, 0x8100, 1155)).action,
            Action::Drop(DropReason::VlanNotAllowed)
        );
    }

    #[test]
    fn push_moves_only_the_macs() {
        let mut buf = vec![0u8; 128];
        let orig: Vec<u8> = (0..40).collect();
        buf[64..104].copy_from_slice(&orig);
        let mut f = Frame::new(&mut buf, 64, 40);
        assert!(push(&mut f, 1155));
        assert_eq!(f.len(), 44);
        assert_eq!(&f.data()[..12], &orig[..12]);
        assert_eq!(&f.data()[12..16], &[0x81, 0x00, 0x04, 0x83]);
        assert_eq!(&f.data()[16..], &orig[12..]);
        let mut buf = vec![0u8; 64];
        let mut f = Frame::new(&mut buf, 2, 40);
        assert!(!push(&mut f, 1));
    }
}
