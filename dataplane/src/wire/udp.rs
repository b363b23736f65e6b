//! UDP (RFC 768).

use core::net::Ipv4Addr;

use super::{Error, IpProtocol, Result, checksum};

mod field {
    use crate::wire::Field;

    // RFC 768 "Format".
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view of a UDP datagram (wrap the IP payload).
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

    /// `Err` unless the buffer holds the 8-byte header, the length field is ≥ 8, and the
    /// buffer holds length-field bytes.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN || len < field_len {
            return Err(Error);
        }
        Ok(())
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field: header plus payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)] // a header field, not a container length
    pub fn len(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checksum as on the wire; `0` means "not computed" (RFC 768).
    #[inline]
    pub fn checksum(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The datagram as the length field delimits it (clamped to the buffer).
    #[inline]
    fn datagram(&self) -> &[u8] {
        super::clamped(self.buffer.as_ref(), 0, usize::from(self.len()))
    }

    /// Payload: 8..len.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        super::clamped(
            self.buffer.as_ref(),
            field::PAYLOAD,
            usize::from(self.len()),
        )
    }

    /// The checksum is correct for the given IPv4 addresses, or absent (`0`, which RFC 768
    /// allows over IPv4).
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = self.datagram();
        // The pseudo-header's length is the UDP length field (RFC 768), which is what
        // `datagram()` spans when check_len passed.
        let len = self.len();
        checksum::combine(&[
            checksum::pseudo_header_v4(src, dst, IpProtocol::Udp, len),
            checksum::data(d),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port (checksum untouched).
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    /// Sets the destination port (checksum untouched).
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the raw checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Computes the checksum over pseudo-header and datagram (`len` bytes). A computed `0`
    /// is sent as `0xffff`, because `0` on the wire means "no checksum" (RFC 768).
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = checksum::combine(&[
            checksum::pseudo_header_v4(src, dst, IpProtocol::Udp, self.len()),
            checksum::data(self.datagram()),
        ]);
        let c = !sum;
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// Applies an incremental update (e.g. `|c| checksum::update_addr(c, old, new)`) with
    /// UDP's rules: a `0` checksum ("none") stays `0`, and a `0` result becomes `0xffff`.
    #[inline]
    pub fn update_checksum(&mut self, f: impl FnOnce(u16) -> u16) {
        let c = self.checksum();
        if c == 0 {
            return;
        }
        let c = f(c);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// Mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        super::clamped_mut(self.buffer.as_mut(), field::PAYLOAD, end)
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

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    #[test]
    fn parse_and_fill() {
        let mut b = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src_port(40000);
        p.set_dst_port(53);
        p.set_len(12);
        p.payload_mut().copy_from_slice(b"dns?");
        p.fill_checksum(SRC, DST);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (40000, 53, 12));
        assert_eq!(p.payload(), b"dns?");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(10, 96, 0, 11)));
    }

    #[test]
    fn check_len_rejects() {
        let mut b = [0u8; 12];
        b[5] = 7; // len < 8
        assert_eq!(Packet::new_checked(&b[..]), Err(Error));
        b[5] = 13; // len > buffer
        assert_eq!(Packet::new_checked(&b[..]), Err(Error));
        b[5] = 10; // trailing bytes beyond len are fine (IP padding)
        assert_eq!(Packet::new_checked(&b[..]).unwrap().payload().len(), 2);
        assert_eq!(Packet::new_checked(&b[..7]), Err(Error));
    }

    /// RFC 768: 0 on receive means "none"; a computed 0 is sent as 0xffff.
    #[test]
    fn zero_checksum() {
        let mut b = [0u8; 8];
        b[5] = 8;
        assert!(
            Packet::new_checked(&b[..])
                .unwrap()
                .verify_checksum(SRC, DST)
        );
        // Find a payload word that makes the one's-complement sum 0xffff, so the computed
        // checksum is 0.
        let mut b = [0u8; 10];
        b[5] = 10;
        let sum = checksum::combine(&[
            checksum::pseudo_header_v4(SRC, DST, IpProtocol::Udp, 10),
            checksum::data(&b),
        ]);
        // Adding w = !sum makes the total sum 0xffff (one's complement: x + ~x = -0).
        b[8..10].copy_from_slice(&(!sum).to_be_bytes());
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(SRC, DST));

        // update_checksum leaves "none" alone.
        let mut b = [0u8; 8];
        b[5] = 8;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.update_checksum(|c| checksum::update_addr(c, SRC, DST));
        assert_eq!(p.checksum(), 0);
    }

    fn arb_datagram() -> impl Strategy<Value = ([u8; 4], [u8; 4], u16, u16, Vec<u8>)> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn agrees_with_etherparse((src, dst, sp, dp, payload) in arb_datagram(), corrupt in any::<prop::sample::Index>()) {
            let h = etherparse::UdpHeader::without_ipv4_checksum(sp, dp, payload.len()).unwrap();
            let want = h.calc_checksum_ipv4_raw(src, dst, &payload).unwrap();
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            b[6..8].copy_from_slice(&want.to_be_bytes());
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));

            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!((p.src_port(), p.dst_port()), (sp, dp));
            prop_assert_eq!(usize::from(p.len()), 8 + payload.len());
            prop_assert_eq!(p.checksum(), want);
            prop_assert_eq!(p.payload(), &payload[..]);
            prop_assert!(p.verify_checksum(src, dst));

            // Our fill agrees with etherparse (which also maps 0 to 0xffff).
            let mut b2 = b.clone();
            let mut q = Packet::new_unchecked(&mut b2[..]);
            q.set_checksum(0x1234);
            q.fill_checksum(src, dst);
            prop_assert_eq!(q.checksum(), want);

            // A flipped bit is caught (unless it lands in a zero checksum, meaning "none").
            let mut b3 = b.clone();
            let i = corrupt.index(b3.len());
            b3[i] ^= 0x01;
            let q = Packet::new_checked(&b3[..]);
            if let Ok(q) = q && q.checksum() != 0 {
                prop_assert!(!q.verify_checksum(src, dst));
            }
        }

        /// NAT: rewrite src address and port incrementally; equals full recomputation.
        #[test]
        fn incremental_nat((src, dst, sp, dp, payload) in arb_datagram(), nsrc: [u8; 4], nsp: u16) {
            let (src, dst, nsrc) = (Ipv4Addr::from(src), Ipv4Addr::from(dst), Ipv4Addr::from(nsrc));
            let mut b = vec![0u8; 8 + payload.len()];
            let mut p = Packet::new_unchecked(&mut b[..]);
            p.set_src_port(sp);
            p.set_dst_port(dp);
            p.set_len((8 + payload.len()) as u16);
            p.payload_mut().copy_from_slice(&payload);
            p.fill_checksum(src, dst);
            p.update_checksum(|c| checksum::update16(checksum::update_addr(c, src, nsrc), sp, nsp));
            p.set_src_port(nsp);
            prop_assert!(p.verify_checksum(nsrc, dst));
            let inc = p.checksum();
            p.fill_checksum(nsrc, dst);
            prop_assert_eq!(inc, p.checksum());
        }

        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40), l: u16) {
            let mut b = bytes;
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.src_port(), p.dst_port(), p.len(), p.checksum(), p.payload().len());
                let _ = p.verify_checksum(SRC, DST);
                p.set_len(l);
                let _ = (p.payload().len(), p.payload_mut().len(), p.verify_checksum(SRC, DST));
                p.fill_checksum(SRC, DST);
                p.update_checksum(|c| c);
                p.set_src_port(1);
                p.set_dst_port(1);
            }
        }
    }
}
