//! VXLAN (SPEC B9, RFC 7348), interoperable with Linux's vxlan device.
//!
//! Encapsulation ([`encap`]): the routed inner frame gets the overlay's inner MACs (the
//! remote vxlan device's MAC, ours as source), then the outer header prebuilt for its VTEP at
//! configuration time (`tables::overlay::OuterHeader`) is copied into the headroom in front
//! of it: no payload byte moves. Per packet only the IPv4 total length and checksum (one
//! incremental update from the prebuilt base), the UDP length and the UDP source port (the
//! inner flow hash, so that ECMP and bond hashing in the underlay keep a flow on one path
//! and spread flows, as Linux's `udp_flow_src_port`) are written. The outer frame is then
//! routed like any other: FIB lookup of the remote VTEP's address, its next hop's MAC from
//! the neighbour cache (or an ARP request in its place), VLAN/bond on the way out.
//!
//! Decapsulation ([`decap`]): UDP to a node address on the VXLAN port, with the I flag, a
//! VNI some overlay has, from one of that overlay's VTEPs (anything else is dropped and
//! counted), loses its outer headers and goes through classification again as a frame
//! received on the overlay's interface: routing delivers it to the local pod.
//!
//! Both have a per-worker cache ([`Cache`], kept with the next-hop cache and under its
//! validity rules): a route into the overlay whose VTEP's underlay egress is known writes
//! one 64-byte rewrite (outer Ethernet/IPv4/UDP/VXLAN and the inner Ethernet header) and
//! patches four fields ([`encap_cached`]); a tunnel accepted before skips the VNI, VTEP and
//! node-address lookups after the per-frame header checks. Either gives the same bytes and
//! decisions as the full path, which fills them.
//!
//! Inner frames are checked against the overlay MTU by routing (`route::forward` with the
//! VXLAN interface's MTU, 1450): DF and too big gets an ICMP fragmentation-needed to the
//! inner source with that MTU.

use super::nexthop_cache::{Egress, Stamp};
use super::{Action, Ctx, RxMeta, classify, flow, neigh};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::overlay::{OUTER_LEN, PortKind, Vtep};
use crate::tables::{Port, PortId, Tables};
use crate::wire::{
    EtherType, EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket, VxlanHeader,
    VxlanRepr, checksum, ethernet, ipv4, udp, vxlan,
};
use core::cell::Cell;
use core::net::Ipv4Addr;

/// Lowest UDP source port used (Linux's default `srcport` range starts at the ephemeral
/// range; any port but the VXLAN one works for receivers).
const SPORT_BASE: u16 = 32768;

/// Encapsulates the routed frame towards the VTEP of `inner_via` on overlay `index`.
pub fn encap(
    frame: &mut Frame,
    _meta: &RxMeta,
    ctx: &Ctx,
    index: u16,
    dev: &Port,
    inner_via: Ipv4Addr,
) -> Action {
    let Some(overlay) = ctx.tables.vxlan.overlay(index) else {
        return Action::Drop(DropReason::PortDown);
    };
    let Some(vtep) = overlay.vtep_for(inner_via) else {
        crate::trace_step!(ctx, "vxlan", "no VTEP for {inner_via} on {}", dev.name);
        return Action::Drop(DropReason::VxlanNoVtep);
    };
    // Before the lookups, as for the next-hop cache: a change racing with them leaves the
    // VTEP entry filled below already stale.
    let stamp = Stamp::now(ctx);
    let inner_len = frame.len();
    let hash = inner_hash(frame.data());
    // The route to the VTEP from this worker's next-hop cache when it has one next hop and
    // a resolved neighbour; otherwise looked up (it may change: bond members, ECMP, without
    // the overlay's configuration changing; the cache is stamped with the snapshot).
    let cached = ctx.local.nexthops.get(vtep.remote, ctx);
    let mut uncached = None;
    let mtu = match cached {
        Some(e) => e.mtu,
        None => {
            let stamp = Stamp::now(ctx);
            let Some(route) = ctx.tables.fib.lookup(vtep.remote) else {
                return Action::Drop(DropReason::NoRoute);
            };
            let Some(onh) = route.select(hash).copied() else {
                return Action::Drop(DropReason::NoRoute);
            };
            let Some(uplink) = ctx.tables.ports.get(onh.port) else {
                return Action::Drop(DropReason::PortDown);
            };
            if matches!(uplink.kind, PortKind::Vxlan { .. }) {
                // VXLAN over VXLAN: a routing loop in the configuration.
                return Action::Drop(DropReason::NoRoute);
            }
            if route.nexthops.len() == 1 {
                ctx.local.nexthops.fill_resolved(
                    ctx,
                    stamp,
                    vtep.remote,
                    uplink,
                    onh.port,
                    onh.neighbour(vtep.remote),
                );
            }
            uncached = Some((onh, uplink));
            uplink.mtu
        }
    };
    let outer_ip_len = inner_len + OUTER_LEN;
    if outer_ip_len > usize::from(mtu) {
        return Action::Drop(DropReason::TooBig);
    }
    {
        let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
        eth.set_dst_addr(EthernetAddress(vtep.inner_mac));
        eth.set_src_addr(EthernetAddress(dev.mac));
    }
    if !frame.push_front(ethernet::HEADER_LEN + OUTER_LEN) {
        return Action::Drop(DropReason::NoHeadroom);
    }
    let d = frame.data_mut();
    d[12..14].copy_from_slice(&u16::from(EtherType::Ipv4).to_be_bytes());
    let l3 = ethernet::HEADER_LEN;
    d[l3..l3 + OUTER_LEN].copy_from_slice(&vtep.outer.bytes);
    {
        let total = outer_ip_len as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut d[l3..l3 + ipv4::HEADER_LEN]);
        ip.set_total_len(total);
        ip.set_checksum(checksum::update16(vtep.outer.csum_base, 0, total));
    }
    {
        let mut u = UdpPacket::new_unchecked(
            &mut d[l3 + ipv4::HEADER_LEN..l3 + ipv4::HEADER_LEN + udp::HEADER_LEN],
        );
        u.set_len((inner_len + udp::HEADER_LEN + vxlan::HEADER_LEN) as u16);
        u.set_src_port(SPORT_BASE | (hash as u16 & 0x7fff));
    }
    ctx.counters.event(Event::VxlanEncap);
    crate::trace_step!(ctx, "vxlan", "VNI {} to VTEP {}", overlay.vni, vtep.remote);
    match (cached, uncached) {
        (Some(e), _) => {
            ctx.local
                .nexthops
                .vxlan
                .fill_vtep(ctx, stamp, index, vtep, dev.mac, &e);
            let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
            eth.set_dst_addr(EthernetAddress(e.dst_mac));
            eth.set_src_addr(EthernetAddress(e.src_mac));
            Action::Tx(e.port)
        }
        (None, Some((onh, uplink))) => {
            neigh::resolve(frame, ctx, uplink, onh.port, onh.neighbour(vtep.remote))
        }
        (None, None) => Action::Drop(DropReason::NoRoute),
    }
}

