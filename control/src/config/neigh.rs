//! `neighbors_aging`: when learned neighbours are re-ARPed and removed
//! (`crate::neigh_ctl`). Static `neighbors` never age.
//!
//! ```yaml
//! neighbors_aging: { refresh_s: 300, expire_s: 330 }
//! ```

use super::Config;
use afgate_dataplane::tables::neigh::{EXPIRE_AFTER_S, REFRESH_AFTER_S};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NeighAgingCfg {
    /// A learned entry older than this (seconds since its last ARP confirmation) that is
    /// still in use gets a unicast ARP request, once a second until it answers.
    #[serde(default = "default_refresh")]
    pub refresh_s: u32,
    /// A learned entry older than this is removed, in use or not; the next frame to it
    /// resolves it again with a broadcast request. Must leave a few seconds after
    /// `refresh_s` for the refresh requests to be answered.
    #[serde(default = "default_expire")]
    pub expire_s: u32,
}

fn default_refresh() -> u32 {
    REFRESH_AFTER_S
}

fn default_expire() -> u32 {
    EXPIRE_AFTER_S
}

impl Default for NeighAgingCfg {
    fn default() -> Self {
        NeighAgingCfg {
            refresh_s: REFRESH_AFTER_S,
            expire_s: EXPIRE_AFTER_S,
        }
    }
}

/// Seconds between `refresh_s` and `expire_s` at the least: the control thread sends a
/// request each second, so this many chances to answer.
pub const MIN_REFRESH_WINDOW_S: u32 = 3;

impl Config {
    pub fn validate_neigh(&self) -> Vec<(String, String)> {
        let a = &self.neighbors_aging;
        let mut errs = Vec::new();
        if !(1..=86_400).contains(&a.refresh_s) {
            errs.push((
                "neighbors_aging.refresh_s".into(),
                format!("{} is out of range; allowed: 1-86400", a.refresh_s),
            ));
        }
        if a.expire_s < a.refresh_s.saturating_add(MIN_REFRESH_WINDOW_S) || a.expire_s > 172_800 {
            errs.push((
                "neighbors_aging.expire_s".into(),
                format!(
                    "{} is not allowed; at least refresh_s + {MIN_REFRESH_WINDOW_S} ({}) and at most 172800",
                    a.expire_s,
                    a.refresh_s.saturating_add(MIN_REFRESH_WINDOW_S)
                ),
            ));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "ports:\n  - { name: biz, device: biz, addresses: [10.186.153.103/24] }\n";

    fn parse(extra: &str) -> Result<Config, Vec<(String, String)>> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("n.yaml"))
            .map_err(|e| e.0.into_iter().map(|e| (e.field, e.message)).collect())
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse("").unwrap().neighbors_aging, NeighAgingCfg::default());
        let c = parse("neighbors_aging: { refresh_s: 2, expire_s: 6 }\n").unwrap();
        assert_eq!(
            c.neighbors_aging,
            NeighAgingCfg {
                refresh_s: 2,
                expire_s: 6
            }
        );
        let c = parse("neighbors_aging: { refresh_s: 60 }\n").unwrap();
        assert_eq!(c.neighbors_aging.expire_s, EXPIRE_AFTER_S);
    }

    #[test]
    fn rejects_bad_values() {
        let e = parse("neighbors_aging: { refresh_s: 0, expire_s: 10 }\n").unwrap_err();
        assert_eq!(e[0].0, "neighbors_aging.refresh_s", "{e:?}");
        let e = parse("neighbors_aging: { refresh_s: 10, expire_s: 11 }\n").unwrap_err();
        assert_eq!(e[0].0, "neighbors_aging.expire_s", "{e:?}");
        assert!(e[0].1.contains("at least refresh_s + 3 (13)"), "{e:?}");
        let e = parse("neighbors_aging: { refresh: 10 }\n").unwrap_err();
        assert!(e[0].0.starts_with("neighbors_aging"), "{e:?}");
    }
}
