//! The four AF_XDP rings as single-producer/single-consumer cursors over shared memory.
//!
//! Both sides keep a cached copy of the other side's index and read the shared atomic only
//! when the cache says the ring looks empty (consumer) or full (producer) — the pattern of
//! libxdp's `xsk_ring_*` inlines and s2n-quic's `cursor.rs`. A batch costs one acquire load
//! at most and one release store.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// An rx/tx descriptor, `struct xdp_desc` of `<linux/if_xdp.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

const _: () = assert!(core::mem::size_of::<XdpDesc>() == 16);

/// `XDP_RING_NEED_WAKEUP`: the kernel sets it in the flags word when it needs a syscall to
/// make progress on the ring.
pub const NEED_WAKEUP: u32 = 1;

/// Raw pointers into one mapped ring.
#[derive(Debug, Clone, Copy)]
pub struct RingRaw {
    pub producer: NonNull<AtomicU32>,
    pub consumer: NonNull<AtomicU32>,
    pub flags: NonNull<AtomicU32>,
    pub descs: NonNull<u8>,
    /// Number of entries; a power of two.
    pub size: u32,
}

/// The producer side of a ring (fill and tx rings for us).
#[derive(Debug)]
pub struct ProdRing<T> {
    raw: RingRaw,
    cached_prod: u32,
    /// Consumer index plus ring size: the producer may write up to here.
    cached_cons: u32,
    _t: PhantomData<T>,
}

/// The consumer side of a ring (rx and completion rings for us).
#[derive(Debug)]
pub struct ConsRing<T> {
    raw: RingRaw,
    cached_prod: u32,
    cached_cons: u32,
    _t: PhantomData<T>,
}

// SAFETY: a ring cursor is the one user-space owner of its side of the ring; the memory it
// points to stays mapped as long as the socket that owns the mapping, which outlives it.
unsafe impl<T: Send> Send for ProdRing<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for ConsRing<T> {}

impl<T: Copy> ProdRing<T> {
    /// # Safety
    /// `raw` must point at a live, mapped ring of `T` entries whose producer side nobody
    /// else writes, and stay valid for the cursor's lifetime.
    pub unsafe fn new(raw: RingRaw) -> Self {
        debug_assert!(raw.size.is_power_of_two());
        // SAFETY: the caller guarantees the pointers are valid.
        let (prod, cons) = unsafe {
            (
                raw.producer.as_ref().load(Ordering::Relaxed),
                raw.consumer.as_ref().load(Ordering::Acquire),
            )
        };
        ProdRing {
            raw,
            cached_prod: prod,
            cached_cons: cons.wrapping_add(raw.size),
            _t: PhantomData,
        }
    }

    /// Free slots, refreshing the cached consumer index only when fewer than `want` look free.
    #[inline]
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        // SAFETY: the pointer is valid for the cursor's lifetime (constructor contract).
        let cons = unsafe { self.raw.consumer.as_ref() }.load(Ordering::Acquire);
        self.cached_cons = cons.wrapping_add(self.raw.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes as many of `items` as fit and publishes them with one release store.
    #[inline]
    pub fn produce(&mut self, items: &[T]) -> usize {
        let n = (self.free(items.len() as u32) as usize).min(items.len());
        if n == 0 {
            return 0;
        }
        let base = self.raw.descs.as_ptr() as *mut T;
        let mask = self.raw.size - 1;
        for (i, item) in items[..n].iter().enumerate() {
            let idx = (self.cached_prod.wrapping_add(i as u32) & mask) as usize;
            // SAFETY: idx < size, and slots between the cached producer and the consumer's
            // position are ours until we publish them below.
            unsafe { base.add(idx).write_volatile(*item) };
        }
        self.cached_prod = self.cached_prod.wrapping_add(n as u32);
        // SAFETY: pointer valid (constructor contract); the release store publishes the
        // descriptor writes above to the consumer.
        unsafe { self.raw.producer.as_ref() }.store(self.cached_prod, Ordering::Release);
        n
    }

    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: pointer valid for the cursor's lifetime.
        unsafe { self.raw.flags.as_ref() }.load(Ordering::Relaxed) & NEED_WAKEUP != 0
    }

    /// Entries published and not yet consumed (for accounting and tests).
    pub fn outstanding(&mut self) -> u32 {
        self.raw.size - self.free(self.raw.size)
    }

    pub fn size(&self) -> u32 {
        self.raw.size
    }
}

impl<T: Copy> ConsRing<T> {
    /// # Safety
    /// As [`ProdRing::new`], for the consumer side.
    pub unsafe fn new(raw: RingRaw) -> Self {
        debug_assert!(raw.size.is_power_of_two());
        // SAFETY: the caller guarantees the pointers are valid.
        let (prod, cons) = unsafe {
            (
                raw.producer.as_ref().load(Ordering::Acquire),
                raw.consumer.as_ref().load(Ordering::Relaxed),
            )
        };
        ConsRing {
            raw,
            cached_prod: prod,
            cached_cons: cons,
            _t: PhantomData,
        }
    }