/// Encapsulation of a frame whose route into overlay `index` came from the next-hop cache
/// (`e`: the overlay's interface and the inner next hop): from this worker's VTEP entry
/// ([`Cache`]) when it has one, else through [`encap`], which fills it. The output is the
/// same byte for byte.
#[inline]
pub fn encap_cached(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx, e: &Egress, index: u16) -> Action {
    let inner_len = frame.len();
    if let Some(s) = ctx.local.nexthops.vxlan.vtep(index, e.neighbour, ctx)
        // Too big for the uplink: the full path drops and counts it.
        && inner_len + OUTER_LEN <= usize::from(s.mtu.get())
        // The rewrite ends with the inner Ethernet header, IPv4 (routed frames are).
        && frame.data().get(12..14) == Some(&[0x08, 0x00])
    {
        let hash = inner_hash(frame.data());
        if !frame.push_front(FULL_OUTER) {
            return Action::Drop(DropReason::NoHeadroom);
        }
        let Some(h) = frame.data_mut().first_chunk_mut::<REWRITE>() else {
            return Action::Drop(DropReason::NoHeadroom);
        };
        for (i, w) in s.rewrite.iter().enumerate() {
            h[i * 8..i * 8 + 8].copy_from_slice(&w.get().to_ne_bytes());
        }
        let total = (inner_len + OUTER_LEN) as u16;
        let l3 = ethernet::HEADER_LEN;
        let l4 = l3 + ipv4::HEADER_LEN;
        h[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        let csum = checksum::update16(s.csum_base.get(), 0, total);
        h[l3 + 10..l3 + 12].copy_from_slice(&csum.to_be_bytes());
        let sport = SPORT_BASE | (hash as u16 & 0x7fff);
        h[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        let udp_len = (inner_len + udp::HEADER_LEN + vxlan::HEADER_LEN) as u16;
        h[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        ctx.counters.event(Event::VxlanEncap);
        return Action::Tx(s.port.get());
    }
    encap_full(frame, meta, ctx, e, index)
}

/// [`encap_cached`] without a VTEP entry: out of line, so the hit does not carry its frame.
#[inline(never)]
fn encap_full(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx, e: &Egress, index: u16) -> Action {
    let Some(dev) = ctx.tables.ports.get(e.port) else {
        return Action::Drop(DropReason::PortDown);
    };
    encap(frame, meta, ctx, index, dev, e.neighbour)
}

/// The inner flow's hash for the UDP source port: [`flow::hash_v4`] of the inner IPv4
/// packet (0 if it has none), from one fixed-size view when the header has no options.
#[inline(always)]
fn inner_hash(d: &[u8]) -> u32 {
    const FIXED: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + 4;
    if let Some(h) = d.first_chunk::<FIXED>()
        && h[14] == 0x45
    {
        let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
        // What `Ipv4Packet::new_checked` would refuse, and a payload too short for ports.
        if total >= ipv4::HEADER_LEN + 4 && total <= d.len() - ethernet::HEADER_LEN {
            let src = u32::from_be_bytes([h[26], h[27], h[28], h[29]]);
            let dst = u32::from_be_bytes([h[30], h[31], h[32], h[33]]);
            let proto = h[23];
            let fragment = u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0;
            let ports = if matches!(proto, 6 | 17) && !fragment {
                u32::from_be_bytes([h[34], h[35], h[36], h[37]])
            } else {
                0
            };
            return flow::mix(src, dst, ports, u32::from(proto));
        }
    }
    inner_hash_slow(d)
}

#[cold]
#[inline(never)]
fn inner_hash_slow(d: &[u8]) -> u32 {
    match d.get(ethernet::HEADER_LEN..).map(Ipv4Packet::new_checked) {
        Some(Ok(ip)) => flow::hash_v4(&ip),
        _ => 0,
    }
}

/// A tunnel frame this worker decapsulated before under this snapshot, from [`Cache`]: one
/// fixed-size view of the outer headers (classify has checked the IPv4 header, its checksum
/// and anti-spoofing, and trimmed the frame to the IPv4 length), the per-frame checks (no IP
/// options, not a fragment, the VXLAN port, the I flag, UDP length) and one probe with
/// (source, destination, VNI, ingress port): an entry stands for what the full path decided
/// from those alone under this snapshot (node address, not from an overlay, the overlay and
/// its VTEP). `None` for anything else, which takes the full path.
#[inline(always)]
fn decap_cached(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    let len = frame.len();
    let h = frame
        .data()
        .first_chunk::<{ FULL_OUTER + ethernet::HEADER_LEN }>()?;
    let udp_len = usize::from(u16::from_be_bytes([h[38], h[39]]));
    if h[14] != 0x45
        || u16::from_be_bytes([h[36], h[37]]) != ctx.tables.vxlan.udp_port
        || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0
        || h[42] & vxlan::FLAG_I == 0
        || udp_len < udp::HEADER_LEN + vxlan::HEADER_LEN + ethernet::HEADER_LEN
        || udp_len + ethernet::HEADER_LEN + ipv4::HEADER_LEN > len
    {
        return None;
    }
    let addrs = u64::from_be_bytes([h[26], h[27], h[28], h[29], h[30], h[31], h[32], h[33]]);
    let vni = u32::from_be_bytes([h[46], h[47], h[48], h[49]]) >> 8;
    let port = ctx.local.nexthops.vxlan.decap(addrs, vni, meta.port, ctx)?;
    if !frame.pull_front(FULL_OUTER) {
        return None;
    }
    ctx.counters.event(Event::VxlanDecap);
    Some(classify::run(frame, &RxMeta { port, vlan: None }, ctx))
}

/// If the frame is VXLAN to a node address, decapsulates it and runs the inner frame
/// through the pipeline; `None` if it is not VXLAN for us. Called by classify on IPv4 frames
/// whose header (checksum, length) it has already checked.
///
/// The two tests that turn away almost every frame (no overlay configured, not UDP) are
/// inlined into classify; the rest of decapsulation stays out of line so that the frames
/// that are not VXLAN do not pay for its call frame.
#[inline(always)]
pub fn decap(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    if !ctx.tables.vxlan.is_enabled()
        || frame.data().get(ethernet::HEADER_LEN + 9) != Some(&u8::from(IpProtocol::Udp))
    {
        return None;
    }
    decap_udp(frame, meta, ctx)
}

#[inline(never)]
fn decap_udp(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    if let Some(action) = decap_cached(frame, meta, ctx) {
        return Some(action);
    }
    decap_full(frame, meta, ctx)
}

/// [`decap_udp`] without a cache entry: out of line, so the hit does not carry its frame.
#[inline(never)]
fn decap_full(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Option<Action> {
    let vx = &ctx.tables.vxlan;
    if !vx.is_enabled() {
        return None;
    }
    let stamp = Stamp::now(ctx);
    let (outer_len, vni, src, addrs) = {
        let ip = Ipv4Packet::new_unchecked(&frame.data()[ethernet::HEADER_LEN..]);
        if ip.protocol() != u8::from(IpProtocol::Udp)
            || ip.is_fragment()
            || !ctx.tables.is_local(ip.dst_addr())
        {
            return None;
        }
        let Ok(u) = UdpPacket::new_checked(ip.payload()) else {
            return None;
        };
        if u.dst_port() != vx.udp_port {
            return None;
        }
        if let Some(p) = ctx.tables.ports.get(meta.port)
            && matches!(p.kind, PortKind::Vxlan { .. })
        {
            // VXLAN inside VXLAN is not unwrapped twice.
            return None;
        }
        let Ok(h) = VxlanHeader::new_checked(u.payload()) else {
            return Some(Action::Drop(DropReason::Malformed));
        };
        let Ok(r) = VxlanRepr::parse(&h) else {
            return Some(Action::Drop(DropReason::Malformed));
        };
        let outer = ethernet::HEADER_LEN
            + usize::from(ip.header_len())
            + udp::HEADER_LEN
            + vxlan::HEADER_LEN;
        let addrs = u64::from(u32::from(ip.src_addr())) << 32 | u64::from(u32::from(ip.dst_addr()));
        (outer, r.vni, ip.src_addr(), addrs)
    };
    let Some(overlay) = vx.by_vni(vni) else {
        crate::trace_step!(ctx, "vxlan", "VNI {vni} from {src}: no such overlay");
        return Some(Action::Drop(DropReason::VxlanUnknownVni));
    };
    if !overlay.knows_remote(src) {
        crate::trace_step!(ctx, "vxlan", "VNI {vni} from {src}: not a VTEP of it");
        return Some(Action::Drop(DropReason::VxlanUnknownVtep));
    }
    if frame.len() < outer_len + ethernet::HEADER_LEN || !frame.pull_front(outer_len) {
        return Some(Action::Drop(DropReason::Malformed));
    }
    ctx.local
        .nexthops
        .vxlan
        .fill_decap(ctx, stamp, addrs, vni, meta.port, overlay.port);
    ctx.counters.event(Event::VxlanDecap);
    crate::trace_step!(ctx, "vxlan", "VNI {vni} from {src}: decapsulated");
    let inner = RxMeta {
        port: overlay.port,
        vlan: None,
    };
    Some(classify::run(frame, &inner, ctx))
}

/// Outer Ethernet + IPv4 (no options) + UDP + VXLAN: what a cached encapsulation writes and
/// a cached decapsulation strips.
const FULL_OUTER: usize = ethernet::HEADER_LEN + OUTER_LEN;

/// What a cached encapsulation writes: the outer headers and the inner Ethernet header.
const REWRITE: usize = FULL_OUTER + ethernet::HEADER_LEN;

/// Per-worker VXLAN caches (in [`super::nexthop_cache::NextHopCache`]), with the next-hop
/// cache's validity rules: an entry holds only for the tables snapshot (address and
/// `generation`) it was filled under; an encapsulation entry also only for the neighbour
/// cache's generation (it holds the VTEP's next hop's MAC). Never hit or filled when tracing.
///
/// - Encapsulation, by (overlay, inner next hop): the whole 50-byte outer header with the
///   underlay next hop's MACs in it and the inner Ethernet header (the remote vxlan
///   device's MAC, ours), the uplink and its MTU. A hit writes these 64 bytes as eight words
///   and patches four fields: no VTEP scan, no port, route or neighbour lookup.
/// - Decapsulation, by (outer source, outer destination, VNI, ingress port): the overlay's
///   interface. An entry means the full path accepted exactly this combination under this
///   snapshot (node address, not arriving on an overlay, VNI of an overlay, a VTEP of it);
///   what varies per frame (IP options, fragment bits, UDP and VXLAN lengths, the I flag,
///   the UDP port) is still checked per frame.
pub struct Cache {
    vteps: Box<[VtepSlot]>,
    decaps: Box<[DecapSlot]>,
}

impl core::fmt::Debug for Cache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("vxlan::Cache").finish_non_exhaustive()
    }
}

/// A node talks to a few hundred remote nodes at most; collisions only cost a refill.
const VTEP_SLOTS: usize = 256;
/// Remote VTEPs × overlays seen on ingress.
const DECAP_SLOTS: usize = 256;

struct VtepSlot {
    /// `(overlay + 1) << 32 | via`; 0: empty.
    key: Cell<u64>,
    snapshot: Cell<usize>,
    generation: Cell<u64>,
    neigh_generation: Cell<u64>,
    /// The frame's first [`REWRITE`] bytes as words: outer Ethernet (next hop's MAC, ours,
    /// IPv4), the VTEP's prebuilt IPv4/UDP/VXLAN, then the inner Ethernet header (the remote
    /// vxlan device's MAC, our vxlan device's, IPv4).
    rewrite: [Cell<u64>; REWRITE / 8],
    csum_base: Cell<u16>,
    port: Cell<PortId>,
    mtu: Cell<u16>,
    /// The VTEP's underlay next hop, marked in use once per second when learned.
    neighbour: Cell<Ipv4Addr>,
    learned: Cell<bool>,
    touched_s: Cell<u32>,
}

impl Default for VtepSlot {
    fn default() -> Self {
        VtepSlot {
            key: Cell::new(0),
            snapshot: Cell::new(0),
            generation: Cell::new(0),
            neigh_generation: Cell::new(0),
            rewrite: Default::default(),
            csum_base: Cell::new(0),
            port: Cell::new(PortId(0)),
            mtu: Cell::new(0),
            neighbour: Cell::new(Ipv4Addr::UNSPECIFIED),
            learned: Cell::new(false),
            touched_s: Cell::new(0),
        }
    }
}

#[derive(Default)]
struct DecapSlot {
    /// `src << 32 | dst` of the outer IPv4 header.
    addrs: Cell<u64>,
    /// `1 << 63 | vni << 16 | ingress port`; 0: empty.
    vni_port: Cell<u64>,
    snapshot: Cell<usize>,
    generation: Cell<u64>,
    /// The overlay's interface: the inner frame's ingress port.
    port: Cell<PortId>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            vteps: (0..VTEP_SLOTS).map(|_| VtepSlot::default()).collect(),
            decaps: (0..DECAP_SLOTS).map(|_| DecapSlot::default()).collect(),
        }
    }
}

