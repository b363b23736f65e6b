//! "flows": forwarded rate against the number of distinct five-tuples (1 → 1M), afgate
//! (busy) and the kernel. afgate's l3 path keeps no per-flow state, so its curve shows cache
//! effects only; the kernel's shows its route/neighbour caches and (none here) conntrack.

use super::{Dut, Env, ScenarioResult, Traffic, measure_with, start, trial, variant_budget};
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
        &[1, 1_000_000]
    } else {
        &[1, 1024, 65_536, 1_000_000]
    };
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: "max forwarded rate vs number of flows, 64-byte UDP".into(),
        sweep_axis: Some("flows".into()),
        ..Default::default()
    };
    for dut in [Dut::Kernel, Dut::AfgateRt] {
        let running = start(env, lab, dut, counts.len() as f64 * variant_budget(env))?;
        for &n in counts {
            let traffic = Traffic::udp64(n);
            let name = format!("{}/{n}", dut.name());
            let v = measure_with(
                env,
                &name,
                &format!("{}, {n} flows", dut.describe()),
                &mut |rate, secs| trial(env, lab, dut, &traffic, rate, secs),
                &|m: &str| progress(&format!("[{NAME}] {m}")),
            );
            if v.error.is_none() {
                r.sweep
                    .push((f64::from(n), dut.name().into(), v.max_rx_pps));
                r.sweep.push((
                    f64::from(n),
                    format!("{} zero-loss", dut.name()),
                    v.zero_loss_pps,
                ));
            }
            r.variants.push(v);
        }
        running.stop(lab)?;
    }
    for &n in counts {
        r.ratio(
            &format!("afgate-rt/{n}"),
            &format!("kernel/{n}"),
            Some(format!("afgate-rt/kernel ({n} flows)")),
        );
    }
    Ok(r)
}
