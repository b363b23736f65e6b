//! Loader for `afgate_steer` (`src/bpf/steer.bpf.c`): one loaded instance
//! per dataplane port, attached through netlink so that it fails open.

use std::collections::HashSet;
use std::mem::{MaybeUninit, offset_of};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::error::NO_DEV;
use crate::prog::{self, TestRun};
use crate::skel::steer::{SteerSkelBuilder, types};
use crate::xdp::{self, ModeRequest, XdpMode};
use crate::{Error, ifindex};

/// `STEER_ONLY_OWN_MAC` in `consts.h`.
const STEER_ONLY_OWN_MAC: u16 = 1 << 0;
/// `AFG_MAX_QUEUES` in `consts.h`: entries of the `xsks` map.
pub const MAX_QUEUES: u32 = 64;
/// `AFG_MAX_PASSTHRU` in `consts.h`: entries of the `passthru` map.
pub const MAX_PASSTHRU: usize = 1024;

/// Mirror of `struct steer_cfg` (structs.h). Must be kept in sync.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SteerCfgRaw {
    own_mac: [u8; 6],
    flags: u16,
}
const _: () = assert!(size_of::<SteerCfgRaw>() == 8);
const _: () = assert!(offset_of!(SteerCfgRaw, flags) == 6);
// Against the type bpftool generated from the object's BTF.
const _: () = assert!(size_of::<SteerCfgRaw>() == size_of::<types::steer_cfg>());
const _: () = assert!(offset_of!(SteerCfgRaw, flags) == offset_of!(types::steer_cfg, flags));

impl SteerCfgRaw {
    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&self.own_mac);
        b[6..].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// Mirror of `struct pass_key` (structs.h); addr and port in network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct PassKeyRaw {
    addr: [u8; 4],
    port: [u8; 2],
    proto: u8,
    pad: u8,
}
const _: () = assert!(size_of::<PassKeyRaw>() == 8);
const _: () = assert!(offset_of!(PassKeyRaw, port) == 4);
const _: () = assert!(offset_of!(PassKeyRaw, proto) == 6);
const _: () = assert!(size_of::<PassKeyRaw>() == size_of::<types::pass_key>());
const _: () = assert!(offset_of!(PassKeyRaw, port) == offset_of!(types::pass_key, port));
const _: () = assert!(offset_of!(PassKeyRaw, proto) == offset_of!(types::pass_key, proto));

impl PassKeyRaw {
    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.addr);
        b[4..6].copy_from_slice(&self.port);
        b[6] = self.proto;
        b[7] = self.pad;
        b
    }
}

/// IPv4 traffic the kernel owns: destination `addr`, `port` (0 = any port)
/// and IP `proto` (0 = any protocol; then `port` must be 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PassRule {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl PassRule {
    /// TCP to `addr:port` (e.g. the node address and 22 for SSH).
    pub fn tcp(addr: Ipv4Addr, port: u16) -> Self {
        PassRule {
            addr,
            port,
            proto: 6,
        }
    }
    /// UDP to `addr:port`.
    pub fn udp(addr: Ipv4Addr, port: u16) -> Self {
        PassRule {
            addr,
            port,
            proto: 17,
        }
    }
    /// Everything to `addr`.
    pub fn host(addr: Ipv4Addr) -> Self {
        PassRule {
            addr,
            port: 0,
            proto: 0,
        }
    }

    fn key(&self) -> PassKeyRaw {
        PassKeyRaw {
            addr: self.addr.octets(),
            port: self.port.to_be_bytes(),
            proto: self.proto,
            pad: 0,
        }
    }
}

/// Per-port configuration of the steering program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// The port's MAC address (what `only_own_mac` compares against).
    pub own_mac: [u8; 6],
    /// Pass unicast frames for any other MAC to the kernel (e.g. a port
    /// shared with bridged guests); broadcast/multicast are still steered.
    pub only_own_mac: bool,
    /// Kernel-owned IPv4 destinations; replaced with
    /// [`PortSteering::set_passthru`].
    pub passthru: Vec<PassRule>,
}

