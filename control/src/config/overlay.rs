//! Underlay and overlay configuration: per-port 802.1Q (`ports[i].vlan`), bonds (`bonds:`)
//! and VXLAN overlays (`vxlan:`), validated with field paths and built into the logical
//! interfaces of `afgate_dataplane::tables::overlay`.
//!
//! ```yaml
//! ports:
//!   - name: biz
//!     device: biz
//!     vlan:
//!       trunk: [1155, 1156]          # tagged VLANs; each is the interface biz.<vid>
//!       native: 12                   # optional untagged VLAN of the trunk
//!       addresses: { 1155: [10.186.155.30/27] }
//!   - { name: upod, device: upod, vlan: { access: 1155 } }
//! bonds:
//!   - { name: bond0, members: [ens5, ens7], hash: layer3+4, addresses: [10.186.153.103/24] }
//! vxlan:
//!   port: 4789                       # 8472 for Linux's legacy default
//!   overlays:
//!     - name: vxlan.2
//!       vni: 2
//!       local: 10.186.152.103        # outer source; default: the first ctl address
//!       mac: "02:af:78:00:00:02"     # inner source MAC (remote nodes' neighbour entry)
//!       mtu: 1450
//!       vteps:
//!         - { via: 10.20.4.0, mac: "…", remote: 10.186.152.104 }
//! routes:
//!   - { dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }
//!   - { dst: 0.0.0.0/0, via: 10.186.153.254, dev: biz.1155 }
//! ```
//!
//! Interfaces routes may name: ports, `port.<vid>` for each trunk VLAN, bonds and
//! `bond.<vid>`, overlays. Their ids follow the physical ports' in that order (bonds, VLAN
//! subinterfaces, overlays).

