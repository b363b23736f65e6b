//! "services": afgate's new-connection rate against the number of configured services,
//! 10 → 100k (the `newconn` measurement at more sizes, afgate only): its service lookup is a
//! hash of VIP:port:proto, so the curve should be flat. The kernel's iptables points are in
//! `newconn` (loading kube-proxy rules for 100k services is not attempted).

use super::newconn::afgate_point;
use super::{Env, ScenarioResult};
use crate::topo::BenchLab;
use anyhow::Result;

pub const NAME: &str = "services";

pub fn run(
    env: &Env,
    lab: &BenchLab,
    quick: bool,
    progress: &dyn Fn(&str),
) -> Result<ScenarioResult> {
    let counts: &[usize] = if quick {
        &[10, 100_000]
    } else {
        &[10, 1_000, 10_000, 100_000]
    };
    let mut r = ScenarioResult {
        name: NAME.into(),
        description: "afgate new connections per second (fresh-tuple SYNs to the last service) vs configured ClusterIP services".into(),
        sweep_axis: Some("services".into()),
        ..Default::default()
    };
    let p = |m: &str| progress(&format!("[{NAME}] {m}"));
    for &n in counts {
        match afgate_point(env, lab, n, &p) {
            Ok((v, secs)) => {
                r.notes
                    .push(format!("afgate with {n} services: started in {secs:.1} s"));
                if v.error.is_none() {
                    r.sweep.push((n as f64, "afgate".into(), v.max_rx_pps));
                    r.sweep
                        .push((n as f64, "afgate zero-loss".into(), v.zero_loss_pps));
                }
                r.variants.push(v);
            }
            Err(e) => {
                // A size afgate refuses (its service table has a maximum) ends the sweep.
                p(&format!("{n} services: {e:#}"));
                r.notes
                    .push(format!("afgate with {n} services did not start: {e:#}"));
                break;
            }
        }
    }
    Ok(r)
}
