//! Services, backends, conntrack and Kubernetes manifests over the API.
//!
//! A service is named the way `ipvsadm` names a virtual server: protocol, address, port
//! (`tcp 10.96.10.1:80`). A change to one backend rebuilds only that service's scheduler
//! tables (`ServiceTable::upsert`) in a clone of the current snapshot and publishes it; the
//! clone shares all but the index shards the change writes, so a change costs the same
//! whatever the number of services.

use super::{Control, State};
use crate::k8s;
use afgate_dataplane::conntrack::EntryView;
use afgate_dataplane::service::{
    Backend, BackendState, PROTO_TCP, PROTO_UDP, Scheduler, Service, ServiceSpec,
};
use afgate_dataplane::tables::Tables;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        1 => "icmp",
        _ => "other",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerArg {
    #[default]
    Rr,
    Wrr,
    Lc,
    Sh,
    Random,
    Maglev,
}

impl From<SchedulerArg> for Scheduler {
    fn from(s: SchedulerArg) -> Scheduler {
        match s {
            SchedulerArg::Rr => Scheduler::Rr,
            SchedulerArg::Wrr => Scheduler::Wrr,
            SchedulerArg::Lc => Scheduler::Lc,
            SchedulerArg::Sh => Scheduler::Sh,
            SchedulerArg::Random => Scheduler::Random,
            SchedulerArg::Maglev => Scheduler::Maglev,
        }
    }
}

/// Which service: `proto addr:port` (a ClusterIP, external or LB address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAdd {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scheduler: SchedulerArg,
    #[serde(default)]
    pub node_port: Option<u16>,
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout in seconds.
    #[serde(default)]
    pub affinity: Option<u32>,
    #[serde(default)]
    pub etp_local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendReq {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub backend: Ipv4Addr,
    #[serde(default)]
    pub backend_port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u16>,
    #[serde(default)]
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CtFilter {
    #[serde(default)]
    pub src: Option<Ipv4Addr>,
    #[serde(default)]
    pub dst: Option<Ipv4Addr>,
    #[serde(default)]
    pub sport: Option<u16>,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(default)]
    pub proto: Option<String>,
    /// At most this many entries (default 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

impl ServiceAdd {
    pub fn svc(&self) -> ServiceRef {
        ServiceRef {
            proto: self.proto,
            addr: self.addr,
            port: self.port,
        }
    }
}

impl BackendReq {
    pub fn svc(&self) -> ServiceRef {
        ServiceRef {
            proto: self.proto,
            addr: self.addr,
            port: self.port,
        }
    }
}

fn find<'a>(t: &'a Tables, r: &ServiceRef) -> Result<&'a Service, String> {
    t.services
        .lookup(r.addr, r.port, r.proto.number(), false)
        .map(|(s, _)| s)
        .ok_or_else(|| {
            format!(
                "service: no service {} {}:{}",
                proto_name(r.proto.number()),
                r.addr,
                r.port
            )
        })
}

fn upsert(ctl: &Control, st: &mut State, spec: ServiceSpec, t0: u64) -> Result<Value, String> {
    let mut next = (**ctl.tables.load()).clone();
    next.services
        .upsert(spec)
        .map_err(|e| format!("service: {e}"))?;
    let g = ctl.publish(st, next, t0);
    Ok(json!({ "generation": g }))
}

fn valid_port(p: u16, field: &str) -> Result<u16, String> {
    if p == 0 {
        Err(format!("{field}: port 0 is not allowed"))
    } else {
        Ok(p)
    }
}

