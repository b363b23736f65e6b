//! Bonds (seeds: `bond0` = two NICs under LACP): a frame received on any member arrives on
//! the bond, so the bond's addresses are answered on every member; a frame sent by the bond
//! leaves by one member chosen per flow, like Linux's `xmit_hash_policy layer3+4`, among the
//! members whose link is up in the current snapshot (the control thread polls carrier and
//! republishes, so a lost member's flows rehash onto the others within one poll period).
//!
//! LACPDUs never get here: the XDP program passes slow-protocol frames to the kernel.

use super::{Ctx, RxMeta, flow};
use crate::counters::DropReason;
use crate::tables::PortId;
use crate::tables::bond::BondHash;
use crate::tables::overlay::PortKind;
use crate::wire::{EtherType, Ipv4Packet, ethernet, vlan};

/// A frame received on a bond member arrives on the bond.
#[inline]
pub fn ingress(meta: &mut RxMeta, ctx: &Ctx) {
    if let Some(p) = ctx.tables.ports.get(meta.port)
        && let PortKind::BondMember { bond } = p.kind
    {
        meta.port = bond;
    }
}

/// The member of bond `index` that carries this frame's flow.
#[inline]
pub fn member(data: &[u8], index: u16, ctx: &Ctx) -> Result<PortId, DropReason> {
    let Some(bond) = ctx.tables.bonds.get(index) else {
        return Err(DropReason::PortDown);
    };
    let hash = if bond.up.len() > 1 {
        hash(data, bond.hash)
    } else {
        0
    };
    let m = bond.select(hash).ok_or(DropReason::BondNoMember)?;
    crate::trace_step!(ctx, "bond", "member {} of {}", m.0, bond.port.0);
    Ok(m)
}

/// The flow hash of a whole Ethernet frame (untagged or with one tag): addresses and, for
/// layer3+4, TCP/UDP ports. Non-IPv4 frames (ARP) all hash to 0, so they take the first
/// live member, as Linux's layer3+4 falls back to layer 2 for them.
#[inline]
pub fn hash(data: &[u8], policy: BondHash) -> u32 {
    let mut l3 = ethernet::HEADER_LEN;
    if data.len() >= l3
        && EtherType::from(u16::from_be_bytes([data[12], data[13]])) == EtherType::Vlan
    {
        l3 += vlan::TAG_LEN;
    }
    if data.len() < l3 + crate::wire::ipv4::HEADER_LEN
        || EtherType::from(u16::from_be_bytes([data[l3 - 2], data[l3 - 1]])) != EtherType::Ipv4
    {
        return 0;
    }
    let Ok(ip) = Ipv4Packet::new_checked(&data[l3..]) else {
        return 0;
    };
    match policy {
        BondHash::Layer34 => flow::hash_v4(&ip),
        BondHash::Layer3 => flow::mix(u32::from(ip.src_addr()), u32::from(ip.dst_addr()), 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Action;
    use super::super::testing::*;
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn flows_spread_over_members_and_stick() {
        let lab = Lab::overlay();
        let mut seen = [0u32; 2];
        for sport in 0..64u16 {
            let f = udp_frame(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                BOND_GW_NET_HOST,
                64,
                1000 + sport,
                80,
                b"",
            );
            let a = lab.run(POD60, f.clone()).action;
            assert_eq!(lab.run(POD60, f).action, a, "one flow, one member");
            match a {
                Action::Tx(UP0) => seen[0] += 1,
                Action::Tx(UP1) => seen[1] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(seen[0] > 10 && seen[1] > 10, "{seen:?}");
    }

    #[test]
    fn down_member_is_skipped_and_all_down_is_counted() {
        let mut lab = Lab::overlay();
        lab.tables.bonds.set_member_up(UP0, false);
        for sport in 0..16u16 {
            let f = udp_frame(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                BOND_GW_NET_HOST,
                64,
                sport,
                80,
                b"",
            );
            assert_eq!(lab.run(POD60, f).action, Action::Tx(UP1));
        }
        lab.tables.bonds.set_member_up(UP1, false);
        let f = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            BOND_GW_NET_HOST,
            64,
            1,
            80,
            b"",
        );
        assert_eq!(
            lab.run(POD60, f).action,
            Action::Drop(DropReason::BondNoMember)
        );
    }

    #[test]
    fn bond_address_is_answered_on_either_member() {
        let lab = Lab::overlay();
        for m in [UP0, UP1] {
            let f = icmp_echo_frame(BOND_GW_MAC, lab.mac(m), BOND_GW_IP, BOND_IP, 64, 1, 1, b"x");
            assert!(matches!(lab.run(m, f).action, Action::Tx(UP0 | UP1)));
        }
        assert_eq!(lab.event(crate::counters::Event::IcmpEchoReply), 2);
        let _ = Ipv4Addr::UNSPECIFIED;
    }
}
