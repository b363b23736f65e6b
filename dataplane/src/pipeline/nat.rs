//! Address and port rewrites (DNAT, SNAT, un-NAT) with incremental checksums (RFC 1624),
//! and the translation of ICMP errors that quote a tracked flow (SPEC B13).
//!
//! L4 fields are read and written at fixed offsets of the IP payload rather than through
//! `TcpPacket`/`UdpPacket`: the first fragment of a fragmented datagram carries the L4 header
//! but not the whole datagram, so a view's `check_len` (which trusts UDP's length field)
//! would reject it, yet its ports and checksum must be translated like any other packet's.
//! The incremental update stays correct for a fragment because it only needs the old and new
//! values of the words that changed.

use crate::conntrack::{Flow, Tuple};
use crate::wire::{IcmpMessage, IcmpPacket, IpProtocol, Ipv4Packet, checksum};
use core::net::Ipv4Addr;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Offsets in the L4 header (RFC 9293 §3.1, RFC 768, RFC 792).
const SPORT: usize = 0;
const DPORT: usize = 2;
const TCP_CSUM: usize = 16;
const TCP_FLAGS: usize = 13;
const UDP_CSUM: usize = 6;
const ICMP_CSUM: usize = 2;
const ICMP_IDENT: usize = 4;

#[inline]
fn rd16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

#[inline]
fn wr16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// The connection-tracking key of a packet, with the TCP flags: TCP/UDP by ports, ICMP echo
/// by identifier (`sport = dport = ident`). `None` for anything else, for non-first
/// fragments (no L4 header), and for truncated L4 headers.
#[inline]
pub fn tuple_of(ip: &Ipv4Packet<&[u8]>) -> Option<(Tuple, u8)> {
    if ip.frag_offset() != 0 {
        return None;
    }
    let p = ip.payload();
    let proto = ip.protocol();
    let (sport, dport, flags) = match proto {
        PROTO_TCP if p.len() >= 20 => (rd16(p, SPORT), rd16(p, DPORT), p[TCP_FLAGS]),
        PROTO_UDP if p.len() >= 8 => (rd16(p, SPORT), rd16(p, DPORT), 0),
        PROTO_ICMP if p.len() >= 8 => {
            let t = IcmpMessage::from(p[0]);
            if !matches!(t, IcmpMessage::EchoRequest | IcmpMessage::EchoReply) {
                return None;
            }
            let id = rd16(p, ICMP_IDENT);
            (id, id, 0)
        }
        _ => return None,
    };
    Some((
        Tuple {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            sport,
            dport,
            proto,
        },
        flags,
    ))
}

/// What a packet with tuple `t`, travelling in direction `original` of `flow`, must look like
/// after translation: an original-direction packet leaves as the reply tuple reversed
/// (to the backend, from the SNAT address), a reply leaves as the original tuple reversed
/// (from the VIP, to the client).
#[inline]
pub fn translated(flow: &Flow, original: bool) -> Tuple {
    if original {
        flow.reply.reverse()
    } else {
        flow.orig.reverse()
    }
}

