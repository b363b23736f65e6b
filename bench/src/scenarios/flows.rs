//! "flows": forwarded rate against the number of distinct five-tuples (1 → 1M), afgate
//! (busy) and the kernel. afgate's l3 path keeps no per-flow state, so its curve shows cache
//! effects only; the kernel's shows its route/neighbour caches and (none here) conntrack.

use super::{Dut, Env, ScenarioResult, Traffic, start, trial};
use crate::topo::BenchLab;
use anyhow::Result;

pub const NAME: &str = "flows";

pub fn run(
    env: &Env,
    lab: &BenchLab,
    quick: bool,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let counts: &[u32] = if quick {
        &[1, 1024, 1_000_000]
    } else {
        &[1, 64, 1024, 65_536, 1_000_000]
    };
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: "max forwarded rate vs number of flows, 64-byte UDP".into(),
        sweep_axis: Some("flows".into()),
        ..Default::default()
    };
    for dut in [Dut::Kernel, Dut::AfgateBusy] {
        let secs = env.timing.max_secs;
        let running = start(env, lab, dut, counts.len() as f64 * (secs + 15.0) + 30.0)?;
        for &n in counts {
            let t = trial(env, lab, dut, &Traffic::udp64(n), None, secs)?;
            progress(&format!(
                "[{NAME}] {}: {n} flows: {:.3} Mpps (loss {:.2} %)",
                dut.name(),
                t.rx_pps() / 1e6,
                t.loss * 100.0
            ));
            r.sweep.push((f64::from(n), dut.name().into(), t.rx_pps()));
        }
        running.stop(lab)?;
    }
    Ok(r)
}
