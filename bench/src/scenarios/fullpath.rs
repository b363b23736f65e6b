//! "fullpath": the seeds' full path in one hop — an underlay pod's UDP on VLAN 1155 (802.1Q
//! tagged frames into d0) to the ClusterIP 10.96.10.1:80, DNAT to a backend pod
//! 10.20.4.5–7:8080 on a remote node, masqueraded, routed into the VXLAN overlay (VNI 2) and
//! encapsulated to that node's VTEP (the sink's address, out of d1). The sink reads the
//! inner stamp.
//!
//! afgate: d0 is a trunk (`vlan: { trunk: [1155] }`), the masquerade rule is the seeds' one
//! (`src 10.186.155.0/27, in_port d0.1155, in_vlan 1155`). The kernel doing the same job:
//! this machine has no 802.1Q module, so the kernel variant receives the same traffic
//! **untagged** on d0 (with the VLAN's address 10.186.155.30/27 on d0 itself), then
//! kube-proxy's iptables (or nftables) rules and the kernel's own vxlan device. The kernel is
//! spared the tag pop; the report says so.

use super::clusterip::{
    Svc, afgate_yaml, iptables_rules, kernel_clear, load_iptables, load_nft, nft_rules,
    start_afgate, to,
};
use super::vxlan::{NODE_VXLAN_MAC, REMOTE_VXLAN_MAC, VNI, kernel_vxlan};
use super::{Dut, Env, ScenarioResult, Traffic, measure_with, trial};
use crate::packet::Proto;
use crate::topo::{self, BenchLab};
use anyhow::Result;
use std::net::Ipv4Addr;

pub const NAME: &str = "fullpath";

pub const VLAN: u16 = 1155;
const POD_SRC: Ipv4Addr = Ipv4Addr::new(10, 186, 155, 2);
const VLAN_ADDR: &str = "10.186.155.30/27";
/// The masquerade address: the kernel's vxlan.2 address, given to afgate explicitly.
const MASQ_TO: &str = "10.20.9.0";

fn svc() -> Svc {
    Svc {
        name: "default/web:u".into(),
        ip: super::clusterip::VIP,
        port: 80,
        udp: true,
        backends: vec![
            Ipv4Addr::new(10, 20, 4, 5),
            Ipv4Addr::new(10, 20, 4, 6),
            Ipv4Addr::new(10, 20, 4, 7),
        ],
        target_port: super::clusterip::TARGET_PORT,
    }
}

fn traffic(flows: u32, tagged: bool) -> Traffic {
    let mut t = to(Proto::Udp, flows, super::clusterip::VIP, 80);
    t.gen_args.push(("src-ip".into(), POD_SRC.to_string()));
    if tagged {
        t.gen_args.push(("vlan".into(), VLAN.to_string()));
    }
    t
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
            "underlay VLAN {VLAN} (802.1Q) → ClusterIP 10.96.10.1:80 → backend pods 10.20.4.5–7:8080 on a remote node over VXLAN VNI {VNI} (DNAT + conntrack + masquerade + encap), 64-byte UDP, {flows} flows, one forwarding core"
        ),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let svcs = [svc()];

    let extra = format!(
        "vxlan:\n  port: 4789\n  overlays:\n    - name: vxlan.2\n      vni: {VNI}\n      local: 10.0.2.1\n      mac: \"{NODE_VXLAN_MAC}\"\n      mtu: 1450\n      vteps:\n\
         \x20       - {{ via: 10.20.4.0, mac: \"{REMOTE_VXLAN_MAC}\", remote: {} }}\n\
         routes:\n  - {{ dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }}\n",
        topo::SINK_IP
    );
    let y = afgate_yaml(&[env.dut_core], &svcs, &extra)
        .replacen(
            "addresses: [10.0.1.1/24] }",
            &format!(
                "addresses: [10.0.1.1/24], vlan: {{ trunk: [{VLAN}], addresses: {{ {VLAN}: [{VLAN_ADDR}] }} }} }}"
            ),
            1,
        )
        .replacen(
            "  - { dst: 10.96.0.0/15, to: egress }",
            &format!(
                "  - {{ src: 10.186.155.0/27, in_port: d0.{VLAN}, in_vlan: {VLAN}, dst: 10.96.0.0/15, to: {MASQ_TO} }}"
            ),
            1,
        );
    let running = start_afgate(env, lab, "fullpath", &y, 2.0 * super::variant_budget(env))?;
    let tagged = traffic(flows, true);
    r.variants.push(measure_with(
        env,
        "afgate-fullpath",
        &format!("afgate, 1 worker (poll wakeup, rt_priority 10): VLAN {VLAN} pop, service DNAT + conntrack + masquerade, route into vxlan.2, VXLAN encap"),
        &mut |rate, secs| trial(env, lab, Dut::AfgateAdaptive, &tagged, rate, secs),
        &p,
    ));
    r.variants.last_mut().unwrap().dut_stats = running.stop(lab)?;

    kernel_clear(lab);
    kernel_vxlan(lab)?;
    lab.dut.ip(&["addr", "add", VLAN_ADDR, "dev", "d0"])?;
    let running = super::start(env, lab, Dut::Kernel, 3.0 * super::variant_budget(env))?;
    let untagged = traffic(flows, false);
    for (kind, desc) in [
        (
            "iptables-fullpath",
            "kernel, UNTAGGED frames on d0 (no 802.1Q module here), kube-proxy iptables rules, MASQUERADE, Linux vxlan device",
        ),
        (
            "nftables-fullpath",
            "kernel, UNTAGGED frames on d0 (no 802.1Q module here), kube-proxy nftables rules, masquerade, Linux vxlan device",
        ),
    ] {
        kernel_clear(lab);
        if kind.starts_with("iptables") {
            load_iptables(lab, &iptables_rules(&svcs))?;
        } else {
            load_nft(lab, &nft_rules(&svcs))?;
        }
        r.variants.push(measure_with(
            env,
            kind,
            desc,
            &mut |rate, secs| trial(env, lab, Dut::Kernel, &untagged, rate, secs),
            &p,
        ));
    }
    kernel_clear(lab);
    running.stop(lab)?;
    let _ = lab.dut.ip(&["addr", "del", VLAN_ADDR, "dev", "d0"]);
    let _ = lab.dut.ip(&["link", "del", "vxlan.2"]);

    r.ratio("afgate-fullpath", "iptables-fullpath", None);
    r.ratio("afgate-fullpath", "nftables-fullpath", None);
    r.notes.push(format!(
        "The kernel variants receive the traffic UNTAGGED: this kernel has no 802.1Q module, so it cannot terminate VLAN {VLAN}; they are spared the tag pop (afgate is not). Frames: 68 bytes tagged into afgate, 64 untagged into the kernel, 114 bytes of VXLAN out of d1 for both."
    ));
    r.notes.push(format!(
        "Masquerade source: {MASQ_TO} for both (the kernel's vxlan.2 address, where MASQUERADE takes it from; afgate is told it explicitly)."
    ));
    Ok(r)
}
