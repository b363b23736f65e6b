//! The IPv4 forwarding table: longest-prefix match over one hash map per prefix length in
//! use, probed from the longest length down. A node has few distinct lengths (/32 pod
//! routes, /25 pod subnets, /24 connected, /0 default), so a lookup is a handful of probes,
//! and adding one route touches one map instead of rebuilding a trie.

use super::ports::PortId;
use core::net::Ipv4Addr;
use hashbrown::HashMap;
use std::sync::Arc;

/// Where a route sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub port: PortId,
    /// The gateway (`via`, always onlink); `None` for connected and `scope link` routes,
    /// where the destination itself is the neighbour.
    pub via: Option<Ipv4Addr>,
}

impl NextHop {
    /// The address whose MAC the frame is sent to.
    #[inline]
    pub fn neighbour(&self, dst: Ipv4Addr) -> Ipv4Addr {
        self.via.unwrap_or(dst)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: Ipv4Addr,
    pub len: u8,
    /// Equal-cost next hops; the flow hash picks one (ECMP).
    pub nexthops: Vec<NextHop>,
}

impl Route {
    /// The next hop for a flow with hash `hash`.
    #[inline]
    pub fn select(&self, hash: u32) -> Option<&NextHop> {
        match self.nexthops.len() {
            0 => None,
            1 => self.nexthops.first(),
            n => self.nexthops.get(((hash as u64 * n as u64) >> 32) as usize),
        }
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    }
}

/// Counters per prefix length of a [`LenFilter`]: 2^12.
const FILTER_BITS: u32 = 12;
const FILTER_SIZE: usize = 1 << FILTER_BITS;

/// A counting filter over the networks of one prefix length: a zero counter proves the
/// length has no route for a destination, so a lookup skips that length's hash probe. Most
/// forwarded packets miss every /32 pod route and every pod subnet before they match (the
/// default route, or one pod's /32 among many); the filter turns each such miss into one
/// load instead of a hash-map probe.
#[derive(Debug, Clone)]
struct LenFilter {
    len: u8,
    mask: u32,
    /// Routes of this length per filter index (saturating: a full counter stays full).
    counts: Box<[u16; FILTER_SIZE]>,
}

/// Fibonacci hashing of a masked network: multiply by 2^32/φ and keep the top bits, which
/// depend on every bit of the network (its low host bits are zero).
#[inline]
fn filter_index(net: u32) -> usize {
    (net.wrapping_mul(0x9E37_79B1) >> (32 - FILTER_BITS)) as usize
}

#[derive(Debug, Clone, Default)]
pub struct Fib {
    /// Prefix lengths present, longest first.
    lens: Vec<u8>,
    /// `tables[len]`: network (host order) → route. `Arc` so that cloning the table to build
    /// the next snapshot copies pointers, not next-hop vectors.
    tables: Vec<HashMap<u32, Arc<Route>>>,
    /// The lengths of `lens` except 0, longest first, each with its filter: what a lookup
    /// probes.
    probes: Vec<LenFilter>,
    /// The default route (0.0.0.0/0), answered without a probe when nothing longer matches.
    default: Option<Arc<Route>>,
}

impl Fib {
    pub fn new() -> Self {
        Fib {
            lens: Vec::new(),
            tables: (0..=32).map(|_| HashMap::new()).collect(),
            probes: Vec::new(),
            default: None,
        }
    }

    /// Keeps `probes` and `default` in step with a route of `len` for `net` being added
    /// (`delta` 1) or removed (-1).
    fn index_changed(&mut self, len: u8, net: u32, delta: i32) {
        if len == 0 {
            self.default = self.tables[0].get(&0).cloned();
            return;
        }
        let at = match self.probes.iter().position(|p| p.len == len) {
            Some(i) => i,
            None => {
                self.probes.push(LenFilter {
                    len,
                    mask: mask(len),
                    counts: Box::new([0; FILTER_SIZE]),
                });
                self.probes
                    .sort_unstable_by_key(|p| core::cmp::Reverse(p.len));
                self.probes.iter().position(|p| p.len == len).unwrap_or(0)
            }
        };
        let c = &mut self.probes[at].counts[filter_index(net)];
        if *c != u16::MAX {
            *c = if delta > 0 {
                *c + 1
            } else {
                c.saturating_sub(1)
            };
        }
        if self.tables[len as usize].is_empty() {
            self.probes.remove(at);
        }
    }

    /// Adds or replaces the route for `prefix/len` (host bits are ignored).
    pub fn insert(&mut self, prefix: Ipv4Addr, len: u8, nexthops: Vec<NextHop>) {
        if self.tables.is_empty() {
            *self = Fib::new();
        }
        let len = len.min(32);
        let net = u32::from(prefix) & mask(len);
        let route = Route {
            prefix: Ipv4Addr::from(net),
            len,
            nexthops,
        };
        let added = self.tables[len as usize]
            .insert(net, Arc::new(route))
            .is_none();
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        if added || len == 0 {
            self.index_changed(len, net, 1);
        }
    }

    /// Removes the route for exactly `prefix/len`; returns it if it existed.
    pub fn remove(&mut self, prefix: Ipv4Addr, len: u8) -> Option<Arc<Route>> {
        let len = len.min(32);
        let net = u32::from(prefix) & mask(len);
        let table = self.tables.get_mut(len as usize)?;
        let removed = table.remove(&net);
        if table.is_empty() {
            self.lens.retain(|l| *l != len);
        }
        if removed.is_some() {
            self.index_changed(len, net, -1);
        }
        removed
    }

