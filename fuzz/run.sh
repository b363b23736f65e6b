#!/usr/bin/env bash
# A long, coverage-guided run of one target: fuzz/run.sh TARGET SECONDS [libFuzzer args...]
# New inputs go to fuzz/corpus-run/TARGET (not kept); the seeds in fuzz/corpus/TARGET are
# read only. A crash leaves its input in fuzz/artifacts/TARGET/ and fails the run; replay it
# with: fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"
target=$1 secs=$2
shift 2
bin=target/x86_64-unknown-linux-gnu/release/$target
[ -x "$bin" ] || ./build.sh
mkdir -p "corpus-run/$target" "artifacts/$target"
exec "$bin" "corpus-run/$target" "corpus/$target" -max_total_time="$secs" \
    -artifact_prefix="artifacts/$target/" -max_len=4096 -print_final_stats=1 "$@"
