//! The connection-tracking table (B4, B12): one table shared by every worker, because a
//! reply may arrive on another queue than its request.
//!
//! # Layout
//!
//! - **Flow slots** (`capacity` of them, 64 bytes each, one cache line): the flow's two
//!   tuples and its service/backend/generation/mark, guarded by a per-slot seqlock, plus one
//!   `meta` word (last-seen second, TCP state, FINs seen, replied, protocol class, life
//!   state, reuse generation) that packets update with a CAS. Packet/byte counters live in a
//!   parallel array so that the slot line holds only what a lookup reads.
//! - **Index**: buckets of one cache line each (VPP lbhash's shape): a control word and 7
//!   entries. An entry is one `u64`: the tuple's 32-bit hash (signature), the direction and
//!   the slot number. Every flow has two entries, one for `orig` and one for `reply`,
//!   pointing at the same slot, so both directions find the same state. A tuple lives in its
//!   home bucket or, when that is full, in one of the next three; the home's control word
//!   counts such overflows, so a lookup normally reads one line of index, then the slot.
//!   The index is sized for a load of at most 1/3 with the table full (7 entries per bucket,
//!   2.3 used on average).
//! - **Free slots**: a Treiber stack over the slot numbers, its head tagged against ABA.
//!
//! Everything is allocated in [`Conntrack::new`]; nothing is allocated afterwards.
//!
//! # Concurrency and memory ordering
//!
//! - **Nothing locks, and nothing waits for another thread.** Lookups and per-packet
//!   updates never wait for a writer (a read that keeps meeting one is a miss). A lookup
//!   loads index entries (Acquire) and reads the slot under its seqlock: `seq` (Acquire), the fields
//!   (Relaxed), an Acquire fence, `seq` again; an odd or changed `seq` means a writer was
//!   there, and the read is retried a few times and then taken as a miss. The writer of a
//!   slot's fields is always its exclusive owner (it popped the slot from the free stack or
//!   killed the flow in it), so it stores `seq` odd, issues a Release fence, writes, and
//!   stores `seq` even with Release: the usual fence-based seqlock, in which a reader that
//!   sees any new field value also sees the odd `seq` on its second load. All fields are
//!   atomics, so a torn read is detected, never undefined behaviour; no `unsafe` here.
//!   The index entry is published (Release CAS) after the slot is written, and the slot
//!   turns `LIVE` (Release CAS) only after both entries are published, so a reader that
//!   finds an entry reads at least that version of the slot, and a reader never acts on a
//!   slot whose entries are half there.
//! - A reader checks that the slot is `LIVE`, that its tuple in the entry's direction equals
//!   the one looked up (a slot freed and reused for another flow fails this) and that it has
//!   not expired. Stale index entries are therefore only slow, never wrong.
//! - `update` checks that `meta` is still LIVE in the reuse generation the lookup read with
//!   the flow (every kill bumps it, so the slot still holds that flow), then CASes `meta`;
//!   the CAS fails if the flow was killed since (its life and reuse generation are in
//!   `meta`), so an update never lands on the next flow to use the slot. Nothing is written
//!   when the second, state and flags are unchanged: a flow's steady packets only add to
//!   its counters (relaxed `fetch_add`).
//! - **Inserts** (first packet of a flow) take no lock either. An insert *stages* the flow:
//!   pops a slot (or early-drops one), writes it (INIT), publishes both index entries by CAS
//!   into empty positions (an entry may land in any of the window's buckets), stores `meta`
//!   PENDING and issues a SeqCst fence. Then it *arbitrates*: it scans the windows of both
//!   tuples for rivals, other PENDING or LIVE slots holding `orig` or `reply` in their
//!   entry's direction (an expired LIVE one is reclaimed instead), and
//!   - loses to a LIVE rival (a flow already there: the Kubernetes UDP/DNS race, two workers
//!     seeing the first packets of one flow at once, ends in one entry that both translate
//!     through; or a clash), or to a PENDING one in a lower slot;
//!   - else aborts each (higher) PENDING rival by a CAS `PENDING → ABORTED` on its exact
//!     `meta`, bumping its reuse generation (a CAS that finds the rival LIVE makes it lose
//!     after all), and goes LIVE by a CAS `PENDING → LIVE` on its own `meta`, which fails if
//!     a lower rival aborted it meanwhile.
//!
//!   The same scan thus answers the plain cases (the flow is there: return it; `reply` is
//!   taken: `Clash`) at the cost of a staged slot, which only races and clashes pay; an
//!   insert that cannot stage (no slot, no index room) looks for the flow before `Full`.
//!   A loser marks itself ABORTED (so that rivals stop yielding to it), clears its entries,
//!   frees its slot and returns the rival: `Ok` with the rival's flow if it holds `orig`
//!   (a PENDING rival's flow is already final), `Err(Clash)` if it holds only `reply`. An
//!   insert aborted after deciding to win looks once for the rival that aborted it (PENDING
//!   or LIVE) and starts over only if that one withdrew too. Orderings: the abort CAS is
//!   Release and the failed LIVE CAS Acquire, so that this second look sees the aborter's
//!   entries; the successful LIVE CAS is Release like any publication; a loser's CAS of its
//!   own `meta` to ABORTED is Relaxed (it publishes nothing: a rival that still reads it
//!   PENDING only yields to it needlessly); everything else an arbitration reads is
//!   ordered by the two fences.
//!
//!   *At most one LIVE slot per tuple.* Take two inserts X and Y sharing a tuple. Each
//!   stores its entries and PENDING before its SeqCst fence and scans after it, so (the
//!   store-buffering pattern) the one whose fence comes later in the total order of SeqCst
//!   fences sees the other's entry and reads its `meta` at PENDING or later. Say X sees Y.
//!   If Y is LIVE, X loses; if PENDING in a lower slot, X loses; if PENDING in a higher
//!   slot, X's abort CAS and Y's own LIVE CAS are two read-modify-writes of one word, so
//!   exactly one succeeds: Y never goes LIVE, or X finds it LIVE and loses. If X finds Y's
//!   entry gone, or Y's slot ABORTED, rewritten or DEAD, Y withdrew or was killed already.
//!   A slot goes LIVE only by its owner's CAS, so X and Y are never LIVE together.
//!   *No drop.* Only a lower slot aborts a PENDING one, so among inserts staged at once the
//!   one in the lowest slot is never aborted: it goes LIVE, or loses to a LIVE flow. An
//!   insert starts over only after being aborted by a lower one that then lost in turn, so
//!   every repetition follows another insert's completion: inserts are lock-free (none ever
//!   waits for another), not wait-free. *Same translation.* With two racing workers the
//!   loser returns the flow that goes LIVE (the lower PENDING slot, or the LIVE one). With
//!   three or more, a loser may return a PENDING rival that a still lower one then aborts:
//!   that one packet is translated by a flow that never goes LIVE (and its `update` is a
//!   no-op), the next packet finds the winner; likewise a loser to such a rival may get a
//!   spurious `Clash` (SNAT picks another port). Until it goes LIVE, a staged slot is
//!   invisible to lookups, `update`, kills, gc, early drop, flush and listings, all of which
//!   act on LIVE slots only: a PENDING or ABORTED slot belongs to its inserter.
//! - **Kills** (remove, gc, early drop, flush) need no lock: one CAS `LIVE → DEAD` on
//!   `meta` picks the single killer, which then owns the slot, clears its two entries by CAS
//!   on their exact values (the slot number makes them unique) and pushes the slot back.
//!   Killing a flow never makes a live tuple look absent to an insert.
//! - A process that dies mid-insert or mid-kill (the table may live in a shared segment)
//!   leaves INIT, PENDING, ABORTED or DEAD slots that nobody owns;
//!   [`Conntrack::recover_abandoned`] frees them when the next process adopts the segment
//!   alone.
//!
//! # Expiry
//!
//! An entry expires when `now >= last_seen + timeout(proto, state, replied)`. Expired entries
//! are misses and are reclaimed by [`Conntrack::gc`] (incremental, from a cursor, on the
//! control thread) or, when the table is full, by the insert that needs the room.

