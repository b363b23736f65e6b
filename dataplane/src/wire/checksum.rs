//! The Internet checksum: full (RFC 1071) and incremental (RFC 1624).
//!
//! Conventions, used everywhere in `wire`:
//!
//! - A *sum* is the 16-bit one's-complement sum of some bytes, **folded but not
//!   complemented**: [`data`], [`pseudo_header_v4`] and [`combine`] return sums. A sum is
//!   `0` only for all-zero input, otherwise it lies in `1..=0xffff`.
//! - A *checksum* is what goes on the wire: `!sum` of the covered bytes with the checksum
//!   field zeroed. A receiver that sums the covered bytes *including* the checksum field gets
//!   `0xffff` when the data is intact.
//!
//! NAT (address and port rewrites), TTL decrement and VXLAN length patches change a few
//! 16/32-bit words of a header whose checksum is already valid; [`update16`], [`update32`]
//! and [`update_addr`] patch the checksum in O(1) instead of re-summing the packet (as VPP's
//! `ip_csum_update` does). For TCP/UDP, the pseudo-header (RFC 9293 §3.1, RFC 768) makes the
//! IP addresses part of the transport checksum too: after an SNAT, update *both* the IPv4
//! header checksum and the L4 checksum with the same `update_addr(old, new)`.
//!
//! UDP over IPv4 is special (RFC 768): a transmitted checksum of `0` means "no checksum", so
//! a computed `0` is sent as `0xffff`, and a received `0` must not be updated incrementally.
//! [`crate::wire::udp::Packet::update_checksum`] encodes both rules.

use core::net::Ipv4Addr;

use super::IpProtocol;

/// Folds a wide one's-complement accumulator to 16 bits (end-around carry, RFC 1071 §2(B)).
///
/// Branch-free and short (a loop until no carry is left costs a data-dependent branch per
/// checksum on the NAT path): 64 → 32 bits with the carry added back (it cannot carry
/// again: two `u32`s that overflow sum to at most 2^33 − 2), then Linux's `csum_fold`:
/// `s + rotl(s, 16)` holds `hi + lo` with its end-around carry in the upper half.
#[inline]
const fn fold(sum: u64) -> u16 {
    let (s, carry) = (sum as u32).overflowing_add((sum >> 32) as u32);
    let s = s.wrapping_add(carry as u32);
    (s.wrapping_add(s.rotate_left(16)) >> 16) as u16
}

/// [`fold`] for callers that sum words themselves (e.g. a fixed-size header as five
/// 32-bit words): the folded, uncomplemented sum.
#[inline]
pub fn fold_sum(acc: u64) -> u16 {
    fold(acc)
}

/// The folded one's-complement sum of `bytes` as big-endian 16-bit words, an odd last byte
/// padded with a zero byte on the right (RFC 1071 §4.1). Not complemented: see the module
/// docs. Returns `0` only if every byte is zero.
///
/// Sums 32-bit words into a 64-bit accumulator: since 2^16 ≡ 1 (mod 0xffff), summing wider
/// words gives the same folded result as summing 16-bit words (RFC 1071 §2(C), "parallel
/// summation"), with half as many additions, and 2^32 words cannot overflow the accumulator.
#[inline]
pub fn data(bytes: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    fold(acc)
}

/// One's-complement sum of several sums (e.g. the pseudo-header sum and the segment sum).
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The sum of the IPv4 pseudo-header that TCP and UDP checksums cover: source, destination,
/// zero + protocol, and the L4 length (RFC 768; RFC 9293 §3.1).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, length: u16) -> u16 {
    let acc = u64::from(u32::from(src))
        + u64::from(u32::from(dst))
        + u64::from(u8::from(proto))
        + u64::from(length);
    fold(acc)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changes from
/// `old` to `new`: `HC' = ~(~HC + ~m + m')`.
///
/// Eqn. 3, not RFC 1141's `HC' = HC + m + ~m'`: that one yields `0xffff` (−0) in RFC 1624
/// §4's example where a full recomputation gives `0x0000`. Eqn. 3 agrees with a full
/// recomputation whenever the new covered data is not all zeros, which holds for every
/// header it is used on (IPv4's version nibble and the pseudo-header's protocol are never
/// zero).
///
/// For a UDP checksum, do not call this when the checksum is `0` ("none"), and send a `0`
/// result as `0xffff`: see [`crate::wire::udp::Packet::update_checksum`].
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!csum) + u64::from(!old) + u64::from(new))
}

/// [`update16`] for a 32-bit field (both halves at once), e.g. a TCP sequence number.
#[inline]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    // Each 32-bit value's halves are two 16-bit words of the covered data; ~old of the u32 is
    // the complement of both halves.
    let acc = u64::from(!csum)
        + u64::from(!old >> 16)
        + u64::from(!old & 0xffff)
        + u64::from(new >> 16)
        + u64::from(new & 0xffff);
    !fold(acc)
}

/// The checksum after changes whose one's-complement sum is `delta`: for each changed
/// field, `!old + new` as `u32` (a 32-bit field) or `u16` words, added up in a `u64`. Equal to
/// applying [`update16`]/[`update32`] field by field, with one fold instead of one per field
/// (RFC 1624 eqn. 3 over the sum of the changes).
#[inline]
pub fn apply(csum: u16, delta: u64) -> u16 {
    !fold(u64::from(!csum) + delta)
}

