//! Loaders for `src/bpf/redirect.bpf.c`: the in-kernel forwarding ceiling
//! that benchmarks compare afgate against, and the XDP_PASS helper program.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use crate::skel::redirect::{RedirectSkel, RedirectSkelBuilder};
use crate::xdp::{ModeRequest, OwnedAttach, XdpMode};
use crate::{Error, ifindex};

fn load(dev: &str, swap_mac: bool) -> Result<(OwnedFd, OwnedFd, RedirectSkelHandles), Error> {
    let mut storage = MaybeUninit::uninit();
    let mut open = RedirectSkelBuilder::default()
        .open(&mut storage)
        .map_err(Error::bpf(dev, "open redirect object"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.swap_mac = u8::from(swap_mac);
    }
    let skel: RedirectSkel<'_> = open
        .load()
        .map_err(Error::bpf(dev, "load redirect object"))?;
    let dup = |fd: std::os::fd::BorrowedFd<'_>, op| {
        fd.try_clone_to_owned().map_err(|source| Error::Os {
            dev: dev.to_owned(),
            op,
            source,
        })
    };
    let redirect = dup(skel.progs.afg_devmap_fwd.as_fd(), "dup program fd")?;
    let pass = dup(skel.progs.afgate_xdp_pass.as_fd(), "dup program fd")?;
    let tx_port = libbpf_rs::MapHandle::try_from(&skel.maps.tx_port)
        .map_err(Error::bpf(dev, "dup tx_port map fd"))?;
    Ok((redirect, pass, RedirectSkelHandles { tx_port }))
}

struct RedirectSkelHandles {
    tx_port: libbpf_rs::MapHandle,
}

/// `afg_devmap_fwd` on `in_if`, forwarding every frame to `out_if`
/// inside the driver, plus `afgate_xdp_pass` on `out_if` (some NIC drivers
/// only set up XDP transmit queues while a program is attached).
///
/// For a veth `out_if`, the frames are delivered into the *peer's* XDP
/// receive ring, which exists only while the peer has an XDP program (or
/// GRO-enabled NAPI): attach an [`XdpPass`] to the peer too, in whatever
/// namespace it lives in.
///
/// Both programs are detached on [`DevmapRedirect::detach`] or drop.
#[derive(Debug)]
pub struct DevmapRedirect {
    // Field order: redirect first, so it is detached before the pass side.
    redirect: OwnedAttach,
    pass: Option<OwnedAttach>,
    _tx_port: libbpf_rs::MapHandle,
}

impl DevmapRedirect {
    pub fn attach(in_if: &str, out_if: &str, mode: ModeRequest) -> Result<Self, Error> {
        Self::attach_with(in_if, out_if, mode, false)
    }

    /// As [`DevmapRedirect::attach`]; `swap_mac` swaps source and
    /// destination MAC of every frame (reflector-style forwarding).
    pub fn attach_with(
        in_if: &str,
        out_if: &str,
        mode: ModeRequest,
        swap_mac: bool,
    ) -> Result<Self, Error> {
        let out_idx = ifindex(out_if)?;
        ifindex(in_if)?;
        let (redirect, pass, maps) = load(in_if, swap_mac)?;
        maps.tx_port
            .update(&0u32.to_ne_bytes(), &out_idx.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf(out_if, "write tx_port devmap"))?;
        let pass = if in_if == out_if {
            None
        } else {
            Some(OwnedAttach::new(out_if, pass, mode)?)
        };
        let redirect = OwnedAttach::new(in_if, redirect, mode)?;
        Ok(DevmapRedirect {
            redirect,
            pass,
            _tx_port: maps.tx_port,
        })
    }

    /// Mode of the redirect program on `in_if`.
    pub fn mode(&self) -> XdpMode {
        self.redirect.mode
    }

    /// Detach both programs (only where they are still ours).
    pub fn detach(mut self) -> Result<(), Error> {
        let r = self.redirect.detach();
        let p = self.pass.as_mut().map(OwnedAttach::detach).transpose();
        r?;
        p?;
        Ok(())
    }
}

/// `afgate_xdp_pass` (returns XDP_PASS) on one device: makes a veth accept
/// XDP_REDIRECTed frames from its peer in native mode. Detached on
/// [`XdpPass::detach`] or drop.
#[derive(Debug)]
pub struct XdpPass {
    attach: OwnedAttach,
}

impl XdpPass {
    pub fn attach(ifname: &str, mode: ModeRequest) -> Result<Self, Error> {
        let (_, pass, _) = load(ifname, false)?;
        Ok(XdpPass {
            attach: OwnedAttach::new(ifname, pass, mode)?,
        })
    }

    pub fn mode(&self) -> XdpMode {
        self.attach.mode
    }

    pub fn detach(mut self) -> Result<(), Error> {
        self.attach.detach().map(|_| ())
    }
}
