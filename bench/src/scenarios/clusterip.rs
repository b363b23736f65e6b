//! "clusterip": 64-byte UDP and TCP-ACK ("established", picked up mid-stream) flows to the
//! ClusterIP 10.96.10.1:80 → three backends 10.0.2.10–12:8080 behind the DUT (all reached
//! through d1, neighbours pointing at the sink), DNAT + conntrack + MASQUERADE, one forwarding
//! core. Compared in the same run with the kernel doing the same with kube-proxy's iptables
//! rules and with its nftables rules, and with plain forwarding (afgate and kernel) to the
//! sink's own address.
//!
//! Also holds the helpers the other service/overlay scenarios share: afgate with a scenario's
//! own YAML, kube-proxy-style rule sets, a variant measured on an already running DUT.

use super::{Dut, Env, Running, ScenarioResult, Traffic, VariantResult, measure_with, trial};
use crate::packet::Proto;
use crate::topo::{self, BenchLab};
use afgate_tests::Afgate;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

pub const NAME: &str = "clusterip";

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 10, 1);
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 2, 10),
    Ipv4Addr::new(10, 0, 2, 11),
    Ipv4Addr::new(10, 0, 2, 12),
];
pub const TARGET_PORT: u16 = 8080;

/// One service as kube-proxy would program it.
#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub udp: bool,
    pub backends: Vec<Ipv4Addr>,
    /// The backends' port.
    pub target_port: u16,
}

impl Svc {
    fn proto(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }
    /// kube-proxy's chain suffix is a hash of the service port name; any unique tag will do.
    fn tag(&self) -> String {
        format!("{:016X}", fnv(self.name.as_bytes()))
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The web service of this scenario, TCP and UDP on the same VIP and port.
pub fn web() -> Vec<Svc> {
    [false, true]
        .into_iter()
        .map(|udp| Svc {
            name: format!("default/web:{}", if udp { "u" } else { "t" }),
            ip: VIP,
            port: 80,
            udp,
            backends: BACKENDS.to_vec(),
            target_port: TARGET_PORT,
        })
        .collect()
}

/// `iptables-restore` input for the nat table, written the way kube-proxy (iptables mode)
/// writes it: KUBE-SERVICES → KUBE-SVC-* (mark for masquerade unless from the cluster CIDR,
/// `statistic --mode random --probability 1/n, 1/(n-1), ...`) → KUBE-SEP-* (DNAT), and
/// KUBE-POSTROUTING MASQUERADE of marked packets. Services are matched in list order.
pub fn iptables_rules(svcs: &[Svc]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
    );
    for s in svcs {
        let (tag, p) = (s.tag(), s.proto());
        let svc = format!("KUBE-SVC-{tag}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {} -j {svc}",
            s.ip, s.name, s.port
        );
        let _ = writeln!(
            rules,
            "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {} -j KUBE-MARK-MASQ",
            s.ip, s.name, s.port
        );
        let n = s.backends.len();
        for (i, b) in s.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{:016X}", fnv(format!("{tag}{b}").as_bytes()));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let stat = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{} -> {b}:{}\"{stat} -j {sep}",
                s.name, s.target_port
            );
            let _ = writeln!(
                rules,
                "-A {sep} -s {b}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ\n\
                 -A {sep} -p {p} -m comment --comment \"{}\" -m {p} -j DNAT --to-destination {b}:{}",
                s.name, s.name, s.target_port
            );
        }
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{chains}{rules}COMMIT\n"
    )
}

