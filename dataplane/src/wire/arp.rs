//! ARP for IPv4 over Ethernet (RFC 826).
//!
//! afgate only speaks Ethernet/IPv4 ARP (proxy ARP for the pod gateway, next-hop
//! resolution), so the view uses the fixed 28-byte layout for hardware length 6 and protocol
//! length 4. `check_len` guarantees those 28 bytes; [`Repr::parse`] rejects packets whose
//! hardware/protocol type or lengths say otherwise.

use core::net::Ipv4Addr;

use super::ethernet::{EtherType, EthernetAddress};
use super::{Error, Result};

enum_with_unknown! {
    /// ARP hardware type (`ar$hrd`, IANA "Hardware Types").
    pub enum Hardware(u16) {
        /// Ethernet (10Mb), used by every Ethernet-like link.
        Ethernet = 1,
    }
}

enum_with_unknown! {
    /// ARP opcode (`ar$op`, RFC 826).
    pub enum Operation(u16) {
        /// Who has `tpa`? Tell `spa`.
        Request = 1,
        /// `spa` is at `sha`.
        Reply = 2,
    }
}

mod field {
    use crate::wire::Field;

    // RFC 826 "Packet format", with ar$hln = 6 and ar$pln = 4.
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
    pub const END: usize = 28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::END;

/// A view of an Ethernet/IPv4 ARP packet.
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

    /// Wraps a buffer, checking that it holds 28 bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Err` if the buffer is shorter than the Ethernet/IPv4 layout (28 bytes).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < field::END {
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

    /// Hardware type.
    #[inline]
    pub fn hardware_type(&self) -> Hardware {
        Hardware::from(super::get_u16(self.buffer.as_ref(), field::HTYPE))
    }

    /// Protocol type (an EtherType).
    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(super::get_u16(self.buffer.as_ref(), field::PTYPE))
    }

    /// Hardware address length.
    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length.
    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Opcode.
    #[inline]
    pub fn operation(&self) -> Operation {
        Operation::from(super::get_u16(self.buffer.as_ref(), field::OPER))
    }

    /// Sender hardware address.
    #[inline]
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        EthernetAddress(a)
    }

    /// Sender protocol address.
    #[inline]
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        super::get_ipv4(self.buffer.as_ref(), field::SPA)
    }

    /// Target hardware address (ignored in requests, RFC 826).
    #[inline]
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        EthernetAddress(a)
    }

    /// Target protocol address.
    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        super::get_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware type.
    #[inline]
    pub fn set_hardware_type(&mut self, v: Hardware) {
        super::set_u16(self.buffer.as_mut(), field::HTYPE, v.into());
    }

    /// Sets the protocol type.
    #[inline]
    pub fn set_protocol_type(&mut self, v: EtherType) {
        super::set_u16(self.buffer.as_mut(), field::PTYPE, v.into());
    }

    /// Sets the hardware address length.
    #[inline]
    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HLEN] = v;
    }

    /// Sets the protocol address length.
    #[inline]
    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::PLEN] = v;
    }

    /// Sets the opcode.
    #[inline]
    pub fn set_operation(&mut self, v: Operation) {
        super::set_u16(self.buffer.as_mut(), field::OPER, v.into());
    }

    /// Sets the sender hardware address.
    #[inline]
    pub fn set_source_hardware_addr(&mut self, a: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&a.0);
    }

    /// Sets the sender protocol address.
    #[inline]
    pub fn set_source_protocol_addr(&mut self, a: Ipv4Addr) {
        super::set_ipv4(self.buffer.as_mut(), field::SPA, a);
    }

    /// Sets the target hardware address.
    #[inline]
    pub fn set_target_hardware_addr(&mut self, a: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&a.0);
    }

    /// Sets the target protocol address.
    #[inline]
    pub fn set_target_protocol_addr(&mut self, a: Ipv4Addr) {
        super::set_ipv4(self.buffer.as_mut(), field::TPA, a);
    }
}

