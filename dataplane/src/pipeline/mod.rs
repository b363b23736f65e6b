//! The packet pipeline: a pure function of (frame, tables) → [`Action`], run to completion
//! for each frame of a batch. No sockets, threads or syscalls here: the worker owns those,
//! and every stage is tested frame by frame with plain buffers.
//!
//! Stages, one file each, in the order a frame meets them:
//! - [`vlan`] (with [`bond`]): the ingress interface: bond member → bond, 802.1Q pop →
//!   subinterface, access VLAN implied.
//! - [`classify`]: Ethernet checks, dispatch on EtherType; [`vxlan`] decapsulation of
//!   tunnel traffic to a node address (the inner frame is classified again).
//! - [`arp`]: answers for the node's addresses and (proxy) for the pod gateway; learns.
//! - [`local`]: IPv4 addressed to the node itself (ICMP echo).
//! - [`route`]: longest-prefix match, TTL, MTU, next-hop MAC rewrite or ARP resolution.
//! - [`icmp`]: ICMP errors built in place of the offending frame.
//! - [`egress`]: from next hop to physical port: VXLAN encapsulation ([`vxlan`]), next-hop
//!   MAC or ARP request ([`neigh`]), 802.1Q push, bond member choice.

pub mod antispoof;
pub mod arp;
pub mod bond;
pub mod classify;
pub mod egress;
pub mod flood;
pub mod flow;
pub mod flow_cache;
pub mod icmp;
pub mod local;
pub mod nat;
pub mod neigh;
pub mod nexthop_cache;
pub mod route;
pub mod service;
pub mod vlan;
pub mod vxlan;

use crate::counters::{DropReason, WorkerCounters};
use crate::frame::Frame;
use crate::tables::{PortId, Shared, Tables};

/// What to do with a frame once the pipeline is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transmit the (rewritten) frame on this port, on the worker's own queue.
    Tx(PortId),
    /// Drop it, counted under this reason. Also used for frames the pipeline consumed
    /// (ARP replies addressed to us) with [`DropReason::Consumed`].
    Drop(DropReason),
}

/// Where the frame came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct RxMeta {
    pub port: PortId,
    /// The 802.1Q VLAN the frame arrived on (after the VLAN stage pops the tag, or the
    /// access VLAN of an untagged port); visible to NAT rules (SPEC B5).
    pub vlan: Option<u16>,
}

/// A record of every stage's decision for one frame (`afgate trace`). When present, stages
/// also must not change shared state (no learning, no conntrack inserts): a trace is a dry run.
#[derive(Debug, Default)]
pub struct Trace {
    steps: core::cell::RefCell<Vec<(&'static str, String)>>,
}

impl Trace {
    pub fn note(&self, stage: &'static str, what: String) {
        self.steps.borrow_mut().push((stage, what));
    }

    /// What [`trace_step!`] calls: out of line and cold, so that with tracing off a step costs
    /// the one `if let Some` branch and none of its formatting code sits in the hot path.
    #[cold]
    #[inline(never)]
    pub fn note_args(&self, stage: &'static str, what: core::fmt::Arguments<'_>) {
        self.note(stage, what.to_string());
    }

    pub fn steps(&self) -> Vec<(&'static str, String)> {
        self.steps.borrow().clone()
    }
}

/// Records a decision when tracing; formats nothing otherwise.
#[macro_export]
macro_rules! trace_step {
    ($ctx:expr, $stage:literal, $($arg:tt)*) => {
        if let Some(t) = $ctx.trace {
            t.note_args($stage, format_args!($($arg)*));
        }
    };
}

/// Everything a stage may read, and the per-worker counters it may bump.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub tables: &'a Tables,
    pub shared: &'a Shared,
    pub counters: &'a WorkerCounters,
    /// Dataplane clock, seconds and nanoseconds since start.
    pub now_s: u32,
    pub now_ns: u64,
    /// Set by `afgate trace`: record decisions, change no shared state.
    pub trace: Option<&'a Trace>,
    /// This worker's own scheduler state (round-robin cursors, PRNG, SNAT port cursor).
    pub local: &'a crate::service::WorkerLocal,
}

impl Ctx<'_> {
    /// False when tracing: stages skip learning and inserts.
    #[inline]
    pub fn may_mutate(&self) -> bool {
        self.trace.is_none()
    }
}

/// Runs one frame through the pipeline.
#[inline]
pub fn process(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    // Stages see the interface the frame arrived on (bond, VLAN subinterface), not the
    // physical port; the worker keeps the physical one for its own accounting.
    let mut meta = *meta;
    if let Err(reason) = vlan::ingress(frame, &mut meta, ctx) {
        return Action::Drop(reason);
    }
    match classify::run(frame, &meta, ctx) {
        Action::Tx(port) => egress::output(frame, port, ctx),
        drop => drop,
    }
}

// Public behind the `testing` feature (never in the binary's build) so that the property tests
// in tests/ and the fuzz targets in fuzz/ drive the same lab node as the unit tests.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
