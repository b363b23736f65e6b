//! The lab builder: namespaces, veth pairs, addresses, routes, neighbours, sysctls; and
//! [`Lab::node_lab`], the SPEC §3 topology the functional tests start from.
//!
//! A [`LabBuilder`] is plain data (so a topology can be extended before it is built, see
//! [`Lab::node_lab_with`]); [`LabBuilder::build`] applies it through the same `Lab::add_*`
//! methods a test can call afterwards to grow a running lab.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::util::{Mac, TempDir};

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct End {
    /// Role of the namespace it lives in (as given to [`LabBuilder::netns`]).
    pub ns: String,
    pub dev: String,
    pub mac: Option<Mac>,
    /// Overrides the pair's MTU for this end.
    pub mtu: Option<u32>,
    /// `a.b.c.d/len` addresses.
    pub addrs: Vec<String>,
    /// This end is an afgate port: besides TX checksum offload, GRO/TSO/GSO are turned off, so
    /// the XDP program sees wire-sized frames with complete checksums.
    pub dataplane: bool,
}

impl End {
    pub fn new(ns: &str, dev: &str) -> End {
        End {
            ns: ns.into(),
            dev: dev.into(),
            mac: None,
            mtu: None,
            addrs: Vec::new(),
            dataplane: false,
        }
    }
    pub fn mac(mut self, mac: Mac) -> End {
        self.mac = Some(mac);
        self
    }
    pub fn mtu(mut self, mtu: u32) -> End {
        self.mtu = Some(mtu);
        self
    }
    pub fn addr(mut self, cidr: &str) -> End {
        self.addrs.push(cidr.into());
        self
    }
    pub fn dataplane(mut self) -> End {
        self.dataplane = true;
        self
    }
}

/// A veth pair between two namespaces. Both ends are brought up, and both get TX checksum
/// offload disabled: with it on, the kernel hands veth frames over with CHECKSUM_PARTIAL (the
/// L4 checksum is only a pseudo-header sum), which the kernel's own forwarding copes with but
/// a userspace forwarder would put on the wire as is. See `ethtool -K dev tx off` in [`Lab`].
#[derive(Clone, Debug)]
pub struct VethSpec {
    pub a: End,
    pub b: End,
    pub mtu: u32,
    /// rx and tx queues on each end: one per afgate worker (each worker serves one queue).
    pub queues: u32,
}

impl VethSpec {
    pub fn new(a: End, b: End) -> VethSpec {
        VethSpec {
            a,
            b,
            mtu: 1500,
            queues: 1,
        }
    }
    pub fn mtu(mut self, mtu: u32) -> VethSpec {
        self.mtu = mtu;
        self
    }
    pub fn queues(mut self, queues: u32) -> VethSpec {
        self.queues = queues.max(1);
        self
    }
}

