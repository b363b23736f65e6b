//! The overlay/underlay lab: afgate's node with a VXLAN overlay towards a remote node whose
//! VTEP is the kernel's own vxlan device, an underlay pod on VLAN 1155 behind a trunk port,
//! and a bond of two uplinks to a gateway.
//!
//! ```text
//!   pod  [eth0 10.20.9.60/32 mtu 1450] ── [pod60] ┐
//!                                                  │ node (afgate)
//!   remote [eth0 10.186.152.104/24] ────── [ctl 10.186.152.103/24]
//!     vxlan.2 (VNI 2, local .104, dstport 4789, nolearning)
//!     10.20.9.0/25 via 10.20.9.0 dev vxlan.2 onlink; fdb/neigh → node
//!     [rpod5] ── rpod [eth0 10.20.4.5/32 mtu 1450]
//!                                                  │
//!   upod [eth0 10.186.155.6/27, tc shim VLAN 1155] ── [upod: trunk 1155, upod.1155 .30/27]
//!                                                  │
//!   gw [br0 10.186.160.254/24 = gw0 + gw1] ══ [up0, up1 = bond0 10.186.160.103/24]
//! ```
//!
//! The node namespace has no kernel forwarding configured for these paths: only afgate
//! carries them. MACs: `02:af:<link>:00:00:<side>`, links 11 ctl, 12 rpod, 13 upod, 14 up0,
//! 15 up1; the bond members share `02:af:14:00:00:01`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::lab::{End, Lab, LabBuilder, VethSpec};
use crate::netns::Netns;
use crate::util::Mac;

pub const NODE: &str = "node";
pub const POD: &str = "pod";
pub const REMOTE: &str = "remote";
pub const RPOD: &str = "rpod";
pub const UPOD: &str = "upod";
pub const GW: &str = "gw";

pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
pub const NODE_CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 152, 103);
pub const REMOTE_CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 152, 104);
pub const RPOD_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 4, 5);
pub const UPOD_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 6);
pub const UPOD_GW: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 30);
pub const BOND_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 160, 103);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 160, 254);
pub const VNI: u32 = 2;
pub const VLAN: u16 = 1155;

pub const POD_MAC: Mac = Mac::lab(1, 2);
pub const POD60_MAC: Mac = Mac::lab(1, 1);
/// The node's vxlan.2 MAC (inner source), and the remote's.
pub const NODE_VXLAN_MAC: Mac = Mac([0x02, 0xaf, 0x78, 0, 0, 0x02]);
pub const REMOTE_VXLAN_MAC: Mac = Mac([0x02, 0xaf, 0x78, 0, 0, 0x12]);
pub const BOND_MAC: Mac = Mac::lab(14, 1);

pub struct OverlayLab {
    pub lab: Lab,
    pub node: Netns,
    pub pod: Netns,
    pub remote: Netns,
    pub rpod: Netns,
    pub upod: Netns,
    pub gw: Netns,
}

impl OverlayLab {
    fn builder() -> LabBuilder {
        let pod_default = "default via 169.254.1.1 dev eth0 onlink";
        LabBuilder::new()
            .netns(NODE)
            .netns(POD)
            .netns(REMOTE)
            .netns(RPOD)
            .netns(UPOD)
            .netns(GW)
            .veth(
                VethSpec::new(
                    End::new(NODE, "pod60").mac(POD60_MAC).dataplane(),
                    End::new(POD, "eth0")
                        .mac(POD_MAC)
                        .addr(&format!("{POD_IP}/32")),
                )
                .mtu(1450),
            )
            .veth(VethSpec::new(
                End::new(NODE, "ctl")
                    .mac(Mac::lab(11, 1))
                    .addr(&format!("{NODE_CTL_IP}/24"))
                    .dataplane(),
                End::new(REMOTE, "eth0")
                    .mac(Mac::lab(11, 2))
                    .addr(&format!("{REMOTE_CTL_IP}/24")),
            ))
            .veth(
                VethSpec::new(
                    End::new(REMOTE, "rpod5").mac(Mac::lab(12, 1)),
                    End::new(RPOD, "eth0")
                        .mac(Mac::lab(12, 2))
                        .addr(&format!("{RPOD_IP}/32")),
                )
                .mtu(1450),
            )
            .veth(VethSpec::new(
                End::new(NODE, "upod").mac(Mac::lab(13, 1)).dataplane(),
                End::new(UPOD, "eth0")
                    .mac(Mac::lab(13, 2))
                    .addr(&format!("{UPOD_IP}/27")),
            ))
            .veth(VethSpec::new(
                End::new(NODE, "up0").mac(BOND_MAC).dataplane(),
                End::new(GW, "gw0").mac(Mac::lab(14, 2)),
            ))
            .veth(VethSpec::new(
                End::new(NODE, "up1").mac(BOND_MAC).dataplane(),
                End::new(GW, "gw1").mac(Mac::lab(15, 2)),
            ))
            .route(POD, pod_default)
            .route(RPOD, pod_default)
            .route(UPOD, &format!("default via {UPOD_GW}"))
            .ip_forward(REMOTE)
            .route(REMOTE, &format!("{RPOD_IP} dev rpod5 scope link"))
            // The remote node's pod gateway: a static entry instead of proxy ARP, which
            // would need a route for 169.254.1.1 elsewhere.
            .neigh(RPOD, "eth0", Ipv4Addr::new(169, 254, 1, 1), Mac::lab(12, 1))
    }

