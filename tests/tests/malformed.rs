//! Malformed and unusual traffic through afgate in the node lab. From the pod's namespace,
//! `afgate-peer raw-send` writes frames byte for byte (AF_PACKET) into afgate's pod60 port;
//! for each case the test diffs afgate's stats (via `afgate ctl -o json stats`) and checks
//! the named drop reason moved by exactly the frames sent, or that the frame was forwarded
//! (biz tx) when it is valid. Frames the XDP steering program hands to the kernel (truncated
//! or IHL < 5 headers, by design: bpf/src/bpf/steer.bpf.c) must not reach afgate at all.
//! Afterwards a normal ping still crosses afgate, and every worker's free-frame count is
//! back at its idle value (measured in a run without traffic): no UMEM frame leaked.

use afgate_dataplane::wire::Ipv4Packet;
use afgate_tests::lab::NodeLab;
use afgate_tests::peer::peer_bin;
use afgate_tests::ping::ping;
use afgate_tests::process::{Afgate, Proc, afgate_bin};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn ctl_stats(api: &Path) -> Result<Value> {
    let argv = [
        afgate_bin().to_string_lossy().into_owned(),
        "ctl".into(),
        "--api".into(),
        api.to_string_lossy().into_owned(),
        "-o".into(),
        "json".into(),
        "stats".into(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = Proc::spawn(&argv, false)?.finish(Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("afgate ctl stats: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

fn free_frames(v: &Value) -> Vec<u64> {
    v["worker_free_frames"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// `afgate-peer raw-send` in the pod's namespace, bounded by its own count and a timeout.
fn raw_send(lab: &NodeLab, frame: &[u8], count: u32, secs: u32, vary_arp: bool) -> Result<()> {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let peer = peer_bin();
    let (count, secs) = (count.to_string(), secs.to_string());
    let mut argv = vec![
        "ip",
        "netns",
        "exec",
        lab.pod.ns.name(),
        peer.to_str().context("utf-8")?,
        "raw-send",
        "--dev",
        &lab.pod.dev,
        "--hex",
        &hex,
        "--count",
        &count,
        "--secs",
        &secs,
    ];
    if vary_arp {
        argv.extend(["--vary-arp-target", "1"]);
    }
    let out = Proc::spawn(&argv, false)?.finish(Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "raw-send failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Ethernet + IPv4 + UDP from the pod to `dst`, checksums valid (etherparse).
fn udp(lab: &NodeLab, dst: Ipv4Addr, ttl: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(lab.pod.mac.0, lab.ports.pod60.mac.0)
        .ipv4(lab.addrs.pod_ip.octets(), dst.octets(), ttl)
        .udp(40000, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("in-memory write");
    out
}

fn tcp(lab: &NodeLab, dst: Ipv4Addr) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(lab.pod.mac.0, lab.ports.pod60.mac.0)
        .ipv4(lab.addrs.pod_ip.octets(), dst.octets(), 64)
        .tcp(40001, 7777, 1, 64240)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, b"").expect("in-memory write");
    out
}

/// Applies `edit` to the IPv4 header view and refreshes its checksum.
fn ip_edit(mut f: Vec<u8>, edit: impl FnOnce(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    edit(&mut ip);
    ip.fill_checksum();
    f
}

fn with_options(f: &[u8]) -> Vec<u8> {
    // Record route (7 bytes, room for one address) and an end-of-options byte.
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[7, 7, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&f[34..]);
    ip_edit(out, |ip| {
        ip.set_header_len(28);
        let t = ip.total_len() + 8;
        ip.set_total_len(t);
    })
}

fn tagged(f: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&f[12..]);
    out
}

fn arp_request(lab: &NodeLab, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&lab.pod.mac.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&lab.pod.mac.0);
    f.extend_from_slice(&lab.addrs.pod_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// What one case must do to afgate's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Counted under this drop reason, once per frame.
    Drop(&'static str),
    /// Forwarded out of biz (towards ext), once per frame.
    Forwarded,
    /// Forwarded to pod41 (a service backend), once per frame.
    ToBackend,
    /// Handed to the kernel by the XDP program: afgate's rx counters do not move.
    Kernel,
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
    /// Also counted (drop reason or event name) once per frame.
    also: &'static [&'static str],
}

#[test]
fn malformed_frames_are_counted_and_afgate_keeps_forwarding() -> Result<()> {
    let lab = afgate_tests::lab::Lab::node_lab()?;
    let api = lab.lab.tmp().join("afgate.sock");
    // The lab node plus one UDP service whose backend is pod2, for the fragment cases.
    let mut yaml = lab.afgate_config_yaml();
    yaml.push_str(&format!(
        "services:\n  - name: dns\n    cluster_ip: {DNS_VIP}\n    port: 53\n    protocol: udp\n    \
         target_port: 5353\n    backends:\n      - {{ addr: {} }}\n",
        lab.addrs.pod2_ip
    ));
    let cfg = lab.lab.tmp().join("afgate-malformed.yaml");
    std::fs::write(&cfg, &yaml)?;
    // The idle value of each worker's free-frame gauge, from a run without traffic: once
    // the fill rings are full it is fixed by the configuration (frames minus fill rings).
    let idle = {
        let mut a = Afgate::start(&lab.node, &cfg)?;
        std::thread::sleep(Duration::from_millis(1500));
        a.stop()?;
        free_frames(&final_stats(&a.log())?)
    };
    assert!(
        !idle.is_empty() && idle.iter().all(|n| *n > 0),
        "final-stats carry worker_free_frames: {idle:?}"
    );
    let mut afgate = Afgate::start(&lab.node, &cfg)?;
    let ext = lab.addrs.ext_ip;

    let base = udp(&lab, ext, 64, 7777, b"malformed-test");
    let mut frag_first = udp(&lab, ext, 64, 7777, &[0x5a; 64]);
    frag_first = ip_edit(frag_first, |ip| {
        ip.set_dont_frag(false);
        ip.set_more_frags(true);
    });
    let frag_later = ip_edit(udp(&lab, ext, 64, 7777, &[0x5b; 64]), |ip| {
        ip.set_dont_frag(false);
        ip.set_frag_offset(1480);
    });
    let vip_first = ip_edit(udp(&lab, DNS_VIP, 64, 53, &[0x5c; 64]), |ip| {
        ip.set_dont_frag(false);
        ip.set_more_frags(true);
    });
    let vip_later = ip_edit(udp(&lab, DNS_VIP, 64, 53, &[0x5d; 64]), |ip| {
        ip.set_dont_frag(false);
        ip.set_frag_offset(1480);
    });
    let mut udp_len0 = udp(&lab, ext, 64, 7777, b"");
    udp_len0[38..40].copy_from_slice(&[0, 0]);
    let mut trunc_tcp = tcp(&lab, ext);
    trunc_tcp.truncate(14 + 20 + 10);
    let trunc_tcp = ip_edit(trunc_tcp, |ip| ip.set_total_len(30));

    let cases = vec![
        // Shorter than an Ethernet header cannot be sent at all: AF_PACKET refuses it
        // (EINVAL), so the wire never carries one; the fuzz and unit tests cover it.
        Case {
            name: "ethernet header only (14 bytes, type ipv4)",
            frame: base[..14].to_vec(),
            expect: Expect::Kernel,
            also: &[],
        },
        Case {
            name: "truncated ipv4 header (10 of 20 bytes)",
            frame: base[..24].to_vec(),
            expect: Expect::Kernel,
            also: &[],
        },
        Case {
            name: "truncated udp header (4 of 8 bytes), total_len says 28",
            frame: ip_edit(base[..38].to_vec(), |ip| ip.set_total_len(28)),
            expect: Expect::Drop("malformed"),
            also: &[],
        },
        Case {
            name: "truncated tcp header (10 of 20 bytes), ip length consistent: routed as L3",
            frame: trunc_tcp,
            expect: Expect::Forwarded,
            also: &[],
        },
        Case {
            name: "ihl 15 unpadded: header beyond the frame",
            frame: ip_edit(base.clone(), |ip| ip.set_header_len(60)),
            expect: Expect::Kernel,
            also: &[],
        },
        Case {
            name: "ihl 4 (< 5)",
            frame: ip_edit(base.clone(), |ip| ip.set_header_len(16)),
            expect: Expect::Kernel,
            also: &[],
        },
        Case {
            // Padded past 60 header bytes, or the XDP program hands it to the kernel.
            name: "ihl 15 (60 bytes) > total_len 42, frame padded to 100",
            frame: {
                let mut f = ip_edit(base.clone(), |ip| ip.set_header_len(60));
                f.resize(100, 0);
                f
            },
            expect: Expect::Drop("malformed"),
            also: &[],
        },
        Case {
            name: "total_len 1000 > frame",
            frame: ip_edit(base.clone(), |ip| ip.set_total_len(1000)),
            expect: Expect::Drop("malformed"),
            also: &[],
        },
        Case {
            name: "bad ipv4 header checksum",
            frame: {
                let mut f = base.clone();
                f[24] ^= 0xff;
                f
            },
            expect: Expect::Drop("bad_ip_checksum"),
            also: &[],
        },
        Case {
            name: "ip options (record route)",
            frame: with_options(&base),
            expect: Expect::Forwarded,
            also: &[],
        },
        Case {
            name: "first fragment (MF) of a udp datagram",
            frame: frag_first,
            expect: Expect::Forwarded,
            also: &[],
        },
        Case {
            name: "later fragment of a udp datagram",
            frame: frag_later,
            expect: Expect::Forwarded,
            also: &[],
        },
        Case {
            name: "first fragment to a service VIP: DNATed to the backend",
            frame: vip_first,
            expect: Expect::ToBackend,
            also: &["service_new_flow"],
        },
        Case {
            name: "later fragment to a service VIP: no ports to translate by",
            frame: vip_later,
            expect: Expect::Drop("nat_fragment"),
            also: &[],
        },
        Case {
            name: "ttl 0",
            frame: udp(&lab, ext, 0, 7777, b"ttl0"),
            expect: Expect::Drop("ttl_exceeded"),
            also: &["icmp_time_exceeded_sent"],
        },
        Case {
            name: "ttl 1",
            frame: udp(&lab, ext, 1, 7777, b"ttl1"),
            expect: Expect::Drop("ttl_exceeded"),
            also: &["icmp_time_exceeded_sent"],
        },
        Case {
            name: "udp with no payload (length 8)",
            frame: udp(&lab, ext, 64, 7777, b""),
            expect: Expect::Forwarded,
            also: &[],
        },
        Case {
            name: "udp length field 0: routed as L3",
            frame: udp_len0,
            expect: Expect::Forwarded,
            also: &[],
        },
        Case {
            name: "two 802.1Q tags on a pod port",
            frame: tagged(&tagged(&base, 0x8100, 1155), 0x8100, 7),
            expect: Expect::Drop("vlan_double_tagged"),
            also: &[],
        },
        Case {
            name: "802.1ad outer tag",
            frame: tagged(&tagged(&base, 0x8100, 1155), 0x88a8, 7),
            expect: Expect::Drop("vlan_double_tagged"),
            also: &[],
        },
        Case {
            name: "one 802.1Q tag on an untagged pod port",
            frame: tagged(&base, 0x8100, 1155),
            expect: Expect::Drop("vlan_not_allowed"),
            also: &[],
        },
        Case {
            name: "ipv6",
            frame: {
                let mut f = base[..14].to_vec();
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 17, 64]);
                f.extend_from_slice(&[0; 32]);
                f
            },
            expect: Expect::Drop("ipv6"),
            also: &[],
        },
    ];

    const N: u32 = 20;
    let mut report = Vec::new();
    for c in &cases {
        let before = ctl_stats(&api)?;
        raw_send(&lab, &c.frame, N, 0, false)?;
        // Counters settle within a worker pass; poll until the ingress count stops moving.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut after = ctl_stats(&api)?;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(150));
            let again = ctl_stats(&api)?;
            let settled = again["ports"] == after["ports"] && again["drops"] == after["drops"];
            after = again;
            let arrived = num(&after, &["ports", "pod60", "rx_packets"])
                >= num(&before, &["ports", "pod60", "rx_packets"]) + u64::from(N);
            if settled && (c.expect == Expect::Kernel || arrived) {
                break;
            }
        }
        let d = |path: &[&str]| num(&after, path) - num(&before, path);
        let rx = d(&["ports", "pod60", "rx_packets"]);
        // ARP afgate answered or sent meanwhile (gw refreshing its neighbour entry) is not
        // the case's traffic.
        let arp = d(&["events", "arp_reply"]) + d(&["events", "arp_request_sent"]);
        let biz_tx = d(&["ports", "biz", "tx_packets"]) - arp;
        let pod41_tx = d(&["ports", "pod41", "tx_packets"]);
        let n = u64::from(N);
        report.push(format!(
            "{:<62} rx {rx:>3} biz_tx {biz_tx:>3} pod41_tx {pod41_tx:>3} {:?}",
            c.name, c.expect
        ));
        match c.expect {
            Expect::Kernel => assert_eq!(rx, 0, "{}: reached afgate", c.name),
            Expect::Drop(reason) => {
                assert_eq!(rx, n, "{}: rx", c.name);
                assert_eq!(d(&["drops", reason]), n, "{}: drops.{reason}", c.name);
                assert_eq!(biz_tx, 0, "{}: forwarded", c.name);
            }
            Expect::Forwarded => {
                assert_eq!(rx, n, "{}: rx", c.name);
                assert_eq!(biz_tx, n, "{}: biz tx", c.name);
            }
            Expect::ToBackend => {
                assert_eq!(rx, n, "{}: rx", c.name);
                assert_eq!(pod41_tx, n, "{}: pod41 tx", c.name);
            }
        }
        for name in c.also {
            let moved = d(&["drops", name]) + d(&["events", name]);
            // service_new_flow counts flows: the N copies of one fragment are one flow.
            let want = if *name == "service_new_flow" { 1 } else { n };
            assert_eq!(moved, want, "{}: {name}", c.name);
        }
    }

    // ARP storm: 5000 requests for 5000 different hosts in 2 s, none of them ours.
    let before = ctl_stats(&api)?;
    let storm = arp_request(&lab, Ipv4Addr::new(10, 77, 0, 1));
    let started = Instant::now();
    raw_send(&lab, &storm, 5000, 2, true)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = ctl_stats(&api)?;
    let storm_rx = num(&after, &["ports", "pod60", "rx_packets"])
        - num(&before, &["ports", "pod60", "rx_packets"]);
    let not_for_us =
        num(&after, &["drops", "arp_not_for_us"]) - num(&before, &["drops", "arp_not_for_us"]);
    report.push(format!(
        "arp storm: 5000 sent in {:?}, afgate rx {storm_rx}, arp_not_for_us {not_for_us}",
        started.elapsed()
    ));
    assert_eq!(storm_rx, 5000, "every storm frame reached afgate");
    assert_eq!(
        not_for_us, 5000,
        "every storm frame counted as arp_not_for_us"
    );

    // Still forwarding.
    let p = ping(&lab.pod.ns, &ext.to_string(), 3, Duration::from_secs(2))?;
    assert_eq!(
        (p.sent, p.received),
        (3, 3),
        "ping after the malformed traffic"
    );

    // No frame leaked: idle again, every worker's free stack is back at the idle value.
    std::thread::sleep(Duration::from_millis(1500));
    afgate.stop()?;
    let fin = final_stats(&afgate.log())?;
    let now = free_frames(&fin);
    report.push(format!(
        "free frames per worker: idle without traffic {idle:?}, after this traffic {now:?}"
    ));
    eprintln!("{}", report.join("\n"));
    assert_eq!(
        now, idle,
        "free frames back to the idle value: frames leaked"
    );
    assert!(num(&fin, &["drops", "malformed"]) >= 3 * u64::from(N));
    Ok(())
}

/// The `afgate: final-stats {json}` line afgate prints when it stops.
fn final_stats(log: &str) -> Result<Value> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("afgate: final-stats "))
        .context("no final-stats line")?;
    Ok(serde_json::from_str(line)?)
}
