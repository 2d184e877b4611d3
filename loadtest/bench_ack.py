"""Acknowledgement benchmark: how fast Spindle acknowledges OTLP/gRPC exports of 500 spans.

Starts release binaries on loopback with fresh data dirs (fsync on), runs `ackbench` against
them and prints one JSON object with every figure:

- all-in-one `spindle`;
- a cluster as the README runs it: 3 storage nodes (8 shards, replication factor 3) and one
  ingester.

For each: light load (1 caller, 20 requests/s: the latency of one export), 4 callers, and
16 callers (saturation). Every figure also has the CPU each process used while it ran
(user + system, from /proc), as CPU-seconds per million acknowledged spans, per role:
`ingester`, `all`, and for storage nodes the node that leads most shards (`storage_leader`,
its followers' work included) and the others (`storage_follower`). Usage:

    python3 loadtest/bench_ack.py <release-bin-dir> [seconds] [--shards N] [--skip-all-in-one]
        [extra storage-node options...]

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

TICKS = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid):
    """User + system CPU of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def shards_led(http_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/admin/status", timeout=2) as r:
            status = json.load(r)
        return sum(1 for s in status.get("shards", []) if s.get("role") == "Leader")
    except OSError:
        return 0


def start(args, log):
    return subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, "SPINDLE_LOG": "warn"})


class Setup:
    """Processes of one setup: (role, process, http port)."""

    def __init__(self):
        self.procs = []
        self.endpoint = None

    def stop(self):
        for _, p, _ in self.procs:
            p.kill()
            p.wait()


def all_in_one(bins, root, _shards, _extra):
    s = Setup()
    http, grpc, otlp_http = free_port(), free_port(), free_port()
    log = open(os.path.join(root, "all.log"), "ab")
    s.procs.append(("all", start([f"{bins}/spindle", "--data-dir", os.path.join(root, "all"), "--http-addr",
                                  f"127.0.0.1:{http}", "--otlp-grpc-addr", f"127.0.0.1:{grpc}",
                                  "--otlp-http-addr", f"127.0.0.1:{otlp_http}"], log), http))
    wait_ready([http])
    s.endpoint = f"127.0.0.1:{grpc}"
    return s


def cluster(bins, root, shards, extra, nodes=3):
    s = Setup()
    blocks = "file://" + os.path.join(root, "blocks")
    internal = [free_port() for _ in range(nodes)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in internal)
    log = open(os.path.join(root, "cluster.log"), "ab")
    for i, port in enumerate(internal):
        http = free_port()
        s.procs.append(("storage", start([
            f"{bins}/spindle", "storage", "--node-id", str(i + 1), "--data-dir", os.path.join(root, f"node-{i + 1}"),
            "--storage-url", blocks, "--grpc-addr", f"127.0.0.1:{port}", "--advertise-addr", f"127.0.0.1:{port}",
            "--http-addr", f"127.0.0.1:{http}", "--seeds", seeds, "--bootstrap-expect", str(nodes), "--shards", str(shards),
            "--replication-factor", "3", *extra], log), http))
    wait_ready([p for _, _, p in s.procs])
    http, grpc, otlp_http = free_port(), free_port(), free_port()
    s.procs.append(("ingester", start([f"{bins}/spindle", "ingester", "--seeds", seeds, "--http-addr",
                                       f"127.0.0.1:{http}", "--otlp-grpc-addr", f"127.0.0.1:{grpc}",
                                       "--otlp-http-addr", f"127.0.0.1:{otlp_http}"], log), http))
    wait_ready([http])
    s.endpoint = f"127.0.0.1:{grpc}"
    return s


def ackbench(bins, setup, seconds, concurrency, rate=0.0):
    warmup = 3
    proc = subprocess.Popen(
        [f"{bins}/ackbench", "--endpoint", setup.endpoint, "--batch", "500", "--concurrency", str(concurrency),
         "--rate", str(rate), "--duration", str(seconds), "--warmup", str(warmup)],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(warmup)
    before = [cpu_seconds(p.pid) for _, p, _ in setup.procs]
    client_before = cpu_seconds(proc.pid)
    started = time.time()
    time.sleep(seconds)
    after = [cpu_seconds(p.pid) for _, p, _ in setup.procs]
    client_after = cpu_seconds(proc.pid)
    elapsed = time.time() - started
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ackbench failed: {proc.returncode}")
    r = json.loads(out)
    result = {k: r[k] for k in ("spans_per_second", "requests", "errors", "ack_latency_ms")}
    spans_m = r["spans_per_second"] * elapsed / 1e6
    led = [shards_led(port) if role == "storage" else 0 for role, _, port in setup.procs]
    top = max(range(len(led)), key=lambda i: led[i]) if any(led) else None
    per_role = {}
    for i, (role, _, _) in enumerate(setup.procs):
        name = role
        if role == "storage":
            name = "storage_leader" if i == top else "storage_follower"
        per_role.setdefault(name, []).append(round((after[i] - before[i]) / spans_m, 2) if spans_m else None)
    total = sum(a - b for a, b in zip(after, before))
    result["cpu_s_per_million_spans"] = per_role
    result["servers_cpu_us_per_span"] = round(total / spans_m, 2) if spans_m else None
    result["client_cpu_us_per_span"] = round((client_after - client_before) / spans_m, 2) if spans_m else None
    result["shards_led"] = [n for (role, _, _), n in zip(setup.procs, led) if role == "storage"]
    return result


def main():
    args = sys.argv[1:]
    bins = args.pop(0)
    seconds = float(args.pop(0)) if args and not args[0].startswith("--") else 20
    shards, skip_all = 8, False
    extra = []
    while args:
        a = args.pop(0)
        if a == "--shards":
            shards = int(args.pop(0))
        elif a == "--skip-all-in-one":
            skip_all = True
        else:
            extra.append(a)
    report = {"seconds": seconds, "shards": shards, "extra": extra}
    setups = [("cluster_3_nodes_rf3", cluster)]
    if not skip_all:
        setups.insert(0, ("all_in_one", all_in_one))
    for name, make in setups:
        root = tempfile.mkdtemp(prefix=f"spindle-bench-{name}-")
        setup = make(bins, root, shards, extra)
        try:
            report[name] = {
                "light_1_caller_20_per_s": ackbench(bins, setup, seconds, 1, rate=20),
                "4_callers": ackbench(bins, setup, seconds, 4),
                "16_callers": ackbench(bins, setup, seconds, 16),
            }
        finally:
            setup.stop()
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(report, indent=2), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