#[inline]
fn vtep_key(overlay: u16, via: u32) -> u64 {
    (u64::from(overlay) + 1) << 32 | u64::from(via)
}

#[inline]
fn decap_key(vni: u32, port: PortId) -> u64 {
    1 << 63 | u64::from(vni) << 16 | u64::from(port.0)
}

#[inline]
fn slot_of(x: u64, slots: usize) -> usize {
    // Fibonacci hashing of the folded key; `slots` is a power of two.
    let h = (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 40) as usize & (slots - 1)
}

impl Cache {
    /// Forgets everything (tests).
    pub fn clear(&self) {
        for s in self.vteps.iter() {
            s.key.set(0);
        }
        for s in self.decaps.iter() {
            s.vni_port.set(0);
        }
    }

    #[inline(always)]
    fn vtep(&self, overlay: u16, via: Ipv4Addr, ctx: &Ctx) -> Option<&VtepSlot> {
        if ctx.trace.is_some() {
            return None;
        }
        let key = vtep_key(overlay, u32::from(via));
        let s = &self.vteps[slot_of(key, VTEP_SLOTS)];
        if s.key.get() != key
            || s.snapshot.get() != ctx.tables as *const Tables as usize
            || s.generation.get() != ctx.tables.generation
            || s.neigh_generation.get() != ctx.shared.neigh.generation()
        {
            return None;
        }
        if s.learned.get() && s.touched_s.get() != ctx.now_s {
            ctx.shared.neigh.touch(s.neighbour.get(), ctx.now_s);
            s.touched_s.set(ctx.now_s);
        }
        Some(s)
    }

