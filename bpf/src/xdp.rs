//! XDP attach/detach/query through netlink (`bpf_xdp_attach`), not a
//! `bpf_link`: a netlink attachment outlives the process that made it, which
//! is what makes the steering program fail-open (see `steer.bpf.c`).

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::{Xdp, XdpFlags};

use crate::Error;

/// How an XDP program is attached to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// In the driver's receive path (`XDP_FLAGS_DRV_MODE`): the fast one,
    /// and the one AF_XDP zero-copy needs. veth supports it.
    Native,
    /// Generic XDP on the skb (`XDP_FLAGS_SKB_MODE`): works on every device,
    /// after the skb is built, so copy mode only.
    Skb,
    /// Offloaded to the NIC (`XDP_FLAGS_HW_MODE`); only ever reported by
    /// [`xdp_attached`], afgate never attaches this way.
    Offload,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Offload => "offload",
        })
    }
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Skb => XdpFlags::SKB_MODE,
            XdpMode::Offload => XdpFlags::HW_MODE,
        }
    }
}

/// Which mode to attach in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModeRequest {
    /// Try native; if the driver refuses, fall back to skb mode.
    #[default]
    Auto,
    /// Native or fail.
    Native,
    /// Skb (generic) mode.
    Skb,
}

/// `ifname` -> ifindex in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, Error> {
    let no_dev = || Error::NoSuchDevice {
        dev: ifname.to_owned(),
    };
    let c = CString::new(ifname).map_err(|_| no_dev())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(no_dev()) } else { Ok(idx) }
}

fn as_c_ifindex(dev: &str, ifindex: u32) -> Result<i32, Error> {
    i32::try_from(ifindex).map_err(|_| Error::Invalid {
        dev: dev.to_owned(),
        op: "ifindex",
        reason: format!("ifindex {ifindex} out of range"),
    })
}

/// Program ids attached to a device, per mode (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Attached {
    pub drv: u32,
    pub skb: u32,
    pub hw: u32,
}

pub(crate) fn query(dev: &str, ifindex: u32) -> Result<Attached, Error> {
    let idx = as_c_ifindex(dev, ifindex)?;
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: size_of::<libbpf_sys::bpf_xdp_query_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized, initialised bpf_xdp_query_opts
    // (sz set) that lives across the call; libbpf writes only into it.
    let ret = unsafe { libbpf_sys::bpf_xdp_query(idx, 0, &mut opts) };
    if ret < 0 {
        return Err(Error::os(dev, "query XDP programs", ret));
    }
    Ok(Attached {
        drv: opts.drv_prog_id,
        skb: opts.skb_prog_id,
        hw: opts.hw_prog_id,
    })
}

/// The XDP program on `ifname`, if any: its id and mode. If programs are
/// attached in several modes at once, the native one is reported.
pub fn xdp_attached(ifname: &str) -> Result<Option<(u32, XdpMode)>, Error> {
    let a = query(ifname, ifindex(ifname)?)?;
    Ok(if a.drv != 0 {
        Some((a.drv, XdpMode::Native))
    } else if a.skb != 0 {
        Some((a.skb, XdpMode::Skb))
    } else if a.hw != 0 {
        Some((a.hw, XdpMode::Offload))
    } else {
        None
    })
}

/// Remove every XDP program from `ifname`, in every mode (a stale one left
/// by a crashed run, a bench program, ...). Returns whether there was one.
pub fn detach_any(ifname: &str) -> Result<bool, Error> {
    detach_all(ifname, ifindex(ifname)?)
}

pub(crate) fn detach_all(dev: &str, ifindex: u32) -> Result<bool, Error> {
    let a = query(dev, ifindex)?;
    let idx = as_c_ifindex(dev, ifindex)?;
    let mut found = false;
    for (id, mode) in [
        (a.drv, XdpMode::Native),
        (a.skb, XdpMode::Skb),
        (a.hw, XdpMode::Offload),
    ] {
        if id == 0 {
            continue;
        }
        found = true;
        // old_prog_fd 0: unconditional (libbpf turns any other value,
        // even -1, into XDP_FLAGS_REPLACE with that expected program).
        let opts = attach_opts(0);
        // SAFETY: `opts` is a properly sized bpf_xdp_attach_opts that lives
        // across the call; libbpf only reads it.
        let ret = unsafe { libbpf_sys::bpf_xdp_detach(idx, mode.flags().bits(), &opts) };
        if ret < 0 {
            return Err(Error::os(dev, "detach XDP program", ret));
        }
    }
    Ok(found)
}