use super::{Cidr, Config, Mac, RoleCfg};
use afgate_dataplane::tables::bond::{Bond, BondHash, Bonds};
use afgate_dataplane::tables::overlay::{
    OuterHeader, Overlay, PortKind, SubIfs, VidSet, VlanMode, Vtep, Vxlan,
};
use afgate_dataplane::tables::{NextHop, Port, PortId, PortRole, Tables};
use afgate_dataplane::wire::EthernetAddress;
use afgate_dataplane::wire::vxlan::{DEFAULT_PORT, VNI_MAX};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// 802.1Q on a port or bond: `{ access: VID }` or `{ trunk: [VIDs], native: VID }`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VlanCfg {
    /// Access port of this VLAN: untagged on the wire, the VLAN implied.
    #[serde(default)]
    pub access: Option<u16>,
    /// Trunk: these VLANs tagged; each is an interface `<port>.<vid>`.
    #[serde(default)]
    pub trunk: Vec<u16>,
    /// The trunk's untagged VLAN, if any (its traffic belongs to the port itself).
    #[serde(default)]
    pub native: Option<u16>,
    /// The node's addresses on trunk VLANs, by VID.
    #[serde(default)]
    pub addresses: BTreeMap<u16, Vec<Cidr>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum BondHashCfg {
    /// Addresses and TCP/UDP ports (Linux `xmit_hash_policy layer3+4`).
    #[default]
    #[serde(rename = "layer3+4")]
    Layer34,
    /// Addresses only.
    #[serde(rename = "layer3")]
    Layer3,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BondCfg {
    pub name: String,
    /// Port names; members carry no addresses or VLANs of their own and take the first
    /// member's MAC (give the member devices that MAC too, as Linux does).
    pub members: Vec<String>,
    #[serde(default)]
    pub hash: BondHashCfg,
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    #[serde(default)]
    pub vlan: Option<VlanCfg>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VtepCfg {
    /// The inner next hop routes name (`via` of `10.20.4.0/25 via 10.20.4.0 dev vxlan.2`).
    pub via: Ipv4Addr,
    /// The remote vxlan device's MAC (inner destination).
    pub mac: Mac,
    /// The remote node's underlay address (outer destination).
    pub remote: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayCfg {
    pub name: String,
    pub vni: u32,
    /// Outer source address; default: the first address of the first ctl port.
    #[serde(default)]
    pub local: Option<Ipv4Addr>,
    /// Inner source MAC; default `02:af:78:` + the VNI.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Inner MTU: 50 below the underlay's (SPEC: pod MTU 1450).
    #[serde(default = "default_overlay_mtu")]
    pub mtu: u16,
    #[serde(default)]
    pub vteps: Vec<VtepCfg>,
}

fn default_overlay_mtu() -> u16 {
    1450
}

fn default_vxlan_port() -> u16 {
    DEFAULT_PORT
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanCfg {
    /// UDP destination port, sent and accepted: 4789 (IANA), or 8472 (Linux's legacy default).
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    #[serde(default)]
    pub overlays: Vec<OverlayCfg>,
}

impl Default for VxlanCfg {
    fn default() -> Self {
        VxlanCfg {
            port: DEFAULT_PORT,
            overlays: Vec::new(),
        }
    }
}

/// A logical interface, in id order.
#[derive(Debug, Clone)]
enum Logical<'a> {
    Bond(usize, &'a BondCfg),
    /// Parent name, VID, addresses.
    Subif(String, u16, Vec<Cidr>),
    Overlay(usize, &'a OverlayCfg),
}

impl Logical<'_> {
    fn name(&self) -> String {
        match self {
            Logical::Bond(_, b) => b.name.clone(),
            Logical::Subif(parent, vid, _) => format!("{parent}.{vid}"),
            Logical::Overlay(_, o) => o.name.clone(),
        }
    }
}

fn vlan_mode(v: &Option<VlanCfg>) -> VlanMode {
    match v {
        None => VlanMode::None,
        Some(VlanCfg {
            access: Some(a), ..
        }) => VlanMode::Access(*a),
        Some(v) => VlanMode::Trunk {
            vids: VidSet::new(v.trunk.iter().copied()),
            native: v.native,
        },
    }
}

impl Config {
    fn logical(&self) -> Vec<Logical<'_>> {
        let mut out: Vec<Logical> = self
            .bonds
            .iter()
            .enumerate()
            .map(|(i, b)| Logical::Bond(i, b))
            .collect();
        let trunks = self
            .ports
            .iter()
            .map(|p| (&p.name, &p.vlan))
            .chain(self.bonds.iter().map(|b| (&b.name, &b.vlan)));
        for (name, vlan) in trunks {
            if let Some(v) = vlan {
                for vid in &v.trunk {
                    let addrs = v.addresses.get(vid).cloned().unwrap_or_default();
                    out.push(Logical::Subif(name.clone(), *vid, addrs));
                }
            }
        }
        for (i, o) in self.vxlan.overlays.iter().enumerate() {
            out.push(Logical::Overlay(i, o));
        }
        out
    }

    /// Names of the logical interfaces (bonds, VLAN subinterfaces, overlays).
    pub fn logical_names(&self) -> Vec<String> {
        self.logical().iter().map(Logical::name).collect()
    }

    /// The id of a port or logical interface.
    pub fn interface_id(&self, name: &str) -> Option<PortId> {
        if let Some(i) = self.ports.iter().position(|p| p.name == name) {
            return Some(PortId(i as u16));
        }
        let i = self.logical().iter().position(|l| l.name() == name)?;
        Some(PortId((self.ports.len() + i) as u16))
    }

    /// Checks of `ports[i].vlan`, `bonds` and `vxlan`; each problem as (field path, message).
    pub fn validate_overlay(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        let mut err = |f: String, m: String| errs.push((f, m));
        let check_vlan = |at: &str, v: &VlanCfg, err: &mut dyn FnMut(String, String)| {
            let vid_ok = |vid: u16| (1..=4094).contains(&vid);
            match (v.access, v.trunk.is_empty()) {
                (Some(_), false) => err(
                    at.to_string(),
                    "give either access or trunk, not both".into(),
                ),
                (None, true) => err(at.to_string(), "give access: VID or trunk: [VIDs]".into()),
                _ => {}
            }
            if let Some(a) = v.access {
                if !vid_ok(a) {
                    err(
                        format!("{at}.access"),
                        format!("VLAN {a} is out of range 1-4094"),
                    );
                }
                if v.native.is_some() || !v.addresses.is_empty() {
                    err(
                        at.to_string(),
                        "native and addresses are for trunks; an access port's addresses are the port's".into(),
                    );
                }
            }
            let mut seen = HashSet::new();
            for (j, vid) in v.trunk.iter().enumerate() {
                if !vid_ok(*vid) {
                    err(
                        format!("{at}.trunk[{j}]"),
                        format!("VLAN {vid} is out of range 1-4094"),
                    );
                }
                if !seen.insert(vid) {
                    err(
                        format!("{at}.trunk[{j}]"),
                        format!("VLAN {vid} is listed twice"),
                    );
                }
            }
            if let Some(n) = v.native {
                if !vid_ok(n) {
                    err(
                        format!("{at}.native"),
                        format!("VLAN {n} is out of range 1-4094"),
                    );
                }
                if v.trunk.contains(&n) {
                    err(
                        format!("{at}.native"),
                        format!("VLAN {n} cannot be both native (untagged) and tagged"),
                    );
                }
            }
            for vid in v.addresses.keys() {
                if !v.trunk.contains(vid) {
                    err(
                        format!("{at}.addresses.{vid}"),
                        format!("VLAN {vid} is not in trunk"),
                    );
                }
            }
        };
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(v) = &p.vlan {
                check_vlan(&format!("ports[{i}].vlan"), v, &mut err);
            }
        }
        let port_names: HashSet<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        let mut members = HashSet::new();
        for (i, b) in self.bonds.iter().enumerate() {
            if b.members.is_empty() {
                err(
                    format!("bonds[{i}].members"),
                    "a bond needs at least one member".into(),
                );
            }
            for (j, m) in b.members.iter().enumerate() {
                let at = format!("bonds[{i}].members[{j}]");
                match self.ports.iter().find(|p| &p.name == m) {
                    None => err(at, format!("no port named {m:?}")),
                    Some(p) => {
                        if !members.insert(m.as_str()) {
                            err(at.clone(), format!("port {m:?} is in two bonds"));
                        }
                        if !p.addresses.is_empty() || p.vlan.is_some() {
                            err(
                                at,
                                format!(
                                    "port {m:?} is a bond member: give addresses and vlan to the bond"
                                ),
                            );
                        }
                    }
                }
            }
            if let Some(v) = &b.vlan {
                check_vlan(&format!("bonds[{i}].vlan"), v, &mut err);
            }
        }
        let vx = &self.vxlan;
        if vx.port == 0 {
            err("vxlan.port".into(), "0 is not a UDP port".into());
        }
        let mut vnis = HashSet::new();
        let has_ctl = self
            .ports
            .iter()
            .any(|p| p.role == RoleCfg::Ctl && !p.addresses.is_empty());
        for (i, o) in vx.overlays.iter().enumerate() {
            let at = format!("vxlan.overlays[{i}]");
            if o.vni > VNI_MAX {
                err(
                    format!("{at}.vni"),
                    format!("{} is out of range 0-{VNI_MAX}", o.vni),
                );
            }
            if !vnis.insert(o.vni) {
                err(
                    format!("{at}.vni"),
                    format!("VNI {} is used by two overlays", o.vni),
                );
            }
            if !(68..=9000).contains(&o.mtu) {
                err(
                    format!("{at}.mtu"),
                    format!("{} is out of range; allowed: 68-9000", o.mtu),
                );
            }
            match o.local {
                Some(l) if !self.all_addresses().contains(&l) => err(
                    format!("{at}.local"),
                    format!("{l} is not one of the node's addresses"),
                ),
                None if !has_ctl => err(
                    format!("{at}.local"),
                    "missing: no ctl port with an address to default to".into(),
                ),
                _ => {}
            }
            let mut vias = HashSet::new();
            for (j, v) in o.vteps.iter().enumerate() {
                if !vias.insert(v.via) {
                    err(
                        format!("{at}.vteps[{j}].via"),
                        format!("{} has two VTEPs", v.via),
                    );
                }
                if !EthernetAddress(v.mac.0).is_unicast() {
                    err(
                        format!("{at}.vteps[{j}].mac"),
                        format!("{} is not a unicast MAC", EthernetAddress(v.mac.0)),
                    );
                }
            }
        }
        let mut names: HashSet<String> = port_names.iter().map(|s| s.to_string()).collect();
        for (l, name) in self.logical().iter().zip(self.logical_names()) {
            let at = match l {
                Logical::Bond(i, _) => format!("bonds[{i}].name"),
                Logical::Subif(..) => "ports".into(),
                Logical::Overlay(i, _) => format!("vxlan.overlays[{i}].name"),
            };
            if !super::types::valid_name(&name) {
                err(
                    at.clone(),
                    format!("{name:?} is not a valid name: 1-15 of a-z A-Z 0-9 - _ ."),
                );
            }
            if !names.insert(name.clone()) {
                err(at, format!("interface name {name:?} is used twice"));
            }
        }
        errs
    }

    fn all_addresses(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .ports
            .iter()
            .flat_map(|p| p.addresses.iter().map(|a| a.0.address()))
            .collect();
        out.extend(
            self.bonds
                .iter()
                .flat_map(|b| b.addresses.iter().map(|a| a.0.address())),
        );
        for l in self.logical() {
            if let Logical::Subif(_, _, addrs) = l {
                out.extend(addrs.iter().map(|a| a.0.address()));
            }
        }
        out
    }

    /// Adds the logical interfaces to `ports` (physical ports already in it) with their
    /// connected routes and local addresses, and fills the VXLAN, subinterface and bond
    /// tables. Called by [`Config::tables`] before routes are added.
    pub fn build_overlay(&self, ports: &mut Vec<Port>, tables: &mut Tables) {
        let nphys = ports.len();
        // Physical ports: VLAN modes and bond membership.
        for (i, p) in self.ports.iter().enumerate() {
            ports[i].vlan = vlan_mode(&p.vlan);
        }
        let id = |name: &str| self.interface_id(name).unwrap_or_default();
        let mut bonds = Vec::new();
        let mut subifs = SubIfs::default();
        let mut overlays = Vec::new();
        let default_local = self
            .ports
            .iter()
            .find(|p| p.role == RoleCfg::Ctl && !p.addresses.is_empty())
            .and_then(|p| p.addresses.first())
            .map(|a| a.0.address())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        for (k, l) in self.logical().into_iter().enumerate() {
            let pid = PortId((nphys + k) as u16);
            let name = l.name();
            let (port, addrs) = match l {
                Logical::Bond(i, b) => {
                    let members: Vec<PortId> = b.members.iter().map(|m| id(m)).collect();
                    let first = members.first().and_then(|m| ports.get(m.index()));
                    let mac = first.map(|p| p.mac).unwrap_or_default();
                    let mtu = members
                        .iter()
                        .filter_map(|m| ports.get(m.index()).map(|p| p.mtu))
                        .min()
                        .unwrap_or(1500);
                    for m in &members {
                        if let Some(p) = ports.get_mut(m.index()) {
                            p.kind = PortKind::BondMember { bond: pid };
                            p.mac = mac;
                        }
                    }
                    bonds.push(Bond {
                        port: pid,
                        up: members.clone(),
                        members,
                        hash: match b.hash {
                            BondHashCfg::Layer34 => BondHash::Layer34,
                            BondHashCfg::Layer3 => BondHash::Layer3,
                        },
                    });
                    let port = Port {
                        id: pid,
                        name,
                        device: String::new(),
                        role: PortRole::Uplink,
                        mac,
                        addrs: Vec::new(),
                        mtu,
                        vlan: vlan_mode(&b.vlan),
                        kind: PortKind::Bond { index: i as u16 },
                    };
                    (port, b.addresses.clone())
                }
                Logical::Subif(parent, vid, addrs) => {
                    let parent_id = id(&parent);
                    let pp = ports.get(parent_id.index()).cloned().unwrap_or_default();
                    subifs.insert(parent_id, vid, pid);
                    let port = Port {
                        id: pid,
                        name,
                        device: pp.device.clone(),
                        role: pp.role,
                        mac: pp.mac,
                        addrs: Vec::new(),
                        mtu: pp.mtu,
                        vlan: VlanMode::Access(vid),
                        kind: PortKind::Vlan {
                            parent: parent_id,
                            vid,
                        },
                    };
                    (port, addrs)
                }
                Logical::Overlay(i, o) => {
                    let local = o.local.unwrap_or(default_local);
                    let v = o.vni.to_be_bytes();
                    let mac = o
                        .mac
                        .map(|m| m.0)
                        .unwrap_or([0x02, 0xaf, 0x78, v[1], v[2], v[3]]);
                    overlays.push(Overlay {
                        port: pid,
                        vni: o.vni,
                        local,
                        vteps: o
                            .vteps
                            .iter()
                            .map(|t| Vtep {
                                inner_via: t.via,
                                inner_mac: t.mac.0,
                                remote: t.remote,
                                outer: OuterHeader::new(local, t.remote, self.vxlan.port, o.vni),
                            })
                            .collect(),
                    });
                    let port = Port {
                        id: pid,
                        name,
                        device: String::new(),
                        role: PortRole::Pod,
                        mac,
                        addrs: Vec::new(),
                        mtu: o.mtu,
                        vlan: VlanMode::None,
                        kind: PortKind::Vxlan { index: i as u16 },
                    };
                    (port, Vec::new())
                }
            };
            let mut port = port;
            for a in &addrs {
                port.addrs.push((a.0.address(), a.0.prefix_len()));
                tables.local.insert(a.0.address(), pid);
                let net = a.0.network();
                if tables.fib.get(net.address(), net.prefix_len()).is_none() {
                    tables.fib.insert(
                        net.address(),
                        net.prefix_len(),
                        vec![NextHop {
                            port: pid,
                            via: None,
                        }],
                    );
                }
            }
            ports.push(port);
        }
        tables.vxlan = Vxlan::new(self.vxlan.port, overlays);
        tables.subifs = subifs;
        tables.bonds = Bonds { bonds };
    }

    /// Bond member ports and their devices, for the control thread's carrier polling.
    pub fn bond_members(&self) -> Vec<(PortId, String)> {
        self.bonds
            .iter()
            .flat_map(|b| b.members.iter())
            .filter_map(|m| {
                let p = self.ports.iter().find(|p| &p.name == m)?;
                Some((self.interface_id(m)?, p.device.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const OVERLAY: &str = r#"
workers: { cores: [0] }
ports:
  - { name: ctl, device: ctl, role: ctl, addresses: [10.186.152.103/24] }
  - name: biz
    device: biz
    vlan: { trunk: [1155, 1156], addresses: { 1155: [10.186.155.30/27] } }
  - { name: up0, device: up0 }
  - { name: up1, device: up1 }
  - { name: pod60, device: pod60, role: pod }
bonds:
  - { name: bond0, members: [up0, up1], hash: layer3+4, addresses: [10.186.160.103/24] }
vxlan:
  overlays:
    - name: vxlan.2
      vni: 2
      mac: "02:af:78:00:00:02"
      vteps: [{ via: 10.20.4.0, mac: "02:00:00:00:52:02", remote: 10.186.152.104 }]
routes:
  - { dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }
  - { dst: 0.0.0.0/0, via: 10.186.155.1, dev: biz.1155 }
  - { dst: 10.99.0.0/16, via: 10.186.160.254, dev: bond0 }
"#;

    fn errors(text: &str) -> Vec<(String, String)> {
        match Config::parse(text, Path::new("n.yaml")) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0.into_iter().map(|e| (e.field, e.message)).collect(),
        }
    }

    #[test]
    fn builds_logical_interfaces() {
        let c = Config::parse(OVERLAY, Path::new("n.yaml")).unwrap();
        let t = c.tables(&|_| Ok(([2, 0, 0, 0, 0, 1], 1500))).unwrap();
        // 5 physical + bond0, biz.1155, biz.1156, vxlan.2
        assert_eq!(t.ports.len(), 9);
        let by = |n: &str| t.ports.by_name(n).unwrap().clone();
        assert_eq!(by("bond0").kind, PortKind::Bond { index: 0 });
        assert_eq!(
            by("up1").kind,
            PortKind::BondMember {
                bond: by("bond0").id
            }
        );
        assert_eq!(
            by("biz.1155").kind,
            PortKind::Vlan {
                parent: by("biz").id,
                vid: 1155
            }
        );
        assert_eq!(by("vxlan.2").mtu, 1450);
        assert!(matches!(by("biz").vlan, VlanMode::Trunk { .. }));
        assert_eq!(t.subifs.get(by("biz").id, 1156), Some(by("biz.1156").id));
        let r = t.fib.lookup("10.20.4.7".parse().unwrap()).unwrap();
        assert_eq!(r.nexthops[0].port, by("vxlan.2").id);
        let r = t.fib.lookup("8.8.8.8".parse().unwrap()).unwrap();
        assert_eq!(r.nexthops[0].port, by("biz.1155").id);
        assert_eq!(
            t.local.get(&"10.186.155.30".parse::<Ipv4Addr>().unwrap()),
            Some(&by("biz.1155").id)
        );
        assert_eq!(
            t.local.get(&"10.186.160.103".parse::<Ipv4Addr>().unwrap()),
            Some(&by("bond0").id)
        );
        let o = t.vxlan.by_vni(2).unwrap();
        assert_eq!(o.local, "10.186.152.103".parse::<Ipv4Addr>().unwrap());
        assert_eq!(t.vxlan.udp_port, 4789);
        assert_eq!(t.bonds.bonds[0].up.len(), 2);
        assert_eq!(c.bond_members().len(), 2);
    }

    #[test]
    fn bad_overlay_config_names_fields() {
        let e = errors(&OVERLAY.replace("trunk: [1155, 1156]", "trunk: [1155, 4095]"));
        assert!(
            e.iter().any(|(f, _)| f == "ports[1].vlan.trunk[1]"),
            "{e:?}"
        );
        let e = errors(&OVERLAY.replace("members: [up0, up1]", "members: [up0, nope]"));
        assert!(
            e.iter()
                .any(|(f, m)| f == "bonds[0].members[1]" && m.contains("nope")),
            "{e:?}"
        );
        let e = errors(&OVERLAY.replace("vni: 2", "vni: 16777216"));
        assert!(e.iter().any(|(f, _)| f == "vxlan.overlays[0].vni"), "{e:?}");
        let e = errors(&OVERLAY.replace("dev: vxlan.2", "dev: vxlan.3"));
        assert!(e.iter().any(|(f, _)| f == "routes[0].dev"), "{e:?}");
        let e = errors(&OVERLAY.replace("hash: layer3+4", "hash: layer2"));
        assert!(
            e.iter().any(|(f, _)| f.starts_with("bonds[0].hash")),
            "{e:?}"
        );
        let e = errors(&OVERLAY.replace(
            "- { name: up0, device: up0 }",
            "- { name: up0, device: up0, addresses: [10.1.1.1/24] }",
        ));
        assert!(e.iter().any(|(f, _)| f == "bonds[0].members[0]"), "{e:?}");
    }
}
