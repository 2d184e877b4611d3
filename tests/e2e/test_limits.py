"""Per-tenant limits (ingest rate, span sizes, concurrent queries, tenants per query) from the config file, reloaded
without a restart; node-wide admission (concurrent requests, request timeouts, SQL answer caps);
every refusal counted in /metrics by tenant and reason."""

import os
import socket
import threading
import time

import grpc
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import prom_text
from otlp_util import span_batch
from spindle_proc import Spindle

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def write_config(path, text):
    with open(path, "w") as f:
        f.write(text)
    t = time.time() + 1
    os.utime(path, (t, t))


def request(batch_no, n=100, name_bytes=300):
    return span_batch(batch_no, n, "n" * name_bytes, "limits")


def metrics(s):
    return prom_text.parse(requests.get(s.api + "/metrics", timeout=10).text)


def metric(parsed, name, **labels):
    want = set(labels.items())
    return sum(v for (n, l), v in parsed.items() if n == name and want <= set(l))


def count(s, tenant):
    r = s.sql("SELECT count(*) FROM spans", tenant=tenant)
    assert r.status_code == 200, r.text
    return r.json()["rows"][0][0]


def test_tenant_ingest_rate_is_enforced_with_retry_hints_and_reloaded():
    config = os.path.join(Spindle().data_dir, "spindle.yaml")
    write_config(config, "tenants:\n  slow:\n    limits: { ingest_rate: 20KiB, ingest_burst: 60KiB }\n")
    s = Spindle(extra_args=["--config", config, "--retention-interval", "1s"]).start()
    try:
        url = s.otlp_http + "/v1/traces"
        body_size = len(request(1).SerializeToString())
        assert 30_000 < body_size < 60_000, body_size
        accepted, refused = 0, None
        for b in range(1, 20):
            r = requests.post(url, data=request(b).SerializeToString(), headers={**PROTOBUF, "X-Scope-OrgID": "slow"})
            if r.status_code == 200:
                accepted += 100
            else:
                refused = r
                break
        assert refused is not None, "the rate limit never refused"
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "ingest rate" in refused.text
        assert 100 <= accepted <= 200, accepted  # the 60 KiB burst holds one or two requests

        # gRPC: RESOURCE_EXHAUSTED with a RetryInfo detail.
        channel = grpc.insecure_channel(s.otlp_grpc)
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        try:
            for b in range(100, 110):
                stub.Export(request(b), metadata=[("x-scope-orgid", "slow")], timeout=10)
                accepted += 100
            raise AssertionError("gRPC was never refused")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert "ingest rate" in e.details()
            details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
            assert b"RetryInfo" in details
        # Another tenant is not limited.
        for b in range(200, 210):
            r = requests.post(url, data=request(b).SerializeToString(), headers={**PROTOBUF, "X-Scope-OrgID": "fast"})
            assert r.status_code == 200, r.text
        m = metrics(s)
        assert metric(m, "spindle_ingester_spans_rejected_total", tenant="slow", reason="rate_limited") >= 200
        assert metric(m, "spindle_ingester_spans_rejected_total", tenant="fast") == 0

        # The limit is lifted in the file: after the reload the same tenant is accepted again.
        write_config(config, "limits: { ingest_rate: 0 }\n")
        deadline = time.time() + 15
        while "limits reloaded" not in s.read_log():
            assert time.time() < deadline, "the config file was never reloaded"
            time.sleep(0.2)
        for b in range(300, 311):
            r = requests.post(url, data=request(b).SerializeToString(), headers={**PROTOBUF, "X-Scope-OrgID": "slow"})
            assert r.status_code == 200, r.text
            accepted += 100
        # Everything acknowledged is stored, nothing refused is.
        assert count(s, "slow") == accepted
        assert count(s, "fast") == 1000
    finally:
        s.stop()


