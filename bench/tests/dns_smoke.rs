//! The dns scenario end to end with tiny trials: queries through afgate and the kernel
//! (plain, iptables, nftables) reach the reflector, its answers come back through the DUT,
//! and every variant reports answers and round-trip samples. No threshold on any number.
//!
//! Needs root and the `afgate` binary (`cargo build -p afgate`, or `$AFGATE_BIN`).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn dns_smoke_gets_answers_through_every_variant() {
    let afgate = afgate_tests::afgate_bin();
    let out = std::env::temp_dir().join(format!("afgate-bench-dns-smoke-{}", std::process::id()));
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_afgate-bench"));
    let xskfwd = PathBuf::from(env!("CARGO_BIN_EXE_afgate-xskfwd"));
    let status = Command::new(&bench)
        .args([
            "run",
            "--smoke",
            "--scenario",
            "dns",
            "--flows",
            "64",
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
        "afgate-bench run --smoke --scenario dns failed\n{report}"
    );
    let raw: serde_json::Value = serde_json::from_str(&raw.expect("raw.json written")).unwrap();
    let variants = raw["scenarios"][0]["variants"]
        .as_array()
        .expect("variants");
    let names: Vec<&str> = variants.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "afgate-plain",
            "afgate-dns",
            "kernel-plain",
            "iptables",
            "nftables"
        ]
    );
    for v in variants {
        assert!(v["error"].is_null(), "{}: {}", v["name"], v["error"]);
        let answers = v["max"]["sink"]["received"].as_u64().unwrap_or(0);
        assert!(answers > 0, "{}: no answers\n{report}", v["name"]);
        assert!(
            v["latency"]["samples"].as_u64().unwrap_or(0) > 0,
            "{}: no round-trip samples",
            v["name"]
        );
    }
}
