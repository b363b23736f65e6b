//! Kubernetes Service and EndpointSlice objects → afgate services, the way kube-proxy
//! reads them.
//!
//! `afgate ctl apply -f FILE` sends the manifests (YAML, one or many documents, or a
//! `kind: List` as `kubectl get -o yaml` prints) to the running afgate, which keeps the
//! last-applied objects ([`Cache`]) so that a later apply of only an EndpointSlice updates
//! its Service's backends. Each (Service, port) becomes one [`ServiceSpec`]:
//!
//! - frontends: `spec.clusterIP` (not `None`), `spec.ports[].nodePort` (NodePort and
//!   LoadBalancer types), `spec.externalIPs`, `status.loadBalancer.ingress[].ip`;
//! - `sessionAffinity: ClientIP` with `sessionAffinityConfig.clientIP.timeoutSeconds`
//!   (default 10800, as the API server defaults it);
//! - `externalTrafficPolicy: Local` (`Cluster` is the default);
//! - backends from every IPv4 EndpointSlice labelled `kubernetes.io/service-name`, port
//!   matched by the service port's name and protocol; an endpoint with `ready` (absent
//!   means true) is Ready; one that is `terminating` is Terminating (keeps its flows, takes
//!   no new ones; kube-proxy also falls back to serving+terminating endpoints when none is
//!   ready, which the dataplane's drain state covers for established flows); others are left
//!   out. `nodeName` equal to this node's name marks a backend local.
//!
//! ExternalName and headless services program nothing (kube-proxy ignores them too); SCTP
//! ports are skipped with a note.

use afgate_dataplane::service::{
    Backend, BackendState, PROTO_TCP, PROTO_UDP, Scheduler, ServiceSpec,
};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

#[derive(Debug, Clone, PartialEq)]
pub struct K8sPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// The parts of a Service kube-proxy uses.
#[derive(Debug, Clone, PartialEq)]
pub struct K8sService {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<K8sPort>,
    pub external_ips: Vec<Ipv4Addr>,
    pub lb_ips: Vec<Ipv4Addr>,
    pub affinity_timeout: Option<u32>,
    pub etp_local: bool,
    /// ExternalName or headless: nothing to program.
    pub inert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct K8sEndpoint {
    pub addr: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct K8sSlice {
    pub namespace: String,
    pub name: String,
    /// `kubernetes.io/service-name`.
    pub service: String,
    /// (name, protocol, port).
    pub ports: Vec<(String, u8, u16)>,
    pub endpoints: Vec<K8sEndpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(K8sService),
    Slice(K8sSlice),
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    s(v, path).and_then(|x| x.as_str()).map(str::to_string)
}

fn proto(p: Option<&str>, at: &str) -> Result<Option<u8>, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Some(PROTO_TCP)),
        "UDP" => Ok(Some(PROTO_UDP)),
        "SCTP" => Ok(None),
        other => Err(format!("{at}.protocol: {other:?} is not TCP, UDP or SCTP")),
    }
}

fn port_num(v: Option<&Value>, at: &str) -> Result<u16, String> {
    v.and_then(|x| x.as_u64())
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .ok_or_else(|| format!("{at}: missing or not a port number 1-65535"))
}

fn ip(v: &Value, at: &str) -> Result<Option<Ipv4Addr>, String> {
    let Some(t) = v.as_str() else {
        return Err(format!("{at}: not a string"));
    };
    if t.contains(':') {
        return Ok(None); // IPv6: afgate forwards IPv4 only
    }
    t.parse()
        .map(Some)
        .map_err(|_| format!("{at}: {t:?} is not an IP address"))
}

fn ips(v: Option<&Value>, at: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for (i, x) in v
        .and_then(|x| x.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(a) = ip(x, &format!("{at}[{i}]"))? {
            out.push(a);
        }
    }
    Ok(out)
}