mod shm;
mod tcp;
#[cfg(test)]
mod tests;

pub use shm::{Opened, Segment, ShmError};

pub use tcp::{ACK, FIN, RST, SYN};

use crate::mem::{Place, Region};
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use crossbeam::utils::CachePadded;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// A connection's 5-tuple as one direction carries it. ICMP echo: `sport = dport = ident`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Default for Tuple {
    fn default() -> Self {
        Tuple {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            sport: 0,
            dport: 0,
            proto: 0,
        }
    }
}

impl Tuple {
    /// The tuple of the other direction, untranslated.
    pub fn reverse(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// `src << 32 | dst` and `sport << 16 | dport`: the tuple as a flow cache keys it.
    #[inline]
    pub fn addrs_ports(&self) -> (u64, u32) {
        (
            (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst)),
            u32::from(self.sport) << 16 | u32::from(self.dport),
        )
    }

    #[inline]
    fn words(&self) -> (u64, u64) {
        (
            (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst)),
            (u64::from(self.sport) << 32) | (u64::from(self.dport) << 16) | u64::from(self.proto),
        )
    }

    #[inline]
    fn from_words(a: u64, b: u64) -> Tuple {
        Tuple {
            src: Ipv4Addr::from((a >> 32) as u32),
            dst: Ipv4Addr::from(a as u32),
            sport: (b >> 32) as u16,
            dport: (b >> 16) as u16,
            proto: b as u8,
        }
    }

    /// A well-mixed 32-bit hash (the index signature and bucket; also usable for RSS-like
    /// spreading). Stable for the life of the process.
    #[inline]
    pub fn hash(&self) -> u32 {
        let (a, b) = self.words();
        let mut x = a ^ b.rotate_left(23).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 32;
        x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        x ^= x >> 32;
        x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        x ^= x >> 32;
        x as u32
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    Original,
    Reply,
}

impl Dir {
    #[inline]
    fn idx(self) -> usize {
        match self {
            Dir::Original => 0,
            Dir::Reply => 1,
        }
    }
}

/// A flow: the tuple as the client sent it and the tuple its replies carry (after
/// translation: for DNAT to backend B with SNAT to S: orig = C:c→VIP:p, reply = B:b→S:s).
/// Both are indexed; a packet matching `reply` is a reply.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Flow {
    pub orig: Tuple,
    pub reply: Tuple,
    pub service: u32,
    pub backend: u32,
    pub generation: u32,
    pub mark: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TcpState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

impl TcpState {
    const ALL: [TcpState; 9] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
    ];

    /// Lower-case names as `conntrack -L` prints them.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
}

/// What a lookup or insert found. `slot` names the flow for [`Conntrack::update`] and
/// [`Conntrack::remove`]; `dir` says which of the flow's tuples matched.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hit {
    pub slot: u32,
    pub dir: Dir,
    pub flow: Flow,
    pub state: TcpState,
    pub replied: bool,
    /// The slot's `meta` word read together with `flow`: its life and reuse generation tell
    /// [`Conntrack::update`] whether the slot still holds this flow without reading the slot
    /// again.
    meta: u64,
}

impl Hit {
    /// The flow as a slot, reuse generation and matched tuple, for [`Conntrack::refresh`].
    #[inline]
    pub fn flow_ref(&self) -> FlowRef {
        let t = if self.dir == Dir::Original {
            &self.flow.orig
        } else {
            &self.flow.reply
        };
        FlowRef {
            slot: self.slot,
            reuse: Meta(self.meta).reuse(),
            key: t.words(),
        }
    }
}

/// A flow found by a lookup, remembered as its slot, the slot's reuse generation then
/// (every kill bumps it) and the tuple it was found by: a slot reused so often that its
/// generation wrapped still fails on the tuple.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlowRef {
    slot: u32,
    reuse: u64,
    key: (u64, u64),
}

impl FlowRef {
    /// Names no flow: [`Conntrack::refresh`] refuses it (no slot has this number).
    pub const NONE: FlowRef = FlowRef {
        slot: u32::MAX,
        reuse: 0,
        key: (0, 0),
    };

    pub fn is_none(&self) -> bool {
        self.slot == u32::MAX
    }
}

/// Idle timeouts in seconds, per protocol and TCP state.
#[derive(Clone, Debug)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// UDP (and other protocols) until a reply is seen.
    pub udp: u32,
    /// UDP (and other protocols) once replied.
    pub udp_stream: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    /// netfilter's defaults (`sysctl net.netfilter.nf_conntrack_*_timeout*`).
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Maximum number of flows (`nf_conntrack_max`).
    pub capacity: u32,
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        // netfilter's nf_conntrack_max on a host with >= 4 GiB: 262144.
        Config {
            capacity: 262_144,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InsertError {
    /// No free slot, and nothing evictable (unreplied) in the early-drop window; or, very
    /// rarely, the index window of one of the tuples is full.
    Full,
    /// `flow.reply` is already a tuple of another live flow: pick another source port.
    Clash,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Live slots (including expired ones gc has not reached yet).
    pub entries: u64,
    pub inserts: u64,
    /// Inserts that found the same `orig` already there, or being inserted by another
    /// worker, and returned that flow.
    pub insert_races: u64,
    /// Inserts that staged their flow and then withdrew because another flow held or was
    /// being inserted with one of its tuples (each race and each clash; those holding
    /// `orig` are counted in `insert_races` too).
    pub insert_lost: u64,
    /// Unreplied flows evicted to make room.
    pub early_drops: u64,
    /// Expired flows reclaimed (by gc or by an insert needing room).
    pub expired: u64,
    /// Inserts refused with [`InsertError::Full`].
    pub full_drops: u64,
    pub capacity: u64,
}

/// One flow as `ctl conntrack list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub slot: u32,
    pub orig: Tuple,
    pub reply: Tuple,
    pub proto: u8,
    pub state: TcpState,
    pub timeout_left: u32,
    pub replied: bool,
    /// Indexed by direction: `[original, reply]`.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub service: u32,
    pub backend: u32,
    pub generation: u32,
    pub mark: u32,
}

// ---------------------------------------------------------------------------------------------
// meta word
// ---------------------------------------------------------------------------------------------

/// `meta` bits: 0..32 last-seen second | 32..36 TcpState | 36 replied | 37..39 class |
/// 39..42 life | 42..44 FINs seen (orig, reply) | 44..64 reuse generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Meta(u64);

const CLASS_TCP: u64 = 0;
const CLASS_UDP: u64 = 1; // and every protocol without its own timeouts
const CLASS_ICMP: u64 = 2;

// A slot's life: FREE (in the free stack) → INIT (its inserter writes it) → PENDING (both
// entries published, arbitrating) → LIVE, or → ABORTED (lost) → FREE; LIVE → DEAD (its
// killer owns it) → FREE. Only LIVE slots are seen by readers, kills and updates.
const LIFE_FREE: u64 = 0;
const LIFE_INIT: u64 = 1;
const LIFE_LIVE: u64 = 2;
const LIFE_DEAD: u64 = 3;
const LIFE_PENDING: u64 = 4;
const LIFE_ABORTED: u64 = 5;