#[derive(Clone, Debug)]
enum Step {
    Sysctl {
        ns: String,
        key: String,
        val: String,
    },
    Route {
        ns: String,
        spec: String,
    },
    Neigh {
        ns: String,
        dev: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
}

/// A topology as data. Build order: namespaces, veths (with MACs, MTUs, addresses, offloads,
/// up), then sysctls, routes and neighbours in the order they were declared.
#[derive(Clone, Debug, Default)]
pub struct LabBuilder {
    namespaces: Vec<String>,
    veths: Vec<VethSpec>,
    steps: Vec<Step>,
}

impl LabBuilder {
    pub fn new() -> LabBuilder {
        LabBuilder::default()
    }
    /// Adds a namespace for `role` (`node`, `pod`, ...). Roles are unique within a lab.
    pub fn netns(mut self, role: &str) -> LabBuilder {
        self.namespaces.push(role.into());
        self
    }
    pub fn veth(mut self, spec: VethSpec) -> LabBuilder {
        self.veths.push(spec);
        self
    }
    /// Gives every veth declared so far `n` rx/tx queues (for multi-worker labs).
    pub fn queues(mut self, n: u32) -> LabBuilder {
        for v in &mut self.veths {
            v.queues = n.max(1);
        }
        self
    }
    /// `ip route replace SPEC` in `ns`, e.g. `"default via 169.254.1.1 dev eth0 onlink"` or
    /// `"10.20.9.60 dev pod60 scope link"`.
    pub fn route(mut self, ns: &str, spec: &str) -> LabBuilder {
        self.steps.push(Step::Route {
            ns: ns.into(),
            spec: spec.into(),
        });
        self
    }
    /// A permanent neighbour entry.
    pub fn neigh(mut self, ns: &str, dev: &str, ip: Ipv4Addr, mac: Mac) -> LabBuilder {
        self.steps.push(Step::Neigh {
            ns: ns.into(),
            dev: dev.into(),
            ip,
            mac,
        });
        self
    }
    pub fn sysctl(mut self, ns: &str, key: &str, val: &str) -> LabBuilder {
        self.steps.push(Step::Sysctl {
            ns: ns.into(),
            key: key.into(),
            val: val.into(),
        });
        self
    }
    pub fn ip_forward(self, ns: &str) -> LabBuilder {
        self.sysctl(ns, "net.ipv4.ip_forward", "1")
    }
    /// The kernel answers ARP on `dev` for any address it routes out of another device.
    pub fn proxy_arp(self, ns: &str, dev: &str) -> LabBuilder {
        self.sysctl(ns, &format!("net.ipv4.conf.{dev}.proxy_arp"), "1")
    }

    /// Creates everything. On error, whatever was created is torn down by the partial
    /// [`Lab`]'s drop.
    pub fn build(self) -> Result<Lab> {
        let mut lab = Lab::empty()?;
        for role in &self.namespaces {
            lab.add_netns(role)?;
        }
        for v in &self.veths {
            lab.add_veth(v)?;
        }
        for s in &self.steps {
            match s {
                Step::Sysctl { ns, key, val } => lab.ns(ns).sysctl(key, val)?,
                Step::Route { ns, spec } => lab.add_route(ns, spec)?,
                Step::Neigh { ns, dev, ip, mac } => lab.add_neigh(ns, dev, *ip, *mac)?,
            }
        }
        Ok(lab)
    }
}

/// A built topology: its namespaces by role, plus a scratch directory for configs and pcaps.
pub struct Lab {
    namespaces: Vec<(String, Netns)>,
    tmp: TempDir,
}

impl Lab {
    fn empty() -> Result<Lab> {
        Ok(Lab {
            namespaces: Vec::new(),
            tmp: TempDir::new("lab")?,
        })
    }

    pub fn builder() -> LabBuilder {
        LabBuilder::new()
    }

    /// The SPEC §3 node topology; see [`NodeLab`].
    pub fn node_lab() -> Result<NodeLab> {
        NodeLab::build_with(|b| b)
    }

    /// [`Lab::node_lab`] with more declared before building (extra namespaces, links, routes).
    pub fn node_lab_with(extend: impl FnOnce(LabBuilder) -> LabBuilder) -> Result<NodeLab> {
        NodeLab::build_with(extend)
    }

    /// The namespace for `role`. Panics on an unknown role: that is a typo in the test.
    pub fn ns(&self, role: &str) -> &Netns {
        self.try_ns(role)
            .unwrap_or_else(|| panic!("lab has no namespace with role {role:?}"))
    }

