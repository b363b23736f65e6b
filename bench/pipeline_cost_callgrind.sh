#!/usr/bin/env bash
# Instructions per packet of the pipeline, per mode, from callgrind: runs pipeline_cost at
# two packet counts and divides the difference in instructions by the difference in
# packets, so set-up (tables, templates, the first SYN) cancels out.
#
#   bench/pipeline_cost_callgrind.sh [N1 N2]
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${1:-20000}
N2=${2:-120000}
cargo build --release -q -p afgate-bench --bin pipeline_cost
BIN=target/release/pipeline_cost
irs() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" --mode "$1" --packets "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for mode in forward established new; do
    a=$(irs "$mode" "$N1")
    b=$(irs "$mode" "$N2")
    echo "pipeline_cost $mode: $(( (b - a) / (N2 - N1) )) instructions/packet (callgrind)"
done