/// The verdict counters, mirror of `enum steer_stat` (consts.h).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SteerStat {
    Redirect = 0,
    PassLacp = 1,
    PassLinkLocal = 2,
    PassOtherMac = 3,
    PassRule = 4,
    PassNoSocket = 5,
    Malformed = 6,
    HeldDrop = 7,
}

impl SteerStat {
    /// Every counter, in map order. Its length must equal the `stats` map's
    /// max_entries (`STAT_MAX`), which [`SteerProgram`] checks at load.
    pub const ALL: [SteerStat; 8] = [
        SteerStat::Redirect,
        SteerStat::PassLacp,
        SteerStat::PassLinkLocal,
        SteerStat::PassOtherMac,
        SteerStat::PassRule,
        SteerStat::PassNoSocket,
        SteerStat::Malformed,
        SteerStat::HeldDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SteerStat::Redirect => "redirect",
            SteerStat::PassLacp => "pass_lacp",
            SteerStat::PassLinkLocal => "pass_link_local",
            SteerStat::PassOtherMac => "pass_other_mac",
            SteerStat::PassRule => "pass_rule",
            SteerStat::PassNoSocket => "pass_no_socket",
            SteerStat::Malformed => "malformed",
            SteerStat::HeldDrop => "held_drop",
        }
    }
}

/// Counters of one port, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Frames redirected to an AF_XDP socket.
    pub redirect: u64,
    /// LACP (slow protocols) frames passed to the kernel.
    pub pass_lacp: u64,
    /// 01:80:c2:00:00:0x frames (STP, LLDP) passed to the kernel.
    pub pass_link_local: u64,
    /// Unicast for another MAC passed (only with `only_own_mac`).
    pub pass_other_mac: u64,
    /// IPv4 frames matching a passthru rule.
    pub pass_rule: u64,
    /// Frames for the dataplane passed because no socket is bound on their
    /// queue (the fail-open fallback).
    pub pass_no_socket: u64,
    /// Truncated frames, passed to the kernel.
    pub malformed: u64,
    /// Frames for the dataplane dropped because no socket was bound on their queue while a
    /// handover hold ran ([`SteerProgram::set_hold`]).
    pub held_drop: u64,
}

impl SteerStats {
    pub fn get(&self, stat: SteerStat) -> u64 {
        match stat {
            SteerStat::Redirect => self.redirect,
            SteerStat::PassLacp => self.pass_lacp,
            SteerStat::PassLinkLocal => self.pass_link_local,
            SteerStat::PassOtherMac => self.pass_other_mac,
            SteerStat::PassRule => self.pass_rule,
            SteerStat::PassNoSocket => self.pass_no_socket,
            SteerStat::Malformed => self.malformed,
            SteerStat::HeldDrop => self.held_drop,
        }
    }

    fn slot(&mut self, stat: SteerStat) -> &mut u64 {
        match stat {
            SteerStat::Redirect => &mut self.redirect,
            SteerStat::PassLacp => &mut self.pass_lacp,
            SteerStat::PassLinkLocal => &mut self.pass_link_local,
            SteerStat::PassOtherMac => &mut self.pass_other_mac,
            SteerStat::PassRule => &mut self.pass_rule,
            SteerStat::PassNoSocket => &mut self.pass_no_socket,
            SteerStat::Malformed => &mut self.malformed,
            SteerStat::HeldDrop => &mut self.held_drop,
        }
    }
}

/// A loaded, configured, not (necessarily) attached instance of
/// `afgate_steer`. Holds the program fd and its map handles only; the
/// skeleton is dropped right after load (see the crate docs).
///
/// Useful on its own for `BPF_PROG_TEST_RUN` ([`SteerProgram::test_run`]).
#[derive(Debug)]
pub struct SteerProgram {
    /// Device name for errors, or [`NO_DEV`].
    label: String,
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    cfg: MapHandle,
    passthru: MapHandle,
    stats: MapHandle,
    hold_until: MapHandle,
}

impl SteerProgram {
    /// Load a fresh instance and write `cfg` into its maps.
    pub fn load(cfg: &SteerConfig) -> Result<Self, Error> {
        Self::load_labelled(NO_DEV, cfg)
    }

