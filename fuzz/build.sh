#!/usr/bin/env bash
# Builds the libFuzzer targets on stable Rust: the same coverage instrumentation cargo-fuzz
# asks rustc for (sancov-module pass, 8-bit counters, PC table, compare tracing), without
# a sanitizer (-Zsanitizer is nightly-only). --target keeps these flags off build scripts.
# Usage: fuzz/build.sh   -> fuzz/target/x86_64-unknown-linux-gnu/release/{pipeline,wire,config,api}
set -euo pipefail
cd "$(dirname "$0")"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
exec cargo build --release --target x86_64-unknown-linux-gnu --bins "$@"
