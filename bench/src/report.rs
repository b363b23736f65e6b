//! The results folder: `report.md` (tables), `raw.json` (every trial), and hand-written SVG
//! plots (latency CDF per scenario, rate against a swept parameter).

use crate::scenarios::{self, ScenarioResult};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub date: String,
    pub host: String,
    pub kernel: String,
    pub cpus: usize,
    pub mode: String,
    pub pinning: String,
    pub command: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub info: RunInfo,
    pub scenarios: Vec<ScenarioResult>,
}

fn mpps(pps: f64) -> String {
    format!("{:.3}", pps / 1e6)
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let i = &r.info;
    let _ = writeln!(s, "# afgate benchmark report — {}\n", i.date);
    let _ = writeln!(
        s,
        "Host `{}`, kernel {}, {} CPUs, mode `{}`. Command: `{}`.\n\nPinning: {}\n",
        i.host, i.kernel, i.cpus, i.mode, i.command, i.pinning
    );
    for sc in &r.scenarios {
        let _ = writeln!(s, "## {}\n\n{}\n", sc.name, sc.description);
        if !sc.variants.is_empty() {
            let _ = writeln!(
                s,
                "| variant | max fwd Mpps | offered Mpps | loss at max | zero-loss Mpps | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for v in &sc.variants {
                if let Some(e) = &v.error {
                    let _ = writeln!(
                        s,
                        "| {} | FAILED: {} |||||||||",
                        v.name,
                        e.replace('|', "/").replace('\n', " ")
                    );
                    continue;
                }
                let l = &v.latency;
                // No samples (a counting-only scenario): a dash, not "0.0 µs".
                let us = |ns: u64| if l.samples == 0 { "–".into() } else { us(ns) };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} % | {} | {} | {} | {} | {} | {} |",
                    v.name,
                    mpps(v.max_rx_pps),
                    mpps(v.max.generator.offered_pps),
                    v.max.loss * 100.0,
                    mpps(v.zero_loss_pps),
                    us(l.p50),
                    us(l.p90),
                    us(l.p99),
                    us(l.p999),
                    us(l.max)
                );
            }
            let _ = writeln!(s);
            let _ = writeln!(s, "Variants:\n");
            for v in &sc.variants {
                let _ = writeln!(s, "- `{}`: {}", v.name, v.description);
            }
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "Latency: one-way generator → sink (CLOCK_MONOTONIC) unless the notes say otherwise, measured at half the zero-loss rate (< 0.01 % loss; a tenth of the max rate when no rate passed).\n"
            );
        }
        if !sc.ratios.is_empty() {
            let _ = writeln!(
                s,
                "| ratio | max forwarded rate | zero-loss rate |\n|---|---:|---:|"
            );
            for (k, v) in &sc.ratios {
                let ndr = sc
                    .ndr_ratios
                    .iter()
                    .find(|r| &r.0 == k)
                    .map_or("–".to_string(), |r| format!("{:.2}", r.1));
                let _ = writeln!(s, "| {k} | {v:.2} | {ndr} |");
            }
            let _ = writeln!(s);
        }
        if !sc.ladders.is_empty() {
            ladder_tables(&mut s, sc);
        }
        if !sc.sweep.is_empty() {
            let axis = sc.sweep_axis.as_deref().unwrap_or("x");
            let mut series: Vec<&str> = Vec::new();
            for p in &sc.sweep {
                if !series.contains(&p.1.as_str()) {
                    series.push(p.1.as_str());
                }
            }
            let mut xs: Vec<f64> = sc.sweep.iter().map(|p| p.0).collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            let _ = write!(s, "| {axis} |");
            for se in &series {
                let _ = write!(s, " {se} Mpps |");
            }
            let _ = write!(s, "\n|---:|");
            for _ in &series {
                let _ = write!(s, "---:|");
            }
            let _ = writeln!(s);
            for x in &xs {
                let _ = write!(s, "| {x} |");
                for se in &series {
                    let y = sc
                        .sweep
                        .iter()
                        .find(|p| p.0 == *x && p.1 == *se)
                        .map(|p| mpps(p.2))
                        .unwrap_or_default();
                    let _ = write!(s, " {y} |");
                }
                let _ = writeln!(s);
            }
            let _ = writeln!(s, "\n![{}]({}.svg)\n", sc.name, sc.name);
        }
        if sc.variants.iter().any(|v| v.latency.samples > 0) {
            let _ = writeln!(s, "![latency CDF]({}-latency.svg)\n", sc.name);
        }
        for n in &sc.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The forwarding-rate ladder of a scenario: MFR/PDR per variant, their ratios, and offered
