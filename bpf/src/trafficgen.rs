//! Loader for `src/bpf/trafficgen.bpf.c`: the benchmark's in-kernel traffic
//! generator. `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux
//! ≥ 5.18) runs the program `repeat` times over one template frame; each run
//! stamps the next packet and returns `XDP_TX`, which the kernel turns into a
//! transmit out of `ctx_in.ingress_ifindex`. No ring, copy or syscall per
//! frame, unlike an AF_XDP socket in copy mode.
//!
//! The device is looked up in the caller's network namespace: call
//! [`TrafficGen::run`] from a thread inside the generator's namespace. On a
//! veth, the peer must have an XDP program (or GRO-enabled NAPI) or the
//! frames are dropped by `veth_xdp_xmit` (see `redirect.rs`).

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use crate::error::NO_DEV;
use crate::skel::trafficgen::TrafficgenSkelBuilder;
use crate::{Error, ifindex};

/// The kernel's limit on frames per live-frames batch (`TEST_XDP_MAX_BATCH`).
pub const MAX_BATCH: u32 = 256;

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// `magic:u16 flow:u32 seq:u32 ts:u32`, right behind the UDP header.
const STAMP: usize = 14;

/// The program, loaded and configured for one template.
#[derive(Debug)]
pub struct TrafficGen {
    prog: OwnedFd,
    bss: libbpf_rs::MapHandle,
    template: Vec<u8>,
    batch: u32,
}

impl TrafficGen {
    /// Loads the program for `template`: Ethernet / IPv4 (no options) / UDP
    /// with the zero stamp of flow 0 behind the UDP header, as afgate-bench's
    /// `packet::build` makes it. Packet `k` is flow `k % flows`, sequence
    /// `k / flows`; a flow's source port is `sport + flow % sports` and its
    /// source address steps by one every `sports` flows.
    pub fn load(flows: u32, sports: u16, template: &[u8]) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Invalid {
            dev: NO_DEV.to_owned(),
            op: "trafficgen template",
            reason,
        };
        if template.len() < ETH + IP + UDP + STAMP || template.len() > 1514 {
            return Err(invalid(format!("{} bytes", template.len())));
        }
        let be16 = |at: usize| u16::from_be_bytes([template[at], template[at + 1]]);
        if be16(12) != 0x0800 || template[ETH] != 0x45 || template[ETH + 9] != 17 {
            return Err(invalid(
                "not Ethernet/IPv4 without options/UDP (VLAN and VXLAN are not supported)".into(),
            ));
        }
        if template[ETH + IP + UDP..ETH + IP + UDP + STAMP][2..] != [0u8; 12] {
            return Err(invalid("stamp not zero".into()));
        }
        let src = Ipv4Addr::new(
            template[ETH + 12],
            template[ETH + 13],
            template[ETH + 14],
            template[ETH + 15],
        );
        let mut storage = MaybeUninit::uninit();
        let mut open = TrafficgenSkelBuilder::default()
            .open(&mut storage)
            .map_err(Error::bpf(NO_DEV, "open trafficgen object"))?;
        let Some(ro) = open.maps.rodata_data.as_deref_mut() else {
            return Err(invalid("object has no .rodata".into()));
        };
        ro.flows = flows.max(1);
        ro.sports = u32::from(sports.max(1));
        ro.src_ip = u32::from(src);
        ro.sport_base = be16(ETH + IP);
        // The checksums as the program reads them: wire bytes in host order.
        ro.ip_csum_be = u16::from_ne_bytes([template[ETH + 10], template[ETH + 11]]);
        ro.udp_csum_be = u16::from_ne_bytes([template[ETH + IP + 6], template[ETH + IP + 7]]);
        let skel = open
            .load()
            .map_err(Error::bpf(NO_DEV, "load trafficgen object"))?;
        let prog = skel
            .progs
            .afg_trafficgen
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Os {
                dev: NO_DEV.to_owned(),
                op: "dup program fd",
                source,
            })?;
        let bss = libbpf_rs::MapHandle::try_from(&skel.maps.bss)
            .map_err(Error::bpf(NO_DEV, "dup .bss map fd"))?;
        Ok(TrafficGen {
            prog,
            bss,
            template: template.to_vec(),
            batch: 64,
        })
    }

    /// Frames per live-frames batch (1..=[`MAX_BATCH`]; default 64).
    pub fn set_batch(&mut self, batch: u32) {
        self.batch = batch.clamp(1, MAX_BATCH);
    }

    /// Packets stamped so far (program runs, all calls together).
    pub fn stamped(&self) -> Result<u64, Error> {
        let v = self
            .bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf(NO_DEV, "read trafficgen .bss"))?
            .unwrap_or_default();
        Ok(v.get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes))
    }

    /// Sends `packets` frames out of `ifname` (in the calling thread's
    /// network namespace) in one kernel call; returns how many the program
    /// stamped (fewer when a signal interrupted the call). The kernel does
    /// not report transmit failures here: they show in the device's
    /// counters (`xdp_xmit_err` on a veth).
    pub fn run(&self, ifname: &str, packets: u32) -> Result<u64, Error> {
        let ifidx = ifindex(ifname)?;
        let before = self.stamped()?;
        let repeat = i32::try_from(packets.max(1)).unwrap_or(i32::MAX);
        let len = self.template.len() as u32;
        let ctx = libbpf_sys::xdp_md {
            data: 0,
            data_end: len,
            ingress_ifindex: ifidx,
            ..Default::default()
        };
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
            data_in: self.template.as_ptr().cast(),
            data_size_in: len,
            ctx_in: (&raw const ctx).cast(),
            ctx_size_in: size_of::<libbpf_sys::xdp_md>() as u32,
            repeat,
            flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: self.batch,
            ..Default::default()
        };
        // SAFETY: `opts` is a properly sized bpf_test_run_opts; `data_in`
        // points to `len` readable bytes of `self.template` and `ctx_in` to a
        // whole xdp_md, both alive across the call; live-frames mode takes no
        // output buffers (they stay null) and the kernel writes only `opts`.
        let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(self.prog.as_raw_fd(), &mut opts) };
        let after = self.stamped()?;
        if ret < 0 && ret != -libc::EINTR {
            return Err(Error::os(ifname, "BPF_PROG_TEST_RUN (live frames)", ret));
        }
        Ok(after.wrapping_sub(before))
    }
}