/// [`update32`] for an IPv4 address, e.g. the source address rewritten by SNAT. Apply it to
/// the IPv4 header checksum *and* to the TCP/UDP checksum (pseudo-header).
#[inline]
pub fn update_addr(csum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update32(csum, u32::from(old), u32::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A straight port of RFC 1071 §4.1's C reference: 16-bit words into a 32-bit
    /// accumulator, the odd byte, then fold. Returns the sum (the C code returns `~sum`).
    fn rfc1071_reference(addr: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut count = addr.len();
        let mut i = 0;
        while count > 1 {
            sum += u32::from(u16::from_be_bytes([addr[i], addr[i + 1]]));
            i += 2;
            count -= 2;
        }
        if count > 0 {
            // The C code adds the byte in host order on a big-endian machine's view: the
            // byte is the high half of a zero-padded word.
            sum += u32::from(addr[i]) << 8;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// A word that is biased towards RFC 1624's edge cases.
    fn edgy_u16() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(0x0000u16),
            Just(0xffff),
            Just(0x0001),
            Just(0xfffe),
            any::<u16>()
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The branch-free fold equals RFC 1071's "add the carries until none is left", for
        /// any 64-bit accumulator.
        #[test]
        fn fold_matches_carry_loop(x in any::<u64>()) {
            let mut s = x;
            while s >> 16 != 0 {
                s = (s & 0xffff) + (s >> 16);
            }
            prop_assert_eq!(fold(x), s as u16);
        }

        #[test]
        fn data_matches_rfc1071(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            prop_assert_eq!(data(&bytes), rfc1071_reference(&bytes));
        }

        #[test]
        fn data_matches_rfc1071_saturated(len in 0usize..1600, fill in prop_oneof![Just(0u8), Just(0xff)]) {
            let bytes = vec![fill; len];
            prop_assert_eq!(data(&bytes), rfc1071_reference(&bytes));
        }

        /// Splitting a buffer at an even offset and combining the sums equals the whole sum.
        #[test]
        fn combine_is_additive(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..300) {
            let cut = (cut * 2).min(bytes.len() & !1);
            let (a, b) = bytes.split_at(cut);
            let whole = data(&bytes);
            let parts = combine(&[data(a), data(b)]);
            // Same value modulo 0xffff; both are 0 only for all-zero input.
            prop_assert_eq!(whole % 0xffff, parts % 0xffff);
            prop_assert_eq!(whole == 0, parts == 0);
        }

        /// RFC 1624: an incremental update of one 16-bit word equals a full recomputation.
        #[test]
        fn update16_equals_recompute(
            mut words in proptest::collection::vec(edgy_u16(), 2..30),
            idx in any::<prop::sample::Index>(),
            new in edgy_u16(),
        ) {
            // Word 0 stands for a field that is never zero (IPv4's version/IHL byte), which
            // keeps the covered data non-zero; without it, full recomputation itself has the
            // ±0 ambiguity that RFC 1624 §5 describes.
            words[0] |= 0x4500;
            let i = 1 + idx.index(words.len() - 1);
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let csum = !data(&bytes(&words));
            let old = words[i];
            words[i] = new;
            let full = !data(&bytes(&words));
            let inc = update16(csum, old, new);
            prop_assert_eq!(inc, full);
            // And the receiver's check passes.
            let mut with = bytes(&words);
            with.extend_from_slice(&inc.to_be_bytes());
            prop_assert_eq!(data(&with), 0xffff);
        }

        #[test]
        fn update32_equals_recompute(
            mut words in proptest::collection::vec(edgy_u16(), 3..30),
            idx in any::<prop::sample::Index>(),
            new_hi in edgy_u16(),
            new_lo in edgy_u16(),
        ) {
            words[0] |= 0x4500;
            let i = 1 + idx.index(words.len() - 2);
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let csum = !data(&bytes(&words));
            let old = (u32::from(words[i]) << 16) | u32::from(words[i + 1]);
            let new = (u32::from(new_hi) << 16) | u32::from(new_lo);
            words[i] = new_hi;
            words[i + 1] = new_lo;
            prop_assert_eq!(update32(csum, old, new), !data(&bytes(&words)));
            // Two 16-bit updates compose to the same result.
            let two = update16(update16(csum, (old >> 16) as u16, new_hi), old as u16, new_lo);
            prop_assert_eq!(two, update32(csum, old, new));
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000
        // (eqn. 3), which a full recomputation agrees with.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn empty_and_zero() {
        assert_eq!(data(&[]), 0);
        assert_eq!(data(&[0; 7]), 0);
        assert_eq!(data(&[0xff, 0xff]), 0xffff);
        assert_eq!(data(&[0xab]), 0xab00);
        assert_eq!(combine(&[]), 0);
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
    }

    #[test]
    fn pseudo_header_matches_bytes() {
        let src = Ipv4Addr::new(10, 20, 9, 60);
        let dst = Ipv4Addr::new(10, 96, 10, 1);
        let mut b = Vec::new();
        b.extend_from_slice(&src.octets());
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&[0, 6, 0x05, 0xdc]);
        assert_eq!(pseudo_header_v4(src, dst, IpProtocol::Tcp, 1500), data(&b));
    }

    #[test]
    fn update_addr_matches_update32() {
        let a = Ipv4Addr::new(10, 20, 9, 60);
        let b = Ipv4Addr::new(10, 186, 153, 103);
        assert_eq!(
            update_addr(0x1234, a, b),
            update32(0x1234, a.into(), b.into())
        );
    }
}
