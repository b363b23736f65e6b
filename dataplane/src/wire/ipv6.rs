//! IPv6 fixed header (RFC 8200 §3).
//!
//! afgate forwards IPv4; IPv6 is parsed so that it can be classified (passed to the kernel,
//! counted) rather than treated as garbage. Extension headers are not walked.

use core::net::Ipv6Addr;

use super::{Error, IpProtocol, Result};

mod field {
    use crate::wire::Field;

    // RFC 8200 §3: version (4) | traffic class (8) | flow label (20).
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer and runs [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Err` unless the buffer holds the 40-byte header plus payload length bytes. Lengths
    /// only; see [`is_valid_version`](Self::is_valid_version). A payload length of 0 with a
    /// Jumbo option (RFC 2675) is not supported: it reads as an empty payload.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + usize::from(self.payload_len()) {
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

    fn ver_tc_flow(&self) -> u32 {
        super::get_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    /// Version (6 for IPv6).
    #[inline]
    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    /// `version() == 6`.
    #[inline]
    pub fn is_valid_version(&self) -> bool {
        self.version() == 6
    }

    /// Traffic class (DSCP << 2 | ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// Flow label, 20 bits.
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Payload length (everything after the fixed header, extension headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Next header: the first extension header or the upper-layer protocol.
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        Ipv6Addr::from(a)
    }

    /// The payload: 40..40 + payload_len, without Ethernet padding.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        super::clamped(self.buffer.as_ref(), HEADER_LEN, end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_ver_tc_flow(&mut self, v: u32) {
        super::set_u32(self.buffer.as_mut(), field::VER_TC_FLOW, v);
    }

    /// Sets the version.
    #[inline]
    pub fn set_version(&mut self, v: u8) {
        let w = (self.ver_tc_flow() & 0x0fff_ffff) | (u32::from(v & 0x0f) << 28);
        self.set_ver_tc_flow(w);
    }

    /// Sets the traffic class.
    #[inline]
    pub fn set_traffic_class(&mut self, v: u8) {
        let w = (self.ver_tc_flow() & 0xf00f_ffff) | (u32::from(v) << 20);
        self.set_ver_tc_flow(w);
    }

    /// Sets the flow label (masked to 20 bits).
    #[inline]
    pub fn set_flow_label(&mut self, v: u32) {
        let w = (self.ver_tc_flow() & 0xfff0_0000) | (v & 0x000f_ffff);
        self.set_ver_tc_flow(w);
    }

    /// Sets the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = v.into();
    }

    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        super::clamped_mut(self.buffer.as_mut(), HEADER_LEN, end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_etherparse(
            tc: u8, flow in 0u32..0x10_0000, nh: u8, hl: u8, src: [u8; 16], dst: [u8; 16],
            payload in proptest::collection::vec(any::<u8>(), 0..64), pad in 0usize..8,
        ) {
            let h = etherparse::Ipv6Header {
                traffic_class: tc,
                flow_label: etherparse::Ipv6FlowLabel::try_new(flow).unwrap(),
                payload_length: payload.len() as u16,
                next_header: etherparse::IpNumber(nh),
                hop_limit: hl,
                source: src,
                destination: dst,
            };
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            b.extend(core::iter::repeat_n(0u8, pad));
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert!(p.is_valid_version());
            prop_assert_eq!(p.traffic_class(), tc);
            prop_assert_eq!(p.flow_label(), flow);
            prop_assert_eq!(usize::from(p.payload_len()), payload.len());
            prop_assert_eq!(u8::from(p.next_header()), nh);
            prop_assert_eq!(p.hop_limit(), hl);
            prop_assert_eq!(p.src_addr().octets(), src);
            prop_assert_eq!(p.dst_addr().octets(), dst);
            prop_assert_eq!(p.payload(), &payload[..]);

            // Rebuild with our setters: identical bytes.
            let mut out = vec![0u8; b.len()];
            let mut q = Packet::new_unchecked(&mut out[..]);
            q.set_version(6);
            q.set_flow_label(flow);
            q.set_traffic_class(tc);
            q.set_payload_len(payload.len() as u16);
            q.set_next_header(IpProtocol::from(nh));
            q.set_hop_limit(hl);
            q.set_src_addr(src.into());
            q.set_dst_addr(dst.into());
            q.payload_mut().copy_from_slice(&payload);
            prop_assert_eq!(&out[..HEADER_LEN + payload.len()], &b[..HEADER_LEN + payload.len()]);
        }

        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), pl: u16) {
            let mut b = bytes;
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.version(), p.is_valid_version(), p.traffic_class(), p.flow_label(), p.payload_len());
                let _ = (p.next_header(), p.hop_limit(), p.src_addr(), p.dst_addr(), p.payload().len());
                p.set_payload_len(pl);
                let _ = (p.payload().len(), p.payload_mut().len());
                p.set_version(0xff);
                p.set_traffic_class(0xff);
                p.set_flow_label(u32::MAX);
                p.set_hop_limit(0);
            }
        }
    }

    #[test]
    fn too_short() {
        let mut b = [0u8; 44];
        b[0] = 0x60;
        b[5] = 5; // payload_len 5 > 4 available
        assert_eq!(Packet::new_checked(&b[..]), Err(Error));
        b[5] = 4;
        assert!(Packet::new_checked(&b[..]).is_ok());
        assert_eq!(Packet::new_checked(&b[..39]), Err(Error));
    }
}
