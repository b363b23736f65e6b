#!/usr/bin/env bash
# The benchmark suite in one command: system packages, release build, then
#   afgate-bench run [--quick] [--scenario NAME] [--out DIR]
# on a fresh lab (network namespaces; needs root). Results: DIR/report.md, raw.json, *.svg
# (default DIR: results/<UTC date-time>). Extra arguments go to `afgate-bench run`.
# Scenarios: l3fwd flows clusterip newconn services vxlan workers dns fullpath conntrack.
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
start=$(date +%s)
status=0
./target/release/afgate-bench run "$@" || status=$?
echo "bench.sh: afgate-bench run $* took $(( $(date +%s) - start )) s (exit $status)" >&2
exit "$status"