    /// Records the encapsulation towards `vtep` of overlay `overlay` via the underlay
    /// egress `e` (a next-hop cache entry valid under `stamp`).
    fn fill_vtep(
        &self,
        ctx: &Ctx,
        stamp: Stamp,
        overlay: u16,
        vtep: &Vtep,
        dev_mac: [u8; 6],
        e: &Egress,
    ) {
        if !ctx.may_mutate() {
            return;
        }
        let key = vtep_key(overlay, u32::from(vtep.inner_via));
        let s = &self.vteps[slot_of(key, VTEP_SLOTS)];
        let ipv4 = u16::from(EtherType::Ipv4).to_be_bytes();
        let mut b = [0u8; REWRITE];
        b[0..6].copy_from_slice(&e.dst_mac);
        b[6..12].copy_from_slice(&e.src_mac);
        b[12..14].copy_from_slice(&ipv4);
        b[ethernet::HEADER_LEN..FULL_OUTER].copy_from_slice(&vtep.outer.bytes);
        b[FULL_OUTER..FULL_OUTER + 6].copy_from_slice(&vtep.inner_mac);
        b[FULL_OUTER + 6..FULL_OUTER + 12].copy_from_slice(&dev_mac);
        b[FULL_OUTER + 12..].copy_from_slice(&ipv4);
        let (snapshot, generation, neigh_generation) = stamp.parts();
        s.key.set(key);
        s.snapshot.set(snapshot);
        s.generation.set(generation);
        s.neigh_generation.set(neigh_generation);
        for (w, c) in s.rewrite.iter().zip(b.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            w.set(u64::from_ne_bytes(word));
        }
        s.csum_base.set(vtep.outer.csum_base);
        s.port.set(e.port);
        s.mtu.set(e.mtu);
        s.neighbour.set(e.neighbour);
        s.learned.set(e.learned);
        s.touched_s.set(ctx.now_s);
    }

