"""The OpenTelemetry Python SDK sends traces over OTLP/gRPC and OTLP/HTTP; they come back
unchanged through Tempo's trace-by-id API (JSON and protobuf, v1 and v2), search and SQL."""

import time

import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from otlp_util import assert_same_trace, get_trace_all_ways, make_trace, root_status_is_error


def export_grpc(s, spans, tenant=None):
    headers = {"x-scope-orgid": tenant} if tenant else None
    exporter = GrpcExporter(endpoint=s.otlp_grpc, insecure=True, headers=headers, timeout=30)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def export_http(s, spans, tenant=None, compression=None):
    from opentelemetry.exporter.otlp.proto.http import Compression

    headers = {"X-Scope-OrgID": tenant} if tenant else None
    exporter = HttpExporter(
        endpoint=s.otlp_http + "/v1/traces",
        headers=headers,
        timeout=30,
        compression=Compression.Gzip if compression == "gzip" else Compression.NoCompression,
    )
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def test_grpc_traces_read_back_field_by_field(shared_spindle):
    s = shared_spindle
    spans, trace_id = make_trace("checkout-grpc")
    assert len(spans) == 4 and root_status_is_error(spans)
    assert export_grpc(s, spans) == SpanExportResult.SUCCESS
    # Acknowledged spans are readable at once (not after a flush).
    for returned in get_trace_all_ways(s.api, trace_id):
        assert_same_trace(spans, returned)


def test_http_protobuf_gzip_traces_read_back(shared_spindle):
    s = shared_spindle
    spans, trace_id = make_trace("checkout-http")
    assert export_http(s, spans, compression="gzip") == SpanExportResult.SUCCESS
    for returned in get_trace_all_ways(s.api, trace_id):
        assert_same_trace(spans, returned)


def test_short_trace_ids_and_unknown_traces(shared_spindle):
    s = shared_spindle
    r = requests.get(f"{s.api}/api/traces/0000000000000000000000000000abcd")
    assert r.status_code == 404
    r = requests.get(f"{s.api}/api/v2/traces/abcd")
    assert r.status_code == 200 and r.json()["trace"] == {}


def test_search_by_tags_and_traceql(shared_spindle):
    s = shared_spindle
    spans, trace_id = make_trace("search-svc")
    assert export_grpc(s, spans) == SpanExportResult.SUCCESS
    now = int(time.time())

    r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=search-svc http.status_code=500", "limit": 5})
    assert r.status_code == 200, r.text
    traces = r.json()["traces"]
    assert [t["traceID"] for t in traces] == [trace_id.lstrip("0")]
    t = traces[0]
    assert t["rootServiceName"] == "search-svc" and t["rootTraceName"] == "GET /checkout"
    assert t["serviceStats"]["search-svc"]["spanCount"] == 4
    assert t["serviceStats"]["search-svc"]["errorCount"] == 1
    matched = t["spanSets"][0]
    assert matched["matched"] == 1 and matched["spans"][0]["name"] == "GET /checkout"
    keys = {a["key"] for a in matched["spans"][0]["attributes"]}
    assert {"service.name", "http.status_code"} <= keys
    assert t["spanSet"] == matched

    # Time range, duration and limit.
    r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=search-svc", "start": now - 600, "end": now + 600, "minDuration": "1ns"})
    assert [x["traceID"] for x in r.json()["traces"]] == [trace_id.lstrip("0")]
    r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=search-svc", "minDuration": "1h"})
    assert r.json()["traces"] == []
    r = requests.get(f"{s.api}/api/search", params={"tags": "service.name=search-svc", "start": now - 7200, "end": now - 3600})
    assert r.json()["traces"] == []

    # TraceQL: {} and a service-name filter through the same path.
    r = requests.get(f"{s.api}/api/search", params={"q": '{ resource.service.name = "search-svc" }'})
    assert r.status_code == 200, r.text
    assert [x["traceID"] for x in r.json()["traces"]] == [trace_id.lstrip("0")]
    assert r.json()["traces"][0]["spanSets"][0]["matched"] == 4
    r = requests.get(f"{s.api}/api/search", params={"q": "{}", "limit": 1000})
    assert trace_id.lstrip("0") in [x["traceID"] for x in r.json()["traces"]]

    # Tempo 3.0's array attributes: an element matches =, =~, >; != and !~ need no element to.
    def found(q):
        r = requests.get(f"{s.api}/api/search", params={"q": '{ resource.service.name = "search-svc" } && ' + q})
        assert r.status_code == 200, (q, r.text)
        return [x["traceID"] for x in r.json()["traces"]]
    for q in ('{ span.cart.items = "pear" }', '{ .cart.items =~ "pe.*" }', "{ span.cart.counts > 2 }",
              '{ span.cart.items != "kiwi" }', '{ span.cart.items !~ "k.*" }', "{ span.cart.counts = 1 }"):
        assert found(q) == [trace_id.lstrip("0")], q
    for q in ('{ span.cart.items = "kiwi" }', '{ span.cart.items != "apple" }', '{ span.cart.items !~ "a.*" }',
              "{ span.cart.counts > 3 }", "{ span.cart.items = nil && span.cart.total > 0 }"):
        assert found(q) == [], q
    r = requests.get(f"{s.api}/api/search", params={"q": '{ resource.service.name = "search-svc" && span.cart.items = "pear" }'})
    shown = {a["key"]: a["value"] for a in r.json()["traces"][0]["spanSets"][0]["spans"][0]["attributes"]}
    assert shown["cart.items"] == {"arrayValue": {"values": [{"stringValue": "apple"}, {"stringValue": "pear"}]}}, shown

    # Errors.
    assert requests.get(f"{s.api}/api/search", params={"q": "{}", "tags": "a=b"}).status_code == 400
    assert requests.get(f"{s.api}/api/search", params={"q": "{ nonsense"}).status_code == 400
    assert requests.get(f"{s.api}/api/search", params={"minDuration": "fast"}).status_code == 400
    assert requests.get(f"{s.api}/api/search", params={"start": 100, "end": 50}).status_code == 400


