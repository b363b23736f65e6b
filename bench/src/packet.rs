//! The generator's frames: one template per run, built with afgate's own `wire` views, and
//! the few fields that change per packet (flow tuple, sequence number, timestamp) patched in
//! place with incremental checksum updates (RFC 1624) — no per-packet build.
//!
//! The stamp the sink reads back:
//! - UDP: the first 14 payload bytes are `magic:u16 flow:u32 seq:u32 ts:u32`.
//! - TCP: a 64-byte frame leaves 6 payload bytes, so `seq` travels in the TCP sequence
//!   number, `ts` in the acknowledgement number, and the payload is `magic:u16 flow:u32`.
//!
//! `ts` is the low 32 bits of CLOCK_MONOTONIC in ns: latencies up to 4.29 s are read
//! correctly with wrapping arithmetic, which is plenty for one host.

use afgate_dataplane::wire::IpProtocol;
use afgate_dataplane::wire::checksum;
use afgate_dataplane::wire::{
    EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket,
    VxlanHeader, VxlanRepr, ipv4, tcp, udp, vlan, vxlan,
};
use std::net::Ipv4Addr;

pub const MAGIC: u16 = 0xafb3;
/// Bytes of the UDP stamp.
pub const UDP_STAMP: usize = 14;
/// Bytes of the TCP payload stamp.
pub const TCP_STAMP: usize = 6;
pub const VXLAN_PORT: u16 = 4789;

/// TCP flags (RFC 9293 §3.1).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Which traffic the generator sends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    Udp,
    /// TCP SYNs: every packet would open a connection (new-connection load on NAT/conntrack).
    TcpSyn,
    /// TCP ACKs with data: established-like flows.
    TcpAck,
}

/// Outer headers for VXLAN-encapsulated traffic (RFC 7348), as a remote VTEP would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub vni: u32,
}

/// Everything that decides the bytes of the generator's frames.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSpec {
    pub proto: Proto,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Source address of flow 0; flows beyond `sports` step it by one.
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub sport_base: u16,
    /// Distinct source ports before the source address changes (1..=60000).
    pub sports: u16,
    pub dport: u16,
    /// Number of distinct five-tuples, 1..=1M.
    pub flows: u32,
    /// Frame size on the wire including the 4-byte FCS (64..=1518); what AF_XDP sends is 4
    /// bytes shorter. Raised to the smallest size that holds the headers and the stamp.
    pub frame_len: usize,
    /// An 802.1Q tag on the (outer) frame.
    pub vlan: Option<u16>,
    pub vxlan: Option<VxlanSpec>,
}

impl TrafficSpec {
    /// The five-tuple source of flow `f`.
    #[inline]
    pub fn flow_src(&self, f: u32) -> (Ipv4Addr, u16) {
        let sports = u32::from(self.sports.max(1));
        let port = self.sport_base.wrapping_add((f % sports) as u16);
        let ip = u32::from(self.src_ip).wrapping_add(f / sports);
        (Ipv4Addr::from(ip), port)
    }

    /// The flow a received (source, source port) belongs to, if it is one of ours.
    pub fn flow_of(&self, src: Ipv4Addr, sport: u16) -> Option<u32> {
        let sports = u32::from(self.sports.max(1));
        let hi = u32::from(src).checked_sub(u32::from(self.src_ip))?;
        let lo = u32::from(sport.checked_sub(self.sport_base)?);
        let f = hi.checked_mul(sports)?.checked_add(lo)?;
        (lo < sports && f < self.flows).then_some(f)
    }
}

/// Offsets into a built frame, for the per-packet patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The (inner) IPv4 header.
    pub l3: usize,
    pub l4: usize,
    pub payload: usize,
    pub proto: Proto,
    /// Outer UDP header of a VXLAN frame, whose source port carries the flow hash.
    pub outer_udp: Option<usize>,
    pub len: usize,
}

/// A built frame for flow 0, sequence 0, timestamp 0.
#[derive(Debug, Clone)]
pub struct Template {
    pub bytes: Vec<u8>,
    pub layout: Layout,
}

