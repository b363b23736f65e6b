//! Underlay and overlay plumbing as tables: 802.1Q modes of physical ports, logical
//! interfaces (a VLAN subinterface `biz.1155`, a bond, a VXLAN device), and the VXLAN
//! overlays with their remote VTEPs and prebuilt outer headers.
//!
//! Logical interfaces are ports in [`Ports`](super::Ports) like the physical ones (after
//! them, so physical port ids stay the worker's socket indexes). Routes, neighbours,
//! addresses and NAT rules name them exactly as Linux names `biz.1155`, `bond0` or `vxlan.2`
//! in the seeds; only the egress stage (`pipeline::egress`) turns a logical port into a
//! physical one, pushing a tag, choosing a bond member or encapsulating on the way.

use super::ports::PortId;
use crate::wire::{self, IpProtocol, Ipv4Repr, VxlanRepr, ipv4, udp, vxlan};
use core::net::Ipv4Addr;
use hashbrown::HashMap;

/// A set of VLAN ids (0..4096) as a bitmap: one probe per frame, no hashing.
#[derive(Clone, PartialEq, Eq)]
pub struct VidSet(Box<[u64; 64]>);

impl Default for VidSet {
    fn default() -> Self {
        VidSet(Box::new([0; 64]))
    }
}

impl core::fmt::Debug for VidSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl VidSet {
    pub fn new(vids: impl IntoIterator<Item = u16>) -> Self {
        let mut s = VidSet::default();
        for v in vids {
            s.insert(v);
        }
        s
    }

    pub fn insert(&mut self, vid: u16) {
        let v = usize::from(vid & 0xfff);
        self.0[v / 64] |= 1 << (v % 64);
    }

    #[inline]
    pub fn contains(&self, vid: u16) -> bool {
        let v = usize::from(vid & 0xfff);
        self.0[v / 64] & (1 << (v % 64)) != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..4096u16).filter(|v| self.contains(*v))
    }
}

/// How a physical port (or a bond) treats 802.1Q tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VlanMode {
    /// No VLANs: untagged frames only; tagged ones are dropped.
    #[default]
    None,
    /// An access port of this VLAN: the wire is untagged, the VLAN is implied (visible to
    /// NAT rules as the ingress VLAN); tagged frames are dropped.
    Access(u16),
    /// A trunk carrying these VLANs tagged, and optionally one native VLAN untagged.
    Trunk { vids: VidSet, native: Option<u16> },
}

/// What a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortKind {
    /// A kernel device with AF_XDP sockets: its id indexes the worker's sockets.
    #[default]
    Phys,
    /// A physical port enslaved to the bond `bond` (a logical port): frames it receives
    /// arrive on the bond.
    BondMember { bond: PortId },
    /// A VLAN subinterface: `parent` (a physical port or a bond) tagged with `vid`.
    Vlan { parent: PortId, vid: u16 },
    /// A bond; `index` into [`super::bond::Bonds`].
    Bond { index: u16 },
    /// A VXLAN device; `index` into [`Vxlan::overlays`].
    Vxlan { index: u16 },
}

impl PortKind {
    #[inline]
    pub fn is_logical(self) -> bool {
        !matches!(self, PortKind::Phys | PortKind::BondMember { .. })
    }
}

/// Outer IPv4 + UDP + VXLAN, the part of the encapsulation that is the same for every
/// packet to one remote VTEP (STYLE §4, VPP's `vxlan_rewrite`). Per packet only the two
/// lengths, the IPv4 checksum (patched from [`OuterHeader::csum_base`]) and the UDP source
/// port change.
pub const OUTER_LEN: usize = ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterHeader {
    pub bytes: [u8; OUTER_LEN],
    /// The IPv4 header checksum computed with total length 0: adding the real length is one
    /// incremental update (RFC 1624).
    pub csum_base: u16,
}

impl OuterHeader {
    /// Builds the header for packets from `local` to `remote`, UDP destination `dport`,
    /// `vni`. UDP checksum zero, as Linux's vxlan device sends over IPv4 by default
    /// (`noudpcsum`, RFC 7348 §5: "SHOULD be transmitted as zero"); DF clear and TTL 64 as
    /// Linux's defaults (`df unset`, `ttl auto`).
    pub fn new(local: Ipv4Addr, remote: Ipv4Addr, dport: u16, vni: u32) -> Self {
        let mut bytes = [0u8; OUTER_LEN];
        let mut ip = wire::Ipv4Packet::new_unchecked(&mut bytes[..]);
        Ipv4Repr {
            src_addr: local,
            dst_addr: remote,
            next_header: IpProtocol::Udp,
            payload_len: 0,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: false,
        }
        .emit(&mut ip);
        // emit() wrote total length 20; the base checksum is for length 0.
        ip.set_total_len(0);
        ip.fill_checksum();
        let csum_base = ip.checksum();
        let mut u = wire::UdpPacket::new_unchecked(&mut bytes[ipv4::HEADER_LEN..]);
        u.set_dst_port(dport);
        u.set_checksum(0);
        VxlanRepr { vni }.emit(&mut wire::VxlanHeader::new_unchecked(
            &mut bytes[ipv4::HEADER_LEN + udp::HEADER_LEN..],
        ));
        OuterHeader { bytes, csum_base }
    }
}

