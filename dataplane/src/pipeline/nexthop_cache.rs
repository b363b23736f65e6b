//! A per-worker, direct-mapped cache of "destination address → egress": the interface the
//! route's single next hop is on, its MTU and MAC, and the next hop's resolved MAC. It
//! spares the frames of a known destination the FIB lookup, the port lookup and the
//! neighbour cache's seqlock read; `route::forward` uses it for routed frames (after NAT,
//! after decapsulation) and `vxlan::encap` for the route to the remote VTEP.
//!
//! Worker-private (in [`crate::service::WorkerLocal`]): no sharing, no atomics written.
//! An entry holds only while both of these are what they were when it was filled:
//! - the tables snapshot (its address and `generation`: the control plane bumps the
//!   generation on every publication, so a route, port or MTU change misses);
//! - the neighbour cache's generation ([`crate::tables::NeighCache::generation`]), bumped
//!   when any neighbour is added, changes MAC or is removed: a changed MAC is never used.
//!
//! A route into a VXLAN overlay is cached as the overlay and the inner next hop; the
//! encapsulation then finds the VTEP's own route in the cache too (keyed by its address).
//! Not cached, so always looked up: ECMP routes (the flow picks the next hop), unresolved
//! neighbours (the ARP pending path), traced frames (a trace records every decision). What
//! `egress::output` does after (VLAN tag, bond member by flow and link state) reads the
//! snapshot per frame, so a bond member going down needs no invalidation here.
//!
//! In-use marks for neighbour aging are kept: a hit on a learned neighbour marks it at most
//! once per second per entry, as the uncached path does.

use super::Ctx;
use crate::tables::{PortId, Tables};
use core::cell::Cell;
use core::net::Ipv4Addr;

/// Slots per worker: the node's pods and gateways fit with room to spare (~20 KiB).
const SLOTS: usize = 512;

/// One cached egress decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// The logical interface (VLAN subinterface, bond or port) the next hop is on.
    pub port: PortId,
    pub mtu: u16,
    /// The next hop's MAC and ours on `port`: the frame's new Ethernet addresses.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The neighbour (gateway or the destination itself), for in-use marks.
    pub neighbour: Ipv4Addr,
    /// A learned neighbour (aged, so marked in use); not a permanent one.
    pub learned: bool,
    /// `port` is VXLAN interface of this overlay index: the frame is encapsulated towards
    /// `neighbour`'s VTEP (whose own route has an entry of its own); the MACs are unused.
    pub overlay: Option<u16>,
}

/// One entry: cells per field, so a lookup loads only the words it compares (a whole-slot
/// `Cell::get` copies all of it) and writes nothing on a hit.
#[derive(Debug)]
struct Slot {
    /// 0.0.0.0: empty (never a routed destination worth caching).
    dst: Cell<u32>,
    /// The last second this slot marked its neighbour in use.
    touched_s: Cell<u32>,
    snapshot: Cell<usize>,
    generation: Cell<u64>,
    neigh_generation: Cell<u64>,
    egress: Cell<Egress>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            dst: Cell::new(0),
            touched_s: Cell::new(0),
            snapshot: Cell::new(0),
            generation: Cell::new(0),
            neigh_generation: Cell::new(0),
            egress: Cell::new(Egress {
                port: PortId(0),
                mtu: 0,
                dst_mac: [0; 6],
                src_mac: [0; 6],
                neighbour: Ipv4Addr::UNSPECIFIED,
                learned: false,
                overlay: None,
            }),
        }
    }
}

/// The validity stamp an entry must match: read before the lookups that fill it, so an
/// update racing with the fill leaves a stamp that is already stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    snapshot: usize,
    generation: u64,
    neigh_generation: u64,
}

pub struct NextHopCache {
    /// A fixed-size array: a masked index needs no bounds check.
    slots: Box<[Slot; SLOTS]>,
    /// The VXLAN encapsulation and decapsulation entries, under the same validity rules
    /// (`pipeline::vxlan::Cache`).
    pub vxlan: super::vxlan::Cache,
}

