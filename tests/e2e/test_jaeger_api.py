"""Jaeger's query APIs over spans sent by the OpenTelemetry SDK: the JSON API the Jaeger UI and
Grafana's Jaeger datasource call (under /jaeger) and api/v3 (OTLP/JSON), checked field by field
against Jaeger's shapes, for two tenants without leaking, and with hostile parameters."""

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otlp_util import make_trace


def export(s, spans, tenant):
    exporter = OTLPSpanExporter(endpoint=s.otlp_grpc, insecure=True, headers={"x-scope-orgid": tenant}, timeout=30)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def two_service_trace(front, back):
    """A trace whose root is in service `front` and its child (a server span) in `back`."""
    memory = InMemorySpanExporter()
    providers = [TracerProvider(resource=Resource.create({"service.name": name})) for name in (front, back)]
    for p in providers:
        p.add_span_processor(SimpleSpanProcessor(memory))
    with providers[0].get_tracer("fe").start_as_current_span("call backend", kind=trace_api.SpanKind.CLIENT) as root:
        with providers[1].get_tracer("be").start_as_current_span("handle", kind=trace_api.SpanKind.SERVER):
            pass
    trace_id = format(root.get_span_context().trace_id, "032x")
    return list(memory.get_finished_spans()), trace_id


@pytest.fixture(scope="module")
def data(shared_spindle):
    s = shared_spindle
    tag = uuid.uuid4().hex[:8]
    svc_a, svc_b = f"jaeger-a-{tag}", f"jaeger-b-{tag}"
    spans_a, trace_a = make_trace(svc_a)
    spans_b, trace_b = make_trace(svc_b)
    export(s, spans_a, "jaeger-a")
    export(s, spans_b, "jaeger-b")
    front, back = f"front-{tag}", f"back-{tag}"
    deps, _ = two_service_trace(front, back)
    export(s, deps, "jaeger-a")
    return {"s": s, "svc_a": svc_a, "svc_b": svc_b, "spans_a": spans_a, "trace_a": trace_a, "trace_b": trace_b,
            "front": front, "back": back}


def get(s, path, tenant="jaeger-a", **params):
    return requests.get(s.api + path, params=params, headers={"X-Scope-OrgID": tenant}, timeout=60)


def envelope(r, status=200):
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["data", "total", "limit", "offset", "errors"], body
    return body


