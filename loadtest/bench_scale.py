"""Scale check of the cluster's write cost: the same offered load (a fixed rate of 500-span
OTLP/gRPC exports) on 3 storage nodes with 8 shards, then on 6 nodes with 16 shards (RF 3, one
ingester, fsync on). Doubling the nodes and shards should halve each storage node's share of
the writes: reported as CPU-seconds per million acknowledged spans per process (so a node's
share, not the machine's capacity: every process shares the same cores here). A third run
keeps each export on 8 shards (--shards-per-tenant 8) on the 6-node cluster.

    python3 loadtest/bench_scale.py <release-bin-dir> [seconds] [requests-per-second]
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time

import bench_ack as b


def run(bins, nodes, shards, seconds, rate, per_tenant=0):
    root = tempfile.mkdtemp(prefix=f"spindle-scale-{nodes}-")
    extra = ["--shards-per-tenant", str(per_tenant)] if per_tenant else []
    s = b.cluster(bins, root, shards, extra, nodes=nodes)
    try:
        r = b.ackbench(bins, s, seconds, 8, rate=rate)
        per = r["cpu_s_per_million_spans"]
        storage = per.get("storage_leader", []) + per.get("storage_follower", [])
        return {
            "nodes": nodes,
            "shards": shards,
            "shards_per_tenant": per_tenant or shards,
            "spans_per_second": round(r["spans_per_second"]),
            "errors": r["errors"],
            "ack_p50_ms": r["ack_latency_ms"].get("p50"),
            "storage_node_cpu_s_per_million_spans": storage,
            "storage_node_mean": round(sum(storage) / len(storage), 2),
            "storage_total": round(sum(storage), 2),
            "ingester": per.get("ingester"),
            "shards_led": r["shards_led"],
        }
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


def main():
    bins = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    report = {"seconds": seconds, "requests_per_second": rate, "runs": []}
    for nodes, shards, per_tenant in [(3, 8, 0), (6, 16, 0), (6, 16, 8)]:
        report["runs"].append(run(bins, nodes, shards, seconds, rate, per_tenant))
        print(json.dumps(report, indent=2), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
