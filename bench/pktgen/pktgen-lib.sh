#!/usr/bin/env bash
# Helpers around /proc/net/pktgen (Documentation/networking/pktgen.rst).
set -euo pipefail

pg() { # pg FILE CMD
    echo "$2" > "$1"
    if ! grep -q "Result: OK" "$1" 2>/dev/null; then
        grep "Result:" "$1" >&2 || true
    fi
}

pg_reset() {
    modprobe pktgen
    pg /proc/net/pktgen/pgctrl "reset"
}

# pg_thread CPU DEV SIZE COUNT RATE_PPS: one pktgen thread on CPU sending on DEV@CPU.
pg_thread() {
    local cpu=$1 dev=$2 size=$3 count=$4 rate=${5:-0}
    local t=/proc/net/pktgen/kpktgend_$cpu
    local d="$dev@$cpu"
    pg "$t" "rem_device_all"
    pg "$t" "add_device $d"
    local f=/proc/net/pktgen/$d
    pg "$f" "count $count"
    pg "$f" "pkt_size $((size - 4))"
    pg "$f" "clone_skb 0"
    pg "$f" "burst 32"
    pg "$f" "delay 0"
    [ "$rate" != 0 ] && pg "$f" "ratep $rate"
    echo "$f"
}