    fn load_labelled(label: &str, cfg: &SteerConfig) -> Result<Self, Error> {
        let mut storage = MaybeUninit::uninit();
        let open = SteerSkelBuilder::default()
            .open(&mut storage)
            .map_err(Error::bpf(label, "open steer object"))?;
        let skel = open
            .load()
            .map_err(Error::bpf(label, "load afgate_steer"))?;
        let prog = skel
            .progs
            .afgate_steer
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Os {
                dev: label.to_owned(),
                op: "dup program fd",
                source,
            })?;
        let handle =
            |m: &libbpf_rs::MapMut<'_>, op| MapHandle::try_from(m).map_err(Error::bpf(label, op));
        let this = SteerProgram {
            label: label.to_owned(),
            prog_id: prog::prog_id(label, prog.as_fd())?,
            prog,
            xsks: handle(&skel.maps.xsks, "dup xsks map fd")?,
            cfg: handle(&skel.maps.cfg, "dup cfg map fd")?,
            passthru: handle(&skel.maps.passthru, "dup passthru map fd")?,
            stats: handle(&skel.maps.stats, "dup stats map fd")?,
            hold_until: handle(&skel.maps.hold_until, "dup hold_until map fd")?,
        };
        // Program and maps live on through `this`'s fds.
        drop(skel);

        let n = this.stats.max_entries();
        if n as usize != SteerStat::ALL.len() {
            return Err(this.invalid(
                "check stats map",
                format!("STAT_MAX is {n}, SteerStat has {}", SteerStat::ALL.len()),
            ));
        }
        let raw = SteerCfgRaw {
            own_mac: cfg.own_mac,
            flags: if cfg.only_own_mac {
                STEER_ONLY_OWN_MAC
            } else {
                0
            },
        };
        this.cfg
            .update(&0u32.to_ne_bytes(), &raw.to_bytes(), MapFlags::ANY)
            .map_err(Error::bpf(label, "write cfg map"))?;
        this.set_passthru(&cfg.passthru)?;
        Ok(this)
    }

    fn invalid(&self, op: &'static str, reason: String) -> Error {
        Error::Invalid {
            dev: self.label.clone(),
            op,
            reason,
        }
    }

    /// The kernel's program id.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// Bind the AF_XDP socket `xsk_fd` to rx queue `queue` (the kernel takes
    /// its own reference; the slot empties when the socket closes).
    pub fn register_xsk(&self, queue: u32, xsk_fd: RawFd) -> Result<(), Error> {
        if queue >= MAX_QUEUES {
            return Err(self.invalid("register xsk", format!("queue {queue} >= {MAX_QUEUES}")));
        }
        let fd = u32::try_from(xsk_fd)
            .map_err(|_| self.invalid("register xsk", format!("bad fd {xsk_fd}")))?;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf(&self.label, "register xsk"))
    }

    /// Empty the slot of rx queue `queue` (frames then fall back to the
    /// kernel). Not an error if it was empty.
    pub fn unregister_xsk(&self, queue: u32) -> Result<(), Error> {
        if queue >= MAX_QUEUES {
            return Err(self.invalid("unregister xsk", format!("queue {queue} >= {MAX_QUEUES}")));
        }
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::bpf(&self.label, "unregister xsk")(e)),
        }
    }

    /// Replace the passthru set with `rules`. New rules are inserted before
    /// old ones are removed, so a rule present in both sets never lapses
    /// (an SSH session to the node is never steered away mid-update).
    pub fn set_passthru(&self, rules: &[PassRule]) -> Result<(), Error> {
        let op = "set passthru";
        let mut want = HashSet::with_capacity(rules.len());
        for r in rules {
            if r.proto == 0 && r.port != 0 {
                return Err(self.invalid(op, format!("{r:?}: a port needs a protocol")));
            }
            want.insert(r.key().to_bytes());
        }
        if want.len() > MAX_PASSTHRU {
            return Err(self.invalid(op, format!("{} rules > {MAX_PASSTHRU}", want.len())));
        }
        for k in &want {
            self.passthru
                .update(k, &[1u8], MapFlags::ANY)
                .map_err(Error::bpf(&self.label, op))?;
        }
        let stale: Vec<Vec<u8>> = self
            .passthru
            .keys()
            .filter(|k| !want.contains(k.as_slice()))
            .collect();
        for k in stale {
            match self.passthru.delete(&k) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::bpf(&self.label, op)(e)),
            }
        }
        Ok(())
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<SteerStats, Error> {
        read_stats(&self.stats, &self.label)
    }

    /// Start a handover hold lasting `hold` from now: frames for the dataplane whose queue
    /// has no socket are dropped (counted in [`SteerStats::held_drop`]) instead of passed to
    /// the kernel, until [`Self::clear_hold`] or the deadline, whichever comes first.
    pub fn set_hold(&self, hold: Duration) -> Result<(), Error> {
        write_hold(&self.hold_until, &self.label, hold_deadline(hold))
    }

    /// End a hold: the fail-open fallback to the kernel applies again.
    pub fn clear_hold(&self) -> Result<(), Error> {
        write_hold(&self.hold_until, &self.label, 0)
    }

    /// Run the program once over `frame` with `BPF_PROG_TEST_RUN` (rx queue
    /// 0, counters updated as for a real frame); `repeat` > 1 for a timing.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRun, Error> {
        prog::test_run(&self.label, self.prog.as_fd(), frame, repeat)
    }
}

