//! Fuzz harness bodies for the control side, shared by the bounded runs of the test suite
//! (`control/tests/fuzz_quick.rs`) and the libFuzzer targets in `fuzz/`: the configuration
//! parser and the control API's request decoder on arbitrary input. Both must answer with a
//! value or an error, never panic.

use crate::api::{Request, parse_request};
use crate::config::Config;
use std::path::Path;

/// The documented lab node configuration (docs/configuration.md), the seed for mutations.
pub const SEED_CONFIG: &str = r#"# afgate on the lab node (SPEC §3): uplink biz (trunk, VLAN 1155 for underlay pods),
# control network ctl (VXLAN outer source), two overlay pods.
workers:
  cores: [0, 1]          # one pinned worker per core; worker i serves queue i of every port
  poll: adaptive         # busy | wakeup | adaptive
  batch: 64
  idle_spins: 256
  frames: 16384          # UMEM frames per worker (4 KiB each)
  ring_size: 1024

ports:
  - name: biz
    device: biz
    role: uplink
    addresses: [10.186.153.103/24]
    vlan:
      trunk: [1155]
      addresses: { 1155: [10.186.155.30/27] }
  - name: ctl
    device: ctl
    role: ctl
    addresses: [10.186.152.103/24]
  - { name: pod60, device: pod60, role: pod, mtu: 1450 }
  - { name: pod41, device: pod41, role: pod, mtu: 1450 }

vxlan:
  port: 4789
  overlays:
    - name: vxlan.2
      vni: 2
      local: 10.186.152.103
      mtu: 1450
      vteps:
        - { via: 10.20.4.0, mac: "02:af:78:00:00:04", remote: 10.186.152.104 }

routes:
  - { dst: 10.20.9.60/32, dev: pod60 }
  - { dst: 10.20.9.41/32, dev: pod41 }
  - { dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }
  - { dst: 0.0.0.0/0, via: 10.186.153.254, dev: biz }

neighbors:
  - { ip: 10.186.153.254, mac: "02:af:03:00:00:02", dev: biz }

passthrough:
  - { addr: 10.186.153.103, proto: tcp, port: 22 }   # SSH stays with the kernel

services:
  - name: web
    type: nodeport
    cluster_ip: 10.96.10.1
    port: 80
    protocol: tcp
    target_port: 8080
    node_port: 31234
    scheduler: rr
    session_affinity: { client_ip_timeout: 10800 }
    external_traffic_policy: cluster
    backends:
      - { addr: 10.20.9.60, local: true }
      - { addr: 10.20.4.11, local: false }
  - name: kube-dns
    cluster_ip: 10.96.0.10
    port: 53
    protocol: udp
    backends:
      - { addr: 10.20.9.41 }

masquerade:
  - { src: 10.186.155.0/27, in_port: biz.1155, in_vlan: 1155, dst: 10.96.0.0/16, to: egress }

conntrack:
  capacity: 262144
  timeouts: { udp: 30, tcp_established: 432000 }

api:
  socket: /run/afgate/afgate.sock
  metrics_addr: 127.0.0.1:9469
"#;

/// Runs the configuration parser and validator on `data` (as text, lossily, so that
/// invalid UTF-8 still reaches the parser as replacement characters). True if it was valid.
pub fn config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.yaml")) {
        Ok(c) => {
            std::hint::black_box(format!("{c:?}"));
            true
        }
        Err(e) => {
            // Every error renders (file:line: field: message) without panicking.
            std::hint::black_box(e.to_string());
            false
        }
    }
}

/// Decodes `data` as one API request line. A request that decodes must survive its own
/// wire encoding: `parse_request(req.to_line()) == req`. True if it decoded.
pub fn api_request(data: &[u8]) -> bool {
    let line = String::from_utf8_lossy(data);
    let Ok(req) = parse_request(&line) else {
        return false;
    };
    let again = parse_request(&req.to_line());
    assert_eq!(again.as_ref(), Ok(&req), "request does not survive to_line");
    true
}

/// Request lines for every operation, as `afgate ctl` sends them.
pub fn api_seeds() -> Vec<String> {
    [
        r#"{"op":"status"}"#,
        r#"{"op":"route_list"}"#,
        r#"{"op":"route_add","dst":"10.20.4.0/25","via":"10.20.4.0","dev":"vxlan.2"}"#,
        r#"{"op":"route_replace","dst":"0.0.0.0/0","via":"10.186.153.254","dev":"biz"}"#,
        r#"{"op":"route_del","dst":"10.20.4.0/25"}"#,
        r#"{"op":"neigh_add","ip":"10.186.153.254","mac":"02:af:03:00:00:02","dev":"biz"}"#,
        r#"{"op":"neigh_del","ip":"10.186.153.254"}"#,
        r#"{"op":"stats"}"#,
        r#"{"op":"metrics"}"#,
        r#"{"op":"trace","in_port":"pod60","frame":"02af000000020200000060010800450000","vlan":1155}"#,
        r#"{"op":"reload","config":"workers: {cores: [0]}\nports: []\n","file":"x.yaml"}"#,
        r#"{"op":"service_list"}"#,
        r#"{"op":"conntrack_count"}"#,
        r#"{"op":"conntrack_flush"}"#,
        r#"{"op":"conntrack_list","dport":80,"limit":10}"#,
        r#"{"op":"apply","manifests":"kind: Service\n","node_name":"node1"}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        // Whatever the typed requests encode to, so new fields are covered as they appear.
        [Request::Status, Request::Stats, Request::ConntrackFlush]
            .iter()
            .map(Request::to_line),
    )
    .collect()
}
