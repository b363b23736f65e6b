//! The control plane in the lab: afgate runs in the node namespace with its API socket and
//! metrics listener, and the tests drive it through the `afgate` CLI as an operator would —
//! routes added and removed while a pod pings, stats that match the traffic sent, a trace
//! that shows the route and neighbour decisions, a capture that `tcpdump -r` reads, a
//! refused non-root client, an invalid reload that changes nothing, a `/metrics` scrape.

use afgate_tests::lab::{Lab, NodeLab};
use afgate_tests::ping::{parse_ping, ping};
use afgate_tests::process::{Afgate, Proc, afgate_bin};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

const METRICS: &str = "127.0.0.1:9469";

struct Node {
    lab: NodeLab,
    afgate: Afgate,
    api: PathBuf,
    cfg: PathBuf,
}

/// The node lab with afgate running; `edit` changes the generated config first.
fn start(edit: impl FnOnce(String) -> String) -> Result<Node> {
    let lab = Lab::node_lab()?;
    let cfg = lab.lab.tmp().join("afgate.yaml");
    std::fs::write(&cfg, edit(lab.afgate_config_yaml()))?;
    let api = lab.lab.tmp().join("afgate.sock");
    let api_s = api.to_str().context("utf-8")?.to_string();
    let afgate = Afgate::start_with(&lab.node, &cfg, &["--api", &api_s, "--metrics", METRICS])?;
    Ok(Node {
        lab,
        afgate,
        api,
        cfg,
    })
}

/// `afgate ARGS…` (bounded: every command here answers within seconds).
fn afgate(args: &[&str]) -> Result<Output> {
    let bin = afgate_bin();
    let mut argv = vec![bin.to_str().context("utf-8")?];
    argv.extend_from_slice(args);
    Proc::spawn(&argv, false)?.finish(Duration::from_secs(30))
}

