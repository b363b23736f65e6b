//! One AF_XDP socket: created and bound by xsk-rs/libxdp on (device, queue) with the
//! worker's UMEM, its four rings mapped again from the socket descriptor for [`super::ring`].

use super::ring::{ConsRing, ProdRing, RingRaw, XdpDesc};
use super::umem::Umem;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, QueueSize, SocketConfig};

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("invalid AF_XDP setting: {0}")]
    Config(&'static str),
    #[error("creating UMEM: {0}")]
    Umem(String),
    #[error("creating AF_XDP socket on {dev} queue {queue}: {reason}")]
    Socket {
        dev: String,
        queue: u32,
        reason: String,
    },
}

/// How frames move between the NIC and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy otherwise (veth: copy).
    #[default]
    Auto,
    Copy,
    ZeroCopy,
}

// <linux/if_xdp.h>; spelled out here so the ABI we depend on is visible in one place.
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
/// Linux 6.17+: frames one copy-mode sendto(2) may transmit (default 32, up to the tx ring).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// A ring mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    addr: NonNull<libc::c_void>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned; the cursors using this mapping
        // are fields of the same `Xsk` and are dropped with it.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// An AF_XDP socket with its rx, tx, fill and completion rings.
pub struct Xsk {
    pub rx: ConsRing<XdpDesc>,
    pub tx: ProdRing<XdpDesc>,
    pub fill: ProdRing<u64>,
    pub comp: ConsRing<u64>,
    fd: RawFd,
    zerocopy: bool,
    // Declared after the cursors so they are dropped after them.
    _maps: [Mapping; 4],
    _tx: xsk_rs::TxQueue,
    _rx: xsk_rs::RxQueue,
    _fq_cq: Option<(xsk_rs::FillQueue, xsk_rs::CompQueue)>,
}

// SAFETY: all ring state is owned by this value; the xsk-rs handles are Send.
unsafe impl Send for Xsk {}

impl core::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd)
            .field("zerocopy", &self.zerocopy)
            .finish()
    }
}

/// Ring sizes for one socket.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    pub rx: u32,
    pub tx: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        RingSizes { rx: 2048, tx: 2048 }
    }
}

