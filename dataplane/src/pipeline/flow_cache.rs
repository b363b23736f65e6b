//! A per-worker, direct-mapped cache of flows (VPP/OVS-style): "a packet with this
//! 5-tuple, from this interface and VLAN, belongs to conntrack flow F in direction D and
//! leaves translated so", or "... is tracked by nothing and leaves untranslated",
//! remembered by the packet whose full path decided it. A flow's next packets skip the
//! conntrack hash, bucket scan and seqlock read (or the miss), the decoding of the flow,
//! the service and masquerade checks and the translation's checksum sums: classification
//! asks here first for an IPv4 frame (after the Ethernet checks), and on a hit checks the
//! IPv4 header itself, translates (or not) and routes the packet as the full path would.
//! Entries are filled by the service stage: `service::tracked` (a conntrack hit) and
//! `service::untracked` (a miss, no service, no masquerade rule, not to a node address).
//! Anti-spoofing, VXLAN decapsulation and the service stage decided on the key and the
//! snapshot alone then, so a hit under the same snapshot skips them too (VXLAN's UDP port
//! is never cached).
//!
//! Worker-private (in [`crate::service::WorkerLocal`]), like `pipeline::nexthop_cache`,
//! whose stamps it follows: no sharing, no allocation, no atomics written but the flow's own.
//! An entry is used only while all of these hold, else the packet takes the full path (which
//! fills the entry again):
//! - the tables snapshot is the one it was filled under (address and `generation`: every
//!   publication bumps it), so a service or backend change, a removed service or a
//!   UDP backend that must be rebalanced (`service::still_valid`, decided on the snapshot)
//!   is seen by the next packet;
//! - tracked: [`Conntrack::refresh`](crate::conntrack::Conntrack::refresh) finds the slot
//!   still holding the flow (same reuse generation and tuple, so not removed, flushed or
//!   reused), live and unexpired: exactly what the lookup would have found. It also does
//!   the lookup's caller's per-packet work: timestamp, TCP state, replied, packet and byte
//!   counters.
//! - untracked: [`Conntrack::live_epoch`](crate::conntrack::Conntrack::live_epoch) of the
//!   tuple is what it was before the lookup that missed, so no flow with the tuple (in
//!   either direction: a new translation whose reply this packet would be) has gone live
//!   since, on any worker. Only an insert turns a miss into a hit.
//! - the packet has the shape the prepared rewrite assumes: TCP or UDP, an IPv4 header
//!   without options, no fragment offset, the L4 header present; and carries no SYN, FIN
//!   or RST (connection starts and ends go the full way; the state step is the same).
//!
//! Never used while tracing (a trace records every decision and changes nothing). The first
//! packet of an entry is routed by `route::forward`; the entry then keeps the next-hop
//! cache's egress for the (translated) destination (interface, MTU, MACs or overlay), valid
//! while the neighbour cache's generation is unchanged, and applies it as `route::forward`'s
//! cached case does (TTL and MTU tests, TTL decrement, MACs or VXLAN encapsulation,
//! neighbour in-use marks). Anything else (TTL expiring, too big, ECMP or unresolved next
//! hop) is routed by `route::forward` itself.

use super::nat::Prepared;
use super::nexthop_cache::Egress;
use super::{Action, Ctx, RxMeta, route};
use crate::conntrack::{Dir, FIN, FlowRef, Hit, RST, SYN, Tuple};
use crate::frame::Frame;
use crate::tables::Tables;
use crate::wire::checksum;
use core::cell::Cell;

/// Slots per worker (~48 KiB): the flows a worker sees in a burst.
const SLOTS: usize = 1024;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// What a hit does to the packet and its flow.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// `FlowRef::NONE`: an untracked flow (no conntrack entry in either direction, not to a
    /// service, no masquerade rule), valid while its tuple's `live_epoch` is `Slot::epoch`.
    flow: FlowRef,
    original: bool,
    rewrite: Prepared,
}

/// One entry: the key and stamps as separate cells, so a miss loads only what it compares.
#[derive(Debug, Default)]
struct Slot {
    /// src << 32 | dst.
    k0: Cell<u64>,
    /// sport << 48 | dport << 32 | ingress interface << 16 | (VLAN + 1) << 1 | TCP.
    k1: Cell<u64>,
    /// 0: empty (no snapshot lives at address 0).
    snapshot: Cell<usize>,
    generation: Cell<u64>,
    entry: Cell<Entry>,
    /// Where the translated packets go: the next-hop cache's entry for the new destination,
    /// learnt from the first routed packet, valid while the neighbour cache's generation is
    /// `neigh_generation` (the snapshot is the entry's own). None: route each packet.
    egress: Cell<Option<Egress>>,
    neigh_generation: Cell<u64>,
    /// The last second a hit marked the learned neighbour in use.
    touched_s: Cell<u32>,
    /// An untracked entry's `Conntrack::live_epoch`, read before the lookup that missed.
    epoch: Cell<u64>,
}

impl Slot {
    /// The entry in place (a hit reads a few of its fields; `get` would copy all of it).
    #[inline(always)]
    #[allow(unsafe_code)]
    fn entry_ref(&self) -> &Entry {
        // SAFETY: a slot belongs to one worker's `WorkerLocal` (`Cell` makes it !Sync), and
        // `entry` is only written by `fill`, which no caller runs while holding this
        // reference: `fast` drops it before anything that could fill.
        unsafe { &*self.entry.as_ptr() }
    }

