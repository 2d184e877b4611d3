#!/usr/bin/env bash
# Spindle's benchmark suite in one command: ingest N spans with loadsim (default 10 million),
# measure storage and queries, and the same data and questions in ClickHouse (chdb) and DuckDB.
#   bash loadtest/bench-suite.sh [spans]
set -euo pipefail
cd "$(dirname "$0")/.."
SPANS=${1:-10000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
cargo build --release -p spindle -p spindle-loadtest
VENV=.cache/bench-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check chdb==4.4.0 duckdb==2.0.0 pyarrow==26.0.1 requests==2.32.5
"$VENV/bin/python" loadtest/bench_suite.py --spans "$SPANS" --bin-dir "$CARGO_TARGET_DIR/release" --report "${REPORT:-bench-report.json}"