/// Rewrites the IPv4 packet in `l3` (its header already validated) to carry `to`'s
/// addresses and ports, updating the IPv4 header checksum and the L4 checksum incrementally.
/// ICMP echo carries its identifier in both port slots.
///
/// The changes are summed once as 32-bit words (`~old + new` per field; parallel summation,
/// RFC 1071 §2(C)) and folded once per checksum: the address part is shared by the IPv4
/// header and the TCP/UDP pseudo-header, so the two checksums cost one fold each instead of
/// one per changed word (VPP's `ip_csum_update` chain).
#[inline]
pub fn rewrite(l3: &mut [u8], to: &Tuple) {
    // Fixed-size views: every offset below is checked once, by the type, not per access.
    let Some(h) = l3.first_chunk_mut::<20>() else {
        return;
    };
    let os = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let od = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let (ns, nd) = (u32::from(to.src), u32::from(to.dst));
    let first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
    let hl = usize::from(h[0] & 0x0f) * 4;
    let addr_delta = u64::from(!os) + u64::from(ns) + u64::from(!od) + u64::from(nd);
    if os != ns || od != nd {
        let c = checksum::apply(u16::from_be_bytes([h[10], h[11]]), addr_delta);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h[12..16].copy_from_slice(&ns.to_be_bytes());
        h[16..20].copy_from_slice(&nd.to_be_bytes());
    }
    if !first {
        return;
    }
    let Some(l4) = l3.get_mut(hl..) else {
        return;
    };
    let new_ports = u32::from(to.sport) << 16 | u32::from(to.dport);
    match to.proto {
        PROTO_TCP => {
            let Some(l4) = l4.first_chunk_mut::<20>() else {
                return;
            };
            let old_ports = u32::from_be_bytes([l4[0], l4[1], l4[2], l4[3]]);
            let delta = addr_delta + u64::from(!old_ports) + u64::from(new_ports);
            let c = checksum::apply(u16::from_be_bytes([l4[16], l4[17]]), delta);
            l4[0..4].copy_from_slice(&new_ports.to_be_bytes());
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
        PROTO_UDP => {
            let Some(l4) = l4.first_chunk_mut::<8>() else {
                return;
            };
            let c = u16::from_be_bytes([l4[6], l4[7]]);
            // RFC 768: 0 means "no checksum" and stays 0; a computed 0 is sent as 0xffff.
            if c != 0 {
                let old_ports = u32::from_be_bytes([l4[0], l4[1], l4[2], l4[3]]);
                let delta = addr_delta + u64::from(!old_ports) + u64::from(new_ports);
                let c = checksum::apply(c, delta);
                let c = if c == 0 { 0xffff } else { c };
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            l4[0..4].copy_from_slice(&new_ports.to_be_bytes());
        }
        PROTO_ICMP if l4.len() >= 8 => {
            // No pseudo-header: only the identifier is covered.
            let old = rd16(l4, ICMP_IDENT);
            if old != to.sport {
                let c = checksum::update16(rd16(l4, ICMP_CSUM), old, to.sport);
                wr16(l4, ICMP_IDENT, to.sport);
                wr16(l4, ICMP_CSUM, c);
            }
        }
        _ => {}
    }
}

/// [`rewrite`] worked out once for every packet that carries tuple `from` (TCP or UDP, an
/// option-less IPv4 header, no fragment offset): the new words and the checksum deltas, so
/// that a flow's later packets (`pipeline::flow_cache`) get the same bytes without the sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    src: u32,
    dst: u32,
    ports: u32,
    addr_delta: u64,
    l4_delta: u64,
    addrs_change: bool,
    /// False for [`Prepared::untranslated`]: the L4 header is left as it is.
    l4: bool,
}

impl Prepared {
    pub fn new(from: &Tuple, to: &Tuple) -> Prepared {
        // Every word as the native-order value of its wire bytes (`to_be`), so `apply` loads
        // and stores them without byte swaps; the checksum deltas are summed in that order
        // too (one's-complement sums commute with byte swapping, RFC 1071 §2(B)).
        let (os, od) = (u32::from(from.src).to_be(), u32::from(from.dst).to_be());
        let (ns, nd) = (u32::from(to.src).to_be(), u32::from(to.dst).to_be());
        let old_ports = (u32::from(from.sport) << 16 | u32::from(from.dport)).to_be();
        let ports = (u32::from(to.sport) << 16 | u32::from(to.dport)).to_be();
        // The same sums as `rewrite`'s, in the same order, so the folds give the same bits.
        let addr_delta = u64::from(!os) + u64::from(ns) + u64::from(!od) + u64::from(nd);
        Prepared {
            src: ns,
            dst: nd,
            ports,
            addr_delta,
            l4_delta: addr_delta + u64::from(!old_ports) + u64::from(ports),
            addrs_change: os != ns || od != nd,
            l4: true,
        }
    }

    /// For the packets to `dst` of a flow that is not translated at all (no [`rewrite`]):
    /// `apply` only decrements the TTL, as routing does.
    pub fn untranslated(dst: Ipv4Addr) -> Prepared {
        Prepared {
            dst: u32::from(dst).to_be(),
            ..Prepared::default()
        }
    }

    /// The destination address packets leave with.
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst.to_ne_bytes())
    }

    /// Applies it to `l3`, a packet of the `from` tuple this was prepared for; `tcp` is its
    /// protocol (else UDP); with `ttl`, also decrements the TTL (which must be above 1), as
    /// `Ipv4Packet::decrement_ttl` would after the rewrite. `l3` shorter than the headers is
    /// left alone.
    ///
    /// The TTL word's change is the constant `!old + (old - 0x100)` = 0xfeff, folded with
    /// the address change: one's complement folds of a sum and of its parts give the same
    /// bits (a fold is zero only for a zero sum), so this equals `rewrite` then
    /// `decrement_ttl` byte for byte.
    #[inline(always)]
    pub fn apply(&self, l3: &mut [u8], tcp: bool, ttl: bool) {
        let Some(h) = l3.first_chunk_mut::<28>() else {
            return;
        };
        if self.addrs_change || ttl {
            // The TTL word's change (0xfeff on the wire) in native order, as the deltas.
            let ttl_delta = u64::from(u16::from_ne_bytes([0xfe, 0xff]));
            let delta = if self.addrs_change {
                self.addr_delta
            } else {
                0
            } + if ttl { ttl_delta } else { 0 };
            let c = checksum::apply(u16::from_ne_bytes([h[10], h[11]]), delta);
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            h[8] -= u8::from(ttl);
        }
        if self.addrs_change {
            h[12..16].copy_from_slice(&self.src.to_ne_bytes());
            h[16..20].copy_from_slice(&self.dst.to_ne_bytes());
        }
        if !self.l4 {
            return;
        }
        if tcp {
            let Some(h) = l3.first_chunk_mut::<40>() else {
                return;
            };
            let c = checksum::apply(u16::from_ne_bytes([h[36], h[37]]), self.l4_delta);
            h[20..24].copy_from_slice(&self.ports.to_ne_bytes());
            h[36..38].copy_from_slice(&c.to_ne_bytes());
        } else {
            let c = u16::from_ne_bytes([h[26], h[27]]);
            // RFC 768: 0 means "no checksum" and stays 0; a computed 0 is sent as 0xffff
            // (both the same in either byte order).
            if c != 0 {
                let c = checksum::apply(c, self.l4_delta);
                let c = if c == 0 { 0xffff } else { c };
                h[26..28].copy_from_slice(&c.to_ne_bytes());
            }
            h[20..24].copy_from_slice(&self.ports.to_ne_bytes());
        }
    }
}

