#!/usr/bin/env bash
# 64-byte UDP to ClusterIP 10.96.10.1:80 from FLOWS distinct five-tuples (source port, then
# source address, varies), one pktgen thread per CPU in CPUS. Bounded: COUNT packets/thread.
# Env: DEV, DST_MAC (afgate port), SRC_IP_MIN/MAX, FLOWS, COUNT, CPUS, RATE (pps/thread, 0 = max).
set -euo pipefail
. "$(dirname "$0")/pktgen-lib.sh"
: "${DEV:?set DEV}" "${DST_MAC:?set DST_MAC}"
COUNT=${COUNT:-10000000}
FLOWS=${FLOWS:-1024}
CPUS=${CPUS:-0}
RATE=${RATE:-0}
SRC_IP_MIN=${SRC_IP_MIN:-10.186.200.10}
SRC_IP_MAX=${SRC_IP_MAX:-10.186.200.10}
PORTS=$(( FLOWS < 60000 ? FLOWS : 60000 ))

pg_reset
for cpu in $CPUS; do
    f=$(pg_thread "$cpu" "$DEV" 64 "$COUNT" "$RATE")
    pg "$f" "dst_mac $DST_MAC"
    pg "$f" "dst 10.96.10.1"
    pg "$f" "udp_dst_min 80"
    pg "$f" "udp_dst_max 80"
    pg "$f" "src_min $SRC_IP_MIN"
    pg "$f" "src_max $SRC_IP_MAX"
    pg "$f" "udp_src_min 1024"
    pg "$f" "udp_src_max $((1024 + PORTS - 1))"
    pg "$f" "flag UDPSRC_RND"
    pg "$f" "flag IPSRC_RND"
    pg "$f" "flows $FLOWS"
    pg "$f" "flowlen 8"
done
echo "pktgen: start ($COUNT packets per thread)"
pg /proc/net/pktgen/pgctrl "start"
for cpu in $CPUS; do grep -A2 "Result" "/proc/net/pktgen/$DEV@$cpu"; done
