//! Restarting afgate without losing flows (upgrade): the conntrack table lives in a
//! shared-memory segment (`afgate_dataplane::conntrack::shm`) that the new process maps,
//! and the two processes hand the ports over through a Unix socket.
//!
//! ```text
//!  new afgate                                    old afgate (forwarding)
//!  config, tables, map the conntrack segment
//!  connect(handover socket)  ───────────────►   (accepted by its run loop)
//!  "release\n"               ───────────────►   stop API; stop workers (their sockets
//!                                                close: frames fall back to the kernel)
//!                            ◄───────────────   "released\n"          ┐
//!  bind API; attach XDP (replaces the old        (waits)              │ forwarding gap
//!  program); sockets; XSKMAP; start workers                           ┘
//!  "done\n"                  ───────────────►   final stats; exits leaving XDP and the
//!                                                segment in place (the program is the
//!                                                new one's now)
//!  bind the handover socket for the next upgrade
//! ```
//!
//! The segment is shared, not copied, so no flow is lost between the old workers' last
//! packet and the new workers' first. The gap exists because a queue takes one AF_XDP
//! socket at a time: the old sockets must close before the new ones bind. If the new
//! process fails after "release", the old one sees EOF instead of "done", detaches its
//! program if it is still attached (fail-open, as on SIGTERM) and exits; the segment keeps
//! the flows for the next start.

use crate::config::Config;
use afgate_dataplane::conntrack::{Conntrack, Opened, Segment};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `restart:` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestartCfg {
    /// Keep the conntrack table (and with it every NAT translation) in a shared-memory
    /// segment at this path (on tmpfs, e.g. `/dev/shm/afgate/conntrack`), adopted by the
    /// next afgate. Off when absent: the table is on the heap and a restart starts empty.
    #[serde(default)]
    pub state: Option<PathBuf>,
    /// The handover socket a new afgate connects to; default: the API socket's path with
    /// `.handover` appended. Only used with `state`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// How long, at most, the predecessor's XDP program drops (instead of passing to the
    /// kernel) frames for queues with no socket while the sockets change hands; default
    /// [`DEFAULT_HOLD_MS`], 0 = no hold (those frames reach the kernel, as before). A
    /// deadline, so a successor that dies mid-handover cannot black-hole the port for longer.
    #[serde(default)]
    pub hold_ms: Option<u32>,
}

/// Default of `restart.hold_ms`: well above a handover's gap (~0.1 s), far below what
/// would hurt if the successor dies mid-handover (TCP retransmits over it).
pub const DEFAULT_HOLD_MS: u32 = 2000;
/// Largest `restart.hold_ms`.
pub const MAX_HOLD_MS: u32 = 60_000;

impl RestartCfg {
    /// The handover socket for an afgate whose API socket is `api`.
    pub fn socket_path(&self, api: &Path) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            let mut p = api.as_os_str().to_owned();
            p.push(".handover");
            PathBuf::from(p)
        })
    }

    /// The handover hold (`hold_ms`); zero: none.
    pub fn hold(&self) -> Duration {
        Duration::from_millis(u64::from(self.hold_ms.unwrap_or(DEFAULT_HOLD_MS)))
    }

    /// The `restart:` section's problems, as (field path, message).
    pub fn validate_restart(&self) -> Vec<(String, String)> {
        match self.hold_ms {
            Some(ms) if ms > MAX_HOLD_MS => vec![(
                "restart.hold_ms".into(),
                format!("{ms} ms is above the maximum {MAX_HOLD_MS}"),
            )],
            _ => Vec::new(),
        }
    }
}

/// How long the old process may take to stop its workers, and how long it waits for the
/// new one to come up before it gives up and fails open.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DONE_TIMEOUT: Duration = Duration::from_secs(30);