fn service(v: &Value, at: &str, notes: &mut Vec<String>) -> Result<K8sService, String> {
    let name = str_at(v, &["metadata", "name"]).ok_or(format!("{at}.metadata.name: missing"))?;
    let namespace = str_at(v, &["metadata", "namespace"]).unwrap_or_else(|| "default".into());
    let spec = v.get("spec").ok_or(format!("{at}.spec: missing"))?;
    let ty = str_at(spec, &["type"]).unwrap_or_else(|| "ClusterIP".into());
    let cip = str_at(spec, &["clusterIP"]);
    let inert = ty == "ExternalName" || cip.as_deref() == Some("None");
    let cluster_ip = match (&cip, inert) {
        (Some(c), false) if !c.is_empty() => {
            ip(&Value::String(c.clone()), &format!("{at}.spec.clusterIP"))?
        }
        _ => None,
    };
    let mut ports = Vec::new();
    for (i, p) in spec
        .get("ports")
        .and_then(|x| x.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let pat = format!("{at}.spec.ports[{i}]");
        let Some(pr) = proto(p.get("protocol").and_then(|x| x.as_str()), &pat)? else {
            notes.push(format!("{namespace}/{name}: SCTP port skipped"));
            continue;
        };
        let node_port = match p.get("nodePort") {
            Some(np) if matches!(ty.as_str(), "NodePort" | "LoadBalancer") => {
                Some(port_num(Some(np), &format!("{pat}.nodePort"))?)
            }
            _ => None,
        };
        ports.push(K8sPort {
            name: p.get("name").and_then(|x| x.as_str()).unwrap_or("").into(),
            proto: pr,
            port: port_num(p.get("port"), &format!("{pat}.port"))?,
            node_port,
        });
    }
    let affinity_timeout = if str_at(spec, &["sessionAffinity"]).as_deref() == Some("ClientIP") {
        let t = s(
            spec,
            &["sessionAffinityConfig", "clientIP", "timeoutSeconds"],
        )
        .map(|t| {
            t.as_u64()
                .filter(|t| (1..=86_400).contains(t))
                .ok_or(format!(
                    "{at}.spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be 1-86400"
                ))
        })
        .transpose()?;
        Some(t.map(|t| t as u32).unwrap_or(DEFAULT_AFFINITY_TIMEOUT))
    } else {
        None
    };
    Ok(K8sService {
        external_ips: ips(spec.get("externalIPs"), &format!("{at}.spec.externalIPs"))?,
        lb_ips: {
            let mut v2 = Vec::new();
            for (i, ing) in s(v, &["status", "loadBalancer", "ingress"])
                .and_then(|x| x.as_sequence())
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(x) = ing.get("ip")
                    && let Some(a) = ip(x, &format!("{at}.status.loadBalancer.ingress[{i}].ip"))?
                {
                    v2.push(a);
                }
            }
            v2
        },
        etp_local: str_at(spec, &["externalTrafficPolicy"]).as_deref() == Some("Local"),
        namespace,
        name,
        cluster_ip,
        ports,
        affinity_timeout,
        inert,
    })
}

fn slice(v: &Value, at: &str) -> Result<Option<K8sSlice>, String> {
    let name = str_at(v, &["metadata", "name"]).ok_or(format!("{at}.metadata.name: missing"))?;
    let namespace = str_at(v, &["metadata", "namespace"]).unwrap_or_else(|| "default".into());
    if str_at(v, &["addressType"]).as_deref() != Some("IPv4") {
        return Ok(None);
    }
    let service = str_at(v, &["metadata", "labels", "kubernetes.io/service-name"]).ok_or(
        format!("{at}.metadata.labels: missing kubernetes.io/service-name"),
    )?;
    let mut ports = Vec::new();
    for (i, p) in v
        .get("ports")
        .and_then(|x| x.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let pat = format!("{at}.ports[{i}]");
        if let Some(pr) = proto(p.get("protocol").and_then(|x| x.as_str()), &pat)? {
            ports.push((
                p.get("name")
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_string(),
                pr,
                port_num(p.get("port"), &format!("{pat}.port"))?,
            ));
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in v
        .get("endpoints")
        .and_then(|x| x.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let eat = format!("{at}.endpoints[{i}]");
        let cond = |k: &str| s(e, &["conditions", k]).and_then(|x| x.as_bool());
        let ready = cond("ready").unwrap_or(true);
        let serving = cond("serving").unwrap_or(ready);
        let terminating = cond("terminating").unwrap_or(false);
        for a in ips(e.get("addresses"), &format!("{eat}.addresses"))? {
            endpoints.push(K8sEndpoint {
                addr: a,
                ready,
                serving,
                terminating,
                node: e
                    .get("nodeName")
                    .and_then(|x| x.as_str())
                    .map(str::to_string),
            });
        }
    }
    Ok(Some(K8sSlice {
        namespace,
        name,
        service,
        ports,
        endpoints,
    }))
}

/// Parses manifests; notes collects what was skipped and why.
pub fn parse(text: &str, notes: &mut Vec<String>) -> Result<Vec<Object>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (d, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {d}: {e}"))?;
        if v.is_null() {
            continue;
        }
        let mut stack = vec![(v, format!("document {d}"))];
        while let Some((v, at)) = stack.pop() {
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("List") | Some("ServiceList") | Some("EndpointSliceList") => {
                    let items = v.get("items").and_then(|i| i.as_sequence()).cloned();
                    for (i, it) in items.unwrap_or_default().into_iter().enumerate().rev() {
                        stack.push((it, format!("{at}.items[{i}]")));
                    }
                }
                Some("Service") => out.push(Object::Service(service(&v, &at, notes)?)),
                Some("EndpointSlice") => {
                    if let Some(sl) = slice(&v, &at)? {
                        out.push(Object::Slice(sl));
                    } else {
                        notes.push(format!("{at}: non-IPv4 EndpointSlice skipped"));
                    }
                }
                Some(other) => notes.push(format!("{at}: kind {other} ignored")),
                None => return Err(format!("{at}: no kind")),
            }
        }
    }
    Ok(out)
}