/// `nft -f` input the way kube-proxy's nftables mode writes it: one verdict map
/// `service-ips` keyed by address . protocol . port, `numgen random mod n vmap` over the
/// endpoint chains, and masquerading of packets marked 0x4000.
pub fn nft_rules(svcs: &[Svc]) -> String {
    let mut s = String::from(
        "table ip kube-proxy {\n\
         \tchain mark-for-masquerade { meta mark set meta mark or 0x4000; }\n\
         \tchain masquerading {\n\t\tmeta mark & 0x4000 == 0 return\n\t\tmeta mark set meta mark xor 0x4000\n\t\tmasquerade fully-random\n\t}\n\
         \tchain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }\n\
         \tchain nat-output { type nat hook output priority -100; policy accept; jump services; }\n\
         \tchain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }\n\
         \tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
         \tchain services { ip daddr . meta l4proto . th dport vmap @service-ips; }\n",
    );
    let mut elems = Vec::new();
    for v in svcs {
        let (tag, p) = (v.tag(), v.proto());
        let mut eps = Vec::new();
        for (i, b) in v.backends.iter().enumerate() {
            let ep = format!("endpoint-{tag}-{i}");
            let _ = writeln!(
                s,
                "\tchain {ep} {{ ip saddr {b} jump mark-for-masquerade; meta l4proto {p} dnat to {b}:{}; }}",
                v.target_port
            );
            eps.push(format!("{i} : goto {ep}"));
        }
        let _ = writeln!(
            s,
            "\tchain service-{tag} {{ ip saddr != 10.244.0.0/16 jump mark-for-masquerade; numgen random mod {} vmap {{ {} }}; }}",
            v.backends.len(),
            eps.join(", ")
        );
        elems.push(format!("{} . {p} . {} : goto service-{tag}", v.ip, v.port));
    }
    s.push_str("}\n");
    for chunk in elems.chunks(1000) {
        let _ = writeln!(
            s,
            "add element ip kube-proxy service-ips {{ {} }}",
            chunk.join(", ")
        );
    }
    s
}

/// afgate's YAML for the bench DUT: ports d0/d1, the sink and the backends as static
/// neighbours, the given services (masqueraded like kube-proxy: everything to a service
/// from outside the cluster CIDR), and `extra` appended verbatim.
pub fn afgate_yaml(workers: &[usize], svcs: &[Svc], extra: &str) -> String {
    let mut y = format!(
        "{}\
         ports:\n\
         \x20 - {{ name: d0, device: d0, role: uplink, addresses: [10.0.1.1/24] }}\n\
         \x20 - {{ name: d1, device: d1, role: uplink, addresses: [10.0.2.1/24] }}\n\
         neighbors:\n\
         \x20 - {{ ip: {}, mac: \"{}\", dev: d1 }}\n",
        super::workers_yaml(workers, Dut::AfgateRt),
        topo::SINK_IP,
        topo::SINK_MAC
    );
    for b in BACKENDS {
        let _ = writeln!(y, "  - {{ ip: {b}, mac: \"{}\", dev: d1 }}", topo::SINK_MAC);
    }
    if !svcs.is_empty() {
        y.push_str("masquerade:\n  - { dst: 10.96.0.0/15, to: egress }\nservices:\n");
        for s in svcs {
            let bs: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{{ addr: {b}, local: false }}"))
                .collect();
            let _ = writeln!(
                y,
                "  - {{ name: \"{}\", cluster_ip: {}, port: {}, protocol: {}, target_port: {}, backends: [{}] }}",
                s.name,
                s.ip,
                s.port,
                s.proto(),
                s.target_port,
                bs.join(", ")
            );
        }
    }
    y.push_str(extra);
    y
}

/// The control socket of the afgate started by [`start_afgate`] with `tag`.
pub fn api_socket(lab: &BenchLab, tag: &str) -> std::path::PathBuf {
    lab.lab.tmp().join(format!("afgate-{tag}.sock"))
}

