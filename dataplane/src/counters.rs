//! Counters: drop reasons as a closed, named list (STYLE §10), events, and per-port traffic.
//!
//! Each worker owns its counters and is their only writer, so an increment is a relaxed load
//! and store, not a locked read-modify-write: the control thread reads them (relaxed) and
//! sums over workers. A reader may see a value a few packets old, never a torn one.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter with a single writer (its worker) and any number of readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
    /// For figures copied from elsewhere (the kernel's socket statistics).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
}

macro_rules! named_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$m])*
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vm])* $variant,)+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            pub const COUNT: usize = $name::ALL.len();
            /// The stable, snake_case name used in `afgate ctl stats` and metrics.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_enum! {
    /// Why a frame was dropped. Every drop in the pipeline names one of these.
    pub enum DropReason {
        /// Shorter than its headers claim, bad IHL or lengths, or a bad version.
        Malformed = "malformed",
        /// An Ethernet type the dataplane does not handle (and the XDP program did not pass).
        UnsupportedEthertype = "unsupported_ethertype",
        /// An IPv6 frame; IPv6 is parsed but not forwarded yet.
        Ipv6 = "ipv6",
        /// Unicast frame addressed to a MAC that is not the ingress port's.
        OtherMac = "other_mac",
        /// IPv4 header checksum wrong.
        BadIpChecksum = "bad_ip_checksum",
        /// No route to the destination.
        NoRoute = "no_route",
        /// TTL expired in transit (an ICMP time exceeded is sent when possible).
        TtlExceeded = "ttl_exceeded",
        /// Next hop's MAC unknown; an ARP request was sent in its place. No longer counted:
        /// such frames now wait in the ARP pending queue (`neigh_queued`, `neigh_queue_full`).
        NeighUnresolved = "neigh_unresolved",
        /// ARP that is neither for us nor proxied by us.
        ArpNotForUs = "arp_not_for_us",
        /// ICMP to a node address that is not an echo request.
        LocalIcmpOther = "local_icmp_other",
        /// Traffic to a node address that the kernel owns but the XDP program did not pass.
        LocalNotOurs = "local_not_ours",
        /// Would go back out of the port it came in on with no rewrite to make it useful.
        SamePort = "same_port",
        /// Frame larger than the egress MTU and not allowed to be fragmented.
        TooBig = "too_big",
        /// Egress tx ring full.
        TxRingFull = "tx_ring_full",
        /// Egress port is down or not attached.
        PortDown = "port_down",
        /// Not a drop: the pipeline consumed the frame (an ARP reply it learned from).
        Consumed = "consumed",
        /// 802.1Q: a tag (or no tag) the ingress port does not carry: unknown VLAN on a
        /// trunk, tagged frame on an access or untagged port, untagged on a trunk without a
        /// native VLAN.
        VlanNotAllowed = "vlan_not_allowed",
        /// 802.1Q: two tags (QinQ 0x88a8, or 0x8100 inside 0x8100); not carried.
        VlanDoubleTagged = "vlan_double_tagged",
        /// VXLAN to a node address with a VNI no overlay has.
        VxlanUnknownVni = "vxlan_unknown_vni",
        /// VXLAN from a source that is not a configured remote VTEP of its overlay.
        VxlanUnknownVtep = "vxlan_unknown_vtep",
        /// A route names an overlay next hop that has no VTEP entry.
        VxlanNoVtep = "vxlan_no_vtep",
        /// Not enough headroom in the frame buffer to push a header.
        NoHeadroom = "no_headroom",
        /// Every member of the egress bond is down.
        BondNoMember = "bond_no_member",
        /// Next hop's MAC unknown and an ARP request for it went out less than a second
        /// ago: the frame is dropped instead of becoming another request. No longer counted:
        /// such frames now wait in the ARP pending queue (`neigh_queued`, `neigh_queue_full`).
        NeighRateLimited = "neigh_rate_limited",
        /// A non-first fragment to a service address: it has no ports to translate by.
        NatFragment = "nat_fragment",
        /// To a service address (ClusterIP, external, LB) on a port/protocol no service has.
        VipNoService = "vip_no_service",
        /// The conntrack table is full: a new NATed flow could not be tracked.
        ConntrackFull = "conntrack_full",
        /// No free SNAT source port (or the un-SNATed reply tuple is already tracked).
        NatNoPort = "nat_no_port",
        /// A frame the control thread queued for injection found no free UMEM frame.
        InjectNoFrame = "inject_no_frame",
        /// Next hop unresolved and its share of the ARP pending queue is full (or the frame
        /// is larger than a queue slot): the frame is dropped (`pipeline::neigh`).
        NeighQueueFull = "neigh_queue_full",
        /// A frame held for ARP resolution whose next hop did not answer in time.
        NeighTimeout = "neigh_timeout",
        /// A pod port with source validation received a packet (or an ARP sender address)
        /// outside the port's allowed prefixes (`pipeline::antispoof`).
        Spoofed = "spoofed_source",
    }
}

