//! TCP header (RFC 9293 §3.1).
//!
//! Wrap the whole segment (the IP payload): the checksum and the pseudo-header length cover
//! all of it, since TCP has no length field of its own.

use core::net::Ipv4Addr;

use super::{Error, IpProtocol, Result, checksum};

mod field {
    use crate::wire::Field;

    // RFC 9293 §3.1, "Header Format".
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (high nibble of byte 12), then the control bits.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// Control bits of byte 13 (RFC 9293 §3.1; ECE/CWR from RFC 3168 §6.1).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo.
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced.
    pub const CWR: u8 = 0x80;
}

/// A view of a TCP segment.
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

    /// `Err` unless the buffer holds 20 bytes, data offset ≥ 5, and the buffer holds the
    /// header with its options.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        super::get_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        super::get_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4), 0..=60.
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The eight control bits as one byte; test with [`flags`] constants.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// FIN.
    #[inline]
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    /// SYN.
    #[inline]
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// RST.
    #[inline]
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    /// PSH.
    #[inline]
    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    /// ACK.
    #[inline]
    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    /// URG.
    #[inline]
    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    /// ECE.
    #[inline]
    pub fn ece(&self) -> bool {
        self.flags() & flags::ECE != 0
    }

    /// CWR.
    #[inline]
    pub fn cwr(&self) -> bool {
        self.flags() & flags::CWR != 0
    }

    /// Window.
    #[inline]
    pub fn window_len(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    /// Checksum as on the wire.
    #[inline]
    pub fn checksum(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        super::get_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Options (20..header_len), unparsed.
    #[inline]
    pub fn options(&self) -> &[u8] {
        super::clamped(
            self.buffer.as_ref(),
            HEADER_LEN,
            usize::from(self.header_len()),
        )
    }

    /// Segment data after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        super::clamped(
            self.buffer.as_ref(),
            usize::from(self.header_len()),
            usize::MAX,
        )
    }

    /// Pseudo-header plus segment sum.
    fn sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let seg = self.buffer.as_ref();
        // An IPv4 payload is < 64 KiB, so the segment length fits the pseudo-header field.
        let len = u16::try_from(seg.len()).unwrap_or(u16::MAX);
        checksum::combine(&[
            checksum::pseudo_header_v4(src, dst, IpProtocol::Tcp, len),
            checksum::data(seg),
        ])
    }

    /// The checksum over pseudo-header and the whole buffer is correct.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.sum(src, dst) == 0xffff
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, v: u32) {
        super::set_u32(self.buffer.as_mut(), field::SEQ_NUM, v);
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, v: u32) {
        super::set_u32(self.buffer.as_mut(), field::ACK_NUM, v);
    }

    /// Sets the header length in bytes (stored as len / 4; the reserved bits are kept).
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0f) | (((len / 4) & 0x0f) << 4);
    }

    /// Sets all eight control bits.
    #[inline]
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the window.
    #[inline]
    pub fn set_window_len(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::WIN_SIZE, v);
    }

    /// Sets the checksum.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent_at(&mut self, v: u16) {
        super::set_u16(self.buffer.as_mut(), field::URGENT, v);
    }

    /// Recomputes the checksum over pseudo-header and the whole buffer.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = self.sum(src, dst);
        self.set_checksum(!sum);
    }

    /// Mutable options.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        super::clamped_mut(self.buffer.as_mut(), HEADER_LEN, end)
    }

    /// Mutable payload.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        super::clamped_mut(self.buffer.as_mut(), start, usize::MAX)
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
    const DST: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);

    #[test]
    fn build_and_parse() {
        let mut b = [0u8; 24 + 3];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_src_port(40000);
        p.set_dst_port(80);
        p.set_seq_number(0xdead_beef);
        p.set_ack_number(1);
        p.set_header_len(24);
        p.set_flags(flags::SYN | flags::ACK);
        p.set_window_len(65535);
        p.options_mut().copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
        p.payload_mut().copy_from_slice(b"abc");
        p.fill_checksum(SRC, DST);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 80));
        assert_eq!((p.seq_number(), p.ack_number()), (0xdead_beef, 1));
        assert_eq!(p.header_len(), 24);
        assert!(p.syn() && p.ack() && !p.fin() && !p.rst());
        assert_eq!(p.options(), &[2, 4, 0x05, 0xb4]);
        assert_eq!(p.payload(), b"abc");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, SRC.to_bits().wrapping_add(1).into()));
    }

    #[test]
    fn check_len_rejects() {
        let mut b = [0u8; 24];
        b[12] = 0x40; // data offset 4
        assert_eq!(Packet::new_checked(&b[..]), Err(Error));
        b[12] = 0x70; // 28 > 24
        assert_eq!(Packet::new_checked(&b[..]), Err(Error));
        b[12] = 0x60;
        assert!(Packet::new_checked(&b[..]).is_ok());
        assert_eq!(Packet::new_checked(&b[..19]), Err(Error));
    }

    fn arb_segment() -> impl Strategy<Value = (etherparse::TcpHeader, Vec<u8>, [u8; 4], [u8; 4])> {
        (
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u16>(),
            ),
            any::<u8>(),
            (0usize..=10).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4)),
            proptest::collection::vec(any::<u8>(), 0..200),
            (any::<[u8; 4]>(), any::<[u8; 4]>()),
        )
            .prop_map(
                |((sp, dp, seq, ack, win, urg), fl, opts, payload, (src, dst))| {
                    let mut h = etherparse::TcpHeader::new(sp, dp, seq, win);
                    h.acknowledgment_number = ack;
                    h.urgent_pointer = urg;
                    h.fin = fl & flags::FIN != 0;
                    h.syn = fl & flags::SYN != 0;
                    h.rst = fl & flags::RST != 0;
                    h.psh = fl & flags::PSH != 0;
                    h.ack = fl & flags::ACK != 0;
                    h.urg = fl & flags::URG != 0;
                    h.ece = fl & flags::ECE != 0;
                    h.cwr = fl & flags::CWR != 0;
                    h.options = etherparse::TcpOptions::try_from_slice(&opts).unwrap();
                    h.checksum = h.calc_checksum_ipv4_raw(src, dst, &payload).unwrap();
                    (h, payload, src, dst)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn agrees_with_etherparse((h, payload, src, dst) in arb_segment()) {
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!((p.src_port(), p.dst_port()), (h.source_port, h.destination_port));
            prop_assert_eq!((p.seq_number(), p.ack_number()), (h.sequence_number, h.acknowledgment_number));
            prop_assert_eq!(usize::from(p.header_len()), h.header_len());
            prop_assert_eq!(
                (p.fin(), p.syn(), p.rst(), p.psh(), p.ack(), p.urg(), p.ece(), p.cwr()),
                (h.fin, h.syn, h.rst, h.psh, h.ack, h.urg, h.ece, h.cwr)
            );
            prop_assert_eq!(p.window_len(), h.window_size);
            prop_assert_eq!(p.urgent_at(), h.urgent_pointer);
            prop_assert_eq!(p.checksum(), h.checksum);
            prop_assert_eq!(p.options(), h.options.as_slice());
            prop_assert_eq!(p.payload(), &payload[..]);
            prop_assert!(p.verify_checksum(src, dst));

            let mut b2 = b.clone();
            let mut q = Packet::new_unchecked(&mut b2[..]);
            q.set_checksum(!h.checksum);
            q.fill_checksum(src, dst);
            prop_assert_eq!(q.checksum(), h.checksum);
        }

        /// DNAT + sequence rewrite, incrementally; equals full recomputation.
        #[test]
        fn incremental_nat((h, payload, src, dst) in arb_segment(), ndst: [u8; 4], ndp: u16, nseq: u32) {
            let mut b = h.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            let (src, dst, ndst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst), Ipv4Addr::from(ndst));
            let mut p = Packet::new_checked(&mut b[..]).unwrap();
            let mut c = checksum::update_addr(p.checksum(), dst, ndst);
            c = checksum::update16(c, p.dst_port(), ndp);
            c = checksum::update32(c, p.seq_number(), nseq);
            p.set_dst_port(ndp);
            p.set_seq_number(nseq);
            p.set_checksum(c);
            prop_assert!(p.verify_checksum(src, ndst));
            p.fill_checksum(src, ndst);
            prop_assert_eq!(c, p.checksum());
        }

        #[test]
        fn no_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), hl: u8) {
            let mut b = bytes;
            if let Ok(mut p) = Packet::new_checked(&mut b[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(), p.header_len(), p.flags());
                let _ = (p.fin(), p.syn(), p.rst(), p.psh(), p.ack(), p.urg(), p.ece(), p.cwr());
                let _ = (p.window_len(), p.checksum(), p.urgent_at(), p.options().len(), p.payload().len());
                let _ = p.verify_checksum(SRC, DST);
                p.set_header_len(hl);
                let _ = (p.options().len(), p.payload().len(), p.options_mut().len(), p.payload_mut().len());
                p.fill_checksum(SRC, DST);
                prop_assert!(p.verify_checksum(SRC, DST));
                p.set_flags(0xff);
                p.set_window_len(0);
                p.set_urgent_at(0);
            }
        }
    }
}
