//! afgate-flows: long-lived TCP flows and a fixed-rate UDP probe for the restart test
//! (`tests/tests/restart.rs`), on real kernel sockets.
//!
//! ```text
//! afgate-flows echo-server --listen ADDR:PORT --secs N [--delay-ms D]
//! afgate-flows clients     --connect ADDR:PORT --count N --secs T [--interval-ms I] [--timeout-ms X]
//! afgate-flows probe-recv  --listen ADDR:PORT --secs N
//! afgate-flows probe-send  --connect ADDR:PORT --rate PPS --secs T
//! ```
//!
//! `clients` opens `count` connections (printing `connected N` once all are up), then every
//! connection sends a 16-byte request every `interval-ms` and waits up to `timeout-ms` for
//! its echo, for `secs` seconds, and closes. It prints one JSON line: how many flows
//! completed every exchange, and what broke the others (`reset`, `timeout`, `other`).
//! `probe-recv` prints `listening`, then after `secs` one JSON line with the datagrams
//! received, the largest gap between consecutive arrivals and every gap of 10 ms or more
//! as `[start, end]` in Unix milliseconds (to find the gap of a given moment).
//! `echo-server --delay-ms D` answers each request D ms late, so that replies are on the
//! wire at any moment (a restart's gap then meets server-to-client traffic, not only
//! requests). Every mode stops by itself.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MAX_SECS: u64 = 600;
const MAX_FLOWS: usize = 2000;
const MAX_RATE: u64 = 20_000;

fn args() -> (String, HashMap<String, String>) {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_default();
    let mut m = HashMap::new();
    while let Some(k) = it.next() {
        if let Some(k) = k.strip_prefix("--") {
            m.insert(k.to_owned(), it.next().unwrap_or_default());
        }
    }
    (mode, m)
}

fn get<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str, default: Option<T>) -> T {
    match m.get(k).map(|v| v.parse::<T>()) {
        Some(Ok(v)) => v,
        _ => default.unwrap_or_else(|| {
            eprintln!("afgate-flows: --{k} missing or invalid");
            std::process::exit(2)
        }),
    }
}

fn main() -> ExitCode {
    let (mode, a) = args();
    let r = match mode.as_str() {
        "echo-server" => echo_server(&a),
        "clients" => clients(&a),
        "probe-recv" => probe_recv(&a),
        "probe-send" => probe_send(&a),
        _ => {
            eprintln!(
                "usage: see the source's header (modes: echo-server, clients, probe-recv, probe-send)"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("afgate-flows: {e}");
            ExitCode::FAILURE
        }
    }
}

fn secs(a: &HashMap<String, String>) -> Duration {
    Duration::from_secs(get::<u64>(a, "secs", None).min(MAX_SECS))
}

fn echo_server(a: &HashMap<String, String>) -> std::io::Result<()> {
    let addr: SocketAddr = get(a, "listen", None);
    let deadline = Instant::now() + secs(a);
    let delay = Duration::from_millis(get::<u64>(a, "delay-ms", Some(0)).min(10_000));
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    println!("listening {addr}");
    std::io::stdout().flush()?;
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, _)) => {
                std::thread::spawn(move || echo(s, deadline, delay));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn echo(mut s: TcpStream, deadline: Instant, delay: Duration) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                std::thread::sleep(delay);
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Ok,
    ConnectFailed,
    Reset,
    Timeout,
    Other,
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Outcome::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout,
        _ => Outcome::Other,
    }
}

