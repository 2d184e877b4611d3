"""The Zipkin receiver: OpenTelemetry's Python Zipkin exporter (opentelemetry-exporter-zipkin-json)
sends to POST /api/v2/spans; the spans read back through Tempo's trace by id, TraceQL and SQL
with the mapping the OpenTelemetry Collector's zipkin receiver makes. Protobuf and compressed
bodies, tenants, retries and hostile bodies too."""

import base64
import gzip
import json
import struct
import time
import uuid
import zlib

import requests
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from otlp_util import make_trace

KINDS = {"SERVER": "SPAN_KIND_SERVER", "CLIENT": "SPAN_KIND_CLIENT", "PRODUCER": "SPAN_KIND_PRODUCER"}


def export_zipkin(s, spans, tenant=None):
    session = requests.Session()
    if tenant:
        session.headers["X-Scope-OrgID"] = tenant
    exporter = ZipkinExporter(endpoint=s.zipkin + "/api/v2/spans", session=session, timeout=30,
                              local_node_ipv4="10.1.2.3", local_node_port=8080)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def attributes(kvs):
    """{key: the value's JSON field} of an OTLP/JSON attribute list."""
    return {kv["key"]: next(iter(kv["value"].values()), None) for kv in kvs or []}


def hex_id(b64):
    """An id as Tempo's JSON gives it (base64), in hex."""
    return base64.b64decode(b64 or "").hex()


