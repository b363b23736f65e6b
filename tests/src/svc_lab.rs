//! Helpers for the services/NAT lab tests (`tests/tests/services_nat.rs`): kernel-socket
//! peers that keep a timestamped record of what they received and from whom, sockets opened
//! inside lab namespaces, the control API spoken directly (so a test knows to the
//! millisecond when a backend change was published), and a pcap reader for captures whose
//! frames a test checks byte by byte (checksums, quoted headers of ICMP errors).
//!
//! A socket belongs to the network namespace it was created in, whichever thread uses it
//! later: [`in_ns`] creates it on a thread that entered the namespace, and the test then
//! drives it from its own threads. Every server here stops at its deadline or when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::netns::Netns;
use crate::process::Proc;
use crate::util::TempDir;

pub use crate::overlay_lab::in_netns as in_ns;

/// The `afgate: final-stats {json}` line afgate prints when it stops.
pub fn final_stats(log: &str) -> Result<Value> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("afgate: final-stats "))
        .context("no final-stats line")?;
    Ok(serde_json::from_str(line)?)
}

/// A counter at `path` in a stats object (0 when absent).
pub fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// The control socket, spoken directly: one JSON request per line, one response per line.
#[derive(Clone)]
pub struct Api {
    path: PathBuf,
}

impl Api {
    pub fn new(path: &Path) -> Api {
        Api { path: path.into() }
    }