def oversized_span_request():
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    span = ss.spans.add()
    span.trace_id, span.span_id = bytes([7] * 16), bytes([8] * 8)
    span.name = "é" * 3000  # 6,000 bytes
    span.start_time_unix_nano = 1_700_000_000_000_000_000
    span.end_time_unix_nano = 1_700_000_000_100_000_000
    for i in range(10):
        a = span.attributes.add()
        a.key, a.value.string_value = f"k{i}", "v" * (5000 if i == 0 else 10)
    for i in range(5):
        span.events.add(name=f"e{i}", time_unix_nano=1_700_000_000_000_000_000)
    for i in range(3):
        span.links.add(trace_id=bytes([9] * 16), span_id=bytes([i + 1] * 8))
    # A second span with 100,000 attributes (the default limit keeps 512 per span for the other tenant).
    many = ss.spans.add()
    many.trace_id, many.span_id = bytes([7] * 16), bytes([9] * 8)
    many.name = "many"
    many.start_time_unix_nano = 1_700_000_000_000_000_000
    many.end_time_unix_nano = 1_700_000_000_100_000_000
    for i in range(100_000):
        a = many.attributes.add()
        a.key, a.value.int_value = f"a{i}", i
    return req


def test_span_limits_cut_and_count_what_they_drop():
    config = os.path.join(Spindle().data_dir, "spindle.yaml")
    write_config(config, "limits:\n  max_attributes_per_span: 4\ntenants:\n  t:\n    limits:\n"
                 "      max_attribute_value_size: 1KiB\n      max_events_per_span: 2\n      max_links_per_span: 1\n")
    s = Spindle(extra_args=["--config", config]).start()
    try:
        r = requests.post(s.otlp_http + "/v1/traces", data=oversized_span_request().SerializeToString(),
                          headers={**PROTOBUF, "X-Scope-OrgID": "t"})
        assert r.status_code == 200, r.text
        r = s.sql("SELECT octet_length(name), dropped_attributes_count, dropped_events_count, dropped_links_count, "
                  "octet_length(span_attrs_str['k0']), cardinality(events), cardinality(links) "
                  "FROM spans ORDER BY span_id", tenant="t")
        assert r.status_code == 200, r.text
        # 1 KiB cut at a character boundary (2-byte characters: 1,024 bytes exactly); 10 - 4
        # attributes dropped; 5 - 2 events; 3 - 1 links.
        assert r.json()["rows"][0] == [1024, 6, 3, 2, 1024, 2, 1]
        assert r.json()["rows"][1][1] == 100_000 - 4
        m = metrics(s)
        assert metric(m, "spindle_ingester_truncated_total", tenant="t", what="value") == 2
        assert metric(m, "spindle_ingester_truncated_total", tenant="t", what="attribute") == 6 + 99_996
        assert metric(m, "spindle_ingester_truncated_total", tenant="t", what="event") == 3
        assert metric(m, "spindle_ingester_truncated_total", tenant="t", what="link") == 2
        # The same request for a tenant under the top-level limits only keeps 4 attributes but
        # the full-length strings.
        r = requests.post(s.otlp_http + "/v1/traces", data=oversized_span_request().SerializeToString(),
                          headers={**PROTOBUF, "X-Scope-OrgID": "u"})
        assert r.status_code == 200, r.text
        r = s.sql("SELECT octet_length(name), dropped_attributes_count, cardinality(events) FROM spans ORDER BY span_id",
                  tenant="u")
        assert r.json()["rows"] == [[6000, 6, 5], [4, 99_996, 0]]
    finally:
        s.stop()


# One row per iteration for 10^9 iterations: runs until the query timeout stops it.
SLOW_SQL = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000) "
            "SELECT count(*) FROM r")


def ingest(s, tenant, n=100):
    r = requests.post(s.otlp_http + "/v1/traces", data=request(1, n=n, name_bytes=10).SerializeToString(),
                      headers={**PROTOBUF, "X-Scope-OrgID": tenant})
    assert r.status_code == 200, r.text


def start_slow_query(s, tenant):
    """A query that runs until the query timeout; returns the thread and a box for its answer."""
    box = {}

    def run():
        box["r"] = s.sql(SLOW_SQL, tenant=tenant)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    assert "r" not in box, f"the slow query finished early: {box['r'].text}"
    return t, box