/// `afgate ctl --api SOCK ARGS...`; returns its stdout.
pub fn afgate_ctl(env: &Env, sock: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(&env.afgate_bin)
        .arg("ctl")
        .arg("--api")
        .arg(sock)
        .args(args)
        .output()
        .context("running afgate ctl")?;
    if !out.status.success() {
        anyhow::bail!(
            "afgate ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts afgate in the DUT namespace with `yaml`, for at most `secs`.
pub fn start_afgate(
    env: &Env,
    lab: &BenchLab,
    tag: &str,
    yaml: &str,
    secs: f64,
) -> Result<Running> {
    start_afgate_with(env, lab, tag, yaml, secs, true)
}

/// [`start_afgate`]; `pin_d0`: move d0's receive NAPI into a kthread on the DUT core (the
/// single-queue bench lab; the multi-queue lab of `workers` keeps softirq).
pub fn start_afgate_with(
    env: &Env,
    lab: &BenchLab,
    tag: &str,
    yaml: &str,
    secs: f64,
    pin_d0: bool,
) -> Result<Running> {
    let path = lab.lab.tmp().join(format!("afgate-{tag}.yaml"));
    std::fs::write(&path, yaml)?;
    let api = api_socket(lab, tag);
    let api = api.to_string_lossy();
    let secs_s = format!("{:.1}", secs.max(1.0));
    let a = Afgate::start_bin(
        &env.afgate_bin,
        &lab.dut,
        &path,
        &["--duration", &secs_s, "--api", &api],
    )
    .with_context(|| format!("starting afgate ({tag})"))?;
    // As `super::start` does for every DUT with a program on d0 (one queue: one kthread).
    if env.threaded_napi && pin_d0 {
        lab.pin_napi(&lab.dut, "d0", env.dut_core, false)?;
    }
    Ok(Running {
        dut: Dut::AfgateAdaptive,
        afgate: Some(a),
        proc: None,
        lab_forward: false,
    })
}

/// Static neighbours for the backends in the kernel DUT (afgate has them in its YAML).
pub fn kernel_backends(lab: &BenchLab) -> Result<()> {
    for b in BACKENDS {
        lab.dut.ip(&[
            "neigh",
            "replace",
            &b.to_string(),
            "lladdr",
            &topo::SINK_MAC.to_string(),
            "dev",
            "d1",
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// Loads kube-proxy-style rules into the DUT's kernel; returns the seconds loading took.
pub fn load_iptables(lab: &BenchLab, rules: &str) -> Result<f64> {
    let path = lab.lab.tmp().join("kube-proxy.iptables");
    std::fs::write(&path, rules)?;
    let t = std::time::Instant::now();
    lab.dut
        .exec_ok(&["iptables-restore", &path.to_string_lossy()])
        .context("iptables-restore")?;
    Ok(t.elapsed().as_secs_f64())
}

pub fn load_nft(lab: &BenchLab, rules: &str) -> Result<f64> {
    let path = lab.lab.tmp().join("kube-proxy.nft");
    std::fs::write(&path, rules)?;
    let t = std::time::Instant::now();
    lab.dut
        .exec_ok(&["nft", "-f", &path.to_string_lossy()])
        .context("nft -f")?;
    Ok(t.elapsed().as_secs_f64())
}

/// Removes every NAT rule and tracked connection from the DUT's kernel.
pub fn kernel_clear(lab: &BenchLab) {
    let _ = lab.dut.exec(&[
        "sh",
        "-c",
        "iptables -t nat -F; iptables -t nat -X; nft delete table ip kube-proxy 2>/dev/null; conntrack -F 2>/dev/null; true",
    ]);
}

pub fn flush_conntrack(lab: &BenchLab) {
    let _ = lab.dut.exec(&["conntrack", "-F"]);
}

/// [`measure_with`] of the standard trial on a DUT that is already running.
pub fn variant(
    env: &Env,
    lab: &BenchLab,
    dut: Dut,
    name: &str,
    description: &str,
    traffic: &Traffic,
    progress: &dyn Fn(&str),
) -> VariantResult {
    measure_with(
        env,
        name,
        description,
        &mut |rate, secs| trial(env, lab, dut, traffic, rate, secs),
        progress,
    )
}

/// Traffic of `proto` to `dst:dport`.
pub fn to(proto: Proto, flows: u32, dst: Ipv4Addr, dport: u16) -> Traffic {
    Traffic {
        proto,
        flows,
        size: 64,
        gen_args: vec![
            ("dst-ip".into(), dst.to_string()),
            ("dport".into(), dport.to_string()),
        ],
    }
}

fn pname(p: Proto) -> &'static str {
    match p {
        Proto::Udp => "udp",
        Proto::TcpSyn => "tcp-syn",
        Proto::TcpAck => "tcp-ack",
    }
}

pub fn run(
    env: &Env,
    lab: &BenchLab,
    flows: u32,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: format!(
            "ClusterIP {VIP}:80 → 3 backends :{TARGET_PORT} (DNAT + conntrack + MASQUERADE), 64-byte UDP and TCP-ACK, {flows} flows, one forwarding core"
        ),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let protos = [Proto::Udp, Proto::TcpAck];
    let svcs = web();
    let budget = super::variant_budget(env) * 4.0;

    // afgate: one process, the service configured; plain = traffic to the sink's address.
    let y = afgate_yaml(&[env.dut_core], &svcs, "");
    let running = start_afgate(env, lab, "clusterip", &y, budget)?;
    for proto in protos {
        let plain = to(proto, flows, topo::SINK_IP, 9);
        let vip = to(proto, flows, VIP, 80);
        let n = pname(proto);
        r.variants.push(variant(
            env,
            lab,
            Dut::AfgateAdaptive,
            &format!("afgate-plain/{n}"),
            "afgate, same config, traffic to the sink's own address (no service)",
            &plain,
            &p,
        ));
        r.variants.push(variant(
            env,
            lab,
            Dut::AfgateAdaptive,
            &format!("afgate-clusterip/{n}"),
            "afgate, 1 worker (poll wakeup, rt_priority 10): service DNAT + conntrack + masquerade",
            &vip,
            &p,
        ));
    }
    let stats = running.stop(lab)?;
    if let Some(v) = r.variants.last_mut() {
        v.dut_stats = stats;
    }

    // The kernel: plain forwarding, then the same traffic through iptables, then nftables.
    kernel_backends(lab)?;
    kernel_clear(lab);
    let running = super::start(env, lab, Dut::Kernel, budget)?;
    let ipt = iptables_rules(&svcs);
    let nft = nft_rules(&svcs);
    for (kind, desc) in [
        (
            "kernel-plain",
            "kernel ip_forward, no NAT rules (RPS to the DUT core)",
        ),
        (
            "iptables",
            "kernel, kube-proxy iptables-mode nat rules (iptables-nft), conntrack, MASQUERADE",
        ),
        (
            "nftables",
            "kernel, kube-proxy nftables-mode rules (verdict map, numgen), conntrack, masquerade",
        ),
    ] {
        kernel_clear(lab);
        match kind {
            "iptables" => {
                load_iptables(lab, &ipt)?;
            }
            "nftables" => {
                load_nft(lab, &nft)?;
            }
            _ => {}
        }
        for proto in protos {
            let n = pname(proto);
            let t = if kind == "kernel-plain" {
                to(proto, flows, topo::SINK_IP, 9)
            } else {
                to(proto, flows, VIP, 80)
            };
            r.variants.push(variant(
                env,
                lab,
                Dut::Kernel,
                &format!("{kind}/{n}"),
                desc,
                &t,
                &p,
            ));
        }
    }
    kernel_clear(lab);
    running.stop(lab)?;

    for proto in protos {
        let n = pname(proto);
        for b in ["iptables", "nftables", "afgate-plain", "kernel-plain"] {
            r.ratio(
                &format!("afgate-clusterip/{n}"),
                &format!("{b}/{n}"),
                Some(format!("afgate-clusterip/{b} ({n})")),
            );
        }
    }
    r.notes.push(
        "TCP-ACK flows are \"established\" only in the sense that no SYN is sent: the kernel picks them up mid-stream (nf_conntrack_tcp_loose); see afgate's drop counters in raw.json for how it treats them.".into(),
    );
    Ok(r)
}
