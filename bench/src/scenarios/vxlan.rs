//! "vxlan": one core encapsulating (pod → remote VTEP) and decapsulating (VTEP → pod) VXLAN
//! (VNI 2, port 4789), afgate against the kernel's own vxlan device doing the same on the
//! same veths, and both against their plain forwarding.
//!
//! - encap: the generator sends plain 64-byte UDP to the remote pod 10.20.4.5; the DUT routes
//!   `10.20.4.0/25 via 10.20.4.0 dev vxlan.2 onlink` and sends VXLAN to the VTEP at the
//!   sink's address (10.0.2.2) out of d1. The sink reads the inner stamp.
//! - decap: the generator is a VTEP (10.0.1.2) sending VXLAN to the DUT's 10.0.1.1 with inner
//!   frames for 10.0.2.2 addressed to the vxlan device's MAC; the DUT decapsulates and routes
//!   them out of d1.
//!
//! Per DUT phase, after each variant's usual measurement (max, zero-loss, latency), a
//! forwarding-rate ladder ([`super::ladder_phase`]) runs plain, encap and decap interleaved
//! at the same offered loads: its MFR and PDR ratios are the comparison that counts, since
//! under overload the max-rate trial mostly measures how hard the generator pushed.

use super::clusterip::{afgate_yaml, start_afgate, to, variant};
use super::{Dut, Env, ScenarioResult};
use crate::packet::Proto;
use crate::topo::{self, BenchLab};
use anyhow::Result;

pub const NAME: &str = "vxlan";

pub const VNI: u32 = 2;
pub const NODE_VXLAN_MAC: &str = "02:af:78:00:00:02";
pub const REMOTE_VXLAN_MAC: &str = "02:af:78:00:00:12";
pub const GEN_VTEP_MAC: &str = "02:af:78:00:00:13";
pub const RPOD: &str = "10.20.4.5";

