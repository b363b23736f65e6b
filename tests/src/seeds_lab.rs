//! The seeds' node end to end (SPEC §1, §3): afgate with local overlay pods, a remote node
//! whose VTEP is the kernel's vxlan device (VNI 2), underlay pods on VLAN 1155, and the
//! top-of-rack gateway with the outside world behind it.
//!
//! ```text
//!   pod  [eth0 10.20.9.60/32 mtu 1450] ─────────────── [pod60] ┐
//!   remote [eth0 10.186.152.104/24] ─────────────── [ctl .152.103/24] │
//!     vxlan.2 (VNI 2) ── rpod [eth0 10.20.4.5/32]                      │ node
//!                                                                      │ (afgate)
//!   gw (ToR) [biz0 10.186.153.254/24] ─────────────── [biz .153.103/24] │
//!     [ext0 10.186.200.254/24] ── ext [eth0 10.186.200.10/24]          │
//!     [u1155 10.186.155.30/27] ─┐                                      │
//!   sw (access switch, br0):    ├ g0                                   │
//!     upod [eth0 10.186.155.6/27] ── u6                                │
//!     ubk  [eth0 10.186.155.7/27] ── u7                                │
//!     n0 (tc shim: VLAN 1155 tagged on the wire) ────── [trunk: 1155, trunk.1155 .155.29] ┘
//! ```
//!
//! Where this departs from the seeds, and why: the seeds' biz is one trunk carrying the
//! node's untagged address and VLAN 1155. This kernel has neither the 802.1Q module nor
//! bridge VLAN filtering, so nothing here could sit on the far side of a trunk carrying both;
//! the lab splits it into `biz` (untagged, to the gateway) and `trunk` (VLAN 1155, tagged
//! by the switch's tc-BPF access shim). The switch plays the node's OVS bridge: the gateway
//! reaches the VLAN 1155 segment through it, as the ToR does down the seeds' trunk.
//!
//! Underlay pods default to the gateway and reach the service CIDR through afgate's VLAN
//! 1155 address (`10.96.0.0/16 via 10.186.155.29`), so their service traffic arrives tagged
//! 1155 on `trunk.1155`, where the seeds' MASQUERADE rule (`-s 10.186.155.0/27 -i
//! vlan.1155 -d <svc cidr>`, SPEC B5) matches it.
//!
//! MACs: `02:af:<link>:00:00:<side>`, links 21 pod60, 22 ctl, 23 rpod5, 24 biz, 25 trunk,
//! 26 u6, 27 u7, 28 g0, 29 ext0.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::lab::{End, Lab, LabBuilder, VethSpec};
use crate::netns::Netns;
use crate::overlay_lab::{NODE_VXLAN_MAC, REMOTE_VXLAN_MAC, in_netns, remote_vtep};
use crate::util::Mac;

pub const NODE: &str = "node";
pub const POD: &str = "pod";
pub const REMOTE: &str = "remote";
pub const RPOD: &str = "rpod";
pub const GW: &str = "gw";
pub const EXT: &str = "ext";
pub const SW: &str = "sw";
pub const UPOD: &str = "upod";
pub const UBK: &str = "ubk";

pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 9, 60);
pub const NODE_CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 152, 103);
pub const REMOTE_CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 152, 104);
pub const RPOD_IP: Ipv4Addr = Ipv4Addr::new(10, 20, 4, 5);
pub const BIZ_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 103);
pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 153, 254);
pub const GW_EXT_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 254);
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 200, 10);
pub const UPOD_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 6);
pub const UBK_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 7);
/// The gateway's address on VLAN 1155: the underlay pods' default gateway.
pub const GW_1155_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 30);
/// afgate's address on `trunk.1155`.
pub const NODE_1155_IP: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 29);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
pub const VNI: u32 = 2;
pub const VLAN: u16 = 1155;

pub const POD60_MAC: Mac = Mac::lab(21, 1);
pub const POD_MAC: Mac = Mac::lab(21, 2);
pub const BIZ_MAC: Mac = Mac::lab(24, 1);
pub const TRUNK_MAC: Mac = Mac::lab(25, 1);
pub const N0_MAC: Mac = Mac::lab(25, 2);

/// How afgate reaches the VLAN 1155 subnet from `trunk.1155`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// `trunk.1155` has a /32: the subnet is reached through the default gateway on biz, so
    /// a service frame translated to an underlay backend makes the gateway trip (the seeds).
    ViaGateway,
    /// `trunk.1155` has the subnet's /27: the connected route sends the translated frame
    /// straight back out of the trunk it came in on (afgate's own hairpin return).
    Direct,
}

