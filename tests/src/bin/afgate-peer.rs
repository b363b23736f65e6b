//! afgate-peer: real kernel-socket peers for the lab (servers and clients for TCP and UDP).
//!
//! Every mode is bounded: servers exit after `--max-secs`, clients after `--timeout`. Servers
//! print `listening ADDR` once bound (the library waits for it) and `accepted client=..` /
//! `recv client=..` per connection or datagram, so a test can check what source address the
//! server saw. Replies are one line `id=NAME client=IP:PORT local=IP:PORT`.
//!
//! ```text
//! afgate-peer tcp-server --listen ADDR:PORT --id NAME [--max-secs N]
//! afgate-peer tcp-client --connect ADDR:PORT [--send BYTES] [--timeout S]
//! afgate-peer udp-server --listen ADDR:PORT --id NAME [--max-secs N]
//! afgate-peer udp-client --connect ADDR:PORT [--count N] [--timeout S]
//! afgate-peer tcp-conns  --connect ADDR:PORT --count N [--timeout S]
//! afgate-peer raw-send   --dev DEV --hex FRAME [--count N] [--secs S] [--vary-arp-target 1]
//! ```
//!
//! `raw-send` writes FRAME (hex, from the Ethernet header on) to DEV through an AF_PACKET
//! socket, byte for byte, `--count` times (at most 100 000) spread over `--secs` (default:
//! as fast as possible); with `--vary-arp-target 1` the ARP target address (bytes 38..42)
//! counts up from FRAME's, so each copy asks for another host. Prints `sent N`.

use afgate_tests::args::Args;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const USAGE: &str =
    "usage: afgate-peer (tcp-server|udp-server) --listen ADDR:PORT --id NAME [--max-secs N]
       afgate-peer tcp-client --connect ADDR:PORT [--send BYTES] [--timeout S]
       afgate-peer udp-client --connect ADDR:PORT [--count N] [--timeout S]
       afgate-peer tcp-conns --connect ADDR:PORT --count N [--timeout S]
       afgate-peer raw-send --dev DEV --hex FRAME [--count N] [--secs S] [--vary-arp-target 1]";

/// Servers that are not told otherwise stop after this long, so a forgotten one cannot linger.
const DEFAULT_MAX_SECS: u64 = 60;
const DEFAULT_TIMEOUT_SECS: u64 = 5;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let Some(mode) = argv.get(1) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = Args::parse(&argv[2..], USAGE).and_then(|a| match mode.as_str() {
        "tcp-server" => tcp_server(&a),
        "tcp-client" => tcp_client(&a),
        "udp-server" => udp_server(&a),
        "udp-client" => udp_client(&a),
        "tcp-conns" => tcp_conns(&a),
        "raw-send" => raw_send(&a),
        other => bail!("unknown mode {other:?}\n{USAGE}"),
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("afgate-peer {mode}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    // Line by line, flushed: the library polls our stdout file for these.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn reply_line(id: &str, client: SocketAddr, local: SocketAddr) -> String {
    format!("id={id} client={client} local={local}")
}

fn tcp_server(a: &Args) -> Result<bool> {
    let listen = a.addr("listen")?;
    let id = a.req("id")?.to_string();
    let deadline = Instant::now() + Duration::from_secs(a.num("max-secs", DEFAULT_MAX_SECS)?);
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    // Non-blocking accept, polled, so the server notices its deadline without a connection.
    listener.set_nonblocking(true)?;
    say(&format!("listening {}", listener.local_addr()?));
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, client)) => {
                let local = stream.local_addr()?;
                say(&format!("accepted client={client} local={local}"));
                let id = id.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_tcp(stream, &id, client, local, deadline) {
                        eprintln!("connection from {client}: {e:#}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(true)
}

fn serve_tcp(
    mut s: TcpStream,
    id: &str,
    client: SocketAddr,
    local: SocketAddr,
    deadline: Instant,
) -> Result<()> {
    s.set_nonblocking(false)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(left))?;
    s.write_all(format!("{}\n", reply_line(id, client, local)).as_bytes())?;
    // Echo until EOF (or the deadline's read timeout).
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

/// Payload byte `i`: a non-repeating-at-short-range pattern, so reordering or corruption in
/// the dataplane shows up as an echo mismatch.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

fn tcp_client(a: &Args) -> Result<bool> {
    let addr = a.addr("connect")?;
    let send = a.num("send", 0)? as usize;
    let timeout = Duration::from_secs(a.num("timeout", DEFAULT_TIMEOUT_SECS)?.max(1));
    let deadline = Instant::now() + timeout;
    let s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    say(&format!("connected local={}", s.local_addr()?));
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("read the server's line")?;
    if !line.ends_with('\n') {
        bail!("server closed before its line ended: {line:?}");
    }
    say(line.trim_end());
    if send > 0 {
        // Write from another thread: with both directions busy, a single thread writing a
        // large payload would block once the echo fills our receive buffer.
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let chunk: Vec<u8> = (0..send).map(pattern).collect();
            w.write_all(&chunk)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut got = vec![0u8; send];
        let mut off = 0;
        while off < send {
            if Instant::now() >= deadline {
                bail!("echo incomplete after {timeout:?}: {off}/{send} bytes");
            }
            let n = reader.read(&mut got[off..]).context("read echo")?;
            if n == 0 {
                bail!("connection closed after {off}/{send} echoed bytes");
            }
            off += n;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("send payload")?;
        if let Some(i) = (0..send).find(|&i| got[i] != pattern(i)) {
            bail!("echo differs at byte {i} of {send}");
        }
        say(&format!("echo ok {send}"));
    }
    Ok(true)
}

fn udp_server(a: &Args) -> Result<bool> {
    let listen = a.addr("listen")?;
    let id = a.req("id")?;
    let deadline = Instant::now() + Duration::from_secs(a.num("max-secs", DEFAULT_MAX_SECS)?);
    let sock = UdpSocket::bind(listen).with_context(|| format!("bind {listen}"))?;
    // Short read timeout so the deadline is checked a few times a second.
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let local = sock.local_addr()?;
    say(&format!("listening {local}"));
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, client)) => {
                // `local` is the bound address: with a wildcard bind it shows 0.0.0.0, so tests
                // that check it bind the server to a specific address.
                say(&format!("recv client={client} local={local} len={n}"));
                let r = format!("{} len={n}", reply_line(id, client, local));
                sock.send_to(r.as_bytes(), client)?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
    Ok(true)
}

fn udp_client(a: &Args) -> Result<bool> {
    let addr = a.addr("connect")?;
    let count = a.num("count", 1)?;
    let timeout = Duration::from_secs(a.num("timeout", DEFAULT_TIMEOUT_SECS)?.max(1));
    let deadline = Instant::now() + timeout;
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(addr)?;
    let mut received = 0u64;
    let mut sent = 0u64;
    let mut buf = [0u8; 65536];
    for seq in 0..count {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        sock.send(format!("seq={seq}").as_bytes())?;
        sent += 1;
        // One datagram in flight at a time; each waits at most a second (and never past the
        // overall deadline) so one loss does not eat the whole budget.
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                received += 1;
                say(String::from_utf8_lossy(&buf[..n]).trim_end());
            }
            // Timeout, or ICMP port unreachable reported as ECONNREFUSED: a lost datagram.
            Err(e) => eprintln!("seq={seq}: {e}"),
        }
    }
    say(&format!("sent={sent} received={received}"));
    Ok(received == count)
}

fn tcp_conns(a: &Args) -> Result<bool> {
    let addr = a.addr("connect")?;
    let count = a.num("count", 1)?;
    let timeout = Duration::from_secs(a.num("timeout", DEFAULT_TIMEOUT_SECS)?.max(1));
    let deadline = Instant::now() + timeout;
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0u64;
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failed += 1;
            continue;
        }
        match one_conn(addr, left.min(Duration::from_secs(2))) {
            Ok(id) => *ids.entry(id).or_default() += 1,
            Err(e) => {
                eprintln!("{e:#}");
                failed += 1;
            }
        }
    }
    // Hand-written JSON: ids are [A-Za-z0-9_-] server names, nothing to escape.
    let body: Vec<String> = ids.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    say(&format!(
        "{{\"ids\":{{{}}},\"failed\":{failed}}}",
        body.join(",")
    ));
    Ok(failed == 0)
}