/// The new process's side: a live predecessor found on the handover socket.
pub struct Predecessor {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Predecessor {
    /// Connects to a predecessor on `path`; `None` when nothing listens there (no file, or
    /// a stale one from a process that died).
    pub fn connect(path: &Path) -> anyhow::Result<Option<Predecessor>> {
        match UnixStream::connect(path) {
            Ok(stream) => {
                let reader = BufReader::new(stream.try_clone()?);
                Ok(Some(Predecessor {
                    stream,
                    reader,
                    path: path.to_owned(),
                }))
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
    }

    fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut l = String::new();
        let n = self
            .reader
            .read_line(&mut l)
            .with_context(|| format!("handover {}: reading", self.path.display()))?;
        if n == 0 {
            bail!("handover {}: the old afgate hung up", self.path.display());
        }
        Ok(l.trim().to_owned())
    }

    /// Asks the old process to stop forwarding; returns once its workers have stopped and
    /// its sockets are closed, with the old process's pid and how long its workers took to
    /// stop (the forwarding gap starts when they do).
    pub fn release(&mut self) -> anyhow::Result<(u32, Duration)> {
        self.stream.write_all(b"release\n")?;
        let l = self.line(RELEASE_TIMEOUT)?;
        let mut w = l.split(' ');
        if w.next() != Some("released") {
            bail!(
                "handover {}: expected \"released\", got {l:?}",
                self.path.display()
            );
        }
        let pid = w.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let stop_us = w.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Ok((pid, Duration::from_micros(stop_us)))
    }

    /// Tells the old process that this one forwards now, and waits (bounded) for it to exit.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.stream.write_all(b"done\n")?;
        let deadline = Instant::now() + DONE_TIMEOUT;
        // Its exit closes the connection: EOF (or a reset).
        let mut l = String::new();
        while Instant::now() < deadline {
            self.stream
                .set_read_timeout(Some(Duration::from_millis(200)))?;
            l.clear();
            match self.reader.read_line(&mut l) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => return Ok(()),
            }
        }
        bail!(
            "handover {}: the old afgate did not exit within {DONE_TIMEOUT:?}",
            self.path.display()
        )
    }
}

/// The old process's side: the listening socket, polled from the run loop.
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

/// A successor that asked for the ports.
pub struct Successor {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Listener {
    /// Binds `path` (replacing a socket nobody serves: a predecessor's, or a stale one).
    pub fn bind(path: &Path) -> anyhow::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "{}: another afgate serves this handover socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the handover socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Listener {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A successor that connected as root and sent "release", if any (never blocks for
    /// long: a connection that sends nothing within a second is dropped).
    pub fn poll(&self) -> Option<Successor> {
        let (stream, _) = self.listener.accept().ok()?;
        // Only root may take the ports over (the socket is 0600 too, as the API's is).
        if crate::api::peer_uid(&stream).ok()? != 0 {
            return None;
        }
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut l = String::new();
        match reader.read_line(&mut l) {
            Ok(n) if n > 0 && l.trim() == "release" => Some(Successor { stream, reader }),
            _ => None,
        }
    }
}

impl Successor {
    /// Tells the successor that this process's workers and sockets are gone, and how long
    /// stopping them took.
    pub fn released(&mut self, stopping: Duration) -> std::io::Result<()> {
        self.stream.write_all(
            format!("released {} {}\n", std::process::id(), stopping.as_micros()).as_bytes(),
        )
    }

    /// Waits for "done": true if the successor took over, false if it hung up or timed out.
    pub fn wait_done(mut self) -> bool {
        if self.stream.set_read_timeout(Some(DONE_TIMEOUT)).is_err() {
            return false;
        }
        let mut l = String::new();
        matches!(self.reader.read_line(&mut l), Ok(n) if n > 0 && l.trim() == "done")
    }
}

/// What `afgate run` sets up for restarts before it takes the ports: the conntrack table
/// (shared or not) and the predecessor to take over from, if one is running.
pub struct Startup {
    conntrack: Option<Conntrack>,
    segment: Option<Segment>,
    predecessor: Option<Predecessor>,
    socket: Option<PathBuf>,
    /// When the predecessor answered, its pid, and how long its workers took to stop.
    released: Option<(Instant, u32, Duration)>,
}

impl Startup {
    /// Opens (or creates) the conntrack segment and finds a predecessor on the handover
    /// socket. With `takeover`, a predecessor is required. Without `restart.state`, the
    /// table is on the heap and there is no handover.
    pub fn prepare(cfg: &Config, api: &Path, takeover: bool) -> anyhow::Result<Startup> {
        let ct_cfg = cfg.conntrack.config();
        let Some(state) = &cfg.restart.state else {
            if takeover {
                bail!(
                    "--takeover needs restart.state in the configuration (the shared conntrack segment)"
                );
            }
            return Ok(Startup {
                conntrack: Some(Conntrack::new(ct_cfg)),
                segment: None,
                predecessor: None,
                socket: None,
                released: None,
            });
        };
        let socket = cfg.restart.socket_path(api);
        let predecessor = Predecessor::connect(&socket)?;
        if takeover && predecessor.is_none() {
            bail!(
                "--takeover: no running afgate answers on {}",
                socket.display()
            );
        }
        let (ct, seg, opened) = Conntrack::open_shared(ct_cfg, state)?;
        match &opened {
            Opened::Created => println!(
                "afgate: conntrack state {}: created ({} flows, {} MiB)",
                state.display(),
                ct.capacity(),
                seg.len >> 20
            ),
            Opened::Adopted => {
                if predecessor.is_none() {
                    // Nobody else maps it: a previous afgate died, maybe mid-insert.
                    let n = ct.recover_abandoned();
                    if n > 0 {
                        println!(
                            "afgate: conntrack state: freed {n} slot(s) left mid-insert or mid-kill"
                        );
                    }
                }
                println!(
                    "afgate: conntrack state {}: adopted {} flow(s)",
                    state.display(),
                    ct.count()
                );
            }
            Opened::Replaced(e) => eprintln!(
                "afgate: warning: {e}; started a fresh table (the previous flows are lost)"
            ),
        }
        Ok(Startup {
            conntrack: Some(ct),
            segment: Some(seg),
            predecessor,
            socket: Some(socket),
            released: None,
        })
    }

