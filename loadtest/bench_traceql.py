#!/usr/bin/env python3
"""TraceQL benchmark: five TraceQL questions (three searches, two metrics queries) over >= 10 million
loadsim spans in Spindle, beside the equivalent SQL in DuckDB (reading Spindle's own Parquet blocks)
and in ClickHouse (chdb, a SigNoz-like MergeTree span table loaded from the same blocks).

  bash loadtest/bench-traceql.sh [spans] [options]          (builds, installs the venv, runs this)
  python loadtest/bench_traceql.py --bin-dir DIR [--spans N] [--keep]   ingest N spans into a fresh
                                                             all-in-one Spindle, then query
  python loadtest/bench_traceql.py --bin-dir DIR --data-dir DIR   reuse a kept data dir (no ingest)
  python loadtest/bench_traceql.py --self-test               check the SQL of both engines against
                                                             a brute-force answer (no Spindle needed)

Writes a JSON report (--report) and prints a Markdown table for docs/benchmarks.md. Spindle's log
goes to spindle.log beside the data dir (see bench_suite.Spindle)."""

import argparse
import csv
import glob
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import requests

from bench_suite import Spindle, summary, timed

SECOND = 10**9
LIMIT = 20
# Most levels the recursive CTEs descend (loadsim's traces are 5 deep; a malformed trace with a
# parent cycle must not recurse forever).
MAX_DEPTH = 64
# Attribute keys of query c: `http.status_code` as asked, and `http.response.status_code`, the one
# loadsim actually sets (500 on the root span of an error trace), so that c also finds traces.
STATUS_KEYS = {"http.status_code": "span_http_status_code", "http.response.status_code": "span_http_response_status_code"}

# Figure keys, their label in the table and their target for Spindle's p50 (ms).
FIGURES = [
    ("search_service_error", 'a. search `{ resource.service.name = "svc-N" && status = error }`', 1000),
    ("search_user_id", 'b. attribute search `{ span.user.id = "<id>" }`', 300),
    ("structural_http_status_code", "c. `{ span.http.status_code >= 500 } >> { kind = client }`", 1000),
    ("structural_http_response_status_code", "c'. `{ span.http.response.status_code >= 500 } >> { kind = client }`", 1000),
    ("rate_by_service_1h", "d. `{ } | rate() by (resource.service.name)`, 1 h, step 60 s", 1000),
    ("rate_by_service_24h", "d. `{ } | rate() by (resource.service.name)`, 24 h, step 300 s", 1000),
    ("quantile_duration_p99", "e. `{ } | quantile_over_time(duration, .99)`, data range, step 60 s", 1000),
]


def structural_key(key):
    return "structural_" + key.replace(".", "_")


# --- the time grid of a metrics query, as Tempo and Spindle draw it
# (libs/query/src/traceql/metrics.rs, Grid): intervals (first + i*step, first + (i+1)*step], the
# start aligned down to the step less one step, the end aligned up; a sample is stamped with the
# end of its interval in ms. The SQL below uses the same grid, so its answer is Spindle's.

