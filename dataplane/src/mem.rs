//! Large preallocated tables (conntrack, neighbours) backed by transparent huge pages.
//!
//! A table of a million flows spans hundreds of megabytes: with 4 KiB pages every lookup
//! pays a TLB miss and a page walk on top of its cache misses. Asking for huge pages
//! *before* the memory is first touched lets the kernel fault it in 2 MiB at a time
//! (THP in `madvise` mode, the Debian default, does nothing without the hint).

/// A boxed slice of `n` elements made by `f`, with its memory advised as huge-page backed.
pub fn huge_slice<T>(n: usize, mut f: impl FnMut(usize) -> T) -> Box<[T]> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge(v.as_ptr() as usize, n * core::mem::size_of::<T>());
    v.extend((0..n).map(&mut f));
    v.into_boxed_slice()
}

const HUGE: usize = 2 << 20;

#[allow(unsafe_code)]
fn advise_huge(addr: usize, len: usize) {
    // Only whole 2 MiB pages inside the allocation can be huge; smaller tables gain nothing.
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + len) & !(HUGE - 1);
    if end <= start {
        return;
    }
    // SAFETY: madvise(MADV_HUGEPAGE) only changes how the kernel backs pages of our own
    // allocation (which we own for its whole length); it never changes their contents
    // or validity. Failure (THP disabled) is harmless and ignored.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
}

/// A fixed-length array of `T` that a table indexes like a `Box<[T]>`: either allocated on
/// the heap ([`Region::heap`]) or placed in a shared mapping that outlives this process
/// ([`Region::mapped`], the conntrack state a restarted afgate takes over). Indexing costs
/// the same either way (a pointer and a length, no branch on the kind).
pub struct Region<T> {
    ptr: core::ptr::NonNull<T>,
    len: usize,
    /// None: `ptr..len` came from `Box::into_raw` and is freed on drop.
    map: Option<std::sync::Arc<Mapping>>,
}

impl<T> Region<T> {
    pub fn heap(b: Box<[T]>) -> Self {
        let len = b.len();
        let ptr = core::ptr::NonNull::new(Box::into_raw(b).cast::<T>()).expect("box pointer");
        Region {
            ptr,
            len,
            map: None,
        }
    }

    /// `len` elements of `T` at byte `offset` of `map`.
    ///
    /// # Safety
    /// The range lies inside the mapping and is aligned for `T`; every bit pattern the
    /// memory can hold is a valid `T` (atomics only), because another process may write it;
    /// and nothing else hands out `&mut` to it.
    #[allow(unsafe_code)]
    pub unsafe fn mapped(map: &std::sync::Arc<Mapping>, offset: usize, len: usize) -> Self {
        debug_assert!(offset + len * core::mem::size_of::<T>() <= map.len);
        debug_assert!((map.addr + offset).is_multiple_of(core::mem::align_of::<T>()));
        Region {
            ptr: core::ptr::NonNull::new((map.addr + offset) as *mut T).expect("mapped address"),
            len,
            map: Some(map.clone()),
        }
    }

    /// Whether the elements live in a shared mapping.
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }
}

impl<T> Drop for Region<T> {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.map.is_none() {
            // SAFETY: `ptr`/`len` are exactly what `Box::into_raw` gave `Region::heap`, and
            // this is the only place that turns them back into the box.
            drop(unsafe {
                Box::from_raw(core::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}

impl<T> core::ops::Deref for Region<T> {
    type Target = [T];
    #[inline]
    #[allow(unsafe_code)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr..ptr+len` is either the leaked box (freed only in drop) or a range of
        // the kept mapping that `Region::mapped`'s caller vouched for; both live as long as `self`, and only shared
        // references are handed out.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: a Region owns its elements like a `Box<[T]>` (or shares a mapping through an
// `Arc`) and only hands out `&[T]`: with `T: Send + Sync` it may move to and be used from
// any thread.
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync> Send for Region<T> {}
// SAFETY: as above: shared access to `T: Sync` elements only.
#[allow(unsafe_code)]
unsafe impl<T: Send + Sync> Sync for Region<T> {}

/// One `T` in a [`Region`] (a table's scalar state: free-stack head, counters), derefs to it.
pub struct Place<T>(Region<T>);

impl<T> Place<T> {
    pub fn heap(v: T) -> Self {
        Place(Region::heap(Box::new([v])))
    }
    /// # Safety
    /// As [`Region::mapped`] for one element.
    #[allow(unsafe_code)]
    pub unsafe fn mapped(map: &std::sync::Arc<Mapping>, offset: usize) -> Self {
        // SAFETY: forwarded to our caller.
        Place(unsafe { Region::mapped(map, offset, 1) })
    }
}

impl<T> core::ops::Deref for Place<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0[0]
    }
}

/// A shared, read-write mapping of a whole file (`MAP_SHARED`), unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `file` shared, faulting them in now (so the first
    /// packets after a takeover do not pay page faults) and asking for huge pages.
    #[allow(unsafe_code)]
    pub fn map(file: &std::fs::File, len: usize) -> std::io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) of a file we hold open;
        // no existing memory is affected. The result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        advise_huge(p as usize, len);
        Ok(Mapping {
            addr: p as usize,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping's bytes `offset..offset + n`, for the segment header only.
    ///
    /// # Safety
    /// No `&mut` to these bytes exists while the slice is used, and the caller treats them
    /// as possibly changed by another process (plain header fields written once).
    #[allow(unsafe_code)]
    pub unsafe fn bytes(&self, offset: usize, n: usize) -> &[u8] {
        assert!(offset + n <= self.len);
        // SAFETY: in bounds (checked); lifetime tied to `self`, which keeps the mapping.
        unsafe { core::slice::from_raw_parts((self.addr + offset) as *const u8, n) }
    }

    /// Writes `data` at `offset` (a segment header).
    ///
    /// # Safety
    /// Nobody else (thread or process) reads or writes these bytes meanwhile, and no
    /// [`Region`] covers them: e.g. a file not yet renamed into place.
    #[allow(unsafe_code)]
    pub unsafe fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len);
        // SAFETY: in bounds (checked); a byte copy into our own writable mapping, with no
        // concurrent access by our caller's contract.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.addr + offset) as *mut u8,
                data.len(),
            )
        };
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `map` created; every Region over it holds an Arc
        // to this Mapping, so none outlives it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::{Place, Region};
    use core::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn heap_regions_index_like_their_box_and_free_it() {
        let r = Region::heap((0..1000u64).map(AtomicU64::new).collect::<Box<[_]>>());
        assert_eq!(r.len(), 1000);
        assert!(!r.is_mapped());
        r[999].fetch_add(1, Ordering::Relaxed);
        assert_eq!(r[999].load(Ordering::Relaxed), 1000);
        let p = Place::heap(AtomicU64::new(7));
        assert_eq!(p.load(Ordering::Relaxed), 7);
        let empty = Region::<u64>::heap(Box::new([]));
        assert!(empty.is_empty());
    }

    #[test]
    fn makes_every_element_in_order() {
        let s = super::huge_slice(3 << 20, |i| i as u32);
        assert_eq!(s.len(), 3 << 20);
        assert!(s.iter().enumerate().all(|(i, &v)| v == i as u32));
    }
}