impl Xsk {
    /// Creates a socket on `dev` queue `queue` sharing `umem`. No XDP program is loaded
    /// (afgate loads its own and registers the socket in its XSKMAP).
    pub fn new(
        umem: &Umem,
        dev: &str,
        queue: u32,
        sizes: RingSizes,
        mode: BindMode,
    ) -> Result<Xsk, XskError> {
        let err = |reason: String| XskError::Socket {
            dev: dev.to_string(),
            queue,
            reason,
        };
        let q = |n: u32, what: &'static str| QueueSize::new(n).map_err(|_| XskError::Config(what));
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        match mode {
            BindMode::Auto => {}
            BindMode::Copy => bind |= BindFlags::XDP_COPY,
            BindMode::ZeroCopy => bind |= BindFlags::XDP_ZEROCOPY,
        }
        let config = SocketConfig::builder()
            .rx_queue_size(q(sizes.rx, "rx ring size")?)
            .tx_queue_size(q(sizes.tx, "tx ring size")?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let name = CString::new(dev).map_err(|_| XskError::Config("device name"))?;
        // SAFETY: xsk-rs requires the UMEM to outlive the socket and frames to be used only
        // by their owner; the worker owns both and drops sockets before the UMEM.
        let (tx, rx, fq_cq) =
            unsafe { xsk_rs::Socket::new(config, umem.inner(), &Interface::new(name), queue) }
                .map_err(|e| {
                    err(format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ))
                })?;
        let fd = rx.fd().as_raw_fd();

        let mut off = MmapOffsets::default();
        let mut optlen = core::mem::size_of::<MmapOffsets>() as libc::socklen_t;
        // SAFETY: off is a properly sized, writable buffer; optlen says its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                SOL_XDP,
                XDP_MMAP_OFFSETS,
                (&mut off as *mut MmapOffsets).cast(),
                &mut optlen,
            )
        };
        if rc != 0 {
            return Err(err(format!(
                "getsockopt(XDP_MMAP_OFFSETS): {}",
                std::io::Error::last_os_error()
            )));
        }
        let layout = umem.layout();
        let map = |pgoff: libc::off_t,
                   o: &RingOffset,
                   entries: u32,
                   entry: usize|
         -> Result<(Mapping, RingRaw), XskError> {
            let len = o.desc as usize + entries as usize * entry;
            // SAFETY: mapping a ring of our own socket; the kernel validates offset and length.
            let addr = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    pgoff,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(err(format!(
                    "mmap ring: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let base = addr as *mut u8;
            // SAFETY: the offsets come from the kernel and lie inside the mapping.
            let raw = unsafe {
                RingRaw {
                    producer: NonNull::new_unchecked(
                        base.add(o.producer as usize) as *mut AtomicU32
                    ),
                    consumer: NonNull::new_unchecked(
                        base.add(o.consumer as usize) as *mut AtomicU32
                    ),
                    flags: NonNull::new_unchecked(base.add(o.flags as usize) as *mut AtomicU32),
                    descs: NonNull::new_unchecked(base.add(o.desc as usize)),
                    size: entries,
                }
            };
            Ok((
                Mapping {
                    // SAFETY: mmap succeeded, so addr is non-null.
                    addr: unsafe { NonNull::new_unchecked(addr) },
                    len,
                },
                raw,
            ))
        };
        let (m_rx, r_rx) = map(XDP_PGOFF_RX_RING, &off.rx, sizes.rx, 16)?;
        let (m_tx, r_tx) = map(XDP_PGOFF_TX_RING, &off.tx, sizes.tx, 16)?;
        let (m_fr, r_fr) = map(XDP_UMEM_PGOFF_FILL_RING, &off.fr, layout.fill_size, 8)?;
        let (m_cr, r_cr) = map(XDP_UMEM_PGOFF_COMPLETION_RING, &off.cr, layout.comp_size, 8)?;

        let mut opts: u32 = 0;
        let mut optlen = core::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: opts is a writable u32, optlen its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                SOL_XDP,
                XDP_OPTIONS,
                (&mut opts as *mut u32).cast(),
                &mut optlen,
            )
        };
        let zerocopy = rc == 0 && opts & XDP_OPTIONS_ZEROCOPY != 0;

        // SAFETY: each ring was just mapped from this socket and is used by exactly one
        // cursor; the mappings live in the same struct and are dropped after the cursors.
        let (rx_c, tx_c, fill_c, comp_c) = unsafe {
            (
                ConsRing::new(r_rx),
                ProdRing::new(r_tx),
                ProdRing::new(r_fr),
                ConsRing::new(r_cr),
            )
        };
        Ok(Xsk {
            rx: rx_c,
            tx: tx_c,
            fill: fill_c,
            comp: comp_c,
            fd,
            zerocopy,
            _maps: [m_rx, m_tx, m_fr, m_cr],
            _tx: tx,
            _rx: rx,
            _fq_cq: fq_cq,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn is_zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Tells the kernel there is work on the tx ring (needed in copy mode, and in zero-copy
    /// mode when the tx ring's need_wakeup flag is set). One syscall per batch, not per frame.
    #[inline]
    pub fn kick_tx(&self) {
        // SAFETY: a zero-length sendto on our own socket; no buffer is read.
        unsafe {
            libc::sendto(
                self.fd,
                core::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                core::ptr::null(),
                0,
            )
        };
    }

    /// Wakes the kernel to refill from the fill ring when it flagged need_wakeup.
    #[inline]
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length recvfrom on our own socket; no buffer is written.
        unsafe {
            libc::recvfrom(
                self.fd,
                core::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
            )
        };
    }

    /// Lets one copy-mode sendto(2) transmit up to `frames` descriptors instead of the
    /// kernel's default 32, so a full batch goes out in one call. Kernels before 6.17 lack
    /// the option (the error says so; the default then stays).
    pub fn set_tx_budget(&self, frames: u32) -> std::io::Result<()> {
        self.setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET, frames)
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: u32) -> std::io::Result<()> {
        // SAFETY: v is a live u32 and the length passed is its size; the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                level,
                name,
                (&v as *const u32).cast(),
                core::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Kernel-side drop counters of this socket (`XDP_STATISTICS`).
    pub fn kernel_stats(&self) -> Option<xsk_rs::socket::XdpStatistics> {
        self._rx.fd().xdp_statistics().ok()
    }
}
