//! IPv4 (RFC 791).

use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

use super::{Error, IpProtocol, Result, checksum};

mod field {
    use crate::wire::Field;

    // RFC 791 §3.1, "Internet Header Format".
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    /// TTL and protocol as one 16-bit word, the unit the header checksum sums.
    pub const TTL_PROTO: Field = 8..10;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

// RFC 791 §3.1 flags, in the 16-bit flags/fragment-offset word.
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
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

    /// `Err` unless: the buffer holds 20 bytes, IHL ≥ 5, total length ≥ header length, and
    /// the buffer holds total length bytes. A longer buffer is fine (Ethernet pads short
    /// frames to 60 bytes); [`payload`](Self::payload) stops at total length.
    ///
    /// Lengths only: check [`is_valid_version`](Self::is_valid_version) and
    /// [`verify_checksum`](Self::verify_checksum) separately.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error);
        }
        let header_len = usize::from(self.header_len());
        let total_len = usize::from(self.total_len());
        if header_len < HEADER_LEN || total_len < header_len || len < total_len {
            return Err(Error);
        }
        Ok(())
    }

    /// The weaker check for a *quoted* header inside an ICMP error (RFC 792), whose total
    /// length describes the original packet, not the truncated quote: `Err` unless the
    /// buffer holds 20 bytes, IHL ≥ 5 and the buffer holds header_len bytes. After it, no
    /// accessor panics either; [`payload`](Self::payload) is whatever was quoted (the first
    /// ≥ 8 bytes of the original L4 header: ports first).
    #[inline]
    pub fn check_header_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error);
        }
        let header_len = usize::from(self.header_len());
        if header_len < HEADER_LEN || len < header_len {
            return Err(Error);
        }
        Ok(())
    }

    /// The wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 for IPv4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// `version() == 4`.
    #[inline]
    pub fn is_valid_version(&self) -> bool {
        self.version() == 4
    }

    /// Header length in bytes (IHL × 4), 0..=60.
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The whole DS field: DSCP (high 6 bits) and ECN (low 2), RFC 2474 §3 / RFC 3168 §5.
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// DSCP (RFC 2474).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.dscp_ecn() >> 2
    }

    /// ECN (RFC 3168).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.dscp_ecn() & 0x03
    }

    /// Total length: header plus payload.
    #[inline]
    pub fn total_len(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't Fragment.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        super::get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More Fragments.
    #[inline]
    pub fn more_frags(&self) -> bool {
        super::get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in **bytes** (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (super::get_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// A fragment (MF set or a non-zero offset): only the first fragment carries L4 ports.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        super::get_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Protocol of the payload as the raw number: for the packet path, which compares it
    /// with one or two constants and need not map it through [`IpProtocol`]'s `match`.
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum as on the wire.
    #[inline]
    pub fn checksum(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        super::get_ipv4(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        super::get_ipv4(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// The header bytes, options included (clamped to the buffer).
    #[inline]
    pub fn header(&self) -> &[u8] {
        super::clamped(self.buffer.as_ref(), 0, usize::from(self.header_len()))
    }

    /// The options (bytes 20..header_len), unparsed.
    #[inline]
    pub fn options(&self) -> &[u8] {
        super::clamped(
            self.buffer.as_ref(),
            HEADER_LEN,
            usize::from(self.header_len()),
        )
    }

    /// The payload: header_len..total_len, without Ethernet padding.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        super::clamped(
            self.buffer.as_ref(),
            usize::from(self.header_len()),
            usize::from(self.total_len()),
        )
    }

    /// The header checksum is correct (RFC 791 §3.1: the one's-complement sum of the header,
    /// checksum included, is all ones).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let b = self.buffer.as_ref();
        // Almost every header has no options: five words from a fixed-size view, no loop,
        // in native byte order (a one's-complement sum of byte-swapped words is the swapped
        // sum, RFC 1071 §2(B), and all ones is all ones either way).
        if let Some(h) = b.first_chunk::<HEADER_LEN>()
            && h[0] & 0x0f == 5
        {
            let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
            return checksum::fold_sum(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff;
        }
        checksum::data(self.header()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version nibble.
    #[inline]
    pub fn set_version(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (v << 4);
    }

    /// Sets the header length in bytes (stored as IHL = len / 4; must be a multiple of 4).
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) & 0x0f);
    }

    /// Sets the DS field (DSCP << 2 | ECN).
    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::IDENT, v);
    }

    /// Clears the flags and the fragment offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        super::set_u16(self.buffer.as_mut(), field::FLG_OFF, 0);
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let w = super::get_u16(self.buffer.as_ref(), field::FLG_OFF);
        let w = if on { w | flag } else { w & !flag };
        super::set_u16(self.buffer.as_mut(), field::FLG_OFF, w);
    }

    /// Sets Don't Fragment.
    #[inline]
    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag(FLAG_DF, on);
    }

    /// Sets More Fragments.
    #[inline]
    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag(FLAG_MF, on);
    }

    /// Sets the fragment offset in bytes (the low 3 bits are dropped).
    #[inline]
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let w = super::get_u16(self.buffer.as_ref(), field::FLG_OFF);
        let w = (w & !OFFSET_MASK) | (bytes >> 3);
        super::set_u16(self.buffer.as_mut(), field::FLG_OFF, w);
    }

    /// Sets the TTL (checksum untouched; see [`decrement_ttl`](Self::decrement_ttl)).
    #[inline]
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    /// Sets the protocol.
    #[inline]
    pub fn set_next_header(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = v.into();
    }

    /// Sets the header checksum.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets the source address (checksum untouched; NAT pairs this with
    /// [`checksum::update_addr`] on both the IP and L4 checksums).
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        super::set_ipv4(self.buffer.as_mut(), field::SRC_ADDR, a);
    }

    /// Sets the destination address (checksum untouched).
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        super::set_ipv4(self.buffer.as_mut(), field::DST_ADDR, a);
    }

    /// Recomputes the header checksum over header_len bytes.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.header());
        self.set_checksum(!sum);
    }

    /// Decrements the TTL and patches the checksum incrementally (RFC 1624 over the
    /// TTL/protocol word, RFC 1812 §5.3.1). Returns the new TTL; the caller drops the packet
    /// (and may send ICMP Time Exceeded) when the TTL it *received* was ≤ 1, before calling
    /// this. Saturates at 0.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let old = super::get_u16(self.buffer.as_ref(), field::TTL_PROTO);
        let ttl = self.ttl().saturating_sub(1);
        self.set_ttl(ttl);
        let new = super::get_u16(self.buffer.as_ref(), field::TTL_PROTO);
        let c = checksum::update16(self.checksum(), old, new);
        self.set_checksum(c);
        ttl
    }

    /// Mutable options.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        super::clamped_mut(self.buffer.as_mut(), HEADER_LEN, end)
    }

    /// Mutable payload (header_len..total_len).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (
            usize::from(self.header_len()),
            usize::from(self.total_len()),
        );
        super::clamped_mut(self.buffer.as_mut(), start, end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields afgate sets when it builds an IPv4 header (VXLAN outer header, ICMP errors).
/// Always 20 bytes, no options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub next_header: IpProtocol,
    /// Payload length in bytes; total length is this plus 20.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DS field (DSCP << 2 | ECN).
    pub dscp_ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
}

