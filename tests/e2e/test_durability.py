"""Acknowledged spans survive `kill -9` and a restart, flushed to Parquet or not; SIGTERM
flushes and exits 0."""

import glob
import os
import time

import requests
from opentelemetry.sdk.trace.export import SpanExportResult

from otlp_util import assert_same_trace, get_trace_all_ways, make_trace
from spindle_proc import Spindle
from test_sdk_roundtrip import export_grpc, export_http


def blocks(s):
    return s.blocks()


def test_unflushed_spans_survive_kill_9():
    s = Spindle().start()
    try:
        sent = []
        for i in range(5):
            spans, trace_id = make_trace(f"crash-{i}")
            export = export_grpc if i % 2 else export_http
            assert export(s, spans) == SpanExportResult.SUCCESS
            sent.append((spans, trace_id))
        assert blocks(s) == [], "nothing should be flushed yet (default flush age is 2m)"
        s.kill9()
        s.start()
        for spans, trace_id in sent:
            for returned in get_trace_all_ways(s.api, trace_id):
                assert_same_trace(spans, returned)
    finally:
        s.stop()


def test_flushed_and_unflushed_spans_survive_kill_9():
    s = Spindle(extra_args=["--flush-max-age", "1s"]).start()
    try:
        early, early_id = make_trace("flushed-svc")
        assert export_http(s, early) == SpanExportResult.SUCCESS
        # Wait until the block is written and committed (the flush counter moves after the commit).
        deadline = time.time() + 30
        while time.time() < deadline:
            committed = "spindle_storage_flushes_total 0" not in requests.get(f"{s.api}/metrics").text
            if committed and blocks(s):
                break
            time.sleep(0.2)
        assert blocks(s), "a block should have been flushed"
        assert "spindle_storage_flushes_total 1" in requests.get(f"{s.api}/metrics").text
        late, late_id = make_trace("unflushed-svc")
        assert export_grpc(s, late) == SpanExportResult.SUCCESS
        s.kill9()
        s.start()
        for spans, trace_id in [(early, early_id), (late, late_id)]:
            for returned in get_trace_all_ways(s.api, trace_id):
                assert_same_trace(spans, returned)
        r = s.sql("SELECT service_name, count(*) FROM spans GROUP BY 1 ORDER BY 1")
        assert r.json()["rows"] == [["flushed-svc", 4], ["unflushed-svc", 4]]
    finally:
        s.stop()


def test_snapshot_taken_with_spans_unflushed_then_restart_brings_every_span_back():
    """A tenant that crosses the flush size is flushed (and the shard snapshots) while another
    tenant's spans stay unflushed: the snapshot holds only block metadata, the unflushed spans
    stay in the Raft log, and after kill -9 both tenants' spans are all back, none twice."""
    s = Spindle(extra_args=["--flush-max-size", "64KiB", "--flush-max-age", "1h"]).start()
    try:
        quiet, quiet_id = make_trace("quiet-svc")
        assert export_grpc(s, quiet, tenant="quiet") == SpanExportResult.SUCCESS
        busy = []
        while not blocks(s):
            spans, trace_id = make_trace("busy-svc")
            assert export_http(s, spans, tenant="busy") == SpanExportResult.SUCCESS
            busy.append((spans, trace_id))
            assert len(busy) < 2000, "the busy tenant never crossed the flush size"
        def snapshotted():
            shard = requests.get(f"{s.api}/admin/status").json()["shards"][0]
            return shard["snapshot"] is not None and shard["unflushed_bytes"] > 0
        deadline = time.time() + 30
        while not snapshotted():
            assert time.time() < deadline, requests.get(f"{s.api}/admin/status").text
            time.sleep(0.2)
        shard = requests.get(f"{s.api}/admin/status").json()["shards"][0]
        assert shard["snapshot"] < shard["last_applied"], "the snapshot stops before the quiet tenant's spans"
        late, late_id = make_trace("busy-svc")
        assert export_grpc(s, late, tenant="busy") == SpanExportResult.SUCCESS
        busy.append((late, late_id))
        s.kill9()
        s.start()
        for returned in get_trace_all_ways(s.api, quiet_id, tenant="quiet"):
            assert_same_trace(quiet, returned)
        for spans, trace_id in [busy[0], busy[-1]]:
            for returned in get_trace_all_ways(s.api, trace_id, tenant="busy"):
                assert_same_trace(spans, returned)
        assert s.sql("SELECT count(*) FROM spans", tenant="busy").json()["rows"] == [[4 * len(busy)]]
        assert s.sql("SELECT count(*) FROM spans", tenant="quiet").json()["rows"] == [[4]]
    finally:
        s.stop()


def test_sigterm_flushes_and_exits_zero():
    s = Spindle().start()
    try:
        spans, trace_id = make_trace("term-svc")
        assert export_grpc(s, spans) == SpanExportResult.SUCCESS
        assert s.terminate() == 0
        assert len(blocks(s)) == 1
        shard_logs = glob.glob(os.path.join(s.data_dir, "data", "raft", "shards", "**", "*.log"), recursive=True)
        assert all(os.path.getsize(p) == 0 for p in shard_logs), "the shard's raft log is purged after the final flush"
        s.start()
        for returned in get_trace_all_ways(s.api, trace_id):
            assert_same_trace(spans, returned)
        # The trace is found through search from the block too.
        r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=term-svc"})
        assert len(r.json()["traces"]) == 1
    finally:
        s.stop()
