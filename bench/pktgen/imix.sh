#!/usr/bin/env bash
# Simple IMIX to ClusterIP 10.96.10.1:80: three threads (CPUs 0,1,2 by default) sending 64-,
# 594- and 1518-byte frames with packet counts in the ratio 7:4:1. Bounded: COUNT is the
# 64-byte thread's packet count. Env: DEV, DST_MAC, COUNT, CPUS ("a b c").
set -euo pipefail
. "$(dirname "$0")/pktgen-lib.sh"
: "${DEV:?set DEV}" "${DST_MAC:?set DST_MAC}"
COUNT=${COUNT:-7000000}
read -r -a C <<< "${CPUS:-0 1 2}"
pg_reset
i=0
for spec in "64 7" "594 4" "1518 1"; do
    set -- $spec
    f=$(pg_thread "${C[$i]}" "$DEV" "$1" $((COUNT * $2 / 7)) 0)
    pg "$f" "dst_mac $DST_MAC"
    pg "$f" "dst 10.96.10.1"
    pg "$f" "udp_dst_min 80"
    pg "$f" "udp_dst_max 80"
    pg "$f" "src_min 10.186.200.10"
    pg "$f" "src_max 10.186.200.10"
    pg "$f" "udp_src_min 1024"
    pg "$f" "udp_src_max 2047"
    pg "$f" "flag UDPSRC_RND"
    i=$((i + 1))
done
pg /proc/net/pktgen/pgctrl "start"
