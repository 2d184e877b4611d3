"""Ingest at about twice what this machine absorbs: Spindle refuses the excess with
RESOURCE_EXHAUSTED / 429 and retry hints, its memory stays under the bound its configuration
sets, every acknowledged span reads back (`loadsim --verify`), and queries keep answering."""

import threading
import time

import requests

import prom_text
from spindle_proc import Spindle
from test_loadsim import run_loadsim

# The budgets this test configures (MiB).
BUDGETS = {
    "--ingest-inflight-limit": 64,
    "--max-unflushed-size": 256,
    "--query-memory-limit": 128,
    "--memory-cache-size": 64,
    "--flush-max-size": 64,
}
# The memory bound of docs/operations.md ("Memory"): the budgets, a flush's working copies
# (sorted batch and Parquet buffers: two more flush sizes), the Raft log cache (64 MiB), the
# metrics generator's span queue (64 MiB) and ~400 MiB for the process itself (code, runtime,
# generator series, allocator slack).
BOUND_MIB = sum(BUDGETS.values()) + 2 * BUDGETS["--flush-max-size"] + 64 + 64 + 400


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_twice_the_capacity_is_refused_with_hints_memory_stays_bounded_and_nothing_acked_is_lost():
    args = []
    for flag, mib in BUDGETS.items():
        args += [flag, f"{mib}MiB"]
    s = Spindle(extra_args=args + ["--ingest-max-concurrent-requests", "16"]).start()
    try:
        query = f"127.0.0.1:{s.http_port}"
        # What the machine absorbs: as fast as the server takes it, a few requests in flight.
        rc, report, err = run_loadsim("--endpoint", s.otlp_grpc, "--services", "50", "--rate", "0",
                                      "--concurrency", "4", "--batch", "500", "--duration", "8s", "--seed", "1")
        assert rc == 0, err
        capacity = report["spans_per_second"]
        assert capacity > 1000, report

        peak = [0.0]
        answers = []
        done = threading.Event()

        def watch_memory():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib(s.proc.pid))
                time.sleep(0.2)

        def keep_querying():
            while not done.is_set():
                started = time.time()
                r = requests.get(s.api + "/api/search", params={"q": "{ status = error }", "limit": "5"}, timeout=60)
                answers.append((r.status_code, time.time() - started))
                r = s.sql("SELECT count(*) FROM spans")
                answers.append((r.status_code, time.time() - started))
                time.sleep(1)

        threads = [threading.Thread(target=watch_memory), threading.Thread(target=keep_querying)]
        for t in threads:
            t.start()
        try:
            # Twice that, from many concurrent clients.
            per_service = 2 * capacity / 50
            rc, report, err = run_loadsim("--endpoint", s.otlp_grpc, "--services", "50", "--rate", f"{per_service:.1f}",
                                          "--concurrency", "128", "--batch", "500", "--duration", "20s", "--seed", "2",
                                          "--verify", "--verify-sample", "2000", "--query-endpoint", query, timeout=600)
        finally:
            done.set()
            for t in threads:
                t.join()
        print(f"capacity {capacity:.0f} spans/s; offered twice that; report {report}; peak RSS {peak[0]:.0f} MiB; "
              f"queries {len(answers)} (slowest {max(a[1] for a in answers):.2f} s)")
        assert rc == 0, err
        assert report["lost_spans"] == 0 and report["verify"]["wrong_spans"] == 0, report
        assert report["spans_acknowledged"] > 0
        # The excess was refused with a retry hint (and the clients retried).
        assert report["retries_by_reason"].get("ResourceExhausted", 0) > 0, report
        m = prom_text.parse(requests.get(s.api + "/metrics", timeout=10).text)
        refused = {dict(l).get("reason"): v for (n, l), v in m.items() if n == "spindle_ingester_spans_rejected_total"}
        shed = sum(v for (n, l), v in m.items()
                   if n == "spindle_ingester_requests_total" and dict(l).get("outcome") == "shed")
        assert shed + sum(refused.values()) > 0, (refused, shed)
        print(f"refused spans by reason {refused}; shed requests {shed}")
        # Memory stayed under what the configuration allows.
        assert peak[0] < BOUND_MIB, f"peak RSS {peak[0]:.0f} MiB over the bound of {BOUND_MIB} MiB"
        # Queries kept answering, none refused.
        assert answers and all(code == 200 for code, _ in answers), answers
        assert requests.get(s.api + "/ready", timeout=5).status_code == 200
    finally:
        s.stop()
