//! Scenarios end to end with tiny trials (`afgate-bench run --smoke`): every variant must
//! move packets and produce numbers. No threshold on any number: that is what
//! `afgate-bench run` reports, not tests.
//!
//! Needs root and the `afgate` binary (`cargo build -p afgate`, or `$AFGATE_BIN`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// One bench lab at a time: each pins the generator and the DUT to the machine's cores and
/// the kernel variants share global sysctls, as the separate test binaries used to ensure.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `afgate-bench run --smoke --scenario NAME --flows FLOWS`, checks it succeeded, and
/// returns the scenario's variants from raw.json and the markdown report.
fn smoke(scenario: &str, flows: u32) -> (Vec<serde_json::Value>, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let afgate = afgate_tests::afgate_bin();
    let out = std::env::temp_dir().join(format!(
        "afgate-bench-{scenario}-smoke-{}",
        std::process::id()
    ));
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_afgate-bench"));
    let xskfwd = PathBuf::from(env!("CARGO_BIN_EXE_afgate-xskfwd"));
    let status = Command::new(&bench)
        .args(["run", "--smoke", "--scenario", scenario, "--flows"])
        .arg(flows.to_string())
        .arg("--out")
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
        "afgate-bench run --smoke --scenario {scenario} failed\n{report}"
    );
    let raw: serde_json::Value = serde_json::from_str(&raw.expect("raw.json written")).unwrap();
    let variants = raw["scenarios"][0]["variants"]
        .as_array()
        .expect("variants")
        .clone();
    (variants, report)
}

fn names(variants: &[serde_json::Value]) -> Vec<&str> {
    variants.iter().filter_map(|v| v["name"].as_str()).collect()
}

/// l3fwd: every variant (wire, kernel, XDP ceiling, minimal AF_XDP forwarder, afgate
/// adaptive, busy and real-time wakeup) forwards something and yields latency samples.
#[test]
fn l3fwd_smoke_produces_numbers_for_every_variant() {
    let (variants, report) = smoke("l3fwd", 256);
    assert_eq!(
        names(&variants),
        [
            "wire",
            "kernel",
            "xdp-ceiling",
            "xskfwd",
            "afgate-adaptive",
            "afgate-busy",
            "afgate-rt"
        ]
    );
    for v in &variants {
        let pps = v["max_rx_pps"].as_f64().unwrap_or(0.0);
        assert!(pps > 0.0, "{}: no packets forwarded\n{report}", v["name"]);
        assert!(v["error"].is_null(), "{}: {}", v["name"], v["error"]);
        assert!(
            v["latency"]["samples"].as_u64().unwrap_or(0) > 0,
            "{}: no latency samples",
            v["name"]
        );
    }
    assert!(report.contains("| afgate-rt |"), "{report}");
}

/// dns: queries through afgate and the kernel (plain, iptables, nftables) reach the
/// reflector, its answers come back through the DUT, and every variant reports answers and
/// round-trip samples.
#[test]
fn dns_smoke_gets_answers_through_every_variant() {
    let (variants, report) = smoke("dns", 64);
    assert_eq!(
        names(&variants),
        [
            "afgate-plain",
            "afgate-dns",
            "kernel-plain",
            "iptables",
            "nftables"
        ]
    );
    for v in &variants {
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