impl core::fmt::Debug for NextHopCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NextHopCache").finish_non_exhaustive()
    }
}

impl Default for NextHopCache {
    fn default() -> Self {
        NextHopCache {
            slots: (0..SLOTS)
                .map(|_| Slot::default())
                .collect::<Box<[Slot]>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!("SLOTS slots")),
            vxlan: super::vxlan::Cache::default(),
        }
    }
}

#[inline]
fn index(dst: u32) -> usize {
    // Fibonacci hashing: sequential pod addresses land in distinct slots.
    (dst.wrapping_mul(0x9E37_79B9) >> 23) as usize & (SLOTS - 1)
}

impl Stamp {
    #[inline]
    pub fn now(ctx: &Ctx) -> Stamp {
        Stamp {
            snapshot: ctx.tables as *const Tables as usize,
            generation: ctx.tables.generation,
            neigh_generation: ctx.shared.neigh.generation(),
        }
    }

    /// (snapshot address, tables generation, neighbour generation), for the VXLAN entries.
    #[inline]
    pub(super) fn parts(self) -> (usize, u64, u64) {
        (self.snapshot, self.generation, self.neigh_generation)
    }
}

impl NextHopCache {
    /// The egress for `dst`, if cached and still valid; marks a learned neighbour in use
    /// once per second. Never hits while tracing.
    #[inline]
    pub fn get(&self, dst: Ipv4Addr, ctx: &Ctx) -> Option<Egress> {
        if ctx.trace.is_some() {
            return None;
        }
        let key = u32::from(dst);
        let s = &self.slots[index(key)];
        if s.dst.get() != key
            || s.snapshot.get() != ctx.tables as *const Tables as usize
            || s.generation.get() != ctx.tables.generation
            || s.neigh_generation.get() != ctx.shared.neigh.generation()
        {
            return None;
        }
        let e = s.egress.get();
        if e.learned && s.touched_s.get() != ctx.now_s {
            ctx.shared.neigh.touch(e.neighbour, ctx.now_s);
            s.touched_s.set(ctx.now_s);
        }
        Some(e)
    }

    /// Records the egress the uncached path just chose for `dst`, with the `stamp` taken
    /// before its lookups. Not while tracing (a dry run leaves no trace, even private).
    #[inline]
    pub fn fill(&self, ctx: &Ctx, stamp: Stamp, dst: Ipv4Addr, egress: Egress) {
        let key = u32::from(dst);
        if !ctx.may_mutate() || key == 0 {
            return;
        }
        let s = &self.slots[index(key)];
        s.dst.set(key);
        s.touched_s.set(ctx.now_s);
        s.snapshot.set(stamp.snapshot);
        s.generation.set(stamp.generation);
        s.neigh_generation.set(stamp.neigh_generation);
        s.egress.set(egress);
    }

    /// Fills the entry for `dst` routed into overlay `index` (interface `out`) via the
    /// inner next hop `via`.
    #[inline]
    pub fn fill_overlay(
        &self,
        ctx: &Ctx,
        stamp: Stamp,
        dst: Ipv4Addr,
        out: &crate::tables::Port,
        index: u16,
        via: Ipv4Addr,
    ) {
        self.fill(
            ctx,
            stamp,
            dst,
            Egress {
                port: out.id,
                mtu: out.mtu,
                dst_mac: [0; 6],
                src_mac: out.mac,
                neighbour: via,
                learned: false,
                overlay: Some(index),
            },
        );
    }