def grid(start_ns, end_ns, step_ns):
    first = start_ns - start_ns % step_ns - step_ns
    last = -(-end_ns // step_ns) * step_ns
    return first, last


# --- DuckDB, over a view `spans` of Spindle's Parquet blocks (columns of libs/schema)

DUCK_SUMMARY = """
SELECT lower(hex(s.trace_id)) AS trace_id,
       first(s.service_name ORDER BY s.start_time, s.span_id) FILTER (WHERE s.parent_span_id IS NULL) AS root_service,
       first(s.name ORDER BY s.start_time, s.span_id) FILTER (WHERE s.parent_span_id IS NULL) AS root_name,
       min(epoch_ns(s.start_time)) AS start_ns,
       max(epoch_ns(s.start_time) + s.duration_ns) - min(epoch_ns(s.start_time)) AS duration_ns,
       count(*) AS spans,
       count(*) FILTER (WHERE s.status_code = 'error') AS errors,
       any_value(sel.matched) AS matched
FROM spans s JOIN sel ON s.trace_id = sel.trace_id
GROUP BY s.trace_id
ORDER BY start_ns DESC, trace_id DESC"""


def duck_search(cond, limit=LIMIT):
    """Search for one spanset filter `cond` (SQL over `spans`, may hold `?`): the `limit` traces
    whose latest matching span is newest (Spindle's order), each summarised as Tempo does: root
    service and name, start, duration, spans, error spans, matched spans; newest start first."""
    return (f"WITH sel AS (SELECT trace_id, max(start_time) AS newest, count(*) AS matched FROM spans WHERE {cond} "
            f"GROUP BY trace_id ORDER BY newest DESC, trace_id DESC LIMIT {limit}){DUCK_SUMMARY}")


def duck_structural(column, limit=LIMIT):
    """`{ span.<key> >= 500 } >> { kind = client }`: client spans with an ancestor whose status code
    `column` is >= 500. The traces holding such an ancestor are materialised first; the recursive CTE
    walks down from the ancestors' children within them (UNION ALL, as ClickHouse allows no other:
    a span below two matching ancestors is reached twice, hence count(DISTINCT))."""
    return f"""WITH RECURSIVE
  cand AS MATERIALIZED (SELECT trace_id, span_id, parent_span_id, kind, start_time, {column} AS code FROM spans
                        WHERE trace_id IN (SELECT trace_id FROM spans WHERE {column} >= 500)),
  d(trace_id, span_id, kind, start_time, depth) AS (
    SELECT c.trace_id, c.span_id, c.kind, c.start_time, 1
    FROM cand c JOIN cand p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id WHERE p.code >= 500
    UNION ALL
    SELECT c.trace_id, c.span_id, c.kind, c.start_time, d.depth + 1
    FROM cand c JOIN d ON c.trace_id = d.trace_id AND c.parent_span_id = d.span_id WHERE d.depth < {MAX_DEPTH}),
  sel AS (SELECT trace_id, max(start_time) AS newest, count(DISTINCT span_id) AS matched FROM d WHERE kind = 'client'
          GROUP BY trace_id ORDER BY newest DESC, trace_id DESC LIMIT {limit}){DUCK_SUMMARY}"""


def duck_rate(start_ns, end_ns, step_ns):
    """`{ } | rate() by (resource.service.name)`: spans per service and interval, over the step in s."""
    first, last = grid(start_ns, end_ns, step_ns)
    return (f"SELECT service_name, ({first} + (i + 1) * {step_ns}) // 1000000 AS ts_ms, count(*) / {step_ns / SECOND} AS rate "
            f"FROM (SELECT service_name, (epoch_ns(start_time) - {first} - 1) // {step_ns} AS i FROM spans "
            f"WHERE epoch_ns(start_time) > {first} AND epoch_ns(start_time) <= {last}) GROUP BY ALL ORDER BY ALL")


def duck_quantile(start_ns, end_ns, step_ns, q=0.99):
    """`{ } | quantile_over_time(duration, q)`: the exact q quantile of durations (s) per interval."""
    first, last = grid(start_ns, end_ns, step_ns)
    return (f"SELECT ({first} + (i + 1) * {step_ns}) // 1000000 AS ts_ms, quantile_cont(duration_ns, {q}) / 1e9 AS p "
            f"FROM (SELECT duration_ns, (epoch_ns(start_time) - {first} - 1) // {step_ns} AS i FROM spans "
            f"WHERE epoch_ns(start_time) > {first} AND epoch_ns(start_time) <= {last}) GROUP BY ALL ORDER BY ALL")


def duck_arrow(duck, sql, params=None):
    return duck.sql(sql, params=params or None).to_arrow_table()


def duck_view(duck, files):
    # (DuckDB 2 wants every result of execute() fetched before the next statement.)
    duck.execute("CREATE OR REPLACE VIEW spans AS SELECT * FROM read_parquet([%s])" % ", ".join(f"'{f}'" for f in files)).fetchall()
    # Older DuckDB answered a map lookup with a list (bench_suite checks the same).
    return "span_attrs_str['user.id'][1]" if isinstance(duck.execute("SELECT MAP {'a': 'b'}['a']").fetchall()[0][0], list) \
        else "span_attrs_str['user.id']"


# --- ClickHouse (chdb), over the SigNoz-like table bench.spans

def ch_str(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ch_summary(sel, prefix=""):
    """The summary of DUCK_SUMMARY over the CTE `sel` (traceID, newest, matched), materialised as it
    is read twice (trace ids for the IN, which the traceID bloom filter index can skip granules
    with, and the matched counts)."""
    return f"""WITH {prefix}sel AS MATERIALIZED ({sel})
SELECT t.traceID, t.root_service, t.root_name, t.start_ns, t.duration_ns, t.spans, t.errors, m.matched FROM (
  SELECT traceID,
         if(countIf(parentSpanID = '') > 0, argMinIf(serviceName, (timestamp, spanID), parentSpanID = ''), NULL) AS root_service,
         if(countIf(parentSpanID = '') > 0, argMinIf(name, (timestamp, spanID), parentSpanID = ''), NULL) AS root_name,
         min(toUnixTimestamp64Nano(timestamp)) AS start_ns,
         max(toUnixTimestamp64Nano(timestamp) + toInt64(durationNano)) - start_ns AS duration_ns,
         count() AS spans, countIf(statusCode = 'error') AS errors
  FROM bench.spans WHERE traceID IN (SELECT traceID FROM sel) GROUP BY traceID) AS t
INNER JOIN sel AS m ON t.traceID = m.traceID
ORDER BY t.start_ns DESC, t.traceID DESC
SETTINGS enable_materialized_cte = 1"""


def ch_search(cond, limit=LIMIT):
    return ch_summary(f"SELECT traceID, max(timestamp) AS newest, count() AS matched FROM bench.spans WHERE {cond} "
                      f"GROUP BY traceID ORDER BY newest DESC, traceID DESC LIMIT {limit}")


def ch_structural(key, limit=LIMIT):
    """As duck_structural. ClickHouse allows no MATERIALIZED CTE in a WITH RECURSIVE, so the
    candidate spans are materialised in the outer WITH and the recursion runs in a subquery. A
    missing key reads as 0 in numberTagMap, which `>= 500` rejects as TraceQL rejects a nil."""
    value = f"numberTagMap[{ch_str(key)}]"
    cand = (f"cand AS MATERIALIZED (SELECT traceID, spanID, parentSpanID, kind, timestamp, {value} AS code FROM bench.spans "
            f"WHERE traceID IN (SELECT traceID FROM bench.spans WHERE {value} >= 500)), ")
    sel = f"""SELECT traceID, max(timestamp) AS newest, uniqExact(spanID) AS matched FROM (
    WITH RECURSIVE d AS (
      SELECT c.traceID AS traceID, c.spanID AS spanID, c.kind AS kind, c.timestamp AS timestamp, 1 AS depth
      FROM cand AS c INNER JOIN cand AS p ON c.traceID = p.traceID AND c.parentSpanID = p.spanID WHERE p.code >= 500
      UNION ALL
      SELECT c.traceID, c.spanID, c.kind, c.timestamp, d.depth + 1
      FROM cand AS c INNER JOIN d ON c.traceID = d.traceID AND c.parentSpanID = d.spanID WHERE d.depth < {MAX_DEPTH})
    SELECT traceID, spanID, timestamp FROM d WHERE kind = 'client')
  GROUP BY traceID ORDER BY newest DESC, traceID DESC LIMIT {limit}"""
    return ch_summary(sel, prefix=cand)


def ch_interval(first, last, step_ns):
    return (f"intDiv(toUnixTimestamp64Nano(timestamp) - {first} - 1, {step_ns}) AS i FROM bench.spans "
            f"WHERE timestamp > fromUnixTimestamp64Nano({first}) AND timestamp <= fromUnixTimestamp64Nano({last})")


def ch_rate(start_ns, end_ns, step_ns):
    first, last = grid(start_ns, end_ns, step_ns)
    return (f"SELECT serviceName, intDiv({first} + (i + 1) * {step_ns}, 1000000) AS ts_ms, count() / {step_ns / SECOND} AS rate "
            f"FROM (SELECT serviceName, {ch_interval(first, last, step_ns)}) GROUP BY serviceName, i ORDER BY serviceName, ts_ms")


def ch_quantile(start_ns, end_ns, step_ns, q=0.99):
    """quantile() samples 8,192 values per interval: exact on small data, approximate at scale."""
    first, last = grid(start_ns, end_ns, step_ns)
    return (f"SELECT intDiv({first} + (i + 1) * {step_ns}, 1000000) AS ts_ms, quantile({q})(durationNano) / 1e9 AS p "
            f"FROM (SELECT durationNano, {ch_interval(first, last, step_ns)}) GROUP BY i ORDER BY ts_ms")


def load_clickhouse(ch, files):
    """bench_suite's SigNoz-like MergeTree table (same columns, codecs, skip indexes and order; it
    builds it inline, so it cannot be imported), loaded from the live blocks. One addition: SigNoz
    keeps every numeric attribute in numberTagMap, and Spindle's dedicated `http.status_code` and
    `http.response.status_code` columns go there too, for query c. Returns the load's figures."""
    ch.query("CREATE DATABASE IF NOT EXISTS bench")
    ch.query("DROP TABLE IF EXISTS bench.spans")
    ch.query("""
        CREATE TABLE bench.spans (
            timestamp DateTime64(9, 'UTC') CODEC(DoubleDelta, LZ4),
            traceID FixedString(32) CODEC(ZSTD(1)),
            spanID String CODEC(ZSTD(1)),
            parentSpanID String CODEC(ZSTD(1)),
            serviceName LowCardinality(String) CODEC(ZSTD(1)),
            name LowCardinality(String) CODEC(ZSTD(1)),
            kind LowCardinality(String) CODEC(ZSTD(1)),
            durationNano UInt64 CODEC(T64, ZSTD(1)),
            statusCode LowCardinality(String) CODEC(ZSTD(1)),
            stringTagMap Map(String, String) CODEC(ZSTD(1)),
            numberTagMap Map(String, Float64) CODEC(ZSTD(1)),
            resourceTagsMap Map(LowCardinality(String), String) CODEC(ZSTD(1)),
            INDEX idx_trace traceID TYPE bloom_filter GRANULARITY 4,
            INDEX idx_user mapValues(stringTagMap) TYPE bloom_filter GRANULARITY 4
        ) ENGINE = MergeTree PARTITION BY toDate(timestamp)
        ORDER BY (serviceName, name, toStartOfHour(timestamp), timestamp)""")
    t = time.perf_counter()
    for f in files:
        ch.query(f"""
            INSERT INTO bench.spans SELECT
                start_time, lower(hex(trace_id)), lower(hex(span_id)), ifNull(lower(hex(parent_span_id)), ''),
                ifNull(service_name, ''), name, kind, toUInt64(duration_ns), status_code,
                mapUpdate(CAST(span_attrs_str, 'Map(String, String)'), mapFilter((k, v) -> v != '', map(
                    'http.request.method', ifNull(span_http_request_method, ''), 'http.route', ifNull(span_http_route, ''),
                    'url.full', ifNull(span_url_full, ''), 'db.system', ifNull(span_db_system, ''), 'db.statement', ifNull(span_db_statement, ''),
                    'rpc.service', ifNull(span_rpc_service, ''), 'rpc.method', ifNull(span_rpc_method, '')))),
                mapUpdate(mapApply((k, v) -> (k, toFloat64(v)), CAST(span_attrs_int, 'Map(String, Int64)')),
                          mapFilter((k, v) -> NOT isNaN(v), map(
                    'http.status_code', ifNull(toFloat64(span_http_status_code), nan),
                    'http.response.status_code', ifNull(toFloat64(span_http_response_status_code), nan)))),
                mapUpdate(CAST(resource_attrs_str, 'Map(String, String)'), map('k8s.pod.name', ifNull(resource_k8s_pod_name, '')))
            FROM file({ch_str(f)}, Parquet)""")
    load_s = time.perf_counter() - t
    ch.query("OPTIMIZE TABLE bench.spans FINAL")
    size = int(ch_rows(ch.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND table = 'spans' AND active", "CSV"))[0][0])
    rows = int(ch_rows(ch.query("SELECT count() FROM bench.spans", "CSV"))[0][0])
    return {"rows": rows, "bytes": size, "bytes_per_span": round(size / max(rows, 1), 1),
            "bulk_load_rows_per_second_from_parquet": round(rows / load_s)}


# --- answers in one form, to compare engines (not timed)

def ch_rows(result):
    return list(csv.reader(io.StringIO(result.bytes().decode())))


def null(v):
    return None if v == "\\N" else v


def search_rows_duck(table):
    return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in (tuple(x.values()) for x in table.to_pylist())]


def search_rows_ch(result):
    return [(r[0], null(r[1]), null(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7])) for r in ch_rows(result)]


def series_duck(table, labelled):
    rows = [tuple(x.values()) for x in table.to_pylist()]
    return {((r[0], r[1]) if labelled else r[0]): r[-1] for r in rows}


def series_ch(result, labelled):
    return {((r[0], int(r[1])) if labelled else int(r[0])): float(r[-1]) for r in ch_rows(result)}


def spindle_trace_ids(body):
    """Trace ids of a Tempo search answer, newest first (Tempo writes them without leading zeros)."""
    return [t["traceID"].zfill(32) for t in body["traces"]]


def spindle_series(body, labelled):
    """A Tempo query_range answer as {(label value, ts_ms): value}, or {ts_ms: value} for one series."""
    out = {}
    for s in body.get("series", []):
        label = None
        for kv in s.get("labels", []):
            if kv["key"] != "p":  # quantile series are labelled p=<q>
                label = next(iter(kv["value"].values()), None) if kv.get("value") else None
        for p in s.get("samples", []):
            value = p.get("value", 0.0)
            value = float(value) if not isinstance(value, str) else float(value.replace("Infinity", "inf"))
            if value == 0.0:
                continue  # Tempo (and Spindle) fill empty intervals with 0; the SQL has no such rows
            out[(label, int(p["timestampMs"])) if labelled else int(p["timestampMs"])] = value
    return out


def same_series(a, b, rel=1e-9):
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-12) for k in a)