named_enum! {
    /// Things the pipeline did besides forwarding, counted per worker.
    pub enum Event {
        ArpReply = "arp_reply",
        ProxyArpReply = "proxy_arp_reply",
        ArpLearned = "arp_learned",
        ArpRequestSent = "arp_request_sent",
        IcmpEchoReply = "icmp_echo_reply",
        IcmpTimeExceededSent = "icmp_time_exceeded_sent",
        IcmpUnreachableSent = "icmp_unreachable_sent",
        VxlanEncap = "vxlan_encap",
        VxlanDecap = "vxlan_decap",
        VlanPush = "vlan_push",
        VlanPop = "vlan_pop",
        GratuitousArpSent = "gratuitous_arp_sent",
        FramesInjected = "frames_injected",
        /// A new flow scheduled to a service backend and tracked.
        ServiceNewFlow = "service_new_flow",
        /// A service with no ready backend answered with TCP RST / ICMP port unreachable.
        ServiceReject = "service_reject",
        /// A new flow source-NATed (masquerade, hairpin, externalTrafficPolicy Cluster).
        SnatNewFlow = "snat_new_flow",
        /// The SNAT port was taken; another was tried.
        SnatPortRetry = "snat_port_retry",
        /// An ICMP error about a tracked flow was translated (conntrack RELATED).
        NatIcmpRelated = "nat_icmp_related",
        /// A UDP entry whose backend was removed was dropped and its packet rescheduled.
        ServiceRebalanced = "service_rebalanced",
        /// ICMP echo to a service address answered by the node.
        VipEchoReply = "vip_echo_reply",
        /// A frame to an unresolved next hop was held in the ARP pending queue.
        NeighQueued = "neigh_queued",
        /// A held frame was sent once its next hop resolved.
        NeighQueueSent = "neigh_queue_sent",
        /// The flood guard sent a new (or untracked mid-flow) ClusterIP flow to its Maglev
        /// backend without tracking it (`pipeline::flood`).
        FloodGuardUntracked = "flood_guard_untracked",
        /// The flood guard un-DNATed a reply of an untracked flow statelessly.
        FloodGuardReply = "flood_guard_reply",
    }
}

/// Traffic counters of one port as seen by one worker.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub drops: Counter,
    /// The kernel's view of this worker's socket (`XDP_STATISTICS`), copied now and then:
    /// frames the kernel could not deliver because the rx ring was full or the fill ring
    /// empty (the worker fell behind), and all its rx drops.
    pub xsk_rx_ring_full: Counter,
    pub xsk_fill_empty: Counter,
    pub xsk_rx_dropped: Counter,
}

/// Everything one worker counts. Cache-line aligned so that two workers' counters never
/// share a line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct WorkerCounters {
    pub drops: [Counter; DropReason::COUNT],
    pub events: [Counter; Event::COUNT],
    pub ports: Box<[PortCounters]>,
    /// Poll iterations that moved at least one frame, and all iterations: busy ratio.
    pub busy_polls: Counter,
    pub polls: Counter,
    /// Times the worker slept in poll(2) waiting for frames.
    pub sleeps: Counter,
    /// Syscalls of the busy path: tx kicks (sendto: copy mode transmits inside it, a
    /// bounded number of frames per call), fill-ring wakeups (recvfrom), and the rx batches
    /// they are paid for; `tests/tests/memory.rs` checks their ratio.
    pub tx_kicks: Counter,
    pub rx_kicks: Counter,
    pub rx_batches: Counter,
    /// Frames in the worker's free stack after its last pass (a gauge, not a counter): when
    /// the worker is idle every other frame sits in a fill ring, so this returns to the same
    /// value after any traffic unless frames leaked (docs/reliability.md).
    pub free_frames: AtomicU64,
}

impl WorkerCounters {
    pub fn new(ports: usize) -> Self {
        WorkerCounters {
            drops: core::array::from_fn(|_| Counter::default()),
            events: core::array::from_fn(|_| Counter::default()),
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
            busy_polls: Counter::default(),
            polls: Counter::default(),
            sleeps: Counter::default(),
            tx_kicks: Counter::default(),
            rx_kicks: Counter::default(),
            rx_batches: Counter::default(),
            free_frames: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].inc();
    }

    #[inline]
    pub fn event(&self, event: Event) {
        self.events[event as usize].inc();
    }

    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    pub fn event_count(&self, event: Event) -> u64 {
        self.events[event as usize].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.extend(Event::ALL.iter().map(|e| e.name()));
        for n in &names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{n}"
            );
        }
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total);
    }

    #[test]
    fn counters_count() {
        let c = WorkerCounters::new(2);
        c.dropped(DropReason::NoRoute);
        c.dropped(DropReason::NoRoute);
        c.event(Event::ArpReply);
        c.ports[1].rx_packets.add(5);
        assert_eq!(c.drop_count(DropReason::NoRoute), 2);
        assert_eq!(c.event_count(Event::ArpReply), 1);
        assert_eq!(c.ports[1].rx_packets.get(), 5);
    }
}
