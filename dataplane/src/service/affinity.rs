//! ClientIP session affinity: (service, client address) → backend, with a timeout.
//!
//! A small shared table, written by whichever worker schedules a client's new flow and read
//! by all, lock-free: a fixed array of two-word slots, direct-mapped by a hash of the key
//! (one probe, no chains). Each slot holds `key = service << 32 | client` and
//! `val = backend key << 32 | last use (seconds)`.
//!
//! The two words are stored separately (no 128-bit atomics), so a reader racing two writers
//! of the *same* slot may pair one key with another's value. That is harmless by
//! construction: the value is only a hint, and the caller accepts it only if it names a
//! backend of that service that is still ready; otherwise the client is scheduled afresh.
//! A collision between two clients evicts the older one, as IPVS' persistence templates do
//! when their table is full; the table is sized for the node's concurrent clients.

use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct Affinity {
    slots: Box<[[AtomicU64; 2]]>,
    mask: usize,
}

impl Affinity {
    /// A table of `capacity` slots (rounded up to a power of two, at least 64).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(64).next_power_of_two();
        Affinity {
            slots: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn slot(&self, service: u32, client: Ipv4Addr) -> (&[AtomicU64; 2], u64) {
        let k = (u64::from(service) << 32) | u64::from(u32::from(client));
        let h = crate::pipeline::flow::mix(service, u32::from(client), 0, 0x6166_6631);
        (&self.slots[h as usize & self.mask], k)
    }

    /// The backend key remembered for `client` of `service`, if used within `timeout` s.
    #[inline]
    pub fn get(&self, service: u32, client: Ipv4Addr, timeout: u32, now_s: u32) -> Option<u32> {
        let (s, k) = self.slot(service, client);
        // Key 0 never matches a real entry: service ids start at 1.
        if s[0].load(Relaxed) != k {
            return None;
        }
        let v = s[1].load(Relaxed);
        let last = v as u32;
        if now_s.wrapping_sub(last) > timeout {
            return None;
        }
        Some((v >> 32) as u32)
    }

    /// Remembers (or refreshes) `backend` for `client` of `service`.
    #[inline]
    pub fn set(&self, service: u32, client: Ipv4Addr, backend: u32, now_s: u32) {
        let (s, k) = self.slot(service, client);
        let v = (u64::from(backend) << 32) | u64::from(now_s);
        // Refreshing an unchanged entry only bumps the time; skip the store when the second
        // is the same, so a busy client does not keep dirtying a shared line.
        if s[0].load(Relaxed) == k && s[1].load(Relaxed) == v {
            return;
        }
        s[1].store(v, Relaxed);
        s[0].store(k, Relaxed);
    }

    pub fn clear(&self) {
        for s in self.slots.iter() {
            s[0].store(0, Relaxed);
            s[1].store(0, Relaxed);
        }
    }
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new(65_536)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_expires() {
        let a = Affinity::new(64);
        let c = Ipv4Addr::new(10, 20, 9, 60);
        assert_eq!(a.get(1, c, 10, 5), None);
        a.set(1, c, 0x0a14_0929, 5);
        assert_eq!(a.get(1, c, 10, 5), Some(0x0a14_0929));
        assert_eq!(a.get(1, c, 10, 15), Some(0x0a14_0929));
        assert_eq!(a.get(1, c, 10, 16), None, "expired");
        assert_eq!(a.get(2, c, 10, 5), None, "other service");
        a.clear();
        assert_eq!(a.get(1, c, 10, 5), None);
    }
}

/// Connection counts per (service, backend) for the `lc` scheduler.
///
/// Conntrack can count a backend's flows only by scanning the whole table
/// (`Conntrack::backend_conns`), far too slow for every new flow. So the control thread
/// recounts all flows in one pass about once a second ([`LcCounts::publish`]), and between
/// recounts each worker adds the flows it schedules ([`LcCounts::bump`]): the count a new
/// flow sees is at most a second stale in its decrements (closed flows), never in its
/// increments, which is what keeps a burst of new connections from piling onto one backend.
/// Direct-mapped by hash; two (service, backend) pairs sharing a counter only skew `lc`.
#[derive(Debug)]
pub struct LcCounts {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl LcCounts {
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(64).next_power_of_two();
        LcCounts {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn at(&self, service: u32, backend: u32) -> &AtomicU64 {
        let h = crate::pipeline::flow::mix(service, backend, 0, 0x6c63_0000);
        &self.slots[h as usize & self.mask]
    }

    #[inline]
    pub fn get(&self, service: u32, backend: u32) -> u32 {
        self.at(service, backend).load(Relaxed) as u32
    }

    /// One more flow scheduled to (service, backend). Several workers may bump one counter,
    /// so this is a real read-modify-write; it happens once per new flow, not per packet.
    #[inline]
    pub fn bump(&self, service: u32, backend: u32) {
        self.at(service, backend).fetch_add(1, Relaxed);
    }

    /// Replaces every count with a fresh one (control thread): `counts` yields
    /// (service, backend, flows).
    pub fn publish(&self, counts: impl IntoIterator<Item = (u32, u32, u64)>) {
        let mut fresh = vec![0u64; self.slots.len()];
        for (s, b, n) in counts {
            let h = crate::pipeline::flow::mix(s, b, 0, 0x6c63_0000);
            fresh[h as usize & self.mask] += n;
        }
        for (slot, n) in self.slots.iter().zip(fresh) {
            slot.store(n, Relaxed);
        }
    }
}

impl Default for LcCounts {
    fn default() -> Self {
        LcCounts::new(16_384)
    }
}
