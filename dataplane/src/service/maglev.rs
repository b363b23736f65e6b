//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI '16, §3.4), built by the
//! control side whenever a service's backend set changes and read lock-free by the workers.
//!
//! Determinism matters more than speed here: every node of a cluster (and every afgate build)
//! must fill the same table from the same backend set, so that a flow moved between nodes by
//! an ECMP change still lands on the same backend. The permutation of a backend therefore
//! depends only on its `addr:port`, hashed with [`fnv1a64`] (FNV-1a, 64-bit, offset basis
//! 0xcbf29ce484222325, prime 0x100000001b3) over the 6 bytes `addr octets ‖ port (BE)`,
//! prefixed by one seed byte: seed 0 gives the offset, seed 1 the skip. Not std's
//! `RandomState`, whose keys change per process.
//!
//! Weights follow Katran's approach: backends take turns in rounds; in each round a backend
//! earns its weight in credit and claims one slot per `max_weight` of credit, so over the
//! whole fill each backend holds a share of the table proportional to its weight.

use core::net::Ipv4Addr;

/// Slots per backend at least (the paper's "M ≥ 100·N" for ≤ 1% imbalance).
pub const SLOTS_PER_BACKEND: usize = 100;
/// The smallest table, so that one or two backends still spread by weight finely.
pub const MIN_TABLE: usize = 1009;

/// FNV-1a, 64-bit: stable across builds, platforms and processes.
#[inline]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn backend_hash(seed: u8, addr: Ipv4Addr, port: u16) -> u64 {
    let o = addr.octets();
    let p = port.to_be_bytes();
    fnv1a64(&[seed, o[0], o[1], o[2], o[3], p[0], p[1]])
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The table size for `n` backends: the smallest prime ≥ max(100·n, [`MIN_TABLE`]).
pub fn table_size(n: usize) -> usize {
    let mut m = (n * SLOTS_PER_BACKEND).max(MIN_TABLE);
    while !is_prime(m) {
        m += 1;
    }
    m
}

/// Fills a Maglev table over `backends` (`(addr, port, weight)`); each slot holds the index of
/// a backend in that slice. Empty when there are no backends or all weights are 0.
pub fn build(backends: &[(Ipv4Addr, u16, u16)]) -> Box<[u16]> {
    let live: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].2 > 0).collect();
    if live.is_empty() {
        return Box::new([]);
    }
    let m = table_size(live.len());
    let perm: Vec<(usize, usize)> = live
        .iter()
        .map(|&i| {
            let (a, p, _) = backends[i];
            let offset = (backend_hash(0, a, p) % m as u64) as usize;
            let skip = (backend_hash(1, a, p) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let max_w = live.iter().map(|&i| backends[i].2).max().unwrap_or(1) as u64;
    let mut next = vec![0usize; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (k, &i) in live.iter().enumerate() {
            credit[k] += backends[i].2 as u64;
            while credit[k] >= max_w {
                credit[k] -= max_w;
                let (offset, skip) = perm[k];
                // Next preferred slot that is still free; m is prime, so the sequence visits
                // every slot and this terminates while any slot is free.
                let mut c = (offset + next[k] * skip) % m;
                while table[c] != u16::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m;
                }
                table[c] = i as u16;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(n: u8, w: u16) -> (Ipv4Addr, u16, u16) {
        (Ipv4Addr::new(10, 20, 9, n), 8080, w)
    }

    fn shares(t: &[u16], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &s in t {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn sizes_are_prime_and_large_enough() {
        assert_eq!(table_size(1), 1009);
        assert_eq!(table_size(3), 1009);
        assert_eq!(table_size(11), 1103);
        assert!(table_size(50) >= 5000 && is_prime(table_size(50)));
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let b: Vec<_> = (1..=5).map(|i| be(i, 1)).collect();
        let t = build(&b);
        for c in shares(&t, 5) {
            assert!((c as f64 - t.len() as f64 / 5.0).abs() <= 1.0, "{c}");
        }
    }

    #[test]
    fn weights_are_followed() {
        let b = vec![be(1, 1), be(2, 2), be(3, 3)];
        let t = build(&b);
        let s = shares(&t, 3);
        let unit = t.len() as f64 / 6.0;
        for (i, c) in s.iter().enumerate() {
            assert!((*c as f64 - unit * (i + 1) as f64).abs() <= 2.0, "{s:?}");
        }
        // Zero weight never appears.
        let t = build(&[be(1, 0), be(2, 1)]);
        assert!(t.iter().all(|&s| s == 1));
        assert!(build(&[be(1, 0)]).is_empty());
    }

    #[test]
    fn deterministic_and_pinned() {
        let a = build(&[be(1, 1), be(2, 1), be(3, 1)]);
        let b = build(&[be(1, 1), be(2, 1), be(3, 1)]);
        assert_eq!(a, b);
        // Pinned: this exact table must come out of every build on every node. If this
        // changes, mixed-version clusters would disagree on backends.
        let h = fnv1a64(&a.iter().flat_map(|s| s.to_be_bytes()).collect::<Vec<_>>());
        assert_eq!(h, PINNED_3_BACKENDS, "maglev table changed: {h:#x}");
    }

    const PINNED_3_BACKENDS: u64 = 0x9dcc_26fb_62b0_98a5;

    #[test]
    fn removing_one_backend_moves_few_flows() {
        let all: Vec<_> = (1..=10).map(|i| be(i, 1)).collect();
        let t1 = build(&all);
        let mut fewer = all.clone();
        fewer.remove(4);
        let t2 = build(&fewer);
        assert_eq!(t1.len(), t2.len());
        // Map t2's indices back to addresses for comparison.
        let moved = t1
            .iter()
            .zip(t2.iter())
            .filter(|(a, b)| all[**a as usize].0 != fewer[**b as usize].0)
            .count();
        // Ideal: 1/10 of the slots (those of the removed backend); Maglev allows a little more.
        assert!(moved < t1.len() * 15 / 100, "{moved} of {}", t1.len());
    }
}