def test_concurrent_queries_are_limited_per_tenant_and_per_node():
    config = os.path.join(Spindle().data_dir, "spindle.yaml")
    write_config(config, "limits: { max_tenants_per_query: 3 }\n"
                         "tenants:\n  busy:\n    limits: { max_concurrent_queries: 1, max_tenants_per_query: 1 }\n")
    s = Spindle(extra_args=["--config", config, "--query-timeout", "6s", "--query-max-concurrent", "2"]).start()
    try:
        for tenant in ("busy", "calm", "third"):
            ingest(s, tenant)
        # Tenants per query: each named tenant's limit holds (busy allows only itself).
        def search(tenants):
            return requests.get(s.api + "/api/search", params={"q": "{}"}, headers={"X-Scope-OrgID": tenants}, timeout=10)
        r = search("calm|third")
        assert r.status_code == 200 and len(r.json()["traces"]) > 0, r.text
        r = search("calm|third|a|b")
        assert r.status_code == 400 and "names 4 tenants" in r.text and "at most 3" in r.text, r.text
        r = search("calm|busy")
        assert r.status_code == 400 and "tenant busy allows at most 1" in r.text, r.text
        t, box = start_slow_query(s, "busy")
        r = s.sql("SELECT 1", tenant="busy")
        assert r.status_code == 429 and "1 queries" in r.text and r.headers["Retry-After"] == "1", r.text
        r = requests.get(s.api + "/api/search", params={"q": "{}"}, headers={"X-Scope-OrgID": "busy"}, timeout=10)
        assert r.status_code == 429, r.text
        # Another tenant still has its slots; with it, the node is at its limit of 2.
        t2, box2 = start_slow_query(s, "calm")
        r = s.sql("SELECT 1", tenant="third")
        assert r.status_code == 429 and "this node already runs 2 queries" in r.text, r.text
        t.join(30)
        t2.join(30)
        # The query timeout ended the slow queries with a clear answer.
        assert box["r"].status_code == 429 and "longer than the limit" in box["r"].text, box["r"].text
        assert s.sql("SELECT count(*) FROM spans", tenant="busy").json()["rows"] == [[100]]
        m = metrics(s)
        assert metric(m, "spindle_query_refused_total", tenant="busy", reason="concurrent_queries") == 2
        assert metric(m, "spindle_query_refused_total", tenant="third", reason="node_concurrent_queries") == 1
        assert metric(m, "spindle_query_refused_total", tenant="busy", reason="tenants_per_query") == 1
    finally:
        s.stop()


def test_sql_answers_are_capped():
    s = Spindle(extra_args=["--sql-max-rows", "50"]).start()
    try:
        ingest(s, "t", n=100)
        r = s.sql("SELECT * FROM spans", tenant="t")
        assert r.status_code == 422 and "more than 50 rows" in r.json()["error"], r.text
        r = s.sql("SELECT span_id FROM spans LIMIT 50", tenant="t")
        assert r.status_code == 200 and len(r.json()["rows"]) == 50
        m = metrics(s)
        assert metric(m, "spindle_query_refused_total", tenant="t", reason="sql_result_too_large") == 1
    finally:
        s.stop()


def slow_body(port, path, content_type, total=1000):
    """Sends headers and the first byte of a `total`-byte body, then waits; returns the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {total}\r\n\r\n")
    sock.sendall(head.encode() + b"{")
    return sock


def read_status(sock):
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ")[1]) if data else None


def test_slow_bodies_time_out_and_excess_requests_are_shed():
    s = Spindle(extra_args=["--request-timeout", "3s", "--ingest-max-concurrent-requests", "2"]).start()
    try:
        # Two trickling OTLP bodies take both places of the OTLP/HTTP receiver...
        slow = [slow_body(s.otlp_http_port, "/v1/traces", "application/json") for _ in range(2)]
        time.sleep(0.5)
        # ... so a third request is refused at once, unread, with a retry hint.
        r = requests.post(s.otlp_http + "/v1/traces", data=request(1).SerializeToString(), headers=PROTOBUF, timeout=10)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
        # The query API and OTLP/gRPC are unaffected.
        assert requests.get(s.api + "/ready", timeout=5).status_code == 200
        stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(s.otlp_grpc))
        stub.Export(request(2), timeout=10)
        # The slow bodies get 408 once the request timeout passes.
        started = time.time()
        assert [read_status(sock) for sock in slow] == [408, 408]
        assert time.time() - started < 10
        for sock in slow:
            sock.close()
        # A trickling SQL body too.
        sock = slow_body(s.http_port, "/api/v1/sql", "application/json")
        assert read_status(sock) == 408
        sock.close()
        # Places are free again.
        r = requests.post(s.otlp_http + "/v1/traces", data=request(3).SerializeToString(), headers=PROTOBUF, timeout=10)
        assert r.status_code == 200, r.text
        m = metrics(s)
        assert metric(m, "spindle_ingester_requests_total", protocol="http", outcome="shed") == 1
        assert count(s, None) == 200
    finally:
        s.stop()
