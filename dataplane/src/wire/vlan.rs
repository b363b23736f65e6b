//! IEEE 802.1Q VLAN tags (802.1Q-2018 §9.6).
//!
//! On the wire a tagged frame is `dst | src | TPID | TCI | inner EtherType | payload`. The
//! TPID sits where an untagged frame has its EtherType, so
//! [`Frame::ethertype`](crate::wire::ethernet::Frame::ethertype) reads it as
//! `EtherType::Vlan` (or `QinQ`), and [`Tag`] is a view over the Ethernet *payload* that
//! follows: `TCI | inner EtherType | payload`. Views nest, so QinQ is two `Tag`s.
//!
//! Tagging and untagging move the MAC addresses by [`TAG_LEN`] bytes; [`insert`] and
//! [`strip`] do that in place, for a frame buffer with headroom.

use super::ethernet::{self, EtherType};
use super::{Error, Result};

mod field {
    use crate::wire::Field;

    /// Tag Control Information: PCP (3 bits) | DEI (1) | VID (12).
    pub const TCI: Field = 0..2;
    pub const ETHERTYPE: Field = 2..4;
    pub const PAYLOAD: usize = 4;
}

/// Bytes a tag adds to a frame (TPID + TCI), and the length of the [`Tag`] view's header
/// (TCI + inner EtherType).
pub const TAG_LEN: usize = 4;

/// VID 0: priority-tagged frame, no VLAN (802.1Q-2018 Table 9-2).
pub const VID_NONE: u16 = 0;
/// VID 4095: reserved (802.1Q-2018 Table 9-2).
pub const VID_RESERVED: u16 = 0xfff;

/// A view of an 802.1Q tag: the Ethernet payload of a frame whose EtherType is a TPID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    /// Wraps a buffer without checking its length.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Tag<T> {
        Tag { buffer }
    }

    /// Wraps a buffer, checking that it holds TCI and inner EtherType.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Tag<T>> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    /// `Err` if the buffer is shorter than 4 bytes.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < TAG_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The raw Tag Control Information.
    #[inline]
    pub fn tci(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::TCI)
    }

    /// Priority Code Point (802.1Q-2018 §6.9.3), 0..=7.
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop Eligible Indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier, 0..=4095.
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The EtherType of what the tag encloses (another TPID for QinQ).
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(super::get_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// What follows the tag: the L3 packet, or the next tag.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        super::clamped(self.buffer.as_ref(), field::PAYLOAD, usize::MAX)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tag<T> {
    /// Sets the raw TCI.
    #[inline]
    pub fn set_tci(&mut self, tci: u16) {
        super::set_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    /// Sets the PCP; bits above the low 3 are ignored.
    #[inline]
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & 0x1fff) | (u16::from(pcp & 0x7) << 13);
        self.set_tci(tci);
    }

    /// Sets the DEI.
    #[inline]
    pub fn set_dei(&mut self, dei: bool) {
        let tci = (self.tci() & !0x1000) | if dei { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    /// Sets the VID; bits above the low 12 are ignored.
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & 0xf000) | (vid & 0x0fff);
        self.set_tci(tci);
    }

    /// Sets the inner EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, ty: EtherType) {
        super::set_u16(self.buffer.as_mut(), field::ETHERTYPE, ty.into());
    }

    /// Mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        super::clamped_mut(self.buffer.as_mut(), field::PAYLOAD, usize::MAX)
    }
}

/// Builds a TCI from its parts (PCP and VID are masked to their widths).
#[inline]
pub const fn tci(pcp: u8, dei: bool, vid: u16) -> u16 {
    ((pcp as u16 & 0x7) << 13) | if dei { 0x1000 } else { 0 } | (vid & 0x0fff)
}

/// The VID of the outermost 802.1Q/802.1ad tag of a whole Ethernet frame, or `None` if the
/// frame is untagged or too short to hold a tag.
#[inline]
pub fn vid_of(frame: &[u8]) -> Option<u16> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EtherType::Vlan | EtherType::QinQ => Tag::new_checked(eth.payload()).ok().map(|t| t.vid()),
        _ => None,
    }
}

/// Removes the outermost tag of a whole frame in place and returns its TCI.
///
/// Moves the two MAC addresses [`TAG_LEN`] bytes towards the end, so the untagged frame is
/// `frame[TAG_LEN..]` afterwards (the first four bytes become headroom). One 12-byte copy,
/// instead of moving the payload. `Err` (and `frame` untouched) if the frame is not tagged
/// with `EtherType::Vlan`/`QinQ` or too short.
#[inline]
pub fn strip(frame: &mut [u8]) -> Result<u16> {
    if frame.len() < ethernet::HEADER_LEN + TAG_LEN {
        return Err(Error);
    }
    let tpid = EtherType::from(super::get_u16(frame, 12..14));
    if !matches!(tpid, EtherType::Vlan | EtherType::QinQ) {
        return Err(Error);
    }
    let tci = super::get_u16(frame, 14..16);
    frame.copy_within(0..12, TAG_LEN);
    Ok(tci)
}

