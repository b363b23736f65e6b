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

#[cfg(test)]
mod tests {
    #[test]
    fn makes_every_element_in_order() {
        let s = super::huge_slice(3 << 20, |i| i as u32);
        assert_eq!(s.len(), 3 << 20);
        assert!(s.iter().enumerate().all(|(i, &v)| v == i as u32));
    }
}