/// The kernel's `vxlan.2` in the DUT: VNI 2 out of d1 to the VTEP at the sink's address.
pub fn kernel_vxlan(lab: &BenchLab) -> Result<()> {
    let d = &lab.dut;
    d.ip(&[
        "link",
        "add",
        "vxlan.2",
        "address",
        NODE_VXLAN_MAC,
        "type",
        "vxlan",
        "id",
        "2",
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "d1",
    ])?;
    d.ip(&["link", "set", "vxlan.2", "mtu", "1450", "up"])?;
    d.ip(&["addr", "add", "10.20.9.0/32", "dev", "vxlan.2"])?;
    d.ip(&[
        "neigh",
        "replace",
        "10.20.4.0",
        "lladdr",
        REMOTE_VXLAN_MAC,
        "dev",
        "vxlan.2",
        "nud",
        "permanent",
    ])?;
    d.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        REMOTE_VXLAN_MAC,
        "dev",
        "vxlan.2",
        "dst",
        &topo::SINK_IP.to_string(),
    ])?;
    d.ip(&[
        "route",
        "replace",
        "10.20.4.0/25",
        "via",
        "10.20.4.0",
        "dev",
        "vxlan.2",
        "onlink",
    ])?;
    // Decapsulated packets arrive on vxlan.2, not on d0 where their outer header came in.
    d.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    d.sysctl("net.ipv4.conf.vxlan/2.rp_filter", "0").ok();
    Ok(())
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
            "VXLAN VNI {VNI} encap (pod → remote VTEP) and decap (VTEP → pod), 64-byte inner UDP, {flows} flows, one core"
        ),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    let plain = to(Proto::Udp, flows, topo::SINK_IP, 9);
    let encap = to(Proto::Udp, flows, RPOD.parse()?, 9);
    let mut decap = to(Proto::Udp, flows, topo::SINK_IP, 9);
    decap
        .gen_args
        .push(("dst-mac".into(), NODE_VXLAN_MAC.into()));
    decap.gen_args.push(("src-mac".into(), GEN_VTEP_MAC.into()));
    decap.gen_args.push((
        "vxlan".into(),
        format!(
            "{VNI},{},10.0.1.1,{},{}",
            topo::GEN_IP,
            topo::GEN_MAC,
            topo::DUT_IN_MAC
        ),
    ));
    let budget = 3.0 * super::variant_budget(env) + super::ladder_budget(env, 3);

    let extra = format!(
        "vxlan:\n  port: 4789\n  overlays:\n    - name: vxlan.2\n      vni: {VNI}\n      local: 10.0.2.1\n      mac: \"{NODE_VXLAN_MAC}\"\n      mtu: 1450\n      vteps:\n\
         \x20       - {{ via: 10.20.4.0, mac: \"{REMOTE_VXLAN_MAC}\", remote: {} }}\n\
         \x20       - {{ via: 10.20.5.0, mac: \"{GEN_VTEP_MAC}\", remote: {} }}\n\
         routes:\n  - {{ dst: 10.20.4.0/25, via: 10.20.4.0, dev: vxlan.2 }}\n",
        topo::SINK_IP,
        topo::GEN_IP
    );
    let y = afgate_yaml(&[env.dut_core], &[], &extra);
    let running = start_afgate(env, lab, "vxlan", &y, budget)?;
    for (n, t, d) in [
        (
            "afgate-plain",
            &plain,
            "afgate, same config, plain forwarding d0→d1",
        ),
        (
            "afgate-encap",
            &encap,
            "afgate: route into vxlan.2, encapsulate towards the VTEP 10.0.2.2",
        ),
        (
            "afgate-decap",
            &decap,
            "afgate: decapsulate VNI 2 from VTEP 10.0.1.2, route to 10.0.2.2",
        ),
    ] {
        r.variants
            .push(variant(env, lab, Dut::AfgateAdaptive, n, d, t, &p));
    }
    let ladder = super::ladder_phase(
        env,
        lab,
        Dut::AfgateAdaptive,
        "afgate",
        &[
            ("afgate-plain", &plain),
            ("afgate-encap", &encap),
            ("afgate-decap", &decap),
        ],
        &p,
    );
    r.push_ladder(ladder);
    let stats = running.stop(lab)?;
    if let Some(v) = r.variants.last_mut() {
        v.dut_stats = stats;
    }

    kernel_vxlan(lab)?;
    let running = super::start(env, lab, Dut::Kernel, budget)?;
    for (n, t, d) in [
        (
            "kernel-plain",
            &plain,
            "kernel ip_forward d0→d1 (RPS to the DUT core)",
        ),
        (
            "kernel-encap",
            &encap,
            "kernel: route via vxlan.2 (Linux vxlan device, VNI 2, nolearning, static fdb)",
        ),
        (
            "kernel-decap",
            &decap,
            "kernel: vxlan.2 receives VNI 2 on UDP 4789, routes the inner packet",
        ),
    ] {
        r.variants.push(variant(env, lab, Dut::Kernel, n, d, t, &p));
    }
    let ladder = super::ladder_phase(
        env,
        lab,
        Dut::Kernel,
        "kernel",
        &[
            ("kernel-plain", &plain),
            ("kernel-encap", &encap),
            ("kernel-decap", &decap),
        ],
        &p,
    );
    r.push_ladder(ladder);
    running.stop(lab)?;
    let _ = lab.dut.ip(&["link", "del", "vxlan.2"]);

    for dir in ["encap", "decap"] {
        for (a, b) in [
            (format!("afgate-{dir}"), format!("kernel-{dir}")),
            (format!("afgate-{dir}"), "afgate-plain".to_string()),
            (format!("kernel-{dir}"), "kernel-plain".to_string()),
        ] {
            r.ratio(&a, &b, None);
        }
    }
    for (a, b) in [
        ("afgate-encap", "afgate-plain"),
        ("afgate-decap", "afgate-plain"),
        ("afgate-encap", "kernel-encap"),
        ("afgate-decap", "kernel-decap"),
        ("kernel-encap", "kernel-plain"),
        ("kernel-decap", "kernel-plain"),
    ] {
        r.ladder_ratio(a, b);
    }
    r.notes.push(format!(
        "The ratios that compare encap and decap with plain forwarding and the kernel are the ladder's (MFR and PDR at ≤ {} % median loss, same run, variants interleaved per load); the max-rate and zero-loss ratios above are kept for continuity, but a max-rate trial mostly measures how hard the generator pushed (forwarded rate falls under overload) and zero-loss rates are at the noise floor on this machine.",
        super::PDR_LOSS * 100.0
    ));
    r.notes.push(
        "Encap frames are 114 bytes on d1 (64 + 50 of outer headers); decap frames are 114 bytes on d0.".into(),
    );
    Ok(r)
}