    pub fn try_ns(&self, role: &str) -> Option<&Netns> {
        self.namespaces
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, n)| n)
    }

    /// Kernel names of all namespaces of this lab.
    pub fn netns_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|(_, n)| n.name().to_string())
            .collect()
    }

    /// Scratch directory that lives as long as the lab (configs, pcaps, logs).
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// Creates a namespace for `role`, set up as every lab namespace is: IPv6 off (so captures
    /// hold only the lab's IPv4 traffic, no router solicitations or DAD), reverse-path filtering
    /// off (tests route asymmetrically on purpose), loopback up.
    pub fn add_netns(&mut self, role: &str) -> Result<&Netns> {
        if self.try_ns(role).is_some() {
            bail!("lab already has a namespace with role {role:?}");
        }
        let ns = Netns::new(role)?;
        // Push first: if the set-up below fails, Lab's drop still deletes the namespace.
        self.namespaces.push((role.to_string(), ns.clone()));
        for (k, v) in [
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            ns.sysctl(k, v)?;
        }
        Ok(self.ns(role))
    }

    /// Creates a veth pair directly in its two namespaces (never in the root namespace, so
    /// fixed device names like `eth0` cannot collide between parallel labs), then sets MACs,
    /// MTU, offloads, addresses, and brings both ends up.
    pub fn add_veth(&mut self, v: &VethSpec) -> Result<()> {
        let a = self.ns(&v.a.ns).clone();
        let b = self.ns(&v.b.ns).clone();
        let mtu_a = v.a.mtu.unwrap_or(v.mtu).to_string();
        let mtu_b = v.b.mtu.unwrap_or(v.mtu).to_string();
        let mac_a = v.a.mac.map(|m| m.to_string());
        let mac_b = v.b.mac.map(|m| m.to_string());
        let queues = v.queues.to_string();
        let mut argv = vec!["link", "add", &v.a.dev, "mtu", &mtu_a];
        if let Some(m) = &mac_a {
            argv.extend(["address", m.as_str()]);
        }
        argv.extend(["numtxqueues", &queues, "numrxqueues", &queues]);
        argv.extend([
            "type",
            "veth",
            "peer",
            "name",
            &v.b.dev,
            "netns",
            b.name(),
            "mtu",
            &mtu_b,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ]);
        if let Some(m) = &mac_b {
            argv.extend(["address", m.as_str()]);
        }
        a.ip(&argv)?;
        for (ns, end) in [(&a, &v.a), (&b, &v.b)] {
            // TX checksum offload off on both ends: see VethSpec. This also drops TSO/GSO
            // on that device (they need checksum offload).
            ns.exec_ok(&["ethtool", "-K", &end.dev, "tx", "off"])
                .context(
                    "disable TX checksum offload (is ethtool installed? scripts/install-deps.sh)",
                )?;
            if end.dataplane {
                ns.exec_ok(&[
                    "ethtool", "-K", &end.dev, "gro", "off", "tso", "off", "gso", "off",
                ])?;
            }
            for cidr in &end.addrs {
                ns.ip(&["addr", "add", cidr, "dev", &end.dev])?;
            }
            ns.ip(&["link", "set", &end.dev, "up"])?;
        }
        Ok(())
    }

    /// `ip route replace SPEC` in the namespace of `role`.
    pub fn add_route(&mut self, role: &str, spec: &str) -> Result<()> {
        let mut argv = vec!["route", "replace"];
        argv.extend(spec.split_whitespace());
        self.ns(role).ip(&argv).map(drop)
    }

    /// A permanent neighbour entry in the namespace of `role`.
    pub fn add_neigh(&mut self, role: &str, dev: &str, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        self.ns(role)
            .ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac.to_string(),
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .map(drop)
    }
}

/// A host on the far side of a node port: its namespace, device, MAC and address.
#[derive(Clone)]
pub struct Endpoint {
    pub ns: Netns,
    pub dev: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
}

/// A node-side device afgate owns, and the MAC of the device at the other end of its wire.
#[derive(Clone, Debug)]
pub struct NodePort {
    /// Kernel device in the node namespace; also afgate's port name in the generated config.
    pub dev: String,
    pub mac: Mac,
    pub peer_mac: Mac,
}

