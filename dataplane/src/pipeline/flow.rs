//! Flow hashing: one hash of the 5-tuple picks the ECMP next hop (and, later, the bond
//! member and the VXLAN source port), so all packets of a flow take one path.

use crate::wire::Ipv4Packet;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// A 5-tuple hash, symmetric in neither direction (a flow and its reply may hash apart,
/// as Linux's layer3+4 policy does).
#[inline]
pub fn hash_v4(ip: &Ipv4Packet<&[u8]>) -> u32 {
    let src = u32::from(ip.src_addr());
    let dst = u32::from(ip.dst_addr());
    let proto = ip.protocol();
    let ports = match proto {
        TCP | UDP if !ip.is_fragment() => {
            let p = ip.payload();
            if p.len() >= 4 {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            } else {
                0
            }
        }
        _ => 0,
    };
    mix(src, dst, ports, proto as u32)
}

/// A small, fast avalanche mix (murmur3 finaliser over the combined words).
#[inline]
pub fn mix(a: u32, b: u32, c: u32, d: u32) -> u32 {
    let mut h = a.wrapping_mul(0x9E37_79B1) ^ b.rotate_left(13) ^ c.wrapping_mul(0x85EB_CA6B) ^ d;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}
