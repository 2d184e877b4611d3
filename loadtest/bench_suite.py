#!/usr/bin/env python3
"""Spindle's benchmark suite: ingest, storage and query figures in one run, and the same data and
questions in ClickHouse (chdb, a MergeTree span table shaped like SigNoz's) and DuckDB (reading
Spindle's own Parquet blocks). Run through `bash loadtest/bench-suite.sh`; writes a JSON report
and prints a Markdown table for docs/benchmarks.md."""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))] if v else None


def summary(values):
    return {"p50_ms": round(pct(values, 0.5) * 1000, 2), "p99_ms": round(pct(values, 0.99) * 1000, 2), "n": len(values)}


def timed(fn, repeat):
    out = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


class Spindle:
    def __init__(self, bin_dir, data_dir):
        self.bin = os.path.join(bin_dir, "spindle")
        self.data_dir = data_dir
        self.http, self.grpc, self.otlp_http = free_port(), free_port(), free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [self.bin, "--data-dir", self.data_dir, "--http-addr", f"127.0.0.1:{self.http}",
             "--otlp-grpc-addr", f"127.0.0.1:{self.grpc}", "--otlp-http-addr", f"127.0.0.1:{self.otlp_http}"],
            stderr=open(os.path.join(os.path.dirname(self.data_dir), "spindle.log"), "ab"),
        )
        for _ in range(600):
            try:
                if requests.get(f"http://127.0.0.1:{self.http}/ready", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("spindle did not start")

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) // 1024
        return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=600)

    def sql(self, q):
        r = requests.post(f"http://127.0.0.1:{self.http}/api/v1/sql", json={"query": q}, timeout=600)
        r.raise_for_status()
        return r.json()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=10_000_000)
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--report", default="bench-report.json")
    ap.add_argument("--lookups", type=int, default=200)
    ap.add_argument("--searches", type=int, default=20)
    args = ap.parse_args()
    random.seed(7)
    work = tempfile.mkdtemp(prefix="spindle-bench-")
    report = {"spans_target": args.spans, "machine": {"cpus": os.cpu_count()}}
    try:
        run(args, work, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)


def visibility_probe(s, stop, out):
    """While load runs: export one small trace over OTLP/HTTP, then read it back at once and
    poll until it is there; records how long after the acknowledgement it became readable."""
    api, otlp = f"http://127.0.0.1:{s.http}", f"http://127.0.0.1:{s.otlp_http}/v1/traces"
    sess = requests.Session()
    while not stop.is_set():
        trace_id = "%032x" % random.getrandbits(128)
        now = time.time_ns()
        body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "probe"}}]},
                "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": "%016x" % random.getrandbits(64), "name": "probe",
                                          "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1000)}]}]}]}
        try:
            if sess.post(otlp, json=body, timeout=30).status_code != 200:
                continue
        except requests.RequestException:
            continue
        acked = time.perf_counter()
        for _ in range(1000):
            r = sess.get(f"{api}/api/traces/{trace_id}", timeout=30)
            if r.status_code == 200:
                out.append(time.perf_counter() - acked)
                break
        else:
            out.append(float("inf"))
        time.sleep(0.2)