def check_trace(trace, sent, service):
    """A trace in Jaeger's JSON model against the spans the SDK sent."""
    assert list(trace) == ["traceID", "spans", "processes", "warnings"] and trace["warnings"] is None
    trace_id = format(sent[0].context.trace_id, "032x")
    assert trace["traceID"] == (trace_id[16:] if trace_id.startswith("0" * 16) else trace_id)
    assert trace["processes"]["p1"]["serviceName"] == service
    process_tags = {t["key"]: t for t in trace["processes"]["p1"]["tags"]}
    assert process_tags["deployment.environment"] == {"key": "deployment.environment", "type": "string", "value": "e2e"}
    assert process_tags["host.cpus"] == {"key": "host.cpus", "type": "int64", "value": 8}
    by_id = {span["spanID"]: span for span in trace["spans"]}
    assert set(by_id) == {format(x.context.span_id, "016x") for x in sent}
    for x in sent:
        span = by_id[format(x.context.span_id, "016x")]
        assert list(span) == ["traceID", "spanID", "operationName", "references", "startTime", "duration", "tags",
                              "logs", "processID", "warnings"], span
        assert span["traceID"] == trace["traceID"] and span["operationName"] == x.name and span["processID"] == "p1"
        assert span["startTime"] == x.start_time // 1000 and span["duration"] == (x.end_time - x.start_time) // 1000
        refs = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
        assert [r["spanID"] for r in refs] == ([format(x.parent.span_id, "016x")] if x.parent else [])
        tags = {t["key"]: t for t in span["tags"]}
        assert tags["otel.scope.name"]["value"] == "e2e.scope" and tags["otel.scope.version"]["value"] == "1.2.3"
        kind = x.kind.name.lower()
        assert tags["span.kind"] == {"key": "span.kind", "type": "string", "value": kind}
        for key, value in x.attributes.items():
            t = tags[key]
            if isinstance(value, bool):
                assert (t["type"], t["value"]) == ("bool", value)
            elif isinstance(value, int):
                assert (t["type"], t["value"]) == ("int64", value)
            elif isinstance(value, float):
                assert (t["type"], t["value"]) == ("float64", value)
            elif isinstance(value, str):
                assert (t["type"], t["value"]) == ("string", value)
            else:
                assert t["type"] == "string" and json.loads(t["value"]) == list(value)
        if x.status.status_code == trace_api.StatusCode.ERROR:
            assert tags["otel.status_code"]["value"] == "ERROR" and tags["error"] == {"key": "error", "type": "bool", "value": True}
            assert tags["otel.status_description"]["value"] == x.status.description
        else:
            assert "error" not in tags and "otel.status_code" not in tags
        assert [log["fields"][0] for log in span["logs"]] == [{"key": "event", "type": "string", "value": e.name} for e in x.events]
        assert [log["timestamp"] for log in span["logs"]] == [e.timestamp // 1000 for e in x.events]
        follows = [r for r in span["references"] if r["refType"] == "FOLLOWS_FROM"]
        assert [r["spanID"] for r in follows] == [format(link.context.span_id, "016x") for link in x.links]


def test_services_and_operations(data):
    s, svc_a, svc_b = data["s"], data["svc_a"], data["svc_b"]
    body = envelope(get(s, "/jaeger/api/services"))
    assert svc_a in body["data"] and svc_b not in body["data"] and body["total"] == len(body["data"])
    assert body["limit"] == 0 and body["offset"] == 0 and body["errors"] is None
    assert svc_b in envelope(get(s, "/jaeger/api/services", tenant="jaeger-b"))["data"]
    names = {x.name for x in data["spans_a"]}
    body = envelope(get(s, f"/jaeger/api/services/{svc_a}/operations"))
    assert set(body["data"]) == names and body["total"] == len(names)
    assert envelope(get(s, f"/jaeger/api/services/{svc_a}/operations", tenant="jaeger-b"))["data"] == []
    body = envelope(get(s, "/jaeger/api/operations", service=svc_a, spanKind="server"))
    assert body["data"] == [{"name": "GET /checkout", "spanKind": "server"}]
    body = envelope(get(s, "/jaeger/api/operations", service=svc_a))
    assert {(o["name"], o["spanKind"]) for o in body["data"]} == {(x.name, x.kind.name.lower()) for x in data["spans_a"]}

    r = get(s, "/api/v3/services")
    assert r.status_code == 200 and svc_a in r.json()["services"] and svc_b not in r.json()["services"]
    r = get(s, "/jaeger/api/v3/operations", service=svc_a, spanKind="client")
    assert r.json() == {"operations": [{"name": "SELECT orders", "spanKind": "client"}]}


def test_search_and_trace_by_id(data):
    s, svc_a, trace_a = data["s"], data["svc_a"], data["trace_a"]
    now_us = int(time.time() * 1e6)
    window = {"start": now_us - 3_600_000_000, "end": now_us + 60_000_000, "lookback": "1h", "limit": 20}
    body = envelope(get(s, "/jaeger/api/traces", service=svc_a, **window))
    assert len(body["data"]) == 1 and body["total"] == 0
    check_trace(body["data"][0], data["spans_a"], svc_a)

    # Grafana's filters: operation, tags (JSON from logfmt), tag=k:v, durations.
    found = lambda **p: [t["traceID"] for t in envelope(get(s, "/jaeger/api/traces", service=svc_a, **window, **p))["data"]]
    assert len(found(operation="SELECT orders", tags=json.dumps({"db.system": "postgresql"}))) == 1
    assert len(found(tags=json.dumps({"http.status_code": "500"}), minDuration="1us")) == 1
    assert len(found(tag="error:true", operation="GET /checkout")) == 1
    assert found(tag="error:true", operation="SELECT orders") == []
    assert len(found(tag="span.kind:producer", operation="publish")) == 1
    assert found(tag="span.kind:producer", operation="GET /checkout") == []
    assert found(tags=json.dumps({"http.status_code": "404"})) == []
    assert found(minDuration="1h") == []
    assert found(operation="no such operation") == []
    # The default window (the last 48 hours) holds it too; another tenant's search does not.
    assert len(envelope(get(s, "/jaeger/api/traces", service=svc_a))["data"]) == 1
    assert envelope(get(s, "/jaeger/api/traces", tenant="jaeger-b", service=svc_a))["data"] == []

    # Trace by id, and several ids at once (a missing one is reported, not an error).
    body = envelope(get(s, f"/jaeger/api/traces/{trace_a}"))
    check_trace(body["data"][0], data["spans_a"], svc_a)
    missing = "0" * 31 + "1"
    body = envelope(get(s, "/jaeger/api/traces", traceID=[trace_a, missing]))
    assert len(body["data"]) == 1
    assert body["errors"] == [{"msg": "trace not found", "traceID": "0000000000000001"}]
    body = envelope(get(s, f"/jaeger/api/traces/{trace_a}", tenant="jaeger-b"), status=404)
    assert body["data"] is None and body["errors"] == [{"code": 404, "msg": "trace not found"}]


def test_a_64_bit_trace_id_is_found_by_16_digits(shared_spindle):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    low = uuid.uuid4().bytes[:8]
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "short-id-svc"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(8) + low, uuid.uuid4().bytes[:8], "short"
    now = time.time_ns()
    span.start_time_unix_nano, span.end_time_unix_nano = now - 1000, now
    r = requests.post(shared_spindle.otlp_http + "/v1/traces", data=req.SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "jaeger-a"}, timeout=30)
    assert r.status_code == 200, r.text
    body = envelope(get(shared_spindle, f"/jaeger/api/traces/{low.hex()}"))
    assert body["data"][0]["traceID"] == low.hex() and body["data"][0]["spans"][0]["traceID"] == low.hex()