    /// The table, once (for `Shared`).
    pub fn take_conntrack(&mut self) -> Conntrack {
        self.conntrack
            .take()
            .expect("take_conntrack is called once")
    }

    /// The dataplane clock's zero when the table is shared.
    pub fn epoch(&self) -> Option<Instant> {
        self.segment.as_ref().map(Segment::epoch)
    }

    /// Whether a predecessor is handing over.
    pub fn is_takeover(&self) -> bool {
        self.predecessor.is_some()
    }

    /// Asks the predecessor to stop forwarding (no-op without one). Call right before
    /// binding the API socket and starting the runtime, after starting the hold in the
    /// predecessor's programs (`crate::runtime::Prepared::hold_predecessor`).
    pub fn release(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &mut self.predecessor {
            let (pid, stopping) = p.release()?;
            self.released = Some((Instant::now(), pid, stopping));
        }
        Ok(())
    }

    /// After the runtime started (its workers forwarding since `forwarding`): reports the
    /// gap and the frames the predecessor's programs dropped under the hold (`held`: `None`
    /// without a hold), lets the predecessor exit, and binds the handover socket for the
    /// next upgrade.
    pub fn started(
        &mut self,
        forwarding: Instant,
        held: Option<u64>,
    ) -> anyhow::Result<Option<Listener>> {
        if let Some((at, pid, stopping)) = self.released.take() {
            let ours = forwarding.saturating_duration_since(at);
            println!(
                "afgate: took over from pid {pid}: {:.1} ms from its workers stopping to ours forwarding ({:.1} ms its stop, {:.1} ms our start); programs swapped {:.1} ms later; {}",
                (stopping + ours).as_secs_f64() * 1e3,
                stopping.as_secs_f64() * 1e3,
                ours.as_secs_f64() * 1e3,
                forwarding.elapsed().as_secs_f64() * 1e3,
                match held {
                    Some(n) => format!(
                        "held_drops {n} (frames dropped, not passed to the kernel, in the gap)"
                    ),
                    None => "no hold (frames in the gap went to the kernel)".into(),
                }
            );
            if let Some(p) = self.predecessor.take()
                && let Err(e) = p.finish()
            {
                eprintln!("afgate: warning: {e:#}");
            }
        }
        self.socket.as_deref().map(Listener::bind).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_and_done_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("afgate-handover-{}", std::process::id()));
        let path = dir.join("h.sock");
        let l = Listener::bind(&path).unwrap();
        assert!(l.poll().is_none());
        assert!(
            Listener::bind(&path).is_err(),
            "a live socket is not replaced"
        );
        let new = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut p = Predecessor::connect(&path).unwrap().unwrap();
                let (pid, stopping) = p.release().unwrap();
                assert_eq!(stopping, Duration::from_micros(1500));
                p.finish().map(|()| pid)
            }
        });
        let mut succ = loop {
            if let Some(s) = l.poll() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        succ.released(Duration::from_micros(1500)).unwrap();
        assert!(succ.wait_done());
        // Dropping the stream is the old process exiting.
        assert_eq!(new.join().unwrap().unwrap(), std::process::id());
        drop(l);
        assert!(Predecessor::connect(&path).unwrap().is_none());
        assert!(Predecessor::connect(&dir.join("none")).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hold_defaults_to_two_seconds_and_is_bounded() {
        let mut c = RestartCfg::default();
        assert_eq!(c.hold(), Duration::from_secs(2));
        c.hold_ms = Some(0);
        assert!(c.hold().is_zero());
        assert!(c.validate_restart().is_empty());
        c.hold_ms = Some(MAX_HOLD_MS + 1);
        let e = c.validate_restart();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "restart.hold_ms");
    }

    #[test]
    fn socket_defaults_beside_the_api() {
        let c = RestartCfg::default();
        assert_eq!(
            c.socket_path(Path::new("/run/afgate/afgate.sock")),
            PathBuf::from("/run/afgate/afgate.sock.handover")
        );
    }
}
