//! `afgate trace`: build a frame from a description, run it through the pipeline as a dry
//! run (`ctx.trace` set: stages record their decisions and change no shared state), and
//! print every decision, the final action and the rewritten headers, in the manner of
//! `ovs-appctl ofproto/trace`.
//!
//! The same [`run`] serves the API (tables of the running afgate) and the offline mode
//! (`-c FILE`: tables built from the file).

use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::frame::Frame;
use afgate_dataplane::pipeline::{self, Action, Ctx, RxMeta, Trace};
use afgate_dataplane::tables::{Shared, Tables};
use afgate_dataplane::wire::{EtherType, EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// What `afgate trace` builds: an Ethernet/[802.1Q]/IPv4/TCP|UDP|ICMP-echo frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    /// All zeros: the ingress port's own MAC (filled in by [`run`]).
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 6 tcp, 17 udp, 1 icmp (echo request).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags as letters (`S`, `SA`, `A`, `F`, `R`, `P`).
    pub flags: String,
    pub ttl: u8,
    pub payload: usize,
}

impl Default for FrameSpec {
    fn default() -> Self {
        FrameSpec {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0; 6],
            vlan: None,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 6,
            sport: 40000,
            dport: 80,
            flags: "S".into(),
            ttl: 64,
            payload: 0,
        }
    }
}

/// RFC 1071 sum of `data` added to `init`, not yet folded.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        acc += (*b as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// TCP flag letters to bits.
pub fn tcp_flags(s: &str) -> Result<u8, String> {
    let mut f = 0u8;
    for c in s.chars() {
        f |= match c.to_ascii_uppercase() {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            'A' => 0x10,
            'U' => 0x20,
            '.' => 0x10,
            _ => return Err(format!("{c:?} is not a TCP flag; use F S R P A U")),
        };
    }
    Ok(f)
}

impl FrameSpec {
    /// The frame, with valid IPv4 and L4 checksums.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let l4_len = match self.proto {
            6 => 20,
            17 => 8,
            1 => 8,
            p => return Err(format!("protocol {p} is not one of tcp, udp, icmp")),
        } + self.payload;
        let ip_len = 20 + l4_len;
        if ip_len > 9000 {
            return Err(format!("payload of {} bytes is too large", self.payload));
        }
        let mut f = Vec::with_capacity(18 + ip_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(v) = self.vlan {
            if v == 0 || v > 4094 {
                return Err(format!("vlan {v} is out of range 1-4094"));
            }
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let ip0 = f.len();
        f.extend_from_slice(&[
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, self.ttl, self.proto, 0, 0,
        ]);
        f[ip0 + 2..ip0 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        let c = fold(sum16(0, &f[ip0..ip0 + 20]));
        f[ip0 + 10..ip0 + 12].copy_from_slice(&c.to_be_bytes());
        let l4 = f.len();
        match self.proto {
            6 => {
                f.extend_from_slice(&self.sport.to_be_bytes());
                f.extend_from_slice(&self.dport.to_be_bytes());
                f.extend_from_slice(&1u32.to_be_bytes());
                f.extend_from_slice(&0u32.to_be_bytes());
                f.extend_from_slice(&[0x50, tcp_flags(&self.flags)?, 0xff, 0xff, 0, 0, 0, 0]);
            }
            17 => {
                f.extend_from_slice(&self.sport.to_be_bytes());
                f.extend_from_slice(&self.dport.to_be_bytes());
                f.extend_from_slice(&(l4_len as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
            _ => {
                f.extend_from_slice(&[8, 0, 0, 0]);
                f.extend_from_slice(&self.sport.to_be_bytes()); // echo id
                f.extend_from_slice(&1u16.to_be_bytes()); // sequence
            }
        }
        f.extend((0..self.payload).map(|i| i as u8));
        let csum = if self.proto == 1 {
            fold(sum16(0, &f[l4..]))
        } else {
            let mut pseudo = sum16(0, &self.src.octets());
            pseudo = sum16(pseudo, &self.dst.octets());
            pseudo += self.proto as u32 + l4_len as u32;
            let c = fold(sum16(pseudo, &f[l4..]));
            if self.proto == 17 && c == 0 {
                0xffff
            } else {
                c
            }
        };
        let at = l4
            + match self.proto {
                6 => 16,
                17 => 6,
                _ => 2,
            };
        f[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        Ok(f)
    }
}

pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len() / 2)
        .map(|i| {
            u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| format!("not hex at offset {}", 2 * i))
        })
        .collect()
}

/// One line per header: what a frame is, for humans.
pub fn describe(frame: &[u8]) -> String {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return format!("{} bytes, not an Ethernet frame", frame.len());
    };
    let mut s = format!("eth {} > {}", eth.src_addr(), eth.dst_addr());
    let (mut et, mut off) = (eth.ethertype(), 14);
    if et == EtherType::Vlan && frame.len() >= 18 {
        let tci = u16::from_be_bytes([frame[14], frame[15]]);
        let _ = write!(s, " vlan {}", tci & 0x0fff);
        et = EtherType::from(u16::from_be_bytes([frame[16], frame[17]]));
        off = 18;
    }
    match et {
        EtherType::Ipv4 => {}
        EtherType::Arp => return s + " arp",
        other => return format!("{s} ethertype {other:?}"),
    }
    let Ok(ip) = Ipv4Packet::new_checked(&frame[off..]) else {
        return s + " ipv4 (truncated)";
    };
    let _ = write!(
        s,
        " | ip {} > {} ttl {} len {}",
        ip.src_addr(),
        ip.dst_addr(),
        ip.ttl(),
        ip.total_len()
    );
    let p = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp if p.len() >= 14 => {
            let flags = p[13];
            let names: String = [
                (0x02, 'S'),
                (0x10, 'A'),
                (0x01, 'F'),
                (0x04, 'R'),
                (0x08, 'P'),
            ]
            .iter()
            .filter(|(b, _)| flags & b != 0)
            .map(|(_, c)| *c)
            .collect();
            let _ = write!(
                s,
                " | tcp {} > {} [{names}]",
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]])
            );
        }
        IpProtocol::Udp if p.len() >= 4 => {
            let _ = write!(
                s,
                " | udp {} > {}",
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]])
            );
        }
        IpProtocol::Icmp if p.len() >= 2 => {
            let _ = write!(s, " | icmp type {} code {}", p[0], p[1]);
        }
        other => {
            let _ = write!(s, " | proto {}", u8::from(other));
        }
    }
    s
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    pub stage: String,
    pub note: String,
}

