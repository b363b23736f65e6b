//! "l3fwd": 64-byte UDP, many flows, one forwarding core. afgate (adaptive and busy polling)
//! against the wire rate, the kernel's ip_forward, the XDP devmap ceiling and the minimal
//! AF_XDP forwarder, all in the same run on the same veths.

use super::{Dut, Env, ScenarioResult, Traffic, measure};
use crate::topo::BenchLab;
use anyhow::Result;

pub const NAME: &str = "l3fwd";

pub fn run(
    env: &Env,
    lab: &BenchLab,
    flows: u32,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let traffic = Traffic::udp64(flows);
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: format!(
            "IPv4 forwarding d0→d1, 64-byte UDP, {flows} flows, one forwarding core"
        ),
        traffic: Some(traffic.clone()),
        ..Default::default()
    };
    let duts = [
        Dut::Wire,
        Dut::Kernel,
        Dut::XdpCeiling,
        Dut::XskFwd,
        Dut::AfgateAdaptive,
        Dut::AfgateBusy,
    ];
    for (i, dut) in duts.iter().enumerate() {
        let p = |m: &str| {
            progress(&format!(
                "[{NAME} {}/{}] {}: {m}",
                i + 1,
                duts.len(),
                dut.name()
            ))
        };
        p("starting");
        let v = measure(env, lab, *dut, &traffic, &p)?;
        if let Some(e) = &v.error {
            p(&format!("FAILED: {e}"));
        }
        r.variants.push(v);
    }
    let rate = |r: &ScenarioResult, n: &str| r.variant(n).map(|v| v.max_rx_pps).unwrap_or(0.0);
    for a in ["afgate-adaptive", "afgate-busy"] {
        for b in ["kernel", "xdp-ceiling", "xskfwd", "wire"] {
            let (x, y) = (rate(&r, a), rate(&r, b));
            if y > 0.0 {
                r.ratios.push((format!("{a}/{b}"), x / y));
            }
        }
    }
    Ok(r)
}
