"""Acknowledgement benchmark: how fast Spindle acknowledges OTLP/gRPC exports of 500 spans.

Starts release binaries on loopback with fresh data dirs (fsync on), runs `ackbench` against
them and prints one JSON object with every figure:

- all-in-one `spindle`;
- a cluster: 3 storage nodes (4 shards, replication factor 3) and one ingester.

For each: light load (1 caller, 20 requests/s: the latency of one export), 4 callers, and
16 callers (saturation). Usage:

    python3 loadtest/bench_ack.py <release-bin-dir> [seconds] [extra storage-node options...]

e.g. `... 20 --shards-per-tenant 1` puts a tenant's traces on one shard (one Raft entry per
request instead of one per shard).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def wait_ready(ports, timeout=120):
    deadline = time.time() + timeout
    while not all(ready(p) for p in ports):
        if time.time() > deadline:
            raise RuntimeError(f"not ready: {ports}")
        time.sleep(0.2)


def start(args, log):
    return subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "SPINDLE_LOG": "warn"})


def all_in_one(bins, root):
    http, grpc, otlp_http = free_port(), free_port(), free_port()
    log = open(os.path.join(root, "all.log"), "ab")
    procs = [start([f"{bins}/spindle", "--data-dir", os.path.join(root, "all"), "--http-addr", f"127.0.0.1:{http}",
                    "--otlp-grpc-addr", f"127.0.0.1:{grpc}", "--otlp-http-addr", f"127.0.0.1:{otlp_http}"], log)]
    wait_ready([http])
    return procs, f"127.0.0.1:{grpc}"


def cluster(bins, root, extra=()):
    blocks = "file://" + os.path.join(root, "blocks")
    internal = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in internal)
    procs, http_ports = [], []
    log = open(os.path.join(root, "cluster.log"), "ab")
    for i, port in enumerate(internal):
        http = free_port()
        http_ports.append(http)
        procs.append(start([
            f"{bins}/spindle", "storage", "--node-id", str(i + 1), "--data-dir", os.path.join(root, f"node-{i + 1}"),
            "--storage-url", blocks, "--grpc-addr", f"127.0.0.1:{port}", "--advertise-addr", f"127.0.0.1:{port}",
            "--http-addr", f"127.0.0.1:{http}", "--seeds", seeds, "--bootstrap-expect", "3", "--shards", "4",
            "--replication-factor", "3", *extra], log))
    wait_ready(http_ports)
    http, grpc, otlp_http = free_port(), free_port(), free_port()
    procs.append(start([f"{bins}/spindle", "ingester", "--seeds", seeds, "--http-addr", f"127.0.0.1:{http}",
                        "--otlp-grpc-addr", f"127.0.0.1:{grpc}", "--otlp-http-addr", f"127.0.0.1:{otlp_http}"], log))
    wait_ready([http])
    return procs, f"127.0.0.1:{grpc}"


def ackbench(bins, endpoint, seconds, concurrency, rate=0.0):
    out = subprocess.run(
        [f"{bins}/ackbench", "--endpoint", endpoint, "--batch", "500", "--concurrency", str(concurrency),
         "--rate", str(rate), "--duration", str(seconds), "--warmup", "3"],
        capture_output=True, text=True, check=True,
    )
    r = json.loads(out.stdout)
    return {k: r[k] for k in ("spans_per_second", "requests", "errors", "ack_latency_ms")}


def main():
    bins = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20
    extra = sys.argv[3:]
    report = {}
    setups = [("all_in_one", all_in_one), ("cluster_3_nodes_rf3", lambda b, r: cluster(b, r, extra))]
    for name, setup in setups:
        root = tempfile.mkdtemp(prefix=f"spindle-bench-{name}-")
        procs, endpoint = setup(bins, root)
        try:
            report[name] = {
                "light_1_caller_20_per_s": ackbench(bins, endpoint, seconds, 1, rate=20),
                "4_callers": ackbench(bins, endpoint, seconds, 4),
                "16_callers": ackbench(bins, endpoint, seconds, 16),
            }
        finally:
            for p in procs:
                p.kill()
                p.wait()
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
