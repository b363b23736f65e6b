//! The neighbour cache: IPv4 address → (MAC, port), learned from ARP on the packet path by
//! any worker and read by all of them, plus permanent entries from configuration.
//!
//! Fixed capacity, open addressing over a short probe window, one seqlock per slot: readers
//! never write shared memory and never wait; a writer that finds a slot being written by
//! another worker gives up (the next ARP frame will teach the same thing), so no one ever
//! spins on another core. Address 0.0.0.0 marks an empty slot; it is never a neighbour.
//!
//! Also here: [`ArpLimiter`] (one request per unresolved neighbour per second) and
//! [`PendingArp`] (the bounded queue of frames waiting for a neighbour's ARP reply).

use super::ports::PortId;
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

const PROBE: usize = 8;
const PERMANENT: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub port: PortId,
    /// When it was last confirmed, in seconds of the dataplane clock.
    pub updated: u32,
    /// Configured statically: never aged out or replaced by learning.
    pub permanent: bool,
    /// The last second a frame was sent to it ([`NeighCache::touch`]), 0 if never since it
    /// was last learned: aging re-ARPs only neighbours in use (`control::neigh_ctl`).
    pub used: u32,
}

#[derive(Debug, Default)]
#[repr(align(32))]
struct Slot {
    seq: AtomicU32,
    ip: AtomicU32,
    updated: AtomicU32,
    /// Advisory, outside the seqlock: written by [`NeighCache::touch`] at most once per
    /// second per neighbour, so busy neighbours do not bounce the line between workers.
    used: AtomicU32,
    /// mac (48 bits) | port << 48 (15 bits) | PERMANENT
    word: AtomicU64,
}

#[derive(Debug)]
pub struct NeighCache {
    slots: Box<[Slot]>,
    mask: usize,
    /// Bumped after any entry is added, changes MAC/port or is removed (not on refreshes
    /// or in-use marks): workers' next-hop caches (`pipeline::nexthop_cache`) hold
    /// resolved MACs only while it is unchanged.
    generation: AtomicU64,
}

#[inline]
fn hash(ip: u32) -> usize {
    // Fibonacci hashing spreads sequential pod addresses over the table.
    (ip.wrapping_mul(0x9E37_79B9) >> 8) as usize
}

fn pack(mac: [u8; 6], port: PortId, permanent: bool) -> u64 {
    let mut m = [0u8; 8];
    m[..6].copy_from_slice(&mac);
    u64::from_le_bytes(m) | ((port.0 as u64 & 0x7fff) << 48) | if permanent { PERMANENT } else { 0 }
}

fn unpack(word: u64) -> ([u8; 6], PortId, bool) {
    let b = word.to_le_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&b[..6]);
    (
        mac,
        PortId(((word >> 48) & 0x7fff) as u16),
        word & PERMANENT != 0,
    )
}

