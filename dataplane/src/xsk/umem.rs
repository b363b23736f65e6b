//! One UMEM per worker, shared by that worker's sockets on every port (XDP_SHARED_UMEM), so
//! forwarding between ports hands a descriptor from one socket's rx ring to another's tx
//! ring without copying the frame.

use super::socket::XskError;
use core::num::NonZeroU32;
use core::ptr::NonNull;
use xsk_rs::config::{FrameSize, QueueSize, UmemConfig};

/// Frame size and count. Frames are page-sized so that the chunk of any address is found
/// by masking, and so a frame has room for the kernel's 256-byte XDP headroom, the largest
/// encapsulation, and a 1500-byte MTU frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemLayout {
    pub frame_size: u32,
    pub frames: u32,
    pub fill_size: u32,
    pub comp_size: u32,
}

impl Default for UmemLayout {
    fn default() -> Self {
        UmemLayout {
            frame_size: 4096,
            frames: 8192,
            fill_size: 2048,
            comp_size: 2048,
        }
    }
}

/// Free frames owned by one worker: a preallocated stack of chunk addresses.
#[derive(Debug)]
pub struct FramePool {
    free: Vec<u64>,
    frame_mask: u64,
}

impl FramePool {
    pub fn new(frame_size: u32, frames: u32) -> Self {
        FramePool {
            free: (0..frames as u64)
                .rev()
                .map(|i| i * frame_size as u64)
                .collect(),
            frame_mask: !(frame_size as u64 - 1),
        }
    }

    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Returns the frame containing `addr` (any offset inside the chunk).
    #[inline]
    pub fn free(&mut self, addr: u64) {
        debug_assert!(self.free.len() < self.free.capacity());
        // Never grows: the stack was sized for every frame of the UMEM, and each frame is
        // in exactly one place at a time (this stack, a ring, or the pipeline).
        if self.free.len() < self.free.capacity() {
            self.free.push(addr & self.frame_mask);
        }
    }

    pub fn len(&self) -> usize {
        self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Pops up to `out.len()` frames into `out`, returns how many.
    #[inline]
    pub fn alloc_into(&mut self, out: &mut [u64]) -> usize {
        let n = out.len().min(self.free.len());
        let from = self.free.len() - n;
        out[..n].copy_from_slice(&self.free[from..]);
        self.free.truncate(from);
        n
    }
}

/// A registered UMEM region.
pub struct Umem {
    inner: xsk_rs::Umem,
    base: NonNull<u8>,
    len: usize,
    layout: UmemLayout,
}

impl core::fmt::Debug for Umem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Umem")
            .field("len", &self.len)
            .field("layout", &self.layout)
            .finish()
    }
}

// SAFETY: the region is plain mmapped memory; which frames a thread may touch is decided by
// the ring protocol, not by the Umem value, and xsk-rs's handle is itself Send.
unsafe impl Send for Umem {}

impl Umem {
    pub fn new(layout: UmemLayout) -> Result<(Umem, FramePool), XskError> {
        let q = |n: u32, what: &'static str| QueueSize::new(n).map_err(|_| XskError::Config(what));
        let config = UmemConfig::builder()
            .frame_size(
                FrameSize::new(layout.frame_size).map_err(|_| XskError::Config("frame_size"))?,
            )
            .fill_queue_size(q(layout.fill_size, "fill_size")?)
            .comp_queue_size(q(layout.comp_size, "comp_size")?)
            .frame_headroom(0)
            .build()
            .map_err(|_| XskError::Config("umem layout"))?;
        let frames = NonZeroU32::new(layout.frames).ok_or(XskError::Config("frames"))?;
        let (inner, descs) =
            xsk_rs::Umem::new(config, frames, false).map_err(|e| XskError::Umem(e.to_string()))?;
        let first = descs.first().ok_or(XskError::Config("frames"))?;
        // SAFETY: `first` describes a frame of this UMEM; we only take the address of its
        // data area (an empty slice), from which the region's base follows.
        let data = unsafe { inner.data(first) };
        let base = (data.contents().as_ptr() as usize - first.addr()) as *mut u8;
        let base = NonNull::new(base).ok_or(XskError::Umem("null UMEM base".into()))?;
        let len = layout.frame_size as usize * layout.frames as usize;
        Ok((
            Umem {
                inner,
                base,
                len,
                layout,
            },
            FramePool::new(layout.frame_size, layout.frames),
        ))
    }

    pub fn inner(&self) -> &xsk_rs::Umem {
        &self.inner
    }

    pub fn layout(&self) -> UmemLayout {
        self.layout
    }

    /// Offset of the chunk containing `addr`.
    #[inline]
    pub fn chunk_of(&self, addr: u64) -> u64 {
        addr & !(self.layout.frame_size as u64 - 1)
    }

    /// The whole chunk containing `addr`, or `None` if the address lies outside the region.
    ///
    /// # Safety
    /// The caller must own that frame under the ring protocol (it came off the rx or
    /// completion ring, or out of the worker's [`FramePool`], and has not been put on a
    /// fill or tx ring since), and must not hold another reference into the same chunk.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn chunk_mut(&self, addr: u64) -> Option<&mut [u8]> {
        let chunk = self.chunk_of(addr) as usize;
        if chunk + self.layout.frame_size as usize > self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above); exclusive by the caller's
        // ownership of the frame.
        Some(unsafe {
            core::slice::from_raw_parts_mut(
                self.base.as_ptr().add(chunk),
                self.layout.frame_size as usize,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_every_frame_once() {
        let mut p = FramePool::new(4096, 16);
        let mut got = vec![];
        while let Some(a) = p.alloc() {
            got.push(a);
        }
        got.sort();
        assert_eq!(got, (0..16).map(|i| i * 4096).collect::<Vec<_>>());
        p.free(4096 * 3 + 300); // a tx address inside a chunk returns the chunk
        assert_eq!(p.alloc(), Some(4096 * 3));
        let mut out = [0u64; 4];
        for a in [0, 4096, 8192] {
            p.free(a);
        }
        assert_eq!(p.alloc_into(&mut out), 3);
        assert_eq!(p.len(), 0);
    }
}