def test_dependencies(data):
    s = data["s"]
    now_ms = int(time.time() * 1000)
    body = envelope(get(s, "/jaeger/api/dependencies", endTs=now_ms + 60_000, lookback=3_600_000))
    assert {"parent": data["front"], "child": data["back"], "callCount": 1} in body["data"], body
    assert all(d["parent"] != d["child"] for d in body["data"])
    body = envelope(get(s, "/jaeger/api/dependencies", endTs=now_ms + 60_000, lookback=3_600_000, service=data["back"]))
    assert body["data"] == [{"parent": data["front"], "child": data["back"], "callCount": 1}]
    body = envelope(get(s, "/jaeger/api/dependencies", tenant="jaeger-b", endTs=now_ms + 60_000, lookback=3_600_000))
    assert data["front"] not in json.dumps(body["data"])
    # A lookback past 30 days is cut to 30 days, not refused (Grafana sends its dashboard range).
    body = envelope(get(s, "/jaeger/api/dependencies", endTs=now_ms + 60_000, lookback=10**15))
    assert {"parent": data["front"], "child": data["back"], "callCount": 1} in body["data"]
    # A window before the trace holds no call.
    body = envelope(get(s, "/jaeger/api/dependencies", endTs=now_ms - 7_200_000, lookback=3_600_000))
    assert data["front"] not in json.dumps(body["data"])