/// → forwarded per load and phase.
fn ladder_tables(s: &mut String, sc: &ScenarioResult) {
    let pdr_pct = scenarios::PDR_LOSS * 100.0;
    let _ = writeln!(
        s,
        "**Forwarding-rate ladder** (RFC 2285 MFR: the highest median forwarded rate over the offered loads; PDR: the highest offered load with median loss ≤ {pdr_pct} %; ≥: no loss even at the top load, a bound set by the generator). Rates are what the generator achieved, not what was asked. DUT core: the forwarder's core's busy time (/proc/stat: user, system, irq, softirq) over each trial, as a share of it and per packet the sink received, at the MFR's load; one core's capacity = 1 / that time, what the DUT would forward with its core busy all the time at that cost (an extrapolation: on this machine the load core, not the DUT core, tops out first).\n"
    );
    let _ = writeln!(
        s,
        "| variant | MFR Mpps | offered at MFR Mpps | PDR ({pdr_pct} %) Mpps | generator G Mpps | trials | DUT core at MFR | DUT core ns/packet | one core's capacity Mpps |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for l in &sc.ladders {
        for v in &l.variants {
            if let Some(e) = v.error.as_ref().or(l.error.as_ref()) {
                let _ = writeln!(
                    s,
                    "| {} | FAILED: {} |||||||||",
                    v.name,
                    e.replace('|', "/").replace('\n', " ")
                );
                continue;
            }
            let pdr = if v.pdr_pps <= 0.0 {
                "–".to_string()
            } else if v.pdr_at_top {
                format!("≥ {}", mpps(v.pdr_pps))
            } else {
                mpps(v.pdr_pps)
            };
            let n = l.trials.iter().filter(|t| t.variant == v.name).count();
            let (busy, ns) = v
                .at_mfr()
                .map_or((0.0, 0.0), |st| (st.dut_busy, st.dut_ns_per_packet));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} % | {:.0} | {} |",
                v.name,
                mpps(v.mfr_pps),
                mpps(v.mfr_offered_pps),
                pdr,
                mpps(l.capacity_pps),
                n,
                busy * 100.0,
                ns,
                mpps(v.core_pps())
            );
        }
    }
    let _ = writeln!(s);
    if !sc.ladder_ratios.is_empty() {
        let _ = writeln!(
            s,
            "| ratio (ladder) | MFR | PDR | one core's capacity |\n|---|---:|---:|---:|"
        );
        let f = |r: Option<f64>, bound: bool| match r {
            Some(x) if bound => format!("{x:.2} (bound)"),
            Some(x) => format!("{x:.2}"),
            None => "–".into(),
        };
        for r in &sc.ladder_ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                r.name,
                f(r.mfr, false),
                f(r.pdr, r.pdr_bound),
                f(r.core, false)
            );
        }
        let _ = writeln!(s);
    }
    for l in &sc.ladders {
        if l.variants.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "Ladder, {} phase: G = {} Mpps, {} load(s) × {} repeat(s) × {} s, variants interleaved per load; cells: median offered → median forwarded Mpps (median loss; DUT core busy, DUT core time per forwarded packet); * = the generator offered < {:.0} % of the rate asked. {:.0} s of wall time.\n",
            l.phase,
            mpps(l.capacity_pps),
            l.loads.len(),
            l.repeats,
            l.secs,
            scenarios::LADDER_SHORT * 100.0,
            l.wall_secs
        );
        let _ = write!(s, "| load × G | asked Mpps |");
        for v in &l.variants {
            let _ = write!(s, " {} |", v.name);
        }
        let _ = write!(s, "\n|---:|---:|");
        for _ in &l.variants {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s);
        for (i, load) in l.loads.iter().enumerate() {
            let frac = if l.capacity_pps > 0.0 {
                format!("{:.2}", load / l.capacity_pps)
            } else {
                "–".into()
            };
            let _ = write!(s, "| {frac} | {} |", mpps(*load));
            for v in &l.variants {
                match v.steps.get(i) {
                    Some(st) => {
                        let short = if st.offered_pps < st.requested_pps * scenarios::LADDER_SHORT {
                            "*"
                        } else {
                            ""
                        };
                        let _ = write!(
                            s,
                            " {}{short} → {} ({:.2} %; {:.0} %, {:.0} ns) |",
                            mpps(st.offered_pps),
                            mpps(st.forwarded_pps),
                            st.loss * 100.0,
                            st.dut_busy * 100.0,
                            st.dut_ns_per_packet
                        );
                    }
                    None => {
                        let _ = write!(s, " – |");
                    }
                }
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "![{} ladder]({}-ladder.svg)\n", sc.name, sc.name);
}

