#!/usr/bin/env python3
"""Block lifecycle benchmark: ingest N spans with loadsim into `spindle all` (compactor off),
measure bytes per span of the flushed blocks, let the compactor merge them, measure bytes per
span again, then time trace-by-id lookups (cold, then warm) over the compacted blocks. The
block store is a local directory (`--store fs`) or a moto S3 server on 127.0.0.1 (`--store s3`).
Run through `bash loadtest/bench-lifecycle.sh`."""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from object_stores import S3Backend, free_port  # noqa: E402


def pct(values, p):
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p))] * 1000, 2)


class Node:
    def __init__(self, bin_dir, work, store_args, env):
        self.bin, self.work, self.store_args, self.env = os.path.join(bin_dir, "spindle"), work, store_args, env
        self.http, self.grpc, self.otlp_http = free_port(), free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.http}"

    def start(self, extra):
        log = open(os.path.join(self.work, "spindle.log"), "ab")
        args = [self.bin, "--data-dir", os.path.join(self.work, "data"), "--http-addr", f"127.0.0.1:{self.http}",
                "--otlp-grpc-addr", f"127.0.0.1:{self.grpc}", "--otlp-http-addr", f"127.0.0.1:{self.otlp_http}"]
        self.proc = subprocess.Popen(args + self.store_args + extra, stdout=log, stderr=log, env={**os.environ, **self.env})
        for _ in range(1200):
            try:
                if requests.get(self.api + "/ready", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("spindle did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=1200)

    def metric(self, name):
        for line in requests.get(self.api + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def sql(self, q):
        r = requests.post(self.api + "/api/v1/sql", json={"query": q}, timeout=1200)
        r.raise_for_status()
        return r.json()["rows"]


def is_span_block(path):
    """Span blocks (`<tenant>/blocks/<cluster>/shard-N/<file>`), not the metrics generator's
    sample files (`<tenant>/metrics/<file>`), which an all-in-one also writes."""
    parts = path.replace(os.sep, "/").split("/")
    return path.endswith(".parquet") and len(parts) >= 4 and parts[-4] == "blocks" and parts[-2].startswith("shard-")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=10_000_000)
    ap.add_argument("--store", choices=["fs", "s3"], default="fs")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--lookups", type=int, default=200)
    ap.add_argument("--report", default="bench-lifecycle.json")
    ap.add_argument("--keep", action="store_true", help="keep the data and blocks (fs only) for later runs")
    args = ap.parse_args()
    random.seed(11)
    work = tempfile.mkdtemp(prefix="spindle-lifecycle-")
    report = {"store": args.store, "spans_target": args.spans}
    if args.store == "s3":
        s3 = S3Backend()
        url = s3.new_url()
        store_args, env = ["--storage-url", url] + s3.args(), s3.env()

        def listing():
            prefix = url[len("s3://spindle-test/"):] + "/"
            out = []
            for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket="spindle-test", Prefix=prefix):
                out += [(o["Key"], o["Size"]) for o in page.get("Contents", []) if is_span_block(o["Key"])]
            return out
    else:
        blocks = os.path.join(work, "blocks")
        store_args, env = ["--storage-url", "file://" + blocks], {}

        def listing():
            out = []
            for root, _, files in os.walk(blocks):
                out += [(os.path.join(root, f), os.path.getsize(os.path.join(root, f)))
                        for f in files if is_span_block(os.path.join(root, f))]
            return out
    node = Node(args.bin_dir, work, store_args, env)
    try:
        node.start(["--compactor", "false"])
        t = time.time()
        load = subprocess.run(
            [os.path.join(args.bin_dir, "loadsim"), "--endpoint", f"127.0.0.1:{node.grpc}", "--rate", "0",
             "--duration", "7200s", "--max-spans", str(args.spans), "--concurrency", "8", "--batch", "1000",
             "--report", os.path.join(work, "loadsim.json")], capture_output=True, text=True, timeout=7200)
        if load.returncode != 0:
            raise RuntimeError(load.stderr[-2000:])
        ls = json.load(open(os.path.join(work, "loadsim.json")))
        spans = ls["spans_acknowledged"]
        report["ingest"] = {"spans": spans, "spans_per_second": round(ls["spans_per_second"]), "seconds": round(time.time() - t)}
        assert node.stop() == 0
        before = listing()
        report["before_compaction"] = {"blocks": len(before), "bytes": sum(s for _, s in before),
                                       "bytes_per_span": round(sum(s for _, s in before) / spans, 1)}
        print(report, flush=True)

        node.start(["--compaction-interval", "1s", "--block-delete-grace", "1s", "--retention-interval", "1s"])
        t = time.time()
        # Settled: jobs ran, replaced blocks are deleted, and nothing changed for 15 s (a window
        # holding a single block has nothing to merge, so not every block gets compacted).
        settled_since, last = None, None
        while True:
            time.sleep(2)
            files = sorted(listing())
            done = node.metric("spindle_compactor_jobs_done_total")
            if done > 0 and node.metric("spindle_storage_blocks") <= len(files) and files == last:
                settled_since = settled_since or time.time()
                if time.time() - settled_since >= 15:
                    break
            else:
                settled_since = None
            last = files
            if time.time() - t > 3600:
                raise RuntimeError("compaction did not settle within an hour")
        after = listing()
        report["compaction"] = {"seconds": round(time.time() - t), "jobs": node.metric("spindle_compactor_jobs_done_total"),
                                "duplicates_removed": node.metric("spindle_compactor_duplicate_spans_removed_total")}
        report["after_compaction"] = {"blocks": len(after), "bytes": sum(s for _, s in after),
                                      "bytes_per_span": round(sum(s for _, s in after) / spans, 1)}
        stored = node.sql("SELECT count(*) FROM spans")[0][0]
        report["spans_stored"] = stored
        print(report, flush=True)

        ids = [r[0] for r in node.sql(
            f"SELECT encode(trace_id, 'hex') FROM spans WHERE parent_span_id IS NULL ORDER BY random() LIMIT {args.lookups}")]
        sess = requests.Session()
        proto = {"Accept": "application/protobuf"}

        def lookups():
            out = []
            for i in ids:
                t0 = time.perf_counter()
                sess.get(f"{node.api}/api/v2/traces/{i}", headers=proto, timeout=60).raise_for_status()
                out.append(time.perf_counter() - t0)
            return out
        cold, warm = lookups(), lookups()
        report["trace_by_id"] = {"cold_p50_ms": pct(cold, 0.5), "cold_p99_ms": pct(cold, 0.99),
                                 "warm_p50_ms": pct(warm, 0.5), "warm_p99_ms": pct(warm, 0.99), "n": len(ids)}
        node.stop()
    finally:
        if node.__dict__.get("proc") and node.proc.poll() is None:
            node.proc.kill()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
