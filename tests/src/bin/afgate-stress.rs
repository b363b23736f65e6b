//! afgate-stress: the load the reliability tests need (tests/tests/reliability.rs), as real
//! kernel sockets or raw frames inside a lab namespace. Every mode is bounded in count and
//! seconds and prints one JSON line of figures at the end.
//!
//! ```text
//! afgate-stress syn-flood --dev DEV --src-mac MAC --dst-mac MAC --dst IP:PORT
//!               --src-net A.B.C.D/LEN --count N --secs S
//! afgate-stress tcp-hold  --connect IP:PORT --conns N --secs S [--interval-ms M]
//! afgate-stress udp-race  --connect IP:PORT --threads N --rounds R [--timeout-ms M]
//! afgate-stress udp-flows --connect IP:PORT --flows N --secs S [--interval-ms M]
//! ```
//!
//! - `syn-flood`: TCP SYNs from random sources in `--src-net` (random ports) to `--dst`,
//!   written to DEV through AF_PACKET as fast as the socket takes them, until `--count`
//!   frames or `--secs` seconds. Prints `{"sent":..,"secs":..,"pps":..}`.
//! - `tcp-hold`: opens N connections to an `afgate-peer tcp-server` (echo), then every
//!   interval writes 32 bytes on each and reads the echo, for S seconds. A connection that
//!   fails once stays failed. Prints per-connection round trips and the failures.
//! - `udp-race`: per round, one unconnected UDP socket; N threads, pinned round-robin to the
//!   CPUs, wait on a barrier and each `sendto` one datagram from that socket at once (the
//!   glibc A/AAAA pattern). The threads run on different CPUs, so with XPS the datagrams
//!   leave by different tx queues and reach different afgate workers. Then it collects the
//!   replies. Prints per round the local port, datagrams sent and replies received.
//! - `udp-flows`: N connected UDP sockets (N flows), each sending a datagram every interval
//!   for S seconds; prints per flow the datagrams sent and replies received.

use afgate_tests::args::Args;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: afgate-stress syn-flood --dev DEV --src-mac MAC --dst-mac MAC --dst IP:PORT --src-net NET/LEN --count N --secs S
       afgate-stress tcp-hold --connect IP:PORT --conns N --secs S [--interval-ms M]
       afgate-stress udp-race --connect IP:PORT --threads N --rounds R [--timeout-ms M]
       afgate-stress udp-flows --connect IP:PORT --flows N --secs S [--interval-ms M]";

/// Upper bounds, so a typo cannot turn a test into a runaway load.
const MAX_COUNT: u64 = 5_000_000;
const MAX_SECS: u64 = 120;
const MAX_CONNS: u64 = 512;
const MAX_THREADS: u64 = 64;
const MAX_ROUNDS: u64 = 10_000;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let Some(mode) = argv.get(1) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let r = Args::parse(&argv[2..], USAGE).and_then(|a| match mode.as_str() {
        "syn-flood" => syn_flood(&a),
        "tcp-hold" => tcp_hold(&a),
        "udp-race" => udp_race(&a),
        "udp-flows" => udp_flows(&a),
        m => bail!("unknown mode {m:?}\n{USAGE}"),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afgate-stress {mode}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{s:?} is not a MAC"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a MAC"))
}

/// RFC 1071 one's-complement sum, folded.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for p in parts {
        for c in p.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// xorshift64*: the sources only need to look random to a hash table.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// One Ethernet/IPv4/TCP SYN, 54 bytes, checksums filled.
