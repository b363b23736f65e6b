#!/usr/bin/env bash
# Deletes network namespaces left behind by afgate lab runs that died without running their
# Drop guards (SIGKILL, OOM). Lab namespaces are named afg<role><pid:5 base36>.<n>; by default
# only those whose creating process is gone (or a zombie) are deleted, so this is safe while
# other test runs are active. `--all` deletes every afg* lab namespace.
# Deleting a namespace destroys its veths; processes still inside are killed first.
set -euo pipefail

all=0
[[ "${1:-}" == "--all" ]] && all=1

alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    local state=${stat##*) }
    state=${state%% *}
    [[ "$state" != "Z" && "$state" != "X" ]]
}

for ns in $(ip netns list | awk '{print $1}'); do
    [[ "$ns" =~ ^afg([a-z0-9]*)([0-9a-z]{5})\.[0-9a-z]+$ ]] || continue
    if ((all == 0)); then
        pid=$((36#${BASH_REMATCH[2]}))
        if alive "$pid"; then
            continue
        fi
    fi
    for pid in $(ip netns pids "$ns"); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" && echo "deleted $ns"
done