def test_sql_finds_the_spans(shared_spindle):
    s = shared_spindle
    spans, trace_id = make_trace("sql-svc")
    assert export_http(s, spans) == SpanExportResult.SUCCESS
    r = s.sql(
        "SELECT name, kind, span_http_status_code, span_attrs_str['user.id'] AS user_id, span_attrs_float['cart.total'] AS total "
        f"FROM spans WHERE service_name = 'sql-svc' AND trace_id = X'{trace_id}' ORDER BY start_time"
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["name"] for c in body["columns"]] == ["name", "kind", "span_http_status_code", "user_id", "total"]
    assert body["rows"][0] == ["GET /checkout", "server", 500, "user-42", 99.5]
    assert [row[0] for row in body["rows"]] == ["GET /checkout", "SELECT orders", "row decode", "publish"]

    r = s.sql("SELECT count(*) AS n FROM spans WHERE service_name = 'sql-svc'", fmt="csv")
    assert r.status_code == 200 and r.text.strip().splitlines() == ["n", "4"]
    r = s.sql("SELECT name FROM spans WHERE service_name = 'sql-svc' ORDER BY name LIMIT 2", fmt="jsonl")
    assert [line for line in r.text.splitlines() if line] == ['{"name":"GET /checkout"}', '{"name":"SELECT orders"}']
    r = s.sql("SELECT name FROM spans WHERE service_name = 'sql-svc'", fmt="arrow")
    assert r.status_code == 200 and r.content[:4] == b"\xff\xff\xff\xff"
    # SQL as text/plain.
    r = requests.post(f"{s.api}/api/v1/sql", data="SELECT 1 AS one", headers={"Content-Type": "text/plain"})
    assert r.json()["rows"] == [[1]]


def test_tenants_are_isolated(shared_spindle):
    s = shared_spindle
    spans, trace_id = make_trace("tenant-svc")
    assert export_http(s, spans, tenant="team-b") == SpanExportResult.SUCCESS
    assert requests.get(f"{s.api}/api/traces/{trace_id}").status_code == 404
    assert requests.get(f"{s.api}/api/traces/{trace_id}", headers={"X-Scope-OrgID": "team-b"}).status_code == 200
    assert requests.get(f"{s.api}/api/traces/{trace_id}", headers={"X-Scope-OrgID": "single-tenant|team-b"}).status_code == 200
    r = s.sql("SELECT count(*) FROM spans WHERE service_name = 'tenant-svc'", tenant="team-b")
    assert r.json()["rows"] == [[4]]
    assert s.sql("SELECT count(*) FROM spans WHERE service_name = 'tenant-svc'").json()["rows"] == [[0]]


def test_tags_and_values(shared_spindle):
    s = shared_spindle
    spans, _ = make_trace("tags-svc")
    assert export_grpc(s, spans) == SpanExportResult.SUCCESS
    names = requests.get(f"{s.api}/api/search/tags").json()["tagNames"]
    assert {"service.name", "http.method", "user.id", "k8s.pod.name"} <= set(names)
    scopes = {x["name"]: x["tags"] for x in requests.get(f"{s.api}/api/v2/search/tags").json()["scopes"]}
    assert "service.name" in scopes["resource"] and "user.id" in scopes["span"] and "duration" in scopes["intrinsic"]
    only = requests.get(f"{s.api}/api/v2/search/tags", params={"scope": "span"}).json()["scopes"]
    assert [x["name"] for x in only] == ["span"]
    values = requests.get(f"{s.api}/api/search/tag/service.name/values").json()["tagValues"]
    assert "tags-svc" in values
    v2 = requests.get(f"{s.api}/api/v2/search/tag/resource.service.name/values").json()["tagValues"]
    assert {"type": "string", "value": "tags-svc"} in v2
    ints = requests.get(f"{s.api}/api/v2/search/tag/span.http.status_code/values").json()["tagValues"]
    assert {"type": "int", "value": "500"} in ints
    # Grafana URL-encodes the tag twice.
    twice = requests.get(f"{s.api}/api/v2/search/tag/resource%252Eservice%252Ename/values").json()["tagValues"]
    assert {"type": "string", "value": "tags-svc"} in twice
    status = requests.get(f"{s.api}/api/v2/search/tag/status/values").json()["tagValues"]
    assert {"type": "keyword", "value": "error"} in status
    assert requests.get(f"{s.api}/api/v2/search/tag/service.name/values").status_code == 400


def test_health_and_identity(shared_spindle):
    s = shared_spindle
    assert requests.get(f"{s.api}/api/echo").text == "echo"
    assert requests.get(f"{s.api}/ready").text == "ready"
    info = requests.get(f"{s.api}/api/status/buildinfo").json()
    assert info["version"] == "2.9.0" and "spindleVersion" in info
    metrics = requests.get(f"{s.api}/metrics").text
    for name in ["spindle_ingester_spans_received_total", "spindle_storage_flushes_total", "spindle_storage_block_bytes_written_total", "spindle_query_duration_seconds"]:
        assert name in metrics
    assert requests.get(f"{s.api}/live").status_code == 200