    /// The learnt egress in place; see [`Self::entry_ref`].
    #[inline(always)]
    #[allow(unsafe_code)]
    fn egress_ref(&self) -> &Option<Egress> {
        // SAFETY: as in `entry_ref`; `egress` is written only by `learn_egress` and `fill`,
        // and `fast` calls `learn_egress` only after its last use of this reference.
        unsafe { &*self.egress.as_ptr() }
    }
}

pub struct FlowCache {
    /// A fixed-size array: a masked index needs no bounds check.
    slots: Box<[Slot; SLOTS]>,
    /// Frames served from the cache (tests tell hits from full-path frames by it).
    #[cfg(test)]
    hits: Cell<u64>,
}

impl core::fmt::Debug for FlowCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FlowCache").finish_non_exhaustive()
    }
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache {
            slots: (0..SLOTS)
                .map(|_| Slot::default())
                .collect::<Box<[Slot]>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!("SLOTS slots")),
            #[cfg(test)]
            hits: Cell::new(0),
        }
    }
}

/// A packet's key.
#[derive(Debug, Clone, Copy)]
struct Key {
    k0: u64,
    k1: u64,
}

const ETH: usize = 14;

impl Key {
    #[inline]
    fn new(addrs: u64, ports: u32, meta: &RxMeta, tcp: bool) -> Key {
        let vlan = meta.vlan.map_or(0, |v| u64::from(v & 0xfff) + 1);
        Key {
            k0: addrs,
            k1: u64::from(ports) << 32 | u64::from(meta.port.0) << 16 | vlan << 1 | u64::from(tcp),
        }
    }
}

/// The key of a packet with tuple `t` (from `nat::tuple_of`) if the cache may serve its
/// flow: TCP or UDP in an option-less IPv4 header, and not VXLAN's port when VXLAN is on
/// (decapsulation, before the service stage, decides on more than the key there).
#[inline]
fn key_of(data: &[u8], meta: &RxMeta, ctx: &Ctx, t: &Tuple) -> Option<Key> {
    let tcp = match t.proto {
        PROTO_TCP => true,
        PROTO_UDP => false,
        _ => return None,
    };
    let vx = &ctx.tables.vxlan;
    if data.get(ETH) != Some(&0x45) || (!tcp && vx.is_enabled() && t.dport == vx.udp_port) {
        return None;
    }
    let addrs = u64::from(u32::from(t.src)) << 32 | u64::from(u32::from(t.dst));
    let ports = u32::from(t.sport) << 16 | u32::from(t.dport);
    Some(Key::new(addrs, ports, meta, tcp))
}

#[inline]
fn index(k: &Key) -> usize {
    slot_of(k.k0, (k.k1 >> 32) as u32)
}

/// The slot of addresses `k0` and ports `ports` (not interface, VLAN or protocol: a miss is
/// told from those alone, before the rest of the key is built).
#[inline]
fn slot_of(k0: u64, ports: u32) -> usize {
    let x = (k0 ^ u64::from(ports).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 54) as usize & (SLOTS - 1)
}

#[inline]
fn snapshot(ctx: &Ctx) -> usize {
    ctx.tables as *const Tables as usize
}