/// An ICMP error's quoted datagram: where it starts in the ICMP message and its tuple.
#[derive(Debug, Clone, Copy)]
pub struct Quoted {
    /// The tuple of the quoted packet as it was sent (the offending packet).
    pub tuple: Tuple,
}

/// Offset of the quoted datagram inside an ICMP error message.
const QUOTE_AT: usize = 8;

/// Parses the datagram quoted by the ICMP error in `icmp` (the whole ICMP message).
/// `None` unless it is a TCP, UDP or ICMP echo packet with its ports (identifier) present.
pub fn quoted(icmp: &[u8]) -> Option<Quoted> {
    let inner = icmp.get(QUOTE_AT..)?;
    let ip = Ipv4Packet::new_unchecked(inner);
    ip.check_header_len().ok()?;
    if !ip.is_valid_version() || ip.frag_offset() != 0 {
        return None;
    }
    let hl = ip.header_len() as usize;
    let l4 = inner.get(hl..)?;
    let proto = u8::from(ip.next_header());
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP if l4.len() >= 4 => (rd16(l4, SPORT), rd16(l4, DPORT)),
        PROTO_ICMP if l4.len() >= 8 => {
            let t = IcmpMessage::from(l4[0]);
            if !matches!(t, IcmpMessage::EchoRequest | IcmpMessage::EchoReply) {
                return None;
            }
            let id = rd16(l4, ICMP_IDENT);
            (id, id)
        }
        _ => return None,
    };
    Some(Quoted {
        tuple: Tuple {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            sport,
            dport,
            proto,
        },
    })
}

/// Writes a 16-bit word of the ICMP message and folds the change into its checksum.
#[inline]
fn put16(msg: &mut [u8], off: usize, new: u16, csum: &mut u16) {
    let old = rd16(msg, off);
    if old != new {
        *csum = checksum::update16(*csum, old, new);
        wr16(msg, off, new);
    }
}

#[inline]
fn put_addr(msg: &mut [u8], off: usize, new: Ipv4Addr, csum: &mut u16) {
    let b = new.octets();
    put16(msg, off, u16::from_be_bytes([b[0], b[1]]), csum);
    put16(msg, off + 2, u16::from_be_bytes([b[2], b[3]]), csum);
}