fn one_conn(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("read the server's line")?;
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .with_context(|| format!("no id in {line:?}"))?;
    Ok(id.to_string())
}

/// Most frames one `raw-send` writes: the mode is for bounded bursts, not load.
const RAW_SEND_MAX: u64 = 100_000;

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if !s.len().is_multiple_of(2) {
        bail!("--hex has an odd number of digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("--hex at {i}")))
        .collect()
}

fn raw_send(a: &Args) -> Result<bool> {
    let dev = a.req("dev")?;
    let mut frame = parse_hex(a.req("hex")?)?;
    let count = a.num("count", 1)?;
    if count == 0 || count > RAW_SEND_MAX {
        bail!("--count {count}: 1..={RAW_SEND_MAX}");
    }
    let secs = a.num("secs", 0)?;
    let vary = a.num("vary-arp-target", 0)? != 0;
    if vary && frame.len() < 42 {
        bail!("--vary-arp-target needs an ARP frame (42 bytes or more)");
    }
    let cdev = std::ffi::CString::new(dev).context("--dev")?;
    // SAFETY: cdev is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev:?}: {}", std::io::Error::last_os_error());
    }
    // Protocol 0: a send-only socket, so it queues nothing it would have to receive.
    // SAFETY: plain socket(2) call; the descriptor is owned by `fd` below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    let gap = if secs > 0 {
        Duration::from_secs(secs) / count as u32
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    let base_tpa = if vary {
        u32::from_be_bytes([frame[38], frame[39], frame[40], frame[41]])
    } else {
        0
    };
    let mut sent = 0u64;
    for i in 0..count {
        if vary {
            let tpa = base_tpa.wrapping_add(i as u32);
            frame[38..42].copy_from_slice(&tpa.to_be_bytes());
        }
        // A full device queue (ENOBUFS) is retried, a bounded number of times, so that
        // `sent` is exactly `--count` when the call succeeds.
        let mut retries = 0;
        loop {
            // SAFETY: frame and sll outlive the call; lengths are theirs.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) && retries < 1000 {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            bail!("sendto {dev} ({} bytes): {e}", frame.len());
        }
        sent += 1;
        if !gap.is_zero() {
            let due = start + gap * (i as u32 + 1);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    say(&format!("sent {sent}"));
    Ok(sent == count)
}
