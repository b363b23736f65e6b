#!/usr/bin/env bash
# The whole test suite: system packages, build, format and lint checks, unit tests (no root
# needed) and lab tests (network namespaces, veth, XDP and AF_XDP: run as root).
# Usage: sudo ./scripts/test.sh   (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: the lab tests need root (network namespaces, XDP, AF_XDP); run with sudo" >&2
    exit 1
fi

# Namespaces a killed earlier run may have left behind (only ours: the afg prefix).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^afg' || true); do
    ip netns delete "$ns" 2>/dev/null || true
done

echo "== build"
cargo build --workspace --all-targets --locked
echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# Lab tests start afgate instances and traffic in their own namespaces; two at a time keeps
# them from starving each other on a 2-core machine.
cargo test --workspace --locked -- --test-threads=2