/// The last-applied objects, by `namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    pub services: BTreeMap<String, K8sService>,
    pub slices: BTreeMap<String, K8sSlice>,
}

/// A stable service id for (namespace/name, port name, protocol): FNV-1a, never 0.
pub fn service_id(key: &str, port: &str, proto: u8) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes().chain([0]).chain(port.bytes()).chain([0, proto]) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

impl Cache {
    /// Merges `objs`; returns the keys of the services whose programming may change.
    pub fn merge(&mut self, objs: Vec<Object>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        for o in objs {
            match o {
                Object::Service(s) => {
                    let k = format!("{}/{}", s.namespace, s.name);
                    touched.insert(k.clone());
                    self.services.insert(k, s);
                }
                Object::Slice(sl) => {
                    let k = format!("{}/{}", sl.namespace, sl.name);
                    // A slice can move between services only by relabelling; both change.
                    if let Some(old) = self.slices.get(&k) {
                        touched.insert(format!("{}/{}", old.namespace, old.service));
                    }
                    touched.insert(format!("{}/{}", sl.namespace, sl.service));
                    self.slices.insert(k, sl);
                }
            }
        }
        touched
    }

    /// The specs of the service `key` (one per port); empty if unknown or inert.
    pub fn specs(&self, key: &str, node: &str, scheduler: Scheduler) -> Vec<ServiceSpec> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        if svc.inert {
            return Vec::new();
        }
        let slices: Vec<&K8sSlice> = self
            .slices
            .values()
            .filter(|sl| sl.namespace == svc.namespace && sl.service == svc.name)
            .collect();
        svc.ports
            .iter()
            .map(|p| {
                let mut backends: Vec<Backend> = Vec::new();
                for sl in &slices {
                    let Some(&(_, _, tport)) = sl
                        .ports
                        .iter()
                        .find(|(n, pr, _)| *n == p.name && *pr == p.proto)
                    else {
                        continue;
                    };
                    for e in &sl.endpoints {
                        let state = if e.terminating {
                            BackendState::Terminating
                        } else if e.ready {
                            BackendState::Ready
                        } else {
                            continue;
                        };
                        // The same address in two slices (during a move): keep the better.
                        if let Some(b) = backends.iter_mut().find(|b| b.addr == e.addr) {
                            if state == BackendState::Ready {
                                b.state = state;
                            }
                            continue;
                        }
                        backends.push(Backend {
                            addr: e.addr,
                            port: tport,
                            weight: 1,
                            state,
                            local: e.node.as_deref() == Some(node),
                        });
                    }
                }
                backends.sort_by_key(|b| u32::from(b.addr));
                let pname = if p.name.is_empty() {
                    String::new()
                } else {
                    format!(":{}", p.name)
                };
                ServiceSpec {
                    id: service_id(key, &p.name, p.proto),
                    name: format!("{key}{pname}"),
                    proto: p.proto,
                    port: p.port,
                    cluster_ip: svc.cluster_ip,
                    node_port: p.node_port,
                    external_ips: svc.external_ips.clone(),
                    lb_ips: svc.lb_ips.clone(),
                    scheduler,
                    affinity_timeout: svc.affinity_timeout,
                    etp_local: svc.etp_local,
                    backends,
                }
            })
            .collect()
    }

    /// Every id this cache programs for service `key` (to remove stale ports).
    pub fn ids(&self, key: &str) -> Vec<u32> {
        self.services
            .get(key)
            .map(|s| {
                s.ports
                    .iter()
                    .map(|p| service_id(key, &p.name, p.proto))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