/// A remote VTEP as seen from one overlay: the inner next hop that routes name (`10.20.4.0`
/// in `10.20.4.0/25 via 10.20.4.0 dev vxlan.2 onlink`), the inner MAC to send to (the remote
/// vxlan device's, Linux's `neigh` entry) and the remote node's underlay address (Linux's
/// `fdb ... dst`), with the outer header prebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub inner_via: Ipv4Addr,
    pub inner_mac: [u8; 6],
    pub remote: Ipv4Addr,
    pub outer: OuterHeader,
}

/// One VXLAN device (`vxlan.2`): a VNI, the logical port routes name, the node's underlay
/// address used as outer source, and the VTEPs behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub port: PortId,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub vteps: Vec<Vtep>,
}

impl Overlay {
    #[inline]
    pub fn vtep_for(&self, inner_via: Ipv4Addr) -> Option<&Vtep> {
        // A handful of remote nodes per overlay: a scan of one short vector beats hashing.
        self.vteps.iter().find(|v| v.inner_via == inner_via)
    }

    #[inline]
    pub fn knows_remote(&self, remote: Ipv4Addr) -> bool {
        self.vteps.iter().any(|v| v.remote == remote)
    }
}

/// All VXLAN overlays of the node, and the subinterface map.
#[derive(Debug, Clone, Default)]
pub struct Vxlan {
    /// UDP destination port of VXLAN, sent and accepted (4789, or Linux's legacy 8472).
    pub udp_port: u16,
    pub overlays: Vec<Overlay>,
    /// VNI → index in `overlays`, for decapsulation.
    by_vni: HashMap<u32, u16>,
}

impl Vxlan {
    pub fn new(udp_port: u16, overlays: Vec<Overlay>) -> Self {
        let by_vni = overlays
            .iter()
            .enumerate()
            .map(|(i, o)| (o.vni, i as u16))
            .collect();
        Vxlan {
            udp_port,
            overlays,
            by_vni,
        }
    }

    #[inline]
    pub fn is_enabled(&self) -> bool {
        !self.overlays.is_empty()
    }

    #[inline]
    pub fn by_vni(&self, vni: u32) -> Option<&Overlay> {
        // A node has a handful of overlays: comparing their VNIs costs less than hashing one.
        if self.overlays.len() <= 8 {
            return self.overlays.iter().find(|o| o.vni == vni);
        }
        self.overlays.get(usize::from(*self.by_vni.get(&vni)?))
    }

    #[inline]
    pub fn overlay(&self, index: u16) -> Option<&Overlay> {
        self.overlays.get(usize::from(index))
    }
}

/// VLAN subinterfaces by (parent port, vid), for ingress: a frame tagged 1155 on `biz`
/// arrives on `biz.1155`.
#[derive(Debug, Clone, Default)]
pub struct SubIfs {
    map: HashMap<(PortId, u16), PortId>,
}

impl SubIfs {
    pub fn insert(&mut self, parent: PortId, vid: u16, port: PortId) {
        self.map.insert((parent, vid), port);
    }

    #[inline]
    pub fn get(&self, parent: PortId, vid: u16) -> Option<PortId> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(&(parent, vid)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vid_set() {
        let s = VidSet::new([1155, 1156, 4095]);
        assert!(s.contains(1155) && s.contains(4095) && !s.contains(1157) && !s.contains(0));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1155, 1156, 4095]);
    }

    #[test]
    fn outer_header_checksum_base_patches_to_full() {
        let h = OuterHeader::new(
            Ipv4Addr::new(10, 186, 152, 103),
            Ipv4Addr::new(10, 186, 152, 104),
            4789,
            2,
        );
        let mut b = h.bytes;
        let mut ip = wire::Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_total_len(1500);
        ip.set_checksum(wire::checksum::update16(h.csum_base, 0, 1500));
        assert!(ip.verify_checksum());
        let v = wire::VxlanHeader::new_checked(&b[28..]).unwrap();
        assert_eq!(VxlanRepr::parse(&v), Ok(VxlanRepr { vni: 2 }));
    }
}
