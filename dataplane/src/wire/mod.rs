//! Typed views over frame bytes.
//!
//! Two levels, after smoltcp's `wire` module:
//!
//! - A *view* (`ethernet::Frame<T>`, `ipv4::Packet<T>`, `udp::Packet<T>`, ...) wraps any
//!   `T: AsRef<[u8]>` and reads or writes header fields in place, at fixed offsets, with no
//!   copy and no allocation. Getters live in `impl<T: AsRef<[u8]>>`, setters in
//!   `impl<T: AsRef<[u8]> + AsMut<[u8]>>`.
//! - A `Repr` (ARP, IPv4, ICMP, VXLAN) is a plain struct for the headers afgate *builds*;
//!   `Repr::emit` writes it through a view.
//!
//! # The contract
//!
//! Frames come from the wire, so any byte sequence is possible. Each view has
//! `new_unchecked` (no check), `check_len` and `new_checked` (= `new_unchecked` + `check_len`).
//!
//! **If `check_len()` returned `Ok(())`, no accessor or setter panics**, whatever the bytes
//! say. Length fields that point past the buffer are rejected by `check_len`; variable-length
//! accessors (`payload`, `options`) additionally clamp to the buffer, so even a setter that
//! later writes a nonsensical length field (e.g. `set_header_len(60)` on a 20-byte buffer)
//! cannot make a getter panic. `check_len` checks *lengths only*: semantic checks (IP
//! version, checksums, ARP hardware type) are separate methods or happen in `Repr::parse`.
//!
//! With `new_unchecked` on a buffer that is too short, accessors may panic on slice
//! indexing; that is a bug in the caller, never undefined behaviour.
//!
//! Protocol numbers are *open* enums (`EtherType`, `IpProtocol`, ...): every value of the
//! underlying integer maps to a variant, unknown ones to `Unknown(n)`, so parsing never fails
//! on an unassigned number. Convert with `From` in both directions; do not construct
//! `Unknown(n)` for a known `n` (it would compare unequal to the named variant).
//!
//! Checksums, full and incremental (RFC 1071, RFC 1624), are in [`checksum`].

use core::fmt;

/// Declares an open enum over an integer type: named variants plus `Unknown($ty)`, with
/// `From` conversions both ways. After smoltcp's `src/macros.rs`.
macro_rules! enum_with_unknown {
    (
        $( #[$enum_attr:meta] )*
        pub enum $name:ident($ty:ty) {
            $(
                $( #[$variant_attr:meta] )*
                $variant:ident = $value:literal
            ),+ $(,)?
        }
    ) => {
        #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Clone, Copy)]
        $( #[$enum_attr] )*
        pub enum $name {
            $(
                $( #[$variant_attr] )*
                $variant,
            )+
            /// A value with no named variant.
            Unknown($ty),
        }

        impl ::core::convert::From<$ty> for $name {
            #[inline]
            fn from(value: $ty) -> Self {
                // Literal patterns, not `v if v == $value` guards: the match compiles to a
                // jump table or a few compares instead of one compare per variant in order.
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            #[inline]
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;
pub mod vxlan;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use ethernet::{EtherType, EthernetAddress, Frame as EthernetFrame};
pub use icmp::{
    DstUnreachable as IcmpDstUnreachable, Message as IcmpMessage, Packet as IcmpPacket,
    Repr as IcmpRepr, TimeExceeded as IcmpTimeExceeded,
};
pub use ipv4::{Ipv4Cidr, Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use ipv6::Packet as Ipv6Packet;
pub use tcp::Packet as TcpPacket;
pub use udp::Packet as UdpPacket;
pub use vlan::Tag as VlanTag;
pub use vxlan::{Header as VxlanHeader, Repr as VxlanRepr};

/// A byte range of a header field, as used in each protocol's private `mod field`.
pub type Field = core::ops::Range<usize>;

/// A frame or header is truncated, or a length field points outside the buffer, or a
/// `Repr` cannot represent what the bytes say.
///
/// Zero-sized on purpose: per-packet code only needs "drop it", and the caller knows which
/// layer it was parsing (it counts its own drop reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Error;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("truncated or malformed packet")
    }
}

impl std::error::Error for Error {}

/// The wire layer's result type.
pub type Result<T> = core::result::Result<T, Error>;

enum_with_unknown! {
    /// IP protocol numbers (IANA "Assigned Internet Protocol Numbers"): IPv4's Protocol
    /// field (RFC 791 §3.1) and IPv6's Next Header (RFC 8200 §3).
    pub enum IpProtocol(u8) {
        /// IPv6 Hop-by-Hop Options (RFC 8200 §4.3).
        HopByHop = 0,
        /// ICMP for IPv4 (RFC 792).
        Icmp = 1,
        /// TCP (RFC 9293).
        Tcp = 6,
        /// UDP (RFC 768).
        Udp = 17,
        /// IPv6 Fragment header (RFC 8200 §4.5).
        Ipv6Frag = 44,
        /// ICMP for IPv6 (RFC 4443).
        Icmpv6 = 58,
    }
}

// Big-endian field access. Indexing panics only if the field lies outside the buffer,
// which `check_len` rules out for every fixed field (see the contract above).

#[inline]
pub(crate) fn get_u16(data: &[u8], field: Field) -> u16 {
    let b = &data[field];
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
pub(crate) fn set_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
pub(crate) fn get_u32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
pub(crate) fn set_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
pub(crate) fn get_ipv4(data: &[u8], field: Field) -> core::net::Ipv4Addr {
    core::net::Ipv4Addr::from(get_u32(data, field))
}

#[inline]
pub(crate) fn set_ipv4(data: &mut [u8], field: Field, addr: core::net::Ipv4Addr) {
    data[field].copy_from_slice(&addr.octets());
}

/// `data[start..end]` with both ends clamped to the buffer, so a lying length field yields
/// a short slice instead of a panic.
#[inline]
pub(crate) fn clamped(data: &[u8], start: usize, end: usize) -> &[u8] {
    let end = end.min(data.len());
    &data[start.min(end)..end]
}

/// Mutable twin of [`clamped`].
#[inline]
pub(crate) fn clamped_mut(data: &mut [u8], start: usize, end: usize) -> &mut [u8] {
    let end = end.min(data.len());
    &mut data[start.min(end)..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_protocol_round_trips() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(n)), n);
        }
        assert_eq!(IpProtocol::from(6), IpProtocol::Tcp);
        assert_eq!(IpProtocol::from(200), IpProtocol::Unknown(200));
    }

    #[test]
    fn clamped_never_panics() {
        let d = [1u8, 2, 3];
        assert_eq!(clamped(&d, 1, 2), &[2]);
        assert_eq!(clamped(&d, 2, 10), &[3]);
        assert_eq!(clamped(&d, 5, 10), &[] as &[u8]);
        assert_eq!(clamped(&d, 3, 1), &[] as &[u8]);
    }

    #[test]
    fn error_displays() {
        assert_eq!(Error.to_string(), "truncated or malformed packet");
    }
}