    /// Longest-prefix match.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Route> {
        let dst = u32::from(dst);
        for p in &self.probes {
            let net = dst & p.mask;
            if p.counts[filter_index(net)] != 0
                && let Some(r) = self.tables[p.len as usize].get(&net)
            {
                return Some(r);
            }
        }
        self.default.as_deref()
    }

    pub fn get(&self, prefix: Ipv4Addr, len: u8) -> Option<&Route> {
        let len = len.min(32);
        self.tables
            .get(len as usize)?
            .get(&(u32::from(prefix) & mask(len)))
            .map(|r| &**r)
    }

    /// All routes, longest prefix first, then by address: the order `ip route` users expect
    /// reversed; `ctl route list` sorts as it likes.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.lens
            .iter()
            .flat_map(move |&l| self.tables[l as usize].values().map(|r| &**r))
    }

    pub fn len(&self) -> usize {
        self.lens
            .iter()
            .map(|&l| self.tables[l as usize].len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nh(p: u16) -> Vec<NextHop> {
        vec![NextHop {
            port: PortId(p),
            via: None,
        }]
    }

    #[test]
    fn longest_prefix_wins() {
        let mut f = Fib::new();
        f.insert(Ipv4Addr::UNSPECIFIED, 0, nh(0));
        f.insert(Ipv4Addr::new(10, 20, 9, 0), 25, nh(1));
        f.insert(Ipv4Addr::new(10, 20, 9, 60), 32, nh(2));
        let port = |f: &Fib, a| f.lookup(a).unwrap().nexthops[0].port.0;
        assert_eq!(port(&f, Ipv4Addr::new(10, 20, 9, 60)), 2);
        assert_eq!(port(&f, Ipv4Addr::new(10, 20, 9, 61)), 1);
        assert_eq!(port(&f, Ipv4Addr::new(10, 20, 9, 200)), 0);
        assert_eq!(port(&f, Ipv4Addr::new(8, 8, 8, 8)), 0);
        assert!(f.remove(Ipv4Addr::new(10, 20, 9, 60), 32).is_some());
        assert_eq!(port(&f, Ipv4Addr::new(10, 20, 9, 60)), 1);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn ecmp_spreads_by_hash() {
        let r = Route {
            prefix: Ipv4Addr::UNSPECIFIED,
            len: 0,
            nexthops: vec![
                NextHop {
                    port: PortId(0),
                    via: None,
                },
                NextHop {
                    port: PortId(1),
                    via: None,
                },
            ],
        };
        assert_eq!(r.select(0).unwrap().port, PortId(0));
        assert_eq!(r.select(u32::MAX).unwrap().port, PortId(1));
    }

    proptest! {
        /// The per-length maps give the same answer as a linear scan for the longest match.
        #[test]
        fn matches_linear_scan(routes in proptest::collection::vec((any::<u32>(), 0u8..=32), 1..40),
                               probes in proptest::collection::vec(any::<u32>(), 1..50)) {
            let mut f = Fib::new();
            let mut model: Vec<(u32, u8, u16)> = Vec::new();
            for (i, (p, l)) in routes.iter().enumerate() {
                f.insert(Ipv4Addr::from(*p), *l, nh(i as u16));
                let net = p & mask(*l);
                model.retain(|(n, ml, _)| !(*n == net && *ml == *l));
                model.push((net, *l, i as u16));
            }
            for d in probes {
                let want = model.iter().filter(|(n, l, _)| d & mask(*l) == *n).max_by_key(|(_, l, _)| *l).map(|m| m.2);
                let got = f.lookup(Ipv4Addr::from(d)).map(|r| r.nexthops[0].port.0);
                prop_assert_eq!(want, got);
            }
        }

        /// Removing routes keeps the lookup filters exact: after any mix of inserts and
        /// removals (some of the same prefix), lookups still equal a linear scan, and probes
        /// land on the routes' own networks too (not only random addresses).
        #[test]
        fn removals_keep_matching_linear_scan(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32, any::<bool>()), 1..60),
            probes in proptest::collection::vec(any::<u32>(), 1..30),
        ) {
            let mut f = Fib::new();
            let mut model: Vec<(u32, u8, u16)> = Vec::new();
            for (i, (p, l, keep)) in routes.iter().enumerate() {
                // Few distinct prefixes, so that removals hit routes that exist.
                let p = p & 0xff00_00ff;
                let net = p & mask(*l);
                if *keep {
                    f.insert(Ipv4Addr::from(p), *l, nh(i as u16));
                    model.retain(|(n, ml, _)| !(*n == net && *ml == *l));
                    model.push((net, *l, i as u16));
                } else {
                    let had = model.iter().any(|(n, ml, _)| *n == net && *ml == *l);
                    prop_assert_eq!(f.remove(Ipv4Addr::from(p), *l).is_some(), had);
                    model.retain(|(n, ml, _)| !(*n == net && *ml == *l));
                }
            }
            prop_assert_eq!(f.len(), model.len());
            for d in probes.into_iter().chain(model.iter().map(|m| m.0)) {
                let want = model.iter().filter(|(n, l, _)| d & mask(*l) == *n).max_by_key(|(_, l, _)| *l).map(|m| m.2);
                let got = f.lookup(Ipv4Addr::from(d)).map(|r| r.nexthops[0].port.0);
                prop_assert_eq!(want, got);
            }
        }
    }
}
