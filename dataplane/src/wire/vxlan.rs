//! VXLAN (RFC 7348 §5).
//!
//! The 8-byte header sits in a UDP datagram and is followed by the inner Ethernet frame:
//! `flags(8) | reserved(24) | VNI(24) | reserved(8)`. Linux's vxlan device (B9) sends and
//! expects exactly this; with no GBP/GPE extensions, every bit but I must be zero on send
//! and is ignored on receive.

use super::{Error, Result};

mod field {
    use crate::wire::Field;

    pub const FLAGS: usize = 0;
    pub const RESERVED1: Field = 1..4;
    /// The VNI plus the trailing reserved byte: read as u32, VNI = value >> 8.
    pub const VNI_RSVD: Field = 4..8;
    pub const PAYLOAD: usize = 8;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// IANA-assigned UDP port (RFC 7348 §5).
pub const DEFAULT_PORT: u16 = 4789;

/// The port Linux's vxlan device uses when created without `dstport` (predates IANA).
pub const LINUX_LEGACY_PORT: u16 = 8472;

/// The I flag: the VNI is valid (RFC 7348 §5, "MUST be set to 1").
pub const FLAG_I: u8 = 0x08;

/// Bytes VXLAN-over-IPv4 adds to an inner frame: outer Ethernet + IPv4 + UDP + VXLAN (50);
/// why the overlay pod MTU is 1450 on a 1500 underlay.
pub const OVERHEAD_V4: usize =
    super::ethernet::HEADER_LEN + super::ipv4::HEADER_LEN + super::udp::HEADER_LEN + HEADER_LEN;

/// Largest valid VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A view of a VXLAN header and the inner frame after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking its length.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer, checking that it holds the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Header<T>> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// `Err` if the buffer is shorter than 8 bytes.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The I flag is set, so [`vni`](Self::vni) is meaningful.
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VXLAN Network Identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        super::get_u32(self.buffer.as_ref(), field::VNI_RSVD) >> 8
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        super::clamped(self.buffer.as_ref(), field::PAYLOAD, usize::MAX)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the VNI (masked to 24 bits); the trailing reserved byte is kept.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        let old = super::get_u32(self.buffer.as_ref(), field::VNI_RSVD);
        let w = ((vni & VNI_MAX) << 8) | (old & 0xff);
        super::set_u32(self.buffer.as_mut(), field::VNI_RSVD, w);
    }

    /// Zeroes both reserved fields, as RFC 7348 §5 requires on send.
    #[inline]
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::VNI_RSVD.end - 1] = 0;
    }

    /// Mutable inner frame.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        super::clamped_mut(self.buffer.as_mut(), field::PAYLOAD, usize::MAX)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Header<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A VXLAN header: just the VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// VXLAN Network Identifier, 0..=0xffffff.
    pub vni: u32,
}

impl Repr {
    /// `Err` if the I flag is clear (RFC 7348 §5: such a packet has no valid VNI). Other
    /// flag and reserved bits are ignored, as the RFC asks of receivers.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Result<Repr> {
        h.check_len()?;
        if !h.has_vni() {
            return Err(Error);
        }
        Ok(Repr { vni: h.vni() })
    }

    /// Header bytes [`emit`](Self::emit) writes: 8.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header: I flag, zero reserved bits, the VNI.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
        h.set_flags(FLAG_I);
        h.clear_reserved();
        h.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // VNI 2 as the seeds' vxlan.2.
    static HDR: [u8; 10] = [0x08, 0, 0, 0, 0, 0, 0x02, 0, 0xaa, 0xbb];

    #[test]
    fn parse_emit() {
        let h = Header::new_checked(&HDR[..]).unwrap();
        assert!(h.has_vni());
        assert_eq!(h.vni(), 2);
        assert_eq!(h.payload(), &[0xaa, 0xbb]);
        assert_eq!(Repr::parse(&h), Ok(Repr { vni: 2 }));

        let mut b = [0xffu8; 10];
        b[8..].copy_from_slice(&[0xaa, 0xbb]);
        Repr { vni: 2 }.emit(&mut Header::new_unchecked(&mut b[..]));
        assert_eq!(b, HDR);
        assert_eq!(OVERHEAD_V4, 50);
    }

    #[test]
    fn rejects() {
        assert_eq!(Header::new_checked(&HDR[..7]), Err(Error));
        let mut b = HDR;
        b[0] = 0;
        assert_eq!(
            Repr::parse(&Header::new_checked(&b[..]).unwrap()),
            Err(Error)
        );
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0u32..=VNI_MAX, junk: [u8; 8]) {
            let mut b = junk;
            let r = Repr { vni };
            r.emit(&mut Header::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Header::new_checked(&b[..]).unwrap()), Ok(r));
            prop_assert_eq!(&b[..4], &[FLAG_I, 0, 0, 0]);
            prop_assert_eq!(b[7], 0);
        }

        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20), vni: u32) {
            let mut b = bytes;
            if let Ok(mut h) = Header::new_checked(&mut b[..]) {
                let _ = (h.flags(), h.has_vni(), h.vni(), h.payload().len(), Repr::parse(&h));
                h.set_vni(vni);
                prop_assert_eq!(h.vni(), vni & VNI_MAX);
                h.set_flags(0);
                h.clear_reserved();
                let _ = h.payload_mut().len();
            }
        }
    }
}