    /// Entries ready, refreshing the cached producer index only when the cache shows fewer
    /// than `want`.
    #[inline]
    pub fn available(&mut self, want: u32) -> u32 {
        let avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail >= want {
            return avail;
        }
        // SAFETY: pointer valid (constructor contract).
        self.cached_prod = unsafe { self.raw.producer.as_ref() }.load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Copies up to `out.len()` entries out and releases their slots with one store.
    #[inline]
    pub fn consume(&mut self, out: &mut [T]) -> usize {
        let n = (self.available(out.len() as u32) as usize).min(out.len());
        if n == 0 {
            return 0;
        }
        let base = self.raw.descs.as_ptr() as *const T;
        let mask = self.raw.size - 1;
        for (i, slot) in out[..n].iter_mut().enumerate() {
            let idx = (self.cached_cons.wrapping_add(i as u32) & mask) as usize;
            // SAFETY: idx < size; the acquire load in `available` ordered the producer's
            // writes of these entries before this read.
            *slot = unsafe { base.add(idx).read_volatile() };
        }
        self.cached_cons = self.cached_cons.wrapping_add(n as u32);
        // SAFETY: pointer valid; the release store hands the slots back to the producer
        // after our reads.
        unsafe { self.raw.consumer.as_ref() }.store(self.cached_cons, Ordering::Release);
        n
    }

    pub fn size(&self) -> u32 {
        self.raw.size
    }
}

/// Rings over ordinary memory, so the real cursor code runs in plain `cargo test`
/// (STYLE §13: s2n-quic's `ring::testing`).
pub mod testing {
    use super::*;

    /// Owns the memory of one ring; hands out a producer and a consumer cursor over it.
    pub struct TestRing<T> {
        producer: Box<AtomicU32>,
        consumer: Box<AtomicU32>,
        flags: Box<AtomicU32>,
        descs: Box<[T]>,
    }

    impl<T: Copy + Default> TestRing<T> {
        pub fn new(size: u32) -> Self {
            assert!(size.is_power_of_two());
            TestRing {
                producer: Box::new(AtomicU32::new(0)),
                consumer: Box::new(AtomicU32::new(0)),
                flags: Box::new(AtomicU32::new(0)),
                descs: vec![T::default(); size as usize].into_boxed_slice(),
            }
        }

        pub fn raw(&mut self) -> RingRaw {
            RingRaw {
                producer: NonNull::from(&*self.producer),
                consumer: NonNull::from(&*self.consumer),
                flags: NonNull::from(&*self.flags),
                descs: NonNull::new(self.descs.as_mut_ptr() as *mut u8).unwrap(),
                size: self.descs.len() as u32,
            }
        }

        /// Starts both indexes at `at`, to exercise u32 wrap-around.
        pub fn set_indexes(&self, at: u32) {
            self.producer.store(at, Ordering::Relaxed);
            self.consumer.store(at, Ordering::Relaxed);
        }

        pub fn set_flags(&self, flags: u32) {
            self.flags.store(flags, Ordering::Relaxed);
        }

        /// A producer and a consumer cursor over this ring.
        pub fn pair(&mut self) -> (ProdRing<T>, ConsRing<T>) {
            let raw = self.raw();
            // SAFETY: the memory is owned by `self`, which the test keeps alive while it
            // uses the cursors; each side has exactly one cursor.
            unsafe { (ProdRing::new(raw), ConsRing::new(raw)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestRing;
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Produce(Vec<u64>),
        Consume(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(any::<u64>(), 0..40).prop_map(Op::Produce),
            (0usize..40).prop_map(Op::Consume),
        ]
    }

    proptest! {
        /// Model test (STYLE §12): random produce/consume sequences against a bounded VecDeque.
        #[test]
        fn ring_matches_bounded_queue(ops in proptest::collection::vec(op(), 1..200), shift in 0u32..4) {
            let size = 16u32 << shift;
            let mut mem = TestRing::<u64>::new(size);
            let (mut prod, mut cons) = mem.pair();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Produce(items) => {
                        let n = prod.produce(&items);
                        let room = size as usize - model.len();
                        prop_assert_eq!(n, items.len().min(room));
                        model.extend(&items[..n]);
                    }
                    Op::Consume(k) => {
                        let mut out = vec![0u64; k];
                        let n = cons.consume(&mut out);
                        prop_assert_eq!(n, k.min(model.len()));
                        for got in &out[..n] {
                            prop_assert_eq!(Some(*got), model.pop_front());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn indexes_wrap_around_u32() {
        let mut mem = TestRing::<XdpDesc>::new(8);
        mem.set_indexes(u32::MAX - 3);
        let (mut prod, mut cons) = mem.pair();
        for round in 0..10u64 {
            let d: Vec<XdpDesc> = (0..6)
                .map(|i| XdpDesc {
                    addr: round * 100 + i,
                    len: 60,
                    options: 0,
                })
                .collect();
            assert_eq!(prod.produce(&d), 6);
            let mut out = [XdpDesc::default(); 8];
            assert_eq!(cons.consume(&mut out), 6);
            assert_eq!(&out[..6], &d[..]);
        }
    }

    #[test]
    fn need_wakeup_flag_is_read() {
        let mut mem = TestRing::<u64>::new(8);
        let (prod, _cons) = mem.pair();
        assert!(!prod.needs_wakeup());
        mem.set_flags(NEED_WAKEUP);
        assert!(prod.needs_wakeup());
    }
}
