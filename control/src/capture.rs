//! `afgate capture`: mirror a port's frames into a pcap file.
//!
//! The API connection that asks for a capture becomes its stream: the server arms the
//! workers' taps (a [`CaptureSession`] with preallocated buffers), drains the copies and
//! sends each as a JSON line `{"frame": {...}}`, then a final response with the totals. The
//! client writes classic pcap (24-byte header, 16-byte record headers), which `tcpdump -r`
//! reads.

use crate::api::{Control, Response};
use crate::trace::{from_hex, to_hex};
use afgate_dataplane::observe::{CaptureSession, Direction, Filter};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Frame buffers a capture preallocates (2 KiB each): the workers' burst allowance while
/// the control thread catches up.
const BUFFERS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    In,
    Out,
    #[default]
    Both,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    pub port: String,
    #[serde(default)]
    pub dir: Dir,
    /// pcap-filter subset: `host A`, `src A`, `dst A`, `net A/L`, `port N`, `src port N`,
    /// `dst port N`, `tcp`, `udp`, `icmp`, `ip`, `arp`, `not`, `and`, `or`, parentheses.
    #[serde(default)]
    pub filter: Option<String>,
    /// Stop after this many frames.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub duration: Option<f64>,
}

/// One captured frame on the wire of the API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FrameMsg {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub port: String,
    pub dir: String,
    pub orig_len: u32,
    pub data: String,
}

// ---- filter parser -------------------------------------------------------------------

fn tokens(s: &str) -> Vec<String> {
    s.replace('(', " ( ")
        .replace(')', " ) ")
        .split_whitespace()
        .map(|t| t.to_ascii_lowercase())
        .collect()
}

struct Parser {
    t: Vec<String>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.t.get(self.i).map(|s| s.as_str())
    }
    fn next(&mut self) -> Option<String> {
        let t = self.t.get(self.i).cloned();
        self.i += 1;
        t
    }
    fn or(&mut self) -> Result<Filter, String> {
        let mut a = self.and()?;
        while matches!(self.peek(), Some("or" | "||")) {
            self.i += 1;
            a = Filter::Or(Box::new(a), Box::new(self.and()?));
        }
        Ok(a)
    }
    fn and(&mut self) -> Result<Filter, String> {
        let mut a = self.unary()?;
        loop {
            match self.peek() {
                Some("and" | "&&") => {
                    self.i += 1;
                }
                // pcap-filter allows juxtaposition only via `and`; anything else ends here.
                _ => return Ok(a),
            }
            a = Filter::And(Box::new(a), Box::new(self.unary()?));
        }
    }
    fn unary(&mut self) -> Result<Filter, String> {
        match self.peek() {
            Some("not" | "!") => {
                self.i += 1;
                Ok(Filter::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.i += 1;
                let f = self.or()?;
                match self.next().as_deref() {
                    Some(")") => Ok(f),
                    _ => Err("missing )".into()),
                }
            }
            _ => self.primitive(),
        }
    }
    fn addr(&mut self) -> Result<Ipv4Addr, String> {
        let t = self.next().ok_or("expected an address")?;
        t.parse()
            .map_err(|_| format!("{t:?} is not an IPv4 address"))
    }
    fn port(&mut self) -> Result<u16, String> {
        let t = self.next().ok_or("expected a port number")?;
        t.parse()
            .map_err(|_| format!("{t:?} is not a port number 0-65535"))
    }
    fn primitive(&mut self) -> Result<Filter, String> {
        let t = self.next().ok_or("expression ends too early")?;
        Ok(match t.as_str() {
            "host" => Filter::Host(self.addr()?),
            "net" => {
                let n = self.next().ok_or("expected a.b.c.d/len")?;
                let (a, l) = n
                    .split_once('/')
                    .ok_or(format!("{n:?}: expected a.b.c.d/len"))?;
                let a: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an address"))?;
                let l: u8 = l
                    .parse()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or(format!("{l:?} is not a prefix length 0-32"))?;
                Filter::Net(a, l)
            }
            "src" | "dst" => {
                let src = t == "src";
                match self.peek() {
                    Some("port") => {
                        self.i += 1;
                        let p = self.port()?;
                        if src {
                            Filter::SrcPort(p)
                        } else {
                            Filter::DstPort(p)
                        }
                    }
                    Some("host") => {
                        self.i += 1;
                        let a = self.addr()?;
                        if src { Filter::Src(a) } else { Filter::Dst(a) }
                    }
                    _ => {
                        let a = self.addr()?;
                        if src { Filter::Src(a) } else { Filter::Dst(a) }
                    }
                }
            }
            "port" => Filter::Port(self.port()?),
            "tcp" | "udp" | "icmp" => {
                let proto = match t.as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    _ => 1,
                };
                // `tcp port 80` = tcp and port 80.
                if matches!(self.peek(), Some("port")) {
                    self.i += 1;
                    Filter::And(
                        Box::new(Filter::Proto(proto)),
                        Box::new(Filter::Port(self.port()?)),
                    )
                } else {
                    Filter::Proto(proto)
                }
            }
            "ip" => Filter::Ip,
            "arp" => Filter::Arp,
            other => {
                return Err(format!(
                    "{other:?} is not understood; use host/src/dst/net/port/tcp/udp/icmp/ip/arp with and/or/not"
                ));
            }
        })
    }
}

