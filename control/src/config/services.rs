//! `services:`, `masquerade:` and `conntrack:`: kube-proxy's job (SPEC B1–B7, B12) as
//! configuration. Each `services` entry is one port of a Kubernetes Service.
//!
//! ```yaml
//! services:
//!   - name: web                      # unique; also the source of the service's stable id
//!     type: nodeport                 # clusterip (default) | nodeport | loadbalancer
//!     cluster_ip: 10.96.10.1
//!     port: 80
//!     protocol: tcp                  # tcp (default) | udp
//!     target_port: 8080              # backends' port unless a backend gives its own
//!     node_port: 31234               # with type nodeport/loadbalancer: every node address
//!     external_ips: [192.0.2.10]
//!     load_balancer_ips: []
//!     scheduler: rr                  # rr | wrr | lc | sh | random | maglev (default)
//!     session_affinity: { client_ip_timeout: 10800 }
//!     external_traffic_policy: cluster   # cluster (default, SNAT) | local (client kept)
//!     backends:
//!       - { addr: 10.20.9.60, weight: 1, state: ready, local: true }
//! masquerade:                        # SNAT for traffic matching all given fields
//!   - { src: 10.186.155.0/27, in_port: biz.1155, in_vlan: 1155, dst: 10.96.0.0/16, to: egress }
//! conntrack: { capacity: 262144, timeouts: { udp: 30 } }
//! ```

