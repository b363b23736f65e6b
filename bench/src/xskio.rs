//! AF_XDP plumbing shared by the generator, the sink and the minimal forwarder: one UMEM and
//! one socket per process, built from afgate's own `xsk` layer, and the clock both ends of a
//! measurement read.
#![allow(unsafe_code)]

use afgate_bpf::{ModeRequest, PortSteering, SteerConfig};
use afgate_dataplane::xsk::socket::RingSizes;
use afgate_dataplane::xsk::{BindMode, FramePool, Umem, UmemLayout, Xsk};
use anyhow::{Context, Result};

/// CLOCK_MONOTONIC in ns: the generator stamps it, the sink (same host, same clock) reads it.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists. vDSO: no
    // syscall.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread, if asked to.
pub fn pin(core: Option<usize>) {
    if let Some(id) = core
        && !core_affinity::set_for_current(core_affinity::CoreId { id })
    {
        eprintln!("afgate-bench: could not pin to core {id}");
    }
}

/// A UMEM with one socket on (dev, queue 0), and the steering program when the socket must
/// receive.
pub struct Port {
    pub xsk: Xsk,
    pub pool: FramePool,
    pub umem: Umem,
    /// Kept for its lifetime: dropping it detaches XDP from the device.
    pub steer: Option<PortSteering>,
}

impl Port {
    /// `ring`: entries of every ring. The sink wants deep rings: it shares a core with the
    /// generator, and the kernel keeps filling its rx ring while it is not scheduled.
    pub fn open(dev: &str, receive: bool, frames: u32, ring: u32) -> Result<Port> {
        Self::open_queue(dev, 0, receive, frames, ring)
    }

    /// [`Port::open`] on rx/tx queue `queue` (multi-queue veths pick the peer's rx queue
    /// from the sender's tx queue).
    pub fn open_queue(
        dev: &str,
        queue: u32,
        receive: bool,
        frames: u32,
        ring: u32,
    ) -> Result<Port> {
        let layout = UmemLayout {
            frame_size: 2048,
            frames,
            fill_size: ring,
            comp_size: ring,
        };
        let (umem, pool) = Umem::new(layout).context("UMEM")?;
        let steer = if receive {
            let cfg = SteerConfig {
                own_mac: [0; 6],
                // Everything that reaches the device is ours: the XDP ceiling forwards frames
                // with the DUT's MAC as destination.
                only_own_mac: false,
                passthru: Vec::new(),
            };
            Some(
                PortSteering::attach(dev, &cfg, ModeRequest::Auto)
                    .with_context(|| format!("attach XDP to {dev}"))?,
            )
        } else {
            None
        };
        let xsk = Xsk::new(
            &umem,
            dev,
            queue,
            RingSizes { rx: ring, tx: ring },
            BindMode::Auto,
        )
        .with_context(|| format!("AF_XDP socket on {dev}"))?;
        if let Some(s) = &steer {
            s.register_xsk(queue, xsk.fd()).context("register socket")?;
        }
        Ok(Port {
            xsk,
            pool,
            umem,
            steer,
        })
    }

    /// The bytes of the frame at `addr`, `len` long.
    ///
    /// # Safety
    /// The caller owns that frame under the ring protocol (from the pool, the rx ring or the
    /// completion ring, and not on a fill or tx ring now) and holds no other reference to it.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn frame(&self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let base = self.umem.chunk_of(addr);
        let off = (addr - base) as usize;
        // SAFETY: the caller's ownership contract is exactly chunk_mut's.
        let chunk = unsafe { self.umem.chunk_mut(addr) }?;
        chunk.get_mut(off..off + len)
    }

    /// Puts as many pool frames as fit on the fill ring.
    pub fn refill(&mut self, scratch: &mut [u64]) {
        let want = (self.xsk.fill.free(scratch.len() as u32) as usize).min(scratch.len());
        let got = self.pool.alloc_into(&mut scratch[..want]);
        let put = self.xsk.fill.produce(&scratch[..got]);
        for &a in &scratch[put..got] {
            self.pool.free(a);
        }
        if self.xsk.fill.needs_wakeup() {
            self.xsk.kick_rx();
        }
    }

    /// Copy mode transmits inside sendto(2), a bounded number of frames per call: kick until
    /// the kernel took everything or a few calls made no progress.
    /// Returns the number of sendto(2) calls made.
    pub fn kick_tx(&mut self) -> u32 {
        let mut n = 0;
        while n < 8 && self.xsk.tx.needs_wakeup() && self.xsk.tx.outstanding() > 0 {
            self.xsk.kick_tx();
            n += 1;
        }
        n
    }

    /// Sleeps in poll(2) until the socket has something to read, up to `ms`.
    pub fn wait_rx(&self, ms: i32) {
        let mut fd = libc::pollfd {
            fd: self.xsk.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one initialised pollfd on our stack.
        unsafe { libc::poll(&mut fd, 1, ms) };
    }
}

impl Port {
    /// Sleeps in ppoll(2) until the socket has something to read, up to `d` (µs precision,
    /// where poll(2) would round to milliseconds).
    pub fn wait_rx_for(&self, d: std::time::Duration) {
        let mut fd = libc::pollfd {
            fd: self.xsk.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
        };
        // SAFETY: one initialised pollfd and a timespec on our stack; no signal mask.
        unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
    }
}

/// SIGINT/SIGTERM set this; every loop also has its own packet and time bounds.
pub fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let f = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, f.clone())?;
    }
    Ok(f)
}
