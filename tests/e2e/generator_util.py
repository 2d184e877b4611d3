"""Helpers for the metrics generator's end-to-end tests: traces across services built with the
OpenTelemetry Python SDK (explicit kinds, statuses, attributes and durations), the generator's
config file, its scrape endpoint, and the span metrics and service graph series a list of spans
must produce (Tempo's rules, as Spindle's generator documents them)."""

import math
import os
import re
import time

import requests
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

import prom_text

MS = 1_000_000  # nanoseconds

# Bucket bounds as the exposition renders them (le="..."), +Inf implied.
LATENCY_LE = ["0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512",
              "1.024", "2.048", "4.096", "8.192", "16.384"]
SERVICE_GRAPH_LE = ["0.1", "0.2", "0.4", "0.8", "1.6", "3.2", "6.4", "12.8"]

SPAN_METRICS = ["traces_spanmetrics_calls_total", "traces_spanmetrics_latency_bucket",
                "traces_spanmetrics_latency_sum", "traces_spanmetrics_latency_count"]
SIZE_TOTAL = "traces_spanmetrics_size_total"
TARGET_INFO = "traces_target_info"
REQUEST_TOTAL = "traces_service_graph_request_total"
REQUEST_FAILED = "traces_service_graph_request_failed_total"
SERVICE_GRAPH_HISTOGRAMS = [f"traces_service_graph_request_{side}_seconds_{part}"
                            for side in ("server", "client") for part in ("bucket", "sum", "count")]
UNPAIRED = "traces_service_graph_unpaired_spans_total"


