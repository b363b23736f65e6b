//! The l3fwd scenario end to end with tiny trials: every variant (wire, kernel, XDP ceiling,
//! minimal AF_XDP forwarder, afgate adaptive and busy) must forward something and produce
//! numbers. No threshold on any number: that is what `afgate-bench run` reports, not tests.
//!
//! Needs root and the `afgate` binary (`cargo build -p afgate`, or `$AFGATE_BIN`).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn l3fwd_smoke_produces_numbers_for_every_variant() {
    let afgate = afgate_tests::afgate_bin();
    let out = std::env::temp_dir().join(format!("afgate-bench-smoke-{}", std::process::id()));
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_afgate-bench"));
    let xskfwd = PathBuf::from(env!("CARGO_BIN_EXE_afgate-xskfwd"));
    let status = Command::new(&bench)
        .args([
            "run",
            "--smoke",
            "--scenario",
            "l3fwd",
            "--flows",
            "256",
            "--out",
        ])
        .arg(&out)
        .env("AFGATE_BIN", &afgate)
        .env("AFGATE_BENCH_BIN", &bench)
        .env("AFGATE_XSKFWD_BIN", &xskfwd)
        .status()
        .expect("run afgate-bench");
    let raw = std::fs::read_to_string(out.join("raw.json"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        status.success(),
        "afgate-bench run --smoke failed\n{report}"
    );
    let raw: serde_json::Value = serde_json::from_str(&raw.expect("raw.json written")).unwrap();
    let variants = raw["scenarios"][0]["variants"]
        .as_array()
        .expect("variants");
    let names: Vec<&str> = variants.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "wire",
            "kernel",
            "xdp-ceiling",
            "xskfwd",
            "afgate-adaptive",
            "afgate-busy"
        ]
    );
    for v in variants {
        let pps = v["max_rx_pps"].as_f64().unwrap_or(0.0);
        assert!(pps > 0.0, "{}: no packets forwarded\n{report}", v["name"]);
        assert!(v["error"].is_null(), "{}: {}", v["name"], v["error"]);
        assert!(
            v["latency"]["samples"].as_u64().unwrap_or(0) > 0,
            "{}: no latency samples",
            v["name"]
        );
    }
    assert!(report.contains("| afgate-busy |"), "{report}");
}