impl Repr {
    /// Parses a packet: `Err` if the version is not 4, the checksum is wrong, or the packet
    /// is a fragment. Options are skipped.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if !p.is_valid_version() || !p.verify_checksum() || p.is_fragment() {
            return Err(Error);
        }
        Ok(Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: usize::from(p.total_len()) - usize::from(p.header_len()),
            ttl: p.ttl(),
            dscp_ecn: p.dscp_ecn(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// Header bytes [`emit`](Self::emit) writes: 20.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 20-byte header, checksum filled. The view needs ≥ 20 bytes; the payload
    /// is not touched. A `payload_len` above 65515 saturates total length at 65535.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_version(4);
        p.set_header_len(HEADER_LEN as u8);
        p.set_dscp_ecn(self.dscp_ecn);
        let total = HEADER_LEN.saturating_add(self.payload_len);
        p.set_total_len(u16::try_from(total).unwrap_or(u16::MAX));
        p.set_ident(self.ident);
        p.clear_flags();
        p.set_dont_frag(self.dont_frag);
        p.set_ttl(self.ttl);
        p.set_next_header(self.next_header);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        p.fill_checksum();
    }
}

/// An IPv4 prefix such as `10.20.9.0/25`. The address may have host bits set (an interface
/// address with its prefix, `10.186.153.103/24`); [`network`](Self::network) clears them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// `Err` if `prefix_len > 32`.
    #[inline]
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Cidr> {
        if prefix_len > 32 {
            return Err(Error);
        }
        Ok(Ipv4Cidr { addr, prefix_len })
    }

    /// The address as given.
    #[inline]
    pub const fn address(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length, 0..=32.
    #[inline]
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as a `u32` (`/0` → 0, since `u32 << 32` does not exist).
    #[inline]
    pub const fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len)
        }
    }

    /// The netmask, e.g. 255.255.255.128 for /25.
    #[inline]
    pub const fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.mask())
    }

    /// The same prefix with host bits cleared.
    #[inline]
    pub const fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from_bits(self.addr.to_bits() & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// The directed broadcast address (all host bits set).
    #[inline]
    pub const fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.addr.to_bits() | !self.mask())
    }

    /// `addr` lies inside this prefix.
    #[inline]
    pub const fn contains(&self, addr: Ipv4Addr) -> bool {
        (addr.to_bits() ^ self.addr.to_bits()) & self.mask() == 0
    }

    /// `other` is this prefix or a more specific one inside it.
    #[inline]
    pub const fn contains_subnet(&self, other: &Ipv4Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    /// Parses `a.b.c.d/n`; a bare address means `/32`.
    fn from_str(s: &str) -> Result<Ipv4Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => {
                // u8::from_str accepts "+25"; a prefix is digits only.
                if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(Error);
                }
                (a, p.parse::<u8>().map_err(|_| Error)?)
            }
            None => (s, 32),
        };
        Ipv4Cidr::new(a.parse().map_err(|_| Error)?, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 10.20.9.60 -> 10.96.10.1, UDP, TTL 64, DF, 4 bytes payload, checksum filled below.
    fn sample() -> Vec<u8> {
        let mut b = vec![
            0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 20, 9, 60,
            10, 96, 10, 1, 0xde, 0xad, 0xbe, 0xef,
        ];
        let c = !checksum::data(&b[..20]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn parse() {
        let b = sample();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.is_valid_version());
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 20, 9, 60));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 96, 10, 1));
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn padding_is_not_payload() {
        let mut b = sample();
        b.extend_from_slice(&[0; 30]); // Ethernet minimum-size padding
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn check_len_rejects() {
        let b = sample();
        assert_eq!(Packet::new_checked(&b[..19]), Err(Error));
        assert_eq!(Packet::new_checked(&b[..23]), Err(Error)); // total_len 24
        let mut bad = b.clone();
        bad[0] = 0x44; // IHL 4
        assert_eq!(Packet::new_checked(&bad[..]), Err(Error));
        let mut bad = b.clone();
        bad[3] = 19; // total_len < header_len
        assert_eq!(Packet::new_checked(&bad[..]), Err(Error));
        let mut bad = b;
        bad[0] = 0x46; // 24-byte header == total_len: allowed
        assert!(Packet::new_checked(&bad[..]).is_ok()); // 24-byte header, empty payload
        bad[0] = 0x47; // 28-byte header > total_len 24
        assert_eq!(Packet::new_checked(&bad[..]), Err(Error));
    }

    #[test]
    fn quoted_header() {
        // An ICMP error quotes the IP header + 8 bytes; total_len still says 24.
        let b = sample();
        let quoted = &b[..22];
        assert_eq!(Packet::new_checked(quoted), Err(Error));
        let p = Packet::new_unchecked(quoted);
        assert!(p.check_header_len().is_ok());
        assert_eq!(p.payload(), &[0xde, 0xad]);
        assert_eq!(
            Packet::new_unchecked(&b[..19]).check_header_len(),
            Err(Error)
        );
    }

    #[test]
    fn fragments() {
        let mut b = sample();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_more_frags(true);
        assert!(p.is_fragment());
        p.set_more_frags(false);
        p.set_frag_offset(1480);
        assert!(p.is_fragment() && p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        p.clear_flags();
        assert!(!p.is_fragment() && !p.dont_frag());
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut b = sample();
        let mut p = Packet::new_unchecked(&mut b[..]);
        for expect in (0..64).rev() {
            assert_eq!(p.decrement_ttl(), expect);
            assert!(p.verify_checksum());
        }
        assert_eq!(p.decrement_ttl(), 0);
        assert!(p.verify_checksum());
    }

    #[test]
    fn repr_round_trip() {
        let b = sample();
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(r.payload_len, 4);
        let mut out = vec![0u8; 24];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        out[20..].copy_from_slice(&b[20..]);
        assert_eq!(out, b);
        let mut bad = b;
        bad[11] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[..]).unwrap()),
            Err(Error)
        );
    }

    #[test]
    fn cidr() {
        let c: Ipv4Cidr = "10.20.9.0/25".parse().unwrap();
        assert_eq!(c.to_string(), "10.20.9.0/25");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 128));
        assert!(c.contains(Ipv4Addr::new(10, 20, 9, 60)));
        assert!(c.contains(Ipv4Addr::new(10, 20, 9, 127)));
        assert!(!c.contains(Ipv4Addr::new(10, 20, 9, 128)));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 20, 9, 127));
        let ifa: Ipv4Cidr = "10.186.153.103/24".parse().unwrap();
        assert_eq!(ifa.network().to_string(), "10.186.153.0/24");
        assert!(ifa.contains(Ipv4Addr::new(10, 186, 153, 254)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)) && all.mask() == 0);
        assert!(all.contains_subnet(&c) && !c.contains_subnet(&all));
        let host: Ipv4Cidr = "10.20.9.60".parse().unwrap();
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(Ipv4Addr::new(10, 20, 9, 60)));
        assert!(!host.contains(Ipv4Addr::new(10, 20, 9, 61)));
        for bad in [
            "10.20.9.0/33",
            "10.20.9.0/",
            "10.20.9/8",
            "10.20.9.0/+8",
            "x/8",
            "10.20.9.0/8/8",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 33), Err(Error));
    }

    /// An IPv4 header built by etherparse from random fields.
    fn arb_header() -> impl Strategy<Value = (etherparse::Ipv4Header, Vec<u8>)> {
        (
            (
                0u8..64,
                0u8..4,
                any::<u16>(),
                any::<bool>(),
                any::<bool>(),
                0u16..0x2000,
            ),
            (any::<u8>(), any::<u8>(), any::<[u8; 4]>(), any::<[u8; 4]>()),
            (0usize..=10).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4)),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |((dscp, ecn, ident, df, mf, off), (ttl, proto, src, dst), opts, payload)| {
                    let mut h = etherparse::Ipv4Header {
                        dscp: etherparse::IpDscp::try_new(dscp).unwrap(),
                        ecn: etherparse::IpEcn::try_new(ecn).unwrap(),
                        total_len: 0,
                        identification: ident,
                        dont_fragment: df,
                        more_fragments: mf,
                        fragment_offset: etherparse::IpFragOffset::try_new(off).unwrap(),
                        time_to_live: ttl,
                        protocol: etherparse::IpNumber(proto),
                        header_checksum: 0,
                        source: src,
                        destination: dst,
                        options: etherparse::Ipv4Options::try_from(&opts[..]).unwrap(),
                    };
                    h.total_len = (h.header_len() + payload.len()) as u16;
                    h.header_checksum = h.calc_header_checksum();
                    (h, payload)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn agrees_with_etherparse((h, payload) in arb_header(), corrupt: bool, pad in 0usize..8) {
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            b.extend(core::iter::repeat_n(0u8, pad));
            if corrupt {
                b[10] ^= 0x40;
            }
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert!(p.is_valid_version());
            prop_assert_eq!(usize::from(p.header_len()), h.header_len());
            prop_assert_eq!(p.dscp(), h.dscp.value());
            prop_assert_eq!(p.ecn(), h.ecn.value());
            prop_assert_eq!(p.total_len(), h.total_len);
            prop_assert_eq!(p.ident(), h.identification);
            prop_assert_eq!(p.dont_frag(), h.dont_fragment);
            prop_assert_eq!(p.more_frags(), h.more_fragments);
            prop_assert_eq!(p.frag_offset(), h.fragment_offset.byte_offset());
            prop_assert_eq!(p.is_fragment(), h.is_fragmenting_payload());
            prop_assert_eq!(p.ttl(), h.time_to_live);
            prop_assert_eq!(u8::from(p.next_header()), h.protocol.0);
            prop_assert_eq!(p.src_addr().octets(), h.source);
            prop_assert_eq!(p.dst_addr().octets(), h.destination);
            prop_assert_eq!(p.options(), h.options.as_slice());
            prop_assert_eq!(p.payload(), &payload[..]);
            prop_assert_eq!(p.verify_checksum(), !corrupt);

            // Our fill_checksum agrees with etherparse's computation.
            let mut b2 = b.clone();
            let mut q = Packet::new_unchecked(&mut b2[..]);
            q.set_checksum(0xbeef);
            q.fill_checksum();
            prop_assert_eq!(q.checksum(), h.header_checksum);
            prop_assert!(q.verify_checksum());
        }

        /// RFC 1624 on real headers: rewrite src/dst (NAT) and TTL incrementally; the result
        /// equals a full recomputation.
        #[test]
        fn incremental_equals_full((h, payload) in arb_header(), new_src: [u8; 4], new_dst: [u8; 4]) {
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            let mut p = Packet::new_checked(&mut b[..]).unwrap();
            let (old_src, old_dst) = (p.src_addr(), p.dst_addr());
            let (new_src, new_dst) = (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst));
            let mut c = p.checksum();
            c = checksum::update_addr(c, old_src, new_src);
            c = checksum::update_addr(c, old_dst, new_dst);
            p.set_src_addr(new_src);
            p.set_dst_addr(new_dst);
            p.set_checksum(c);
            p.decrement_ttl();
            let inc = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(inc, p.checksum());
        }

        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), hl in 0u8..=60, tl: u16) {
            let mut b = bytes;
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.version(), p.is_valid_version(), p.header_len(), p.dscp_ecn(), p.dscp(), p.ecn());
                let _ = (p.total_len(), p.ident(), p.dont_frag(), p.more_frags(), p.frag_offset(), p.is_fragment());
                let _ = (p.ttl(), p.next_header(), p.checksum(), p.src_addr(), p.dst_addr());
                let _ = (p.header().len(), p.options().len(), p.payload().len(), p.verify_checksum());
                let _ = Repr::parse(&p);
                // Setters that make the length fields lie must not make accessors panic.
                p.set_header_len(hl);
                p.set_total_len(tl);
                let _ = (p.header().len(), p.options().len(), p.payload().len(), p.verify_checksum());
                let _ = (p.options_mut().len(), p.payload_mut().len());
                p.fill_checksum();
                p.decrement_ttl();
                p.set_frag_offset(tl);
                p.set_dont_frag(true);
                p.set_more_frags(true);
                p.set_version(15);
                p.set_dscp_ecn(0xff);
                p.set_ident(1);
                p.set_next_header(IpProtocol::Tcp);
                p.set_src_addr(Ipv4Addr::BROADCAST);
                p.set_dst_addr(Ipv4Addr::BROADCAST);
            }
        }

        #[test]
        fn cidr_round_trips(a: [u8; 4], len in 0u8..=32, probe: [u8; 4]) {
            let c = Ipv4Cidr::new(a.into(), len).unwrap();
            prop_assert_eq!(c.to_string().parse::<Ipv4Cidr>(), Ok(c));
            let probe = Ipv4Addr::from(probe);
            let expect = len == 0 || (u32::from(probe) >> (32 - len)) == (u32::from_be_bytes(a) >> (32 - len));
            prop_assert_eq!(c.contains(probe), expect);
            prop_assert!(c.contains(c.network().address()) && c.contains(c.broadcast()));
        }
    }
}