fn syn_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: SocketAddrV4,
    sport: u16,
    seq: u32,
) -> [u8; 54] {
    let mut f = [0u8; 54];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let c = csum(&[&pseudo, &f[34..54]]);
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

fn syn_flood(a: &Args) -> Result<()> {
    let dev = a.req("dev")?;
    let src_mac = parse_mac(a.req("src-mac")?)?;
    let dst_mac = parse_mac(a.req("dst-mac")?)?;
    let dst = a.addr_v4("dst")?;
    let net = a.req("src-net")?;
    let (base, len) = net
        .split_once('/')
        .with_context(|| format!("--src-net {net:?} is not NET/LEN"))?;
    let base: Ipv4Addr = base.parse().context("--src-net address")?;
    let len: u32 = len.parse().context("--src-net length")?;
    if !(8..=30).contains(&len) {
        bail!("--src-net /{len}: allowed /8../30");
    }
    let host_mask = u32::MAX >> len;
    let count = a.bounded("count", None, MAX_COUNT)?;
    let secs = a.bounded("secs", None, MAX_SECS)?;
    let cdev = std::ffi::CString::new(dev).context("--dev")?;
    // SAFETY: cdev is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev:?}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the descriptor is owned by `owned` below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&owned);
    // Straight to the driver: the qdisc would only add a lock and a queue to overflow.
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and the length is its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ u64::from(std::process::id()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let (mut sent, mut full) = (0u64, 0u64);
    while sent < count {
        // The clock is read once per 256 frames: it is not free at this rate.
        if sent % 256 == 0 && Instant::now() >= deadline {
            break;
        }
        let host = rng.next() & host_mask;
        let src = Ipv4Addr::from(u32::from(base) & !host_mask | host);
        let sport = 1024 + (rng.next() % 64_000) as u16;
        let f = syn_frame(dst_mac, src_mac, src, dst, sport, rng.next());
        // SAFETY: f and sll outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                full += 1;
                std::thread::yield_now();
                continue;
            }
            bail!("sendto: {e}");
        }
        sent += 1;
    }
    let t = start.elapsed().as_secs_f64();
    say(&format!(
        "{{\"sent\":{sent},\"secs\":{t:.3},\"pps\":{:.0},\"enobufs\":{full}}}",
        sent as f64 / t.max(1e-9)
    ));
    Ok(())
}

struct Held {
    s: TcpStream,
    reader: BufReader<TcpStream>,
    rounds: u64,
    failed: Option<String>,
}