pub fn service_add(ctl: &Control, a: ServiceAdd, t0: u64) -> Result<Value, String> {
    let mut st = ctl.lock();
    valid_port(a.svc().port, "port")?;
    if let Some(np) = a.node_port {
        valid_port(np, "node_port")?;
    }
    if a.affinity.is_some_and(|t| t == 0 || t > 86_400) {
        return Err("affinity: timeout must be 1-86400 seconds".into());
    }
    if a.svc().addr.is_unspecified() || a.svc().addr.is_broadcast() || a.svc().addr.is_multicast() {
        return Err(format!(
            "addr: {} cannot be a service address",
            a.svc().addr
        ));
    }
    let t = ctl.tables.load();
    if find(&t, &a.svc()).is_ok() {
        return Err(format!(
            "service: {} {}:{} already exists",
            proto_name(a.svc().proto.number()),
            a.svc().addr,
            a.svc().port
        ));
    }
    let name = a.name.clone().unwrap_or_else(|| {
        format!(
            "{}/{}:{}",
            proto_name(a.svc().proto.number()),
            a.svc().addr,
            a.svc().port
        )
    });
    // Ids of API-made services come from their name, like the Kubernetes ones.
    let mut id = k8s::service_id(&name, "", a.svc().proto.number());
    while t.services.get(id).is_some() {
        id = id.wrapping_add(1).max(1);
    }
    let spec = ServiceSpec {
        id,
        name,
        proto: a.svc().proto.number(),
        port: a.svc().port,
        cluster_ip: Some(a.svc().addr),
        node_port: a.node_port,
        external_ips: a.external_ips,
        lb_ips: Vec::new(),
        scheduler: a.scheduler.into(),
        affinity_timeout: a.affinity,
        etp_local: a.etp_local,
        backends: Vec::new(),
    };
    drop(t);
    upsert(ctl, &mut st, spec, t0)
}

pub fn service_del(ctl: &Control, r: ServiceRef, t0: u64) -> Result<Value, String> {
    let mut st = ctl.lock();
    let mut next = (**ctl.tables.load()).clone();
    let id = find(&next, &r)?.spec.id;
    next.services.remove(id);
    let g = ctl.publish(&mut st, next, t0);
    Ok(json!({ "generation": g }))
}

/// What to do to one backend.
pub enum BackendOp {
    Add,
    Del,
    SetWeight,
    Drain,
}

pub fn backend(ctl: &Control, op: BackendOp, b: BackendReq, t0: u64) -> Result<Value, String> {
    let mut st = ctl.lock();
    let t = ctl.tables.load();
    let svc = find(&t, &b.svc())?;
    let mut spec = svc.spec.clone();
    drop(t);
    let pos = spec.backends.iter().position(|x| x.addr == b.backend);
    let label = format!("{}:{}", b.backend, b.backend_port.unwrap_or(spec.port));
    match op {
        BackendOp::Add => {
            if pos.is_some() {
                return Err(format!(
                    "backend: {} is already a backend of {}",
                    b.backend, spec.name
                ));
            }
            if b.backend.is_unspecified() || b.backend.is_broadcast() || b.backend.is_multicast() {
                return Err(format!("backend: {} cannot be a backend", b.backend));
            }
            spec.backends.push(Backend {
                addr: b.backend,
                port: valid_port(b.backend_port.unwrap_or(spec.port), "backend_port")?,
                weight: b.weight.unwrap_or(1),
                state: BackendState::Ready,
                local: b.local,
            });
        }
        BackendOp::Del => {
            let i = pos.ok_or(format!(
                "backend: {label} is not a backend of {}",
                spec.name
            ))?;
            spec.backends.remove(i);
        }
        BackendOp::SetWeight => {
            let i = pos.ok_or(format!(
                "backend: {label} is not a backend of {}",
                spec.name
            ))?;
            spec.backends[i].weight = b.weight.ok_or("weight: missing")?;
        }
        BackendOp::Drain => {
            let i = pos.ok_or(format!(
                "backend: {label} is not a backend of {}",
                spec.name
            ))?;
            spec.backends[i].state = BackendState::Terminating;
        }
    }
    upsert(ctl, &mut st, spec, t0)
}

