//! Counters for people and for Prometheus: [`snapshot`] (what `afgate ctl stats` prints)
//! and [`render`] (text exposition format 0.0.4, served at `http://ADDR/metrics` by a
//! plain HTTP/1.0 responder on its own thread).

use crate::api::Control;
use afgate_dataplane::counters::{DropReason, Event};
use afgate_dataplane::observe::{LatencyHist, bucket_upper, quantile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueSnap {
    pub queue: usize,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    /// The kernel's count of frames it could not put on this queue's socket because the
    /// fill ring was empty or the rx ring full (`XDP_STATISTICS`, copied by the worker).
    #[serde(default)]
    pub xsk_fill_empty: u64,
    #[serde(default)]
    pub xsk_rx_ring_full: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PortSnap {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    pub queues: Vec<QueueSnap>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySnap {
    pub samples: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl LatencySnap {
    fn of(buckets: &[u64], sum: u64) -> LatencySnap {
        let n: u64 = buckets.iter().sum();
        LatencySnap {
            samples: n,
            mean_ns: sum.checked_div(n).unwrap_or(0),
            p50_ns: quantile(buckets, 0.5),
            p99_ns: quantile(buckets, 0.99),
            p999_ns: quantile(buckets, 0.999),
            max_ns: quantile(buckets, 1.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerSnap {
    pub worker: usize,
    /// Fraction of poll passes that moved frames.
    pub busy_ratio: f64,
    pub polls: u64,
    pub busy_polls: u64,
    pub sleeps: u64,
    /// Busy-path syscalls and the rx batches they serve (`WorkerCounters::tx_kicks`).
    #[serde(default)]
    pub tx_kicks: u64,
    #[serde(default)]
    pub rx_kicks: u64,
    #[serde(default)]
    pub rx_batches: u64,
    /// Pipeline time per frame (batch time / batch frames).
    pub latency: LatencySnap,
    /// The newest table generation this worker forwarded with.
    pub generation_used: u64,
    /// Frames in the worker's free stack after its last pass: idle, the same before and
    /// after any traffic unless frames leaked (docs/reliability.md).
    #[serde(default)]
    pub free_frames: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgrammingSnap {
    /// Request received → snapshot published.
    pub apply: LatencySnap,
    /// Request received → first frame forwarded with the new snapshot.
    pub first_use: LatencySnap,
}

/// Everything `afgate ctl stats` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub generation: u64,
    pub uptime_s: f64,
    pub ports: BTreeMap<String, PortSnap>,
    /// Every drop reason, zero or not.
    pub drops: BTreeMap<String, u64>,
    pub events: BTreeMap<String, u64>,
    pub workers: Vec<WorkerSnap>,
    pub programming: ProgrammingSnap,
    pub services: usize,
    pub routes: usize,
}

fn hist_snap(h: &LatencyHist) -> LatencySnap {
    LatencySnap::of(&h.buckets(), h.sum())
}

pub fn snapshot(ctl: &Control) -> Snapshot {
    let t = ctl.tables.load();
    let mut s = Snapshot {
        generation: t.generation,
        uptime_s: ctl.epoch.elapsed().as_secs_f64(),
        services: t.services.len(),
        routes: t.fib.len(),
        ..Default::default()
    };
    for p in t.ports.iter() {
        let mut ps = PortSnap::default();
        for (q, w) in ctl.counters.iter().enumerate() {
            let Some(c) = w.ports.get(p.id.index()) else {
                continue;
            };
            let qs = QueueSnap {
                queue: q,
                rx_packets: c.rx_packets.get(),
                rx_bytes: c.rx_bytes.get(),
                tx_packets: c.tx_packets.get(),
                tx_bytes: c.tx_bytes.get(),
                tx_drops: c.drops.get(),
                xsk_fill_empty: c.xsk_fill_empty.get(),
                xsk_rx_ring_full: c.xsk_rx_ring_full.get(),
            };
            ps.rx_packets += qs.rx_packets;
            ps.rx_bytes += qs.rx_bytes;
            ps.tx_packets += qs.tx_packets;
            ps.tx_bytes += qs.tx_bytes;
            ps.tx_drops += qs.tx_drops;
            ps.queues.push(qs);
        }
        s.ports.insert(p.name.clone(), ps);
    }
    for r in DropReason::ALL {
        let n = ctl.counters.iter().map(|w| w.drop_count(*r)).sum();
        s.drops.insert(r.name().into(), n);
    }
    for e in Event::ALL {
        let n = ctl.counters.iter().map(|w| w.event_count(*e)).sum();
        s.events.insert(e.name().into(), n);
    }
    for (i, w) in ctl.counters.iter().enumerate() {
        let polls = w.polls.get();
        let busy = w.busy_polls.get();
        s.workers.push(WorkerSnap {
            worker: i,
            busy_ratio: if polls == 0 {
                0.0
            } else {
                busy as f64 / polls as f64
            },
            polls,
            busy_polls: busy,
            sleeps: w.sleeps.get(),
            tx_kicks: w.tx_kicks.get(),
            rx_kicks: w.rx_kicks.get(),
            rx_batches: w.rx_batches.get(),
            free_frames: w.free_frames.load(std::sync::atomic::Ordering::Relaxed),
            latency: ctl
                .obs
                .get(i)
                .map(|o| hist_snap(&o.latency))
                .unwrap_or_default(),
            generation_used: ctl.obs.get(i).map(|o| o.generation_used().0).unwrap_or(0),
        });
    }
    s.programming = ProgrammingSnap {
        apply: hist_snap(&ctl.prog.apply),
        first_use: hist_snap(&ctl.prog.first_use),
    };
    s
}

/// Histogram boundaries exported to Prometheus, in nanoseconds. Buckets are the log-linear
/// ones of [`LatencyHist`] (1/8 precision), summed up to each boundary.
const LE_NS: &[u64] = &[
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// Escapes a label value (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends a Prometheus histogram (seconds) from log-linear nanosecond buckets.
pub fn histogram(out: &mut String, name: &str, labels: &str, buckets: &[u64], sum_ns: u64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut i = 0;
    let mut acc = 0u64;
    for le in LE_NS {
        while i < buckets.len() && bucket_upper(i) <= *le {
            acc += buckets[i];
            i += 1;
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {acc}",
            *le as f64 / 1e9
        );
    }
    let total: u64 = buckets.iter().sum();
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

/// The whole exposition.
pub fn render(ctl: &Control) -> String {
    let s = snapshot(ctl);
    let mut o = String::with_capacity(16 * 1024);
    type Field = fn(&QueueSnap) -> u64;
    let port_fields: [(&str, &str, Field); 7] = [
        (
            "afgate_port_rx_packets_total",
            "Frames received, per port and queue.",
            |q| q.rx_packets,
        ),
        (
            "afgate_port_rx_bytes_total",
            "Bytes received, per port and queue.",
            |q| q.rx_bytes,
        ),
        (
            "afgate_port_tx_packets_total",
            "Frames transmitted, per port and queue.",
            |q| q.tx_packets,
        ),
        (
            "afgate_port_tx_bytes_total",
            "Bytes transmitted, per port and queue.",
            |q| q.tx_bytes,
        ),
        (
            "afgate_port_tx_drops_total",
            "Frames the tx ring did not take, per port and queue.",
            |q| q.tx_drops,
        ),
        (
            "afgate_port_xsk_fill_empty_total",
            "Frames the kernel dropped because the worker's fill ring was empty, per port and queue.",
            |q| q.xsk_fill_empty,
        ),
        (
            "afgate_port_xsk_rx_ring_full_total",
            "Frames the kernel dropped because the worker's rx ring was full, per port and queue.",
            |q| q.xsk_rx_ring_full,
        ),
    ];
    for (name, help, f) in port_fields {
        header(&mut o, name, help, "counter");
        for (port, ps) in &s.ports {
            for q in &ps.queues {
                let _ = writeln!(
                    o,
                    "{name}{{port=\"{}\",queue=\"{}\"}} {}",
                    label(port),
                    q.queue,
                    f(q)
                );
            }
        }
    }
    header(
        &mut o,
        "afgate_drops_total",
        "Frames dropped, by reason.",
        "counter",
    );
    for (r, n) in &s.drops {
        let _ = writeln!(o, "afgate_drops_total{{reason=\"{r}\"}} {n}");
    }
    header(
        &mut o,
        "afgate_events_total",
        "Things the pipeline did besides forwarding.",
        "counter",
    );
    for (e, n) in &s.events {
        let _ = writeln!(o, "afgate_events_total{{event=\"{e}\"}} {n}");
    }
    // Per-worker poll counters: one family each, same shape.
    type WorkerField = fn(&WorkerSnap) -> u64;
    let per_worker: [(&str, &str, WorkerField); 6] = [
        (
            "afgate_worker_polls_total",
            "Poll passes, per worker.",
            |w| w.polls,
        ),
        (
            "afgate_worker_busy_polls_total",
            "Poll passes that moved frames, per worker.",
            |w| w.busy_polls,
        ),
        (
            "afgate_worker_sleeps_total",
            "Times a worker slept in poll(2).",
            |w| w.sleeps,
        ),
        (
            "afgate_worker_tx_kicks_total",
            "sendto(2) calls that told the kernel to transmit, per worker.",
            |w| w.tx_kicks,
        ),
        (
            "afgate_worker_rx_kicks_total",
            "recvfrom(2) calls that woke the kernel to refill, per worker.",
            |w| w.rx_kicks,
        ),
        (
            "afgate_worker_rx_batches_total",
            "Non-empty rx batches taken off the rx rings, per worker.",
            |w| w.rx_batches,
        ),
    ];
    for (name, help, field) in per_worker {
        header(&mut o, name, help, "counter");
        for w in &s.workers {
            let _ = writeln!(o, "{name}{{worker=\"{}\"}} {}", w.worker, field(w));
        }
    }
    header(
        &mut o,
        "afgate_forwarding_latency_seconds",
        "Pipeline time per frame (batch time divided by batch size), per worker.",
        "histogram",
    );
    for (i, obs) in ctl.obs.iter().enumerate() {
        histogram(
            &mut o,
            "afgate_forwarding_latency_seconds",
            &format!("worker=\"{i}\""),
            &obs.latency.buckets(),
            obs.latency.sum(),
        );
    }
    header(
        &mut o,
        "afgate_programming_latency_seconds",
        "Control request to publication (stage=apply) and to the first frame forwarded with it (stage=first_use).",
        "histogram",
    );
    for (stage, h) in [
        ("apply", &ctl.prog.apply),
        ("first_use", &ctl.prog.first_use),
    ] {
        histogram(
            &mut o,
            "afgate_programming_latency_seconds",
            &format!("stage=\"{stage}\""),
            &h.buckets(),
            h.sum(),
        );
    }
    conntrack(ctl, &mut o);
    header(
        &mut o,
        "afgate_table_generation",
        "Generation of the published tables.",
        "gauge",
    );
    let _ = writeln!(o, "afgate_table_generation {}", s.generation);
    header(&mut o, "afgate_routes", "Routes in the FIB.", "gauge");
    let _ = writeln!(o, "afgate_routes {}", s.routes);
    header(&mut o, "afgate_services", "Services programmed.", "gauge");
    let _ = writeln!(o, "afgate_services {}", s.services);
    o
}

/// Conntrack table counters, NAT port use per SNAT address, and per service/backend
/// connections and packets: one scan of the table.
fn conntrack(ctl: &Control, o: &mut String) {
    let st = ctl.shared.conntrack.stats();
    for (name, help, kind, v) in [
        (
            "afgate_conntrack_entries",
            "Tracked flows (including expired ones not yet reclaimed).",
            "gauge",
            st.entries,
        ),
        (
            "afgate_conntrack_capacity",
            "Conntrack table size.",
            "gauge",
            st.capacity,
        ),
        (
            "afgate_conntrack_inserts_total",
            "Flows inserted.",
            "counter",
            st.inserts,
        ),
        (
            "afgate_conntrack_insert_races_total",
            "Inserts that found the flow already inserted by another worker.",
            "counter",
            st.insert_races,
        ),
        (
            "afgate_conntrack_early_drops_total",
            "Unreplied flows evicted to make room.",
            "counter",
            st.early_drops,
        ),
        (
            "afgate_conntrack_expired_total",
            "Flows reclaimed after their timeout (evictions).",
            "counter",
            st.expired,
        ),
        (
            "afgate_conntrack_full_drops_total",
            "Inserts refused because the table was full.",
            "counter",
            st.full_drops,
        ),
    ] {
        header(o, name, help, kind);
        let _ = writeln!(o, "{name} {v}");
    }
    let t = ctl.tables.load();
    let mut per: BTreeMap<(u32, u32), [u64; 4]> = BTreeMap::new();
    let mut snat: BTreeMap<std::net::Ipv4Addr, u64> = BTreeMap::new();
    for e in ctl.shared.conntrack.entries(ctl.now_s()) {
        if e.reply.dst != e.orig.src {
            *snat.entry(e.reply.dst).or_default() += 1;
        }
        if e.service != 0 {
            let c = per.entry((e.service, e.backend)).or_default();
            if e.proto == 6 && e.state.name() == "ESTABLISHED" {
                c[0] += 1;
            } else {
                c[1] += 1;
            }
            c[2] += e.packets[0] + e.packets[1];
            c[3] += e.bytes[0] + e.bytes[1];
        }
    }
    header(
        o,
        "afgate_nat_ports_in_use",
        "Live source-NATed flows (ports in use) per SNAT address.",
        "gauge",
    );
    for (a, n) in &snat {
        let _ = writeln!(o, "afgate_nat_ports_in_use{{addr=\"{a}\"}} {n}");
    }
    let svc_name = |id: u32| {
        t.services
            .get(id)
            .map(|s| label(&s.spec.name))
            .unwrap_or_else(|| format!("#{id}"))
    };
    for (i, (name, help)) in [
        (
            "afgate_backend_active_conns",
            "Established TCP flows per service backend (ipvsadm ActiveConn).",
        ),
        (
            "afgate_backend_inactive_conns",
            "Other live flows per service backend (ipvsadm InActConn).",
        ),
        (
            "afgate_backend_flow_packets",
            "Packets of the live flows per service backend.",
        ),
        (
            "afgate_backend_flow_bytes",
            "Bytes of the live flows per service backend.",
        ),
    ]
    .iter()
    .enumerate()
    {
        header(o, name, help, "gauge");
        for ((svc, backend), c) in &per {
            let _ = writeln!(
                o,
                "{name}{{service=\"{}\",backend=\"{}\"}} {}",
                svc_name(*svc),
                std::net::Ipv4Addr::from(*backend),
                c[i]
            );
        }
    }
}

/// Largest HTTP request head read; anything longer is answered 431 and closed.
const MAX_HTTP_REQUEST: usize = 8192;

/// Answers one HTTP connection: `GET /metrics` → the exposition; anything else → 404/405.
fn answer(ctl: &Control, mut s: std::net::TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; MAX_HTTP_REQUEST];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
            || buf[..n].windows(2).any(|w| w == b"\n\n")
        {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let first = head.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if n == buf.len() {
        (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".to_string(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        ctl.observe_generations();
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(ctl),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    if method != "HEAD" {
        let _ = s.write_all(body.as_bytes());
    }
}

/// Binds the metrics listener (so a bad address fails start-up, not later).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("metrics: binding {addr}: {e}"))
}

/// Serves `/metrics` until `stop` is set, one connection at a time (scrapes are rare). The
/// accept blocks; [`wake`] unblocks it.
pub fn serve(ctl: Arc<Control>, l: TcpListener, stop: Arc<AtomicBool>) {
    loop {
        let accepted = l.accept();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match accepted {
            Ok((s, _)) => answer(&ctl, s),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Unblocks [`serve`]'s accept once `stop` is set.
pub fn wake(addr: SocketAddr) {
    let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the exposition the way a scraper parses it: every sample belongs to a family
    /// declared with HELP and TYPE before it, names and labels are well formed, values are
    /// numbers, and histogram buckets are cumulative with +Inf equal to the count.
    #[test]
    fn exposition_is_well_formed() {
        let ctl = crate::api::tests::control();
        // Some latency so histograms are not empty.
        ctl.prog.apply.record_n(700, 3);
        ctl.prog.apply.record_n(3_000_000, 1);
        let text = render(&ctl);
        let mut typed: std::collections::HashMap<String, String> = Default::default();
        let mut last_bucket: Option<(String, u64)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split(' ');
                let (n, k) = (p.next().unwrap(), p.next().unwrap());
                assert!(["counter", "gauge", "histogram"].contains(&k), "{line}");
                assert!(
                    typed.insert(n.to_string(), k.to_string()).is_none(),
                    "TYPE twice: {n}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value in {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample before its TYPE: {line}");
            if let Some(l) = series.strip_prefix(name)
                && !l.is_empty()
            {
                assert!(l.starts_with('{') && l.ends_with('}'), "{line}");
                for kv in l[1..l.len() - 1].split(',') {
                    let (k, v) = kv.split_once('=').expect(kv);
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
            if name.ends_with("_bucket") {
                let key = series.split(",le=").next().unwrap().to_string();
                let v: u64 = value.parse().unwrap();
                if let Some((k, prev)) = &last_bucket
                    && *k == key
                {
                    assert!(v >= *prev, "buckets cumulative: {line}");
                }
                last_bucket = Some((key, v));
            }
        }
        assert!(text.contains(
            "afgate_programming_latency_seconds_bucket{stage=\"apply\",le=\"0.000001\"} 3"
        ));
        assert!(
            text.contains(
                "afgate_programming_latency_seconds_bucket{stage=\"apply\",le=\"+Inf\"} 4"
            )
        );
        assert!(text.contains("afgate_programming_latency_seconds_count{stage=\"apply\"} 4"));
        assert!(text.contains("afgate_drops_total{reason=\"no_route\"} 0"));
        assert!(text.contains("afgate_conntrack_entries 0"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