impl Meta {
    #[inline]
    fn ts(self) -> u32 {
        self.0 as u32
    }
    #[inline]
    fn state(self) -> TcpState {
        TcpState::ALL[(((self.0 >> 32) & 0xf) as usize).min(8)]
    }
    #[inline]
    fn replied(self) -> bool {
        self.0 & (1 << 36) != 0
    }
    #[inline]
    fn class(self) -> u64 {
        (self.0 >> 37) & 3
    }
    #[inline]
    fn life(self) -> u64 {
        (self.0 >> 39) & 7
    }
    #[inline]
    fn fins(self) -> u8 {
        ((self.0 >> 42) & 3) as u8
    }
    #[inline]
    fn reuse(self) -> u64 {
        self.0 >> 44
    }
    #[inline]
    fn with_life(self, life: u64) -> Meta {
        Meta((self.0 & !(7 << 39)) | (life << 39))
    }
    /// The next reuse generation (20 bits: a stale `Hit` would have to outlive 2^20 reuses
    /// of its slot to be mistaken for the current flow).
    #[inline]
    fn bump_gen(self) -> Meta {
        Meta((self.0 & ((1 << 44) - 1)) | (self.reuse().wrapping_add(1) << 44))
    }
    #[inline]
    fn with(self, ts: u32, state: TcpState, fins: u8, replied: bool) -> Meta {
        let keep = self.0 & !(0xffff_ffff | (0xf << 32) | (1 << 36) | (3 << 42));
        Meta(
            keep | u64::from(ts)
                | ((state as u64) << 32)
                | (u64::from(replied) << 36)
                | (u64::from(fins & 3) << 42),
        )
    }
    /// True when a packet with `flags` in direction `dir` at second `now` would leave the
    /// word as it is (what `Conntrack::step` would find, without the state machine): stamped
    /// this second already, replied already or not a reply, and for TCP no SYN, FIN or RST
    /// in a state that only those move.
    #[inline]
    fn steady(self, dir: Dir, flags: u8, now: u32) -> bool {
        const KEEP: u64 = 1 << TcpState::SynSent as u64
            | 1 << TcpState::Established as u64
            | 1 << TcpState::CloseWait as u64
            | 1 << TcpState::TimeWait as u64
            | 1 << TcpState::Close as u64;
        self.ts() >= now
            && (self.replied() || dir == Dir::Original)
            && (self.class() != CLASS_TCP
                || (flags & (SYN | FIN | RST) == 0 && (KEEP >> ((self.0 >> 32) & 0xf)) & 1 != 0))
    }
    fn fresh(reuse: u64, class: u64, ts: u32) -> Meta {
        Meta((reuse << 44) | (LIFE_INIT << 39) | (class << 37) | u64::from(ts))
    }
}

/// A slot's six words as a [`Flow`] (the inverse of [`Conntrack::write_slot`]'s packing).
#[inline]
fn flow_of_words(w: &[u64; 6]) -> Flow {
    Flow {
        orig: Tuple::from_words(w[0], w[1]),
        reply: Tuple::from_words(w[2], w[3]),
        service: (w[4] >> 32) as u32,
        backend: w[4] as u32,
        generation: (w[5] >> 32) as u32,
        mark: w[5] as u32,
    }
}

/// An insert between [`Conntrack::stage`] and [`Conntrack::settle`]: its slot, written and
/// published, with the PENDING `meta` it stored, and its tuples' hashes.
#[derive(Clone, Copy, Debug)]
struct Staged {
    slot: u32,
    meta: Meta,
    ho: u32,
    hr: u32,
}

/// What [`Conntrack::arbitrate`] decided for a staged insert.
#[derive(Debug)]
enum Verdict {
    /// No rival stands: try to go LIVE.
    Win,
    /// A rival wins; what the insert returns: the rival's flow if it holds `orig`, else
    /// `Clash`.
    Lose(Result<Hit, InsertError>),
}

/// What an insert of `flow` that lost to the rival in `slot` (its words and `meta` as read
/// together) returns: the rival's flow if it holds `flow.orig`, in whichever direction (the
/// rival may have been found through `flow.reply` only because its `orig` entry appeared
/// after the scan of that window), else `Clash`.
fn answer(flow: &Flow, slot: u32, w: &[u64; 6], m: Meta) -> Result<Hit, InsertError> {
    answer_hit(
        flow,
        Hit {
            slot,
            dir: Dir::Original,
            flow: flow_of_words(w),
            state: m.state(),
            replied: m.replied(),
            meta: m.0,
        },
    )
}

/// [`answer`] for a flow found as `hit`.
fn answer_hit(flow: &Flow, hit: Hit) -> Result<Hit, InsertError> {
    let dir = if hit.flow.orig == flow.orig {
        Dir::Original
    } else if hit.flow.reply == flow.orig {
        Dir::Reply
    } else {
        return Err(InsertError::Clash);
    };
    Ok(Hit { dir, ..hit })
}

fn class_of(proto: u8) -> u64 {
    match proto {
        6 => CLASS_TCP,
        1 => CLASS_ICMP,
        _ => CLASS_UDP,
    }
}

/// Timeouts flattened for a branch-light lookup: `[tcp state 0..9, udp, udp_stream, icmp]`,
/// and the shortest of them.
#[derive(Clone, Copy, Debug)]
struct TimeoutTable([u32; 12], u32);

