"""Building traces with the OpenTelemetry Python SDK and reading Tempo answers back as OTLP."""

import base64
import json

import requests
from google.protobuf import json_format
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.trace import Link, SpanKind, Status, StatusCode


def span_batch(batch_no, n, name, service):
    """An export request of `n` one-span traces named `name`, with ids unique per `batch_no`."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    for i in range(n):
        span = ss.spans.add()
        span.trace_id = batch_no.to_bytes(8, "big") + (i + 1).to_bytes(8, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = name
        span.start_time_unix_nano = 1_700_000_000_000_000_000
        span.end_time_unix_nano = 1_700_000_000_100_000_000
    return req


def make_trace(service, extra_resource=None):
    """Records one trace of nested spans with events, links and typed attributes.

    Returns (ReadableSpans, trace id hex)."""
    memory = InMemorySpanExporter()
    attrs = {"service.name": service, "deployment.environment": "e2e", "k8s.pod.name": "pod-7", "host.cpus": 8}
    attrs.update(extra_resource or {})
    provider = TracerProvider(resource=Resource.create(attrs))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("e2e.scope", "1.2.3")
    with tracer.start_as_current_span("warmup") as other:
        other_ctx = other.get_span_context()
    memory.clear()
    with tracer.start_as_current_span(
        "GET /checkout",
        kind=SpanKind.SERVER,
        attributes={
            "http.method": "GET",
            "http.status_code": 500,
            "http.route": "/checkout",
            "user.id": "user-42",
            "cart.total": 99.5,
            "cart.empty": False,
            "cart.items": ["apple", "pear"],
            "cart.counts": [1, 2, 3],
        },
        links=[Link(other_ctx, {"link.reason": "retry-of", "link.n": 1})],
    ) as root:
        root.add_event("checkout.started", {"step": 1, "note": "begin"})
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.statement": "SELECT * FROM orders"}):
            with tracer.start_as_current_span("row decode") as leaf:
                leaf.set_attribute("rows", 17)
                leaf.set_attribute("ratio", 0.25)
        with tracer.start_as_current_span("publish", kind=SpanKind.PRODUCER, attributes={"messaging.system": "kafka"}) as pub:
            pub.add_event("sent", {"partition": 3})
        try:
            raise ValueError("card declined")
        except ValueError as e:
            root.record_exception(e)
        root.set_status(Status(StatusCode.ERROR, "payment failed"))
    spans = memory.get_finished_spans()
    trace_id = format(spans[0].context.trace_id, "032x")
    provider.shutdown()
    return list(spans), trace_id


def expected_request(spans):
    """The ExportTraceServiceRequest the SDK's OTLP exporters send for `spans`."""
    return encode_spans(spans)


def _sorted_attrs(d):
    """Attribute order carries no meaning in OTLP: sort every attribute list by key."""
    if isinstance(d, dict):
        out = {k: _sorted_attrs(v) for k, v in d.items()}
        if "attributes" in out and isinstance(out["attributes"], list):
            out["attributes"] = sorted(out["attributes"], key=lambda kv: kv["key"])
        return out
    if isinstance(d, list):
        return [_sorted_attrs(x) for x in d]
    return d


def flatten(resource_spans):
    """{span_id: (span dict, resource dict, scope dict)} with attribute lists sorted."""
    out = {}
    for rs in resource_spans:
        resource = _sorted_attrs(json_format.MessageToDict(rs.resource))
        for ss in rs.scope_spans:
            scope = _sorted_attrs(json_format.MessageToDict(ss.scope))
            for s in ss.spans:
                out[s.span_id] = (_sorted_attrs(json_format.MessageToDict(s)), resource, scope)
    return out


def parse_jsonpb_traces(resource_spans_json):
    msg = TracesData()
    json_format.Parse(json.dumps({"resourceSpans": resource_spans_json}), msg)
    return list(msg.resource_spans)


def first_field_bytes(data, field_number):
    """The bytes of the first length-delimited field `field_number` of a protobuf message."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _varint(data, i)
            if number == field_number:
                return data[i:i + length]
            i += length
        elif wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError("unexpected wire type")
    return b""


def _varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def get_trace_all_ways(api, trace_id, tenant=None):
    """Reads a trace through v2 JSON, v2 protobuf, v1 JSON and v1 protobuf; returns four lists of ResourceSpans."""
    h = {"X-Scope-OrgID": tenant} if tenant else {}
    v2j = requests.get(f"{api}/api/v2/traces/{trace_id}", headers=h, timeout=30)
    v2j.raise_for_status()
    body = v2j.json()
    assert "metrics" in body
    a = parse_jsonpb_traces(body["trace"].get("resourceSpans", []))
    v2p = requests.get(f"{api}/api/v2/traces/{trace_id}", headers={**h, "Accept": "application/protobuf"}, timeout=30)
    v2p.raise_for_status()
    b = list(TracesData.FromString(first_field_bytes(v2p.content, 1)).resource_spans)
    v1j = requests.get(f"{api}/api/traces/{trace_id}", headers=h, timeout=30)
    c = parse_jsonpb_traces(v1j.json()["batches"]) if v1j.status_code == 200 else []
    v1p = requests.get(f"{api}/api/traces/{trace_id}", headers={**h, "Accept": "application/protobuf"}, timeout=30)
    d = list(TracesData.FromString(v1p.content).resource_spans) if v1p.status_code == 200 else []
    return a, b, c, d


def b64(hex_id):
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def assert_same_trace(sent_spans, returned_resource_spans):
    """Every span sent comes back with every field equal (ids, parent, name, kind, times,
    typed attributes, events, links, status, flags, dropped counts, resource, scope)."""
    expected = flatten(expected_request(sent_spans).resource_spans)
    got = flatten(returned_resource_spans)
    assert set(got) == set(expected), f"span ids differ: missing {set(expected) - set(got)}, extra {set(got) - set(expected)}"
    for span_id, (span, resource, scope) in expected.items():
        g_span, g_resource, g_scope = got[span_id]
        assert g_span == span, f"span {span_id.hex()} differs:\nsent {span}\ngot  {g_span}"
        assert g_resource == resource
        assert g_scope == scope


def root_status_is_error(sent_spans):
    root = [s for s in sent_spans if s.parent is None][0]
    return root.status.status_code == trace_api.StatusCode.ERROR