const ETH: usize = afgate_dataplane::wire::ethernet::HEADER_LEN;
const TAG: usize = 4;
const VXLAN_OUTER: usize = ETH + ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;

/// Builds the template frame.
pub fn build(spec: &TrafficSpec) -> Template {
    let l4_hdr = match spec.proto {
        Proto::Udp => udp::HEADER_LEN,
        _ => tcp::HEADER_LEN,
    };
    let stamp = match spec.proto {
        Proto::Udp => UDP_STAMP,
        _ => TCP_STAMP,
    };
    let tag = if spec.vlan.is_some() { TAG } else { 0 };
    let outer = if spec.vxlan.is_some() { VXLAN_OUTER } else { 0 };
    let min = tag + outer + ETH + ipv4::HEADER_LEN + l4_hdr + stamp;
    let len = spec.frame_len.saturating_sub(4).clamp(min, 1514 + tag);
    let mut b = vec![0u8; len];

    // The frame is written from the inside out: the (inner) packet first, at its final
    // offset, then the outer headers in front of it.
    let inner_eth = tag + outer;
    let l3 = inner_eth + ETH;
    let l4 = l3 + ipv4::HEADER_LEN;
    let payload = l4 + l4_hdr;
    let (src, sport) = spec.flow_src(0);
    {
        let mut e = EthernetFrame::new_unchecked(&mut b[inner_eth..]);
        e.set_dst_addr(EthernetAddress(spec.dst_mac));
        e.set_src_addr(EthernetAddress(spec.src_mac));
        e.set_ethertype(EtherType::Ipv4);
    }
    let l4_len = len - l4;
    Ipv4Repr {
        src_addr: src,
        dst_addr: spec.dst_ip,
        next_header: match spec.proto {
            Proto::Udp => IpProtocol::Udp,
            _ => IpProtocol::Tcp,
        },
        payload_len: l4_len,
        ttl: 64,
        dscp_ecn: 0,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut b[l3..]));
    b[payload..payload + 2].copy_from_slice(&MAGIC.to_be_bytes());
    match spec.proto {
        Proto::Udp => {
            let mut u = UdpPacket::new_unchecked(&mut b[l4..]);
            u.set_src_port(sport);
            u.set_dst_port(spec.dport);
            u.set_len(l4_len as u16);
            u.fill_checksum(src, spec.dst_ip);
        }
        Proto::TcpSyn | Proto::TcpAck => {
            let mut t = TcpPacket::new_unchecked(&mut b[l4..]);
            t.set_src_port(sport);
            t.set_dst_port(spec.dport);
            t.set_header_len(tcp::HEADER_LEN as u8);
            t.set_flags(if spec.proto == Proto::TcpSyn {
                TCP_SYN
            } else {
                TCP_ACK
            });
            t.set_window_len(65535);
            t.fill_checksum(src, spec.dst_ip);
        }
    }
    let mut outer_udp = None;
    if let Some(vx) = spec.vxlan {
        let o = tag;
        {
            let mut e = EthernetFrame::new_unchecked(&mut b[o..]);
            e.set_dst_addr(EthernetAddress(vx.dst_mac));
            e.set_src_addr(EthernetAddress(vx.src_mac));
            e.set_ethertype(EtherType::Ipv4);
        }
        let ol3 = o + ETH;
        let ol4 = ol3 + ipv4::HEADER_LEN;
        Ipv4Repr {
            src_addr: vx.src_ip,
            dst_addr: vx.dst_ip,
            next_header: IpProtocol::Udp,
            payload_len: len - ol4,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut b[ol3..]));
        let mut u = UdpPacket::new_unchecked(&mut b[ol4..]);
        u.set_src_port(flow_port(0));
        u.set_dst_port(VXLAN_PORT);
        u.set_len((len - ol4) as u16);
        // Zero: no outer checksum, as Linux's vxlan device sends by default (RFC 7348 §5).
        u.set_checksum(0);
        VxlanRepr { vni: vx.vni }.emit(&mut VxlanHeader::new_unchecked(
            &mut b[ol4 + udp::HEADER_LEN..],
        ));
        outer_udp = Some(ol4);
    }
    if let Some(vid) = spec.vlan {
        // `insert` wants the tag's room in front of an untagged frame: the first TAG bytes
        // are still zero.
        vlan::insert(&mut b, EtherType::Vlan, vid & 0x0fff).expect("frame holds a tag");
    }
    Template {
        bytes: b,
        layout: Layout {
            l3,
            l4,
            payload,
            proto: spec.proto,
            outer_udp,
            len,
        },
    }
}

