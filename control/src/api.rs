//! The control API: a Unix socket (`/run/afgate/afgate.sock` by default, mode 0600, root
//! only — every peer's uid is checked with SO_PEERCRED) speaking one JSON request per line,
//! one JSON response per line.
//!
//! Every change is built aside and published whole: the handler clones the current
//! [`Tables`] (big tables sit behind `Arc`, so this copies pointers), applies the change to
//! the clone, validates, and publishes it with one `ArcSwap` store — or answers with an error
//! naming the field and publishes nothing. Changes are serialised by one mutex that only the
//! control side takes; workers never see it.

use crate::config::{Cidr, Config, Mac, NextHopCfg, RouteCfg};
use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::observe::{CaptureCtl, LatencyHist, WorkerObs};
use afgate_dataplane::tables::{NextHop, PortId, Shared, Tables};
use afgate_dataplane::wire::EthernetAddress;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Where `afgate run` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/afgate/afgate.sock";
/// Largest request line accepted (a trace frame or a batch of manifests fits easily).
pub const MAX_REQUEST: usize = 1 << 20;
/// Publications waiting longer than this for a forwarded frame are not measured: the
/// programming latency is "publication → first frame forwarded with it" under traffic.
const FIRST_USE_WINDOW_NS: u64 = 1_000_000_000;

/// The `api:` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiCfg {
    /// The control socket; default `/run/afgate/afgate.sock`. `--api` overrides it.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. `127.0.0.1:9469`); off when
    /// absent. `--metrics` overrides it.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
}

/// `neigh add`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NeighSpec {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub dev: String,
}

/// One request. On the wire `op` names the operation and the other keys are its fields
/// (`{"op":"route_del","dst":"10.20.4.0/25"}`); see [`Request::to_line`] and
/// [`parse_request`]. Inside, serde sees the externally tagged form, which lets errors carry
/// the path of the bad field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Generation, uptime, counts.
    Status,
    RouteList,
    /// Fails if a route to the same prefix exists.
    RouteAdd(RouteCfg),
    /// Adds or replaces.
    RouteReplace(RouteCfg),
    RouteDel {
        dst: Cidr,
    },
    NeighList,
    NeighAdd(NeighSpec),
    NeighDel {
        ip: Ipv4Addr,
    },
    Stats,
    /// Prometheus text, as `/metrics` serves it.
    Metrics,
    /// Runs `frame` (hex) through the pipeline as if received on `in_port`, changing nothing.
    Trace {
        in_port: String,
        frame: String,
        #[serde(default)]
        vlan: Option<u16>,
    },
    /// Streams copies of a port's frames (see [`crate::capture`]).
    Capture(crate::capture::CaptureRequest),
    /// Applies a whole configuration file (text), all or nothing.
    Reload {
        config: String,
        #[serde(default)]
        file: Option<String>,
    },
    /// Services with their backends and per-backend connections (`ipvsadm -Ln`).
    ServiceList,
    ServiceAdd(svc::ServiceAdd),
    ServiceDel(svc::ServiceRef),
    BackendAdd(svc::BackendReq),
    BackendDel(svc::BackendReq),
    BackendSetWeight(svc::BackendReq),
    /// Takes no new flows, keeps its established ones.
    BackendDrain(svc::BackendReq),
    ConntrackList(svc::CtFilter),
    ConntrackCount,
    ConntrackFlush,
    /// Kubernetes Service / EndpointSlice manifests (YAML), as kube-proxy would program them.
    Apply {
        manifests: String,
        /// This node's name: endpoints with this `nodeName` are local.
        node_name: String,
        #[serde(default)]
        scheduler: svc::SchedulerArg,
    },
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl Response {
    pub fn ok(result: Value) -> Response {
        Response {
            ok: true,
            error: None,
            result: Some(result),
        }
    }
    pub fn err(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            result: None,
        }
    }
}

impl Request {
    /// The request as one line of the wire format (no newline).
    pub fn to_line(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        let wire = match v {
            Value::String(op) => json!({ "op": op }),
            Value::Object(m) if m.len() == 1 => {
                let (op, fields) = m.into_iter().next().unwrap_or_default();
                let mut out = serde_json::Map::new();
                out.insert("op".into(), Value::String(op));
                if let Value::Object(f) = fields {
                    out.extend(f);
                }
                Value::Object(out)
            }
            other => other,
        };
        wire.to_string()
    }
}