impl NeighCache {
    /// A cache of at least `capacity` slots (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(PROBE).next_power_of_two();
        NeighCache {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            generation: AtomicU64::new(0),
        }
    }

    /// See the field. Acquire: a reader that sees a generation also sees the entries
    /// written before it was bumped.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read(&self, slot: &Slot) -> Option<(u32, u32, u64)> {
        for _ in 0..4 {
            let s1 = slot.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                continue;
            }
            let ip = slot.ip.load(Ordering::Relaxed);
            let updated = slot.updated.load(Ordering::Relaxed);
            let word = slot.word.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) == s1 {
                return Some((ip, updated, word));
            }
        }
        None
    }

    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<NeighEntry> {
        let key = u32::from(ip);
        if key == 0 {
            return None;
        }
        let start = hash(key);
        for i in 0..PROBE {
            let slot = &self.slots[(start + i) & self.mask];
            match self.read(slot) {
                Some((k, updated, word)) if k == key => {
                    let (mac, port, permanent) = unpack(word);
                    return Some(NeighEntry {
                        ip,
                        mac,
                        port,
                        updated,
                        permanent,
                        used: slot.used.load(Ordering::Relaxed),
                    });
                }
                Some((0, _, _)) => return None,
                _ => {}
            }
        }
        None
    }

    /// Learns or refreshes `ip`. Returns false when the entry could not be written (slot
    /// busy, or the window is full of permanent entries) or would overwrite a permanent one.
    pub fn learn(&self, ip: Ipv4Addr, mac: [u8; 6], port: PortId, now: u32) -> bool {
        self.write(ip, mac, port, now, false)
    }

    /// Installs a permanent (configured) entry.
    pub fn set_static(&self, ip: Ipv4Addr, mac: [u8; 6], port: PortId) -> bool {
        self.write(ip, mac, port, 0, true)
    }

    fn write(&self, ip: Ipv4Addr, mac: [u8; 6], port: PortId, now: u32, permanent: bool) -> bool {
        let key = u32::from(ip);
        if key == 0 {
            return false;
        }
        let start = hash(key);
        let mut target = None;
        let mut oldest: Option<(usize, u32)> = None;
        let packed = pack(mac, port, permanent);
        let mut changed = true;
        for i in 0..PROBE {
            let idx = (start + i) & self.mask;
            let Some((k, updated, word)) = self.read(&self.slots[idx]) else {
                continue;
            };
            if k == key {
                if word & PERMANENT != 0 && !permanent {
                    return false;
                }
                changed = word != packed;
                target = Some(idx);
                break;
            }
            if k == 0 {
                target.get_or_insert(idx);
                continue;
            }
            if word & PERMANENT == 0 && oldest.is_none_or(|(_, t)| updated < t) {
                oldest = Some((idx, updated));
            }
        }
        let Some(idx) = target.or(oldest.map(|o| o.0)) else {
            return false;
        };
        let slot = &self.slots[idx];
        let s = slot.seq.load(Ordering::Relaxed);
        if s & 1 == 1
            || slot
                .seq
                .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        fence(Ordering::Release);
        slot.ip.store(key, Ordering::Relaxed);
        slot.updated.store(now, Ordering::Relaxed);
        slot.used.store(0, Ordering::Relaxed);
        slot.word.store(packed, Ordering::Relaxed);
        slot.seq.store(s + 2, Ordering::Release);
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
        true
    }

    /// Records that a frame is being sent to `ip` at second `now` (0 is stored as 1, since
    /// 0 means unused). Callers skip it when the entry already says `now`.
    #[inline]
    pub fn touch(&self, ip: Ipv4Addr, now: u32) {
        let key = u32::from(ip);
        let start = hash(key);
        for i in 0..PROBE {
            let slot = &self.slots[(start + i) & self.mask];
            let k = slot.ip.load(Ordering::Relaxed);
            if k == key {
                // A slot rewritten for another address meanwhile gets a spurious mark:
                // at worst one extra refresh request.
                slot.used.store(now.max(1), Ordering::Relaxed);
                return;
            }
            if k == 0 {
                return;
            }
        }
    }

    /// Removes `ip` (control plane: `neigh del`, or a static entry withdrawn).
    pub fn remove(&self, ip: Ipv4Addr) -> bool {
        self.remove_where(ip, |_| true)
    }

    /// Removes the learned entry for `ip` only if it was last confirmed at `updated` (aging:
    /// an ARP reply that refreshed it since the control thread looked keeps it).
    pub fn remove_if_unchanged(&self, ip: Ipv4Addr, updated: u32) -> bool {
        self.remove_where(ip, |(u, word)| u == updated && word & PERMANENT == 0)
    }

    fn remove_where(&self, ip: Ipv4Addr, pred: impl Fn((u32, u64)) -> bool) -> bool {
        let key = u32::from(ip);
        let start = hash(key);
        for i in 0..PROBE {
            let slot = &self.slots[(start + i) & self.mask];
            if let Some((k, updated, word)) = self.read(slot)
                && k == key
            {
                if !pred((updated, word)) {
                    return false;
                }
                let s = slot.seq.load(Ordering::Relaxed);
                if s & 1 == 0
                    && slot
                        .seq
                        .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    fence(Ordering::Release);
                    // A tombstone would be needed for strict probing; moving the rest of the
                    // window is not worth it for a cache: a later miss just re-resolves.
                    // Checked again inside the write: a worker may have refreshed it between
                    // the read above and taking the slot.
                    if !pred((
                        slot.updated.load(Ordering::Relaxed),
                        slot.word.load(Ordering::Relaxed),
                    )) {
                        slot.seq.store(s + 2, Ordering::Release);
                        return false;
                    }
                    slot.ip.store(u32::MAX, Ordering::Relaxed);
                    slot.word.store(0, Ordering::Relaxed);
                    slot.seq.store(s + 2, Ordering::Release);
                    self.generation.fetch_add(1, Ordering::Release);
                    return true;
                }
            }
        }
        false
    }

    /// Every live entry (for `ctl neigh list`); skips slots being written.
    pub fn entries(&self) -> Vec<NeighEntry> {
        self.slots
            .iter()
            .filter_map(|s| self.read(s).map(|r| (r, s.used.load(Ordering::Relaxed))))
            .filter(|((k, _, _), _)| *k != 0 && *k != u32::MAX)
            .map(|((k, updated, word), used)| {
                let (mac, port, permanent) = unpack(word);
                NeighEntry {
                    ip: Ipv4Addr::from(k),
                    mac,
                    port,
                    updated,
                    permanent,
                    used,
                }
            })
            .collect()
    }
}