/// Every address of [`NodeLab`], from SPEC §3.
#[derive(Clone, Debug)]
pub struct NodeAddrs {
    /// Overlay pod on `pod60`.
    pub pod_ip: Ipv4Addr,
    /// Second overlay pod on `pod41`.
    pub pod2_ip: Ipv4Addr,
    /// Local overlay pod subnet (the gateway routes it to biz).
    pub pod_cidr: &'static str,
    /// The pods' gateway, answered by proxy ARP on the pod ports.
    pub pod_gw: Ipv4Addr,
    pub pod_mtu: u32,
    /// The node's uplink address (on `biz`).
    pub biz_ip: Ipv4Addr,
    pub biz_prefix: u8,
    /// The default gateway (gw's end of the biz link).
    pub gw_ip: Ipv4Addr,
    /// gw's address towards ext.
    pub gw_ext_ip: Ipv4Addr,
    /// A host behind the gateway.
    pub ext_ip: Ipv4Addr,
    pub ext_prefix: u8,
}

impl Default for NodeAddrs {
    fn default() -> NodeAddrs {
        NodeAddrs {
            pod_ip: Ipv4Addr::new(10, 20, 9, 60),
            pod2_ip: Ipv4Addr::new(10, 20, 9, 41),
            pod_cidr: "10.20.9.0/25",
            pod_gw: Ipv4Addr::new(169, 254, 1, 1),
            pod_mtu: 1450,
            biz_ip: Ipv4Addr::new(10, 186, 153, 103),
            biz_prefix: 24,
            gw_ip: Ipv4Addr::new(10, 186, 153, 254),
            gw_ext_ip: Ipv4Addr::new(10, 186, 200, 254),
            ext_ip: Ipv4Addr::new(10, 186, 200, 10),
            ext_prefix: 24,
        }
    }
}

/// The node ports of [`NodeLab`].
#[derive(Clone, Debug)]
pub struct NodePorts {
    pub pod60: NodePort,
    pub pod41: NodePort,
    pub biz: NodePort,
}

/// The SPEC §3 node topology (drawn in the crate docs):
///
/// - `node`: afgate's namespace, with ports `pod60`, `pod41` (MTU 1450) and `biz`
///   (10.186.153.103/24). The kernel is configured to do the same forwarding job as afgate
///   (ip_forward, `10.20.9.60 dev pod60 scope link`, proxy ARP for 169.254.1.1 on the pod
///   ports, default via gw), so traffic still flows when afgate is not running or was
///   SIGKILLed and its XDP program passes frames to the kernel: fail-open.
/// - `pod` / `pod2`: overlay pods 10.20.9.60/32 and 10.20.9.41/32 on `eth0`, MTU 1450,
///   `default via 169.254.1.1 dev eth0 onlink`.
/// - `gw`: the top-of-rack gateway, 10.186.153.254/24 on `eth0` (to biz), 10.186.200.254/24 on
///   `eth1` (to ext), `10.20.9.0/25 via 10.186.153.103`, forwarding.
/// - `ext`: a host behind the gateway, 10.186.200.10/24, default via 10.186.200.254.
///
/// MACs are fixed: `02:af:<link>:00:00:<side>` with links 1 pod60, 2 pod41, 3 biz, 4 gw–ext, side
/// 1 the node (or gw) end and 2 the far end.
pub struct NodeLab {
    /// The underlying lab; extend it with `lab.add_*` or via [`Lab::node_lab_with`].
    pub lab: Lab,
    pub node: Netns,
    pub pod: Endpoint,
    pub pod2: Endpoint,
    /// The gateway's end of the biz link.
    pub gw: Endpoint,
    /// ext's end of the gw–ext link.
    pub ext: Endpoint,
    /// gw's device towards ext, and its MAC.
    pub gw_ext_dev: String,
    pub gw_ext_mac: Mac,
    pub ports: NodePorts,
    pub addrs: NodeAddrs,
}

impl NodeLab {
    /// The namespace roles, as used with `lab.ns(role)` and in builder extensions.
    pub const NODE: &'static str = "node";
    pub const POD: &'static str = "pod";
    pub const POD2: &'static str = "pod2";
    pub const GW: &'static str = "gw";
    pub const EXT: &'static str = "ext";