def max_rel_diff(a, b):
    keys = a.keys() & b.keys()
    return round(max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in keys), default=0.0), 4)


# --- Spindle's data dir

def live_blocks(data_dir):
    """Parquet files of the live span blocks: the union of the tenants' block indexes
    (<store>/<tenant>/index/*.json, libs/storage/src/index.rs). Globbing the store instead would
    also read the generator's sample files (<tenant>/metrics/) and compaction inputs that are retired
    but not yet deleted (kept --block-delete-grace), i.e. spans twice."""
    store = os.path.join(data_dir, "blocks")
    files, rows = [], 0
    for index in sorted(glob.glob(os.path.join(store, "*", "index", "*.json"))):
        with open(index) as f:
            for meta in json.load(f):
                path = os.path.join(store, meta["path"])
                if not os.path.exists(path):
                    raise RuntimeError(f"{index} lists {meta['path']}, which is missing")
                files.append(path)
                rows += meta["rows"]
    return sorted(set(files)), rows


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(s, quiet_s, max_s):
    """Waits until Spindle has used < 10 % of a core for `quiet_s` seconds in a row: after a restart
    it may replay its log, and its compactor merges the small flushed blocks (a round every 30 s,
    a merge keeps a core busy), which would run during the timed queries. Returns how long it
    waited and the share of a core it used over the last quiet_s seconds."""
    t0 = time.monotonic()
    if quiet_s <= 0:
        return {"waited_s": 0, "cpu_share": None}
    quiet_s = max(quiet_s, 3)
    samples = [(t0, cpu_seconds(s.proc.pid))]
    while time.monotonic() - t0 < max_s:
        time.sleep(1)
        samples.append((time.monotonic(), cpu_seconds(s.proc.pid)))
        window = [p for p in samples if p[0] >= samples[-1][0] - quiet_s]
        if samples[-1][0] - samples[0][0] >= quiet_s and window[-1][0] - window[0][0] >= quiet_s - 1.5:
            busy = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
            if busy < 0.10:
                return {"waited_s": round(time.monotonic() - t0, 1), "cpu_share": round(busy, 3)}
    print(f"warning: Spindle still busy after {max_s} s; timing anyway", file=sys.stderr)
    return {"waited_s": round(time.monotonic() - t0, 1), "cpu_share": None}


