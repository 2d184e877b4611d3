"""The object store goes away during ingest (connections reset, then refused) and comes back:
ingest keeps being acknowledged (spans wait in the Raft log and memory), flushes resume on their
own, and every acknowledged span is readable afterwards. Runs against the S3 and Azure servers
(SPINDLE_TEST_BACKEND=s3|azure) through a TCP proxy the test cuts."""

import time

import pytest
import requests

from cluster_proc import Probe, count_spans
from object_stores import FlakyProxy, backend
from spindle_proc import Spindle


@pytest.mark.skipif(backend().name == "fs", reason="needs a network object store (SPINDLE_TEST_BACKEND=s3|azure)")
def test_store_outage_during_ingest_loses_nothing():
    proxy = FlakyProxy(backend().port)
    s = Spindle(store_via=proxy.port, extra_args=["--flush-max-age", "1s", "--compactor", "false"]).start()
    probe = Probe(s, traces=50, interval=0.05, tenant="probe").start()
    try:
        time.sleep(3)
        assert s.blocks(), "blocks are flushed while the store is up"
        proxy.down()
        down_at = time.time()
        time.sleep(2)
        during = len(s.blocks())
        time.sleep(8)
        assert len(s.blocks()) == during, "nothing can reach the store while it is down"
        acked_during = [r for r in probe.results if r[0] > down_at and r[2]]
        assert acked_during, "ingest keeps being acknowledged while the store is down"
        proxy.up()
        time.sleep(3)
        probe.stop()
        acked = probe.acked_traces()
        # Everything acknowledged ends up in blocks once the store is back.
        deadline = time.time() + 120
        while True:
            unflushed = [l for l in requests.get(s.api + "/metrics", timeout=5).text.splitlines()
                         if l.startswith("spindle_storage_unflushed_bytes ")]
            if unflushed and float(unflushed[0].split()[1]) == 0 and len(s.blocks()) > during:
                break
            assert time.time() < deadline, f"flushes did not resume: {unflushed}"
            time.sleep(0.5)
        assert count_spans(s, "probe") == len(acked)
        got = s.sql("SELECT count(DISTINCT trace_id) FROM spans", tenant="probe").json()["rows"][0][0]
        assert got == len(set(acked))
        # And after a crash, from the blocks alone.
        s.kill9()
        s.start()
        assert count_spans(s, "probe") == len(acked)
    finally:
        probe.stop()
        s.stop()
        proxy.down()