    /// Fills the entry for `dst` routed to `out` (`out_id`) via `neighbour`, if the
    /// neighbour is resolved: the uncached path calls it before sending the frame on.
    #[inline]
    pub fn fill_resolved(
        &self,
        ctx: &Ctx,
        stamp: Stamp,
        dst: Ipv4Addr,
        out: &crate::tables::Port,
        out_id: PortId,
        neighbour: Ipv4Addr,
    ) {
        if !ctx.may_mutate() {
            return;
        }
        if let Some(n) = ctx.shared.neigh.lookup(neighbour) {
            self.fill(
                ctx,
                stamp,
                dst,
                Egress {
                    port: out_id,
                    mtu: out.mtu,
                    dst_mac: n.mac,
                    src_mac: out.mac,
                    neighbour,
                    learned: !n.permanent,
                    overlay: None,
                },
            );
        }
    }

    /// Forgets everything (tests).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            s.dst.set(0);
        }
        self.vxlan.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Action, Trace};
    use super::*;
    use crate::counters::Event;
    use crate::wire::{EtherType, EthernetFrame, Ipv4Packet};

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x41, 0xaa];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x41, 0xbb];

    fn to_pod41(lab: &Lab) -> Vec<u8> {
        udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 30, 53, 1000, b"x")
    }

    fn dst_mac(frame: &[u8]) -> [u8; 6] {
        EthernetFrame::new_checked(frame).unwrap().dst_addr().0
    }

    /// What the control plane does on every publication.
    fn republish(lab: &mut Lab) {
        lab.tables.generation += 1;
    }

    #[test]
    fn second_frame_hits_and_is_forwarded_alike() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, MAC_A, POD41, 1);
        assert!(lab.local.nexthops.get(POD41_IP, &lab.ctx()).is_none());
        let first = lab.run(BIZ, to_pod41(&lab));
        let e = lab
            .local
            .nexthops
            .get(POD41_IP, &lab.ctx())
            .expect("filled");
        assert_eq!((e.port, e.mtu, e.dst_mac), (POD41, 1450, MAC_A));
        let second = lab.run(BIZ, to_pod41(&lab));
        assert_eq!(second.action, Action::Tx(POD41));
        assert_eq!(second.frame, first.frame);
        assert_eq!(
            Ipv4Packet::new_checked(&second.frame[14..]).unwrap().ttl(),
            29
        );
        assert_valid_l4(&second.frame);
    }

    #[test]
    fn route_change_in_a_new_snapshot_is_followed() {
        let mut lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, MAC_A, POD41, 1);
        assert_eq!(lab.run(BIZ, to_pod41(&lab)).action, Action::Tx(POD41));
        // `route add 10.20.41.x/32 dev pod60` through the API: a new snapshot.
        lab.route_link(POD41_IP, POD60);
        republish(&mut lab);
        let out = lab.run(BIZ, to_pod41(&lab));
        assert_eq!(out.action, Action::Tx(POD60));
        assert_eq!(
            EthernetFrame::new_checked(&out.frame[..])
                .unwrap()
                .src_addr()
                .0,
            lab.mac(POD60)
        );
    }

    #[test]
    fn neighbour_change_and_removal_are_seen_by_the_next_frame() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, MAC_A, POD41, 1);
        assert_eq!(dst_mac(&lab.run(BIZ, to_pod41(&lab)).frame), MAC_A);
        // A refresh with the same MAC keeps the entry (ARP traffic does not flush caches).
        let g = lab.shared.neigh.generation();
        lab.shared.neigh.learn(POD41_IP, MAC_A, POD41, 2);
        assert_eq!(lab.shared.neigh.generation(), g);
        assert!(lab.local.nexthops.get(POD41_IP, &lab.ctx()).is_some());
        // The pod moved (new MAC).
        lab.shared.neigh.learn(POD41_IP, MAC_B, POD41, 3);
        assert_eq!(dst_mac(&lab.run(BIZ, to_pod41(&lab)).frame), MAC_B);
        // `neigh del`: the next frame waits for ARP instead of using the old MAC.
        lab.shared.neigh.remove(POD41_IP);
        let out = lab.run(BIZ, to_pod41(&lab));
        assert_eq!(out.action, Action::Tx(POD41));
        assert_eq!(
            EthernetFrame::new_checked(&out.frame[..])
                .unwrap()
                .ethertype(),
            EtherType::Arp
        );
        assert_eq!(lab.event(Event::NeighQueued), 1);
        assert!(lab.local.nexthops.get(POD41_IP, &lab.ctx()).is_none());
    }

    #[test]
    fn bond_member_down_needs_no_invalidation() {
        let mut lab = Lab::overlay();
        let f = |lab: &Lab, sport| {
            udp_frame(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                BOND_GW_NET_HOST,
                64,
                sport,
                80,
                b"",
            )
        };
        for sport in 0..16 {
            assert!(matches!(
                lab.run(POD60, f(&lab, sport)).action,
                Action::Tx(UP0 | UP1)
            ));
        }
        assert!(
            lab.local
                .nexthops
                .get(BOND_GW_NET_HOST, &lab.ctx())
                .is_some()
        );
        // Even with the same snapshot stamp the cache holds the bond, never its member: the
        // member is chosen per frame from the link state.
        lab.tables.bonds.set_member_up(UP0, false);
        for sport in 0..16 {
            assert_eq!(lab.run(POD60, f(&lab, sport)).action, Action::Tx(UP1));
        }
    }

    #[test]
    fn vtep_neighbour_change_reaches_encapsulation() {
        let lab = Lab::overlay();
        let f = |lab: &Lab| {
            udp_frame(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                REMOTE_POD_IP,
                64,
                1000,
                53,
                b"x",
            )
        };
        let first = lab.run(POD60, f(&lab));
        assert_eq!(first.action, Action::Tx(CTL));
        assert_eq!(dst_mac(&first.frame), REMOTE_CTL_MAC);
        assert!(lab.local.nexthops.get(REMOTE_CTL_IP, &lab.ctx()).is_some());
        let inner = lab.local.nexthops.get(REMOTE_POD_IP, &lab.ctx()).unwrap();
        assert_eq!((inner.port, inner.overlay), (VXLAN, Some(0)));
        let second = lab.run(POD60, f(&lab));
        assert_eq!(second.frame, first.frame, "cached outer route, same frame");
        // The configured (static) neighbour changed its MAC.
        assert!(lab.shared.neigh.set_static(REMOTE_CTL_IP, MAC_B, CTL));
        let third = lab.run(POD60, f(&lab));
        assert_eq!(third.action, Action::Tx(CTL));
        assert_eq!(dst_mac(&third.frame), MAC_B);
        assert_eq!(third.frame[6..], first.frame[6..]);
    }

    #[test]
    fn hits_mark_learned_neighbours_in_use_once_a_second() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, MAC_A, POD41, 1);
        lab.run_at(BIZ, to_pod41(&lab), 1_000_000_000);
        lab.run_at(BIZ, to_pod41(&lab), 7_000_000_000);
        assert_eq!(lab.shared.neigh.lookup(POD41_IP).unwrap().used, 7);
        lab.run_at(BIZ, to_pod41(&lab), 9_000_000_000);
        assert_eq!(lab.shared.neigh.lookup(POD41_IP).unwrap().used, 9);
    }

    #[test]
    fn traced_frames_neither_hit_nor_fill() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, MAC_A, POD41, 1);
        let trace = Trace::default();
        let ctx = Ctx {
            trace: Some(&trace),
            ..lab.ctx()
        };
        let mut buf = vec![0u8; 2048];
        let f = to_pod41(&lab);
        buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(&f);
        let mut frame = crate::frame::Frame::new(&mut buf, HEADROOM, f.len());
        let meta = super::super::RxMeta {
            port: BIZ,
            vlan: None,
        };
        assert_eq!(
            super::super::process(&mut frame, &meta, &ctx),
            Action::Tx(POD41)
        );
        assert!(lab.local.nexthops.get(POD41_IP, &lab.ctx()).is_none());
        lab.run(BIZ, to_pod41(&lab));
        assert!(lab.local.nexthops.get(POD41_IP, &ctx).is_none());
        assert!(trace.steps().iter().any(|(stage, _)| *stage == "route"));
    }
}