    /// The declared topology, before [`LabBuilder::build`].
    pub fn builder() -> LabBuilder {
        let a = NodeAddrs::default();
        let ports = Self::ports();
        let pod_ip = format!("{}/32", a.pod_ip);
        let pod2_ip = format!("{}/32", a.pod2_ip);
        let biz = format!("{}/{}", a.biz_ip, a.biz_prefix);
        let gw = format!("{}/{}", a.gw_ip, a.biz_prefix);
        let gw_ext = format!("{}/{}", a.gw_ext_ip, a.ext_prefix);
        let ext = format!("{}/{}", a.ext_ip, a.ext_prefix);
        let pod_default = format!("default via {} dev eth0 onlink", a.pod_gw);
        LabBuilder::new()
            .netns(Self::NODE)
            .netns(Self::POD)
            .netns(Self::POD2)
            .netns(Self::GW)
            .netns(Self::EXT)
            .veth(
                VethSpec::new(
                    End::new(Self::NODE, "pod60")
                        .mac(ports.pod60.mac)
                        .dataplane(),
                    End::new(Self::POD, "eth0")
                        .mac(ports.pod60.peer_mac)
                        .addr(&pod_ip),
                )
                .mtu(a.pod_mtu),
            )
            .veth(
                VethSpec::new(
                    End::new(Self::NODE, "pod41")
                        .mac(ports.pod41.mac)
                        .dataplane(),
                    End::new(Self::POD2, "eth0")
                        .mac(ports.pod41.peer_mac)
                        .addr(&pod2_ip),
                )
                .mtu(a.pod_mtu),
            )
            .veth(VethSpec::new(
                End::new(Self::NODE, "biz")
                    .mac(ports.biz.mac)
                    .addr(&biz)
                    .dataplane(),
                End::new(Self::GW, "eth0").mac(ports.biz.peer_mac).addr(&gw),
            ))
            .veth(VethSpec::new(
                End::new(Self::GW, "eth1").mac(Mac::lab(4, 1)).addr(&gw_ext),
                End::new(Self::EXT, "eth0").mac(Mac::lab(4, 2)).addr(&ext),
            ))
            .route(Self::POD, &pod_default)
            .route(Self::POD2, &pod_default)
            // The node: the kernel's version of afgate's job.
            .ip_forward(Self::NODE)
            .route(Self::NODE, &format!("{} dev pod60 scope link", a.pod_ip))
            .route(Self::NODE, &format!("{} dev pod41 scope link", a.pod2_ip))
            .route(Self::NODE, &format!("default via {} dev biz", a.gw_ip))
            // No address on the pod ports: proxy ARP answers for 169.254.1.1 because the node
            // routes it out of another device (biz, by the default route), as Calico does.
            .proxy_arp(Self::NODE, "pod60")
            .proxy_arp(Self::NODE, "pod41")
            // Proxy ARP replies are otherwise delayed by a random 0..0.8 s (proxy_delay), which
            // makes a pod's first packet slow and timing-dependent.
            .sysctl(Self::NODE, "net.ipv4.neigh.pod60.proxy_delay", "0")
            .sysctl(Self::NODE, "net.ipv4.neigh.pod41.proxy_delay", "0")
            .ip_forward(Self::GW)
            .route(Self::GW, &format!("{} via {}", a.pod_cidr, a.biz_ip))
            .route(Self::EXT, &format!("default via {}", a.gw_ext_ip))
    }

    fn ports() -> NodePorts {
        NodePorts {
            pod60: NodePort {
                dev: "pod60".into(),
                mac: Mac::lab(1, 1),
                peer_mac: Mac::lab(1, 2),
            },
            pod41: NodePort {
                dev: "pod41".into(),
                mac: Mac::lab(2, 1),
                peer_mac: Mac::lab(2, 2),
            },
            biz: NodePort {
                dev: "biz".into(),
                mac: Mac::lab(3, 1),
                peer_mac: Mac::lab(3, 2),
            },
        }
    }