    /// Builds the lab, then what the builder cannot declare: the remote's vxlan device, the
    /// gateway's bridge, the underlay pod's VLAN shim.
    pub fn build() -> Result<OverlayLab> {
        let lab = Self::builder().build()?;
        let ns = |r: &str| lab.ns(r).clone();
        let l = OverlayLab {
            node: ns(NODE),
            pod: ns(POD),
            remote: ns(REMOTE),
            rpod: ns(RPOD),
            upod: ns(UPOD),
            gw: ns(GW),
            lab,
        };
        remote_vtep(&l.remote)?;
        // The gateway: both bond members on one bridge, like a switch with a LAG.
        let g = &l.gw;
        g.ip(&["link", "add", "br0", "type", "bridge"])?;
        for d in ["gw0", "gw1"] {
            g.ip(&["link", "set", d, "master", "br0"])?;
        }
        g.ip(&["addr", "add", &format!("{GW_IP}/24"), "dev", "br0"])?;
        g.ip(&["link", "set", "br0", "up"])?;
        g.ip(&[
            "route",
            "replace",
            "10.20.9.0/25",
            "via",
            &BOND_IP.to_string(),
        ])?;
        // The underlay pod sits on VLAN 1155: its eth0 is an access port made by the tc shim.
        // Tags go into the frame bytes (txvlan off), where afgate's AF_XDP socket sees them.
        l.upod
            .exec_ok(&["ethtool", "-K", "eth0", "txvlan", "off"])
            .context("ethtool txvlan off")?;
        in_netns(&l.upod, || {
            afgate_bpf::VlanShim::attach("eth0", VLAN).map(drop)
        })?
        .context("attach the VLAN shim in the upod namespace")?;
        Ok(l)
    }

    /// afgate's configuration for the node.
    pub fn config_yaml(&self, vxlan_port: u16) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "workers:\n  cores: [0]\n  poll: adaptive");
        // Each lab's own control socket, so labs running in parallel do not collide.
        let _ = writeln!(
            y,
            "api:\n  socket: {}",
            self.lab.tmp().join("afgate.sock").display()
        );
        let _ = writeln!(y, "ports:");
        let _ = writeln!(
            y,
            "  - {{ name: ctl, device: ctl, role: ctl, addresses: [{NODE_CTL_IP}/24] }}"
        );
        let _ = writeln!(y, "  - {{ name: pod60, device: pod60, role: pod }}");
        let _ = writeln!(
            y,
            "  - {{ name: upod, device: upod, vlan: {{ trunk: [{VLAN}], addresses: {{ {VLAN}: [{UPOD_GW}/27] }} }} }}"
        );
        let _ = writeln!(y, "  - {{ name: up0, device: up0 }}");
        let _ = writeln!(y, "  - {{ name: up1, device: up1 }}");
        let _ = writeln!(
            y,
            "bonds:\n  - {{ name: bond0, members: [up0, up1], hash: layer3+4, addresses: [{BOND_IP}/24] }}"
        );
        let _ = writeln!(
            y,
            "vxlan:\n  port: {vxlan_port}\n  overlays:\n    - name: vxlan.2\n      vni: {VNI}\n      mac: \"{NODE_VXLAN_MAC}\"\n      mtu: 1450\n      vteps: [{{ via: 10.20.4.0, mac: \"{REMOTE_VXLAN_MAC}\", remote: {REMOTE_CTL_IP} }}]"
        );
        let _ = writeln!(y, "routes:");
        let _ = writeln!(y, "  - {{ dst: {POD_IP}/32, dev: pod60 }}");
        let _ = writeln!(
            y,
            "  - {{ dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }}"
        );
        let _ = writeln!(y, "neighbors:");
        let _ = writeln!(y, "  - {{ ip: {POD_IP}, mac: \"{POD_MAC}\", dev: pod60 }}");
        y
    }

    pub fn config_file(&self, vxlan_port: u16) -> Result<PathBuf> {
        let path = self.lab.tmp().join("afgate-overlay.yaml");
        std::fs::write(&path, self.config_yaml(vxlan_port))?;
        Ok(path)
    }
}

/// The remote node's side of the overlay: Linux's own vxlan device (VNI 2, dstport 4789),
/// as seeds/001 configures it (Flannel/Calico style), with a permanent neighbour and FDB
/// entry for the node's VTEP and the route to the node's pod subnet through it.
pub fn remote_vtep(r: &Netns) -> Result<()> {
    let vni = VNI.to_string();
    let local = REMOTE_CTL_IP.to_string();
    let vmac = REMOTE_VXLAN_MAC.to_string();
    r.ip(&[
        "link",
        "add",
        "vxlan.2",
        "address",
        &vmac,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "eth0",
    ])?;
    r.ip(&["link", "set", "vxlan.2", "mtu", "1450", "up"])?;
    r.ip(&["addr", "add", "10.20.4.0/32", "dev", "vxlan.2"])?;
    let node_mac = NODE_VXLAN_MAC.to_string();
    r.ip(&[
        "neigh",
        "replace",
        "10.20.9.0",
        "lladdr",
        &node_mac,
        "dev",
        "vxlan.2",
        "nud",
        "permanent",
    ])?;
    r.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        &node_mac,
        "dev",
        "vxlan.2",
        "dst",
        &NODE_CTL_IP.to_string(),
    ])?;
    r.ip(&[
        "route",
        "replace",
        "10.20.9.0/25",
        "via",
        "10.20.9.0",
        "dev",
        "vxlan.2",
        "onlink",
    ])?;
    Ok(())
}

/// Runs `f` on a thread that entered `ns` (netlink and ifindex lookups then see its devices).
pub fn in_netns<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> Result<R> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{}", ns.name()))
        .with_context(|| format!("open netns {}", ns.name()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `file` is an open netns descriptor; setns changes only the calling
            // thread's namespace, and this scoped thread ends right after `f`.
            let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if ret != 0 {
                anyhow::bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
