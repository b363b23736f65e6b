//! Loader for `src/bpf/vlan_shim.bpf.c`: a tc clsact 802.1Q access port for
//! the lab, whose kernel has no 8021q module.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{TC_EGRESS, TC_INGRESS, TcHook, TcHookBuilder};

use crate::skel::vlan_shim::VlanShimSkelBuilder;
use crate::{Error, ifindex};

/// tc filter handle and priority used for both filters.
const TC_HANDLE: u32 = 0xafe;
const TC_PRIO: u32 = 1;

/// Makes `ifname` an access port of VLAN `vid`: egress frames are tagged
/// with `vid` (`afg_vlan_push`), ingress frames tagged `vid` (or
/// priority-tagged) are untagged and frames of any other VLAN dropped
/// (`afg_vlan_pop`).
///
/// The clsact qdisc and both filters stay after this value is dropped or the
/// process exits (the lab deletes the namespace); [`VlanShim::detach`]
/// removes the two filters (the clsact qdisc stays: other filters may use it).
///
/// Egress tags are placed the way `bpf_skb_vlan_push` places them: in
/// `skb->vlan_tci`, written into the frame bytes by the kernel only if the
/// device lacks tx VLAN offload. veth has that offload, so the tag crosses
/// to the peer as skb metadata; a native-XDP program on the peer (the
/// dataplane port) is then expected to see the frame untagged (not verified
/// by these tests; AF_PACKET sees the tag either way). Disable
/// `tx-vlan-hw-insert` on `ifname` (`ethtool -K <if> txvlan off`) to make
/// the kernel write the tag into the bytes.
///
/// Ingress is tested live only with the tag in metadata (the receive path
/// untags before tc runs); the in-bytes branch is there for other paths.
#[derive(Debug)]
pub struct VlanShim {
    ifname: String,
    vid: u16,
    ingress: TcHook,
    egress: TcHook,
    _pop: OwnedFd,
    _push: OwnedFd,
}

impl VlanShim {
    pub fn attach(ifname: &str, vid: u16) -> Result<Self, Error> {
        if !(1..=4094).contains(&vid) {
            return Err(Error::Invalid {
                dev: ifname.to_owned(),
                op: "attach VLAN shim",
                reason: format!("vid {vid} not in 1..=4094"),
            });
        }
        let idx = i32::try_from(ifindex(ifname)?).map_err(|_| Error::Invalid {
            dev: ifname.to_owned(),
            op: "attach VLAN shim",
            reason: "ifindex out of range".into(),
        })?;

        let mut storage = MaybeUninit::uninit();
        let mut open = VlanShimSkelBuilder::default()
            .open(&mut storage)
            .map_err(Error::bpf(ifname, "open vlan_shim object"))?;
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::Invalid {
                dev: ifname.to_owned(),
                op: "open vlan_shim object",
                reason: "no .rodata".into(),
            })?;
        ro.vid = vid;
        let skel = open
            .load()
            .map_err(Error::bpf(ifname, "load vlan_shim object"))?;
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|source| Error::Os {
                dev: ifname.to_owned(),
                op: "dup program fd",
                source,
            })
        };
        let pop = dup(skel.progs.afg_vlan_pop.as_fd())?;
        let push = dup(skel.progs.afg_vlan_push.as_fd())?;
        drop(skel);

        let hook = |fd: &OwnedFd, point| {
            TcHookBuilder::new(fd.as_fd())
                .ifindex(idx)
                .replace(true)
                .handle(TC_HANDLE)
                .priority(TC_PRIO)
                .hook(point)
        };
        let mut ingress = hook(&pop, TC_INGRESS);
        let mut egress = hook(&push, TC_EGRESS);
        // Creates the clsact qdisc (both directions); fine if it exists.
        ingress
            .create()
            .map_err(Error::bpf(ifname, "create clsact qdisc"))?;
        ingress
            .attach()
            .map_err(Error::bpf(ifname, "attach tc ingress afg_vlan_pop"))?;
        if let Err(e) = egress.attach() {
            // Leave nothing half-configured.
            let _ = ingress.detach();
            return Err(Error::bpf(ifname, "attach tc egress afg_vlan_push")(e));
        }
        Ok(VlanShim {
            ifname: ifname.to_owned(),
            vid,
            ingress,
            egress,
            _pop: pop,
            _push: push,
        })
    }

    pub fn vid(&self) -> u16 {
        self.vid
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Remove both filters.
    pub fn detach(mut self) -> Result<(), Error> {
        let i = self.ingress.detach();
        let e = self.egress.detach();
        i.map_err(Error::bpf(&self.ifname, "detach tc ingress filter"))?;
        e.map_err(Error::bpf(&self.ifname, "detach tc egress filter"))
    }
}