def read_trace(s, trace_id, tenant=None):
    """{span name: (span, resource attributes, scope)} from /api/v2/traces/{id}."""
    headers = {"X-Scope-OrgID": tenant} if tenant else {}
    r = requests.get(f"{s.api}/api/v2/traces/{trace_id}", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    out = {}
    for rs in r.json()["trace"].get("resourceSpans", []):
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                out[span["name"]] = (span, attributes(rs["resource"].get("attributes")), ss.get("scope", {}))
    return out


def test_python_zipkin_exporter_spans_read_back(shared_spindle):
    s = shared_spindle
    service = f"zipkin-{uuid.uuid4().hex[:8]}"
    spans, trace_id = make_trace(service)
    assert export_zipkin(s, spans) == SpanExportResult.SUCCESS

    got = read_trace(s, trace_id)
    assert set(got) == {span.name for span in spans}
    for sent in spans:
        span, resource, scope = got[sent.name]
        # Ids, parent and times (Zipkin carries microseconds).
        assert hex_id(span["spanId"]) == format(sent.context.span_id, "016x")
        assert hex_id(span.get("parentSpanId")) == (format(sent.parent.span_id, "016x") if sent.parent else "")
        assert int(span["startTimeUnixNano"]) == (sent.start_time + 500) // 1000 * 1000
        assert int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"]) == (sent.end_time - sent.start_time + 500) // 1000 * 1000
        # Kind: Zipkin has no INTERNAL (the exporter sends none), so such spans are unspecified.
        assert span.get("kind", "SPAN_KIND_UNSPECIFIED") == KINDS.get(sent.kind.name.upper(), "SPAN_KIND_UNSPECIFIED")
        # Resource and scope taken back out of the tags.
        assert resource["service.name"] == service
        assert resource["deployment.environment"] == "e2e" and resource["k8s.pod.name"] == "pod-7"
        assert resource["telemetry.sdk.language"] == "python"
        assert scope == {"name": "e2e.scope", "version": "1.2.3"}
        attrs = attributes(span.get("attributes"))
        for gone in ("service.name", "otel.scope.name", "otel.library.name", "otel.status_code", "error"):
            assert gone not in attrs, (gone, attrs)
        # Zipkin tags are strings; the local endpoint becomes net.host.*.
        for key, value in sent.attributes.items():
            if isinstance(value, (list, tuple)):
                assert json.loads(attrs[key]) == [str(v) for v in value]
            elif isinstance(value, bool):
                assert attrs[key] == str(value).lower()
            else:
                assert attrs[key] == str(value), (key, attrs)
        assert attrs["net.host.ip"] == "10.1.2.3" and attrs["net.host.port"] == "8080"
        # Events with their names and typed attributes.
        events = {e["name"]: attributes(e.get("attributes")) for e in span.get("events", [])}
        assert set(events) == {e.name for e in sent.events}
        for e in sent.events:
            for key, value in e.attributes.items():
                assert events[e.name][key] in (value, str(value)), (e.name, key, events[e.name])

    root, _, _ = got["GET /checkout"]
    assert root["status"] == {"code": "STATUS_CODE_ERROR", "message": "payment failed"}
    assert got["row decode"][0].get("status", {}).get("code", "STATUS_CODE_UNSET") == "STATUS_CODE_UNSET"
    assert events_named(root, "checkout.started")["step"] == "1"

    # TraceQL and SQL see the same spans.
    q = f'{{ resource.service.name = "{service}" && span.http.route = "/checkout" && status = error }}'
    r = requests.get(f"{s.api}/api/search", params={"q": q}, timeout=30)
    assert r.status_code == 200, r.text
    assert [t["traceID"] for t in r.json()["traces"]] == [trace_id.lstrip("0")]
    r = s.sql(f"SELECT count(*) FROM spans WHERE service_name = '{service}'")
    assert r.status_code == 200 and r.json()["rows"] == [[len(spans)]], r.text


def events_named(span, name):
    return next(attributes(e.get("attributes")) for e in span["events"] if e["name"] == name)


def zipkin_json(trace_id, service, name="op", span_id=None, **extra):
    now_us = int(time.time() * 1e6)
    span = {"traceId": trace_id, "id": span_id or uuid.uuid4().hex[:16], "name": name, "timestamp": now_us - 2000,
            "duration": 1500, "kind": "CLIENT", "localEndpoint": {"serviceName": service}}
    span.update(extra)
    return span


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def zipkin_protobuf(trace_id, span_id, parent_id, service, peer):
    """A protobuf ListOfSpans of one SERVER span with a remote endpoint and a tag."""
    now_us = int(time.time() * 1e6)
    local = field(1, 2, service.encode()) + field(2, 2, bytes([127, 0, 0, 1]))
    remote = field(1, 2, peer.encode()) + field(2, 2, bytes([10, 0, 0, 9])) + field(4, 0, varint(5432))
    tag = field(1, 2, b"db.system") + field(2, 2, b"postgresql")
    annotation = field(1, 1, struct.pack("<Q", now_us - 1000)) + field(2, 2, b"wire.recv")
    span = (field(1, 2, bytes.fromhex(trace_id)) + field(2, 2, bytes.fromhex(parent_id)) + field(3, 2, bytes.fromhex(span_id))
            + field(4, 0, varint(2)) + field(5, 2, b"proto-op") + field(6, 1, struct.pack("<Q", now_us - 3000))
            + field(7, 0, varint(2500)) + field(8, 2, local) + field(9, 2, remote) + field(10, 2, annotation)
            + field(11, 2, tag))
    return field(1, 2, span)


def test_protobuf_and_compressed_bodies(shared_spindle):
    s = shared_spindle
    trace_id, span_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    r = requests.post(s.zipkin + "/api/v2/spans", data=zipkin_protobuf(trace_id, span_id, parent_id, "proto-svc", "pg"),
                      headers={"Content-Type": "application/x-protobuf"}, timeout=30)
    assert r.status_code == 202 and r.content == b"", r.text
    span, resource, _ = read_trace(s, trace_id)["proto-op"]
    assert (hex_id(span["spanId"]), hex_id(span["parentSpanId"]), span["kind"]) == (span_id, parent_id, "SPAN_KIND_SERVER")
    assert int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"]) == 2_500_000
    assert resource["service.name"] == "proto-svc"
    attrs = attributes(span["attributes"])
    assert attrs["db.system"] == "postgresql" and attrs["peer.service"] == "pg"
    assert attrs["net.peer.ip"] == "10.0.0.9" and attrs["net.peer.port"] == "5432" and attrs["net.host.ip"] == "127.0.0.1"
    assert [e["name"] for e in span["events"]] == ["wire.recv"]

    # gzip and deflate bodies; a 64-bit trace id is padded to 128 bits.
    short = uuid.uuid4().hex[:16]
    body = json.dumps([zipkin_json(short, "gz-svc", name="gz-op")]).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        r = requests.post(s.zipkin + "/api/v2/spans", data=data, timeout=30,
                          headers={"Content-Type": "application/json", "Content-Encoding": encoding})
        assert r.status_code == 202, (encoding, r.text)
    got = read_trace(s, "0" * 16 + short)
    assert got["gz-op"][1]["service.name"] == "gz-svc"
    r = requests.post(s.zipkin + "/api/v2/spans", data=body, headers={"Content-Encoding": "br"}, timeout=30)
    assert r.status_code == 400 and "content encoding" in r.text


def test_tenants_and_retries(shared_spindle):
    s = shared_spindle
    trace_id = uuid.uuid4().hex
    # Several services and resources, tags and both annotation forms: the retry must convert to
    # the very same pushes for the storage layer to recognise it.
    body = json.dumps([
        zipkin_json(trace_id, f"tenant-zipkin-{i % 2}", name=f"op-{i}",
                    tags={"host.name": f"h{i % 3}", "k": str(i), "otel.scope.name": "lib", "z": "1", "a": "2"},
                    annotations=[{"timestamp": int(time.time() * 1e6), "value": json.dumps({"ev": {"n": i}})},
                                 {"timestamp": int(time.time() * 1e6), "value": "plain|{\"x\":1}|0"}])
        for i in range(3)])
    for _ in range(2):  # a client retry stores nothing twice
        r = requests.post(s.zipkin + "/api/v2/spans", data=body, timeout=30,
                          headers={"Content-Type": "application/json", "X-Scope-OrgID": "zipkin-a"})
        assert r.status_code == 202, r.text
    got = read_trace(s, trace_id, tenant="zipkin-a")
    assert set(got) == {"op-0", "op-1", "op-2"}
    assert got["op-1"][1]["host.name"] == "h1" and got["op-1"][1]["service.name"] == "tenant-zipkin-1"
    assert [e["name"] for e in got["op-2"][0]["events"]] == ["ev", "plain"]
    assert read_trace(s, trace_id, tenant="zipkin-b") == {}
    assert read_trace(s, trace_id) == {}
    r = s.sql(f"SELECT count(*) FROM spans WHERE trace_id = X'{trace_id}'", tenant="zipkin-a")
    assert r.json()["rows"] == [[3]], r.text
    r = requests.post(s.zipkin + "/api/v2/spans", data=body, headers={"X-Scope-OrgID": "bad tenant!"}, timeout=30)
    assert r.status_code == 400, r.text


def test_shared_spans_keep_both_halves_and_far_future_times_are_refused(shared_spindle):
    s = shared_spindle
    trace_id, shared_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    body = [zipkin_json(trace_id, "brave-client", name="call", span_id=shared_id, kind="CLIENT"),
            zipkin_json(trace_id, "brave-server", name="serve", span_id=shared_id, kind="SERVER", shared=True)]
    r = requests.post(s.zipkin + "/api/v2/spans", json=body, timeout=30)
    assert r.status_code == 202, r.text
    got = read_trace(s, trace_id)
    client, server = got["call"][0], got["serve"][0]
    assert hex_id(client["spanId"]) == shared_id and hex_id(server["parentSpanId"]) == shared_id
    assert hex_id(server["spanId"]) != shared_id

    far = uuid.uuid4().hex
    body = [zipkin_json(far, "far", name="ok"), zipkin_json(far, "far", name="late", timestamp=9_300_000_000_000_000)]
    r = requests.post(s.zipkin + "/api/v2/spans", json=body, timeout=30)
    assert r.status_code == 400 and "span 1" in r.text and "2262" in r.text, r.text
    assert read_trace(s, far) == {}, "nothing of a refused body is stored"


def test_hostile_bodies_get_4xx(shared_spindle):
    s = shared_spindle
    url = s.zipkin + "/api/v2/spans"
    good = zipkin_json(uuid.uuid4().hex, "hostile")
    cases = [
        (b"", "application/json", 400, "invalid Zipkin JSON"),
        (b"{", "application/json", 400, "invalid Zipkin JSON"),
        (b'{"traceId": "1"}', "application/json", 400, "invalid Zipkin JSON"),
        (b"[" * 100_000, "application/json", 400, "invalid Zipkin JSON"),
        (json.dumps([good, {**good, "traceId": "not-hex"}]).encode(), "application/json", 400, "span 1: traceId"),
        (json.dumps([{**good, "id": "0"}]).encode(), "application/json", 400, "span 0: id is all zeros"),
        (json.dumps([{**good, "tags": {"n": 1}}]).encode(), "application/json", 400, "invalid Zipkin JSON"),
        (json.dumps([{**good, "timestamp": -5}]).encode(), "application/json", 400, "invalid Zipkin JSON"),
        (json.dumps([{**good, "remoteEndpoint": {"ipv4": "1.2.3"}}]).encode(), "application/json", 400, "not an IPv4"),
        (json.dumps([{**good, "localEndpoint": {"port": 70000}}]).encode(), "application/json", 400, "invalid Zipkin JSON"),
        (b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf", 400, "invalid Zipkin protobuf"),
        (field(1, 2, field(1, 2, b"\x01\x02")), "application/x-protobuf", 400, "span 0: trace_id has 2 bytes"),
        (b"[]", "application/xml", 415, "unsupported content type"),
        (b"x" * (17 * 1024 * 1024), "application/json", 413, "exceeds the limit"),
    ]
    for body, content_type, status, text in cases:
        r = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)
        assert r.status_code == status and text in r.text, (body[:60], r.status_code, r.text[:300])
    bomb = gzip.compress(b"[" + b" " * 40_000_000 + b"]")
    r = requests.post(url, data=bomb, headers={"Content-Encoding": "gzip"}, timeout=60)
    assert r.status_code == 413, r.text
    assert requests.get(url, timeout=30).status_code == 405
    assert requests.post(s.zipkin + "/api/v1/spans", data=b"[]", timeout=30).status_code == 404
    # Still serving, and an empty list is fine.
    assert requests.post(url, data=b"[]", timeout=30).status_code == 202
    assert requests.post(url, json=[good], timeout=30).status_code == 202