def write_config(data_dir, text):
    path = os.path.join(data_dir, "spindle.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


class Traces:
    """Spans of several services, each with its own TracerProvider and resource, recorded in
    memory (to be exported in one request and to compute the expected series from). Every span
    ends at the same instant, one second before the Traces was made, and lasts exactly what it
    is given."""

    def __init__(self, resources=None):
        self.resources = resources or {}  # service name -> extra resource attributes
        self.memory = InMemorySpanExporter()
        self.providers = {}
        self.end_ns = time.time_ns() - 1000 * MS

    def provider(self, service):
        if service not in self.providers:
            attrs = {"service.name": service, **self.resources.get(service, {})}
            provider = TracerProvider(resource=Resource.create(attrs))
            provider.add_span_processor(SimpleSpanProcessor(self.memory))
            self.providers[service] = provider
        return self.providers[service]

    def span(self, service, name, kind, duration_ns, parent=None, status=None, attributes=None):
        """A finished span; `parent` is another span of this Traces (any service), None for a root."""
        tracer = self.provider(service).get_tracer("spindle.e2e.generator", "1.0.0")
        ctx = trace_api.set_span_in_context(parent) if parent is not None else otel_context.Context()
        span = tracer.start_span(name, context=ctx, kind=kind, attributes=attributes or {},
                                 start_time=self.end_ns - duration_ns)
        if status is not None:
            span.set_status(Status(status))
        span.end(end_time=self.end_ns)
        return span

    def finished(self):
        for provider in self.providers.values():
            assert provider.force_flush(10_000), "a TracerProvider did not flush"
        spans = list(self.memory.get_finished_spans())
        for provider in self.providers.values():
            provider.shutdown()
        return spans


def trace_id_hex(span):
    ctx = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    return format(ctx.trace_id, "032x")


def export_grpc(s, spans, tenant=None):
    headers = {"x-scope-orgid": tenant} if tenant else None
    exporter = GrpcExporter(endpoint=s.otlp_grpc, insecure=True, headers=headers, timeout=30)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS, "OTLP/gRPC export failed"
    finally:
        exporter.shutdown()


def export_http(s, spans, tenant=None):
    headers = {"X-Scope-OrgID": tenant} if tenant else None
    exporter = HttpExporter(endpoint=s.otlp_http + "/v1/traces", headers=headers, timeout=30)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS, "OTLP/HTTP export failed"
    finally:
        exporter.shutdown()


def scrape(s, tenant=None, via_param=False):
    """The generator's series of one tenant, parsed."""
    headers, params = {}, {}
    if tenant and via_param:
        params["tenant"] = tenant
    elif tenant:
        headers["X-Scope-OrgID"] = tenant
    r = requests.get(s.api + "/api/generator/metrics", headers=headers, params=params, timeout=10)
    assert r.status_code == 200, f"GET /api/generator/metrics ({tenant or 'default tenant'}): {r.status_code} {r.text[:500]}"
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers.get("Content-Type")
    return prom_text.parse(r.text)


def internal_metric(s, name):
    """The sum over every series of `name` on /metrics (0 when absent)."""
    parsed = prom_text.parse(requests.get(s.api + "/metrics", timeout=10).text)
    return sum(v for _, v in prom_text.series(parsed, name))


def wait_until(check, timeout, what):
    """Calls `check` (returning a list of problems) until it returns none; fails with the last
    problems after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        problems = check()
        if not problems:
            return
        if time.time() > deadline:
            shown = "\n  ".join(problems[:40])
            more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
            raise AssertionError(f"{what}: still wrong after {timeout}s:\n  {shown}{more}")
        time.sleep(0.5)


# --- the expected series ---------------------------------------------------------------------

def label_name(attribute):
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def service_of(span):
    return span.resource.attributes["service.name"]


def attribute(span, key):
    """A resource attribute, else a span attribute (Tempo's order), else None. (The tests never
    set the same key on both.)"""
    if key in span.resource.attributes:
        return str(span.resource.attributes[key])
    if key in span.attributes:
        return str(span.attributes[key])
    return None


def seconds(span):
    return (span.end_time - span.start_time) / 1e9


def kind_label(span):
    return "SPAN_KIND_" + span.kind.name


def status_label(span):
    return "STATUS_CODE_" + span.status.status_code.name


def failed(span):
    return span.status.status_code == StatusCode.ERROR


def _add(out, key, value):
    out[key] = out.get(key, 0) + value


def _observe(out, name, labels, les, value):
    """A cumulative histogram observation: every bucket exists (0 when nothing fell in it)."""
    for le in les:
        _add(out, prom_text.key(name + "_bucket", **labels, le=le), 1 if value <= float(le) else 0)
    _add(out, prom_text.key(name + "_bucket", **labels, le="+Inf"), 1)
    _add(out, prom_text.key(name + "_sum", **labels), value)
    _add(out, prom_text.key(name + "_count", **labels), 1)


def expected_span_metrics(spans, dimensions):
    """{series key: value} of calls_total and the latency histogram."""
    out = {}
    for span in spans:
        labels = {"service": service_of(span), "span_name": span.name,
                  "span_kind": kind_label(span), "status_code": status_label(span)}
        for d in dimensions:
            labels[label_name(d)] = attribute(span, d) or ""
        _add(out, prom_text.key("traces_spanmetrics_calls_total", **labels), 1)
        _observe(out, "traces_spanmetrics_latency", labels, LATENCY_LE, seconds(span))
    return out


def expected_jobs(spans):
    """traces_target_info's job label, one per distinct resource."""
    jobs = {}
    for span in spans:
        attrs = span.resource.attributes
        ns = attrs.get("service.namespace")
        jobs[tuple(sorted(attrs.items()))] = f"{ns}/{attrs['service.name']}" if ns else attrs["service.name"]
    return sorted(jobs.values())


def expected_service_graph(spans):
    """({series key: value} of request_total, request_failed_total (non-zero only) and the
    server/client seconds histograms; {client service: unpaired client spans}).

    The rules: CLIENT -> SERVER child and PRODUCER -> CONSUMER child are edges between their
    services (connection_type "" and "messaging_system"); a CLIENT with db.system or db.name is
    an edge to the database at once ("database", named by peer.service, server.address, db.name,
    db.system; both sides observe the client's duration); a root SERVER is an edge from `user`
    ("virtual_node", client side observes 0); a CLIENT never answered with peer.service is an
    edge to that peer ("virtual_node", server side observes 0); one with nothing is unpaired."""
    by_id = {(s.context.trace_id, s.context.span_id): s for s in spans}
    answered = set()
    for s in spans:
        if s.parent is not None and s.kind in (SpanKind.SERVER, SpanKind.CONSUMER):
            answered.add((s.parent.trace_id, s.parent.span_id))
    out, unpaired = {}, {}

    def edge(client, server, connection_type, client_seconds, server_seconds, is_failed):
        labels = {"client": client, "server": server, "connection_type": connection_type}
        _add(out, prom_text.key(REQUEST_TOTAL, **labels), 1)
        if is_failed:
            _add(out, prom_text.key(REQUEST_FAILED, **labels), 1)
        _observe(out, "traces_service_graph_request_server_seconds", labels, SERVICE_GRAPH_LE, server_seconds)
        _observe(out, "traces_service_graph_request_client_seconds", labels, SERVICE_GRAPH_LE, client_seconds)

    for s in spans:
        service = service_of(s)
        is_db = s.kind == SpanKind.CLIENT and (attribute(s, "db.system") or attribute(s, "db.name"))
        if is_db:
            node = next(v for v in (attribute(s, k) for k in ("peer.service", "server.address", "db.name", "db.system")) if v)
            assert (s.context.trace_id, s.context.span_id) not in answered, "test data: a database span has a server child"
            edge(service, node, "database", seconds(s), seconds(s), failed(s))
        elif s.kind in (SpanKind.SERVER, SpanKind.CONSUMER):
            if s.parent is None:
                assert s.kind == SpanKind.SERVER, "test data: a root CONSUMER span"
                edge("user", service, "virtual_node", 0.0, seconds(s), failed(s))
                continue
            parent = by_id[(s.parent.trace_id, s.parent.span_id)]
            wanted = SpanKind.CLIENT if s.kind == SpanKind.SERVER else SpanKind.PRODUCER
            assert parent.kind == wanted, f"test data: {s.name}'s parent is {parent.kind}"
            connection_type = "" if s.kind == SpanKind.SERVER else "messaging_system"
            edge(service_of(parent), service, connection_type, seconds(parent), seconds(s), failed(parent) or failed(s))
        elif s.kind in (SpanKind.CLIENT, SpanKind.PRODUCER) and (s.context.trace_id, s.context.span_id) not in answered:
            assert s.kind == SpanKind.CLIENT, "test data: a PRODUCER without consumer"
            peer = attribute(s, "peer.service")
            if peer:
                edge(service, peer, "virtual_node", seconds(s), 0.0, failed(s))
            else:
                unpaired[service] = unpaired.get(service, 0) + 1
    return out, unpaired


def compare(actual, expected, names, sums=()):
    """Problems found comparing the series named `names`: missing, unexpected or wrong values
    (names in `sums` compared with a tolerance)."""
    problems = []
    got = {k: v for k, v in actual.items() if k[0] in names}
    want = {k: v for k, v in expected.items() if k[0] in names}
    for k in sorted(set(want) - set(got), key=prom_text.show):
        problems.append(f"missing {prom_text.show(k)} (expected {want[k]})")
    for k in sorted(set(got) - set(want), key=prom_text.show):
        problems.append(f"unexpected {prom_text.show(k)} = {got[k]}")
    for k in sorted(set(got) & set(want), key=prom_text.show):
        if k[0] in sums:
            ok = math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-6)
        else:
            ok = got[k] == want[k]
        if not ok:
            problems.append(f"{prom_text.show(k)} = {got[k]}, expected {want[k]}")
    return problems
