#!/usr/bin/env bash
# Ingest benchmark: starts a release all-in-one spindle on loopback with a fresh data dir, drives
# it with loadsim at full speed, then stops it with SIGTERM (which flushes everything) and reports
# spans/s, export latency, peak memory and bytes per span on disk.
#
#   bash loadtest/bench-ingest.sh [duration-seconds] [concurrency] [batch]
#
# SPINDLE_EXTRA_ARGS adds flags to spindle (e.g. "--generator false" to measure without the
# metrics generator); the metrics generator's counters are reported when it runs.
# GENERATOR_PROCESS=1 runs the metrics generator as its own `spindle generator` process (the
# all-in-one process sends it spans over gRPC) and reports that process' peak memory;
# GENERATOR_ARGS adds flags to it (e.g. "--config gen.yaml" with generator.max_active_series).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
CONCURRENCY=${2:-8}
BATCH=${3:-1000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
# BENCH_BIN_DIR: run these spindle and loadsim binaries as they are (no build), e.g. a copy
# taken before editing the sources during a long series of runs.
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN="$BENCH_BIN_DIR"
else
  cargo build --release -p spindle -p spindle-loadtest >/dev/null
  BIN="$CARGO_TARGET_DIR/release"
fi
DIR=$(mktemp -d)
PID=; GEN_PID=
trap 'kill -9 $PID $GEN_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(port); GRPC=$(port); OTLP_HTTP=$(port)
EXTRA=(${SPINDLE_EXTRA_ARGS:-})
if [ "${GENERATOR_PROCESS:-0}" = 1 ]; then
  GEN_HTTP=$(port); GEN_GRPC=$(port)
  SPINDLE_LOG=warn "$BIN/spindle" generator --data-dir "$DIR/generator" --storage-url "file://$DIR/data/blocks" \
    --http-addr 127.0.0.1:$GEN_HTTP --grpc-addr 127.0.0.1:$GEN_GRPC ${GENERATOR_ARGS:-} 2>"$DIR/generator.log" &
  GEN_PID=$!
  EXTRA+=(--generator false --generators 127.0.0.1:$GEN_GRPC)
  until curl -sf "127.0.0.1:$GEN_HTTP/ready" >/dev/null; do sleep 0.2; done
fi
SPINDLE_LOG=warn "$BIN/spindle" --data-dir "$DIR/data" --http-addr 127.0.0.1:$HTTP \
  --otlp-grpc-addr 127.0.0.1:$GRPC --otlp-http-addr 127.0.0.1:$OTLP_HTTP "${EXTRA[@]}" 2>"$DIR/spindle.log" &
PID=$!
until curl -sf "127.0.0.1:$HTTP/ready" >/dev/null; do sleep 0.2; done
"$BIN/loadsim" --endpoint 127.0.0.1:$GRPC --rate 0 --duration "$DURATION" --concurrency "$CONCURRENCY" \
  --batch "$BATCH" --report "$DIR/loadsim.json" >/dev/null
PEAK_RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
sleep 2 # let the generator drain its queue before reading its counters
curl -sf "127.0.0.1:${GEN_HTTP:-$HTTP}/metrics" | grep -E '^spindle_generator_(spans_total|dropped_spans_total|active_series|series_refused_total|pending_edges|edges_total)' >"$DIR/generator.txt" || true
curl -sf "127.0.0.1:$HTTP/metrics" | grep -E '^spindle_generator_dropped_spans_total' | sed 's/^/ingester_/' >>"$DIR/generator.txt" || true
GEN_RSS_KB=0
if [ -n "$GEN_PID" ]; then
  GEN_RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$GEN_PID/status)
  kill -TERM $GEN_PID
fi
kill -TERM $PID
wait $PID
SPANS=$(python3 -c "import json; print(json.load(open('$DIR/loadsim.json'))['spans_acknowledged'])")
BYTES=$(find "$DIR/data/blocks" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
BLOCKS=$(find "$DIR/data/blocks" -name '*.parquet' | wc -l)
python3 - "$DIR/loadsim.json" "$SPANS" "$BYTES" "$BLOCKS" "$PEAK_RSS_KB" "$DIR/generator.txt" "$GEN_RSS_KB" <<'PY'
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
    "generator_process_peak_rss_mib": round(int(sys.argv[7]) / 1024) if int(sys.argv[7]) else None,
}, indent=2))
PY