fn clients(a: &HashMap<String, String>) -> std::io::Result<()> {
    let addr: SocketAddr = get(a, "connect", None);
    let count = get::<usize>(a, "count", None).min(MAX_FLOWS);
    let run = secs(a);
    let interval = Duration::from_millis(get(a, "interval-ms", Some(50)));
    let timeout = Duration::from_millis(get(a, "timeout-ms", Some(5000)));
    // Everyone connects, then everyone starts exchanging at once.
    let barrier = Arc::new(Barrier::new(count + 1));
    let failed_connect = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let (barrier, failed_connect) = (barrier.clone(), failed_connect.clone());
            std::thread::spawn(move || -> (Outcome, u64, String) {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
                barrier.wait();
                let mut s = match s {
                    Ok(s) => s,
                    Err(e) => {
                        failed_connect.store(true, Ordering::Relaxed);
                        return (Outcome::ConnectFailed, 0, e.to_string());
                    }
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(timeout));
                let end = Instant::now() + run;
                let mut n = 0u64;
                let mut buf = [0u8; 16];
                while Instant::now() < end {
                    let req = format!("{i:07} {n:07}\n");
                    if let Err(e) = s.write_all(req.as_bytes()) {
                        return (classify(&e), n, format!("flow {i} write #{n}: {e}"));
                    }
                    match s.read_exact(&mut buf) {
                        Ok(()) if buf == req.as_bytes() => n += 1,
                        Ok(()) => {
                            return (Outcome::Other, n, format!("flow {i} #{n}: wrong echo"));
                        }
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                            return (Outcome::Reset, n, format!("flow {i} #{n}: closed by peer"));
                        }
                        Err(e) => return (classify(&e), n, format!("flow {i} read #{n}: {e}")),
                    }
                    std::thread::sleep(interval);
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
                (Outcome::Ok, n, String::new())
            })
        })
        .collect();
    barrier.wait();
    println!(
        "connected {}",
        if failed_connect.load(Ordering::Relaxed) {
            "with failures"
        } else {
            "all"
        }
    );
    std::io::stdout().flush()?;
    let mut by = HashMap::<&str, u64>::new();
    let mut exchanges = 0u64;
    let mut min_exchanges = u64::MAX;
    let mut errors = Vec::new();
    for t in threads {
        let (o, n, e) = t
            .join()
            .unwrap_or((Outcome::Other, 0, "thread panicked".into()));
        exchanges += n;
        min_exchanges = min_exchanges.min(n);
        let k = match o {
            Outcome::Ok => "completed",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Other => "other",
        };
        *by.entry(k).or_default() += 1;
        if !e.is_empty() && errors.len() < 10 {
            errors.push(e);
        }
    }
    let g = |k: &str| by.get(k).copied().unwrap_or(0);
    println!(
        "{{\"flows\":{count},\"completed\":{},\"connect_failed\":{},\"reset\":{},\"timeout\":{},\"other\":{},\"exchanges\":{exchanges},\"min_exchanges\":{},\"errors\":{:?}}}",
        g("completed"),
        g("connect_failed"),
        g("reset"),
        g("timeout"),
        g("other"),
        if count == 0 { 0 } else { min_exchanges },
        errors
    );
    Ok(())
}

fn probe_recv(a: &HashMap<String, String>) -> std::io::Result<()> {
    let addr: SocketAddr = get(a, "listen", None);
    let deadline = Instant::now() + secs(a);
    let s = UdpSocket::bind(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(20)))?;
    println!("listening {addr}");
    std::io::stdout().flush()?;
    let mut buf = [0u8; 64];
    let (mut received, mut last, mut max_gap, mut gap_after, mut max_seq) =
        (0u64, None::<(Instant, u64)>, Duration::ZERO, 0u64, 0u64);
    // Gaps of 10 ms and more as (start, end) in Unix milliseconds, so that a test can tell
    // the gap of the moment it cares about (a restart) from scheduling noise elsewhere.
    let mut gaps: Vec<(u128, u128)> = Vec::new();
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    };
    while Instant::now() < deadline {
        let Ok(n) = s.recv(&mut buf) else { continue };
        let now = Instant::now();
        let seq = buf[..n.min(8)]
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        received += 1;
        max_seq = max_seq.max(seq);
        if let Some((t, prev)) = last {
            let gap = now - t;
            if gap > max_gap {
                max_gap = gap;
                gap_after = prev;
            }
            if gap >= Duration::from_millis(10) && gaps.len() < 1000 {
                let end = unix_ms();
                gaps.push((end - gap.as_millis(), end));
            }
        }
        last = Some((now, seq));
    }
    let gaps: Vec<String> = gaps.iter().map(|(a, b)| format!("[{a},{b}]")).collect();
    println!(
        "{{\"received\":{received},\"max_seq\":{max_seq},\"max_gap_ms\":{:.3},\"gap_after_seq\":{gap_after},\"gaps\":[{}]}}",
        max_gap.as_secs_f64() * 1e3,
        gaps.join(",")
    );
    Ok(())
}

fn probe_send(a: &HashMap<String, String>) -> std::io::Result<()> {
    let addr: SocketAddr = get(a, "connect", None);
    let rate = get::<u64>(a, "rate", None).clamp(1, MAX_RATE);
    let run = secs(a);
    let s = UdpSocket::bind("0.0.0.0:0")?;
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < run {
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let mut pkt = [0u8; 32];
        pkt[..8].copy_from_slice(&seq.to_be_bytes());
        // A send error (no route yet, a transient ENOBUFS) is one lost probe, not the end.
        let _ = s.send_to(&pkt, addr);
        seq += 1;
    }
    println!("sent {seq}");
    Ok(())
}
