"""The block lifecycle end to end: compaction merges the small blocks of several flushes into
one, drops spans stored twice, keeps every span readable exactly once even when the compactor is
killed with SIGKILL mid-merge; retention (reloaded from the config file without a restart) removes
expired blocks from queries and from the object store."""

import os
import random
import time

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from cluster_proc import count_spans, duplicates
from spindle_proc import Spindle, free_port

FAST_FLUSH = ["--flush-max-age", "1s"]


def request(spans, service="lifecycle"):
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])])


def make_spans(traces, spans_per_trace=3, start_ns=None):
    start = start_ns or time.time_ns()
    out = []
    for _ in range(traces):
        trace_id = random.randbytes(16)
        for i in range(spans_per_trace):
            out.append(Span(trace_id=trace_id, span_id=random.randbytes(8), name=f"op-{i}",
                            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=start + i,
                            end_time_unix_nano=start + i + 1_000_000))
    return out


def send(s, spans, tenant="acme"):
    r = requests.post(s.otlp_http + "/v1/traces", data=request(spans).SerializeToString(), timeout=30,
                      headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": tenant})
    assert r.status_code == 200, r.text


def metric(s, name):
    for line in requests.get(s.api + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_flushes(s, n, timeout=60):
    deadline = time.time() + timeout
    while metric(s, "spindle_storage_flushes_total") < n:
        assert time.time() < deadline, f"fewer than {n} flushes"
        time.sleep(0.2)


def trace_span_ids(s, trace_hex, tenant="acme"):
    r = requests.get(f"{s.api}/api/v2/traces/{trace_hex}", headers={"X-Scope-OrgID": tenant}, timeout=30)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    ids = []
    for rs in r.json()["trace"].get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            ids += [sp["spanId"] for sp in ss.get("spans", [])]
    return ids


def ingest_in_flushes(s, rounds, traces_per_round, tenant="acme"):
    """Sends `rounds` batches, each in its own block; every round also sends the previous round's
    spans again inside a different request (so the push dedupe does not catch them): those spans
    end up in two blocks. Returns (all distinct spans, spans sent twice)."""
    sent, again = [], []
    previous = []
    for i in range(rounds):
        spans = make_spans(traces_per_round)
        resend = previous[: len(previous) // 4]
        send(s, spans + resend, tenant)
        again += resend
        sent += spans
        previous = spans
        wait_flushes(s, i + 1)
    return sent, again


def test_compaction_merges_blocks_and_removes_duplicates():
    s = Spindle(extra_args=FAST_FLUSH + ["--compactor", "false"]).start()
    try:
        sent, again = ingest_in_flushes(s, rounds=5, traces_per_round=40)
        before = s.blocks()
        assert len(before) == 5, before
        assert count_spans(s, "acme") == len(sent) + len(again)
        assert duplicates(s, "acme") == len(again)
        s.terminate()
        s.extra_args = FAST_FLUSH + ["--compaction-interval", "1s", "--block-delete-grace", "1s",
                                     "--retention-interval", "1s"]
        s.start()
        deadline = time.time() + 60
        while len(s.blocks()) != 1 or metric(s, "spindle_compactor_jobs_done_total") < 1:
            assert time.time() < deadline, f"blocks not compacted: {s.blocks()}"
            time.sleep(0.5)
        assert s.blocks()[0].split("/")[-1].startswith("c-"), s.blocks()
        assert count_spans(s, "acme") == len(sent)
        assert duplicates(s, "acme") == 0
        assert metric(s, "spindle_compactor_duplicate_spans_removed_total") == len(again)
        by_trace = {}
        for sp in sent:
            by_trace.setdefault(sp.trace_id.hex(), []).append(sp)
        for trace_hex in random.sample(sorted(by_trace), 10):
            got = trace_span_ids(s, trace_hex)
            assert len(got) == len(by_trace[trace_hex]) == len(set(got)), trace_hex
        r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=lifecycle", "limit": 1000},
                         headers={"X-Scope-OrgID": "acme"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["traces"]) == len(by_trace)
        # Survives a restart: the swap is in the Raft log and the snapshot.
        s.kill9()
        s.start()
        assert count_spans(s, "acme") == len(sent) and duplicates(s, "acme") == 0
    finally:
        s.stop()


def test_compactor_killed_mid_merge_leaves_every_span_exactly_once():
    # One storage node serving its internal API, and a separate compactor process that is
    # killed with SIGKILL at random moments while it merges.
    internal = f"127.0.0.1:{free_port()}"
    store = Spindle(extra_args=FAST_FLUSH + ["--compactor", "false", "--grpc-addr", internal, "--advertise-addr",
                                             internal, "--block-delete-grace", "2s", "--retention-interval", "1s"])
    store.start()
    try:
        sent, again = ingest_in_flushes(store, rounds=8, traces_per_round=2500)
        expected = len(sent)
        assert duplicates(store, "acme") == len(again) > 0
        compactor_args = ["--compaction-interval", "1s", "--compaction-target-size", "1GiB",
                          "--compaction-lease", "5s"]
        compactor = Spindle(role="compactor", seeds=[internal], storage_url=store.storage_url
                            or "file://" + os.path.join(store.data_dir, "data", "blocks"), extra_args=compactor_args)
        kills = 0
        for _ in range(6):
            compactor.start()
            time.sleep(random.uniform(1.0, 3.0))
            compactor.kill9()
            kills += 1
            # At every moment each span is readable, at most as often as it was stored.
            assert count_spans(store, "acme") >= expected
            distinct = store.sql("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)", tenant="acme")
            assert distinct.json()["rows"][0][0] == expected
        compactor.start()
        deadline = time.time() + 120
        while duplicates(store, "acme") != 0 or len([b for b in store.blocks() if "/c-" not in b]) > 0:
            assert time.time() < deadline, f"compaction did not finish: {store.blocks()}"
            time.sleep(1)
        assert count_spans(store, "acme") == expected
        compactor.stop()
        log = compactor.read_log()
        print(f"killed the compactor {kills} times; {log.count('compacted')} jobs committed; blocks {store.blocks()}")
    finally:
        store.stop()


def write_config(path, text):
    with open(path, "w") as f:
        f.write(text)
    # A new mtime even on coarse-grained filesystems.
    t = time.time() + 1
    os.utime(path, (t, t))


def test_retention_expires_blocks_and_reloads_from_the_config_file():
    config = os.path.join(Spindle().data_dir, "spindle.yaml")
    write_config(config, "tenants:\n  other: { retention: 30d }\n")
    s = Spindle(extra_args=FAST_FLUSH + ["--config", config, "--retention-interval", "1s",
                                         "--block-delete-grace", "1s", "--compactor", "false"]).start()
    try:
        day = 86_400 * 10**9
        old = make_spans(5, start_ns=time.time_ns() - 3 * day)
        send(s, old, "short")
        send(s, old, "keep")
        wait_flushes(s, 2)
        fresh = make_spans(5)
        send(s, fresh, "short")
        wait_flushes(s, 3)
        assert count_spans(s, "short") == 30
        old_trace = old[0].trace_id.hex()
        assert trace_span_ids(s, old_trace, "short")
        files_before = len(s.blocks())
        # The operator shortens tenant `short`'s retention: applied without a restart.
        write_config(config, "tenants:\n  other: { retention: 30d }\n  short: { retention: 1d }\n")
        deadline = time.time() + 60
        while count_spans(s, "short") != 15:
            assert time.time() < deadline, "expired spans are still queryable"
            time.sleep(0.5)
        assert trace_span_ids(s, old_trace, "short") == []
        assert trace_span_ids(s, fresh[0].trace_id.hex(), "short")
        r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=lifecycle", "start": 0,
                         "end": int(time.time())}, headers={"X-Scope-OrgID": "short"}, timeout=30)
        assert old_trace not in [t["traceID"] for t in r.json()["traces"]]
        # Other tenants keep theirs; the expired block's file goes after the grace period.
        assert count_spans(s, "keep") == 15
        while len(s.blocks()) != files_before - 1:
            assert time.time() < deadline, f"expired block file not deleted: {s.blocks()}"
            time.sleep(0.5)
        # Still gone after a restart.
        s.kill9()
        s.start()
        assert count_spans(s, "short") == 15
        assert trace_span_ids(s, old_trace, "short") == []
    finally:
        s.stop()