/// The result of a trace, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceOut {
    pub in_port: String,
    pub generation: u64,
    pub input: String,
    pub steps: Vec<TraceStep>,
    /// `output` or `drop`.
    pub action: String,
    pub out_port: Option<String>,
    pub drop_reason: Option<String>,
    /// The frame as it would leave (hex), and described.
    pub output_frame: Option<String>,
    pub output: Option<String>,
}

/// Runs `frame` through the pipeline as received on `in_port`, recording every stage.
pub fn run(
    tables: &Tables,
    shared: &Shared,
    in_port: &str,
    vlan: Option<u16>,
    frame: &[u8],
    now_s: u32,
    now_ns: u64,
) -> Result<TraceOut, String> {
    let port = tables
        .ports
        .by_name(in_port)
        .ok_or_else(|| format!("in_port: no port named {in_port:?}"))?;
    if frame.len() < 14 || frame.len() > 9216 {
        return Err(format!(
            "frame: {} bytes; a frame is 14-9216 bytes",
            frame.len()
        ));
    }
    const HEADROOM: usize = 256;
    let mut buf = vec![0u8; HEADROOM + frame.len() + 2048];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    if buf[HEADROOM..HEADROOM + 6] == [0; 6] {
        buf[HEADROOM..HEADROOM + 6].copy_from_slice(&port.mac);
    }
    let input = describe(&buf[HEADROOM..HEADROOM + frame.len()]);
    let trace = Trace::default();
    // Scratch counters: a trace must not show up in the node's statistics.
    let counters = WorkerCounters::new(tables.ports.len());
    let ctx = Ctx {
        tables,
        shared,
        counters: &counters,
        now_s,
        now_ns,
        trace: Some(&trace),
        // Scratch scheduler state: a dry run does not advance the workers' cursors.
        local: &afgate_dataplane::service::WorkerLocal::default(),
    };
    let mut f = Frame::new(&mut buf, HEADROOM, frame.len());
    let meta = RxMeta {
        port: port.id,
        vlan,
    };
    let action = pipeline::process(&mut f, &meta, &ctx);
    let steps = trace
        .steps()
        .into_iter()
        .map(|(stage, note)| TraceStep {
            stage: stage.into(),
            note,
        })
        .collect();
    let mut out = TraceOut {
        in_port: in_port.into(),
        generation: tables.generation,
        input,
        steps,
        action: String::new(),
        out_port: None,
        drop_reason: None,
        output_frame: None,
        output: None,
    };
    match action {
        Action::Tx(p) => {
            out.action = "output".into();
            out.out_port = Some(
                tables
                    .ports
                    .get(p)
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| format!("#{}", p.0)),
            );
            out.output_frame = Some(to_hex(f.data()));
            out.output = Some(describe(f.data()));
        }
        Action::Drop(r) => {
            out.action = "drop".into();
            out.drop_reason = Some(r.name().into());
        }
    }
    Ok(out)
}