/// An Ethernet/IPv4 ARP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Request or reply (other opcodes are kept, e.g. to count them).
    pub operation: Operation,
    /// Sender MAC.
    pub source_hardware_addr: EthernetAddress,
    /// Sender IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC (zero in requests).
    pub target_hardware_addr: EthernetAddress,
    /// Target IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parses a packet; `Err` unless it is Ethernet (1) / IPv4 (0x0800) with lengths 6/4.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if p.hardware_type() != Hardware::Ethernet
            || p.protocol_type() != EtherType::Ipv4
            || p.hardware_len() != 6
            || p.protocol_len() != 4
        {
            return Err(Error);
        }
        Ok(Repr {
            operation: p.operation(),
            source_hardware_addr: p.source_hardware_addr(),
            source_protocol_addr: p.source_protocol_addr(),
            target_hardware_addr: p.target_hardware_addr(),
            target_protocol_addr: p.target_protocol_addr(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes: 28.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet; the view must hold [`buffer_len`](Self::buffer_len) bytes.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_hardware_type(Hardware::Ethernet);
        p.set_protocol_type(EtherType::Ipv4);
        p.set_hardware_len(6);
        p.set_protocol_len(4);
        p.set_operation(self.operation);
        p.set_source_hardware_addr(self.source_hardware_addr);
        p.set_source_protocol_addr(self.source_protocol_addr);
        p.set_target_hardware_addr(self.target_hardware_addr);
        p.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Who has 169.254.1.1? Tell 10.20.9.60 (a pod asking for its gateway).
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype, ptype, hlen, plen, op
        0x02, 0x00, 0x00, 0x00, 0x00, 0x3c, 10, 20, 9, 60, // sha, spa
        0, 0, 0, 0, 0, 0, 169, 254, 1, 1, // tha, tpa
    ];

    fn request_repr() -> Repr {
        Repr {
            operation: Operation::Request,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 0x3c]),
            source_protocol_addr: Ipv4Addr::new(10, 20, 9, 60),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::new(169, 254, 1, 1),
        }
    }

    #[test]
    fn parse() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), Hardware::Ethernet);
        assert_eq!(p.protocol_type(), EtherType::Ipv4);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(Repr::parse(&p), Ok(request_repr()));
    }

    #[test]
    fn emit() {
        let mut buf = [0xffu8; 28];
        let repr = request_repr();
        assert_eq!(repr.buffer_len(), 28);
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn rejects() {
        assert_eq!(Packet::new_checked(&REQUEST[..27]), Err(Error));
        let mut b = REQUEST;
        b[4] = 8; // hlen
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error)
        );
        let mut b = REQUEST;
        b[2] = 0x86; // ptype 0x86dd-ish
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error)
        );
    }

    #[test]
    fn agrees_with_etherparse() {
        let ep = etherparse::ArpPacket::from_slice(&REQUEST)
            .unwrap()
            .try_eth_ipv4()
            .unwrap();
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(u16::from(p.operation()), ep.operation.0);
        assert_eq!(p.source_hardware_addr().0, ep.sender_mac);
        assert_eq!(p.source_protocol_addr().octets(), ep.sender_ipv4);
        assert_eq!(p.target_hardware_addr().0, ep.target_mac);
        assert_eq!(p.target_protocol_addr().octets(), ep.target_ipv4);
    }

    proptest! {
        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut b = bytes;
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.hardware_type(), p.protocol_type(), p.hardware_len(), p.protocol_len(), p.operation());
                let _ = (p.source_hardware_addr(), p.source_protocol_addr(), p.target_hardware_addr(), p.target_protocol_addr());
                if let Ok(r) = Repr::parse(&p) {
                    r.emit(&mut p);
                    prop_assert_eq!(Repr::parse(&p), Ok(r));
                }
            }
        }

        #[test]
        fn round_trip(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) {
            let r = Repr {
                operation: Operation::from(op),
                source_hardware_addr: EthernetAddress(sha),
                source_protocol_addr: spa.into(),
                target_hardware_addr: EthernetAddress(tha),
                target_protocol_addr: tpa.into(),
            };
            let mut buf = [0u8; 28];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), Ok(r));
        }
    }
}