fn tcp_hold(a: &Args) -> Result<()> {
    let addr = SocketAddr::V4(a.addr_v4("connect")?);
    let n = a.bounded("conns", None, MAX_CONNS)?;
    let secs = a.bounded("secs", None, MAX_SECS)?;
    let interval = Duration::from_millis(a.bounded("interval-ms", Some(100), 10_000)?);
    // Generous: under a flood a segment may need a few retransmissions (RTO doubling from
    // 200 ms); only a connection that is really gone should fail.
    let io_timeout = Duration::from_secs(10);
    let mut conns = Vec::new();
    for i in 0..n {
        let s = TcpStream::connect_timeout(&addr, io_timeout)
            .with_context(|| format!("connection {i} to {addr}"))?;
        s.set_read_timeout(Some(io_timeout))?;
        s.set_write_timeout(Some(io_timeout))?;
        s.set_nodelay(true)?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .with_context(|| format!("connection {i}: the server's line"))?;
        conns.push(Held {
            s,
            reader,
            rounds: 0,
            failed: None,
        });
    }
    say(&format!("established {n}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut round = 0u64;
    while Instant::now() < deadline {
        let tick = Instant::now();
        for (i, c) in conns.iter_mut().enumerate() {
            if c.failed.is_some() {
                continue;
            }
            let msg = format!("r{round:08}c{i:04}-0123456789abcdef\n");
            let r = (|| -> Result<()> {
                c.s.write_all(msg.as_bytes())?;
                let mut got = vec![0u8; msg.len()];
                c.reader.read_exact(&mut got)?;
                if got != msg.as_bytes() {
                    bail!("echo differs");
                }
                Ok(())
            })();
            match r {
                Ok(()) => c.rounds += 1,
                Err(e) => c.failed = Some(format!("round {round}: {e:#}")),
            }
        }
        round += 1;
        std::thread::sleep(interval.saturating_sub(tick.elapsed()));
    }
    let rounds: Vec<String> = conns.iter().map(|c| c.rounds.to_string()).collect();
    let failed: Vec<String> = conns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some(format!("\"{i}: {}\"", c.failed.as_ref()?.replace('"', "'"))))
        .collect();
    say(&format!(
        "{{\"conns\":{n},\"rounds\":{round},\"per_conn\":[{}],\"failed\":[{}]}}",
        rounds.join(","),
        failed.join(",")
    ));
    Ok(())
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain old data; CPU_ZERO/CPU_SET write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn udp_race(a: &Args) -> Result<()> {
    let dst = a.addr_v4("connect")?;
    let threads = a.bounded("threads", None, MAX_THREADS)? as usize;
    let rounds = a.bounded("rounds", None, MAX_ROUNDS)?;
    let timeout = Duration::from_millis(a.bounded("timeout-ms", Some(1000), 10_000)?);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = Vec::new();
    let (mut total_sent, mut total_replies) = (0u64, 0u64);
    // Every round's socket stays open to the end, so no two rounds share a source port (a
    // reused port would find the earlier round's entry instead of racing for a new one).
    let mut keep = Vec::new();
    for round in 0..rounds {
        let sock = Arc::new(UdpSocket::bind("0.0.0.0:0")?);
        keep.push(sock.clone());
        let port = sock.local_addr()?.port();
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (sock, barrier) = (sock.clone(), barrier.clone());
                std::thread::spawn(move || -> std::io::Result<()> {
                    pin_to(t % cpus);
                    barrier.wait();
                    sock.send_to(format!("round={round} thread={t}").as_bytes(), dst)?;
                    Ok(())
                })
            })
            .collect();
        let mut sent = 0u64;
        for h in handles {
            if matches!(h.join(), Ok(Ok(()))) {
                sent += 1;
            }
        }
        let mut replies = 0u64;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while replies < sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut buf) {
                Ok(_) => replies += 1,
                Err(_) => break,
            }
        }
        total_sent += sent;
        total_replies += replies;
        out.push(format!("[{port},{sent},{replies}]"));
    }
    say(&format!(
        "{{\"rounds\":{rounds},\"threads\":{threads},\"sent\":{total_sent},\"replies\":{total_replies},\"per_round\":[{}]}}",
        out.join(",")
    ));
    Ok(())
}

fn udp_flows(a: &Args) -> Result<()> {
    let dst = a.addr_v4("connect")?;
    let n = a.bounded("flows", None, MAX_CONNS)? as usize;
    let secs = a.bounded("secs", None, MAX_SECS)?;
    let interval = Duration::from_millis(a.bounded("interval-ms", Some(20), 10_000)?);
    let mut socks = Vec::new();
    for _ in 0..n {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(dst)?;
        s.set_nonblocking(true)?;
        socks.push(s);
    }
    let (mut sent, mut got) = (vec![0u64; n], vec![0u64; n]);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 2048];
    let drain = |socks: &[UdpSocket], got: &mut [u64], buf: &mut [u8]| {
        for (i, s) in socks.iter().enumerate() {
            while s.recv(buf).is_ok() {
                got[i] += 1;
            }
        }
    };
    while Instant::now() < deadline {
        let tick = Instant::now();
        for (i, s) in socks.iter().enumerate() {
            if s.send(b"flow").is_ok() {
                sent[i] += 1;
            }
        }
        drain(&socks, &mut got, &mut buf);
        std::thread::sleep(interval.saturating_sub(tick.elapsed()));
    }
    // Replies still in flight.
    std::thread::sleep(Duration::from_millis(300));
    drain(&socks, &mut got, &mut buf);
    let ports: Vec<String> = socks
        .iter()
        .map(|s| s.local_addr().map_or(0, |a| a.port()).to_string())
        .collect();
    let j = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    say(&format!(
        "{{\"flows\":{n},\"ports\":[{}],\"sent\":[{}],\"received\":[{}]}}",
        ports.join(","),
        j(&sent),
        j(&got)
    ));
    Ok(())
}