# --- the run

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=10_000_000, help="spans to ingest (without --data-dir)")
    ap.add_argument("--bin-dir", help="release binaries (spindle, loadsim)")
    ap.add_argument("--data-dir", help="reuse this Spindle data dir (stopped, flushed): no ingest; never deleted")
    ap.add_argument("--keep", action="store_true", help="keep the data dir of the fresh Spindle")
    ap.add_argument("--report", default="bench-traceql-report.json")
    ap.add_argument("--searches", type=int, default=20, help="runs of each search (different parameters)")
    ap.add_argument("--repeats", type=int, default=10, help="runs of each query without parameters")
    ap.add_argument("--quiet", type=float, default=45, help="seconds Spindle must be idle before timing (> a compaction round; 0: no wait)")
    ap.add_argument("--quiet-max", type=float, default=900, help="longest wait for that")
    ap.add_argument("--self-test", action="store_true", help="check the SQL on generated data and exit")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    if not args.bin_dir:
        ap.error("--bin-dir is required")
    random.seed(7)
    work = tempfile.mkdtemp(prefix="spindle-traceql-")
    report = {"spans_target": None if args.data_dir else args.spans, "machine": {"cpus": os.cpu_count()},
              "problems": [], "warnings": []}
    try:
        run(args, work, report)
    except BaseException:
        log = os.path.join(os.path.dirname(report.get("data_dir", work)), "spindle.log")
        if os.path.exists(log):
            with open(log, "rb") as f:
                print(f"--- end of {log}:\n" + f.read()[-4000:].decode(errors="replace"), file=sys.stderr)
        raise
    finally:
        if args.keep and not args.data_dir:
            shutil.rmtree(os.path.join(work, "chdb"), ignore_errors=True)
            print(f"kept {os.path.join(work, 'data')}: rerun with --data-dir {os.path.join(work, 'data')}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)
    if report["problems"]:
        sys.exit("problems: " + "; ".join(report["problems"]))


def ingest(args, work, data, report):
    """A fresh all-in-one Spindle, N loadsim spans at saturation as bench_suite sends them, then a
    SIGTERM, which flushes every span to Parquet."""
    s = Spindle(args.bin_dir, data)
    try:
        s.start()
        load = subprocess.run(
            [os.path.join(args.bin_dir, "loadsim"), "--endpoint", f"127.0.0.1:{s.grpc}", "--rate", "0", "--duration", "3600s",
             "--max-spans", str(args.spans), "--concurrency", "8", "--batch", "1000", "--report", os.path.join(work, "loadsim.json")],
            capture_output=True, text=True, timeout=7200,
        )
        peak_rss = s.peak_rss_mib()
    finally:
        code = stop(s)
    if load.returncode != 0:
        raise RuntimeError(load.stderr[-2000:])
    assert code == 0, f"spindle exited with {code} on SIGTERM"
    ls = json.load(open(os.path.join(work, "loadsim.json")))
    report["ingest"] = {"spans": ls["spans_acknowledged"], "spans_per_second": round(ls["spans_per_second"]),
                        "retried_requests": ls["requests_retried"], "peak_rss_mib": peak_rss}


def stop(s):
    """SIGTERM and wait, if it is running (bench_suite.Spindle.stop)."""
    return s.stop() if s.proc is not None and s.proc.poll() is None else None


def run(args, work, report):
    data = os.path.abspath(args.data_dir) if args.data_dir else os.path.join(work, "data")
    report["data_dir"] = data
    if not args.data_dir:
        ingest(args, work, data, report)
    s = Spindle(args.bin_dir, data)
    try:
        s.start()
        report["idle_before_queries"] = wait_until_idle(s, args.quiet, args.quiet_max)
        report["spans_stored"] = s.sql("SELECT count(*) FROM spans")["rows"][0][0]
        files, answers = spindle_phase(s, args, data, report)
    finally:
        stop(s)
    peers_phase(args, work, report, files, answers)


def spindle_phase(s, args, data, report):
    """Samples parameters, then times Spindle; returns the live blocks and Spindle's answers."""
    # --- blocks and parameters (DuckDB over the blocks; not timed)
    import duckdb
    files, index_rows = live_blocks(data)
    report["storage"] = {"blocks": len(files), "bytes": sum(os.path.getsize(f) for f in files), "index_rows": index_rows}
    if index_rows != report["spans_stored"]:
        report["problems"].append(f"the block indexes hold {index_rows} spans, Spindle counts {report['spans_stored']}")
    duck = duckdb.connect()
    user_id = duck_view(duck, files)
    # Ordered by a hash, not random(): the same user ids on every run over the same data.
    users = [r[0] for r in duck.execute(
        f"SELECT {user_id} FROM spans WHERE parent_span_id IS NULL AND {user_id} IS NOT NULL "
        f"ORDER BY hash(trace_id, span_id) LIMIT {args.searches}").fetchall()]
    if not users:
        raise RuntimeError("no root span carries user.id: not loadsim's data?")
    services = ["svc-%03d" % random.randrange(200) for _ in range(args.searches)]
    lo, hi = duck.execute("SELECT min(epoch_ns(start_time)), max(epoch_ns(start_time)) FROM spans").fetchall()[0]
    duck.close()
    start_s = lo // SECOND
    # (name, start s, end s, step s) of the metrics queries: start/end in whole unix seconds.
    windows = {"rate_by_service_1h": (start_s, start_s + 3600, 60), "rate_by_service_24h": (start_s, start_s + 86400, 300),
               "quantile_duration_p99": (start_s, hi // SECOND + 1, 60)}
    report["parameters"] = {"services": services, "user_ids": users, "time_range_ns": [lo, hi], "windows": windows, "limit": LIMIT}

    # --- Spindle over HTTP (Tempo's API): each answer must be a 200 with a body
    api = f"http://127.0.0.1:{s.http}"
    sess = requests.Session()

    def get(path, params):
        r = sess.get(f"{api}{path}", params=params, timeout=600)
        r.raise_for_status()
        assert r.content, f"empty answer to {path} {params}"
        return r

    searches = {
        "search_service_error": ['{ resource.service.name = "%s" && status = error }' % v for v in services],
        "search_user_id": ['{ span.user.id = "%s" }' % v for v in users],
    }
    for key in STATUS_KEYS:
        searches[structural_key(key)] = ["{ span.%s >= 500 } >> { kind = client }" % key] * args.repeats
    sp, answers = {}, {}
    for name, queries in searches.items():
        get("/api/search", {"q": queries[0], "limit": LIMIT})  # warm-up, not timed
        out = []
        sp[name] = timed(lambda i: out.append(get("/api/search", {"q": queries[i], "limit": LIMIT})), len(queries))
        answers[name] = [spindle_trace_ids(r.json()) for r in out]
    metrics = {"rate_by_service_1h": "{ } | rate() by (resource.service.name)", "rate_by_service_24h": "{ } | rate() by (resource.service.name)",
               "quantile_duration_p99": "{ } | quantile_over_time(duration, .99)"}
    for name, q in metrics.items():
        start, end, step = windows[name]
        params = {"q": q, "start": start, "end": end, "step": f"{step}s"}
        get("/api/metrics/query_range", params)
        out = []
        sp[name] = timed(lambda i: out.append(get("/api/metrics/query_range", params)), args.repeats)
        body = out[0].json()
        if body.get("status") == "PARTIAL":
            report["problems"].append(f"{name}: Spindle's answer is partial: {body.get('message')}")
        answers[name] = spindle_series(body, name.startswith("rate"))
    missing = [u for u, ids in zip(users, answers["search_user_id"]) if not ids]
    if missing:
        report["problems"].append(f"attribute search found no trace for sampled user ids {missing}")
    report["spindle"] = {k: summary(v) for k, v in sp.items()}
    report["spindle_found"] = {k: [len(ids) for ids in v] for k, v in answers.items() if k in searches}
    report["traceql"] = {**{k: v[0] for k, v in searches.items()}, **metrics}
    return files, answers


def peers_phase(args, work, report, files, spindle_answers):
    """The same questions in DuckDB and ClickHouse, timed in process (no HTTP), Spindle stopped;
    then whether the three engines answered the same."""
    import duckdb
    from chdb import session as chs
    p = report["parameters"]
    services, users = p["services"], p["user_ids"]
    ns = {k: (a * SECOND, b * SECOND, step * SECOND) for k, (a, b, step) in p["windows"].items()}

    duck = duckdb.connect()
    user_id = duck_view(duck, files)
    duck_q = {
        "search_service_error": [(duck_search("service_name = ? AND status_code = 'error'"), [v]) for v in services],
        "search_user_id": [(duck_search(f"{user_id} = ?"), [v]) for v in users],
        **{structural_key(k): [(duck_structural(c), [])] * args.repeats for k, c in STATUS_KEYS.items()},
        "rate_by_service_1h": [(duck_rate(*ns["rate_by_service_1h"]), [])] * args.repeats,
        "rate_by_service_24h": [(duck_rate(*ns["rate_by_service_24h"]), [])] * args.repeats,
        "quantile_duration_p99": [(duck_quantile(*ns["quantile_duration_p99"]), [])] * args.repeats,
    }
    ch = chs.Session(os.path.join(work, "chdb"))
    ch_q = {
        "search_service_error": [ch_search(f"serviceName = {ch_str(v)} AND statusCode = 'error'") for v in services],
        "search_user_id": [ch_search(f"stringTagMap['user.id'] = {ch_str(v)}") for v in users],
        **{structural_key(k): [ch_structural(k)] * args.repeats for k in STATUS_KEYS},
        "rate_by_service_1h": [ch_rate(*ns["rate_by_service_1h"])] * args.repeats,
        "rate_by_service_24h": [ch_rate(*ns["rate_by_service_24h"])] * args.repeats,
        "quantile_duration_p99": [ch_quantile(*ns["quantile_duration_p99"])] * args.repeats,
    }
    report["sql"] = {"duckdb": {k: v[0][0] for k, v in duck_q.items()}, "clickhouse": {k: v[0] for k, v in ch_q.items()}}

    dk, duck_answers = {}, {}
    for name, runs in duck_q.items():
        duck_arrow(duck, *runs[0])  # warm-up
        out = []
        dk[name] = timed(lambda i: out.append(duck_arrow(duck, *runs[i])), len(runs))
        duck_answers[name] = out
    report["duckdb"] = {k: summary(v) for k, v in dk.items()}
    duck.close()

    report["clickhouse_storage"] = load_clickhouse(ch, files)
    cq, ch_answers = {}, {}
    for name, runs in ch_q.items():
        ch.query(runs[0], "CSV")  # warm-up
        out = []
        cq[name] = timed(lambda i: out.append(ch.query(runs[i], "CSV")), len(runs))
        ch_answers[name] = out
    report["clickhouse"] = {k: summary(v) for k, v in cq.items()}
    ch.close()

    # --- do the three engines give the same answer? (trace ids per run; every sample of a series)
    agree = {}
    for name in duck_q:
        if name.startswith(("search", "structural")):
            d = [[r[0] for r in search_rows_duck(t)] for t in duck_answers[name]]
            c = [[r[0] for r in search_rows_ch(t)] for t in ch_answers[name]]
            # Spindle lists by start like the SQL; compare sets, as equal starts may come in any order.
            s = spindle_answers[name]
            agree[name] = {"runs": len(d), "duckdb_eq_clickhouse": sum(sorted(x) == sorted(y) for x, y in zip(d, c)),
                           "spindle_eq_duckdb": sum(sorted(x) == sorted(y) for x, y in zip(s, d)),
                           "traces_found_duckdb": [len(x) for x in d]}
        else:
            labelled = name.startswith("rate")
            d, c = series_duck(duck_answers[name][0], labelled), series_ch(ch_answers[name][0], labelled)
            s = spindle_answers[name]
            if labelled:
                agree[name] = {"samples": len(d), "duckdb_eq_clickhouse": same_series(d, c), "spindle_eq_duckdb": same_series(s, d),
                               "spans_counted": {"spindle": round(sum(s.values()) * ns[name][2] / SECOND),
                                                 "duckdb": round(sum(d.values()) * ns[name][2] / SECOND)}}
            else:
                # Tempo's quantiles come from power-of-two buckets and ClickHouse's quantile()
                # samples: only the intervals must agree, the values roughly.
                agree[name] = {"samples": len(d), "same_intervals": d.keys() == c.keys() == s.keys(),
                               "max_rel_diff_clickhouse_duckdb": max_rel_diff(c, d), "max_rel_diff_spindle_duckdb": max_rel_diff(s, d)}
    report["agreement"] = agree
    # The two SQL engines must agree (the self-test checks them against brute force); Spindle
    # differing from them is reported, to be looked into, but does not fail the run.
    for name, a in agree.items():
        runs = a.get("runs", True)
        if a.get("duckdb_eq_clickhouse", a.get("same_intervals")) not in (True, runs):
            report["problems"].append(f"{name}: DuckDB and ClickHouse disagree: {a}")
        if a.get("spindle_eq_duckdb", True) not in (True, runs) or a.get("same_intervals") is False:
            report["warnings"].append(f"{name}: Spindle's answer differs from the SQL's: {a}")


def print_table(r):
    print(f"\nspans: {r.get('spans_stored')}  storage: {r.get('storage')}  ingest: {r.get('ingest')}  "
          f"clickhouse storage: {r.get('clickhouse_storage')}  idle before queries: {r.get('idle_before_queries')}\n")
    print("| figure | Spindle p50 / p99 (ms) | ClickHouse p50 / p99 (ms) | x Spindle (p50) | DuckDB p50 / p99 (ms) | x Spindle (p50) | target (Spindle p50 / p99) |")
    print("|---|---|---|---|---|---|---|")
    for key, label, target in FIGURES:
        v, c, d = (r.get(e, {}).get(key) for e in ("spindle", "clickhouse", "duckdb"))
        if not v:
            continue
        cell = lambda x: f"{x['p50_ms']} / {x['p99_ms']}" if x else "n/a"
        ratio = lambda x: f"{x['p50_ms'] / v['p50_ms']:.2f}" if x and v["p50_ms"] else "n/a"
        met = lambda ms: "met" if ms <= target else "missed"
        print(f"| {label} | {cell(v)} | {cell(c)} | {ratio(c)} | {cell(d)} | {ratio(d)} | "
              f"<= {target} ms: {met(v['p50_ms'])} / {met(v['p99_ms'])} |")
    print("\nsame answers (runs or samples that agree):")
    for key, a in (r.get("agreement") or {}).items():
        print(f"  {key}: {json.dumps(a)}")
    for w in r.get("warnings", []):
        print(f"warning: {w}")


# --- self-test: the SQL of both engines against brute force on a small generated data set

def synthetic_spans(seed=42, traces=60):
    """A few hundred spans in random trees up to 6 deep over three hours, with errors, http status
    codes at every depth, user ids on roots (some shared), one trace whose root never arrived and
    one with two roots, a root on an interval boundary. Other times are not microsecond-aligned
    (Spindle's are ns)."""
    rng = random.Random(seed)
    base = 1_700_000_017_123_456_789
    spans = []
    for t in range(traces):
        tid = rng.randbytes(16)
        t0 = base + rng.randrange(3 * 3600 * SECOND)
        if t == 2:
            t0 = (base // (300 * SECOND) + 5) * 300 * SECOND  # on an interval boundary: (first, last] counts it
        tree = []

        def add(parent, depth, start):
            error = rng.random() < (0.15 if parent is None else 0.1)
            span = {"trace_id": tid, "span_id": rng.randbytes(8), "parent_span_id": parent,
                    "name": "GET /api/%d" % rng.randrange(3) if parent is None else "op-%d" % rng.randrange(5),
                    "kind": "server" if parent is None else rng.choice(["server", "client", "client", "internal", "producer", "consumer"]),
                    "start_ns": start, "duration_ns": rng.randrange(10**5, 10**9), "status_code": "error" if error else rng.choice(["unset", "ok"]),
                    "service_name": "svc-%03d" % rng.randrange(6), "user_id": "user-%d" % rng.randrange(25) if parent is None else None,
                    "http_status": rng.choice([200, 404, 500, 503]) if rng.random() < 0.15 else None,
                    "resp_status": (500 if error else 200) if parent is None else None}
            tree.append(span)
            if depth < 5:
                for _ in range(rng.choice([0, 1, 1, 2])):
                    add(span["span_id"], depth + 1, start + rng.randrange(1, 10**8))

        add(None, 0, t0)
        if t == 0:
            tree = tree[1:] or tree  # the root never arrived
        if t == 1:
            add(None, 0, t0 + 5)  # a second root, later: the first one names the trace
            for root in (r for r in tree if r["parent_span_id"] is None):
                root["user_id"] = "user-two-roots"
            tree[-1]["name"] = "second root"
        spans.extend(tree)
    return spans


def write_block(path, spans):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def m(value):
        return pa.map_(pa.field("keys", pa.string(), nullable=False), pa.field("values", value))
    col = lambda k: [s[k] for s in spans]
    none = [None] * len(spans)
    table = pa.table({
        "trace_id": pa.array(col("trace_id"), pa.binary(16)), "span_id": pa.array(col("span_id"), pa.binary(8)),
        "parent_span_id": pa.array(col("parent_span_id"), pa.binary(8)), "name": col("name"), "kind": col("kind"),
        "start_time": pa.array(col("start_ns"), pa.timestamp("ns", tz="UTC")), "duration_ns": pa.array(col("duration_ns"), pa.int64()),
        "status_code": col("status_code"), "service_name": col("service_name"),
        **{c: pa.array(none, pa.string()) for c in ["span_http_request_method", "span_http_route", "span_url_full", "span_db_system",
                                                    "span_db_statement", "span_rpc_service", "span_rpc_method", "resource_k8s_pod_name"]},
        "span_http_status_code": pa.array(col("http_status"), pa.int64()),
        "span_http_response_status_code": pa.array(col("resp_status"), pa.int64()),
        "span_attrs_str": pa.array([[("user.id", s["user_id"])] if s["user_id"] else [("code.function", "f")] for s in spans], m(pa.string())),
        "span_attrs_int": pa.array([[("retries", 1)] for _ in spans], m(pa.int64())),
        "resource_attrs_str": pa.array([[("team", "t")] for _ in spans], m(pa.string())),
    })
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=100)


def brute_search(spans, pick, limit):
    """What Spindle answers: the `limit` traces whose latest picked span is newest, summarised."""
    by_trace = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    picked = {}
    for tid, ss in by_trace.items():
        hits = pick(ss)
        if hits:
            picked[tid] = (max(h["start_ns"] for h in hits), len(hits))
    top = sorted(picked, key=lambda t: (picked[t][0], t), reverse=True)[:limit]
    out = []
    for tid in top:
        ss = by_trace[tid]
        roots = sorted((s for s in ss if s["parent_span_id"] is None), key=lambda s: (s["start_ns"], s["span_id"]))
        start = min(s["start_ns"] for s in ss)
        out.append((tid.hex(), roots[0]["service_name"] if roots else None, roots[0]["name"] if roots else None, start,
                    max(s["start_ns"] + s["duration_ns"] for s in ss) - start, len(ss),
                    sum(s["status_code"] == "error" for s in ss), picked[tid][1]))
    return sorted(out, key=lambda r: (r[3], r[0]), reverse=True)


def descendants_pick(field):
    """Client spans with an ancestor (walking parent ids) whose `field` >= 500."""
    def pick(ss):
        by_id = {s["span_id"]: s for s in ss}
        hits = []
        for s in ss:
            p, ok = by_id.get(s["parent_span_id"]), False
            while p is not None and not ok:
                ok = p[field] is not None and p[field] >= 500
                p = by_id.get(p["parent_span_id"])
            if ok and s["kind"] == "client":
                hits.append(s)
        return hits
    return pick


def brute_metrics(spans, start_ns, end_ns, step_ns, value):
    first, last = grid(start_ns, end_ns, step_ns)
    groups = {}
    for s in spans:
        if first < s["start_ns"] <= last:
            ts = (first + ((s["start_ns"] - first - 1) // step_ns + 1) * step_ns) // 1_000_000
            groups.setdefault(value(s, ts), []).append(s["duration_ns"])
    return groups


def quantile_cont(values, q):
    v = sorted(values)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def self_test():
    import duckdb
    from chdb import session as chs
    spans = synthetic_spans()
    tmp = tempfile.mkdtemp(prefix="spindle-traceql-test-")
    try:
        # A data dir as Spindle lays it out: two live blocks in the index, a retired block and a
        # generator sample file that live_blocks must leave out.
        store = os.path.join(tmp, "data", "blocks")
        half = len(spans) // 2
        metas = []
        for i, part in enumerate([spans[:half], spans[half:]]):
            rel = f"single-tenant/blocks/spindle/shard-00000/{i}.parquet"
            write_block(os.path.join(store, rel), part)
            metas.append({"path": rel, "rows": len(part)})
        write_block(os.path.join(store, "single-tenant/blocks/spindle/shard-00000/retired.parquet"), spans[:10])
        write_block(os.path.join(store, "single-tenant/metrics/0-1-w.parquet"), spans[:10])
        os.makedirs(os.path.join(store, "single-tenant", "index"))
        with open(os.path.join(store, "single-tenant", "index", "spindle.shard-00000.json"), "w") as f:
            json.dump(metas, f)
        files, rows = live_blocks(os.path.join(tmp, "data"))
        assert len(files) == 2 and rows == len(spans), (files, rows)

        duck = duckdb.connect()
        user_id = duck_view(duck, files)
        ch = chs.Session(os.path.join(tmp, "chdb"))
        loaded = load_clickhouse(ch, files)
        assert loaded["rows"] == len(spans), loaded
        checks = 0

        def check(what, brute, d, c):
            nonlocal checks
            assert d == brute, f"{what}: DuckDB\n{d}\n!= brute force\n{brute}"
            assert c == brute, f"{what}: ClickHouse\n{c}\n!= brute force\n{brute}"
            checks += 1

        nonempty = {}
        for limit in (5, LIMIT):
            for v in sorted({s["service_name"] for s in spans}):
                want = brute_search(spans, lambda ss: [s for s in ss if s["service_name"] == v and s["status_code"] == "error"], limit)
                check(f"a {v} limit {limit}", want, search_rows_duck(duck_arrow(duck, duck_search("service_name = ? AND status_code = 'error'", limit), [v])),
                      search_rows_ch(ch.query(ch_search(f"serviceName = {ch_str(v)} AND statusCode = 'error'", limit), "CSV")))
                nonempty["a"] = nonempty.get("a", 0) + bool(want)
            for v in ["user-3", "user-7", "user-11", "user-two-roots", "user-nobody"]:
                want = brute_search(spans, lambda ss: [s for s in ss if s["user_id"] == v], limit)
                check(f"b {v} limit {limit}", want, search_rows_duck(duck_arrow(duck, duck_search(f"{user_id} = ?", limit), [v])),
                      search_rows_ch(ch.query(ch_search(f"stringTagMap['user.id'] = {ch_str(v)}", limit), "CSV")))
                nonempty["b"] = nonempty.get("b", 0) + bool(want)
            for key, column in STATUS_KEYS.items():
                field = "http_status" if key == "http.status_code" else "resp_status"
                want = brute_search(spans, descendants_pick(field), limit)
                check(f"c {key} limit {limit}", want, search_rows_duck(duck_arrow(duck, duck_structural(column, limit))),
                      search_rows_ch(ch.query(ch_structural(key, limit), "CSV")))
                nonempty["c " + key] = len(want)
        # The data must exercise what matters: several hits, the limit cutting, deep descendants.
        assert nonempty["a"] >= 6 and nonempty["b"] >= 6, nonempty
        assert nonempty["c http.status_code"] >= 5 and nonempty["c http.response.status_code"] >= 5, nonempty
        anchors = descendants_pick("http_status")
        deep = [s for s in anchors(spans) if s["parent_span_id"] and not any(
            p["span_id"] == s["parent_span_id"] and (p["http_status"] or 0) >= 500 for p in spans)]
        assert deep, "no client span whose matching ancestor is above its parent"

        lo = min(s["start_ns"] for s in spans)
        hi = max(s["start_ns"] for s in spans)
        start = lo // SECOND * SECOND
        for what, (a, z, step) in {"1h": (start, start + 3600 * SECOND, 60 * SECOND), "24h": (start, start + 86400 * SECOND, 300 * SECOND)}.items():
            groups = brute_metrics(spans, a, z, step, lambda s, ts: (s["service_name"], ts))
            brute = {k: len(v) / (step / SECOND) for k, v in groups.items()}
            d, c = series_duck(duck_arrow(duck, duck_rate(a, z, step)), True), series_ch(ch.query(ch_rate(a, z, step), "CSV"), True)
            assert same_series(d, brute) and same_series(c, brute), f"rate {what}: {d} / {c} / {brute}"
            checks += 1
        assert sum(len(v) for v in brute_metrics(spans, start, start + 3600 * SECOND, 60 * SECOND, lambda s, ts: ts).values()) < len(spans)
        a, z, step = start, (hi // SECOND + 1) * SECOND, 60 * SECOND
        brute = {k: quantile_cont(v, 0.99) / 1e9 for k, v in brute_metrics(spans, a, z, step, lambda s, ts: ts).items()}
        d, c = series_duck(duck_arrow(duck, duck_quantile(a, z, step)), False), series_ch(ch.query(ch_quantile(a, z, step), "CSV"), False)
        assert same_series(d, brute) and same_series(c, brute), f"quantile: {d} / {c} / {brute}"
        checks += 1
        assert sum(len(v) for v in brute_metrics(spans, a, z, step, lambda s, ts: ts).values()) == len(spans)

        # Reading Spindle's answers (shapes of services/querier/src/tempo/{search,metrics}.rs).
        assert spindle_trace_ids({"traces": [{"traceID": "abc"}]}) == ["0" * 29 + "abc"]
        body = {"series": [{"labels": [{"key": "resource.service.name", "value": {"stringValue": "svc-001"}}],
                            "samples": [{"timestampMs": "1700000060000", "value": 0.5}, {"timestampMs": "1700000120000"}]}]}
        assert spindle_series(body, True) == {("svc-001", 1700000060000): 0.5, ("svc-001", 1700000120000): 0.0}
        body = {"series": [{"labels": [{"key": "p", "value": {"doubleValue": 0.99}}], "samples": [{"timestampMs": "60000", "value": 1.5}]}]}
        assert spindle_series(body, False) == {60000: 1.5}
        ch.close()
        duck.close()
        print(f"self-test passed: {len(spans)} spans, {checks} answers of DuckDB and ClickHouse equal to brute force "
              f"(hits per query: {nonempty})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
