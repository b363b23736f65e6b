//! Tools for the memory tests (`tests/tests/memory.rs`): a global allocator that counts
//! allocations per kernel thread id, threads that run inside a lab namespace, a UDP traffic
//! mix (plain forwarding, ClusterIP new and established flows, a next hop that needs ARP)
//! with echo peers, and `/proc` readers (thread names, VmRSS).

use anyhow::{Context, Result};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::ErrorKind;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Threads a process may have counted at once; more land in [`CountingAlloc::untracked`].
const SLOTS: usize = 1024;

struct Slot {
    tid: AtomicI32,
    allocs: AtomicU64,
    bytes: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    tid: AtomicI32::new(0),
    allocs: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static UNTRACKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, so the
    // allocator can use it (a lazily initialised thread-local could recurse into it).
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A `#[global_allocator]` that forwards to the system allocator and counts, per kernel
/// thread id, every allocation and reallocation. Frees are not counted: the window a test
/// checks must see no allocation at all, whatever is freed in it.
pub struct CountingAlloc;

impl CountingAlloc {
    /// (allocations, bytes) made so far by the thread with kernel id `tid`.
    pub fn thread(tid: i32) -> (u64, u64) {
        TABLE
            .iter()
            .find(|s| s.tid.load(Relaxed) == tid)
            .map(|s| (s.allocs.load(Relaxed), s.bytes.load(Relaxed)))
            .unwrap_or((0, 0))
    }

    /// Allocations by threads that found no free slot (should stay 0).
    pub fn untracked() -> u64 {
        UNTRACKED.load(Relaxed)
    }

    fn count(bytes: usize) {
        let slot = MY_SLOT
            .try_with(|c| {
                if c.get() == usize::MAX {
                    c.set(claim_slot());
                }
                c.get()
            })
            .unwrap_or(usize::MAX);
        match TABLE.get(slot) {
            Some(s) => {
                s.allocs.fetch_add(1, Relaxed);
                s.bytes.fetch_add(bytes as u64, Relaxed);
            }
            None => {
                UNTRACKED.fetch_add(1, Relaxed);
            }
        }
    }
}

/// This thread's slot (a recycled thread id shares its predecessor's, which only adds to
/// counts taken before the window a test compares).
fn claim_slot() -> usize {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let start = tid as usize % SLOTS;
    for i in 0..SLOTS {
        let s = &TABLE[(start + i) % SLOTS];
        match s.tid.compare_exchange(0, tid, Relaxed, Relaxed) {
            Ok(_) => return (start + i) % SLOTS,
            Err(t) if t == tid => return (start + i) % SLOTS,
            Err(_) => {}
        }
    }
    usize::MAX
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is System's; counting touches only atomics and a const thread-local.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: forwarded with the caller's layout, which the caller guarantees is valid.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every allocation here does) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller vouches for new_size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Kernel ids of this process's threads whose name (`comm`) is `name`.
pub fn threads_named(name: &str) -> Result<Vec<i32>> {
    let mut tids = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name
            && let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok())
        {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// (kernel id, name) of every thread of this process, for error messages.
pub fn thread_names() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                comm.trim_end().to_string(),
            )
        })
        .collect()
}

/// `VmRSS` of process `pid` in KiB (`pid` 0: this process).
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// `VmHWM` (peak RSS) of process `pid` in KiB.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = if pid == 0 {
        "/proc/self/status".to_string()
    } else {
        format!("/proc/{pid}/status")
    };
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{key} in {path}"))
}

/// Runs `f` on a new thread inside network namespace `ns` (a name under /run/netns):
/// only that thread moves, so sockets it makes live in the namespace while the rest of
/// the process stays where it is.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    Ok(std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace file we hold open; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                anyhow::bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            drop(file);
            f()
        })?)
}

/// A UDP echo peer in namespace `ns` on `port`, until `stop`; returns datagrams echoed.
pub fn udp_echo(ns: &str, port: u16, stop: Arc<AtomicBool>) -> Result<JoinHandle<Result<u64>>> {
    spawn_in_netns(ns, "memlab-echo", move || {
        let s = UdpSocket::bind(("0.0.0.0", port))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while !stop.load(Relaxed) {
            match s.recv_from(&mut buf) {
                Ok((len, from)) => {
                    n += 1;
                    let _ = s.send_to(&buf[..len], from);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    })
}

/// What the client side of [`traffic_mix`] sends each round.
#[derive(Debug, Clone)]
pub struct Mix {
    /// A routed destination (no NAT), sent to from `established` fixed sockets.
    pub plain: SocketAddrV4,
    /// A ClusterIP: `established` fixed sockets, plus `new_flows` fresh sockets per round
    /// (a new 5-tuple each, so a new conntrack entry).
    pub vip: SocketAddrV4,
    /// A destination whose next hop afgate resolves by ARP, one datagram per round.
    pub arp: Option<SocketAddrV4>,
    pub established: usize,
    pub per_socket: usize,
    pub new_flows: usize,
    /// Pause between rounds: paces the mix so afgate's rings are not simply overrun.
    pub pause: Duration,
}

/// Totals of a [`traffic_mix`] run.
#[derive(Debug, Default, Clone, Copy)]
pub struct MixStats {
    pub rounds: u64,
    pub sent: u64,
    pub new_flows: u64,
    pub replies: u64,
}

/// Sends `mix` from namespace `ns` round after round until `stop` or `max` elapses (a
/// bounded loop either way), reading the echoes that come back.
pub fn traffic_mix(
    ns: &str,
    mix: Mix,
    stop: Arc<AtomicBool>,
    max: Duration,
) -> Result<JoinHandle<Result<MixStats>>> {
    spawn_in_netns(ns, "memlab-mix", move || {
        let connect = |to: SocketAddrV4| -> Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let mut fixed = Vec::new();
        for _ in 0..mix.established {
            fixed.push(connect(mix.plain)?);
            fixed.push(connect(mix.vip)?);
        }
        if let Some(a) = mix.arp {
            fixed.push(connect(a)?);
        }
        let payload = [0x5au8; 64];
        let mut buf = [0u8; 2048];
        let mut st = MixStats::default();
        let deadline = Instant::now() + max;
        while !stop.load(Relaxed) && Instant::now() < deadline {
            for (i, s) in fixed.iter().enumerate() {
                let times = if mix.arp.is_some() && i == fixed.len() - 1 {
                    1
                } else {
                    mix.per_socket
                };
                for _ in 0..times {
                    // A full socket buffer or an ICMP error reported on the socket: the
                    // datagram is simply not counted.
                    if s.send(&payload).is_ok() {
                        st.sent += 1;
                    }
                }
            }
            for _ in 0..mix.new_flows {
                let s = connect(mix.vip)?;
                if s.send(&payload).is_ok() {
                    st.sent += 1;
                    st.new_flows += 1;
                }
            }
            for s in &fixed {
                loop {
                    match s.recv(&mut buf) {
                        Ok(_) => st.replies += 1,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // ECONNREFUSED from an ICMP error: nothing to read.
                        Err(_) => break,
                    }
                }
            }
            st.rounds += 1;
            std::thread::sleep(mix.pause);
        }
        Ok(st)
    })
}
