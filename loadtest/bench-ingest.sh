#!/usr/bin/env bash
# Ingest benchmark: starts a release all-in-one spindle on loopback with a fresh data dir, drives
# it with loadsim at full speed, then stops it with SIGTERM (which flushes everything) and reports
# spans/s, export latency, peak memory and bytes per span on disk.
#
#   bash loadtest/bench-ingest.sh [duration-seconds] [concurrency] [batch]
#
# SPINDLE_EXTRA_ARGS adds flags to spindle (e.g. "--generator false" to measure without the
# metrics generator); the metrics generator's counters are reported when it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
CONCURRENCY=${2:-8}
BATCH=${3:-1000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
cargo build --release -p spindle -p spindle-loadtest >/dev/null
BIN="$CARGO_TARGET_DIR/release"
DIR=$(mktemp -d)
trap 'kill -9 $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(port); GRPC=$(port); OTLP_HTTP=$(port)
SPINDLE_LOG=warn "$BIN/spindle" --data-dir "$DIR/data" --http-addr 127.0.0.1:$HTTP \
  --otlp-grpc-addr 127.0.0.1:$GRPC --otlp-http-addr 127.0.0.1:$OTLP_HTTP ${SPINDLE_EXTRA_ARGS:-} 2>"$DIR/spindle.log" &
PID=$!
until curl -sf "127.0.0.1:$HTTP/ready" >/dev/null; do sleep 0.2; done
"$BIN/loadsim" --endpoint 127.0.0.1:$GRPC --rate 0 --duration "$DURATION" --concurrency "$CONCURRENCY" \
  --batch "$BATCH" --report "$DIR/loadsim.json" >/dev/null
PEAK_RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
sleep 2 # let the generator drain its queue before reading its counters
curl -sf "127.0.0.1:$HTTP/metrics" | grep -E '^spindle_generator_(spans_total|dropped_spans_total|active_series|pending_edges|edges_total)' >"$DIR/generator.txt" || true
kill -TERM $PID
wait $PID
SPANS=$(python3 -c "import json; print(json.load(open('$DIR/loadsim.json'))['spans_acknowledged'])")
BYTES=$(find "$DIR/data/blocks" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
BLOCKS=$(find "$DIR/data/blocks" -name '*.parquet' | wc -l)
python3 - "$DIR/loadsim.json" "$SPANS" "$BYTES" "$BLOCKS" "$PEAK_RSS_KB" "$DIR/generator.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
generator = {}
for line in open(sys.argv[6]):
    name, value = line.rsplit(" ", 1)
    generator[name] = float(value)
spans, size, blocks, rss = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(json.dumps({
    "spans_acknowledged": spans,
    "spans_per_second": round(r["spans_per_second"]),
    "otlp_megabytes_per_second": round(r["megabytes_per_second"], 1),
    "otlp_bytes_per_span": round(r["bytes_per_span_otlp"], 1),
    "export_latency_ms": {k: round(v, 1) for k, v in r["export_latency_ms"].items()},
    "requests_retried": r["requests_retried"],
    "parquet_blocks": blocks,
    "parquet_bytes": size,
    "bytes_per_span_on_disk": round(size / spans, 1) if spans else None,
    "spindle_peak_rss_mib": round(rss / 1024),
    "generator": generator or "off",
}, indent=2))
PY