/// Inserts a tag into a frame in place: `buf` is [`TAG_LEN`] bytes of headroom followed by
/// the untagged frame; afterwards `buf` is the tagged frame.
///
/// `tpid` is `EtherType::Vlan` for a customer tag, `EtherType::QinQ` for a service tag.
/// `Err` (and `buf` untouched) if `buf` cannot hold headroom plus an Ethernet header.
#[inline]
pub fn insert(buf: &mut [u8], tpid: EtherType, tci: u16) -> Result<()> {
    if buf.len() < TAG_LEN + ethernet::HEADER_LEN {
        return Err(Error);
    }
    buf.copy_within(TAG_LEN..TAG_LEN + 12, 0);
    super::set_u16(buf, 12..14, tpid.into());
    super::set_u16(buf, 14..16, tci);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EthernetFrame;
    use proptest::prelude::*;

    // dst, src, 8100, PCP 5 DEI 1 VID 1155 (0x483), 0800, payload
    static TAGGED: [u8; 20] = [
        1, 2, 3, 4, 5, 6, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x81, 0x00, 0xb4, 0x83, 0x08, 0x00,
        0xaa, 0xbb,
    ];

    #[test]
    fn parse() {
        let eth = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Vlan);
        let tag = Tag::new_checked(eth.payload()).unwrap();
        assert_eq!(tag.pcp(), 5);
        assert!(tag.dei());
        assert_eq!(tag.vid(), 1155);
        assert_eq!(tag.ethertype(), EtherType::Ipv4);
        assert_eq!(tag.payload(), &[0xaa, 0xbb]);
        assert_eq!(vid_of(&TAGGED), Some(1155));
        assert_eq!(vid_of(&TAGGED[..17]), None);
    }

    #[test]
    fn emit() {
        let mut buf = [0u8; 6];
        let mut tag = Tag::new_unchecked(&mut buf[..]);
        tag.set_vid(0xf483); // high bits ignored
        tag.set_pcp(5);
        tag.set_dei(true);
        tag.set_ethertype(EtherType::Ipv4);
        tag.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(&buf, &TAGGED[14..]);
        assert_eq!(tci(5, true, 1155), 0xb483);
    }

    #[test]
    fn strip_then_insert() {
        let mut f = TAGGED;
        assert_eq!(strip(&mut f), Ok(0xb483));
        let untagged = &f[TAG_LEN..];
        let eth = EthernetFrame::new_checked(untagged).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        assert_eq!(eth.src_addr().0, [0x11, 0x12, 0x13, 0x14, 0x15, 0x16]);
        assert_eq!(eth.payload(), &[0xaa, 0xbb]);
        assert_eq!(vid_of(untagged), None);
        assert_eq!(strip(&mut f[TAG_LEN..]), Err(Error));

        insert(&mut f, EtherType::Vlan, 0xb483).unwrap();
        assert_eq!(f, TAGGED);
        assert_eq!(insert(&mut f[..17], EtherType::Vlan, 1), Err(Error));
    }

    proptest! {
        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let mut b = bytes.clone();
            if let Ok(mut t) = Tag::new_checked(&mut b[..]) {
                let _ = (t.tci(), t.pcp(), t.dei(), t.vid(), t.ethertype(), t.payload().len());
                t.set_pcp(7);
                t.set_dei(false);
                t.set_vid(4095);
                t.set_ethertype(EtherType::Arp);
                let _ = t.payload_mut().len();
            }
            let _ = vid_of(&bytes);
            let mut b = bytes.clone();
            let _ = strip(&mut b);
            let mut b = bytes;
            let _ = insert(&mut b, EtherType::QinQ, 7);
        }

        #[test]
        fn tci_fields_round_trip(pcp in 0u8..8, dei: bool, vid in 0u16..4096) {
            let mut b = [0u8; 4];
            let mut t = Tag::new_unchecked(&mut b[..]);
            t.set_vid(vid);
            t.set_dei(dei);
            t.set_pcp(pcp);
            prop_assert_eq!((t.pcp(), t.dei(), t.vid()), (pcp, dei, vid));
            prop_assert_eq!(t.tci(), tci(pcp, dei, vid));
        }
    }
}