    #[inline(always)]
    fn decap(&self, addrs: u64, vni: u32, port: PortId, ctx: &Ctx) -> Option<PortId> {
        if ctx.trace.is_some() {
            return None;
        }
        let vni_port = decap_key(vni, port);
        let s = &self.decaps[slot_of(addrs ^ vni_port, DECAP_SLOTS)];
        if s.addrs.get() != addrs
            || s.vni_port.get() != vni_port
            || s.snapshot.get() != ctx.tables as *const Tables as usize
            || s.generation.get() != ctx.tables.generation
        {
            return None;
        }
        Some(s.port.get())
    }

    fn fill_decap(&self, ctx: &Ctx, stamp: Stamp, addrs: u64, vni: u32, port: PortId, to: PortId) {
        if !ctx.may_mutate() {
            return;
        }
        let vni_port = decap_key(vni, port);
        let s = &self.decaps[slot_of(addrs ^ vni_port, DECAP_SLOTS)];
        let (snapshot, generation, _) = stamp.parts();
        s.addrs.set(addrs);
        s.vni_port.set(vni_port);
        s.snapshot.set(snapshot);
        s.generation.set(generation);
        s.port.set(to);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::wire::icmp::Message;

    /// UDP from the remote overlay pod to `dst`, as it arrives inside VXLAN (unwrapped).
    fn remote_inner(lab: &Lab, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        udp_frame(
            REMOTE_VXLAN_MAC,
            lab.mac(VXLAN),
            REMOTE_POD_IP,
            dst,
            64,
            sport,
            dport,
            payload,
        )
    }

    fn to_remote(lab: &Lab, len: usize) -> Vec<u8> {
        udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            POD60_IP,
            REMOTE_POD_IP,
            64,
            40000,
            5201,
            &vec![0x5a; len],
        )
    }