/// Parses one request line; errors name the field (`dst: "10.1/99" is not an IPv4 prefix`).
pub fn parse_request(line: &str) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!(
            "request is {} bytes; the limit is {MAX_REQUEST}",
            line.len()
        ));
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad request: not JSON: {e}"))?;
    let Value::Object(mut m) = v else {
        return Err("bad request: a request is a JSON object with an \"op\" key".into());
    };
    let op = match m.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return Err("bad request: op: must be a string".into()),
        None => return Err("bad request: op: missing".into()),
    };
    let tagged = if m.is_empty() {
        Value::String(op.clone())
    } else {
        let mut t = serde_json::Map::new();
        t.insert(op.clone(), Value::Object(m));
        Value::Object(t)
    };
    serde_path_to_error::deserialize(tagged).map_err(|e| {
        let path = e.path().to_string();
        let field = path
            .strip_prefix(&op)
            .map(|p| p.trim_start_matches('.'))
            .unwrap_or(&path);
        if field.is_empty() || field == "." {
            format!("bad request: {op}: {}", e.inner())
        } else {
            format!("bad request: {field}: {}", e.inner())
        }
    })
}

/// Publication bookkeeping and latency histograms, guarded by [`Control`]'s mutex.
pub struct State {
    /// The configuration the tables were last built from (start-up or reload).
    pub config: Config,
    /// (generation, request received ns, published ns) not yet seen forwarding.
    pending: VecDeque<(u64, u64, u64)>,
    /// The Kubernetes objects applied so far.
    pub k8s: crate::k8s::Cache,
    /// The services those objects programmed, by id: a reload keeps them.
    pub k8s_programmed: std::collections::BTreeMap<u32, afgate_dataplane::service::ServiceSpec>,
}

/// Programming-latency histograms (written only under the state mutex).
#[derive(Debug, Default)]
pub struct ProgLatency {
    /// Request received → new snapshot published.
    pub apply: LatencyHist,
    /// Request received → first frame forwarded by a worker with the new snapshot.
    pub first_use: LatencyHist,
}

/// Reads a device's (MAC, MTU).
pub type DeviceFn = Box<dyn Fn(&str) -> std::io::Result<([u8; 6], u16)> + Send + Sync>;

