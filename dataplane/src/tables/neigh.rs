//! The neighbour cache: IPv4 address → (MAC, port), learned from ARP on the packet path by
//! any worker and read by all of them, plus permanent entries from configuration.
//!
//! Fixed capacity, open addressing over a short probe window, one seqlock per slot: readers
//! never write shared memory and never wait; a writer that finds a slot being written by
//! another worker gives up (the next ARP frame will teach the same thing), so no one ever
//! spins on another core. Address 0.0.0.0 marks an empty slot; it is never a neighbour.

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
        }
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
        for i in 0..PROBE {
            let idx = (start + i) & self.mask;
            let Some((k, updated, word)) = self.read(&self.slots[idx]) else {
                continue;
            };
            if k == key {
                if word & PERMANENT != 0 && !permanent {
                    return false;
                }
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
        slot.word
            .store(pack(mac, port, permanent), Ordering::Relaxed);
        slot.seq.store(s + 2, Ordering::Release);
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
/// Why a limiter and not a queue of frames waiting for resolution: a pending queue must
/// hold UMEM frames across passes, which ties the pure pipeline to the worker's frame
/// ownership, and a burst towards an unresolved neighbour would pin frames the fill rings
/// need. Like Linux with `unres_qlen` 0, the first packet becomes the request and the rest
/// are dropped (counted as `neigh_rate_limited`) until the reply arrives, normally within a
/// round trip; TCP and ping retransmit. The limiter keeps a flood to an absent neighbour from
/// becoming a flood of broadcasts.
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
}