/// The outer UDP source port of a VXLAN frame for flow `f`: the entropy RFC 7348 §5 asks for.
#[inline]
fn flow_port(f: u32) -> u16 {
    49152 + (f % 16384) as u16
}

#[inline]
fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the varying fields of a frame built by [`build`] (with the same `spec`) in place.
/// `frame` must be exactly the template's length.
#[inline]
pub fn stamp(frame: &mut [u8], lay: &Layout, spec: &TrafficSpec, flow: u32, seq: u32, ts: u32) {
    let (src, sport) = spec.flow_src(flow);
    let new_src = u32::from(src);
    let old_src = get32(frame, lay.l3 + 12);
    let old_sport = get16(frame, lay.l4);
    let csum_at = match lay.proto {
        Proto::Udp => lay.l4 + 6,
        _ => lay.l4 + 16,
    };
    let mut l4c = get16(frame, csum_at);
    if old_src != new_src {
        let ipc = get16(frame, lay.l3 + 10);
        put16(
            frame,
            lay.l3 + 10,
            checksum::update32(ipc, old_src, new_src),
        );
        put32(frame, lay.l3 + 12, new_src);
        l4c = checksum::update32(l4c, old_src, new_src);
    }
    if old_sport != sport {
        put16(frame, lay.l4, sport);
        l4c = checksum::update16(l4c, old_sport, sport);
    }
    let p = lay.payload;
    match lay.proto {
        Proto::Udp => {
            for (at, v) in [(p + 2, flow), (p + 6, seq), (p + 10, ts)] {
                let old = get32(frame, at);
                put32(frame, at, v);
                l4c = checksum::update32(l4c, old, v);
            }
            // A computed 0 is sent as 0xffff: 0 means "no checksum" (RFC 768).
            put16(frame, csum_at, if l4c == 0 { 0xffff } else { l4c });
        }
        Proto::TcpSyn | Proto::TcpAck => {
            for (at, v) in [(lay.l4 + 4, seq), (lay.l4 + 8, ts), (p + 2, flow)] {
                let old = get32(frame, at);
                put32(frame, at, v);
                l4c = checksum::update32(l4c, old, v);
            }
            put16(frame, csum_at, l4c);
        }
    }
    if let Some(o) = lay.outer_udp {
        put16(frame, o, flow_port(flow));
    }
}

/// What the sink reads back from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub flow: u32,
    pub seq: u32,
    pub ts: u32,
}

/// Finds the stamp in a frame as it arrives at the sink: behind an optional 802.1Q tag and an
/// optional VXLAN encapsulation (one level). `None` for anything else (ARP, the kernel's own
/// traffic, truncated frames).
pub fn parse(frame: &[u8]) -> Option<Stamp> {
    parse_depth(frame, 1)
}