    fn build_with(extend: impl FnOnce(LabBuilder) -> LabBuilder) -> Result<NodeLab> {
        let lab = extend(NodeLab::builder()).build()?;
        let a = NodeAddrs::default();
        let ports = Self::ports();
        let ep = |role: &str, dev: &str, mac: Mac, ip: Ipv4Addr| Endpoint {
            ns: lab.ns(role).clone(),
            dev: dev.into(),
            mac,
            ip,
        };
        Ok(NodeLab {
            node: lab.ns(Self::NODE).clone(),
            pod: ep(Self::POD, "eth0", ports.pod60.peer_mac, a.pod_ip),
            pod2: ep(Self::POD2, "eth0", ports.pod41.peer_mac, a.pod2_ip),
            gw: ep(Self::GW, "eth0", ports.biz.peer_mac, a.gw_ip),
            ext: ep(Self::EXT, "eth0", Mac::lab(4, 2), a.ext_ip),
            gw_ext_dev: "eth1".into(),
            gw_ext_mac: Mac::lab(4, 1),
            ports,
            addrs: a,
            lab,
        })
    }

    /// afgate's config for this lab: one worker on core 0, the three ports, the same routes as
    /// the kernel's, and static neighbours for the gateway and the pods (their MACs are fixed,
    /// so the first tests do not depend on afgate's ARP resolution).
    pub fn afgate_config_yaml(&self) -> String {
        let a = &self.addrs;
        let p = &self.ports;
        let mut y = String::new();
        // write! to a String cannot fail.
        let _ = writeln!(
            y,
            "# generated by afgate-tests NodeLab::write_afgate_config"
        );
        let _ = writeln!(y, "workers:\n  cores: [0]\n  poll: adaptive");
        // Each lab's afgate gets its own control socket, so labs can run side by side.
        let _ = writeln!(
            y,
            "api:\n  socket: {}",
            self.lab.tmp().join("afgate.sock").display()
        );
        let _ = writeln!(y, "ports:");
        let _ = writeln!(
            y,
            "  - name: {b}\n    device: {b}\n    role: uplink\n    addresses: [{}/{}]",
            a.biz_ip,
            a.biz_prefix,
            b = p.biz.dev
        );
        for port in [&p.pod60, &p.pod41] {
            let _ = writeln!(
                y,
                "  - name: {d}\n    device: {d}\n    role: pod",
                d = port.dev
            );
        }
        let _ = writeln!(y, "routes:");
        let _ = writeln!(y, "  - {{ dst: {}/32, dev: {} }}", a.pod_ip, p.pod60.dev);
        let _ = writeln!(y, "  - {{ dst: {}/32, dev: {} }}", a.pod2_ip, p.pod41.dev);
        let _ = writeln!(
            y,
            "  - {{ dst: 0.0.0.0/0, via: {}, dev: {} }}",
            a.gw_ip, p.biz.dev
        );
        let _ = writeln!(y, "neighbors:");
        for (ip, mac, dev) in [
            (a.gw_ip, p.biz.peer_mac, &p.biz.dev),
            (a.pod_ip, p.pod60.peer_mac, &p.pod60.dev),
            (a.pod2_ip, p.pod41.peer_mac, &p.pod41.dev),
        ] {
            let _ = writeln!(y, "  - {{ ip: {ip}, mac: \"{mac}\", dev: {dev} }}");
        }
        y
    }

    /// Writes [`NodeLab::afgate_config_yaml`] to `path`.
    pub fn write_afgate_config(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.afgate_config_yaml())
            .with_context(|| format!("write {}", path.display()))
    }

    /// Writes the config into the lab's scratch directory and returns its path.
    pub fn afgate_config_file(&self) -> Result<std::path::PathBuf> {
        let path = self.lab.tmp().join("afgate.yaml");
        self.write_afgate_config(&path)?;
        Ok(path)
    }
}