fn read_stats(map: &MapHandle, label: &str) -> Result<SteerStats, Error> {
    let mut s = SteerStats::default();
    for stat in SteerStat::ALL {
        let per_cpu = map
            .lookup_percpu(&(stat as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf(label, "read stats map"))?
            .unwrap_or_default();
        *s.slot(stat) = per_cpu
            .iter()
            .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
            .sum();
    }
    Ok(s)
}

/// `now + hold` on the clock of `bpf_ktime_get_ns()` (CLOCK_MONOTONIC), in ns; never 0
/// (which means off).
fn hold_deadline(hold: Duration) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    let hold = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
    now.saturating_add(hold).max(1)
}

fn write_hold(map: &MapHandle, label: &str, deadline_ns: u64) -> Result<(), Error> {
    map.update(
        &0u32.to_ne_bytes(),
        &deadline_ns.to_ne_bytes(),
        MapFlags::ANY,
    )
    .map_err(Error::bpf(label, "write hold_until map"))
}

/// The maps of the `afgate_steer` instance a takeover replaces (a predecessor's).
#[derive(Debug)]
struct Predecessor {
    xsks: MapHandle,
    /// Absent in a predecessor built before the hold existed: then no hold.
    hold_until: Option<MapHandle>,
    stats: Option<MapHandle>,
    /// Whether we set a hold there that is not cleared yet.
    holding: bool,
}

/// `afgate_steer` attached to one port.
///
/// Attached with netlink, not a bpf_link: if the process dies without
/// detaching (SIGKILL, abort), the program stays, its XSKMAP empties as the
/// sockets close, and every frame goes to the kernel (fail-open). The next
/// [`PortSteering::attach`] replaces the stale program.
///
/// [`PortSteering::detach`] detaches explicitly and reports errors; `Drop`
/// detaches too (best effort, errors printed to stderr). Either removes the
/// program only if it is still this one.
#[derive(Debug)]
pub struct PortSteering {
    prog: SteerProgram,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    replaced_stale: bool,
    attached: bool,
    /// The maps of the program a takeover will replace ([`Self::adopt_attached_xsks`]):
    /// sockets registered in its XSKMAP carry traffic before our own program is installed;
    /// its hold covers the gap before they are registered. Kept until the hold is cleared.
    predecessor: Option<Predecessor>,
}

impl PortSteering {
    /// Load an instance for `ifname`, remove any XDP program already on it
    /// (any mode: a stale one from a crashed run) and attach in `mode`.
    pub fn attach(ifname: &str, cfg: &SteerConfig, mode: ModeRequest) -> Result<Self, Error> {
        let mut s = Self::load(ifname, cfg)?;
        s.install(mode)?;
        Ok(s)
    }

