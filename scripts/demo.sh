#!/usr/bin/env bash
# The demo: installs what it needs, builds, creates the lab (network namespaces and veth
# pairs), starts afgate on it, pushes real traffic through it for a bounded time while
# printing live per-port rates, then stops afgate and removes the lab.
# Usage: sudo ./scripts/demo.sh [--secs N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --locked -p afgate -p afgate-tests --bins
export AFGATE_BIN="$PWD/target/release/afgate" AFGATE_PEER_BIN="$PWD/target/release/afgate-peer"
exec target/release/afgate-demo "$@"
