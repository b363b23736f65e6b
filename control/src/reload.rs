//! `afgate reload -c FILE`: make the running afgate match a configuration file.
//!
//! The file is parsed and validated completely, and the next tables are built from it
//! aside, before anything changes; an invalid file changes nothing. What can change live
//! is everything published in the tables snapshot (routes, addresses, services, ...) and
//! the static neighbours; conntrack and learned neighbours are untouched, so established
//! flows continue. Ports and workers are fixed at start-up: a file that changes them is
//! refused with the field named.

use crate::api::Control;
use crate::config::Config;
use afgate_dataplane::tables::Tables;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

/// Differences that cannot be applied to a running afgate, as (field, message).
pub fn unchangeable(running: &Config, new: &Config) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if running.workers != new.workers {
        v.push((
            "workers".into(),
            "worker settings are fixed while afgate runs; restart to change them".into(),
        ));
    }
    if running.ports.len() != new.ports.len() {
        v.push((
            "ports".into(),
            format!(
                "{} ports configured, {} running; adding or removing ports needs a restart",
                new.ports.len(),
                running.ports.len()
            ),
        ));
    }
    for (i, (a, b)) in running.ports.iter().zip(&new.ports).enumerate() {
        if a.name != b.name {
            v.push((
                format!("ports[{i}].name"),
                format!("is {:?} while running; renaming needs a restart", a.name),
            ));
        }
        if a.device != b.device {
            v.push((
                format!("ports[{i}].device"),
                format!(
                    "is {:?} while running; changing devices needs a restart",
                    a.device
                ),
            ));
        }
        if a.xdp_mode != b.xdp_mode || a.af_xdp != b.af_xdp || a.only_own_mac != b.only_own_mac {
            v.push((
                format!("ports[{i}]"),
                "xdp_mode, af_xdp and only_own_mac are fixed while running".into(),
            ));
        }
    }
    if running.conntrack != new.conntrack {
        v.push((
            "conntrack".into(),
            "the conntrack table's size and timeouts are fixed while running; restart to change them".into(),
        ));
    }
    if running.restart != new.restart {
        v.push((
            "restart".into(),
            "the conntrack segment and handover socket are fixed while running; restart to change them".into(),
        ));
    }
    if running.passthrough != new.passthrough {
        v.push((
            "passthrough".into(),
            "passthrough rules live in the XDP program; restart to change them".into(),
        ));
    }
    v
}

fn routes(t: &Tables) -> BTreeMap<(u32, u8), String> {
    t.fib
        .routes()
        .map(|r| ((u32::from(r.prefix), r.len), format!("{:?}", r.nexthops)))
        .collect()
}

/// Parses `text`, builds the next tables and publishes them; or changes nothing and says
/// why.
pub fn apply(ctl: &Control, text: &str, file: Option<String>, t0: u64) -> Result<Value, String> {
    let name = file.unwrap_or_else(|| "<reload>".into());
    let new = Config::parse(text, Path::new(&name)).map_err(|e| e.to_string())?;
    let mut st = ctl.lock();
    let bad = unchangeable(&st.config, &new);
    if !bad.is_empty() {
        return Err(bad
            .iter()
            .map(|(f, m)| format!("{name}: {f}: {m}"))
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let cur = ctl.tables.load();
    // The running ports keep their MACs; only what the file says may change.
    let macs: Vec<[u8; 6]> = cur.ports.iter().map(|p| p.mac).collect();
    let device = |dev: &str| {
        let (mac, mtu) = (ctl.device)(dev)?;
        let mac = new
            .ports
            .iter()
            .position(|p| p.device == dev)
            .and_then(|i| macs.get(i).copied())
            .unwrap_or(mac);
        Ok((mac, mtu))
    };
    let mut next = new
        .tables(&device)
        .map_err(|e| format!("{name}: building tables: {e}"))?;
    // Services programmed from Kubernetes objects are not in the file; they stay.
    for spec in st.k8s_programmed.values() {
        next.services.upsert(spec.clone()).map_err(|e| {
            format!(
                "{name}: services: {e} (a Kubernetes service, {}, already holds it); nothing was applied",
                spec.name
            )
        })?;
    }
    // Bond member liveness is state, not configuration: keep what the carrier poll found.
    if st.config.bonds == new.bonds {
        next.bonds = cur.bonds.clone();
    }
    let (before, after) = (routes(&cur), routes(&next));
    let added = after.keys().filter(|k| !before.contains_key(k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(k)).count();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(k).is_some_and(|b| b != *v))
        .count();
    let old_neigh: BTreeSet<(Ipv4Addr, [u8; 6], u16)> = st
        .config
        .static_neighbours()
        .into_iter()
        .map(|(ip, mac, p)| (ip, mac, p.0))
        .collect();
    let new_neigh: BTreeSet<(Ipv4Addr, [u8; 6], u16)> = new
        .static_neighbours()
        .into_iter()
        .map(|(ip, mac, p)| (ip, mac, p.0))
        .collect();
    let services_before = cur.services.len();
    let services_after = next.services.len();
    drop(cur);
    let generation = ctl.publish(&mut st, next, t0);
    let mut neigh_removed = 0;
    for (ip, _, _) in old_neigh.difference(&new_neigh) {
        if !new_neigh.iter().any(|n| n.0 == *ip) && ctl.shared.neigh.remove(*ip) {
            neigh_removed += 1;
        }
    }
    let mut neigh_added = 0;
    let mut neigh_failed = Vec::new();
    for (ip, mac, port) in new_neigh.difference(&old_neigh) {
        if ctl
            .shared
            .neigh
            .set_static(*ip, *mac, afgate_dataplane::tables::PortId(*port))
        {
            neigh_added += 1;
        } else {
            neigh_failed.push(ip.to_string());
        }
    }
    st.config = new;
    Ok(json!({
        "generation": generation,
        "routes": { "added": added, "removed": removed, "changed": changed },
        "neighbors": { "added": neigh_added, "removed": neigh_removed, "failed": neigh_failed },
        "services": { "before": services_before, "after": services_after },
    }))
}
