//! `reliability`: protections that are off unless configured (docs/reliability.md).
//!
//! ```yaml
//! reliability:
//!   # Above this many new flows per second on one worker, new ClusterIP flows are sent to
//!   # their Maglev backend without a conntrack entry (Katran's fallback; pipeline::flood).
//!   flood_guard: { new_flows_per_sec: 20000 }
//!   # Source address validation on pod ports (pipeline::antispoof).
//!   antispoof:
//!     - { port: pod60 }                        # allowed: the port's routes (its /32s)
//!     - { port: pod41, allow: [10.20.9.41/32, 10.20.9.96/28] }
//! ```

use super::{Cidr, Config, RoleCfg};
use afgate_dataplane::pipeline::antispoof::AntiSpoof;
use afgate_dataplane::pipeline::flood::FloodGuard;
use afgate_dataplane::tables::{PortId, Tables};
use afgate_dataplane::wire::Ipv4Cidr;
use serde::{Deserialize, Serialize};

/// Most prefixes one port may list: the check scans them per packet.
pub const MAX_ALLOW: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReliabilityCfg {
    /// Off when absent.
    #[serde(default)]
    pub flood_guard: Option<FloodGuardCfg>,
    /// Pod ports whose source addresses are validated; other ports are not.
    #[serde(default)]
    pub antispoof: Vec<AntiSpoofCfg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FloodGuardCfg {
    /// New flows per second per worker above which new ClusterIP flows are not tracked,
    /// 1-100000000.
    pub new_flows_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AntiSpoofCfg {
    /// A port with `role: pod`.
    pub port: String,
    /// Allowed source prefixes. Default: the destinations of the routes out of this port
    /// without a gateway (the pod's own /32s, as the CNI programs them).
    #[serde(default)]
    pub allow: Option<Vec<Cidr>>,
}

impl Config {
    /// The prefixes a validated port allows: its `allow` list, or its routes.
    fn antispoof_prefixes(&self, a: &AntiSpoofCfg) -> Vec<Ipv4Cidr> {
        if let Some(list) = &a.allow {
            return list.iter().map(|c| c.0.network()).collect();
        }
        self.routes
            .iter()
            .filter(|r| r.via.is_none() && r.dev.as_deref() == Some(a.port.as_str()))
            .map(|r| r.dst.0.network())
            .collect()
    }

    pub fn validate_reliability(&self) -> Vec<(String, String)> {
        let r = &self.reliability;
        let mut errs = Vec::new();
        if let Some(g) = r.flood_guard
            && !(1..=100_000_000).contains(&g.new_flows_per_sec)
        {
            errs.push((
                "reliability.flood_guard.new_flows_per_sec".into(),
                format!(
                    "{} is out of range; allowed: 1-100000000 (leave flood_guard out to turn it off)",
                    g.new_flows_per_sec
                ),
            ));
        }
        for (i, a) in r.antispoof.iter().enumerate() {
            let field = format!("reliability.antispoof[{i}]");
            match self.ports.iter().find(|p| p.name == a.port) {
                None => errs.push((
                    format!("{field}.port"),
                    format!("no port is named {:?}", a.port),
                )),
                Some(p) if p.role != RoleCfg::Pod => errs.push((
                    format!("{field}.port"),
                    format!(
                        "{:?} is not a pod port; source validation is for `role: pod` ports",
                        a.port
                    ),
                )),
                Some(_) => {}
            }
            if r.antispoof[..i].iter().any(|b| b.port == a.port) {
                errs.push((
                    format!("{field}.port"),
                    format!("{:?} is listed twice", a.port),
                ));
            }
            let n = self.antispoof_prefixes(a).len();
            if n == 0 {
                errs.push((
                    format!("{field}.allow"),
                    format!(
                        "no allowed prefixes: {:?} has no route without a gateway; list them in allow",
                        a.port
                    ),
                ));
            } else if n > MAX_ALLOW {
                errs.push((
                    format!("{field}.allow"),
                    format!("{n} prefixes; at most {MAX_ALLOW}"),
                ));
            }
        }
        errs
    }

    /// Puts the flood guard and the source validation into `tables`.
    pub fn build_reliability(&self, tables: &mut Tables) {
        let r = &self.reliability;
        tables.flood_guard = FloodGuard {
            new_flows_per_sec: r.flood_guard.map_or(0, |g| g.new_flows_per_sec),
        };
        let ports: Vec<(PortId, Vec<Ipv4Cidr>)> = r
            .antispoof
            .iter()
            .filter_map(|a| Some((self.port_id(&a.port)?, self.antispoof_prefixes(a))))
            .collect();
        tables.antispoof = AntiSpoof::new(&ports);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "ports:
  - { name: biz, device: biz, addresses: [10.186.153.103/24] }
  - { name: pod60, device: pod60, role: pod }
  - { name: pod41, device: pod41, role: pod }
routes:
  - { dst: 10.20.9.60/32, dev: pod60 }
";

    fn parse(extra: &str) -> Result<Config, Vec<(String, String)>> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("t.yaml")).map_err(|e| {
            e.0.iter()
                .map(|e| (e.field.clone(), e.message.clone()))
                .collect()
        })
    }

    #[test]
    fn defaults_are_off() {
        let c = parse("").unwrap();
        let mut t = Tables::default();
        c.build_reliability(&mut t);
        assert!(!t.flood_guard.is_enabled());
        assert!(!t.antispoof.is_enabled());
    }

    #[test]
    fn routes_are_the_default_allow_list() {
        let c = parse(
            "reliability:
  flood_guard: { new_flows_per_sec: 500 }
  antispoof:
    - { port: pod60 }
    - { port: pod41, allow: [10.20.9.41/32, 10.20.9.96/28] }
",
        )
        .unwrap();
        let mut t = Tables::default();
        c.build_reliability(&mut t);
        assert_eq!(t.flood_guard.new_flows_per_sec, 500);
        let ports = t.antispoof.ports();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].1, vec!["10.20.9.60/32".parse().unwrap()]);
        assert_eq!(ports[1].1.len(), 2);
    }

    #[test]
    fn bad_entries_name_their_field() {
        let e = parse(
            "reliability:
  flood_guard: { new_flows_per_sec: 0 }
  antispoof:
    - { port: biz }
    - { port: pod99 }
    - { port: pod41 }
    - { port: pod60 }
    - { port: pod60 }
",
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert!(
            fields.contains(&"reliability.flood_guard.new_flows_per_sec"),
            "{e:?}"
        );
        assert!(fields.contains(&"reliability.antispoof[0].port"), "{e:?}");
        assert!(fields.contains(&"reliability.antispoof[1].port"), "{e:?}");
        assert!(fields.contains(&"reliability.antispoof[2].allow"), "{e:?}");
        assert!(fields.contains(&"reliability.antispoof[4].port"), "{e:?}");
    }
}