    #[test]
    fn encap_builds_linux_compatible_outer_headers() {
        let lab = Lab::overlay();
        let inner = to_remote(&lab, 100);
        let out = lab.run(POD60, inner.clone());
        assert_eq!(out.action, Action::Tx(CTL));
        let f = &out.frame;
        let p = etherparse::SlicedPacket::from_ethernet(f).expect("outer parses");
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.dst_addr().0, REMOTE_CTL_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(CTL));
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (CTL_IP, REMOTE_CTL_IP));
        assert_eq!(ip.total_len() as usize, f.len() - 14);
        assert!(!ip.dont_frag());
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("udp")
        };
        assert_eq!(u.destination_port(), 4789);
        assert!(u.source_port() >= 32768);
        assert_eq!(u.length() as usize, f.len() - 34);
        assert_eq!(u.checksum(), 0);
        let vx = VxlanHeader::new_checked(&f[42..]).unwrap();
        assert_eq!(VxlanRepr::parse(&vx), Ok(VxlanRepr { vni: 2 }));
        // The inner frame: remote vxlan MAC, ours, TTL decremented, checksums intact.
        let innerf = &f[50..];
        assert_eq!(innerf.len(), inner.len());
        let ieth = EthernetFrame::new_checked(innerf).unwrap();
        assert_eq!(ieth.dst_addr().0, REMOTE_VXLAN_MAC);
        assert_eq!(ieth.src_addr().0, lab.mac(VXLAN));
        assert_eq!(Ipv4Packet::new_checked(&innerf[14..]).unwrap().ttl(), 63);
        assert_valid_l4(innerf);
        assert_eq!(lab.event(Event::VxlanEncap), 1);
    }

    #[test]
    fn source_port_follows_the_inner_flow() {
        let lab = Lab::overlay();
        let sport = |p: u16| {
            let f = udp_frame(
                POD60_MAC,
                lab.mac(POD60),
                POD60_IP,
                REMOTE_POD_IP,
                64,
                p,
                80,
                b"x",
            );
            let out = lab.run(POD60, f);
            UdpPacket::new_checked(&out.frame[34..]).unwrap().src_port()
        };
        assert_eq!(sport(1000), sport(1000));
        let distinct: std::collections::HashSet<u16> = (0..32).map(|p| sport(2000 + p)).collect();
        assert!(distinct.len() > 16, "{distinct:?}");
    }

    #[test]
    fn decap_delivers_to_the_local_pod() {
        let lab = Lab::overlay();
        // What the remote kernel sends: encapsulate with our own encap and swap roles.
        let out = lab.run(CTL, from_remote(&lab, 5201));
        assert_eq!(out.action, Action::Tx(POD60));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, POD60_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.ttl()),
            (REMOTE_POD_IP, POD60_IP, 63)
        );
        assert_valid_l4(&out.frame);
        assert_eq!(lab.event(Event::VxlanDecap), 1);
    }

    #[test]
    fn decap_rejects_unknown_vni_and_vtep() {
        let lab = Lab::overlay();
        let inner = remote_inner(&lab, POD60_IP, 1, 2, b"x");
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 3, &inner);
        assert_eq!(
            lab.run(CTL, f).action,
            Action::Drop(DropReason::VxlanUnknownVni)
        );
        let f = vxlan_frame(&lab, Ipv4Addr::new(10, 186, 152, 99), 2, &inner);
        assert_eq!(
            lab.run(CTL, f).action,
            Action::Drop(DropReason::VxlanUnknownVtep)
        );
        // No I flag.
        let mut f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner);
        f[42] = 0;
        assert_eq!(lab.run(CTL, f).action, Action::Drop(DropReason::Malformed));
        // Truncated inner frame.
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner[..10]);
        assert_eq!(lab.run(CTL, f).action, Action::Drop(DropReason::Malformed));
    }

    #[test]
    fn df_too_big_for_the_overlay_gets_frag_needed_1450() {
        let lab = Lab::overlay();
        // 1451-byte IP packet from a pod with MTU 1450 on its side... as a pod MTU would
        // forbid, but a pod with a bigger MTU could send it.
        let f = to_remote(&lab, 1451 - 28);
        let out = lab.run(POD60, f);
        assert_eq!(out.action, Action::Tx(POD60));
        let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
        assert_eq!(ip.dst_addr(), POD60_IP);
        let icmp = crate::wire::IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (Message::DstUnreachable, 4));
        assert_eq!(icmp.next_hop_mtu(), 1450);
        // Exactly 1450 fits and is encapsulated into a 1500-byte outer packet.
        let out = lab.run(POD60, to_remote(&lab, 1450 - 28));
        assert_eq!(out.action, Action::Tx(CTL));
        assert_eq!(
            Ipv4Packet::new_checked(&out.frame[14..])
                .unwrap()
                .total_len(),
            1500
        );
    }

    #[test]
    fn unresolved_underlay_neighbour_becomes_arp_on_ctl() {
        let lab = Lab::overlay();
        lab.shared.neigh.remove(REMOTE_CTL_IP);
        let out = lab.run(POD60, to_remote(&lab, 10));
        assert_eq!(out.action, Action::Tx(CTL));
        let r = crate::wire::ArpRepr::parse(
            &crate::wire::ArpPacket::new_checked(&out.frame[14..]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (r.source_protocol_addr, r.target_protocol_addr),
            (CTL_IP, REMOTE_CTL_IP)
        );
    }

    // --- The per-worker VXLAN caches (`Cache`) ---

    /// A VNI 2 frame from the remote VTEP carrying UDP from the remote pod to pod60.
    fn from_remote(lab: &Lab, sport: u16) -> Vec<u8> {
        let inner = remote_inner(lab, POD60_IP, sport, 40000, b"reply");
        vxlan_frame(lab, REMOTE_CTL_IP, 2, &inner)
    }

    fn vtep_cached(lab: &Lab) -> bool {
        lab.local
            .nexthops
            .vxlan
            .vtep(0, REMOTE_VTEP, &lab.ctx())
            .is_some()
    }

    fn decap_cached(lab: &Lab, f: &[u8]) -> bool {
        let addrs = u64::from_be_bytes(f[26..34].try_into().unwrap());
        let vni = u32::from_be_bytes(f[46..50].try_into().unwrap()) >> 8;
        lab.local
            .nexthops
            .vxlan
            .decap(addrs, vni, CTL, &lab.ctx())
            .is_some()
    }

    /// Runs `f` from `port` with every cache cleared first: what the full path makes of it.
    fn uncached(lab: &Lab, port: PortId, f: Vec<u8>) -> Out {
        lab.local.nexthops.clear();
        lab.run(port, f)
    }

    #[test]
    fn cached_encapsulation_is_byte_identical() {
        let lab = Lab::overlay();
        for len in [0, 1, 17, 100, 1450 - 28] {
            for sport in [1, 40000, 65535] {
                let f = udp_frame(
                    POD60_MAC,
                    lab.mac(POD60),
                    POD60_IP,
                    REMOTE_POD_IP,
                    64,
                    sport,
                    5201,
                    &vec![0x5a; len],
                );
                let full = uncached(&lab, POD60, f.clone());
                assert_eq!(full.action, Action::Tx(CTL));
                // The first frames fill the next-hop entries, then the VTEP entry.
                for _ in 0..3 {
                    let out = lab.run(POD60, f.clone());
                    assert_eq!(out.action, full.action);
                    assert_eq!(out.frame, full.frame, "len {len} sport {sport}");
                }
                assert!(vtep_cached(&lab));
                assert_valid_l4(&full.frame[50..]);
            }
        }
    }

    #[test]
    fn inner_hash_is_the_flow_hash() {
        let base = udp_frame(
            POD60_MAC,
            [2, 0, 0, 0, 0, 1],
            POD60_IP,
            REMOTE_POD_IP,
            64,
            1234,
            80,
            b"abcdefgh",
        );
        let reference = |d: &[u8]| match d.get(14..).map(Ipv4Packet::new_checked) {
            Some(Ok(ip)) => flow::hash_v4(&ip),
            _ => 0,
        };
        let mut cases = vec![base.clone()];
        let mut tcp = base.clone();
        tcp[23] = 6;
        cases.push(tcp);
        let mut icmp = base.clone();
        icmp[23] = 1;
        cases.push(icmp);
        let mut frag = base.clone();
        frag[20] = 0x20; // MF
        cases.push(frag);
        let mut off = base.clone();
        off[21] = 1; // offset 8
        cases.push(off);
        let mut short = base.clone();
        short[16..18].copy_from_slice(&22u16.to_be_bytes()); // ports cut off
        cases.push(short);
        let mut long = base.clone();
        long[16..18].copy_from_slice(&2000u16.to_be_bytes()); // beyond the buffer
        cases.push(long);
        let mut options = base.clone();
        options[14] = 0x46;
        cases.push(options);
        cases.push(base[..30].to_vec());
        cases.push(base[..10].to_vec());
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(inner_hash(c), reference(c), "case {i}");
        }
    }

    #[test]
    fn vtep_entry_follows_neighbour_route_and_overlay_changes() {
        let mut lab = Lab::overlay();
        let f = |lab: &Lab| to_remote(lab, 20);
        for _ in 0..3 {
            lab.run(POD60, f(&lab));
        }
        assert!(vtep_cached(&lab));
        // The VTEP's underlay neighbour moved: the next frame has its new MAC.
        let moved = [0x02, 0, 0, 0, 0x52, 0x99];
        assert!(lab.shared.neigh.set_static(REMOTE_CTL_IP, moved, CTL));
        assert!(!vtep_cached(&lab));
        let out = lab.run(POD60, f(&lab));
        assert_eq!(&out.frame[0..6], &moved);
        for _ in 0..2 {
            assert_eq!(lab.run(POD60, f(&lab)).frame, out.frame);
        }
        assert!(vtep_cached(&lab));
        // The remote node got a new underlay address (a new snapshot): the new outer header.
        let new_remote = Ipv4Addr::new(10, 186, 152, 105);
        lab.shared.neigh.set_static(new_remote, REMOTE_CTL_MAC, CTL);
        lab.tables.vxlan.overlays[0].vteps[0].remote = new_remote;
        lab.tables.vxlan.overlays[0].vteps[0].outer =
            crate::tables::overlay::OuterHeader::new(CTL_IP, new_remote, 4789, 2);
        lab.tables.generation += 1;
        assert!(!vtep_cached(&lab));
        for _ in 0..3 {
            let out = lab.run(POD60, f(&lab));
            assert_eq!(out.action, Action::Tx(CTL));
            let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
            assert_eq!(ip.dst_addr(), new_remote);
            assert!(ip.verify_checksum());
            assert_eq!(&out.frame[0..6], &REMOTE_CTL_MAC);
        }
        assert!(vtep_cached(&lab));
        // The underlay route to it goes away: no route, however warm the cache was.
        lab.tables.fib.remove(Ipv4Addr::new(10, 186, 152, 0), 24);
        lab.tables.generation += 1;
        let out = lab.run(POD60, f(&lab));
        assert_ne!(out.action, Action::Tx(CTL), "{:?}", out.action);
    }

    #[test]
    fn cached_encapsulation_still_checks_the_uplink_mtu() {
        let mut lab = Lab::overlay();
        for _ in 0..3 {
            lab.run(POD60, to_remote(&lab, 1000));
        }
        assert!(vtep_cached(&lab));
        // A smaller uplink MTU in a new snapshot, and a frame that fits the overlay's.
        let mut ports: Vec<_> = lab.tables.ports.iter().cloned().collect();
        ports.iter_mut().find(|p| p.id == CTL).unwrap().mtu = 1400;
        lab.tables.ports = crate::tables::Ports::new(ports);
        lab.tables.generation += 1;
        for _ in 0..3 {
            let out = lab.run(POD60, to_remote(&lab, 1400 - 28));
            assert_eq!(out.action, Action::Drop(DropReason::TooBig));
        }
    }

    #[test]
    fn cached_decapsulation_is_byte_identical() {
        let lab = Lab::overlay();
        for sport in [1, 5201, 65535] {
            let f = from_remote(&lab, sport);
            let full = uncached(&lab, CTL, f.clone());
            assert_eq!(full.action, Action::Tx(POD60));
            assert!(decap_cached(&lab, &f));
            for _ in 0..2 {
                let out = lab.run(CTL, f.clone());
                assert_eq!((out.action, &out.frame), (full.action, &full.frame));
            }
            assert_valid_l4(&full.frame);
        }
    }

    #[test]
    fn cached_decapsulation_still_drops_what_it_must() {
        let lab = Lab::overlay();
        let good = from_remote(&lab, 7);
        assert_eq!(lab.run(CTL, good.clone()).action, Action::Tx(POD60));
        assert!(decap_cached(&lab, &good));
        let drop = |f: Vec<u8>| lab.run(CTL, f).action;
        // Bad outer IPv4 checksum.
        let mut f = good.clone();
        f[24] ^= 0xff;
        assert_eq!(drop(f), Action::Drop(DropReason::BadIpChecksum));
        // No I flag.
        let mut f = good.clone();
        f[42] = 0;
        assert_eq!(drop(f), Action::Drop(DropReason::Malformed));
        // Another VNI, another source VTEP (outer checksum patched to stay valid).
        let inner = good[50..].to_vec();
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 3, &inner);
        assert_eq!(drop(f), Action::Drop(DropReason::VxlanUnknownVni));
        let f = vxlan_frame(&lab, Ipv4Addr::new(10, 186, 152, 99), 2, &inner);
        assert_eq!(drop(f), Action::Drop(DropReason::VxlanUnknownVtep));
        // Truncated inner frames and UDP lengths that lie.
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner[..10]);
        assert_eq!(drop(f), Action::Drop(DropReason::Malformed));
        let f = vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner[..0]);
        assert_eq!(drop(f), Action::Drop(DropReason::Malformed));
        let mut f = good.clone();
        f[38..40].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(drop(f), Action::Drop(DropReason::Malformed));
        // A bad inner checksum is the inner classification's to drop.
        let mut f = good.clone();
        f[50 + 24] ^= 0xff;
        assert_eq!(drop(f), Action::Drop(DropReason::BadIpChecksum));
        // The good frame still goes through, from the cache.
        assert_eq!(lab.run(CTL, good).action, Action::Tx(POD60));
    }

    #[test]
    fn decap_entry_follows_a_new_snapshot() {
        let mut lab = Lab::overlay();
        let f = from_remote(&lab, 9);
        assert_eq!(lab.run(CTL, f.clone()).action, Action::Tx(POD60));
        assert!(decap_cached(&lab, &f));
        // The remote node is removed from the overlay.
        lab.tables.vxlan.overlays[0].vteps.clear();
        lab.tables.generation += 1;
        assert!(!decap_cached(&lab, &f));
        assert_eq!(
            lab.run(CTL, f.clone()).action,
            Action::Drop(DropReason::VxlanUnknownVtep)
        );
        // The ctl address is no longer the node's: not VXLAN for us any more, routed.
        let mut lab = Lab::overlay();
        assert_eq!(lab.run(CTL, f.clone()).action, Action::Tx(POD60));
        lab.tables.local.remove(&CTL_IP);
        lab.tables.generation += 1;
        assert_ne!(lab.run(CTL, f).action, Action::Tx(POD60));
        assert_eq!(lab.event(Event::VxlanDecap), 1);
    }

    #[test]
    fn traced_frames_neither_hit_nor_fill_the_vxlan_caches() {
        let lab = Lab::overlay();
        let trace = super::super::Trace::default();
        let ctx = Ctx {
            trace: Some(&trace),
            ..lab.ctx()
        };
        let run = |port: PortId, f: &[u8]| {
            let mut buf = vec![0u8; 4096];
            buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            let mut frame = Frame::new(&mut buf, HEADROOM, f.len());
            let meta = RxMeta { port, vlan: None };
            super::super::process(&mut frame, &meta, &ctx)
        };
        let enc = to_remote(&lab, 10);
        let dec = from_remote(&lab, 3);
        for _ in 0..3 {
            assert_eq!(run(POD60, &enc), Action::Tx(CTL));
            assert_eq!(run(CTL, &dec), Action::Tx(POD60));
        }
        assert!(!vtep_cached(&lab) && !decap_cached(&lab, &dec));
        // Warm caches are not used by a trace either: it records the decapsulation.
        for _ in 0..3 {
            lab.run(POD60, enc.clone());
            lab.run(CTL, dec.clone());
        }
        assert!(vtep_cached(&lab) && decap_cached(&lab, &dec));
        let before = trace.steps().len();
        assert_eq!(run(CTL, &dec), Action::Tx(POD60));
        assert!(
            trace.steps()[before..]
                .iter()
                .any(|(stage, what)| *stage == "vxlan" && what.contains("decapsulated"))
        );
    }

    #[test]
    fn overlay_pod_to_clusterip_is_translated_with_a_warm_decap_entry() {
        use crate::service::ServiceTable;
        let mut lab = Lab::overlay();
        let vip = Ipv4Addr::new(10, 96, 10, 1);
        let mut t = ServiceTable::new();
        t.upsert(cluster_ip_service(1, vip, 80, 17, vec![be(POD60_IP, 8080)]))
            .unwrap();
        lab.tables.services = t;
        let to_vip = |sport: u16| {
            let inner = remote_inner(&lab, vip, sport, 80, b"get");
            vxlan_frame(&lab, REMOTE_CTL_IP, 2, &inner)
        };
        // Warm the decapsulation entry with plain traffic first.
        let plain = from_remote(&lab, 5);
        lab.run(CTL, plain.clone());
        assert!(decap_cached(&lab, &plain));
        for sport in [40000, 40000, 40001] {
            let f = to_vip(sport);
            assert!(decap_cached(&lab, &f));
            let out = lab.run(CTL, f);
            assert_eq!(out.action, Action::Tx(POD60));
            let ip = Ipv4Packet::new_checked(&out.frame[14..]).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE_POD_IP, POD60_IP));
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!((u.src_port(), u.dst_port()), (sport, 8080));
            assert_valid_l4(&out.frame);
        }
        assert_eq!(lab.event(Event::VxlanDecap), 4);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a warm cache does with a frame, the full path does too: same action, same
        /// bytes (decapsulation: outer and inner header bytes changed; encapsulation: the
        /// inner frame's).
        #[test]
        fn caches_change_no_decision(
            at in 0usize..92,
            value in proptest::prelude::any::<u8>(),
            cut in 0usize..8,
        ) {
            let lab = Lab::overlay();
            let good = from_remote(&lab, 77);
            lab.run(CTL, good.clone());
            let mut f = good.clone();
            let n = f.len();
            f[at % n] = value;
            f.truncate(f.len() - cut * 3);
            let warm = lab.run(CTL, f.clone());
            let cold = uncached(&lab, CTL, f);
            proptest::prop_assert_eq!((warm.action, &warm.frame), (cold.action, &cold.frame));

            let good = to_remote(&lab, 30);
            for _ in 0..3 {
                lab.run(POD60, good.clone());
            }
            proptest::prop_assert!(vtep_cached(&lab));
            let mut f = good.clone();
            f[at % 42] = value;
            f.truncate(f.len() - cut * 3);
            let warm = lab.run(POD60, f.clone());
            let cold = uncached(&lab, POD60, f);
            proptest::prop_assert_eq!((warm.action, &warm.frame), (cold.action, &cold.frame));
        }
    }
}