/// Translates an ICMP error in `l3` whose quoted packet had tuple `q` and belongs to `flow`,
/// the error travelling in direction `original` (the direction of `q.reverse()`): the outer
/// destination becomes the translated peer, the outer source too if the error came from the
/// quoted packet's destination itself, and the quoted header and L4 ports are translated
/// back to what that peer sent. Every checksum involved — outer IPv4, ICMP, quoted IPv4,
/// quoted UDP (and quoted TCP/ICMP when they are quoted in full) — is updated incrementally.
pub fn rewrite_icmp_error(l3: &mut [u8], q: &Tuple, flow: &Flow, original: bool) {
    // The error flows like a packet with tuple q.reverse(); `t` is that packet translated.
    let t = translated(flow, original);
    // What the quoted packet must become: the translated flow in the other direction.
    let inner = t.reverse();
    let (outer_src, hl) = {
        let ip = Ipv4Packet::new_unchecked(&*l3);
        (ip.src_addr(), ip.header_len() as usize)
    };
    let new_outer_src = if outer_src == q.dst { t.src } else { outer_src };
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut *l3);
        let mut c = ip.checksum();
        let od = ip.dst_addr();
        if od != t.dst {
            c = checksum::update_addr(c, od, t.dst);
            ip.set_dst_addr(t.dst);
        }
        if outer_src != new_outer_src {
            c = checksum::update_addr(c, outer_src, new_outer_src);
            ip.set_src_addr(new_outer_src);
        }
        ip.set_checksum(c);
    }
    let msg = &mut l3[hl..];
    let mut icsum = rd16(msg, ICMP_CSUM);
    let ihl = {
        let iip = Ipv4Packet::new_unchecked(&msg[QUOTE_AT..]);
        iip.header_len() as usize
    };
    // Quoted IPv4 header: addresses and its own checksum.
    let ip_at = QUOTE_AT;
    let mut ipc = rd16(msg, ip_at + 10);
    let (qs, qd) = (q.src, q.dst);
    ipc = checksum::update_addr(ipc, qs, inner.src);
    ipc = checksum::update_addr(ipc, qd, inner.dst);
    put_addr(msg, ip_at + 12, inner.src, &mut icsum);
    put_addr(msg, ip_at + 16, inner.dst, &mut icsum);
    put16(msg, ip_at + 10, ipc, &mut icsum);
    // Quoted L4.
    let l4 = ip_at + ihl;
    let avail = msg.len().saturating_sub(l4);
    match q.proto {
        PROTO_TCP | PROTO_UDP => {
            let csum_at = if q.proto == PROTO_TCP {
                TCP_CSUM
            } else {
                UDP_CSUM
            };
            if avail >= csum_at + 2 {
                let old = rd16(msg, l4 + csum_at);
                if old != 0 || q.proto == PROTO_TCP {
                    let mut c = checksum::update_addr(old, qs, inner.src);
                    c = checksum::update_addr(c, qd, inner.dst);
                    c = checksum::update16(c, q.sport, inner.sport);
                    c = checksum::update16(c, q.dport, inner.dport);
                    if q.proto == PROTO_UDP && c == 0 {
                        c = 0xffff;
                    }
                    put16(msg, l4 + csum_at, c, &mut icsum);
                }
            }
            put16(msg, l4 + SPORT, inner.sport, &mut icsum);
            put16(msg, l4 + DPORT, inner.dport, &mut icsum);
        }
        PROTO_ICMP => {
            let old = rd16(msg, l4 + ICMP_IDENT);
            let c = checksum::update16(rd16(msg, l4 + ICMP_CSUM), old, inner.sport);
            put16(msg, l4 + ICMP_IDENT, inner.sport, &mut icsum);
            put16(msg, l4 + ICMP_CSUM, c, &mut icsum);
        }
        _ => {}
    }
    wr16(msg, ICMP_CSUM, icsum);
}

/// The ICMP message of `ip` if it is an error (destination unreachable incl. fragmentation
/// needed, time exceeded, parameter problem) that quotes a packet.
#[inline]
pub fn icmp_error_payload<'a>(ip: &'a Ipv4Packet<&[u8]>) -> Option<&'a [u8]> {
    if ip.next_header() != IpProtocol::Icmp || ip.frag_offset() != 0 {
        return None;
    }
    let p = ip.payload();
    let icmp = IcmpPacket::new_checked(p).ok()?;
    matches!(
        icmp.msg_type(),
        IcmpMessage::DstUnreachable | IcmpMessage::TimeExceeded | IcmpMessage::ParamProblem
    )
    .then_some(p)
}