def rfc3339(t):
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def test_api_v3(data):
    s, svc_a, trace_a = data["s"], data["svc_a"], data["trace_a"]
    r = get(s, f"/api/v3/traces/{trace_a}")
    assert r.status_code == 200, r.text
    resource_spans = r.json()["result"]["resourceSpans"]
    spans = [sp for rs in resource_spans for ss in rs["scopeSpans"] for sp in ss["spans"]]
    assert {sp["spanId"] for sp in spans} == {format(x.context.span_id, "016x") for x in data["spans_a"]}
    assert {sp["traceId"] for sp in spans} == {trace_a}
    root = next(sp for sp in spans if sp["name"] == "GET /checkout")
    assert root["kind"] == 2 and root["status"]["code"] == 2 and root["status"]["message"] == "payment failed"
    sent_root = next(x for x in data["spans_a"] if x.name == "GET /checkout")
    assert root["startTimeUnixNano"] == str(sent_root.start_time)
    attrs = {a["key"]: a["value"] for a in root["attributes"]}
    assert attrs["http.route"] == {"stringValue": "/checkout"}
    assert attrs["http.status_code"] == {"intValue": "500"}
    assert [e["timeUnixNano"] for e in root["events"]] == [str(e.timestamp) for e in sent_root.events]
    child = next(sp for sp in spans if sp["name"] == "SELECT orders")
    assert child["parentSpanId"] == root["spanId"] and len(child["parentSpanId"]) == 16
    service = {a["key"]: a["value"] for a in resource_spans[0]["resource"]["attributes"]}["service.name"]
    assert service == {"stringValue": svc_a}

    now = time.time()
    window = {"query.start_time_min": rfc3339(now - 3600), "query.start_time_max": rfc3339(now + 60)}
    r = get(s, "/api/v3/traces", **{"query.service_name": svc_a, **window})
    assert r.status_code == 200, r.text
    assert {sp["traceId"] for rs in r.json()["result"]["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]} == {trace_a}
    camel = {"query.serviceName": svc_a, "query.startTimeMin": window["query.start_time_min"],
             "query.startTimeMax": window["query.start_time_max"], "query.attributes": json.dumps({"http.route": "/checkout"}),
             "query.durationMin": "1us", "query.searchDepth": "5"}
    r = get(s, "/jaeger/api/v3/trace-summaries", **camel)
    assert r.status_code == 200, r.text
    (summary,) = r.json()["summaries"]
    assert summary["traceId"] == trace_a and summary["rootServiceName"] == svc_a
    assert summary["rootOperationName"] == "GET /checkout"
    assert summary["spanCount"] == 4 and summary["errorSpanCount"] == 1
    assert summary["services"] == [{"name": svc_a, "spanCount": 4, "errorSpanCount": 1}]
    assert int(summary["maxEndTimeUnixNano"]) > int(summary["minStartTimeUnixNano"])

    # Jaeger's errors: 404 for nothing found, 400 for bad parameters; other tenants see nothing.
    r = get(s, "/api/v3/traces", **{"query.service_name": "nobody", **window})
    assert r.status_code == 404 and r.json() == {"error": {"httpCode": 404, "message": "No traces found"}}
    assert get(s, f"/api/v3/traces/{trace_a}", tenant="jaeger-b").status_code == 404
    r = get(s, "/api/v3/traces", **{"query.service_name": svc_a})
    assert r.status_code == 400 and r.json()["error"]["httpCode"] == 400
    assert "required" in r.json()["error"]["message"]
    # Grafana sends times unencoded: a "+01:00" offset arrives with a space for the "+".
    plus_one = timezone(timedelta(hours=1))
    start = datetime.fromtimestamp(now - 3600, plus_one).isoformat()
    end = datetime.fromtimestamp(now + 60, plus_one).isoformat()
    assert "+01:00" in start
    raw = f"{s.api}/api/v3/traces?query.service_name={svc_a}&query.start_time_min={start}&query.start_time_max={end}"
    r = requests.get(raw, headers={"X-Scope-OrgID": "jaeger-a"}, timeout=30)
    assert r.status_code == 200, r.text


def test_hostile_parameters_get_4xx(data):
    s = data["s"]
    cases = [
        ("/jaeger/api/traces", {}),  # no service
        ("/jaeger/api/traces", {"service": "x", "limit": "many"}),
        ("/jaeger/api/traces", {"service": "x", "start": "yesterday"}),
        ("/jaeger/api/traces", {"service": "x", "start": str(2**62)}),
        ("/jaeger/api/traces", {"service": "x", "minDuration": "fast"}),
        ("/jaeger/api/traces", {"service": "x", "minDuration": "2s", "maxDuration": "1s"}),
        ("/jaeger/api/traces", {"service": "x", "tag": "nocolon"}),
        ("/jaeger/api/traces", {"service": "x", "tags": "{not json"}),
        ("/jaeger/api/traces", {"service": "x", "tags": json.dumps({f"k{i}": "v" for i in range(200)})}),
        ("/jaeger/api/traces", {"traceID": "xyz"}),
        ("/jaeger/api/traces/not-a-trace-id", {}),
        ("/jaeger/api/traces/" + "a" * 40, {}),
        ("/jaeger/api/operations", {}),
        ("/jaeger/api/operations", {"service": "x", "spanKind": "sideways"}),
        ("/jaeger/api/dependencies", {"endTs": "now"}),
        ("/jaeger/api/dependencies", {"lookback": "-5"}),
        ("/jaeger/api/dependencies", {"endTs": str(2**62)}),
        ("/api/v3/traces", {"query.start_time_min": "soon", "query.start_time_max": "later"}),
        ("/api/v3/traces", {"query.start_time_min": rfc3339(time.time()), "query.start_time_max": rfc3339(time.time() - 10)}),
        ("/api/v3/trace-summaries", {"query.start_time_min": rfc3339(time.time() - 10), "query.start_time_max": rfc3339(time.time()), "query.searchDepth": "-1"}),
        ("/api/v3/traces/zz", {}),
        ("/api/v3/operations", {}),
    ]
    for path, params in cases:
        r = get(s, path, **params)
        assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text[:300])
        if "/v3/" in path:
            assert r.json()["error"]["httpCode"] == r.status_code, (path, r.text)
        else:
            assert r.json()["errors"][0]["code"] == r.status_code, (path, r.text)
    # A huge query string is refused, not served.
    r = get(s, "/jaeger/api/traces", service="x", tags=json.dumps({"k": "v" * 2_000_000}))
    assert 400 <= r.status_code < 500
    assert get(s, "/jaeger/api/services").status_code == 200