/// The cached path, first thing for an IPv4 frame (`classify`): if the frame's flow is
/// cached and still valid, checks the IPv4 header as classification would, refreshes the
/// flow, trims Ethernet padding, rewrites the frame as the conntrack hit did and routes it.
/// `None`, with the frame (but for its padding) and the flow untouched, sends the frame the
/// full way, which also counts any drop.
#[inline]
pub fn fast(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    if ctx.trace.is_some() {
        return None;
    }
    let len = frame.len();
    let data = frame.data();
    let h = data.first_chunk::<{ ETH + 28 }>()?;
    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    // Most frames that are not of a cached flow leave after these few loads (the ports'
    // offset holds for the option-less headers that can match, checked below).
    let k0 = u64::from(w(26)) << 32 | u64::from(w(30));
    let ports = w(34);
    let s = &ctx.local.flows.slots[slot_of(k0, ports)];
    if s.k0.get() != k0 || (s.k1.get() >> 32) as u32 != ports {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let ttl = h[22];
    let (tcp, l4_min) = match h[23] {
        PROTO_TCP => (true, 40),
        PROTO_UDP => (false, 28),
        _ => return None,
    };
    // `nat::tuple_of`'s conditions for a key, an option-less header, and
    // `Ipv4Packet::new_checked`'s length checks.
    if h[14] != 0x45 || h[20] & 0x1f != 0 || h[21] != 0 || total < l4_min || ETH + total > len {
        return None;
    }
    // A plain segment (the length checks above keep the TCP flags in the frame).
    let flags = if tcp { data[ETH + 20 + 13] } else { 0 };
    if flags & (SYN | FIN | RST) != 0 {
        return None;
    }
    let k = Key::new(k0, ports, meta, tcp);
    if s.k1.get() != k.k1
        || s.snapshot.get() != snapshot(ctx)
        || s.generation.get() != ctx.tables.generation
    {
        return None;
    }
    // `verify_checksum` on the five words (native order, as it does), only for a frame
    // that would use the entry.
    let w64 = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let sum = w64(14) + w64(18) + w64(22) + w64(26) + w64(30);
    if checksum::fold_sum(sum) != 0xffff {
        return None;
    }
    // Anti-spoofing, VXLAN decapsulation and the service stage decided on the key and the
    // snapshot alone when the entry was filled; conntrack is asked again.
    // Ethernet padding is not part of the packet (shrinking cannot fail).
    if ETH + total < len && !frame.set_len(ETH + total) {
        return None;
    }
    let e = s.entry_ref();
    let dir = if e.original {
        Dir::Original
    } else {
        Dir::Reply
    };
    let ct = &ctx.shared.conntrack;
    // An untracked entry's `FlowRef::NONE` names no slot: `refresh` refuses it at once.
    if !ct.refresh(e.flow, dir, flags, total as u32, ctx.now_s) && !untracked_holds(s, e, ctx) {
        s.snapshot.set(0);
        return None;
    }
    #[cfg(test)]
    ctx.local.flows.hits.set(ctx.local.flows.hits.get() + 1);
    let data = frame.data_mut();
    // `route::forward`'s cached case, from the entry: same TTL and MTU tests, same result;
    // the TTL decrement joins the translation's header checksum update.
    let neigh = ctx.shared.neigh.generation();
    let egress = s.egress_ref();
    let fits = match egress {
        Some(eg) => s.neigh_generation.get() == neigh && ttl > 1 && total <= usize::from(eg.mtu),
        None => false,
    };
    e.rewrite.apply(&mut data[ETH..], tcp, fits);
    if fits && let Some(eg) = egress {
        if eg.learned && s.touched_s.get() != ctx.now_s {
            ctx.shared.neigh.touch(eg.neighbour, ctx.now_s);
            s.touched_s.set(ctx.now_s);
        }
        if let Some(index) = eg.overlay {
            // A copy: encapsulation may go the full way, and the reference must not outlive
            // this hit (`Slot::egress_ref`).
            let eg = *eg;
            return Some(route::encap_cached(frame, meta, ctx, &eg, index));
        }
        data[0..6].copy_from_slice(&eg.dst_mac);
        data[6..12].copy_from_slice(&eg.src_mac);
        return Some(Action::Tx(eg.port));
    }
    let dst = e.rewrite.dst();
    let action = route::forward(frame, meta, ctx);
    learn_egress(s, ctx, dst, neigh);
    Some(action)
}

/// Whether the untracked entry `e` still stands: no flow with its tuple has gone live since
/// the miss it records (a reply direction of a new translation, on any worker). False for a
/// tracked entry (whose flow is gone, reused or expired: `refresh` failed). Out of line: the
/// tracked hit stays as short as it was.
#[inline(never)]
fn untracked_holds(s: &Slot, e: &Entry, ctx: &Ctx) -> bool {
    e.flow.is_none()
        && s.epoch.get()
            == ctx
                .shared
                .conntrack
                .live_epoch(s.k0.get(), (s.k1.get() >> 32) as u32)
}

/// Keeps the next-hop cache's entry for `dst` (just used or filled by `route::forward`) in
/// the flow's slot, stamped with the neighbour generation read before routing. An overlay
/// entry sends hits to encapsulation (`vxlan::encap_cached`, with its own VTEP cache) as
/// `route::forward`'s cached case does.
#[inline(never)]
fn learn_egress(s: &Slot, ctx: &Ctx, dst: core::net::Ipv4Addr, neigh: u64) {
    let eg = ctx.local.nexthops.get(dst, ctx);
    s.egress.set(eg);
    s.neigh_generation.set(neigh);
    s.touched_s.set(ctx.now_s);
}

/// Records what the full path just decided for the frame in `data` (not yet rewritten): a
/// conntrack `hit` for tuple `t` whose packets leave as `to`. Nothing while tracing.
#[inline]
pub fn fill(data: &[u8], meta: &RxMeta, ctx: &Ctx, t: &Tuple, hit: &Hit, to: &Tuple) {
    let entry = Entry {
        flow: hit.flow_ref(),
        original: hit.dir == Dir::Original,
        rewrite: Prepared::new(t, to),
    };
    store(data, meta, ctx, t, entry, 0);
}

/// Records that the full path forwards the frame in `data` (TCP or UDP, tuple `t`)
/// untranslated and routed: conntrack missed (`epoch`: the tuple's `Conntrack::live_epoch`
/// read before that lookup), no service, no masquerade rule, not to a node address. Nothing
/// while tracing.
#[inline]
pub fn fill_untracked(data: &[u8], meta: &RxMeta, ctx: &Ctx, t: &Tuple, epoch: u64) {
    let entry = Entry {
        flow: FlowRef::NONE,
        original: true,
        rewrite: Prepared::untranslated(t.dst),
    };
    store(data, meta, ctx, t, entry, epoch);
}

#[inline]
fn store(data: &[u8], meta: &RxMeta, ctx: &Ctx, t: &Tuple, entry: Entry, epoch: u64) {
    if !ctx.may_mutate() {
        return;
    }
    let Some(k) = key_of(data, meta, ctx, t) else {
        return;
    };
    let s = &ctx.local.flows.slots[index(&k)];
    s.k0.set(k.k0);
    s.k1.set(k.k1);
    s.snapshot.set(snapshot(ctx));
    s.generation.set(ctx.tables.generation);
    s.egress.set(None);
    s.epoch.set(epoch);
    s.entry.set(entry);
}

impl FlowCache {
    /// Forgets everything (tests).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            s.snapshot.set(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::counters::Event;
    use crate::service::{Backend, BackendState, ServiceSpec, ServiceTable};
    use crate::tables::PortId;
    use core::net::Ipv4Addr;
    use proptest::prelude::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
    const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const NODE_PORT: u16 = 31234;
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x41, 0xbb];
    const ACK_: u8 = 0x10;
    const PSH: u8 = 0x08;

    /// Backends on a pod port, behind the overlay and on the VLAN subinterface.
    fn backends() -> Vec<Backend> {
        vec![
            be(POD41_IP, 8080),
            be(REMOTE_POD_IP, 8080),
            be(UPOD_IP, 8080),
        ]
    }

    fn specs(tcp_backends: Vec<Backend>, udp_backends: Vec<Backend>) -> [ServiceSpec; 2] {
        let mut web = cluster_ip_service(1, VIP, 80, 6, tcp_backends);
        // From outside through the node address: SNAT (externalTrafficPolicy: Cluster).
        web.node_port = Some(NODE_PORT);
        [web, cluster_ip_service(2, DNS_VIP, 53, 17, udp_backends)]
    }

    /// The next snapshot, as the control plane makes it: the services upserted into the
    /// previous table (which bumps a changed backend set's generation).
    fn republish(lab: &mut Lab, tcp_backends: Vec<Backend>, udp_backends: Vec<Backend>) {
        let mut next = lab.tables.services.clone();
        for spec in specs(tcp_backends, udp_backends) {
            next.upsert(spec).unwrap();
        }
        lab.tables.services = next;
        lab.tables.generation += 1;
    }

    fn lab() -> Lab {
        let mut lab = Lab::overlay();
        lab.shared.neigh.set_static(POD41_IP, POD41_MAC, POD41);
        lab.shared.neigh.set_static(UPOD_IP, UPOD_MAC, TRUNK_1155);
        lab.shared
            .neigh
            .set_static(Client::Upod.addr(), UPOD_MAC, TRUNK_1155);
        republish(&mut lab, backends(), backends());
        lab
    }

    /// The same node twice: `a` as it runs, `b` with the flow cache emptied before every
    /// frame (the full path). Every frame must come out of both alike.
    struct Twin {
        a: Lab,
        b: Lab,
    }

    impl Twin {
        fn new() -> Twin {
            Twin { a: lab(), b: lab() }
        }

        fn run(&self, port: PortId, frame: &[u8], now_s: u32) -> Out {
            self.b.local.flows.clear();
            let now = u64::from(now_s) * 1_000_000_000;
            let a = self.a.run_at(port, frame.to_vec(), now);
            let b = self.b.run_at(port, frame.to_vec(), now);
            assert_eq!(a.action, b.action, "action");
            assert_eq!(a.frame, b.frame, "frame bytes");
            let (ea, eb) = (
                self.a.shared.conntrack.entries(now_s),
                self.b.shared.conntrack.entries(now_s),
            );
            assert_eq!(ea, eb, "conntrack entries");
            a
        }

        fn both(&mut self, f: impl Fn(&mut Lab)) {
            f(&mut self.a);
            f(&mut self.b);
        }

        fn hits(&self) -> u64 {
            self.a.local.flows.hits.get()
        }

        /// [`Twin::run`], which must forward the frame with valid checksums.
        fn forwarded(&self, port: PortId, frame: &[u8], what: &dyn core::fmt::Debug) -> Out {
            let out = self.run(port, frame, 1);
            assert!(
                matches!(out.action, Action::Tx(_)),
                "{what:?}: {:?}",
                out.action
            );
            assert_valid_l4_any(&out.frame);
            out
        }
    }

    fn tcp(src: ([u8; 6], Ipv4Addr, u16), dst: ([u8; 6], Ipv4Addr, u16), flags: u8) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(src.0, dst.0)
            .ipv4(src.1.octets(), dst.1.octets(), 64)
            .tcp(src.2, dst.2, 1000, 64240);
        let b = if flags & SYN != 0 { b.syn() } else { b };
        let b = if flags & ACK_ != 0 { b.ack(5000) } else { b };
        let b = if flags & FIN != 0 { b.fin() } else { b };
        let b = if flags & RST != 0 { b.rst() } else { b };
        let b = if flags & PSH != 0 { b.psh() } else { b };
        let mut out = Vec::new();
        b.write(&mut out, b"some data").unwrap();
        out
    }

    fn udp(src: ([u8; 6], Ipv4Addr, u16), dst: ([u8; 6], Ipv4Addr, u16)) -> Vec<u8> {
        udp_frame(src.0, dst.0, src.1, dst.1, 64, src.2, dst.2, b"query")
    }

    /// A UDP datagram (`proto` 17) or a TCP segment with `flags` (otherwise).
    fn segment(
        src: ([u8; 6], Ipv4Addr, u16),
        dst: ([u8; 6], Ipv4Addr, u16),
        proto: u8,
        flags: u8,
    ) -> Vec<u8> {
        if proto == 17 {
            udp(src, dst)
        } else {
            tcp(src, dst, flags)
        }
    }

    /// `frame` as it arrives tagged with `vid` on a trunk.
    fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        out.extend_from_slice(&[0x81, 0x00]);
        out.extend_from_slice(&vid.to_be_bytes());
        out.extend_from_slice(&frame[12..]);
        out
    }

    /// A client: the port its frames arrive on, how to frame them, and its address.
    #[derive(Clone, Copy, Debug)]
    enum Client {
        Pod60,
        /// On the VLAN 1155 trunk: tagged frames.
        Upod,
        /// Outside, to the NodePort: SNATed.
        Ext,
    }

    impl Client {
        fn addr(self) -> Ipv4Addr {
            match self {
                Client::Pod60 => POD60_IP,
                Client::Upod => Ipv4Addr::new(10, 186, 155, 7),
                Client::Ext => EXT_IP,
            }
        }

        /// (ingress port, frame) of a segment from this client to the service.
        fn to_service(self, lab: &Lab, sport: u16, proto: u8, flags: u8) -> (PortId, Vec<u8>) {
            let (port, mac, dst) = match self {
                Client::Pod60 => (POD60, POD60_MAC, (VIP, 80)),
                Client::Upod => (TRUNK, UPOD_MAC, (VIP, 80)),
                Client::Ext => (BIZ, GW_MAC, (BIZ_IP, NODE_PORT)),
            };
            let dst = if proto == 17 { (DNS_VIP, 53) } else { dst };
            let src = (mac, self.addr(), sport);
            let dst = (lab.mac(port), dst.0, dst.1);
            let f = segment(src, dst, proto, flags);
            match self {
                Client::Upod => (port, tagged(&f, 1155)),
                _ => (port, f),
            }
        }
    }

    /// (ingress port, frame) of the backend's answer to the flow `lab` tracks for `orig`.
    fn reply(
        lab: &Lab,
        orig_src: Ipv4Addr,
        sport: u16,
        proto: u8,
        flags: u8,
    ) -> Option<(PortId, Vec<u8>)> {
        let e =
            lab.shared.conntrack.entries(1).into_iter().find(|e| {
                e.orig.src == orig_src && e.orig.sport == sport && e.orig.proto == proto
            })?;
        let r = e.reply;
        let (port, mac) = match r.src {
            a if a == POD41_IP => (POD41, POD41_MAC),
            a if a == UPOD_IP => (TRUNK, UPOD_MAC),
            _ => (VXLAN, REMOTE_VXLAN_MAC),
        };
        let src = (mac, r.src, r.sport);
        let dst = (lab.mac(port), r.dst, r.dport);
        let f = segment(src, dst, proto, flags);
        Some(match port {
            TRUNK => (TRUNK, tagged(&f, 1155)),
            VXLAN => (CTL, vxlan_frame(lab, REMOTE_CTL_IP, 2, &f)),
            p => (p, f),
        })
    }

    fn proto_of(udp: bool) -> u8 {
        if udp { 17 } else { 6 }
    }

    const CLIENTS: [Client; 3] = [Client::Pod60, Client::Upod, Client::Ext];

    #[test]
    fn hits_are_byte_identical_to_the_full_path() {
        let t = Twin::new();
        // Three flows per client (round robin: one per backend), TCP and UDP, both ways.
        for c in CLIENTS {
            for sport in 40000..40003 {
                let (p, f) = c.to_service(&t.a, sport, 6, SYN);
                assert!(matches!(t.run(p, &f, 1).action, Action::Tx(_)));
                for round in 0..3 {
                    let flags = if round == 0 { SYN | ACK_ } else { ACK_ | PSH };
                    let (p, f) = reply(&t.a, c.addr(), sport, 6, flags).unwrap();
                    t.forwarded(p, &f, &(c, "reply"));
                    let (p, f) = c.to_service(&t.a, sport, 6, ACK_ | PSH);
                    t.forwarded(p, &f, &c);
                }
                if matches!(c, Client::Ext) {
                    continue;
                }
                for _ in 0..3 {
                    let (p, f) = c.to_service(&t.a, sport, 17, 0);
                    assert!(matches!(t.run(p, &f, 1).action, Action::Tx(_)));
                    let (p, f) = reply(&t.a, c.addr(), sport, 17, 0).unwrap();
                    assert!(matches!(t.run(p, &f, 1).action, Action::Tx(_)));
                }
            }
        }
        assert!(t.hits() > 40, "the cache was used: {} hits", t.hits());
    }

    /// (ingress port, frame) of untranslated traffic: pod60 to pod41 (`to` 0), to a pod on
    /// the remote node through the overlay (1), to the underlay pod on VLAN 1155 (2), and
    /// the remote pod's answer arriving in VXLAN (3).
    fn plain(lab: &Lab, to: usize, sport: u16, proto: u8, flags: u8) -> (PortId, Vec<u8>) {
        let (src, dst, port) = match to {
            0 => ((POD60_MAC, POD60_IP), POD41_IP, POD60),
            1 => ((POD60_MAC, POD60_IP), REMOTE_POD_IP, POD60),
            2 => ((POD60_MAC, POD60_IP), UPOD_IP, POD60),
            _ => ((REMOTE_VXLAN_MAC, REMOTE_POD_IP), POD60_IP, VXLAN),
        };
        let src = (src.0, src.1, sport);
        let dst = (lab.mac(port), dst, 7000);
        let f = segment(src, dst, proto, flags);
        match port {
            VXLAN => (CTL, vxlan_frame(lab, REMOTE_CTL_IP, 2, &f)),
            p => (p, f),
        }
    }

    #[test]
    fn untracked_flows_are_cached_byte_identical_and_add_no_entry() {
        let t = Twin::new();
        for to in 0..4 {
            for proto in [6, 17] {
                let hits = t.hits();
                for _ in 0..4 {
                    let (p, f) = plain(&t.a, to, 41000, proto, ACK_);
                    t.forwarded(p, &f, &to);
                }
                assert_eq!(t.hits(), hits + 3, "to {to} proto {proto}");
            }
        }
        assert_eq!(t.a.shared.conntrack.count(), 0);
    }

    /// A flow cached as untracked whose tuple then becomes the reply of a new translated flow
    /// (the backend's packets that preceded the client's first one) is translated from then
    /// on, whichever worker inserted the flow.
    #[test]
    fn an_untracked_tuple_that_goes_live_is_translated() {
        for other_worker in [false, true] {
            let t = Twin::new();
            // The reply the client's flow will have, learnt on a scratch node in the same state.
            let scratch = lab();
            let (p, syn) = Client::Pod60.to_service(&scratch, 40000, 6, SYN);
            scratch.run(p, syn.clone());
            let (rp, early) = reply(&scratch, POD60_IP, 40000, 6, ACK_).unwrap();
            let hits = t.hits();
            for _ in 0..3 {
                let out = t.run(rp, &early, 1);
                assert_eq!(&out.frame[26..30], &POD41_IP.octets(), "untranslated");
            }
            assert_eq!(t.hits(), hits + 2, "cached as untracked");
            if other_worker {
                // Another worker of node a starts the flow; node b's single worker does.
                let worker = crate::service::WorkerLocal::default();
                let ctx = Ctx {
                    local: &worker,
                    ..t.a.ctx()
                };
                let mut buf = vec![0u8; 4096];
                buf[HEADROOM..HEADROOM + syn.len()].copy_from_slice(&syn);
                let mut frame = Frame::new(&mut buf, HEADROOM, syn.len());
                let meta = RxMeta {
                    port: p,
                    vlan: None,
                };
                super::super::process(&mut frame, &meta, &ctx);
                t.b.run(p, syn.clone());
            } else {
                t.run(p, &syn, 1);
            }
            let hits = t.hits();
            let out = t.run(rp, &early, 1);
            assert_eq!(t.hits(), hits, "the full path");
            assert_eq!(&out.frame[26..30], &VIP.octets(), "de-DNATed");
            assert_eq!(&out.frame[34..36], &80u16.to_be_bytes());
        }
    }

    /// [`assert_valid_l4`] for a frame that may be tagged or VXLAN-encapsulated.
    fn assert_valid_l4_any(frame: &[u8]) {
        if frame[12..14] == [0x81, 0x00] {
            let mut f = frame[..12].to_vec();
            f.extend_from_slice(&frame[16..]);
            return assert_valid_l4(&f);
        }
        if frame.len() > 50 && frame[23] == 17 && frame[36..38] == [0x12, 0xb5] {
            return assert_valid_l4(&frame[50..]);
        }
        assert_valid_l4(frame);
    }

    /// Opens one TCP flow of `c` and exchanges data until the cache serves it.
    fn established(t: &Twin, c: Client, sport: u16) {
        let (p, f) = c.to_service(&t.a, sport, 6, SYN);
        t.run(p, &f, 1);
        let (p, f) = reply(&t.a, c.addr(), sport, 6, SYN | ACK_).unwrap();
        t.run(p, &f, 1);
        let before = t.hits();
        for _ in 0..3 {
            let (p, f) = c.to_service(&t.a, sport, 6, ACK_);
            t.run(p, &f, 1);
        }
        assert!(t.hits() > before, "cached");
    }

    #[test]
    fn fin_and_rst_take_the_full_path_and_step_the_state() {
        let t = Twin::new();
        established(&t, Client::Pod60, 40000);
        let hits = t.hits();
        let (p, f) = Client::Pod60.to_service(&t.a, 40000, 6, FIN | ACK_);
        t.run(p, &f, 1);
        let (p, f) = reply(&t.a, POD60_IP, 40000, 6, RST).unwrap();
        t.run(p, &f, 1);
        assert_eq!(t.hits(), hits, "no hit for FIN or RST");
        let e = &t.a.shared.conntrack.entries(1)[0];
        assert_eq!(e.state, crate::conntrack::TcpState::Close);
    }

    #[test]
    fn a_flushed_or_expired_flow_is_scheduled_again() {
        let t = Twin::new();
        established(&t, Client::Pod60, 40000);
        let new_flows = t.a.event(Event::ServiceNewFlow);
        t.a.shared.conntrack.flush();
        t.b.shared.conntrack.flush();
        let hits = t.hits();
        // Mid-stream pickup: a new entry, to the next backend in turn.
        let (p, f) = Client::Pod60.to_service(&t.a, 40000, 6, ACK_);
        t.run(p, &f, 1);
        assert_eq!(t.hits(), hits);
        assert_eq!(t.a.event(Event::ServiceNewFlow), new_flows + 1);
        // UDP expires after 30 s unreplied: the packet after is a new flow, not a hit.
        let (p, f) = Client::Pod60.to_service(&t.a, 5353, 17, 0);
        t.run(p, &f, 1);
        t.run(p, &f, 2);
        t.run(p, &f, 3);
        let hits = t.hits();
        let flows = t.a.event(Event::ServiceNewFlow);
        t.run(p, &f, 100);
        assert_eq!(t.hits(), hits);
        assert_eq!(t.a.event(Event::ServiceNewFlow), flows + 1);
    }

    #[test]
    fn removed_entry_and_reused_slot_miss() {
        let t = Twin::new();
        established(&t, Client::Pod60, 40000);
        for lab in [&t.a, &t.b] {
            let slot = lab.shared.conntrack.entries(1)[0].slot;
            assert!(lab.shared.conntrack.remove(slot));
        }
        // Another flow takes the freed slot; the old flow's next packet must not use it.
        let (p, f) = Client::Pod60.to_service(&t.a, 40001, 6, SYN);
        t.run(p, &f, 1);
        let hits = t.hits();
        let (p, f) = Client::Pod60.to_service(&t.a, 40000, 6, ACK_);
        t.run(p, &f, 1);
        assert_eq!(t.hits(), hits);
        assert_eq!(t.a.shared.conntrack.count(), 2);
    }

    #[test]
    fn service_changes_in_a_new_snapshot_are_followed() {
        let mut t = Twin::new();
        established(&t, Client::Pod60, 40000);
        let (p, q) = Client::Pod60.to_service(&t.a, 5353, 17, 0);
        for _ in 0..3 {
            t.run(p, &q, 1);
        }
        let udp_backend = |lab: &Lab| {
            lab.shared
                .conntrack
                .entries(1)
                .into_iter()
                .find(|e| e.orig.proto == 17)
                .unwrap()
                .reply
                .src
        };
        let old = udp_backend(&t.a);
        // The UDP flow's backend is removed, the TCP one terminating: UDP moves, TCP stays.
        t.both(|lab| {
            let keep: Vec<Backend> = backends().into_iter().filter(|b| b.addr != old).collect();
            let mut tcp = backends();
            tcp[0].state = BackendState::Terminating;
            republish(lab, tcp, keep);
        });
        let hits = t.hits();
        let out = t.run(p, &q, 1);
        assert_eq!(t.hits(), hits, "stale snapshot: full path");
        assert_ne!(udp_backend(&t.a), old);
        assert_eq!(t.a.event(Event::ServiceRebalanced), 1);
        assert!(matches!(out.action, Action::Tx(_)));
        let (p, f) = Client::Pod60.to_service(&t.a, 40000, 6, ACK_);
        let out = t.run(p, &f, 1);
        assert_eq!(
            out.action,
            Action::Tx(POD41),
            "the TCP flow keeps its backend"
        );
        // The service is deleted: established flows keep their translation (B14).
        t.both(|lab| {
            lab.tables.services = ServiceTable::new();
            lab.tables.generation += 1;
        });
        for _ in 0..3 {
            assert_eq!(t.run(p, &f, 1).action, Action::Tx(POD41));
        }
    }

    #[test]
    fn neighbour_and_route_changes_are_followed() {
        let mut t = Twin::new();
        established(&t, Client::Pod60, 40000);
        let (p, f) = Client::Pod60.to_service(&t.a, 40000, 6, ACK_);
        // The backend's MAC changes.
        t.both(|lab| {
            lab.shared.neigh.set_static(POD41_IP, MAC_B, POD41);
        });
        let out = t.run(p, &f, 1);
        assert_eq!(&out.frame[0..6], &MAC_B);
        t.run(p, &f, 1);
        let hits = t.hits();
        let out = t.run(p, &f, 1);
        assert_eq!(t.hits(), hits + 1);
        assert_eq!(&out.frame[0..6], &MAC_B);
        // The route to the backend moves to another port, in a new snapshot.
        t.both(|lab| {
            lab.add_pod(POD41_IP, MAC_B, POD60);
            lab.tables.generation += 1;
        });
        assert_eq!(t.run(p, &f, 1).action, Action::Tx(POD60));
        assert_eq!(t.run(p, &f, 1).action, Action::Tx(POD60));
        // TTL expiry and a frame too big still get their ICMP errors.
        let mut low = f.clone();
        low[22] = 1;
        let c =
            crate::wire::checksum::update16(u16::from_be_bytes([low[24], low[25]]), 0x4006, 0x0106);
        low[24..26].copy_from_slice(&c.to_be_bytes());
        t.run(p, &low, 1);
        assert_eq!(t.a.drop(crate::counters::DropReason::TtlExceeded), 1);
    }

    #[test]
    fn traced_frames_never_use_or_fill_the_cache() {
        let t = Twin::new();
        established(&t, Client::Pod60, 40000);
        let (_, f) = Client::Pod60.to_service(&t.a, 40000, 6, ACK_);
        let trace = crate::pipeline::Trace::default();
        let ctx = Ctx {
            trace: Some(&trace),
            ..t.a.ctx()
        };
        let mut buf = vec![0u8; 4096];
        buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(&f);
        let mut frame = Frame::new(&mut buf, HEADROOM, f.len());
        let hits = t.hits();
        let meta = RxMeta {
            port: POD60,
            vlan: None,
        };
        assert_eq!(
            super::super::process(&mut frame, &meta, &ctx),
            Action::Tx(POD41)
        );
        assert_eq!(t.hits(), hits);
        assert!(trace.steps().iter().any(|(s, _)| *s == "conntrack"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send {
            client: usize,
            sport: u16,
            udp: bool,
            flags: u8,
        },
        Reply {
            client: usize,
            sport: u16,
            udp: bool,
            flags: u8,
        },
        Flush,
        NeighMac(bool),
        DropBackend(usize),
        Later(u32),
        /// Untranslated traffic ([`plain`]).
        Plain {
            to: usize,
            sport: u16,
            udp: bool,
            flags: u8,
        },
        /// A backend's packet to a client port before (or after) the client's flow exists:
        /// the reply tuple of a flow that a scratch node would create.
        Early {
            client: usize,
            sport: u16,
            udp: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let flags = prop::sample::select(vec![
            ACK_,
            ACK_ | PSH,
            ACK_ | PSH,
            SYN,
            SYN | ACK_,
            FIN | ACK_,
            RST,
            0,
        ]);
        prop_oneof![
            8 => (0..3usize, 40000..40004u16, any::<bool>(), flags.clone())
                .prop_map(|(client, sport, udp, flags)| Op::Send { client, sport, udp, flags }),
            6 => (0..3usize, 40000..40004u16, any::<bool>(), flags)
                .prop_map(|(client, sport, udp, flags)| Op::Reply { client, sport, udp, flags }),
            1 => Just(Op::Flush),
            1 => any::<bool>().prop_map(Op::NeighMac),
            1 => (0..3usize).prop_map(Op::DropBackend),
            1 => (0..40u32).prop_map(Op::Later),
            4 => (0..4usize, 40000..40004u16, any::<bool>(), prop::sample::select(vec![ACK_, SYN, FIN | ACK_]))
                .prop_map(|(to, sport, udp, flags)| Op::Plain { to, sport, udp, flags }),
            3 => (0..2usize, 40000..40004u16, any::<bool>())
                .prop_map(|(client, sport, udp)| Op::Early { client, sport, udp }),
        ]
    }

    proptest! {
        /// The prepared rewrite (with and without the TTL step) writes what `nat::rewrite`
        /// and `Ipv4Packet::decrement_ttl` write, for any addresses, ports and checksums.
        #[test]
        fn prepared_equals_rewrite_then_ttl(
            from in (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
            to in (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
            same_addrs in any::<bool>(),
            tcp in any::<bool>(),
            ttl in 2u8..=255,
            ip_csum in any::<u16>(),
            l4_csum in any::<u16>(),
        ) {
            let proto = if tcp { 6 } else { 17 };
            let t = |(s, d, sp, dp): (u32, u32, u16, u16)| Tuple {
                src: Ipv4Addr::from(s),
                dst: Ipv4Addr::from(d),
                sport: sp,
                dport: dp,
                proto,
            };
            let from = t(from);
            let mut to = t(to);
            if same_addrs {
                (to.src, to.dst) = (from.src, from.dst);
            }
            let mut pkt = vec![0u8; 60];
            pkt[0] = 0x45;
            pkt[3] = 60;
            pkt[8] = ttl;
            pkt[9] = proto;
            pkt[10..12].copy_from_slice(&ip_csum.to_be_bytes());
            pkt[12..16].copy_from_slice(&from.src.octets());
            pkt[16..20].copy_from_slice(&from.dst.octets());
            pkt[20..22].copy_from_slice(&from.sport.to_be_bytes());
            pkt[22..24].copy_from_slice(&from.dport.to_be_bytes());
            let at = if tcp { 36 } else { 26 };
            pkt[at..at + 2].copy_from_slice(&l4_csum.to_be_bytes());
            let p = Prepared::new(&from, &to);
            for with_ttl in [false, true] {
                let mut want = pkt.clone();
                super::super::nat::rewrite(&mut want, &to);
                if with_ttl {
                    crate::wire::Ipv4Packet::new_unchecked(&mut want[..]).decrement_ttl();
                }
                let mut got = pkt.clone();
                p.apply(&mut got, tcp, with_ttl);
                prop_assert_eq!(&got, &want);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random traffic and table changes: the node with its flow cache and the node
        /// without it send the same bytes and keep the same conntrack state.
        #[test]
        fn cached_and_uncached_agree(ops in prop::collection::vec(op(), 1..120)) {
            let mut t = Twin::new();
            let mut now = 1u32;
            for op in ops {
                match op {
                    Op::Send { client, sport, udp, flags } => {
                        let c = CLIENTS[client];
                        if udp && matches!(c, Client::Ext) {
                            continue;
                        }
                        let (p, f) = c.to_service(&t.a, sport, proto_of(udp), flags);
                        t.run(p, &f, now);
                    }
                    Op::Reply { client, sport, udp, flags } => {
                        let proto = proto_of(udp);
                        if let Some((p, f)) = reply(&t.a, CLIENTS[client].addr(), sport, proto, flags) {
                            t.run(p, &f, now);
                        }
                    }
                    Op::Flush => t.both(|lab| {
                        lab.shared.conntrack.flush();
                    }),
                    Op::NeighMac(b) => t.both(|lab| {
                        lab.shared.neigh.set_static(POD41_IP, if b { MAC_B } else { POD41_MAC }, POD41);
                    }),
                    Op::DropBackend(i) => t.both(|lab| {
                        let mut bs = backends();
                        bs.remove(i);
                        republish(lab, bs.clone(), bs);
                    }),
                    Op::Later(s) => now += s,
                    Op::Plain { to, sport, udp, flags } => {
                        let (p, f) = plain(&t.a, to, sport, proto_of(udp), flags);
                        t.run(p, &f, now);
                    }
                    Op::Early { client, sport, udp } => {
                        let proto = proto_of(udp);
                        let scratch = lab();
                        let c = CLIENTS[client];
                        let (p, f) = c.to_service(&scratch, sport, proto, if udp { 0 } else { SYN });
                        scratch.run(p, f);
                        if let Some((p, f)) = reply(&scratch, c.addr(), sport, proto, ACK_) {
                            t.run(p, &f, now);
                        }
                    }
                }
            }
        }
    }
}