/// Per (service, backend key): (active, inactive, packets, bytes) from live flows.
fn conns(ctl: &Control) -> HashMap<(u32, u32), (u64, u64, u64, u64)> {
    let mut m: HashMap<(u32, u32), (u64, u64, u64, u64)> = HashMap::new();
    for e in ctl.shared.conntrack.entries(ctl.now_s()) {
        if e.service == 0 {
            continue;
        }
        let c = m.entry((e.service, e.backend)).or_default();
        if e.proto == PROTO_TCP && e.state.name() == "ESTABLISHED" {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        c.2 += e.packets[0] + e.packets[1];
        c.3 += e.bytes[0] + e.bytes[1];
    }
    m
}

pub fn service_list(ctl: &Control) -> Value {
    let t = ctl.tables.load();
    let c = conns(ctl);
    let mut list: Vec<&Service> = t.services.iter().collect();
    // The table iterates in hash order; the listing is sorted, ids breaking ties.
    list.sort_by_key(|s| {
        (
            s.spec.cluster_ip.map(u32::from),
            s.spec.port,
            s.spec.proto,
            s.spec.id,
        )
    });
    Value::Array(
        list.iter()
            .map(|s| {
                let sp = &s.spec;
                json!({
                    "id": sp.id,
                    "name": sp.name,
                    "proto": proto_name(sp.proto),
                    "addr": sp.cluster_ip.map(|a| a.to_string()),
                    "port": sp.port,
                    "node_port": sp.node_port,
                    "external_ips": sp.external_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "lb_ips": sp.lb_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "scheduler": sp.scheduler.name(),
                    "affinity_timeout": sp.affinity_timeout,
                    "etp_local": sp.etp_local,
                    "backends": sp.backends.iter().map(|b| {
                        let (a, i, p, by) = c.get(&(sp.id, b.key())).copied().unwrap_or_default();
                        json!({
                            "addr": b.addr.to_string(),
                            "port": b.port,
                            "weight": b.weight,
                            "state": match b.state { BackendState::Ready => "ready", BackendState::Terminating => "terminating" },
                            "local": b.local,
                            "active_conns": a,
                            "inactive_conns": i,
                            "packets": p,
                            "bytes": by,
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn matches(e: &EntryView, f: &CtFilter, proto: Option<u8>) -> bool {
    let tuples = [e.orig, e.reply];
    f.src.is_none_or(|a| tuples.iter().any(|t| t.src == a))
        && f.dst.is_none_or(|a| tuples.iter().any(|t| t.dst == a))
        && f.sport.is_none_or(|p| tuples.iter().any(|t| t.sport == p))
        && f.dport.is_none_or(|p| tuples.iter().any(|t| t.dport == p))
        && proto.is_none_or(|p| e.proto == p)
}

fn filter_proto(f: &CtFilter) -> Result<Option<u8>, String> {
    f.proto
        .as_deref()
        .map(|p| match p.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(6),
            "udp" | "17" => Ok(17),
            "icmp" | "1" => Ok(1),
            other => Err(format!("proto: {other:?} is not tcp, udp or icmp")),
        })
        .transpose()
}

pub fn conntrack_list(ctl: &Control, f: CtFilter) -> Result<Value, String> {
    let proto = filter_proto(&f)?;
    let limit = f.limit.unwrap_or(10_000);
    let mut out = Vec::new();
    let mut total = 0usize;
    for e in ctl.shared.conntrack.entries(ctl.now_s()) {
        if !matches(&e, &f, proto) {
            continue;
        }
        total += 1;
        if out.len() >= limit {
            continue;
        }
        let t = |t: &afgate_dataplane::conntrack::Tuple| json!({"src": t.src.to_string(), "dst": t.dst.to_string(), "sport": t.sport, "dport": t.dport});
        out.push(json!({
            "proto": proto_name(e.proto),
            "proto_num": e.proto,
            "timeout": e.timeout_left,
            "state": if e.proto == PROTO_TCP { Some(e.state.name()) } else { None },
            "orig": t(&e.orig),
            "reply": t(&e.reply),
            "replied": e.replied,
            "packets": e.packets,
            "bytes": e.bytes,
            "service": e.service,
            "backend": Ipv4Addr::from(e.backend).to_string(),
            "mark": e.mark,
        }));
    }
    Ok(json!({ "entries": out, "total": total }))
}

pub fn conntrack_count(ctl: &Control) -> Value {
    let s = ctl.shared.conntrack.stats();
    json!({
        "entries": s.entries,
        "capacity": s.capacity,
        "inserts": s.inserts,
        "insert_races": s.insert_races,
        "early_drops": s.early_drops,
        "expired": s.expired,
        "full_drops": s.full_drops,
    })
}

pub fn conntrack_flush(ctl: &Control) -> Value {
    let _st = ctl.lock();
    json!({ "flushed": ctl.shared.conntrack.flush() })
}

/// Applies Kubernetes manifests: parse, merge into the cached objects, rebuild the touched
/// services in one snapshot, publish once.
///
/// Work is proportional to the manifests, not to what is already programmed: the cache is
/// merged in place with an undo list of the keys it overwrote (restored if a service is
/// refused), and the programmed-spec map changes only after publication.
pub fn k8s_apply(
    ctl: &Control,
    manifests: &str,
    node: &str,
    scheduler: SchedulerArg,
    t0: u64,
) -> Result<Value, String> {
    let mut notes = Vec::new();
    let objs = k8s::parse(manifests, &mut notes)?;
    let mut st = ctl.lock();
    let before: HashMap<String, Vec<u32>> = objs
        .iter()
        .filter_map(|o| match o {
            k8s::Object::Service(s) => Some(format!("{}/{}", s.namespace, s.name)),
            _ => None,
        })
        .map(|k| (k.clone(), st.k8s.ids(&k)))
        .collect();
    let mut undo_services: HashMap<String, Option<k8s::K8sService>> = HashMap::new();
    let mut undo_slices: HashMap<String, Option<k8s::K8sSlice>> = HashMap::new();
    for o in &objs {
        match o {
            k8s::Object::Service(s) => {
                let k = format!("{}/{}", s.namespace, s.name);
                let old = st.k8s.services.get(&k).cloned();
                undo_services.entry(k).or_insert(old);
            }
            k8s::Object::Slice(sl) => {
                let k = format!("{}/{}", sl.namespace, sl.name);
                let old = st.k8s.slices.get(&k).cloned();
                undo_slices.entry(k).or_insert(old);
            }
        }
    }
    let touched = st.k8s.merge(objs);
    let mut next = (**ctl.tables.load()).clone();
    let mut changes: Vec<(u32, Option<ServiceSpec>)> = Vec::new();
    let (mut upserted, mut removed) = (0, 0);
    let mut failed = None;
    'keys: for key in &touched {
        let specs = st.k8s.specs(key, node, scheduler.into());
        let keep: Vec<u32> = specs.iter().map(|s| s.id).collect();
        for id in before.get(key).into_iter().flatten() {
            if !keep.contains(id) {
                changes.push((*id, None));
                if next.services.remove(*id).is_some() {
                    removed += 1;
                }
            }
        }
        for spec in specs {
            let name = spec.name.clone();
            changes.push((spec.id, Some(spec.clone())));
            if let Err(e) = next.services.upsert(spec) {
                failed = Some(format!("{name}: {e}; nothing was applied"));
                break 'keys;
            }
            upserted += 1;
        }
    }
    if let Some(e) = failed {
        for (k, old) in undo_services {
            match old {
                Some(v) => st.k8s.services.insert(k, v),
                None => st.k8s.services.remove(&k),
            };
        }
        for (k, old) in undo_slices {
            match old {
                Some(v) => st.k8s.slices.insert(k, v),
                None => st.k8s.slices.remove(&k),
            };
        }
        return Err(e);
    }
    let g = ctl.publish(&mut st, next, t0);
    for (id, spec) in changes {
        match spec {
            Some(spec) => st.k8s_programmed.insert(id, spec),
            None => st.k8s_programmed.remove(&id),
        };
    }
    Ok(json!({
        "generation": g,
        "services_programmed": upserted,
        "services_removed": removed,
        "notes": notes,
    }))
}

impl Control {
    pub fn now_s(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }
}
