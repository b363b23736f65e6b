#!/usr/bin/env bash
# Bounded soak (not part of the test suite): runs the demo traffic (TCP bulk to a service VIP,
# UDP request/response across afgate) for N minutes, samples afgate's RSS every 10 s, and
# fails if it grows after the warm-up. Usage: sudo ./scripts/soak.sh [--minutes N] (1-5,
# default 3) [--warmup S] (default 30) [--slack-kib K] (default 1024: allocator noise).
# Prints one line per sample and a summary; docs/reliability.md has the last run's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=3 warmup=30 slack=1024
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) minutes=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --slack-kib) slack=$2; shift 2 ;;
        *) echo "usage: $0 [--minutes N] [--warmup S] [--slack-kib K]" >&2; exit 2 ;;
    esac
done
if [ "$minutes" -lt 1 ] || [ "$minutes" -gt 5 ]; then
    echo "soak: --minutes must be 1-5 (the demo runs at most 300 s)" >&2; exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root (the lab)" >&2; exit 1; }
cargo build --release --locked -p afgate -p afgate-tests --bins
export AFGATE_BIN="$PWD/target/release/afgate" AFGATE_PEER_BIN="$PWD/target/release/afgate-peer"
secs=$((minutes * 60))
log=$(mktemp /tmp/afgate-soak.XXXXXX)
target/release/afgate-demo --secs "$secs" >"$log" 2>&1 &
demo=$!
# Stop only what this script started, whatever happens.
trap 'kill "$demo" 2>/dev/null || true' EXIT
# afgate is the demo's child (ip netns exec execs into it); the demo's `afgate ctl` calls are
# children too, short-lived: pick the one running the dataplane.
pid=""
for _ in $(seq 1 100); do
    pid=$(pgrep -P "$demo" -f '/afgate run ' | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.2
done
[ -n "$pid" ] || { echo "soak: afgate did not start"; cat "$log"; exit 1; }
for _ in $(seq 1 150); do
    grep -q "afgate: ready" "$log" && break
    sleep 0.2
done
start=$(date +%s)
base="" peak=0 samples=()
while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] || break
    t=$(( $(date +%s) - start ))
    echo "soak: t=${t}s rss=${rss} KiB"
    samples+=("$t:$rss")
    if [ "$t" -ge "$warmup" ]; then
        [ -n "$base" ] || base=$rss
        [ "$rss" -gt "$peak" ] && peak=$rss
    fi
    sleep 10
done
wait "$demo" || { echo "soak: the demo failed"; tail -20 "$log"; exit 1; }
trap - EXIT
echo "soak: demo summary:"; grep -E "^demo: (done|pod|summary)|final-stats" "$log" | tail -5 | cut -c1-400
[ -n "$base" ] || { echo "soak: no sample after the ${warmup}s warm-up"; exit 1; }
growth=$((peak - base))
echo "soak: ${#samples[@]} samples over ${secs}s; RSS after warm-up ${base} KiB, peak ${peak} KiB, growth ${growth} KiB (slack ${slack} KiB)"
if [ "$growth" -gt "$slack" ]; then
    echo "soak: FAIL: RSS grew after warm-up"; exit 1
fi
echo "soak: OK"