def run(args, work, report):
    data = os.path.join(work, "data")
    s = Spindle(args.bin_dir, data)
    s.start()
    # --- ingest, with a visibility probe running alongside
    import threading
    stop, seen = threading.Event(), []
    probe = threading.Thread(target=visibility_probe, args=(s, stop, seen), daemon=True)
    probe.start()
    load = subprocess.run(
        [os.path.join(args.bin_dir, "loadsim"), "--endpoint", f"127.0.0.1:{s.grpc}", "--rate", "0", "--duration", "3600s",
         "--max-spans", str(args.spans), "--concurrency", "8", "--batch", "1000", "--report", os.path.join(work, "loadsim.json")],
        capture_output=True, text=True, timeout=7200,
    )
    if load.returncode != 0:
        raise RuntimeError(load.stderr[-2000:])
    stop.set()
    probe.join(timeout=60)
    ls = json.load(open(os.path.join(work, "loadsim.json")))
    report["visibility_after_ack"] = {
        "probes": len(seen), "readable_within_50ms": sum(1 for v in seen if v < 0.05), "readable_within_1s": sum(1 for v in seen if v < 1.0),
        "p50_ms": round(pct(seen, 0.5) * 1000, 2) if seen else None, "max_ms": round(max(seen) * 1000, 2) if seen else None,
    }
    report["ingest"] = {
        "spans": ls["spans_acknowledged"], "spans_per_second": round(ls["spans_per_second"]),
        "megabytes_per_second": round(ls["megabytes_per_second"], 1), "export_latency_ms": ls["export_latency_ms"],
        "retried_requests": ls["requests_retried"], "peak_rss_mib": s.peak_rss_mib(),
    }
    assert s.stop() == 0
    blocks = glob.glob(os.path.join(data, "blocks", "**", "*.parquet"), recursive=True)
    size = sum(os.path.getsize(b) for b in blocks)
    report["storage"] = {"blocks": len(blocks), "bytes": size, "bytes_per_span": round(size / ls["spans_acknowledged"], 1)}
    s.start()
    total = s.sql("SELECT count(*) FROM spans")["rows"][0][0]
    report["spans_stored"] = total

    # --- samples (DuckDB over the blocks; not timed)
    import duckdb
    pattern = os.path.join(data, "blocks", "**", "*.parquet")
    duck = duckdb.connect()
    duck.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{pattern}')")
    hits = [r[0] for r in duck.execute(f"SELECT lower(hex(trace_id)) FROM spans WHERE parent_span_id IS NULL ORDER BY random() LIMIT {args.lookups}").fetchall()]
    misses = ["%032x" % random.getrandbits(128) for _ in range(args.lookups)]
    users = [r[0] for r in duck.execute(
        f"SELECT span_attrs_str['user.id'] FROM spans WHERE parent_span_id IS NULL ORDER BY random() LIMIT {args.searches}").fetchall()]
    users = [u[0] if isinstance(u, list) else u for u in users]
    services = ["svc-%03d" % random.randrange(200) for _ in range(args.searches)]
    start_ns = duck.execute("SELECT epoch_ns(min(start_time)) FROM spans").fetchone()[0]

    # --- Spindle
    api = f"http://127.0.0.1:{s.http}"
    sess = requests.Session()
    proto = {"Accept": "application/protobuf"}
    sp = {}
    sp["trace_by_id_hit"] = timed(lambda i: sess.get(f"{api}/api/v2/traces/{hits[i]}", headers=proto).raise_for_status(), len(hits))
    sp["trace_by_id_miss"] = timed(lambda i: sess.get(f"{api}/api/v2/traces/{misses[i]}", headers=proto).raise_for_status(), len(misses))
    sp["search_service_error"] = timed(lambda i: sess.get(f"{api}/api/search", params={
        "q": '{ resource.service.name = "%s" && status = error }' % services[i], "limit": 20}).raise_for_status(), len(services))
    sp["attribute_search"] = timed(lambda i: sess.get(f"{api}/api/search", params={"tags": f"user.id={users[i]}", "limit": 20}).raise_for_status(), len(users))
    rate_sql = ("SELECT service_name, date_bin(INTERVAL '1 minute', start_time) AS minute, count(*) AS spans FROM spans "
                f"WHERE start_time >= to_timestamp_nanos({start_ns}) AND start_time < to_timestamp_nanos({start_ns + 3600 * 10**9}) GROUP BY 1, 2")
    sp["rate_by_service_1h"] = timed(lambda i: s.sql(rate_sql), 5)
    found = sess.get(f"{api}/api/search", params={"tags": f"user.id={users[0]}"}).json()["traces"]
    assert found, "attribute search found nothing"
    report["spindle"] = {k: summary(v) for k, v in sp.items()}
    s.stop()

    # --- DuckDB over Spindle's Parquet
    dk = {}
    dk["trace_by_id_hit"] = timed(lambda i: duck.execute("SELECT * FROM spans WHERE trace_id = unhex(?)", [hits[i]]).to_arrow_table(), len(hits))
    dk["trace_by_id_miss"] = timed(lambda i: duck.execute("SELECT * FROM spans WHERE trace_id = unhex(?)", [misses[i]]).to_arrow_table(), len(misses))
    trace_summary = ("WITH m AS (SELECT DISTINCT trace_id FROM spans WHERE {cond} LIMIT 20) "
                     "SELECT s.trace_id, min(start_time), max(epoch_ns(start_time) + duration_ns), "
                     "any_value(name) FILTER (WHERE parent_span_id IS NULL), count(*) FROM spans s JOIN m USING (trace_id) GROUP BY 1")
    dk["search_service_error"] = timed(lambda i: duck.execute(trace_summary.format(cond="service_name = ? AND status_code = 'error'"), [services[i]]).to_arrow_table(), len(services))
    map_value = "span_attrs_str['user.id']"
    if isinstance(duck.execute("SELECT MAP {'a': 'b'}['a']").fetchone()[0], list):
        map_value = "span_attrs_str['user.id'][1]"
    dk["attribute_search"] = timed(lambda i: duck.execute(trace_summary.format(cond=f"{map_value} = ?"), [users[i]]).to_arrow_table(), len(users))
    dk["rate_by_service_1h"] = timed(lambda i: duck.execute(
        "SELECT service_name, epoch_ns(start_time) // 60000000000 AS minute, count(*) FROM spans "
        "WHERE epoch_ns(start_time) >= ? AND epoch_ns(start_time) < ? GROUP BY ALL",
        [start_ns, start_ns + 3600 * 10**9]).to_arrow_table(), 5)
    report["duckdb"] = {k: summary(v) for k, v in dk.items()}

    # --- ClickHouse (chdb): SigNoz-like MergeTree, loaded from the same Parquet
    from chdb import session as chs
    ch = chs.Session(os.path.join(work, "chdb"))
    ch.query("CREATE DATABASE IF NOT EXISTS bench")
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
    ch.query(f"""
        INSERT INTO bench.spans SELECT
            start_time, lower(hex(trace_id)), lower(hex(span_id)), ifNull(lower(hex(parent_span_id)), ''),
            ifNull(service_name, ''), name, kind, toUInt64(duration_ns), status_code,
            mapUpdate(CAST(span_attrs_str, 'Map(String, String)'), mapFilter((k, v) -> v != '', map(
                'http.request.method', ifNull(span_http_request_method, ''), 'http.route', ifNull(span_http_route, ''),
                'url.full', ifNull(span_url_full, ''), 'db.system', ifNull(span_db_system, ''), 'db.statement', ifNull(span_db_statement, ''),
                'rpc.service', ifNull(span_rpc_service, ''), 'rpc.method', ifNull(span_rpc_method, '')))),
            mapApply((k, v) -> (k, toFloat64(v)), CAST(span_attrs_int, 'Map(String, Int64)')),
            mapUpdate(CAST(resource_attrs_str, 'Map(String, String)'), map('k8s.pod.name', ifNull(resource_k8s_pod_name, '')))
        FROM file('{pattern}', Parquet)""")
    load_s = time.perf_counter() - t
    ch.query("OPTIMIZE TABLE bench.spans FINAL")
    ch_bytes = int(ch.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND table = 'spans' AND active", "CSV").bytes().decode().strip())
    ch_rows = int(ch.query("SELECT count() FROM bench.spans", "CSV").bytes().decode().strip())
    report["clickhouse_storage"] = {"rows": ch_rows, "bytes": ch_bytes, "bytes_per_span": round(ch_bytes / ch_rows, 1),
                                    "bulk_load_rows_per_second_from_parquet": round(ch_rows / load_s)}
    cq = {}
    cq["trace_by_id_hit"] = timed(lambda i: ch.query(f"SELECT * FROM bench.spans WHERE traceID = '{hits[i]}'", "CSV"), len(hits))
    cq["trace_by_id_miss"] = timed(lambda i: ch.query(f"SELECT * FROM bench.spans WHERE traceID = '{misses[i]}'", "CSV"), len(misses))
    ch_summary = ("SELECT traceID, min(timestamp), max(timestamp + toIntervalNanosecond(durationNano)), "
                  "anyIf(name, parentSpanID = ''), count() FROM bench.spans WHERE traceID IN "
                  "(SELECT DISTINCT traceID FROM bench.spans WHERE {cond} LIMIT 20) GROUP BY traceID")
    cq["search_service_error"] = timed(lambda i: ch.query(ch_summary.format(cond=f"serviceName = '{services[i]}' AND statusCode = 'error'"), "CSV"), len(services))
    cq["attribute_search"] = timed(lambda i: ch.query(ch_summary.format(cond=f"stringTagMap['user.id'] = '{users[i]}'"), "CSV"), len(users))
    cq["rate_by_service_1h"] = timed(lambda i: ch.query(
        f"SELECT serviceName, toStartOfMinute(timestamp) AS m, count() FROM bench.spans WHERE timestamp >= fromUnixTimestamp64Nano({start_ns}) "
        f"AND timestamp < fromUnixTimestamp64Nano({start_ns + 3600 * 10**9}) GROUP BY serviceName, m", "CSV"), 5)
    report["clickhouse"] = {k: summary(v) for k, v in cq.items()}
    ch.close()


def print_table(r):
    print(f"\nvisibility: {r.get('visibility_after_ack')}")
    print(f"\nspans: {r.get('spans_stored')}  ingest: {r['ingest']}  storage: {r['storage']}  clickhouse storage: {r.get('clickhouse_storage')}\n")
    print("| query | Spindle p50 / p99 (ms) | ClickHouse p50 / p99 (ms) | x Spindle (p50) | DuckDB p50 / p99 (ms) | x Spindle (p50) |")
    print("|---|---|---|---|---|---|")
    for q, v in r["spindle"].items():
        c, d = r["clickhouse"][q], r["duckdb"][q]
        print(f"| {q} | {v['p50_ms']} / {v['p99_ms']} | {c['p50_ms']} / {c['p99_ms']} | {c['p50_ms'] / v['p50_ms']:.2f} | "
              f"{d['p50_ms']} / {d['p99_ms']} | {d['p50_ms'] / v['p50_ms']:.2f} |")


if __name__ == "__main__":
    main()