    /// Load an instance for `ifname` without attaching it yet: a restart registers its
    /// sockets in the new XSKMAP first and then [`Self::install`]s, so the program it
    /// replaces is swapped for one that already has its sockets (and the slow program load
    /// happens before the old process lets go of the queues).
    pub fn load(ifname: &str, cfg: &SteerConfig) -> Result<Self, Error> {
        let idx = ifindex(ifname)?;
        let prog = SteerProgram::load_labelled(ifname, cfg)?;
        Ok(PortSteering {
            prog,
            ifname: ifname.to_owned(),
            ifindex: idx,
            mode: XdpMode::Native,
            replaced_stale: false,
            attached: false,
            predecessor: None,
        })
    }

    /// Finds the `xsks` map of the `afgate_steer` instance attached to the device now (a
    /// predecessor's), so that [`Self::register_xsk`] also registers there: a takeover's
    /// sockets then receive as soon as they are registered (one map update per queue),
    /// and installing our own program (whose map holds the same sockets) happens after
    /// the gap. Returns whether one was found. Slow (walks the kernel's programs): call it
    /// before the predecessor lets go of the queues.
    pub fn adopt_attached_xsks(&mut self) -> Result<bool, Error> {
        let op = "find the attached program's xsks map";
        let a = xdp::query(&self.ifname, self.ifindex)?;
        let id = if a.drv != 0 { a.drv } else { a.skb };
        if id == 0 {
            return Ok(false);
        }
        let opts = libbpf_rs::query::ProgInfoQueryOptions::default().include_map_ids(true);
        let Some(info) = libbpf_rs::query::ProgInfoIter::with_query_opts(opts).find(|p| p.id == id)
        else {
            return Ok(false);
        };
        let (mut xsks, mut hold_until, mut stats) = (None, None, None);
        for map_id in info.map_ids {
            let m = MapHandle::from_map_id(map_id).map_err(Error::bpf(&self.ifname, op))?;
            let ty = m.map_type();
            if ty == libbpf_rs::MapType::Xskmap && m.name() == "xsks" {
                xsks = Some(m);
            } else if ty == libbpf_rs::MapType::Array
                && m.name() == "hold_until"
                && m.value_size() == 8
            {
                hold_until = Some(m);
            } else if ty == libbpf_rs::MapType::PercpuArray && m.name() == "stats" {
                stats = Some(m);
            }
        }
        let Some(xsks) = xsks else {
            return Ok(false);
        };
        self.predecessor = Some(Predecessor {
            xsks,
            hold_until,
            stats,
            holding: false,
        });
        Ok(true)
    }

    /// Starts a hold of `hold` in the adopted predecessor's program
    /// ([`SteerProgram::set_hold`]): while its sockets are gone and ours are not registered
    /// yet, frames for the dataplane are dropped (TCP retransmits them) instead of reaching a
    /// kernel that would forward them un-NATed or reset NATed flows. Returns whether a hold
    /// was set (false: nothing adopted, or a predecessor without hold support).
    pub fn hold_predecessor(&mut self, hold: Duration) -> Result<bool, Error> {
        let Some(p) = &mut self.predecessor else {
            return Ok(false);
        };
        let Some(m) = &p.hold_until else {
            return Ok(false);
        };
        write_hold(m, &self.ifname, hold_deadline(hold))?;
        p.holding = true;
        Ok(true)
    }

    /// Ends the hold in the predecessor's program and in ours (call once our sockets are
    /// registered and our program installed) and forgets the predecessor. Returns the frames
    /// the predecessor's program dropped under the hold (0 without one).
    pub fn end_hold(&mut self) -> Result<u64, Error> {
        let mut held = 0;
        if let Some(p) = self.predecessor.take() {
            if let Some(m) = &p.hold_until
                && p.holding
            {
                write_hold(m, &self.ifname, 0)?;
            }
            if let Some(m) = &p.stats {
                held = read_stats(m, &self.ifname)?.held_drop;
            }
        }
        self.prog.clear_hold()?;
        Ok(held)
    }