pub struct SeedsLab {
    pub lab: Lab,
    pub node: Netns,
    pub pod: Netns,
    pub remote: Netns,
    pub rpod: Netns,
    pub gw: Netns,
    pub ext: Netns,
    pub sw: Netns,
    pub upod: Netns,
    pub ubk: Netns,
}

impl SeedsLab {
    fn builder() -> LabBuilder {
        let pod_default = "default via 169.254.1.1 dev eth0 onlink";
        let underlay_svc = format!("10.96.0.0/16 via {NODE_1155_IP} dev eth0");
        let underlay_default = format!("default via {GW_1155_IP}");
        let host = |ns: &str, link: u8, ip: Ipv4Addr, len: u8| {
            End::new(ns, "eth0")
                .mac(Mac::lab(link, 2))
                .addr(&format!("{ip}/{len}"))
        };
        LabBuilder::new()
            .netns(NODE)
            .netns(POD)
            .netns(REMOTE)
            .netns(RPOD)
            .netns(GW)
            .netns(EXT)
            .netns(SW)
            .netns(UPOD)
            .netns(UBK)
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
                    .mac(Mac::lab(22, 1))
                    .addr(&format!("{NODE_CTL_IP}/24"))
                    .dataplane(),
                host(REMOTE, 22, REMOTE_CTL_IP, 24),
            ))
            .veth(
                VethSpec::new(
                    End::new(REMOTE, "rpod5").mac(Mac::lab(23, 1)),
                    host(RPOD, 23, RPOD_IP, 32),
                )
                .mtu(1450),
            )
            .veth(VethSpec::new(
                End::new(NODE, "biz")
                    .mac(BIZ_MAC)
                    .addr(&format!("{BIZ_IP}/24"))
                    .dataplane(),
                End::new(GW, "biz0")
                    .mac(Mac::lab(24, 2))
                    .addr(&format!("{GW_IP}/24")),
            ))
            .veth(VethSpec::new(
                End::new(NODE, "trunk").mac(TRUNK_MAC).dataplane(),
                End::new(SW, "n0").mac(N0_MAC),
            ))
            .veth(VethSpec::new(
                End::new(SW, "u6").mac(Mac::lab(26, 1)),
                host(UPOD, 26, UPOD_IP, 27),
            ))
            .veth(VethSpec::new(
                End::new(SW, "u7").mac(Mac::lab(27, 1)),
                host(UBK, 27, UBK_IP, 27),
            ))
            .veth(VethSpec::new(
                End::new(SW, "g0").mac(Mac::lab(28, 1)),
                End::new(GW, "u1155")
                    .mac(Mac::lab(28, 2))
                    .addr(&format!("{GW_1155_IP}/27")),
            ))
            .veth(VethSpec::new(
                End::new(GW, "ext0")
                    .mac(Mac::lab(29, 1))
                    .addr(&format!("{GW_EXT_IP}/24")),
                host(EXT, 29, EXT_IP, 24),
            ))
            .route(POD, pod_default)
            .route(RPOD, pod_default)
            .neigh(RPOD, "eth0", Ipv4Addr::new(169, 254, 1, 1), Mac::lab(23, 1))
            .ip_forward(REMOTE)
            .route(REMOTE, &format!("{RPOD_IP} dev rpod5 scope link"))
            .ip_forward(GW)
            // The node's pods and the service CIDR are behind the node's biz address.
            .route(GW, &format!("10.20.9.0/25 via {BIZ_IP}"))
            .route(GW, &format!("10.96.0.0/16 via {BIZ_IP}"))
            .route(EXT, &format!("default via {GW_EXT_IP}"))
            .route(UPOD, &underlay_default)
            .route(UPOD, &underlay_svc)
            .route(UBK, &underlay_default)
            .route(UBK, &underlay_svc)
    }

    /// Builds the lab, then what the builder cannot declare: the remote's vxlan device, the
    /// switch's bridge and the VLAN shim on its trunk port.
    pub fn build() -> Result<SeedsLab> {
        let lab = Self::builder().build()?;
        let ns = |r: &str| lab.ns(r).clone();
        let l = SeedsLab {
            node: ns(NODE),
            pod: ns(POD),
            remote: ns(REMOTE),
            rpod: ns(RPOD),
            gw: ns(GW),
            ext: ns(EXT),
            sw: ns(SW),
            upod: ns(UPOD),
            ubk: ns(UBK),
            lab,
        };
        // The remote node: Linux's VXLAN, as in `overlay_lab` (seeds/001).
        remote_vtep(&l.remote)?;
        // The access switch: one untagged VLAN 1155 segment; only its port towards the node
        // carries the tag (pushed and popped by the tc shim, in the frame bytes: txvlan off).
        let s = &l.sw;
        s.ip(&["link", "add", "br0", "type", "bridge"])?;
        for d in ["n0", "u6", "u7", "g0"] {
            s.ip(&["link", "set", d, "master", "br0"])?;
        }
        s.ip(&["link", "set", "br0", "up"])?;
        s.exec_ok(&["ethtool", "-K", "n0", "txvlan", "off"])
            .context("ethtool txvlan off")?;
        in_netns(s, || afgate_bpf::VlanShim::attach("n0", VLAN).map(drop))?
            .context("attach the VLAN shim on the switch's trunk port")?;
        Ok(l)
    }

    /// afgate's configuration: the seeds' node, its ClusterIP `10.96.10.1:80` with
    /// `backends` (each `addr:port`), the seeds' MASQUERADE rule for VLAN 1155 and SNAT of
    /// overlay pods towards the outside network.
    pub fn config_yaml(&self, underlay: Underlay, backends: &[(Ipv4Addr, u16)]) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "workers:\n  cores: [0]\n  poll: adaptive");
        let _ = writeln!(
            y,
            "api:\n  socket: {}",
            self.lab.tmp().join("afgate.sock").display()
        );
        let len = match underlay {
            Underlay::ViaGateway => 32,
            Underlay::Direct => 27,
        };
        let _ = writeln!(y, "ports:");
        let _ = writeln!(
            y,
            "  - {{ name: ctl, device: ctl, role: ctl, addresses: [{NODE_CTL_IP}/24] }}"
        );
        let _ = writeln!(
            y,
            "  - {{ name: biz, device: biz, role: uplink, addresses: [{BIZ_IP}/24] }}"
        );
        let _ = writeln!(y, "  - {{ name: pod60, device: pod60, role: pod }}");
        let _ = writeln!(
            y,
            "  - {{ name: trunk, device: trunk, vlan: {{ trunk: [{VLAN}], addresses: {{ {VLAN}: [{NODE_1155_IP}/{len}] }} }} }}"
        );
        let _ = writeln!(
            y,
            "vxlan:\n  port: 4789\n  overlays:\n    - name: vxlan.2\n      vni: {VNI}\n      mac: \"{NODE_VXLAN_MAC}\"\n      mtu: 1450\n      vteps: [{{ via: 10.20.4.0, mac: \"{REMOTE_VXLAN_MAC}\", remote: {REMOTE_CTL_IP} }}]"
        );
        let _ = writeln!(y, "routes:");
        let _ = writeln!(y, "  - {{ dst: {POD_IP}/32, dev: pod60 }}");
        let _ = writeln!(
            y,
            "  - {{ dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }}"
        );
        let _ = writeln!(y, "  - {{ dst: 0.0.0.0/0, via: {GW_IP}, dev: biz }}");
        // Only the local pod is static: the gateway, the remote VTEP and the underlay pods
        // are resolved by ARP (the first frames to each wait in the pending queue).
        let _ = writeln!(y, "neighbors:");
        let _ = writeln!(y, "  - {{ ip: {POD_IP}, mac: \"{POD_MAC}\", dev: pod60 }}");
        let _ = writeln!(y, "masquerade:");
        let _ = writeln!(
            y,
            "  - {{ src: 10.186.155.0/27, in_port: trunk.{VLAN}, in_vlan: {VLAN}, dst: 10.96.0.0/16, to: egress }}"
        );
        let _ = writeln!(
            y,
            "  - {{ src: 10.20.9.0/25, dst: 10.186.200.0/24, to: egress }}"
        );
        if !backends.is_empty() {
            let _ = writeln!(
                y,
                "services:\n  - name: web\n    cluster_ip: {VIP}\n    port: 80\n    target_port: 8080\n    backends:"
            );
            for (addr, port) in backends {
                let _ = writeln!(y, "      - {{ addr: {addr}, port: {port}, local: false }}");
            }
        }
        y
    }

    pub fn config_file(&self, underlay: Underlay, backends: &[(Ipv4Addr, u16)]) -> Result<PathBuf> {
        let path = self.lab.tmp().join("afgate-seeds.yaml");
        std::fs::write(&path, self.config_yaml(underlay, backends))?;
        Ok(path)
    }
}

/// The `afgate: final-stats {json}` line of a stopped afgate's log.
pub fn final_stats(log: &str) -> Result<serde_json::Value> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("afgate: final-stats "))
        .context("no final-stats line")?;
    Ok(serde_json::from_str(line)?)
}

/// A counter from [`final_stats`], e.g. `["events", "vxlan_encap"]`; 0 if absent.
pub fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}
