#!/usr/bin/env bash
# TraceQL benchmark in one command: ingest N spans with loadsim (default 10 million) into a fresh
# all-in-one Spindle, time three TraceQL searches and two TraceQL metrics queries, and the same
# questions as SQL in ClickHouse (chdb) and DuckDB. Extra arguments go to bench_traceql.py, e.g.
#   bash loadtest/bench-traceql.sh 10000000 --keep            # keep the data dir for reruns
#   bash loadtest/bench-traceql.sh 0 --data-dir /tmp/spindle-traceql-XXXX/data   # rerun, no ingest
#   bash loadtest/bench-traceql.sh 0 --self-test               # only check the SQL (no build needed)
# BENCH_BIN_DIR: run these spindle and loadsim binaries as they are (no build), as bench-ingest.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SPANS=${1:-10000000}
shift || true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
BIN="${BENCH_BIN_DIR:-$CARGO_TARGET_DIR/release}"
case " $* " in
  *" --self-test "*) ;;
  *) [ -n "${BENCH_BIN_DIR:-}" ] || cargo build --release -p spindle -p spindle-loadtest ;;
esac
VENV=.cache/bench-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check chdb==4.4.0 duckdb==2.0.0 pyarrow==26.0.1 requests==2.32.5
"$VENV/bin/python" loadtest/bench_traceql.py --spans "$SPANS" --bin-dir "$BIN" \
  --report "${REPORT:-bench-traceql-report.json}" "$@"