    /// Sends `{"op": op, ..fields}` and returns `result`, or fails with afgate's error.
    pub fn call(&self, op: &str, fields: Value) -> Result<Value> {
        let mut req = json!({ "op": op });
        if let (Some(r), Value::Object(f)) = (req.as_object_mut(), fields) {
            r.extend(f);
        }
        let mut s = UnixStream::connect(&self.path)
            .with_context(|| format!("connect {}", self.path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{req}\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("bad response {line:?}"))?;
        if v["ok"] != Value::Bool(true) {
            bail!("{op} {req}: {}", v["error"]);
        }
        Ok(v["result"].clone())
    }

    /// `backend_add|backend_del|backend_set_weight|backend_drain` on `proto vip:port`.
    pub fn backend(
        &self,
        op: &str,
        proto: &str,
        vip: SocketAddr,
        backend: SocketAddr,
        weight: Option<u16>,
    ) -> Result<Value> {
        let mut f = json!({
            "proto": proto,
            "addr": vip.ip().to_string(),
            "port": vip.port(),
            "backend": backend.ip().to_string(),
            "backend_port": backend.port(),
        });
        if let Some(w) = weight {
            f["weight"] = json!(w);
        }
        self.call(op, f)
    }

    /// One unlabelled counter or gauge of the Prometheus text (`metrics`), e.g.
    /// `afgate_conntrack_early_drops_total`.
    pub fn metric(&self, name: &str) -> Result<u64> {
        let text = self.call("metrics", json!({}))?;
        let text = text.as_str().context("metrics: not text")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .with_context(|| format!("no metric {name}"))
    }

    pub fn conntrack_count(&self) -> Result<u64> {
        self.call("conntrack_count", json!({}))?["entries"]
            .as_u64()
            .context("conntrack_count: no entries")
    }
}

/// What a backend received: when, from which client address (as it saw it, after NAT), how
/// many bytes, and on which connection (TCP; 0 for UDP).
#[derive(Clone, Debug)]
pub struct Recv {
    pub at: Instant,
    pub client: SocketAddr,
    pub len: usize,
    pub conn: u64,
}

/// A kernel-socket server in a lab namespace (TCP echo or UDP echo) that records every
/// receive. It answers like `afgate-peer`: first `id=ID client=IP:PORT local=IP:PORT`, then
/// (TCP) an echo of whatever arrives; UDP datagrams are answered with that line followed by
/// the datagram itself.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recv>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// A TCP server on `addr` in `ns`, for at most `max_secs`.
    pub fn tcp(ns: &Netns, addr: SocketAddr, id: &str, max_secs: u64) -> Result<Backend> {
        let l = in_ns(ns, || TcpListener::bind(addr))?.with_context(|| format!("bind {addr}"))?;
        l.set_nonblocking(true)?;
        let (log, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let deadline = Instant::now() + Duration::from_secs(max_secs);
        let (id_s, log2, stop2) = (id.to_string(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conn = 0u64;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, client)) => {
                        conn += 1;
                        let (id, log, stop) = (id_s.clone(), log2.clone(), stop2.clone());
                        std::thread::spawn(move || {
                            let _ = serve_tcp(s, &id, client, conn, &log, &stop, deadline);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Backend {
            id: id.into(),
            addr,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// A UDP server on `addr` in `ns`, for at most `max_secs`. `silent`: receive and record
    /// but never answer (a backend whose flows stay unreplied).
    pub fn udp(
        ns: &Netns,
        addr: SocketAddr,
        id: &str,
        max_secs: u64,
        silent: bool,
    ) -> Result<Backend> {
        let s = in_ns(ns, || UdpSocket::bind(addr))?.with_context(|| format!("bind {addr}"))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (log, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let deadline = Instant::now() + Duration::from_secs(max_secs);
        let (id_s, log2, stop2) = (id.to_string(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, client)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let at = Instant::now();
                push(
                    &log2,
                    Recv {
                        at,
                        client,
                        len: n,
                        conn: 0,
                    },
                );
                if !silent {
                    let mut r = format!("id={id_s} client={client} local={addr} ").into_bytes();
                    // Only the start of the datagram: a large reply would be fragmented, and this
                    // lab checks flows, not fragment handling.
                    r.extend_from_slice(&buf[..n.min(64)]);
                    let _ = s.send_to(&r, client);
                }
            }
        });
        Ok(Backend {
            id: id.into(),
            addr,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// Everything received so far, oldest first.
    pub fn recvs(&self) -> Vec<Recv> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Receives at or after `t`.
    pub fn recvs_since(&self, t: Instant) -> Vec<Recv> {
        self.recvs().into_iter().filter(|r| r.at >= t).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn push(log: &Mutex<Vec<Recv>>, r: Recv) {
    if let Ok(mut l) = log.lock() {
        l.push(r);
    }
}

fn serve_tcp(
    mut s: TcpStream,
    id: &str,
    client: SocketAddr,
    conn: u64,
    log: &Mutex<Vec<Recv>>,
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let local = s.local_addr()?;
    push(
        log,
        Recv {
            at: Instant::now(),
            client,
            len: 0,
            conn,
        },
    );
    s.write_all(format!("id={id} client={client} local={local}\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                push(
                    log,
                    Recv {
                        at: Instant::now(),
                        client,
                        len: n,
                        conn,
                    },
                );
                s.write_all(&buf[..n])?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A TCP connection opened from `ns`, after the server's `id=` line was read.
pub struct TcpConn {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The server's first line: `id=.. client=.. local=..`.
    pub hello: String,
}

impl TcpConn {
    pub fn open(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<TcpConn> {
        let stream = in_ns(ns, || TcpStream::connect_timeout(&to, timeout))?
            .with_context(|| format!("connect {to}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut hello = String::new();
        reader
            .read_line(&mut hello)
            .with_context(|| format!("read the server's line from {to}"))?;
        if !hello.ends_with('\n') {
            bail!("{to}: server line cut short: {hello:?}");
        }
        Ok(TcpConn {
            stream,
            reader,
            hello: hello.trim_end().to_string(),
        })
    }

    /// The answering backend's id.
    pub fn id(&self) -> String {
        crate::peer::field(&self.hello, "id").unwrap_or_default()
    }

    /// Sends `n` bytes of a pattern and checks they come back.
    pub fn echo(&mut self, n: usize) -> Result<()> {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        self.stream.write_all(&data)?;
        let mut got = vec![0u8; n];
        self.reader.read_exact(&mut got).context("read echo")?;
        if got != data {
            bail!("echo of {n} bytes differs");
        }
        Ok(())
    }
}

/// A UDP socket in `ns` bound to `local` (port 0: any) and connected to `to`.
pub fn udp_socket(ns: &Netns, local: SocketAddr, to: SocketAddr) -> Result<UdpSocket> {
    in_ns(ns, || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind(local)?;
        s.connect(to)?;
        Ok(s)
    })?
    .with_context(|| format!("udp {local} -> {to}"))
}

/// The backend id in a UDP reply (`id=..` first word).
pub fn reply_id(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    crate::peer::field(&text, "id")
}

/// `tcpdump -w` on a lab device, read back as raw frames (see [`read_pcap`]).
pub struct RawCapture {
    proc: Proc,
    pcap: PathBuf,
    _dir: TempDir,
}

impl RawCapture {
    /// Starts capturing on `dev` in `ns` (bounded by `max_packets` and `max_secs`).
    pub fn start(
        ns: &Netns,
        dev: &str,
        filter: &str,
        max_packets: u32,
        max_secs: u32,
    ) -> Result<RawCapture> {
        let dir = TempDir::new("rawpcap")?;
        let pcap = dir.path().join(format!("{dev}.pcap"));
        let pcap_s = pcap.to_str().context("pcap path")?.to_string();
        let (count, secs) = (max_packets.max(1).to_string(), max_secs.max(1).to_string());
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            ns.name(),
            "timeout",
            "--signal=INT",
            &secs,
            "tcpdump",
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-i",
            dev,
            "-c",
            &count,
            "-w",
            &pcap_s,
        ];
        if !filter.is_empty() {
            argv.push(filter);
        }
        let mut proc = Proc::spawn(&argv, false)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proc.stderr().contains("listening on") {
            if proc.try_wait()?.is_some() || Instant::now() >= deadline {
                bail!("tcpdump did not start\n{}", proc.output_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RawCapture {
            proc,
            pcap,
            _dir: dir,
        })
    }

    /// Stops tcpdump and returns the captured frames, oldest first.
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        if self.proc.try_wait()?.is_none() {
            self.proc.signal(libc::SIGINT);
            if self.proc.wait_timeout(Duration::from_secs(5))?.is_none() {
                self.proc.kill()?;
            }
        }
        read_pcap(&std::fs::read(&self.pcap).context("read pcap")?)
    }
}

/// Frames of a classic little-endian pcap file (what tcpdump writes on this host).
pub fn read_pcap(b: &[u8]) -> Result<Vec<Vec<u8>>> {
    if b.len() < 24 || b[..4] != [0xd4, 0xc3, 0xb2, 0xa1] {
        bail!("not a little-endian pcap file");
    }
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let incl = u32::from_le_bytes([b[off + 8], b[off + 9], b[off + 10], b[off + 11]]) as usize;
        let start = off + 16;
        let Some(frame) = b.get(start..start + incl) else {
            break;
        };
        out.push(frame.to_vec());
        off = start + incl;
    }
    Ok(out)
}

/// RFC 1071 sum over `data` (plus `init`), folded and complemented: 0 means "verifies".
pub fn inet_checksum(init: u32, data: &[u8]) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