/// Defaults for `neighbors_aging` (`control::config::neigh`): how old a learned entry may
/// get before the control thread re-ARPs it (if it is in use), and when it is removed (Linux: `base_reachable_time` ~30 s and
/// `gc_stale_time` 60 s; a node's neighbours are few and stable, so minutes are fine).
pub const REFRESH_AFTER_S: u32 = 300;
pub const EXPIRE_AFTER_S: u32 = 330;

/// Rate limit for ARP requests the packet path sends: at most one per neighbour per
/// [`ArpLimiter::INTERVAL_MS`], whichever worker sends it.
///
/// Frames to an unresolved neighbour wait in [`PendingArp`] (a few per neighbour, a global
/// bound); the limiter keeps a flood to an absent neighbour from becoming a flood of
/// broadcasts, and what does not fit the queue is dropped (`neigh_queue_full`).
///
/// Lossy by design: one word per slot, `(ip << 32) | ms`; two neighbours hashing to one
/// slot may each send an extra request, never fewer than one per interval.
#[derive(Debug)]
pub struct ArpLimiter {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl ArpLimiter {
    pub const INTERVAL_MS: u32 = 1000;

    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(1).next_power_of_two();
        ArpLimiter {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
        }
    }

    /// True if a request for `ip` may be sent now (and records it); `now_ms` is the
    /// dataplane clock in milliseconds (wrapping is fine: only differences are compared).
    #[inline]
    pub fn allow(&self, ip: Ipv4Addr, now_ms: u32) -> bool {
        let key = u32::from(ip);
        let slot = &self.slots[hash(key) & self.mask];
        let old = slot.load(Ordering::Relaxed);
        // `| 1` so that a slot never reads as "sent at 0 ms" by an empty value.
        let new = (u64::from(key) << 32) | u64::from(now_ms | 1);
        if (old >> 32) as u32 == key
            && old != 0
            && (now_ms | 1).wrapping_sub(old as u32) < Self::INTERVAL_MS
        {
            return false;
        }
        slot.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Frames waiting for ARP resolution of their next hop (Linux's `unres_qlen`, per
/// neighbour, with a global bound on top).
///
/// Frames are **copied** into preallocated slots here rather than held in their UMEM frame:
/// - the ARP reply may arrive on another worker, and a UMEM frame can only be sent by the
///   worker that owns it; a copy can be sent by whichever worker sees the neighbour resolve;
/// - held UMEM frames would be taken from the fill rings for up to the timeout, and a burst
///   towards an absent neighbour would starve reception; this queue costs a fixed 100 KiB;
/// - the pipeline stays a function of one frame: the original frame still becomes the ARP
///   request, as before, so no new `Action` is needed.
///
/// The copy costs one memcpy for the first few frames of a flow to a new neighbour, never
/// for established traffic.
///
/// Layout: [`PENDING_BUCKETS`] buckets of [`PENDING_PER_NEIGH`] slots; a neighbour's frames
/// go to the bucket its address hashes to, which bounds them per neighbour (two unresolved
/// neighbours in one bucket share it). Each slot is claimed by a CAS on its state word
/// (`ip << 32 | tag`), filled, then published; releasing claims it again by CAS, so two
/// workers never send the same frame and no one waits on another. The bytes are atomics
/// (written and read relaxed, ordered by the state word), so no `unsafe` is needed.
#[derive(Debug)]
pub struct PendingArp {
    /// Held slots, a hint for the worker's once-per-pass "anything to do?" check.
    held: AtomicU32,
    slots: Box<[PendingSlot]>,
}

/// Frames one neighbour may have waiting.
pub const PENDING_PER_NEIGH: usize = 4;
/// Buckets of [`PENDING_PER_NEIGH`] slots: 64 frames in all.
pub const PENDING_BUCKETS: usize = 16;
/// Largest frame a slot holds: an Ethernet frame of a 1500-byte packet, or a VXLAN frame of
/// a 1450-byte inner packet. Larger (jumbo) frames are not held.
pub const PENDING_FRAME_LEN: usize = 1536;
/// How long a frame waits: Linux's default for an unanswered neighbour (3 probes, 1 s apart,
/// `mcast_solicit` × `retrans_time`); the limiter sends one request a second meanwhile.
pub const PENDING_TIMEOUT_MS: u32 = 3000;

const TAG_FREE: u64 = 0;
const TAG_WRITING: u64 = 1;
const TAG_HELD: u64 = 2;
const TAG_SENDING: u64 = 3;
const TAG_MASK: u64 = 3;

#[derive(Debug)]
struct PendingSlot {
    /// `ip << 32 | tag`; tag free / writing / held / sending.
    state: AtomicU64,
    /// `port << 16 | len`.
    port_len: AtomicU32,
    /// Dataplane clock in ms after which the frame is dropped.
    deadline_ms: AtomicU32,
    bytes: [AtomicU64; PENDING_FRAME_LEN / 8],
}

impl Default for PendingSlot {
    fn default() -> Self {
        PendingSlot {
            state: AtomicU64::new(TAG_FREE),
            port_len: AtomicU32::new(0),
            deadline_ms: AtomicU32::new(0),
            bytes: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Why [`PendingArp::park`] did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkError {
    /// Every slot of the neighbour's bucket is in use.
    Full,
    /// Larger than [`PENDING_FRAME_LEN`].
    TooBig,
}

/// A frame taken off the queue by [`PendingArp::release`]: its slot stays claimed until
/// the callback returns.
#[derive(Debug)]
pub struct Released<'a> {
    pub neighbour: Ipv4Addr,
    pub port: PortId,
    /// The neighbour did not resolve in time: drop, do not send.
    pub expired: bool,
    len: usize,
    slot: &'a PendingSlot,
}

impl Released<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the held frame into `out` (at least [`Released::len`] bytes); returns its
    /// length, or 0 if `out` is too short.
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let Some(out) = out.get_mut(..self.len) else {
            return 0;
        };
        for (chunk, word) in out.chunks_mut(8).zip(self.slot.bytes.iter()) {
            let w = word.load(Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        self.len
    }
}

impl Default for PendingArp {
    fn default() -> Self {
        PendingArp::new()
    }
}

impl PendingArp {
    pub fn new() -> Self {
        PendingArp {
            held: AtomicU32::new(0),
            slots: (0..PENDING_BUCKETS * PENDING_PER_NEIGH)
                .map(|_| PendingSlot::default())
                .collect(),
        }
    }

    /// True when no frame is held: the worker's per-pass check, one relaxed load.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.held.load(Ordering::Relaxed) == 0
    }

    /// Frames held now (approximate while workers park and release).
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed) as usize
    }

    /// Holds a copy of `frame`, to be sent on `port` once `neighbour` resolves or dropped
    /// at `now_ms` + [`PENDING_TIMEOUT_MS`].
    pub fn park(
        &self,
        neighbour: Ipv4Addr,
        port: PortId,
        frame: &[u8],
        now_ms: u32,
    ) -> Result<(), ParkError> {
        if frame.len() > PENDING_FRAME_LEN {
            return Err(ParkError::TooBig);
        }
        let key = u32::from(neighbour);
        let bucket = (hash(key) % PENDING_BUCKETS) * PENDING_PER_NEIGH;
        for slot in &self.slots[bucket..bucket + PENDING_PER_NEIGH] {
            let claimed = u64::from(key) << 32 | TAG_WRITING;
            if slot
                .state
                .compare_exchange(TAG_FREE, claimed, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            slot.port_len.store(
                u32::from(port.0) << 16 | frame.len() as u32,
                Ordering::Relaxed,
            );
            slot.deadline_ms
                .store(now_ms.wrapping_add(PENDING_TIMEOUT_MS), Ordering::Relaxed);
            for (chunk, word) in frame.chunks(8).zip(slot.bytes.iter()) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                word.store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
            self.held.fetch_add(1, Ordering::Relaxed);
            slot.state
                .store(u64::from(key) << 32 | TAG_HELD, Ordering::Release);
            return Ok(());
        }
        Err(ParkError::Full)
    }

    /// Hands every held frame whose neighbour now `resolved` (or whose time is up at
    /// `now_ms`) to `f`, then frees its slot. Frames of one neighbour go in slot order.
    pub fn release(
        &self,
        now_ms: u32,
        resolved: impl Fn(Ipv4Addr) -> bool,
        mut f: impl FnMut(&Released<'_>),
    ) {
        if self.is_empty() {
            return;
        }
        for slot in self.slots.iter() {
            let s = slot.state.load(Ordering::Acquire);
            if s & TAG_MASK != TAG_HELD {
                continue;
            }
            let neighbour = Ipv4Addr::from((s >> 32) as u32);
            let deadline = slot.deadline_ms.load(Ordering::Relaxed);
            // Wrapping difference: the millisecond clock wraps after 49 days.
            let expired = (now_ms.wrapping_sub(deadline) as i32) >= 0;
            if !expired && !resolved(neighbour) {
                continue;
            }
            let sending = (s & !TAG_MASK) | TAG_SENDING;
            if slot
                .state
                .compare_exchange(s, sending, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue; // another worker took it
            }
            let pl = slot.port_len.load(Ordering::Relaxed);
            f(&Released {
                neighbour,
                port: PortId((pl >> 16) as u16),
                expired,
                len: (pl & 0xffff) as usize,
                slot,
            });
            self.held.fetch_sub(1, Ordering::Relaxed);
            slot.state.store(TAG_FREE, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn learn_lookup_refresh() {
        let c = NeighCache::new(64);
        let ip = Ipv4Addr::new(10, 20, 9, 60);
        assert!(c.lookup(ip).is_none());
        assert!(c.learn(ip, MAC, PortId(3), 10));
        let e = c.lookup(ip).unwrap();
        assert_eq!(
            (e.mac, e.port, e.updated, e.permanent),
            (MAC, PortId(3), 10, false)
        );
        assert!(c.learn(ip, [2, 0, 0, 0, 0, 2], PortId(3), 20));
        assert_eq!(c.lookup(ip).unwrap().mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(c.entries().len(), 1);
    }

    #[test]
    fn static_entries_are_not_overwritten_by_learning() {
        let c = NeighCache::new(64);
        let ip = Ipv4Addr::new(10, 186, 153, 254);
        assert!(c.set_static(ip, MAC, PortId(0)));
        assert!(!c.learn(ip, [9; 6], PortId(0), 5));
        assert_eq!(c.lookup(ip).unwrap().mac, MAC);
        assert!(c.lookup(ip).unwrap().permanent);
    }

    #[test]
    fn full_window_evicts_oldest_learned() {
        let c = NeighCache::new(8); // one window covers the whole table
        for i in 1..=8u8 {
            assert!(c.learn(Ipv4Addr::new(10, 0, 0, i), MAC, PortId(0), i as u32));
        }
        assert!(c.learn(Ipv4Addr::new(10, 0, 1, 1), MAC, PortId(0), 100));
        assert!(c.lookup(Ipv4Addr::new(10, 0, 1, 1)).is_some());
        assert!(
            c.lookup(Ipv4Addr::new(10, 0, 0, 1)).is_none(),
            "oldest evicted"
        );
    }

    #[test]
    fn concurrent_readers_never_see_torn_entries() {
        let c = Arc::new(NeighCache::new(16));
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let b = (i % 200) as u8;
                    c.learn(ip, [b; 6], PortId(b as u16), i);
                }
            })
        };
        for _ in 0..20_000 {
            if let Some(e) = c.lookup(ip) {
                // mac bytes and port were written together: they must agree.
                assert!(e.mac.iter().all(|&x| x == e.mac[0]));
                assert_eq!(e.port.0, e.mac[0] as u16);
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn touch_marks_use_and_learning_clears_it() {
        let c = NeighCache::new(64);
        let ip = Ipv4Addr::new(10, 20, 9, 60);
        c.touch(ip, 5); // absent: nothing happens
        assert!(c.learn(ip, MAC, PortId(1), 10));
        assert_eq!(c.lookup(ip).unwrap().used, 0);
        c.touch(ip, 12);
        assert_eq!(c.lookup(ip).unwrap().used, 12);
        assert_eq!(c.entries()[0].used, 12);
        c.touch(ip, 0);
        assert_eq!(c.lookup(ip).unwrap().used, 1, "0 means unused");
        assert!(c.learn(ip, MAC, PortId(1), 20));
        assert_eq!(c.lookup(ip).unwrap().used, 0);
    }

    #[test]
    fn remove_if_unchanged_keeps_refreshed_and_static_entries() {
        let c = NeighCache::new(64);
        let ip = Ipv4Addr::new(10, 20, 9, 60);
        assert!(c.learn(ip, MAC, PortId(1), 10));
        assert!(c.learn(ip, MAC, PortId(1), 11));
        assert!(!c.remove_if_unchanged(ip, 10), "refreshed since");
        assert!(c.remove_if_unchanged(ip, 11));
        assert!(c.lookup(ip).is_none());
        let gw = Ipv4Addr::new(10, 186, 153, 254);
        assert!(c.set_static(gw, MAC, PortId(0)));
        assert!(!c.remove_if_unchanged(gw, 0));
        assert!(c.lookup(gw).is_some());
    }

    #[test]
    fn arp_limiter_allows_one_per_interval() {
        let l = ArpLimiter::new(64);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        assert!(l.allow(a, 10));
        assert!(!l.allow(a, 500));
        assert!(l.allow(b, 500));
        assert!(l.allow(a, 1011));
        assert!(!l.allow(a, 1500));
    }

    #[test]
    fn pending_holds_per_neighbour_and_releases_on_resolution() {
        let q = PendingArp::new();
        let a = Ipv4Addr::new(10, 186, 155, 7);
        assert!(q.is_empty());
        for i in 0..PENDING_PER_NEIGH as u8 {
            assert_eq!(q.park(a, PortId(2), &[i; 61], 100), Ok(()));
        }
        assert_eq!(q.park(a, PortId(2), &[9; 61], 100), Err(ParkError::Full));
        assert_eq!(
            q.park(a, PortId(2), &[0; PENDING_FRAME_LEN + 1], 100),
            Err(ParkError::TooBig)
        );
        assert_eq!(q.len(), PENDING_PER_NEIGH);
        // Not resolved, not expired: nothing released.
        let mut seen = Vec::new();
        q.release(200, |_| false, |r| seen.push(r.len() as u8));
        assert!(seen.is_empty());
        q.release(
            300,
            |ip| ip == a,
            |r| {
                let mut buf = [0u8; 64];
                assert_eq!(r.copy_to(&mut buf), 61);
                assert!(!r.expired);
                assert_eq!(r.port, PortId(2));
                seen.push(buf[60]);
            },
        );
        assert_eq!(seen, [0, 1, 2, 3], "all four, in order, bytes intact");
        assert!(q.is_empty());
        assert_eq!(q.park(a, PortId(2), &[1; 60], 400), Ok(()), "slots reused");
    }

    #[test]
    fn pending_expires_after_the_timeout_even_across_clock_wrap() {
        let q = PendingArp::new();
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let start = u32::MAX - 1000;
        assert_eq!(q.park(a, PortId(0), &[7; 60], start), Ok(()));
        let mut expired = 0;
        q.release(
            start.wrapping_add(PENDING_TIMEOUT_MS - 1),
            |_| false,
            |_| expired += 1,
        );
        assert_eq!(expired, 0);
        q.release(
            start.wrapping_add(PENDING_TIMEOUT_MS),
            |_| false,
            |r| {
                assert!(r.expired);
                expired += 1
            },
        );
        assert_eq!(expired, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn pending_total_is_bounded() {
        let q = PendingArp::new();
        let mut held = 0;
        for i in 0..10_000u32 {
            if q.park(Ipv4Addr::from(0x0a00_0000 + i), PortId(0), &[0; 60], 0)
                .is_ok()
            {
                held += 1;
            }
        }
        assert_eq!(held, PENDING_BUCKETS * PENDING_PER_NEIGH);
        assert_eq!(q.len(), held);
    }

    #[test]
    fn pending_frames_are_sent_once_across_threads() {
        let q = Arc::new(PendingArp::new());
        let a = Ipv4Addr::new(10, 0, 0, 9);
        let sent = Arc::new(AtomicU32::new(0));
        for round in 0..200u32 {
            for _ in 0..PENDING_PER_NEIGH {
                q.park(a, PortId(0), &round.to_le_bytes(), round).unwrap();
            }
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (q, sent) = (q.clone(), sent.clone());
                    std::thread::spawn(move || {
                        q.release(
                            round,
                            |_| true,
                            |r| {
                                let mut b = [0u8; 4];
                                assert_eq!(r.copy_to(&mut b), 4);
                                assert_eq!(u32::from_le_bytes(b), round);
                                sent.fetch_add(1, Ordering::Relaxed);
                            },
                        )
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
            assert!(q.is_empty());
        }
        assert_eq!(sent.load(Ordering::Relaxed), 200 * PENDING_PER_NEIGH as u32);
    }
}