    /// Attach a [`Self::load`]ed instance in `mode`, removing any XDP program already on
    /// the device (any mode: a stale one from a crashed run, or a predecessor's).
    pub fn install(&mut self, mode: ModeRequest) -> Result<(), Error> {
        let (ifname, idx) = (self.ifname.as_str(), self.ifindex);
        let stale = xdp::query(ifname, idx)?;
        // One program in a mode we may use (a predecessor's, or a crashed run's): swap it.
        let in_place = match (mode, stale.drv != 0, stale.skb != 0, stale.hw != 0) {
            (ModeRequest::Native | ModeRequest::Auto, true, false, false) => Some(XdpMode::Native),
            (ModeRequest::Skb | ModeRequest::Auto, false, true, false) => Some(XdpMode::Skb),
            _ => None,
        };
        if let Some(m) = in_place {
            xdp::replace(ifname, idx, self.prog.prog.as_fd(), m)?;
            eprintln!(
                "afgate-bpf: {ifname}: replaced XDP program id {} in place",
                stale.drv.max(stale.skb)
            );
            self.mode = m;
            self.replaced_stale = true;
            self.attached = true;
            return Ok(());
        }
        let replaced_stale = xdp::detach_all(ifname, idx)?;
        if replaced_stale {
            eprintln!(
                "afgate-bpf: {ifname}: removed stale XDP program(s) \
                 (native id {}, skb id {}, offload id {})",
                stale.drv, stale.skb, stale.hw
            );
        }
        self.mode = xdp::attach(ifname, idx, self.prog.prog.as_fd(), mode)?;
        self.replaced_stale = replaced_stale;
        self.attached = true;
        Ok(())
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }
    /// Whether attach removed a program that was already on the device.
    pub fn replaced_stale(&self) -> bool {
        self.replaced_stale
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
    /// The attached program's id (as in `ip link`, [`crate::xdp_attached`]).
    pub fn prog_id(&self) -> u32 {
        self.prog.prog_id()
    }
    /// The loaded program (test runs, ...).
    pub fn program(&self) -> &SteerProgram {
        &self.prog
    }
    /// See [`SteerProgram::register_xsk`]; also in the predecessor's map, if adopted.
    pub fn register_xsk(&self, queue: u32, xsk_fd: RawFd) -> Result<(), Error> {
        self.prog.register_xsk(queue, xsk_fd)?;
        if let Some(Predecessor { xsks: m, .. }) = &self.predecessor {
            let fd = u32::try_from(xsk_fd).map_err(|_| {
                self.prog
                    .invalid("register xsk", format!("bad fd {xsk_fd}"))
            })?;
            m.update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
                .map_err(Error::bpf(
                    &self.ifname,
                    "register xsk in the predecessor's map",
                ))?;
        }
        Ok(())
    }
    /// See [`SteerProgram::unregister_xsk`].
    pub fn unregister_xsk(&self, queue: u32) -> Result<(), Error> {
        self.prog.unregister_xsk(queue)
    }
    /// See [`SteerProgram::set_passthru`].
    pub fn set_passthru(&self, rules: &[PassRule]) -> Result<(), Error> {
        self.prog.set_passthru(rules)
    }
    /// See [`SteerProgram::stats`].
    pub fn stats(&self) -> Result<SteerStats, Error> {
        self.prog.stats()
    }

    /// Detach; returns whether our program was still attached (false if
    /// the device is gone or someone else replaced it, which is left alone).
    pub fn detach(mut self) -> Result<bool, Error> {
        self.attached = false;
        xdp::detach_if_ours(
            &self.ifname,
            self.ifindex,
            self.prog.prog.as_fd(),
            self.mode,
        )
    }
}

impl Drop for PortSteering {
    fn drop(&mut self) {
        // A takeover that failed before its program took over: give the predecessor's
        // fallback back now rather than at the deadline.
        if let Some(Predecessor {
            hold_until: Some(m),
            holding: true,
            ..
        }) = &self.predecessor
            && let Err(e) = write_hold(m, &self.ifname, 0)
        {
            eprintln!("afgate-bpf: dropping PortSteering: {e}");
        }
        if self.attached
            && let Err(e) = xdp::detach_if_ours(
                &self.ifname,
                self.ifindex,
                self.prog.prog.as_fd(),
                self.mode,
            )
        {
            eprintln!("afgate-bpf: dropping PortSteering: {e}");
        }
    }
}