fn attach_opts(old_prog_fd: i32) -> libbpf_sys::bpf_xdp_attach_opts {
    libbpf_sys::bpf_xdp_attach_opts {
        sz: size_of::<libbpf_sys::bpf_xdp_attach_opts>() as libbpf_sys::size_t,
        old_prog_fd,
        ..Default::default()
    }
}

/// Attach `prog` to `ifindex` in the requested mode, failing if another
/// program is already attached in that mode (callers clear the device first,
/// so a concurrent attacher is reported rather than silently replaced).
pub(crate) fn attach(
    dev: &str,
    ifindex: u32,
    prog: BorrowedFd<'_>,
    req: ModeRequest,
) -> Result<XdpMode, Error> {
    let idx = as_c_ifindex(dev, ifindex)?;
    let xdp = Xdp::new(prog);
    let try_mode = |mode: XdpMode| {
        xdp.attach(idx, mode.flags() | XdpFlags::UPDATE_IF_NOEXIST)
            .map(|()| mode)
    };
    match req {
        ModeRequest::Native => {
            try_mode(XdpMode::Native).map_err(Error::bpf(dev, "attach XDP (native)"))
        }
        ModeRequest::Skb => try_mode(XdpMode::Skb).map_err(Error::bpf(dev, "attach XDP (skb)")),
        ModeRequest::Auto => try_mode(XdpMode::Native)
            .or_else(|_| try_mode(XdpMode::Skb))
            .map_err(Error::bpf(dev, "attach XDP (native, then skb)")),
    }
}

/// Put `prog` in the place of the program attached to `ifindex` in `mode`, in one netlink
/// request: the device never runs without a program (no fail-open moment), and the driver
/// keeps its XDP set-up (veth re-creates its NAPI state when XDP goes off and on, which takes
/// tens of milliseconds).
pub(crate) fn replace(
    dev: &str,
    ifindex: u32,
    prog: BorrowedFd<'_>,
    mode: XdpMode,
) -> Result<(), Error> {
    let idx = as_c_ifindex(dev, ifindex)?;
    Xdp::new(prog)
        .attach(idx, mode.flags())
        .map_err(Error::bpf(dev, "replace XDP program"))
}

/// Detach `prog` from `ifindex` only if it is still the one attached in
/// `mode` (`XDP_FLAGS_REPLACE` with `prog` as the expected program). Returns
/// `Ok(false)` when it is no longer there (replaced by someone else, device
/// gone): never removes another owner's program.
pub(crate) fn detach_if_ours(
    dev: &str,
    ifindex: u32,
    prog: BorrowedFd<'_>,
    mode: XdpMode,
) -> Result<bool, Error> {
    let idx = as_c_ifindex(dev, ifindex)?;
    let opts = attach_opts(prog.as_raw_fd());
    let flags = mode.flags() | XdpFlags::REPLACE;
    // SAFETY: `opts` is a properly sized bpf_xdp_attach_opts that lives
    // across the call; `prog` is an open program fd borrowed for the call.
    let ret = unsafe { libbpf_sys::bpf_xdp_detach(idx, flags.bits(), &opts) };
    match -ret {
        0 => Ok(true),
        libc::EEXIST | libc::ENODEV => Ok(false),
        _ => Err(Error::os(dev, "detach own XDP program", ret)),
    }
}

/// One XDP program we attached, detached on drop if it is still ours.
#[derive(Debug)]
pub(crate) struct OwnedAttach {
    pub dev: String,
    pub ifindex: u32,
    pub prog: std::os::fd::OwnedFd,
    pub mode: XdpMode,
    pub attached: bool,
}

impl OwnedAttach {
    /// Clear `dev` of any XDP program, then attach `prog`.
    pub fn new(dev: &str, prog: std::os::fd::OwnedFd, req: ModeRequest) -> Result<Self, Error> {
        use std::os::fd::AsFd;
        let idx = ifindex(dev)?;
        detach_all(dev, idx)?;
        let mode = attach(dev, idx, prog.as_fd(), req)?;
        Ok(OwnedAttach {
            dev: dev.to_owned(),
            ifindex: idx,
            prog,
            mode,
            attached: true,
        })
    }

    pub fn detach(&mut self) -> Result<bool, Error> {
        use std::os::fd::AsFd;
        if !self.attached {
            return Ok(false);
        }
        self.attached = false;
        detach_if_ours(&self.dev, self.ifindex, self.prog.as_fd(), self.mode)
    }
}

impl Drop for OwnedAttach {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("afgate-bpf: dropping XDP attachment: {e}");
        }
    }
}