fn ctl(n: &Node, args: &[&str]) -> Result<String> {
    let api = n.api.to_str().context("utf-8")?;
    let mut argv = vec!["ctl", "--api", api];
    argv.extend_from_slice(args);
    let out = afgate(&argv)?;
    if !out.status.success() {
        bail!(
            "afgate {argv:?} failed: {}{}\nafgate log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            n.afgate.log()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).with_context(|| format!("not JSON: {s}"))
}

fn without_default_route(y: String) -> String {
    y.lines()
        .filter(|l| !l.contains("dst: 0.0.0.0/0"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn route_add_and_del_while_a_pod_pings() -> Result<()> {
    let n = start(without_default_route)?;
    let ext = n.lab.addrs.ext_ip.to_string();
    assert_eq!(
        ping(&n.lab.pod.ns, &ext, 2, Duration::from_secs(1))?.received,
        0,
        "no route to ext yet"
    );
    // 30 echo requests 0.2 s apart (6 s); the route exists from ~1.5 s to ~4 s.
    let bg = n
        .lab
        .pod
        .ns
        .spawn(&["ping", "-n", "-c", "30", "-i", "0.2", "-W", "1", &ext])?;
    std::thread::sleep(Duration::from_millis(1500));
    ctl(
        &n,
        &[
            "route",
            "add",
            "10.186.200.0/24",
            "via",
            "10.186.153.254",
            "dev",
            "biz",
        ],
    )?;
    let routes = ctl(&n, &["route", "list"])?;
    assert!(
        routes.contains("10.186.200.0/24 via 10.186.153.254 dev biz"),
        "{routes}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    ctl(&n, &["route", "del", "10.186.200.0/24"])?;
    let out = bg.finish(Duration::from_secs(20))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let p = parse_ping(&text).context("ping output")?;
    assert_eq!(p.sent, 30, "{text}");
    assert!(
        p.received >= 5 && p.received <= 20,
        "replies only while the route existed: {text}"
    );
    // Adding it twice is refused and names the field; deleting a missing route too.
    let api = n.api.to_str().context("utf-8")?;
    let dup = afgate(&[
        "ctl",
        "--api",
        api,
        "route",
        "add",
        "10.20.9.60/32",
        "dev",
        "pod60",
    ])?;
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    assert_eq!(
        ping(&n.lab.pod.ns, &ext, 2, Duration::from_secs(1))?.received,
        0,
        "gone again after route del"
    );
    let stats = json(&ctl(&n, &["-o", "json", "stats"])?)?;
    assert!(
        stats["drops"]["no_route"].as_u64().unwrap_or(0) >= 4,
        "{stats}"
    );
    assert!(
        stats["programming"]["apply"]["samples"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "{stats}"
    );
    Ok(())
}

#[test]
fn stats_trace_capture_metrics() -> Result<()> {
    let n = start(|y| y)?;
    let ext = n.lab.addrs.ext_ip.to_string();
    let api = n.api.to_str().context("utf-8")?.to_string();

    // Capture the next 4 echo requests leaving on biz.
    let pcap = n.lab.lab.tmp().join("biz.pcap");
    let pcap_s = pcap.to_str().context("utf-8")?.to_string();
    let bin = afgate_bin();
    let mut cap = Proc::spawn(
        &[
            bin.to_str().context("utf-8")?,
            "capture",
            "--api",
            &api,
            "--port",
            "biz",
            "--dir",
            "out",
            "--filter",
            &format!("host {ext} and icmp"),
            "--count",
            "4",
            "--duration",
            "15",
            "-w",
            &pcap_s,
        ],
        false,
    )?;
    wait_capture_armed(&mut cap)?;
    let p = ping(&n.lab.pod.ns, &ext, 4, Duration::from_secs(2))?;
    assert_eq!(p.received, 4, "log:\n{}", n.afgate.log());
    let out = cap.finish(Duration::from_secs(20))?;
    assert!(
        out.status.success(),
        "capture: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let read = std::process::Command::new("tcpdump")
        .args(["-n", "-e", "-r", &pcap_s])
        .output()?;
    let lines = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let requests: Vec<_> = lines
        .lines()
        .filter(|l| l.contains("echo request"))
        .collect();
    assert_eq!(requests.len(), 4, "{lines}");
    for l in &requests {
        assert!(l.starts_with(|c: char| c.is_ascii_digit()), "{l}");
        assert!(
            l.contains(&n.lab.ports.biz.mac.to_string()),
            "source MAC rewritten: {l}"
        );
        assert!(
            l.contains(&format!("{} > {ext}", n.lab.addrs.pod_ip)),
            "{l}"
        );
    }

    // Stats: per-queue numbers add up to the port's, and cover what was sent.
    let s = json(&ctl(&n, &["-o", "json", "stats"])?)?;
    let pod = &s["ports"]["pod60"];
    let q_rx: u64 = pod["queues"]
        .as_array()
        .context("queues")?
        .iter()
        .map(|q| q["rx_packets"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(q_rx, pod["rx_packets"].as_u64().unwrap_or(0), "{s}");
    assert!(pod["rx_packets"].as_u64().unwrap_or(0) >= 4, "{s}");
    assert!(
        s["ports"]["biz"]["tx_packets"].as_u64().unwrap_or(0) >= 4,
        "{s}"
    );
    assert!(
        pod["tx_packets"].as_u64().unwrap_or(0) >= 4,
        "4 replies: {s}"
    );
    assert!(
        s["workers"][0]["latency"]["samples"].as_u64().unwrap_or(0) >= 8,
        "{s}"
    );
    assert!(s["workers"][0]["busy_ratio"].as_f64().is_some(), "{s}");
    let text = ctl(&n, &["stats"])?;
    assert!(text.contains("pod60") && text.contains("WORKERS"), "{text}");

    // Trace: a UDP datagram from the pod to ext takes the default route, and the next
    // hop's MAC comes from the neighbour table.
    let trace_args = [
        "--in-port",
        "pod60",
        "--src",
        "10.20.9.60",
        "--dst",
        &ext,
        "--proto",
        "udp",
        "--dport",
        "53",
    ];
    let mut argv = vec!["trace", "--api", api.as_str()];
    argv.extend_from_slice(&trace_args);
    let t = afgate(&argv)?;
    let tt = String::from_utf8_lossy(&t.stdout);
    assert!(
        t.status.success(),
        "{tt}{}",
        String::from_utf8_lossy(&t.stderr)
    );
    assert!(
        tt.contains("route:") && tt.contains("via 10.186.153.254"),
        "{tt}"
    );
    assert!(
        tt.contains("neigh:") && tt.contains(&n.lab.ports.biz.peer_mac.to_string()),
        "{tt}"
    );
    assert!(tt.contains("Datapath actions: output:biz"), "{tt}");
    // Offline, from the config file alone: the same decisions.
    let cfg = n.cfg.to_str().context("utf-8")?;
    let mut argv = vec!["trace", "-c", cfg];
    argv.extend_from_slice(&trace_args);
    let off = afgate(&argv)?;
    let ot = String::from_utf8_lossy(&off.stdout);
    assert!(
        ot.contains("Datapath actions: output:biz"),
        "{ot}{}",
        String::from_utf8_lossy(&off.stderr)
    );

    // /metrics from inside the node namespace.
    let m = n.lab.node.exec_ok(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{METRICS}/metrics"),
    ])?;
    let rx = m
        .lines()
        .find(|l| l.starts_with("afgate_port_rx_packets_total{port=\"pod60\",queue=\"0\"}"))
        .with_context(|| format!("no pod60 rx counter in:\n{m}"))?;
    let v: u64 = rx.rsplit(' ').next().unwrap_or("0").parse()?;
    assert!(v >= 4, "{rx}");
    for needle in [
        "# TYPE afgate_drops_total counter",
        "afgate_drops_total{reason=\"no_route\"}",
        "afgate_forwarding_latency_seconds_bucket{worker=\"0\",le=\"+Inf\"}",
        "afgate_programming_latency_seconds_count{stage=\"apply\"}",
        "afgate_table_generation",
    ] {
        assert!(m.contains(needle), "{needle} missing");
    }
    let nf = n.lab.node.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        &format!("http://{METRICS}/nope"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&nf.stdout), "404");
    Ok(())
}

/// Waits until the capture client says the taps are armed.
fn wait_capture_armed(cap: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cap.stderr().contains("afgate: capturing on") {
            return Ok(());
        }
        if let Some(s) = cap.try_wait()? {
            bail!(
                "capture exited ({s}) before starting:\n{}",
                cap.output_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the capture did not start within 10 s:\n{}",
        cap.output_tail()
    )
}

#[test]
fn non_root_is_refused_and_invalid_reload_changes_nothing() -> Result<()> {
    let n = start(|y| y)?;
    let api = n.api.to_str().context("utf-8")?.to_string();
    let ext = n.lab.addrs.ext_ip.to_string();
    // The socket is root's, mode 0600.
    let meta = std::fs::metadata(&n.api)?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    // An unprivileged client (setpriv forks and setuid()s to nobody) is refused.
    let bin = afgate_bin();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["ctl", "--api", &api, "status"])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") || err.contains("only root"),
        "{err}"
    );

    let gen0 = json(&ctl(&n, &["-o", "json", "status"])?)?["generation"].clone();
    // A long ping runs across both reloads.
    let bg = n
        .lab
        .pod
        .ns
        .spawn(&["ping", "-n", "-c", "20", "-i", "0.2", "-W", "1", &ext])?;
    std::thread::sleep(Duration::from_millis(800));
    let bad = n.lab.lab.tmp().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&n.cfg)?.replace("dev: pod41 }", "dev: pod99 }"),
    )?;
    let r = afgate(&[
        "reload",
        "--api",
        &api,
        "-c",
        bad.to_str().context("utf-8")?,
    ])?;
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("routes[1].dev") && e.contains("nothing was applied"),
        "{e}"
    );
    assert_eq!(
        json(&ctl(&n, &["-o", "json", "status"])?)?["generation"],
        gen0
    );
    // A valid one with an extra route applies, and forwarding never stops.
    let good = n.lab.lab.tmp().join("good.yaml");
    std::fs::write(
        &good,
        std::fs::read_to_string(&n.cfg)?.replace(
            "neighbors:\n",
            "  - { dst: 10.20.4.0/25, via: 10.186.153.254, dev: biz }\nneighbors:\n",
        ),
    )?;
    let good_s = good.to_str().context("utf-8")?;
    let r = afgate(&["reload", "--api", &api, "-c", good_s])?;
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("routes +1 -0"));
    assert!(ctl(&n, &["route", "list"])?.contains("10.20.4.0/25 via 10.186.153.254 dev biz"));
    let out = bg.finish(Duration::from_secs(20))?;
    let p = parse_ping(&String::from_utf8_lossy(&out.stdout)).context("ping")?;
    assert_eq!((p.sent, p.received), (20, 20), "no loss across reloads");
    Ok(())
}

const KUBE_DNS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: { name: kube-dns, namespace: kube-system }
  spec:
    clusterIP: 10.96.0.10
    type: ClusterIP
    ports:
    - { name: dns, port: 53, protocol: UDP, targetPort: 5353 }
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  metadata:
    name: kube-dns-x1
    namespace: kube-system
    labels: { kubernetes.io/service-name: kube-dns }
  ports:
  - { name: dns, port: 5353, protocol: UDP }
  endpoints:
  - addresses: [10.186.200.10]
    conditions: { ready: true, serving: true, terminating: false }
    nodeName: node-104
"#;

#[test]
fn services_backends_conntrack_and_kubernetes_manifests() -> Result<()> {
    use afgate_tests::peer;
    let n = start(|y| y)?;
    let ext = n.lab.addrs.ext_ip;
    ctl(&n, &["service", "add", "-t", "10.96.10.1:80", "-s", "rr"])?;
    ctl(
        &n,
        &[
            "backend",
            "add",
            "-t",
            "10.96.10.1:80",
            "-r",
            &format!("{ext}:8080"),
        ],
    )?;
    let server = peer::tcp_server(&n.lab.ext.ns, &format!("{ext}:8080"), "ext", 20)?;
    let c = peer::tcp_client(&n.lab.pod.ns, "10.96.10.1:80", 1000, 10)?;
    assert!(c.echoed, "{}", c.stdout);
    assert_eq!(c.reply.client_ip(), n.lab.addrs.pod_ip.to_string());
    drop(server);

    let list = json(&ctl(&n, &["-o", "json", "service", "list"])?)?;
    let svc = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["addr"] == "10.96.10.1"))
        .with_context(|| format!("{list}"))?;
    let b = &svc["backends"][0];
    assert_eq!(b["addr"], ext.to_string());
    let conns = b["active_conns"].as_u64().unwrap_or(0) + b["inactive_conns"].as_u64().unwrap_or(0);
    assert!(conns >= 1, "the flow is counted on its backend: {svc}");
    let text = ctl(&n, &["service", "list"])?;
    assert!(
        text.contains("TCP  10.96.10.1:80") && text.contains(&format!("-> {ext}:8080")),
        "{text}"
    );

    let ct = json(&ctl(
        &n,
        &[
            "-o",
            "json",
            "conntrack",
            "list",
            "--dport",
            "80",
            "-p",
            "tcp",
        ],
    )?)?;
    let e = ct["entries"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["orig"]["dst"] == "10.96.10.1"))
        .with_context(|| format!("{ct}"))?;
    assert_eq!(e["reply"]["src"], ext.to_string());
    assert_eq!(e["reply"]["sport"], 8080);
    let none = json(&ctl(
        &n,
        &["-o", "json", "conntrack", "list", "--dport", "9999"],
    )?)?;
    assert_eq!(none["total"], 0);
    let ct_text = ctl(
        &n,
        &[
            "conntrack",
            "list",
            "--src",
            &n.lab.addrs.pod_ip.to_string(),
        ],
    )?;
    assert!(
        ct_text.contains("dst=10.96.10.1") && ct_text.contains("dport=80"),
        "{ct_text}"
    );
    assert!(ctl(&n, &["conntrack", "count"])?.trim().parse::<u64>()? >= 1);
    let m = ctl(&n, &["metrics"])?;
    assert!(
        m.contains("afgate_backend_inactive_conns{service=")
            || m.contains("afgate_backend_active_conns{service="),
        "{m}"
    );
    assert!(m.contains("afgate_conntrack_inserts_total"));

    // Kubernetes objects: kube-dns over UDP to a backend on another node.
    let manifests = n.lab.lab.tmp().join("dns.yaml");
    std::fs::write(&manifests, KUBE_DNS)?;
    let out = ctl(
        &n,
        &[
            "apply",
            "-f",
            manifests.to_str().context("utf-8")?,
            "--node-name",
            "node-103",
        ],
    )?;
    assert!(out.contains("1 service port(s) programmed"), "{out}");
    let dns = peer::udp_server(&n.lab.ext.ns, &format!("{ext}:5353"), "dns", 20)?;
    let u = peer::udp_client(&n.lab.pod.ns, "10.96.0.10:53", 3, 5)?;
    assert_eq!((u.sent, u.received), (3, 3), "DNS through the k8s service");
    drop(dns);
    assert!(ctl(&n, &["service", "list"])?.contains("UDP  10.96.0.10:53"));

    // Drain: weight 0 in the ipvsadm view, state terminating in JSON.
    ctl(
        &n,
        &[
            "backend",
            "drain",
            "-t",
            "10.96.10.1:80",
            "-r",
            &ext.to_string(),
        ],
    )?;
    let list = json(&ctl(&n, &["-o", "json", "service", "list"])?)?;
    let svc = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["addr"] == "10.96.10.1"))
        .context("service")?;
    assert_eq!(svc["backends"][0]["state"], "terminating");
    ctl(&n, &["conntrack", "flush"])?;
    assert_eq!(
        json(&ctl(&n, &["-o", "json", "conntrack", "list"])?)?["total"],
        0
    );
    ctl(&n, &["service", "del", "-t", "10.96.10.1:80"])?;
    assert!(!ctl(&n, &["service", "list"])?.contains("10.96.10.1:80"));
    Ok(())
}
