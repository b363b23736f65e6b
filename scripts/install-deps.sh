#!/usr/bin/env bash
# Installs what afgate's build, lab tests, benches and demo need on a fresh Debian 12, as root.
# Idempotent and non-interactive: safe to run at the start of every CI run.
#   - clang/llvm/libelf/zlib/m4/pkg-config/make: libbpf-sys builds libbpf and our XDP program.
#   - iproute2/tcpdump/ethtool/iputils-ping: the lab (netns, veth, captures, offload, ping).
#   - iptables/nftables/conntrack: the kernel reference behaviour the tests compare against.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root (apt-get, bpffs mount, netns)" >&2
    exit 1
fi

PACKAGES=(
    clang llvm libelf-dev zlib1g-dev libpcap-dev m4 pkg-config make
    iproute2 tcpdump ethtool iputils-ping
    iptables nftables conntrack
)

# Only touch the package index when something is missing: `apt-get update` is the slow,
# network-bound step, and a machine that already has everything should not need the mirror.
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    echo "install-deps.sh: installing ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-deps.sh: all packages present"
fi

# libbpf pins maps under /sys/fs/bpf; some containers boot without bpffs mounted.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    mkdir -p /sys/fs/bpf
    if mount -t bpf bpf /sys/fs/bpf; then
        echo "install-deps.sh: mounted bpffs at /sys/fs/bpf"
    else
        echo "install-deps.sh: warning: could not mount bpffs at /sys/fs/bpf" >&2
    fi
fi

# UMEM and BPF maps are locked memory. Kernels >= 5.11 charge BPF maps to the memory cgroup, but
# an AF_XDP UMEM is still charged against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
# Root normally has it (bit 14 of CapEff); only say something when it is missing and the limit
# is finite, because a ulimit raised here would not reach the shell that starts afgate.
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (( (16#${cap_eff} >> 14) & 1 )); then
    :
elif [[ "$(ulimit -l)" != "unlimited" ]]; then
    echo "install-deps.sh: note: no CAP_IPC_LOCK and memlock is $(ulimit -l) KiB;" \
        "run 'ulimit -l unlimited' (or raise it in limits.conf) before starting afgate" >&2
fi

echo "install-deps.sh: done"
