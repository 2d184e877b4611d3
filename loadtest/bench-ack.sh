#!/usr/bin/env bash
# Acknowledgement benchmark (issue 6): latency of one 500-span OTLP/gRPC export at light load,
# and throughput from 4 and 16 callers, for all-in-one Spindle and a 3-node cluster with
# replication factor 3 (fsync on). Prints JSON.
#
#   bash loadtest/bench-ack.sh [seconds-per-run [extra storage-node options...]]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
cargo build --release -p spindle -p spindle-loadtest >/dev/null
python3 loadtest/bench_ack.py "$CARGO_TARGET_DIR/release" "${1:-20}" "${@:2}"
