#!/usr/bin/env bash
# Block lifecycle benchmark: bytes/span before and after compaction, and trace-by-id latency
# (cold and warm) over the compacted blocks, on the local filesystem or a moto S3 server.
#   bash loadtest/bench-lifecycle.sh [fs|s3] [spans]
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-fs}
SPANS=${2:-10000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
cargo build --release -p spindle -p spindle-loadtest
VENV=.cache/venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
"$VENV/bin/python" loadtest/bench_lifecycle.py --store "$STORE" --spans "$SPANS" \
  --bin-dir "$CARGO_TARGET_DIR/release" --report "${REPORT:-bench-lifecycle-$STORE.json}"