/// Everything the API and metrics read or change.
pub struct Control {
    pub tables: Arc<ArcSwap<Tables>>,
    pub shared: Arc<Shared>,
    pub counters: Vec<Arc<WorkerCounters>>,
    pub obs: Vec<Arc<WorkerObs>>,
    pub capture: Arc<CaptureCtl>,
    /// The dataplane clock's zero, and the wall-clock time it corresponds to (pcap).
    pub epoch: Instant,
    pub wall_at_epoch: SystemTime,
    pub prog: ProgLatency,
    /// Reads a device's (MAC, MTU) when a reload builds tables.
    pub device: DeviceFn,
    state: Mutex<State>,
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        tables: Arc<ArcSwap<Tables>>,
        shared: Arc<Shared>,
        counters: Vec<Arc<WorkerCounters>>,
        obs: Vec<Arc<WorkerObs>>,
        capture: Arc<CaptureCtl>,
        epoch: Instant,
        device: DeviceFn,
    ) -> Control {
        Control {
            tables,
            shared,
            counters,
            obs,
            capture,
            wall_at_epoch: SystemTime::now() - epoch.elapsed(),
            epoch,
            prog: ProgLatency::default(),
            device,
            state: Mutex::new(State {
                config,
                pending: VecDeque::new(),
                k8s: Default::default(),
                k8s_programmed: Default::default(),
            }),
        }
    }

    /// A control over in-memory tables with no workers: for tests and offline tools.
    pub fn detached(config: Config, tables: Tables, shared: Shared) -> Control {
        Control::new(
            config,
            Arc::new(ArcSwap::from_pointee(tables)),
            Arc::new(shared),
            Vec::new(),
            Vec::new(),
            Arc::new(CaptureCtl::default()),
            Instant::now(),
            Box::new(|_| Ok(([2, 0, 0, 0, 0, 1], 1500))),
        )
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler leaves no half-published state (publication is one store),
        // so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `next` as the following generation and records how long the request took.
    pub fn publish(&self, st: &mut State, mut next: Tables, request_ns: u64) -> u64 {
        let generation = self.tables.load().generation + 1;
        next.generation = generation;
        self.tables.store(Arc::new(next));
        let now = self.now_ns();
        self.prog.apply.record_n(now.saturating_sub(request_ns), 1);
        if st.pending.len() >= 4096 {
            st.pending.pop_front();
        }
        st.pending.push_back((generation, request_ns, now));
        generation
    }

    /// Matches pending publications with the generations workers report having forwarded
    /// with; called periodically by the control loop and before metrics are read.
    pub fn observe_generations(&self) {
        let mut st = self.lock();
        let now = self.now_ns();
        let used: Vec<(u64, u64)> = self.obs.iter().map(|o| o.generation_used()).collect();
        while let Some(&(generation, req, published)) = st.pending.front() {
            let first = used
                .iter()
                .filter(|(g, at)| *g >= generation && *at >= published)
                .map(|(_, at)| *at)
                .min();
            match first {
                Some(at) => self.prog.first_use.record_n(at.saturating_sub(req), 1),
                None if now.saturating_sub(published) < FIRST_USE_WINDOW_NS => break,
                None => {}
            }
            st.pending.pop_front();
        }
    }

    /// Handles one request (everything but `capture`, which streams).
    pub fn handle(&self, req: Request) -> Response {
        let t0 = self.now_ns();
        let r = match req {
            Request::Status => Ok(self.status()),
            Request::RouteList => Ok(self.route_list()),
            Request::RouteAdd(r) => self.route_set(r, false, t0),
            Request::RouteReplace(r) => self.route_set(r, true, t0),
            Request::RouteDel { dst } => self.route_del(dst, t0),
            Request::NeighList => Ok(self.neigh_list()),
            Request::NeighAdd(n) => self.neigh_add(n),
            Request::NeighDel { ip } => self.neigh_del(ip),
            Request::Stats => {
                self.observe_generations();
                Ok(serde_json::to_value(crate::metrics::snapshot(self)).unwrap_or(Value::Null))
            }
            Request::Metrics => {
                self.observe_generations();
                Ok(Value::String(crate::metrics::render(self)))
            }
            Request::Trace {
                in_port,
                frame,
                vlan,
            } => self.trace(&in_port, &frame, vlan),
            Request::Capture(_) => Err("capture streams; send it on its own connection".into()),
            Request::Reload { config, file } => crate::reload::apply(self, &config, file, t0),
            Request::ServiceList => Ok(svc::service_list(self)),
            Request::ServiceAdd(a) => svc::service_add(self, a, t0),
            Request::ServiceDel(r) => svc::service_del(self, r, t0),
            Request::BackendAdd(b) => svc::backend(self, svc::BackendOp::Add, b, t0),
            Request::BackendDel(b) => svc::backend(self, svc::BackendOp::Del, b, t0),
            Request::BackendSetWeight(b) => svc::backend(self, svc::BackendOp::SetWeight, b, t0),
            Request::BackendDrain(b) => svc::backend(self, svc::BackendOp::Drain, b, t0),
            Request::ConntrackList(f) => svc::conntrack_list(self, f),
            Request::ConntrackCount => Ok(svc::conntrack_count(self)),
            Request::ConntrackFlush => Ok(svc::conntrack_flush(self)),
            Request::Apply {
                manifests,
                node_name,
                scheduler,
            } => svc::k8s_apply(self, &manifests, &node_name, scheduler, t0),
        };
        match r {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        }
    }

    fn status(&self) -> Value {
        let t = self.tables.load();
        json!({
            "generation": t.generation,
            "uptime_s": self.epoch.elapsed().as_secs_f64(),
            "ports": t.ports.len(),
            "routes": t.fib.len(),
            "services": t.services.len(),
            "workers": self.counters.len(),
        })
    }

    fn route_list(&self) -> Value {
        let t = self.tables.load();
        let mut routes: Vec<_> = t.fib.routes().collect();
        routes.sort_by_key(|r| (std::cmp::Reverse(r.len), u32::from(r.prefix)));
        let port_name = |p: PortId| {
            t.ports
                .get(p)
                .map(|p| p.name.clone())
                .unwrap_or_else(|| format!("#{}", p.0))
        };
        Value::Array(
            routes
                .iter()
                .map(|r| {
                    json!({
                        "dst": format!("{}/{}", r.prefix, r.len),
                        "nexthops": r.nexthops.iter().map(|nh| json!({
                            "via": nh.via.map(|v| v.to_string()),
                            "dev": port_name(nh.port),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    fn route_set(&self, r: RouteCfg, replace: bool, t0: u64) -> Result<Value, String> {
        let mut st = self.lock();
        let cur = self.tables.load();
        let net = r.dst.0.network();
        if net.address() != r.dst.0.address() {
            return Err(format!(
                "dst: {} has host bits set; the prefix is {net}",
                r.dst.0
            ));
        }
        let nexthops = resolve_nexthops(&cur, &r)?;
        if !replace && cur.fib.get(net.address(), net.prefix_len()).is_some() {
            return Err(format!(
                "dst: a route to {net} already exists; use `route replace` or delete it first"
            ));
        }
        let mut next = (**cur).clone();
        next.fib.insert(net.address(), net.prefix_len(), nexthops);
        let generation = self.publish(&mut st, next, t0);
        Ok(json!({ "generation": generation }))
    }

    fn route_del(&self, dst: Cidr, t0: u64) -> Result<Value, String> {
        let mut st = self.lock();
        let cur = self.tables.load();
        let net = dst.0.network();
        if cur.fib.get(net.address(), net.prefix_len()).is_none() {
            return Err(format!("dst: no route to {net}"));
        }
        let mut next = (**cur).clone();
        next.fib.remove(net.address(), net.prefix_len());
        let generation = self.publish(&mut st, next, t0);
        Ok(json!({ "generation": generation }))
    }

    fn neigh_list(&self) -> Value {
        let t = self.tables.load();
        let mut v = self.shared.neigh.entries();
        v.sort_by_key(|e| u32::from(e.ip));
        Value::Array(
            v.iter()
                .map(|e| {
                    json!({
                        "ip": e.ip.to_string(),
                        "mac": EthernetAddress(e.mac).to_string(),
                        "dev": t.ports.get(e.port).map(|p| p.name.clone()),
                        "state": if e.permanent { "permanent" } else { "reachable" },
                        "updated_s": e.updated,
                    })
                })
                .collect(),
        )
    }

    fn neigh_add(&self, n: NeighSpec) -> Result<Value, String> {
        let _st = self.lock();
        let t = self.tables.load();
        let port = t
            .ports
            .by_name(&n.dev)
            .ok_or_else(|| format!("dev: no port named {:?}", n.dev))?
            .id;
        if n.ip.is_unspecified() || n.ip.is_broadcast() || n.ip.is_multicast() {
            return Err(format!("ip: {} cannot be a neighbour", n.ip));
        }
        if !EthernetAddress(n.mac.0).is_unicast() {
            return Err(format!(
                "mac: {} is not a unicast MAC",
                EthernetAddress(n.mac.0)
            ));
        }
        if !self.shared.neigh.set_static(n.ip, n.mac.0, port) {
            return Err(format!(
                "ip: no free slot for {} in the neighbour cache (entries near it are permanent or being written); retry or delete one",
                n.ip
            ));
        }
        Ok(json!({}))
    }

    fn neigh_del(&self, ip: Ipv4Addr) -> Result<Value, String> {
        let _st = self.lock();
        if self.shared.neigh.remove(ip) {
            Ok(json!({}))
        } else {
            Err(format!("ip: no neighbour entry for {ip}"))
        }
    }

    fn trace(&self, in_port: &str, hex: &str, vlan: Option<u16>) -> Result<Value, String> {
        let frame = crate::trace::from_hex(hex).map_err(|e| format!("frame: {e}"))?;
        let tables = self.tables.load();
        let elapsed = self.epoch.elapsed();
        let out = crate::trace::run(
            &tables,
            &self.shared,
            in_port,
            vlan,
            &frame,
            elapsed.as_secs() as u32,
            elapsed.as_nanos() as u64,
        )?;
        serde_json::to_value(out).map_err(|e| e.to_string())
    }
}

/// Turns a route's `dev`/`via` or `nexthops` into next hops, naming the bad field.
pub fn resolve_nexthops(t: &Tables, r: &RouteCfg) -> Result<Vec<NextHop>, String> {
    let port = |dev: &str, field: &str| {
        t.ports
            .by_name(dev)
            .map(|p| p.id)
            .ok_or_else(|| format!("{field}: no port named {dev:?}"))
    };
    let check_via = |via: Option<Ipv4Addr>, field: &str| match via {
        Some(v) if v.is_unspecified() || v.is_broadcast() || v.is_multicast() => {
            Err(format!("{field}: {v} cannot be a gateway"))
        }
        _ => Ok(via),
    };
    match (&r.dev, r.nexthops.as_slice()) {
        (Some(_), [_, ..]) => Err("nexthops: give either dev/via or nexthops, not both".into()),
        (None, []) => Err("dev: missing; give dev (and optional via) or nexthops".into()),
        (Some(dev), []) => Ok(vec![NextHop {
            port: port(dev, "dev")?,
            via: check_via(r.via, "via")?,
        }]),
        (None, nhs) => {
            if r.via.is_some() {
                return Err("via: with nexthops, give via inside each next hop".into());
            }
            if nhs.len() > 16 {
                return Err(format!("nexthops: {} next hops; at most 16", nhs.len()));
            }
            nhs.iter()
                .enumerate()
                .map(|(i, nh): (usize, &NextHopCfg)| {
                    Ok(NextHop {
                        port: port(&nh.dev, &format!("nexthops[{i}].dev"))?,
                        via: check_via(nh.via, &format!("nexthops[{i}].via"))?,
                    })
                })
                .collect()
        }
    }
}

/// SO_PEERCRED of a connected Unix socket: the peer's uid.
#[allow(unsafe_code)]
pub fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable ucred and `len` holds its size; the fd is open
    // for the lifetime of `s`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Creates the listening socket: parent directory, stale socket removed (but never one a
/// running afgate still answers on), mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{}: another afgate is serving this socket; stop it or use --api",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("binding the API socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the API on `listener` until `stop` is set: one thread per connection (requests
/// are rare and short; a capture holds its connection). The accept blocks; [`wake`] unblocks
/// it after `stop` is set.
pub fn serve(ctl: Arc<Control>, listener: UnixListener, stop: Arc<AtomicBool>) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match accepted {
            Ok((s, _)) => {
                let ctl = ctl.clone();
                let stop = stop.clone();
                let _ = std::thread::Builder::new()
                    .name("afgate-api".into())
                    .spawn(move || connection(&ctl, s, &stop));
            }
            Err(e) => {
                eprintln!("afgate: api: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Unblocks [`serve`]'s accept once `stop` is set (a connection to ourselves).
pub fn wake(path: &Path) {
    let _ = UnixStream::connect(path);
}

fn send(s: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).unwrap_or_else(|_| r#"{"ok":false}"#.into());
    line.push('\n');
    s.write_all(line.as_bytes())
}

/// Reads one line of at most [`MAX_REQUEST`] bytes; `Ok(None)` at end of stream.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<Result<String, String>>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_REQUEST {
        return Ok(Some(Err(format!(
            "request longer than {MAX_REQUEST} bytes"
        ))));
    }
    Ok(Some(
        String::from_utf8(buf).map_err(|_| "request is not UTF-8".to_string()),
    ))
}

/// One client connection: refuse non-root peers, then answer requests until it closes.
pub fn connection(ctl: &Control, mut s: UnixStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    match peer_uid(&s) {
        Ok(0) => {}
        Ok(uid) => {
            let _ = send(
                &mut s,
                &Response::err(format!(
                    "permission denied: the afgate API accepts only root (uid 0); peer uid is {uid}"
                )),
            );
            return;
        }
        Err(e) => {
            let _ = send(
                &mut s,
                &Response::err(format!("cannot check peer credentials: {e}")),
            );
            return;
        }
    }
    let Ok(rd) = s.try_clone() else { return };
    let mut rd = BufReader::new(rd);
    while let Ok(Some(line)) = read_line(&mut rd) {
        let resp = match line.and_then(|l| parse_request(l.trim_end())) {
            Ok(Request::Capture(c)) => {
                crate::capture::serve(ctl, &mut s, &c, stop);
                return;
            }
            Ok(req) => ctl.handle(req),
            Err(e) => Response::err(e),
        };
        if send(&mut s, &resp).is_err() {
            return;
        }
    }
}

/// Parses a MAC for the CLI (`lladdr`).
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    use std::str::FromStr;
    EthernetAddress::from_str(s)
        .map(|m| Mac(m.0))
        .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

pub mod svc;

#[cfg(test)]
pub(crate) mod tests;