/// The trace as `ovs-appctl ofproto/trace` would lay it out.
pub fn format(t: &TraceOut) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Flow: in_port={} {}", t.in_port, t.input);
    let _ = writeln!(s, "Tables: generation {}", t.generation);
    let _ = writeln!(s);
    let _ = writeln!(s, "bridge(\"afgate\")");
    let _ = writeln!(s, "----------------");
    for (i, st) in t.steps.iter().enumerate() {
        let _ = writeln!(s, " {i:2}. {}: {}", st.stage, st.note);
    }
    let _ = writeln!(s);
    match (&t.out_port, &t.output) {
        (Some(p), Some(o)) => {
            let _ = writeln!(s, "Final flow: {o}");
            let _ = writeln!(s, "Datapath actions: output:{p}");
        }
        _ => {
            let _ = writeln!(s, "Final flow: unchanged");
            let _ = writeln!(
                s,
                "Datapath actions: drop ({})",
                t.drop_reason.as_deref().unwrap_or("?")
            );
        }
    }
    s
}

/// A MAC for a port whose device cannot be read offline: locally administered, by index.
pub fn offline_device(dev: &str) -> std::io::Result<([u8; 6], u16)> {
    match (
        afgate_dataplane::sys::device_mac(dev),
        afgate_dataplane::sys::device_mtu(dev),
    ) {
        (Ok(m), Ok(mtu)) => Ok((m, mtu)),
        _ => {
            let h = dev
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            let b = h.to_be_bytes();
            Ok(([0x02, 0xaf, b[0], b[1], b[2], b[3]], 1500))
        }
    }
}

/// Prints `EthernetAddress` for CLI parsing errors.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    use std::str::FromStr;
    EthernetAddress::from_str(s)
        .map(|m| m.0)
        .map_err(|_| format!("{s:?} is not a MAC address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        for proto in [6u8, 17, 1] {
            let spec = FrameSpec {
                src: Ipv4Addr::new(10, 186, 155, 6),
                dst: Ipv4Addr::new(10, 96, 10, 1),
                proto,
                payload: 11,
                dst_mac: [2, 0, 0, 0, 0, 2],
                ..Default::default()
            };
            let f = spec.build().unwrap();
            let p = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!()
            };
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum);
            match p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    assert!(t.syn());
                    let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
                    assert_eq!(t.checksum(), want);
                }
                Some(etherparse::TransportSlice::Udp(u)) => {
                    let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                    assert_eq!(u.checksum(), want);
                }
                Some(etherparse::TransportSlice::Icmpv4(i)) => {
                    let want = i.icmp_type().calc_checksum(i.payload());
                    assert_eq!(i.checksum(), want);
                }
                other => panic!("{other:?}"),
            }
        }
        let tagged = FrameSpec {
            vlan: Some(1155),
            ..Default::default()
        }
        .build()
        .unwrap();
        assert!(describe(&tagged).contains("vlan 1155"));
        assert!(tcp_flags("SA").unwrap() == 0x12 && tcp_flags("x").is_err());
        assert_eq!(from_hex(&to_hex(&tagged)).unwrap(), tagged);
        assert!(from_hex("abc").is_err() && from_hex("zz").is_err());
    }
}