fn parse_depth(frame: &[u8], depth: u8) -> Option<Stamp> {
    let mut off = ETH;
    let mut ty = get16(frame.get(..ETH)?, 12);
    if ty == 0x8100 || ty == 0x88a8 {
        ty = get16(frame.get(..ETH + TAG)?, 16);
        off += TAG;
    }
    if ty != 0x0800 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(frame.get(off..)?).ok()?;
    let l4 = off + usize::from(ip.header_len());
    let proto = ip.next_header();
    match proto {
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(frame.get(l4..)?).ok()?;
            let p = l4 + udp::HEADER_LEN;
            if u.dst_port() == VXLAN_PORT && depth > 0 {
                return parse_depth(frame.get(p + vxlan::HEADER_LEN..)?, depth - 1);
            }
            let s = frame.get(p..p + UDP_STAMP)?;
            (get16(s, 0) == MAGIC).then(|| Stamp {
                flow: get32(s, 2),
                seq: get32(s, 6),
                ts: get32(s, 10),
            })
        }
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(frame.get(l4..)?).ok()?;
            let p = l4 + usize::from(t.header_len());
            let s = frame.get(p..p + TCP_STAMP)?;
            (get16(s, 0) == MAGIC).then(|| Stamp {
                flow: get32(s, 2),
                seq: t.seq_number(),
                ts: t.ack_number(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proto: Proto) -> TrafficSpec {
        TrafficSpec {
            proto,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 0, 1, 2),
            dst_ip: Ipv4Addr::new(10, 0, 2, 2),
            sport_base: 1024,
            sports: 1000,
            dport: 9,
            flows: 5000,
            frame_len: 64,
            vlan: None,
            vxlan: None,
        }
    }

    /// Checksums of a patched frame against a full recomputation (etherparse is not a
    /// dependency here; afgate's own full-sum functions are checked against RFC 1071 in the
    /// dataplane crate).
    fn assert_checksums(f: &[u8], lay: &Layout) {
        let ip = Ipv4Packet::new_checked(&f[lay.l3..]).unwrap();
        assert!(ip.verify_checksum());
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        match lay.proto {
            Proto::Udp => assert!(
                UdpPacket::new_checked(&f[lay.l4..])
                    .unwrap()
                    .verify_checksum(s, d)
            ),
            _ => assert!(
                TcpPacket::new_checked(&f[lay.l4..])
                    .unwrap()
                    .verify_checksum(s, d)
            ),
        }
    }

    #[test]
    fn stamp_round_trips_with_valid_checksums() {
        for proto in [Proto::Udp, Proto::TcpSyn, Proto::TcpAck] {
            for (vlan, vx) in [
                (None, None),
                (Some(1155), None),
                (
                    None,
                    Some(VxlanSpec {
                        src_mac: [2, 0, 0, 0, 1, 1],
                        dst_mac: [2, 0, 0, 0, 1, 2],
                        src_ip: Ipv4Addr::new(10, 186, 152, 104),
                        dst_ip: Ipv4Addr::new(10, 186, 152, 103),
                        vni: 2,
                    }),
                ),
            ] {
                let s = TrafficSpec {
                    vlan,
                    vxlan: vx,
                    ..spec(proto)
                };
                let t = build(&s);
                assert!(t.bytes.len() >= 60);
                let mut f = t.bytes.clone();
                assert_checksums(&f, &t.layout);
                for (flow, seq, ts) in [
                    (0, 0, 0),
                    (4999, 7, u32::MAX),
                    (1234, 1 << 31, 99),
                    (1, 0, 0),
                ] {
                    stamp(&mut f, &t.layout, &s, flow, seq, ts);
                    assert_checksums(&f, &t.layout);
                    assert_eq!(
                        parse(&f),
                        Some(Stamp { flow, seq, ts }),
                        "{proto:?} {vlan:?}"
                    );
                    let ip = Ipv4Packet::new_checked(&f[t.layout.l3..]).unwrap();
                    let sport = get16(&f, t.layout.l4);
                    assert_eq!(s.flow_of(ip.src_addr(), sport), Some(flow));
                }
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(build(&spec(Proto::Udp)).bytes.len(), 60);
        assert_eq!(build(&spec(Proto::TcpAck)).bytes.len(), 60);
        let big = TrafficSpec {
            frame_len: 1518,
            ..spec(Proto::Udp)
        };
        assert_eq!(build(&big).bytes.len(), 1514);
        assert_eq!(parse(&[0u8; 10]), None);
    }
}