impl TimeoutTable {
    fn new(t: &Timeouts) -> Self {
        let all = [
            t.tcp_syn_sent, // None: a flow inserted but not yet updated with its first flags
            t.tcp_syn_sent,
            t.tcp_syn_recv,
            t.tcp_established,
            t.tcp_fin_wait,
            t.tcp_close_wait,
            t.tcp_last_ack,
            t.tcp_time_wait,
            t.tcp_close,
            t.udp,
            t.udp_stream,
            t.icmp,
        ];
        TimeoutTable(all, all.into_iter().min().unwrap_or(0))
    }
    #[inline]
    fn of(&self, m: Meta) -> u32 {
        match m.class() {
            CLASS_TCP => self.0[m.state() as usize],
            CLASS_ICMP => self.0[11],
            _ => self.0[9 + usize::from(m.replied())],
        }
    }
    #[inline]
    fn deadline(&self, m: Meta) -> u64 {
        u64::from(m.ts()) + u64::from(self.of(m))
    }
    #[inline]
    fn expired(&self, m: Meta, now: u32) -> bool {
        // A flow seen within the shortest timeout is live whatever its class and state: the
        // per-packet refresh and lookups mostly decide here, without the table lookup.
        if u64::from(m.ts()) + u64::from(self.1) > u64::from(now) {
            return false;
        }
        u64::from(now) >= self.deadline(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

/// One flow, one cache line: what a lookup reads, nothing else.
#[derive(Default)]
#[repr(C, align(64))]
struct Slot {
    seq: AtomicU64,
    meta: AtomicU64,
    /// orig (2 words), reply (2 words), service|backend, generation|mark.
    w: [AtomicU64; 6],
}

#[derive(Default)]
#[repr(C, align(32))]
struct SlotCounters {
    packets: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

const BUCKET_ENTRIES: usize = 7;

/// One cache line of index: a control word and 7 entries. The control word counts, in bits
/// 32..64, how many tuples whose home is this bucket had to be placed in the following ones
/// (bits 0..32 are unused); while it is 0, a lookup reads this one line and nothing else.
#[derive(Default)]
#[repr(C, align(64))]
struct Bucket {
    ctl: AtomicU64,
    e: [AtomicU64; BUCKET_ENTRIES],
}

const OVERFLOW_ONE: u64 = 1 << 32;
/// A tuple lives in its home bucket or one of the next `PROBE_BUCKETS - 1`.
const PROBE_BUCKETS: usize = 4;

const DIR_BIT: u64 = 1 << 31;
const SLOT_MASK: u64 = DIR_BIT - 1;

#[inline]
fn entry(hash: u32, dir: Dir, slot: u32) -> u64 {
    (u64::from(hash) << 32) | if dir == Dir::Reply { DIR_BIT } else { 0 } | (u64::from(slot) + 1)
}

/// Slots looked at by early drop, like netfilter's `NF_CT_EVICTION_RANGE` of buckets.
const EARLY_DROP_WINDOW: u32 = 64;
/// Seqlock read attempts before a contended slot is treated as a miss.
const READ_TRIES: usize = 8;
const NIL: u32 = u32::MAX;

// repr(C): it lives in the shared segment too (`shm`), whose layout a new build must read.
#[derive(Default)]
#[repr(C)]
struct SharedStats {
    entries: AtomicU64,
    inserts: AtomicU64,
    insert_races: AtomicU64,
    early_drops: AtomicU64,
    expired: AtomicU64,
    full_drops: AtomicU64,
    insert_lost: AtomicU64,
}

/// The shared conntrack table. `Send + Sync`; share it with `Arc`.
///
/// The storage is on the heap ([`Conntrack::new`]) or in a shared-memory segment that a
/// restarted afgate maps again ([`Conntrack::open_shared`], `shm.rs`); the algorithms do not
/// know which.
pub struct Conntrack {
    slots: Region<Slot>,
    counters: Region<SlotCounters>,
    buckets: Region<Bucket>,
    /// Treiber stack of free slots: head = tag << 32 | slot (NIL = empty).
    free_head: Place<CachePadded<AtomicU64>>,
    free_next: Region<AtomicU32>,
    gc_cursor: Place<CachePadded<AtomicU32>>,
    stats: Place<CachePadded<SharedStats>>,
    timeouts: TimeoutTable,
    capacity: u32,
    /// Process-local, not in the shared segment: a successor's workers start after its
    /// predecessor's have stopped (`control/src/handover.rs`), with empty flow caches.
    /// See [`Conntrack::live_epoch`].
    epochs: LiveEpochs,
}

/// Groups of [`Conntrack::live_epoch`], each on its own cache line: a flow going live bumps
/// the two lines of its tuples' groups, and a lookup of a flow cache entry reads one.
const EPOCH_GROUPS: usize = 64;

struct LiveEpochs(Box<[CachePadded<AtomicU64>; EPOCH_GROUPS]>);

impl Default for LiveEpochs {
    fn default() -> Self {
        LiveEpochs(Box::new(core::array::from_fn(|_| {
            CachePadded::new(AtomicU64::new(0))
        })))
    }
}

impl LiveEpochs {
    #[inline(always)]
    fn group(&self, addrs: u64, ports: u32) -> &AtomicU64 {
        let x = (addrs ^ u64::from(ports).rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.0[(x >> 58) as usize & (EPOCH_GROUPS - 1)]
    }

    fn bump(&self, t: &Tuple) {
        let (addrs, ports) = t.addrs_ports();
        self.group(addrs, ports).fetch_add(1, Ordering::Release);
    }
}

impl core::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conntrack")
            .field("capacity", &self.capacity)
            .field("buckets", &self.buckets.len())
            .field("entries", &self.count())
            .finish()
    }
}

// Workers share one table through an `Arc`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Conntrack>();
};

impl Conntrack {
    /// Preallocates the slots, the index and the free stack for `cfg.capacity` flows.
    pub fn new(cfg: Config) -> Self {
        let (cap, nb) = Self::geometry(&cfg);
        let slots: Box<[Slot]> = crate::mem::huge_slice(cap as usize, |_| Slot::default());
        let counters: Box<[SlotCounters]> =
            crate::mem::huge_slice(cap as usize, |_| SlotCounters::default());
        let buckets: Box<[Bucket]> = crate::mem::huge_slice(nb, |_| Bucket::default());
        let free_next: Box<[AtomicU32]> = (0..cap)
            .map(|i| AtomicU32::new(if i + 1 < cap { i + 1 } else { NIL }))
            .collect();
        Conntrack {
            slots: Region::heap(slots),
            counters: Region::heap(counters),
            buckets: Region::heap(buckets),
            free_head: Place::heap(CachePadded::new(AtomicU64::new(0))),
            free_next: Region::heap(free_next),
            gc_cursor: Place::heap(CachePadded::new(AtomicU32::new(0))),
            stats: Place::heap(CachePadded::new(SharedStats::default())),
            timeouts: TimeoutTable::new(&cfg.timeouts),
            capacity: cap,
            epochs: LiveEpochs::default(),
        }
    }

    /// (slots, buckets) for `cfg`: what [`Self::new`] allocates and a shared segment must hold.
    fn geometry(cfg: &Config) -> (u32, usize) {
        let cap = cfg.capacity.clamp(1, (SLOT_MASK - 1) as u32);
        // Two entries per flow at a load of at most 1/3: 6 * cap / 7 buckets.
        let nb = ((u64::from(cap) * 6).div_ceil(BUCKET_ENTRIES as u64)).max(2) as usize;
        (cap, nb)
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// A count that changes whenever a flow goes live with a tuple of addresses `addrs`
    /// (`src << 32 | dst`) and ports `ports` (`sport << 16 | dport`), in either direction,
    /// and now and then for other tuples (64 groups). Read before a lookup that missed, it
    /// tells later whether the miss may still stand: while the count is unchanged, no flow
    /// with that tuple has gone live since (the bump follows the LIVE CAS with Release, so
    /// a reader that sees the old count after its miss saw a table without that flow, and
    /// one that sees the new count also sees the flow). Nothing else turns a miss into a
    /// hit: timeouts are fixed, and a slot is only ever read LIVE after its insert.
    /// `pipeline::flow_cache` keeps untracked flows by it.
    #[inline(always)]
    pub fn live_epoch(&self, addrs: u64, ports: u32) -> u64 {
        self.epochs.group(addrs, ports).load(Ordering::Acquire)
    }

    // ----- free stack -----

    fn pop_free(&self) -> Option<u32> {
        let mut h = self.free_head.load(Ordering::Acquire);
        loop {
            let idx = h as u32;
            if idx == NIL {
                return None;
            }
            // May read a stale `next` if `idx` was popped meanwhile; the tag makes the CAS fail.
            let next = self.free_next[idx as usize].load(Ordering::Relaxed);
            let new = ((h >> 32).wrapping_add(1) << 32) | u64::from(next);
            match self
                .free_head
                .compare_exchange_weak(h, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(idx),
                Err(cur) => h = cur,
            }
        }
    }

    fn push_free(&self, idx: u32) {
        let mut h = self.free_head.load(Ordering::Relaxed);
        loop {
            self.free_next[idx as usize].store(h as u32, Ordering::Relaxed);
            let new = ((h >> 32).wrapping_add(1) << 32) | u64::from(idx);
            match self
                .free_head
                .compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(cur) => h = cur,
            }
        }
    }

    // ----- index -----

    #[inline]
    fn bucket_of(&self, hash: u32) -> usize {
        // Multiply-shift range reduction: the bucket count need not be a power of two.
        ((u64::from(hash) * self.buckets.len() as u64) >> 32) as usize
    }

    /// The entry words a tuple with home bucket `b` may occupy, with the bucket each is in:
    /// its home, then, only if some tuple of this home overflowed, the next buckets.
    #[inline]
    fn window(&self, b: usize) -> impl Iterator<Item = (usize, &AtomicU64)> {
        let n = if self.buckets[b].ctl.load(Ordering::Acquire) >= OVERFLOW_ONE {
            PROBE_BUCKETS
        } else {
            1
        };
        let nb = self.buckets.len();
        (0..n.min(nb)).flat_map(move |k| {
            let bi = (b + k) % nb;
            self.buckets[bi].e.iter().map(move |e| (bi, e))
        })
    }

    // ----- slots -----

    /// A consistent snapshot of a slot's flow and meta, or None if a writer kept it busy.
    #[inline]
    fn read_slot(&self, slot: u32) -> Option<(Flow, Meta)> {
        self.read_words(slot).map(|(w, m)| (flow_of_words(&w), m))
    }

    /// [`Self::read_slot`] as the stored words, so that a lookup compares its tuple as two
    /// `u64`s and decodes the flow only on a match.
    #[inline]
    fn read_words(&self, slot: u32) -> Option<([u64; 6], Meta)> {
        let s = &self.slots[slot as usize];
        for _ in 0..READ_TRIES {
            let s1 = s.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let w: [u64; 6] = core::array::from_fn(|i| s.w[i].load(Ordering::Relaxed));
            let meta = Meta(s.meta.load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == s1 {
                return Some((w, meta));
            }
        }
        None
    }

    /// Writes a flow into a slot its caller owns (popped or killed), leaving it INIT.
    fn write_slot(&self, slot: u32, flow: &Flow, now: u32) {
        let s = &self.slots[slot as usize];
        let seq = s.seq.load(Ordering::Relaxed);
        s.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let (o0, o1) = flow.orig.words();
        let (r0, r1) = flow.reply.words();
        let words = [
            o0,
            o1,
            r0,
            r1,
            (u64::from(flow.service) << 32) | u64::from(flow.backend),
            (u64::from(flow.generation) << 32) | u64::from(flow.mark),
        ];
        for (a, v) in s.w.iter().zip(words) {
            a.store(v, Ordering::Relaxed);
        }
        let reuse = Meta(s.meta.load(Ordering::Relaxed)).reuse();
        s.meta.store(
            Meta::fresh(reuse, class_of(flow.orig.proto), now).0,
            Ordering::Relaxed,
        );
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
        let c = &self.counters[slot as usize];
        for a in c.packets.iter().chain(c.bytes.iter()) {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Finds the live, unexpired flow holding tuple `t` (hash `h`). The packet path: the
    /// home bucket's seven entries in a plain loop, the general [`Self::scan`] only when
    /// some tuple of this home overflowed into the next buckets.
    #[inline]
    fn find(&self, t: &Tuple, h: u32, now: u32) -> Option<Hit> {
        let home = &self.buckets[self.bucket_of(h)];
        if home.ctl.load(Ordering::Acquire) >= OVERFLOW_ONE {
            return self.find_overflowed(t, h, now);
        }
        let sig = u64::from(h) << 32;
        let key = t.words();
        for e in &home.e {
            let v = e.load(Ordering::Acquire);
            if v & !(DIR_BIT | SLOT_MASK) != sig || v == 0 {
                continue;
            }
            if let Some(hit) = self.hit_of(v, key, now) {
                return Some(hit);
            }
        }
        None
    }

    /// [`Self::find`] when the home bucket overflowed: rare at the index's load, and kept out
    /// of line so that the general scan does not bloat the common path's frame.
    #[cold]
    #[inline(never)]
    fn find_overflowed(&self, t: &Tuple, h: u32, now: u32) -> Option<Hit> {
        self.scan(t, h, now, false)
    }

    /// The flow behind index entry `v` if it is live, unexpired and holds `key` (a tuple's
    /// words) in the entry's direction.
    #[inline]
    fn hit_of(&self, v: u64, key: (u64, u64), now: u32) -> Option<Hit> {
        let slot = ((v & SLOT_MASK) - 1) as u32;
        let dir = if v & DIR_BIT != 0 {
            Dir::Reply
        } else {
            Dir::Original
        };
        let (w, m) = self.read_words(slot)?;
        let at = if dir == Dir::Original { 0 } else { 2 };
        if m.life() != LIFE_LIVE || (w[at], w[at + 1]) != key || self.timeouts.expired(m, now) {
            return None;
        }
        Some(Hit {
            slot,
            dir,
            flow: flow_of_words(&w),
            state: m.state(),
            replied: m.replied(),
            meta: m.0,
        })
    }

    /// With `reclaim` (an insert that could not stage), also frees every expired flow that
    /// holds `t`, so a tuple reused after expiry does not pile up dead index entries, and
    /// looks at the whole window so what it frees does not depend on entry order.
    #[inline]
    fn scan(&self, t: &Tuple, h: u32, now: u32, reclaim: bool) -> Option<Hit> {
        let sig = u64::from(h) << 32;
        let mut found = None;
        for (_, e) in self.window(self.bucket_of(h)) {
            let v = e.load(Ordering::Acquire);
            if v & !(DIR_BIT | SLOT_MASK) != sig || v == 0 {
                continue;
            }
            let slot = ((v & SLOT_MASK) - 1) as u32;
            let dir = if v & DIR_BIT != 0 {
                Dir::Reply
            } else {
                Dir::Original
            };
            let Some((flow, m)) = self.read_slot(slot) else {
                continue;
            };
            let tuple = if dir == Dir::Original {
                &flow.orig
            } else {
                &flow.reply
            };
            if m.life() != LIFE_LIVE || tuple != t {
                continue;
            }
            if self.timeouts.expired(m, now) {
                if reclaim && self.kill_if(slot, |m| self.timeouts.expired(m, now)) {
                    self.release(slot);
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if found.is_none() {
                found = Some(Hit {
                    slot,
                    dir,
                    flow,
                    state: m.state(),
                    replied: m.replied(),
                    meta: m.0,
                });
                if !reclaim {
                    break;
                }
            }
        }
        found
    }

    /// Frees the expired flows that have an entry in the window of home bucket `b`.
    fn reclaim_window(&self, b: usize, now: u32) {
        for (_, e) in self.window(b) {
            let v = e.load(Ordering::Relaxed);
            if v == 0 {
                continue;
            }
            let slot = ((v & SLOT_MASK) - 1) as u32;
            if self.kill_if(slot, |m| self.timeouts.expired(m, now)) {
                self.release(slot);
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Claims an empty entry in the window of `h` for `value`, freeing expired flows there
    /// if it is full.
    fn publish_or_reclaim(&self, h: u32, value: u64, now: u32) -> Option<(usize, &AtomicU64)> {
        self.publish(h, value).or_else(|| {
            self.reclaim_window(self.bucket_of(h), now);
            self.publish(h, value)
        })
    }

    /// Claims an empty entry for `value` in its home bucket or the next ones. Returns the
    /// entry and the bucket it is in.
    fn publish(&self, h: u32, value: u64) -> Option<(usize, &AtomicU64)> {
        let home = self.bucket_of(h);
        let nb = self.buckets.len();
        for k in 0..PROBE_BUCKETS.min(nb) {
            let bi = (home + k) % nb;
            if k == 1 {
                // Counted before the entry appears, so a reader that could see the entry
                // is also told to look past the home bucket.
                self.buckets[home]
                    .ctl
                    .fetch_add(OVERFLOW_ONE, Ordering::AcqRel);
            }
            for e in &self.buckets[bi].e {
                if e.load(Ordering::Relaxed) == 0
                    && e.compare_exchange(0, value, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                {
                    return Some((bi, e));
                }
            }
        }
        if nb > 1 {
            self.buckets[home]
                .ctl
                .fetch_sub(OVERFLOW_ONE, Ordering::Relaxed);
        }
        None
    }

    /// Clears the entry `value` of a tuple with hash `h`, and its overflow count.
    fn unpublish(&self, h: u32, value: u64) {
        let home = self.bucket_of(h);
        for (bi, e) in self.window(home) {
            if e.load(Ordering::Relaxed) == value
                && e.compare_exchange(value, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.unpublished(home, bi);
                return;
            }
        }
    }

    #[inline]
    fn unpublished(&self, home: usize, bi: usize) {
        if bi != home {
            self.buckets[home]
                .ctl
                .fetch_sub(OVERFLOW_ONE, Ordering::Relaxed);
        }
    }

    /// Moves a LIVE slot to DEAD if `pred(meta)` holds, clearing its index entries. On
    /// success the caller owns the slot and must reuse it or [`Self::release`] it.
    fn kill_if(&self, slot: u32, pred: impl Fn(Meta) -> bool) -> bool {
        let s = &self.slots[slot as usize];
        let mut m = Meta(s.meta.load(Ordering::Acquire));
        loop {
            if m.life() != LIFE_LIVE || !pred(m) {
                return false;
            }
            let dead = m.with_life(LIFE_DEAD).bump_gen();
            match s
                .meta
                .compare_exchange(m.0, dead.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(cur) => m = Meta(cur),
            }
        }
        // Only the owner writes a slot's fields, and we own it now: the read cannot tear
        // unless an insert is still writing, which LIVE rules out.
        if let Some((flow, _)) = self.read_slot(slot) {
            let ho = flow.orig.hash();
            self.unpublish(ho, entry(ho, Dir::Original, slot));
            if flow.reply != flow.orig {
                let hr = flow.reply.hash();
                self.unpublish(hr, entry(hr, Dir::Reply, slot));
            }
        }
        self.stats.entries.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Returns a slot its caller owns (DEAD, ABORTED, or INIT and never published) to the
    /// free stack.
    fn release(&self, slot: u32) {
        let s = &self.slots[slot as usize];
        let m = Meta(s.meta.load(Ordering::Relaxed));
        s.meta.store(m.with_life(LIFE_FREE).0, Ordering::Release);
        self.push_free(slot);
    }

    /// Frees a slot for an insert when none is free: the first expired flow in a window of
    /// slots, else the least recently seen flow that never saw a reply and is not
    /// established (netfilter's early_drop). Never a replied or established flow.
    fn early_drop(&self, h: u32, now: u32) -> Option<u32> {
        let cap = self.capacity;
        let start = ((u64::from(h) * u64::from(cap)) >> 32) as u32;
        let mut victim: Option<(u32, u32)> = None;
        for i in 0..EARLY_DROP_WINDOW.min(cap) {
            let slot = (start + i) % cap;
            let m = Meta(self.slots[slot as usize].meta.load(Ordering::Relaxed));
            if m.life() != LIFE_LIVE {
                continue;
            }
            if self.timeouts.expired(m, now) {
                if self.kill_if(slot, |m| self.timeouts.expired(m, now)) {
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    return Some(slot);
                }
                continue;
            }
            if evictable(m) && victim.is_none_or(|(_, ts)| m.ts() < ts) {
                victim = Some((slot, m.ts()));
            }
        }
        let (slot, _) = victim?;
        if self.kill_if(slot, evictable) {
            self.stats.early_drops.fetch_add(1, Ordering::Relaxed);
            Some(slot)
        } else {
            None
        }
    }

    // ----- public API -----

    /// The live flow `t` belongs to, in either direction. Expired entries are misses.
    #[inline]
    pub fn lookup(&self, t: &Tuple, now_s: u32) -> Option<Hit> {
        self.find(t, t.hash(), now_s)
    }

    /// Inserts `flow`, stamped `now_s`, in state None (call [`Self::update`] with the first
    /// packet's flags). If a live flow already has `flow.orig` as its original tuple, or
    /// another worker is inserting one at the same time (the Kubernetes UDP DNS race),
    /// returns that flow and inserts nothing, so both translate the same way. If
    /// `flow.orig` is the *reply* tuple of a live flow, the packet raced its own flow's
    /// creation on another worker: that flow is returned with `dir == Reply`, to be handled
    /// as a reply. If `flow.reply` is a tuple of another live flow: `Err(Clash)`. Lock-free:
    /// see the module docs for the arbitration between concurrent inserts.
    pub fn insert(&self, flow: Flow, now_s: u32) -> Result<Hit, InsertError> {
        let (ho, hr) = (flow.orig.hash(), flow.reply.hash());
        match self.try_insert(&flow, ho, hr, now_s) {
            Some(done) => done,
            None => self.insert_again(&flow, ho, hr, now_s),
        }
    }

    /// An insert whose first try was aborted by an insert that withdrew in turn: tries
    /// again until one settles (module docs: each retry follows another insert's
    /// completion). Out of line, so that the first try's code is not a loop body.
    #[cold]
    #[inline(never)]
    fn insert_again(&self, flow: &Flow, ho: u32, hr: u32, now: u32) -> Result<Hit, InsertError> {
        loop {
            if let Some(done) = self.try_insert(flow, ho, hr, now) {
                return done;
            }
        }
    }

    /// Stage, arbitrate, settle. None: aborted with no winner left.
    #[inline(always)]
    fn try_insert(
        &self,
        flow: &Flow,
        ho: u32,
        hr: u32,
        now: u32,
    ) -> Option<Result<Hit, InsertError>> {
        let st = match self.stage(flow, ho, hr, now) {
            Ok(st) => st,
            Err(e) => return Some(self.unstaged(flow, ho, hr, now, e)),
        };
        let verdict = self.arbitrate(&st, flow, now);
        self.settle(&st, flow, verdict, now)
    }

    /// No slot or no index room for `flow`: still the flow holding `orig` if there is one
    /// (the race; arbitration would have found it), `Clash` if another holds `reply`, else
    /// `err` (counted) unless looking freed expired flows and a second try succeeds.
    #[cold]
    #[inline(never)]
    fn unstaged(
        &self,
        flow: &Flow,
        ho: u32,
        hr: u32,
        now: u32,
        err: InsertError,
    ) -> Result<Hit, InsertError> {
        let expired = self.stats.expired.load(Ordering::Relaxed);
        let found = self.scan(&flow.orig, ho, now, true).or_else(|| {
            (flow.reply != flow.orig)
                .then(|| self.scan(&flow.reply, hr, now, true))
                .flatten()
        });
        match found {
            Some(hit) => {
                let r = answer_hit(flow, hit);
                if r.is_ok() {
                    self.stats.insert_races.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            // The scans freed expired holders of our tuples that early drop's window did
            // not reach: room for one more try.
            None if self.stats.expired.load(Ordering::Relaxed) != expired
                && let Ok(st) = self.stage(flow, ho, hr, now) =>
            {
                let verdict = self.arbitrate(&st, flow, now);
                self.settle(&st, flow, verdict, now)
                    .unwrap_or_else(|| self.insert_again(flow, ho, hr, now))
            }
            None => {
                self.stats.full_drops.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// Takes a slot (free, else early drop), writes `flow` into it and publishes both its
    /// entries, then makes it PENDING and fences: ready to [`Self::arbitrate`].
    fn stage(&self, flow: &Flow, ho: u32, hr: u32, now: u32) -> Result<Staged, InsertError> {
        let Some(slot) = self.pop_free().or_else(|| self.early_drop(ho, now)) else {
            return Err(InsertError::Full);
        };
        self.write_slot(slot, flow, now);
        let eo = entry(ho, Dir::Original, slot);
        let Some((pb, po)) = self.publish_or_reclaim(ho, eo, now) else {
            return Err(self.insert_failed(slot));
        };
        if flow.reply != flow.orig
            && self
                .publish_or_reclaim(hr, entry(hr, Dir::Reply, slot), now)
                .is_none()
        {
            // Only we could have written `eo`, and nobody touches an INIT slot's entries.
            if po
                .compare_exchange(eo, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.unpublished(self.bucket_of(ho), pb);
            }
            return Err(self.insert_failed(slot));
        }
        let s = &self.slots[slot as usize];
        let pending = Meta(s.meta.load(Ordering::Relaxed)).with_life(LIFE_PENDING);
        s.meta.store(pending.0, Ordering::Relaxed);
        // The store-buffering fence of the module docs: our entries and PENDING are visible
        // to a rival's scan, or its entries and PENDING to ours.
        fence(Ordering::SeqCst);
        Ok(Staged {
            slot,
            meta: pending,
            ho,
            hr,
        })
    }

    fn insert_failed(&self, slot: u32) -> InsertError {
        self.release(slot);
        InsertError::Full
    }

    /// Scans the windows of a staged insert's tuples for rivals and decides (module docs):
    /// `Lose` to a LIVE rival or a lower PENDING one, else `Win` after aborting every higher
    /// PENDING rival. Looks at `orig` first, so that a rival holding it is the one returned.
    fn arbitrate(&self, st: &Staged, flow: &Flow, now: u32) -> Verdict {
        let n = if flow.reply != flow.orig { 2 } else { 1 };
        let tuples = [(&flow.orig, st.ho), (&flow.reply, st.hr)];
        for &(t, h) in &tuples[..n] {
            let lost = self.find_holder(t, h, st.slot, |slot, w, m| {
                let rival = match m.life() {
                    LIFE_LIVE => self.live_rival(slot, m, now),
                    LIFE_PENDING if slot < st.slot => Some(m),
                    LIFE_PENDING => self.abort(slot, m),
                    _ => None,
                };
                rival.map(|m| answer(flow, slot, w, m))
            });
            if let Some(result) = lost {
                return Verdict::Lose(result);
            }
        }
        Verdict::Win
    }

    /// A LIVE rival read as `m`: itself, unless it has expired (then it is reclaimed, and is
    /// no rival).
    fn live_rival(&self, slot: u32, m: Meta, now: u32) -> Option<Meta> {
        if !self.timeouts.expired(m, now) {
            return Some(m);
        }
        let same = |c: Meta| c.reuse() == m.reuse() && self.timeouts.expired(c, now);
        if self.kill_if(slot, same) {
            self.release(slot);
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Not killed by us: killed by someone else (no rival), or refreshed meanwhile by an
        // `update` through an older hit (a rival again).
        let c = Meta(self.slots[slot as usize].meta.load(Ordering::Acquire));
        (c.life() == LIFE_LIVE && c.reuse() == m.reuse() && !self.timeouts.expired(c, now))
            .then_some(c)
    }

    /// Aborts the PENDING rival in `slot` whose `meta` was read as `m`. None if it is no
    /// rival any more (aborted, by us or another); `Some(meta)` if it went LIVE first.
    fn abort(&self, slot: u32, m: Meta) -> Option<Meta> {
        let aborted = m.with_life(LIFE_ABORTED).bump_gen();
        // Release: the rival's failed LIVE CAS reads this (Acquire) and then looks for us.
        match self.slots[slot as usize].meta.compare_exchange(
            m.0,
            aborted.0,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => None,
            Err(cur) => {
                let c = Meta(cur);
                (c.life() == LIFE_LIVE && c.reuse() == m.reuse()).then_some(c)
            }
        }
    }

    /// Carries out a verdict: goes LIVE, or withdraws and returns the winner. None when the
    /// insert was aborted and its winner withdrew too: the caller starts over.
    fn settle(
        &self,
        st: &Staged,
        flow: &Flow,
        verdict: Verdict,
        now: u32,
    ) -> Option<Result<Hit, InsertError>> {
        let s = &self.slots[st.slot as usize];
        let result = match verdict {
            Verdict::Win => {
                // Counted before it can be killed, so `entries` never dips below zero.
                self.stats.entries.fetch_add(1, Ordering::Relaxed);
                let live = st.meta.with_life(LIFE_LIVE);
                if s.meta
                    .compare_exchange(st.meta.0, live.0, Ordering::Release, Ordering::Acquire)
                    .is_ok()
                {
                    self.stats.inserts.fetch_add(1, Ordering::Relaxed);
                    self.epochs.bump(&flow.orig);
                    self.epochs.bump(&flow.reply);
                    return Some(Ok(Hit {
                        slot: st.slot,
                        dir: Dir::Original,
                        flow: *flow,
                        state: TcpState::None,
                        replied: false,
                        meta: live.0,
                    }));
                }
                // A lower rival aborted us after our scan: it is PENDING or LIVE now, or
                // lost in turn.
                self.stats.entries.fetch_sub(1, Ordering::Relaxed);
                self.withdraw(st, flow);
                self.winner(flow, st, now)?
            }
            Verdict::Lose(result) => {
                // Unless a lower rival did already (and bumped the generation): rivals
                // scanning from now on ignore us instead of yielding to a flow that goes away.
                let _ = s.meta.compare_exchange(
                    st.meta.0,
                    st.meta.with_life(LIFE_ABORTED).bump_gen().0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.withdraw(st, flow);
                result
            }
        };
        if result.is_ok() {
            self.stats.insert_races.fetch_add(1, Ordering::Relaxed);
        }
        Some(result)
    }

    /// Clears an ABORTED insert's entries and frees its slot.
    fn withdraw(&self, st: &Staged, flow: &Flow) {
        self.unpublish(st.ho, entry(st.ho, Dir::Original, st.slot));
        if flow.reply != flow.orig {
            self.unpublish(st.hr, entry(st.hr, Dir::Reply, st.slot));
        }
        self.release(st.slot);
        self.stats.insert_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// After being aborted: the PENDING or LIVE flow holding `orig` (`Ok`) or `reply`
    /// (`Clash`), if any: the insert that aborted us, unless it withdrew in turn.
    fn winner(&self, flow: &Flow, st: &Staged, now: u32) -> Option<Result<Hit, InsertError>> {
        let n = if flow.reply != flow.orig { 2 } else { 1 };
        let tuples = [(&flow.orig, st.ho), (&flow.reply, st.hr)];
        tuples[..n].iter().find_map(|&(t, h)| {
            self.find_holder(t, h, NIL, |slot, w, m| {
                let standing = m.life() == LIFE_PENDING
                    || (m.life() == LIFE_LIVE && !self.timeouts.expired(m, now));
                standing.then(|| answer(flow, slot, w, m))
            })
        })
    }

    /// The first `Some` that `f` returns for the slots other than `skip` named by entries
    /// in the window of tuple `t` (hash `h`) that hold `t` in the entry's direction, each
    /// read consistently (words and `meta`), whatever its life. A slot that a writer keeps
    /// busy is passed over: it is being rewritten, so the flow it held is gone. Plain loops
    /// rather than [`Self::window`]'s iterator: this runs twice per insert.
    #[inline]
    fn find_holder<R>(
        &self,
        t: &Tuple,
        h: u32,
        skip: u32,
        mut f: impl FnMut(u32, &[u64; 6], Meta) -> Option<R>,
    ) -> Option<R> {
        let sig = u64::from(h) << 32;
        let key = t.words();
        let home = self.bucket_of(h);
        let nb = self.buckets.len();
        let n = if self.buckets[home].ctl.load(Ordering::Acquire) >= OVERFLOW_ONE {
            PROBE_BUCKETS.min(nb)
        } else {
            1
        };
        for k in 0..n {
            for e in &self.buckets[(home + k) % nb].e {
                let v = e.load(Ordering::Acquire);
                if v & !(DIR_BIT | SLOT_MASK) != sig || v == 0 {
                    continue;
                }
                let slot = ((v & SLOT_MASK) - 1) as u32;
                if slot == skip {
                    continue;
                }
                let Some((w, m)) = self.read_words(slot) else {
                    continue;
                };
                let at = if v & DIR_BIT != 0 { 2 } else { 0 };
                if (w[at], w[at + 1]) == key
                    && let Some(r) = f(slot, &w, m)
                {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Per packet of a tracked flow: refreshes the timestamp, advances the TCP state on
    /// `tcp_flags` (0 for non-TCP) in direction `dir`, marks the flow replied when
    /// `dir == Reply`, and counts the packet and its bytes. A no-op if `hit.slot` no longer
    /// holds `hit.flow` (removed or expired and reused meanwhile).
    #[inline]
    pub fn update(&self, hit: &Hit, dir: Dir, tcp_flags: u8, bytes: u32, now_s: u32) {
        self.advance(hit.flow_ref(), dir, tcp_flags, bytes, now_s, false);
    }

    /// [`Self::update`] for a flow found by an earlier lookup and remembered as `r` (the
    /// per-worker flow cache, `pipeline::flow_cache`), standing in for this packet's lookup:
    /// false, and nothing changed, unless the slot still holds that flow, live and
    /// unexpired at `now_s` — exactly when the lookup would have found it.
    #[inline]
    pub fn refresh(&self, r: FlowRef, dir: Dir, tcp_flags: u8, bytes: u32, now_s: u32) -> bool {
        self.advance(r, dir, tcp_flags, bytes, now_s, true)
    }

    // Always inlined: the flow cache's hit is mostly this, and its steady case is short.
    #[inline(always)]
    fn advance(
        &self,
        r: FlowRef,
        dir: Dir,
        tcp_flags: u8,
        bytes: u32,
        now_s: u32,
        unexpired: bool,
    ) -> bool {
        let Some(slot) = self.slots.get(r.slot as usize) else {
            return false;
        };
        // Every kill bumps the reuse generation, so a slot that is LIVE in the generation
        // the lookup saw still holds its flow: no second seqlock read of the flow.
        let m = Meta(slot.meta.load(Ordering::Relaxed));
        if m.life() != LIFE_LIVE || m.reuse() != r.reuse {
            return false;
        }
        // A refresh stands in for a lookup: the slot still holds the tuple, unexpired. A LIVE
        // slot's words change only after a kill, so no seqlock read is needed here.
        if unexpired {
            let at = 2 * dir.idx();
            let w = (
                slot.w[at].load(Ordering::Relaxed),
                slot.w[at + 1].load(Ordering::Relaxed),
            );
            if w != r.key || self.timeouts.expired(m, now_s) {
                return false;
            }
        }
        if !m.steady(dir, tcp_flags, now_s) && !self.step(slot, r.reuse, m, dir, tcp_flags, now_s) {
            return false;
        }
        let c = &self.counters[r.slot as usize];
        c.packets[dir.idx()].fetch_add(1, Ordering::Relaxed);
        c.bytes[dir.idx()].fetch_add(u64::from(bytes), Ordering::Relaxed);
        true
    }

    /// [`Self::advance`]'s `meta` change (timestamp, TCP state, replied), by CAS from `m`;
    /// false if the flow was killed meanwhile. Out of line: a flow's steady packets skip it.
    #[inline(never)]
    fn step(
        &self,
        slot: &Slot,
        reuse: u64,
        mut m: Meta,
        dir: Dir,
        tcp_flags: u8,
        now_s: u32,
    ) -> bool {
        loop {
            let (state, fins) = if m.class() == CLASS_TCP {
                tcp::next(m.state(), m.fins(), dir, tcp_flags)
            } else {
                (m.state(), m.fins())
            };
            let replied = m.replied() || dir == Dir::Reply;
            let next = m.with(m.ts().max(now_s), state, fins, replied);
            if next == m {
                return true;
            }
            match slot
                .meta
                .compare_exchange_weak(m.0, next.0, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(cur) => {
                    m = Meta(cur);
                    if m.life() != LIFE_LIVE || m.reuse() != reuse {
                        return false;
                    }
                }
            }
        }
    }

    /// Removes the flow in `slot` (e.g. from `hit.slot`). False if it was not live.
    pub fn remove(&self, slot: u32) -> bool {
        if slot >= self.capacity || !self.kill_if(slot, |_| true) {
            return false;
        }
        self.release(slot);
        true
    }

    /// Incremental garbage collection: looks at up to `budget` slots from a cursor and frees
    /// the expired ones. Runs beside the workers (control thread). Returns the number freed.
    pub fn gc(&self, now_s: u32, budget: u32) -> u32 {
        let cap = self.capacity;
        let budget = budget.min(cap);
        let start = self.gc_cursor.fetch_add(budget, Ordering::Relaxed) % cap;
        let mut freed = 0;
        for i in 0..budget {
            let slot = ((u64::from(start) + u64::from(i)) % u64::from(cap)) as u32;
            let m = Meta(self.slots[slot as usize].meta.load(Ordering::Relaxed));
            if m.life() == LIFE_LIVE
                && self.timeouts.expired(m, now_s)
                && self.kill_if(slot, |m| self.timeouts.expired(m, now_s))
            {
                self.release(slot);
                freed += 1;
            }
        }
        self.stats
            .expired
            .fetch_add(u64::from(freed), Ordering::Relaxed);
        freed
    }

    /// Removes every flow. Returns how many were removed.
    pub fn flush(&self) -> u32 {
        let mut n = 0;
        for slot in 0..self.capacity {
            if self.remove(slot) {
                n += 1;
            }
        }
        n
    }

    /// Live slots, including expired ones gc has not reclaimed yet.
    pub fn count(&self) -> u64 {
        self.stats.entries.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> Stats {
        let s = &self.stats;
        Stats {
            entries: s.entries.load(Ordering::Relaxed),
            inserts: s.inserts.load(Ordering::Relaxed),
            insert_races: s.insert_races.load(Ordering::Relaxed),
            early_drops: s.early_drops.load(Ordering::Relaxed),
            expired: s.expired.load(Ordering::Relaxed),
            full_drops: s.full_drops.load(Ordering::Relaxed),
            insert_lost: s.insert_lost.load(Ordering::Relaxed),
            capacity: u64::from(self.capacity),
        }
    }

    fn view(&self, slot: u32, now: u32) -> Option<EntryView> {
        let (flow, m) = self.read_slot(slot)?;
        if m.life() != LIFE_LIVE || self.timeouts.expired(m, now) {
            return None;
        }
        let c = &self.counters[slot as usize];
        Some(EntryView {
            slot,
            orig: flow.orig,
            reply: flow.reply,
            proto: flow.orig.proto,
            state: m.state(),
            timeout_left: (self.timeouts.deadline(m) - u64::from(now)) as u32,
            replied: m.replied(),
            packets: [0, 1].map(|d| c.packets[d].load(Ordering::Relaxed)),
            bytes: [0, 1].map(|d| c.bytes[d].load(Ordering::Relaxed)),
            service: flow.service,
            backend: flow.backend,
            generation: flow.generation,
            mark: flow.mark,
        })
    }

    /// Every live, unexpired flow (for `ctl conntrack list`). Scans the whole table.
    pub fn entries(&self, now_s: u32) -> Vec<EntryView> {
        (0..self.capacity)
            .filter_map(|s| self.view(s, now_s))
            .collect()
    }

    /// Flows of (service, backend): (active = TCP established, inactive = the rest), as
    /// `ipvsadm -Ln` counts ActiveConn/InActConn. Scans the whole table.
    pub fn backend_conns(&self, service: u32, backend: u32, now_s: u32) -> (u64, u64) {
        let (mut active, mut inactive) = (0, 0);
        for slot in 0..self.capacity {
            let Some((flow, m)) = self.read_slot(slot) else {
                continue;
            };
            if m.life() != LIFE_LIVE
                || self.timeouts.expired(m, now_s)
                || flow.service != service
                || flow.backend != backend
            {
                continue;
            }
            if m.class() == CLASS_TCP && m.state() == TcpState::Established {
                active += 1;
            } else {
                inactive += 1;
            }
        }
        (active, inactive)
    }
}

/// Early drop may take a flow that never saw a reply and is not established.
fn evictable(m: Meta) -> bool {
    !m.replied() && m.state() != TcpState::Established
}