/// Forwarded against offered rate per ladder variant (medians), with the no-loss diagonal.
fn ladder_svg(sc: &ScenarioResult) -> String {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = sc
        .ladders
        .iter()
        .flat_map(|l| l.variants.iter())
        .filter(|v| !v.steps.is_empty())
        .map(|v| {
            (
                v.name.clone(),
                v.steps
                    .iter()
                    .map(|st| (st.offered_pps / 1e6, st.forwarded_pps / 1e6))
                    .collect(),
            )
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0f64, f64::max);
    series.push(("no loss".into(), vec![(0.0, 0.0), (top, top)]));
    svg_lines(
        &format!("{}: forwarding-rate ladder (medians)", sc.name),
        "offered Mpps",
        "forwarded Mpps",
        &series,
        false,
    )
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// A line plot. `log_x`: logarithmic x axis (flows, services).
pub fn svg_lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 420.0, 70.0, 180.0, 40.0, 50.0);
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(tx(p.0)), b.max(tx(p.0)))
    });
    if pts.is_empty() || x0 >= x1 {
        x0 = 0.0;
        x1 = x1.max(1.0);
    }
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)).max(1e-9) * 1.1;
    let px = |x: f64| ml + (tx(x) - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| mt + (1.0 - y / y1) * (h - mt - mb);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        (w - mr + ml) / 2.0
    );
    let (bx, by) = (h - mb, w - mr);
    let _ = writeln!(
        s,
        r#"<path d="M{ml} {mt} V{bx} H{by}" stroke="black" fill="none"/>"#
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" x2="{by}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
            py(y),
            ml - 5.0,
            py(y) + 4.0,
            fmt_num(y)
        );
    }
    let ticks: Vec<f64> = if log_x {
        (x0.floor() as i32..=x1.ceil() as i32)
            .map(|e| 10f64.powi(e))
            .collect()
    } else {
        (0..=4)
            .map(|i| x0 + (x1 - x0) * f64::from(i) / 4.0)
            .collect()
    };
    for t in ticks {
        if tx(t) < x0 - 1e-9 || tx(t) > x1 + 1e-9 {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(t),
            h - mb + 16.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (w - mr + ml) / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{y_label}</text>"#,
        (h - mb + mt) / 2.0,
        (h - mb + mt) / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let d: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(j, p)| {
                format!(
                    "{}{:.1} {:.1}",
                    if j == 0 { "M" } else { "L" },
                    px(p.0),
                    py(p.1)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<path d="{}" stroke="{c}" stroke-width="2" fill="none"/>"#,
            d.join(" ")
        );
        for p in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                px(p.0),
                py(p.1)
            );
        }
        let ly = mt + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}">{name}</text>"#,
            w - mr + 10.0,
            ly - 4.0,
            w - mr + 28.0,
            ly
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Writes report.md, raw.json and the plots into `dir`.
pub fn write(dir: &Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("raw.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    for sc in &r.scenarios {
        let lat: Vec<(String, Vec<(f64, f64)>)> = sc
            .variants
            .iter()
            .filter(|v| v.latency.samples > 0)
            .map(|v| {
                (
                    v.name.clone(),
                    v.latency
                        .cdf
                        .iter()
                        .map(|&(q, ns)| (ns as f64 / 1e3, q))
                        .collect(),
                )
            })
            .collect();
        if !lat.is_empty() {
            // Quantile on y, µs on a log x axis: tails of very different lengths stay readable.
            std::fs::write(
                dir.join(format!("{}-latency.svg", sc.name)),
                svg_lines(
                    &format!("{}: latency CDF at 50 % of zero-loss rate", sc.name),
                    "one-way latency, µs (log)",
                    "quantile",
                    &lat,
                    true,
                ),
            )?;
        }
        if !sc.ladders.is_empty() {
            std::fs::write(dir.join(format!("{}-ladder.svg", sc.name)), ladder_svg(sc))?;
        }
        if !sc.sweep.is_empty() {
            let mut names: Vec<String> = Vec::new();
            for p in &sc.sweep {
                if !names.contains(&p.1) {
                    names.push(p.1.clone());
                }
            }
            let series: Vec<(String, Vec<(f64, f64)>)> = names
                .into_iter()
                .map(|n| {
                    let pts = sc
                        .sweep
                        .iter()
                        .filter(|p| p.1 == n)
                        .map(|p| (p.0, p.2 / 1e6))
                        .collect();
                    (n, pts)
                })
                .collect();
            let axis = sc.sweep_axis.as_deref().unwrap_or("x");
            std::fs::write(
                dir.join(format!("{}.svg", sc.name)),
                svg_lines(
                    &format!("{}: forwarded rate vs {axis}", sc.name),
                    &format!("{axis} (log)"),
                    "Mpps",
                    &series,
                    true,
                ),
            )?;
        }
    }
    Ok(())
}