use super::{Cidr, Config};
use afgate_dataplane::conntrack;
use afgate_dataplane::service::{
    Backend, BackendState, MAX_BACKENDS, MAX_SERVICES, MasqRule, PROTO_TCP, PROTO_UDP, Scheduler,
    ServiceSpec, ServiceTable, SnatTo, maglev::fnv1a64,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// Reachable on `cluster_ip:port` (and external/LB IPs if given).
    #[default]
    ClusterIp,
    /// Also on every node address at `node_port`.
    NodePort,
    /// A NodePort whose `load_balancer_ips` are served too.
    LoadBalancer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerCfg {
    Rr,
    Wrr,
    Lc,
    Sh,
    Random,
    /// Weighted Maglev: consistent across nodes and backend changes.
    #[default]
    Maglev,
}

impl From<SchedulerCfg> for Scheduler {
    fn from(s: SchedulerCfg) -> Scheduler {
        match s {
            SchedulerCfg::Rr => Scheduler::Rr,
            SchedulerCfg::Wrr => Scheduler::Wrr,
            SchedulerCfg::Lc => Scheduler::Lc,
            SchedulerCfg::Sh => Scheduler::Sh,
            SchedulerCfg::Random => Scheduler::Random,
            SchedulerCfg::Maglev => Scheduler::Maglev,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrafficPolicyCfg {
    /// Any ready backend; outside clients are source-NATed.
    #[default]
    Cluster,
    /// Only backends on this node; the client address is kept.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendStateCfg {
    #[default]
    Ready,
    /// Draining: keeps established flows, takes no new ones.
    Terminating,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityCfg {
    /// Seconds a client stays on its backend after its last new flow (Kubernetes' default
    /// is 10800).
    #[serde(default = "default_affinity")]
    pub client_ip_timeout: u32,
}

fn default_affinity() -> u32 {
    10_800
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendCfg {
    pub addr: Ipv4Addr,
    /// Default: the service's `target_port`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u16,
    #[serde(default)]
    pub state: BackendStateCfg,
    /// The backend runs on this node (for `external_traffic_policy: local`).
    #[serde(default = "yes")]
    pub local: bool,
}

fn one() -> u16 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCfg {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    #[serde(default)]
    pub cluster_ip: Option<Ipv4Addr>,
    pub port: u16,
    #[serde(default)]
    pub protocol: L4Proto,
    /// Default: `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    #[serde(default)]
    pub node_port: Option<u16>,
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub scheduler: SchedulerCfg,
    #[serde(default)]
    pub session_affinity: Option<AffinityCfg>,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicyCfg,
    #[serde(default)]
    pub backends: Vec<BackendCfg>,
}

impl ServiceCfg {
    /// The stable service id: FNV-1a of the name (never 0), so that reordering the list or
    /// adding services does not renumber the others' conntrack entries.
    pub fn id(&self) -> u32 {
        let h = fnv1a64(self.name.as_bytes());
        ((h ^ (h >> 32)) as u32).max(1)
    }

    fn proto(&self) -> u8 {
        match self.protocol {
            L4Proto::Tcp => PROTO_TCP,
            L4Proto::Udp => PROTO_UDP,
        }
    }

    pub fn spec(&self) -> ServiceSpec {
        let target = self.target_port.unwrap_or(self.port);
        ServiceSpec {
            id: self.id(),
            name: self.name.clone(),
            proto: self.proto(),
            port: self.port,
            cluster_ip: self.cluster_ip,
            node_port: match self.kind {
                ServiceType::ClusterIp => None,
                _ => self.node_port,
            },
            external_ips: self.external_ips.clone(),
            lb_ips: match self.kind {
                ServiceType::LoadBalancer => self.load_balancer_ips.clone(),
                _ => Vec::new(),
            },
            scheduler: self.scheduler.into(),
            affinity_timeout: self.session_affinity.as_ref().map(|a| a.client_ip_timeout),
            etp_local: self.external_traffic_policy == TrafficPolicyCfg::Local,
            backends: self
                .backends
                .iter()
                .map(|b| Backend {
                    addr: b.addr,
                    port: b.port.unwrap_or(target),
                    weight: b.weight,
                    state: match b.state {
                        BackendStateCfg::Ready => BackendState::Ready,
                        BackendStateCfg::Terminating => BackendState::Terminating,
                    },
                    local: b.local,
                })
                .collect(),
        }
    }
}

/// Where a masquerade rule's SNAT source comes from: `egress` (the egress port's address,
/// MASQUERADE) or a fixed address (SNAT --to-source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatToCfg(pub Option<Ipv4Addr>);

impl<'de> Deserialize<'de> for SnatToCfg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "egress" {
            return Ok(SnatToCfg(None));
        }
        s.parse().map(|a| SnatToCfg(Some(a))).map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is neither `egress` nor an IPv4 address"))
        })
    }
}

impl Serialize for SnatToCfg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str("egress"),
            Some(a) => s.collect_str(&a),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasqCfg {
    /// Source prefix; default any.
    #[serde(default)]
    pub src: Option<Cidr>,
    /// Ingress port or interface name (e.g. `biz.1155`); default any.
    #[serde(default)]
    pub in_port: Option<String>,
    /// Ingress VLAN; default any.
    #[serde(default)]
    pub in_vlan: Option<u16>,
    /// Destination prefix as the packet arrived (before DNAT); default any.
    #[serde(default)]
    pub dst: Option<Cidr>,
    #[serde(default)]
    pub to: SnatToCfg,
    /// Conntrack mark recorded on matching flows (kube-proxy's 0x200 for this rule).
    #[serde(default = "default_mark")]
    pub mark: u32,
}

fn default_mark() -> u32 {
    0x200
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsCfg {
    #[serde(default)]
    pub tcp_established: Option<u32>,
    #[serde(default)]
    pub tcp_syn_sent: Option<u32>,
    #[serde(default)]
    pub tcp_time_wait: Option<u32>,
    #[serde(default)]
    pub tcp_close: Option<u32>,
    #[serde(default)]
    pub udp: Option<u32>,
    #[serde(default)]
    pub udp_stream: Option<u32>,
    #[serde(default)]
    pub icmp: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackCfg {
    /// Maximum tracked flows (`nf_conntrack_max`), 1024-16777216.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Idle timeouts in seconds; unset ones keep netfilter's defaults.
    #[serde(default)]
    pub timeouts: Option<TimeoutsCfg>,
}

fn default_capacity() -> u32 {
    262_144
}

impl Default for ConntrackCfg {
    fn default() -> Self {
        ConntrackCfg {
            capacity: default_capacity(),
            timeouts: None,
        }
    }
}

impl ConntrackCfg {
    pub fn config(&self) -> conntrack::Config {
        let mut t = conntrack::Timeouts::default();
        if let Some(c) = &self.timeouts {
            let set = |v: &mut u32, o: Option<u32>| *v = o.unwrap_or(*v);
            set(&mut t.tcp_established, c.tcp_established);
            set(&mut t.tcp_syn_sent, c.tcp_syn_sent);
            set(&mut t.tcp_time_wait, c.tcp_time_wait);
            set(&mut t.tcp_close, c.tcp_close);
            set(&mut t.udp, c.udp);
            set(&mut t.udp_stream, c.udp_stream);
            set(&mut t.icmp, c.icmp);
        }
        conntrack::Config {
            capacity: self.capacity,
            timeouts: t,
        }
    }
}

impl Config {
    /// The services and masquerade rules as the dataplane's table. Call on a validated
    /// config: conflicts were reported by [`Config::validate_services`].
    pub fn service_table(&self) -> ServiceTable {
        self.service_table_with_progress(&mut |_, _| {})
    }

    /// [`Config::service_table`], calling `progress(built, total)` every 10,000 services.
    pub fn service_table_with_progress(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> ServiceTable {
        let mut t = ServiceTable::new();
        let total = self.services.len();
        for (i, s) in self.services.iter().enumerate() {
            // Validation rejected conflicts; nothing is left to fail here.
            let _ = t.upsert(s.spec());
            if (i + 1) % 10_000 == 0 || i + 1 == total {
                progress(i + 1, total);
            }
        }
        t.masquerade = self
            .masquerade
            .iter()
            .map(|m| MasqRule {
                src: m.src.map(|c| c.0).unwrap_or(ANY),
                in_port: m.in_port.as_deref().and_then(|p| self.interface_id(p)),
                in_vlan: m.in_vlan,
                dst: m.dst.map(|c| c.0).unwrap_or(ANY),
                to: match m.to.0 {
                    None => SnatTo::Egress,
                    Some(a) => SnatTo::Address(a),
                },
                mark: m.mark,
            })
            .collect();
        t
    }

    /// Checks of `services`, `masquerade` and `conntrack`; each problem as (field, message).
    pub fn validate_services(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        let mut err = |f: String, m: String| errs.push((f, m));
        if self.services.len() > MAX_SERVICES {
            err(
                "services".into(),
                format!("{} services; at most {MAX_SERVICES}", self.services.len()),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<u32, usize> = HashMap::new();
        // (addr, port, proto) → (service index, field) of its first user.
        let mut fronts: HashMap<(Ipv4Addr, u16, u8), (usize, String)> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let f = |k: &str| format!("services[{i}].{k}");
            if s.name.is_empty() {
                err(f("name"), "must not be empty".into());
            } else if let Some(j) = names.insert(&s.name, i) {
                err(
                    f("name"),
                    format!("{:?} is also services[{j}]'s name", s.name),
                );
            } else if let Some(j) = ids.insert(s.id(), i) {
                err(
                    f("name"),
                    format!(
                        "{:?} hashes to the same id as services[{j}]; rename one",
                        s.name
                    ),
                );
            }
            if s.port == 0 {
                err(f("port"), "must be 1-65535".into());
            }
            match s.kind {
                ServiceType::ClusterIp if s.cluster_ip.is_none() && s.external_ips.is_empty() => {
                    err(
                        f("cluster_ip"),
                        "missing: a clusterip service needs cluster_ip or external_ips".into(),
                    )
                }
                ServiceType::NodePort | ServiceType::LoadBalancer if s.node_port.is_none() => err(
                    f("node_port"),
                    "missing: needed by type nodeport/loadbalancer".into(),
                ),
                ServiceType::ClusterIp if s.node_port.is_some() => err(
                    f("node_port"),
                    "only for type nodeport or loadbalancer".into(),
                ),
                _ => {}
            }
            if s.kind != ServiceType::LoadBalancer && !s.load_balancer_ips.is_empty() {
                err(f("load_balancer_ips"), "only for type loadbalancer".into());
            }
            if s.node_port == Some(0) {
                err(f("node_port"), "must be 1-65535".into());
            }
            if s.target_port == Some(0) {
                err(f("target_port"), "must be 1-65535".into());
            }
            if let Some(a) = &s.session_affinity
                && a.client_ip_timeout == 0
            {
                err(
                    f("session_affinity.client_ip_timeout"),
                    "must be at least 1 second".into(),
                );
            }
            if s.backends.len() > MAX_BACKENDS {
                err(
                    f("backends"),
                    format!("{} backends; at most {MAX_BACKENDS}", s.backends.len()),
                );
            }
            let mut addrs = HashSet::new();
            for (j, b) in s.backends.iter().enumerate() {
                if !addrs.insert(b.addr) {
                    err(
                        format!("services[{i}].backends[{j}].addr"),
                        format!("{} is listed twice in this service", b.addr),
                    );
                }
                if b.port == Some(0) {
                    err(
                        format!("services[{i}].backends[{j}].port"),
                        "must be 1-65535".into(),
                    );
                }
                if b.addr.is_unspecified() || b.addr.is_broadcast() || b.addr.is_multicast() {
                    err(
                        format!("services[{i}].backends[{j}].addr"),
                        format!("{} cannot be a backend", b.addr),
                    );
                }
            }
            let proto = s.proto();
            let mut front =
                |addr: Ipv4Addr, port: u16, field: String| match fronts.get(&(addr, port, proto)) {
                    Some((j, _)) if *j != i => Some((
                        field,
                        format!(
                            "{}:{port}/{:?} is already served by services[{j}] ({:?})",
                            if addr.is_unspecified() {
                                "node port ".to_string()
                            } else {
                                addr.to_string()
                            },
                            s.protocol,
                            self.services[*j].name
                        )
                        .to_lowercase(),
                    )),
                    _ => {
                        fronts.insert((addr, port, proto), (i, field));
                        None
                    }
                };
            let mut found = Vec::new();
            if let Some(ip) = s.cluster_ip {
                found.extend(front(ip, s.port, f("cluster_ip")));
            }
            if let (Some(np), ServiceType::NodePort | ServiceType::LoadBalancer) =
                (s.node_port, s.kind)
            {
                found.extend(front(Ipv4Addr::UNSPECIFIED, np, f("node_port")));
            }
            for (k, ip) in s.external_ips.iter().enumerate() {
                found.extend(front(
                    *ip,
                    s.port,
                    format!("services[{i}].external_ips[{k}]"),
                ));
            }
            for (k, ip) in s.load_balancer_ips.iter().enumerate() {
                found.extend(front(
                    *ip,
                    s.port,
                    format!("services[{i}].load_balancer_ips[{k}]"),
                ));
            }
            for (field, m) in found {
                err(field, m);
            }
        }
        for (i, m) in self.masquerade.iter().enumerate() {
            if let Some(p) = &m.in_port
                && self.interface_id(p).is_none()
            {
                err(
                    format!("masquerade[{i}].in_port"),
                    format!("no port or interface named {p:?}"),
                );
            }
            if let Some(v) = m.in_vlan
                && !(1..=4094).contains(&v)
            {
                err(
                    format!("masquerade[{i}].in_vlan"),
                    format!("{v} is not a VLAN id; allowed: 1-4094"),
                );
            }
        }
        let c = &self.conntrack;
        if !(1024..=16 << 20).contains(&c.capacity) {
            err(
                "conntrack.capacity".into(),
                format!("{} is out of range; allowed: 1024-16777216", c.capacity),
            );
        }
        if let Some(t) = &c.timeouts {
            for (name, v) in [
                ("tcp_established", t.tcp_established),
                ("tcp_syn_sent", t.tcp_syn_sent),
                ("tcp_time_wait", t.tcp_time_wait),
                ("tcp_close", t.tcp_close),
                ("udp", t.udp),
                ("udp_stream", t.udp_stream),
                ("icmp", t.icmp),
            ] {
                if v == Some(0) {
                    err(
                        format!("conntrack.timeouts.{name}"),
                        "must be at least 1 second".into(),
                    );
                }
            }
        }
        errs
    }
}

const ANY: afgate_dataplane::wire::Ipv4Cidr =
    match afgate_dataplane::wire::Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0) {
        Ok(c) => c,
        Err(_) => panic!("0.0.0.0/0 is a valid prefix"),
    };

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const BASE: &str = r#"
ports:
  - { name: biz, device: biz, role: uplink, addresses: [10.186.153.103/24] }
  - { name: pod60, device: pod60, role: pod }
services:
  - name: web
    type: nodeport
    cluster_ip: 10.96.10.1
    port: 80
    target_port: 8080
    node_port: 31234
    scheduler: rr
    session_affinity: { client_ip_timeout: 60 }
    backends:
      - { addr: 10.20.9.60 }
      - { addr: 10.20.9.41, port: 9090, weight: 3, state: terminating, local: false }
  - name: dns
    cluster_ip: 10.96.0.10
    port: 53
    protocol: udp
    backends: [{ addr: 10.20.9.41 }]
masquerade:
  - { src: 10.186.155.0/27, in_port: biz, in_vlan: 1155, dst: 10.96.0.0/16, to: egress }
conntrack: { capacity: 4096, timeouts: { udp: 10 } }
"#;

    #[test]
    fn services_build_into_the_table() {
        let c = Config::parse(BASE, Path::new("n.yaml")).unwrap();
        let t = c.tables(&|_| Ok(([2, 0, 0, 0, 0, 1], 1500))).unwrap();
        let s = &t.services;
        assert_eq!(s.len(), 2);
        let vip = "10.96.10.1".parse().unwrap();
        let (web, _) = s.lookup(vip, 80, 6, false).unwrap();
        assert_eq!(web.backends()[0].port, 8080);
        assert_eq!(web.backends()[1].port, 9090);
        assert_eq!(web.spec.affinity_timeout, Some(60));
        assert!(
            s.lookup("10.186.153.103".parse().unwrap(), 31234, 6, true)
                .is_some()
        );
        assert!(
            s.lookup("10.96.0.10".parse().unwrap(), 53, 17, false)
                .is_some()
        );
        assert_eq!(s.masquerade.len(), 1);
        assert_eq!(s.masquerade[0].in_vlan, Some(1155));
        assert_eq!(c.conntrack.config().timeouts.udp, 10);
        assert_eq!(c.conntrack.config().capacity, 4096);
        assert_eq!(web.id(), c.services[0].id(), "id from the name");
    }

    fn errors(text: &str) -> Vec<(String, Option<usize>, String)> {
        Config::parse(text, Path::new("n.yaml"))
            .expect_err("rejected")
            .0
            .into_iter()
            .map(|e| (e.field, e.line, e.message))
            .collect()
    }

    #[test]
    fn conflicting_services_name_the_field() {
        let text = BASE.replace(
            "cluster_ip: 10.96.0.10\n    port: 53\n    protocol: udp",
            "cluster_ip: 10.96.10.1\n    port: 80\n    protocol: tcp",
        );
        let e = errors(&text);
        assert_eq!(e[0].0, "services[1].cluster_ip", "{e:?}");
        assert!(
            e[0].2.contains("10.96.10.1:80/tcp") && e[0].2.contains("services[0]"),
            "{e:?}"
        );
        assert_eq!(e[0].1, Some(18), "{e:?}");
    }

    #[test]
    fn bad_values_are_reported_with_paths() {
        let text = BASE
            .replace("in_port: biz,", "in_port: nope,")
            .replace("- { addr: 10.20.9.60 }", "- { addr: 10.20.9.41 }")
            .replace("capacity: 4096", "capacity: 10")
            .replace("scheduler: rr", "scheduler: fifo");
        let e = errors(&text);
        // Enum errors stop deserialisation first.
        assert_eq!(e[0].0, "services[0].scheduler", "{e:?}");
        assert!(e[0].2.contains("maglev"), "{e:?}");
        let text = text.replace("scheduler: fifo", "scheduler: wrr");
        let fields: Vec<String> = errors(&text).into_iter().map(|e| e.0).collect();
        assert!(
            fields.contains(&"masquerade[0].in_port".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"services[0].backends[1].addr".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"conntrack.capacity".to_string()),
            "{fields:?}"
        );
    }
}
