#!/usr/bin/env bash
# The benchmark suite in one command: system packages, release build, then
#   afgate-bench run [--quick] [--scenario NAME] [--out DIR]
# on a fresh lab (network namespaces; needs root). Results: DIR/report.md, raw.json, *.svg
# (default DIR: results/<UTC date-time>). Extra arguments go to `afgate-bench run`.
# Pinning: AFGATE_BENCH_LOAD_CORE (generator + sink, default 1) and AFGATE_BENCH_DUT_CORE
# (forwarder under test, default 0).
#   sudo ./scripts/bench.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "bench.sh: the benchmark lab needs root (network namespaces, XDP, AF_XDP)" >&2
    exit 1
fi

cargo build --release --locked -p afgate -p afgate-bench
exec ./target/release/afgate-bench run "$@"