/// Parses the filter subset; an empty string matches everything.
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    let t = tokens(s);
    if t.is_empty() {
        return Ok(Filter::All);
    }
    let mut p = Parser { t, i: 0 };
    let f = p.or()?;
    if let Some(rest) = p.peek() {
        return Err(format!("unexpected {rest:?}"));
    }
    Ok(f)
}

// ---- server side ---------------------------------------------------------------------

fn send_line(s: &mut UnixStream, v: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_string(v).unwrap_or_default();
    line.push('\n');
    s.write_all(line.as_bytes())
}

/// Whether the client hung up (a non-blocking peek at the connection).
fn client_gone(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let r = (&*s).read(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Runs one capture on the connection `s` until the count, the duration, the client or the
/// server stops it.
pub fn serve(ctl: &Control, s: &mut UnixStream, req: &CaptureRequest, stop: &AtomicBool) {
    let fail = |s: &mut UnixStream, e: String| {
        let _ = send_line(s, &Response::err(e));
    };
    let tables = ctl.tables.load();
    let Some(port) = tables.ports.by_name(&req.port) else {
        return fail(s, format!("port: no port named {:?}", req.port));
    };
    if port.id.index() >= 64 {
        return fail(s, "port: capture supports the first 64 ports".into());
    }
    if req.duration.is_some_and(|d| !(d > 0.0 && d <= 86_400.0)) {
        return fail(s, "duration: must be in (0, 86400] seconds".into());
    }
    let filter = match parse_filter(req.filter.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return fail(s, format!("filter: {e}")),
    };
    let bit = 1u64 << port.id.index();
    let (rx, tx) = match req.dir {
        Dir::In => (bit, 0),
        Dir::Out => (0, bit),
        Dir::Both => (bit, bit),
    };
    let session = Arc::new(CaptureSession::new(rx, tx, filter, BUFFERS));
    if !ctl.capture.start(session.clone()) {
        return fail(s, "another capture is running; one at a time".into());
    }
    let names: Vec<String> = tables.ports.iter().map(|p| p.name.clone()).collect();
    drop(tables);
    // Tells the client the taps are armed: frames from now on are captured.
    if send_line(s, &serde_json::json!({ "started": { "port": req.port } })).is_err() {
        ctl.capture.stop();
        return;
    }
    let started = Instant::now();
    let wall0 = ctl
        .wall_at_epoch
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut sent = 0u64;
    let mut last_check = Instant::now();
    let reason = 'outer: loop {
        let mut idle = true;
        while let Some(c) = session.take() {
            idle = false;
            let msg = FrameMsg {
                ts_ns: wall0 + c.ts_ns,
                port: names.get(c.port as usize).cloned().unwrap_or_default(),
                dir: match c.dir {
                    Direction::In => "in".into(),
                    Direction::Out => "out".into(),
                },
                orig_len: c.orig_len,
                data: to_hex(c.bytes()),
            };
            session.give_back(c);
            if send_line(s, &serde_json::json!({ "frame": msg })).is_err() {
                break 'outer "client gone";
            }
            sent += 1;
            if req.count.is_some_and(|n| sent >= n) {
                break 'outer "count";
            }
        }
        if req
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            break "duration";
        }
        if stop.load(Ordering::Relaxed) {
            break "afgate stopping";
        }
        if last_check.elapsed() > Duration::from_millis(200) {
            last_check = Instant::now();
            if client_gone(s) {
                break "client gone";
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    ctl.capture.stop();
    let dropped = session.dropped.load(Ordering::Relaxed);
    let _ = send_line(
        s,
        &Response::ok(serde_json::json!({
            "captured": sent,
            "dropped": dropped,
            "stopped_by": reason,
        })),
    );
}

// ---- pcap ----------------------------------------------------------------------------

/// Writes classic pcap: microsecond timestamps, LINKTYPE_ETHERNET.
pub struct PcapWriter<W: Write> {
    w: W,
    snaplen: u32,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut w: W, snaplen: u32) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, µs resolution
        h.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&snaplen.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        w.write_all(&h)?;
        Ok(PcapWriter { w, snaplen })
    }

    pub fn write(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) -> std::io::Result<()> {
        let data = &data[..data.len().min(self.snaplen as usize)];
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&(((ts_ns % 1_000_000_000) / 1000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(data)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Client side: sends the request, writes every frame to `out`, returns the final result.
/// `on_started` runs once the server has armed the taps.
pub fn run_client(
    api: &std::path::Path,
    req: &CaptureRequest,
    out: &std::path::Path,
    mut on_started: impl FnMut(),
    mut on_frame: impl FnMut(&FrameMsg),
) -> anyhow::Result<serde_json::Value> {
    use std::io::BufRead;
    let mut s = crate::client::connect(api)?;
    let mut line = crate::api::Request::Capture(req.clone()).to_line();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let file = std::fs::File::create(out)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
    let mut pcap = PcapWriter::new(
        std::io::BufWriter::new(file),
        afgate_dataplane::observe::SNAPLEN as u32,
    )?;
    let rd = std::io::BufReader::new(s);
    for l in rd.lines() {
        let l = l?;
        let v: serde_json::Value = serde_json::from_str(&l)?;
        if v.get("started").is_some() {
            on_started();
            continue;
        }
        if let Some(f) = v.get("frame") {
            let f: FrameMsg = serde_json::from_value(f.clone())?;
            let data = from_hex(&f.data).map_err(|e| anyhow::anyhow!("frame data: {e}"))?;
            pcap.write(f.ts_ns, f.orig_len, &data)?;
            pcap.flush()?;
            on_frame(&f);
            continue;
        }
        pcap.flush()?;
        let r: Response = serde_json::from_value(v)?;
        return match (r.ok, r.error) {
            (true, _) => Ok(r.result.unwrap_or_default()),
            (false, e) => Err(anyhow::anyhow!("{}", e.unwrap_or_default())),
        };
    }
    pcap.flush()?;
    anyhow::bail!("afgate closed the connection before the capture ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_grammar() {
        let f = parse_filter("host 10.20.9.60 and tcp port 80").unwrap();
        assert_eq!(
            f,
            Filter::And(
                Box::new(Filter::Host(Ipv4Addr::new(10, 20, 9, 60))),
                Box::new(Filter::And(
                    Box::new(Filter::Proto(6)),
                    Box::new(Filter::Port(80))
                ))
            )
        );
        assert_eq!(parse_filter("").unwrap(), Filter::All);
        assert!(matches!(
            parse_filter("udp or (src 1.2.3.4 and not dst port 53)").unwrap(),
            Filter::Or(..)
        ));
        assert_eq!(parse_filter("src port 9").unwrap(), Filter::SrcPort(9));
        assert!(parse_filter("host").is_err());
        assert!(parse_filter("host 1.2.3").is_err());
        assert!(parse_filter("port 70000").is_err());
        assert!(parse_filter("(tcp").is_err());
        assert!(parse_filter("tcp udp").is_err());
        assert!(
            parse_filter("vlan 5")
                .unwrap_err()
                .contains("not understood")
        );
    }

    #[test]
    fn pcap_layout_is_classic_pcap() {
        let mut w = PcapWriter::new(Vec::new(), 2048).unwrap();
        w.write(1_700_000_000_123_456_789, 60, &[0xaa; 60]).unwrap();
        w.write(1_700_000_001_000_000_000, 3000, &[0xbb; 3000])
            .unwrap();
        let buf = w.w;
        assert_eq!(&buf[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u16::from_le_bytes([buf[4], buf[5]]), 2);
        assert_eq!(u16::from_le_bytes([buf[6], buf[7]]), 4);
        assert_eq!(u32::from_le_bytes(buf[16..20].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(buf[20..24].try_into().unwrap()), 1);
        let r = &buf[24..40];
        assert_eq!(
            u32::from_le_bytes(r[0..4].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), 123_456);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), 60);
        assert_eq!(u32::from_le_bytes(r[12..16].try_into().unwrap()), 60);
        let r2 = &buf[40 + 60..40 + 60 + 16];
        assert_eq!(
            u32::from_le_bytes(r2[8..12].try_into().unwrap()),
            2048,
            "truncated to snaplen"
        );
        assert_eq!(u32::from_le_bytes(r2[12..16].try_into().unwrap()), 3000);
        assert_eq!(buf.len(), 24 + 16 + 60 + 16 + 2048);
    }
}
