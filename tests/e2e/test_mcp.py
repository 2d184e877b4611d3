"""The MCP server at /api/mcp, driven by the official MCP Python SDK (`mcp` on PyPI): it lists
Tempo's tools and Spindle's own, and each tool answers about traces the OpenTelemetry SDK sent,
for the caller's tenants only (trusted X-Scope-OrgID, and API keys), with tool errors for bad
arguments."""

import hashlib
import json
import os
import uuid

import anyio
import pytest
import requests
from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from otlp_util import make_trace
from spindle_proc import Spindle
from test_jaeger_api import export, two_service_trace

TEMPO_TOOLS = {"traceql-search", "traceql-metrics-instant", "traceql-metrics-range", "get-trace",
               "get-attribute-names", "get-attribute-values", "docs-traceql"}
SPINDLE_TOOLS = {"sql", "service-graph", "critical-path", "trace-errors"}


def mcp_calls(url, headers, calls):
    """Opens an MCP session with `headers` and runs `calls` (a list of (tool, arguments));
    returns the tool names listed and, per call, (is_error, text)."""
    async def main():
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    tools = (await session.list_tools()).tools
                    out = []
                    for name, arguments in calls:
                        r = await session.call_tool(name, arguments)
                        out.append((bool(r.is_error), "".join(c.text for c in r.content)))
                    return tools, out
    return anyio.run(main)


@pytest.fixture(scope="module")
def traced(shared_spindle):
    s = shared_spindle
    tag = uuid.uuid4().hex[:8]
    service = f"mcp-{tag}"
    spans, trace_id = make_trace(service)
    export(s, spans, "mcp-a")
    deps, _ = two_service_trace(f"mcp-front-{tag}", f"mcp-back-{tag}")
    export(s, deps, "mcp-a")
    return s, service, trace_id, tag


def test_tools_are_listed_read_only(traced):
    s, _, _, _ = traced
    tools, _ = mcp_calls(s.api + "/api/mcp", {"X-Scope-OrgID": "mcp-a"}, [])
    by_name = {t.name: t for t in tools}
    assert TEMPO_TOOLS | SPINDLE_TOOLS == set(by_name)
    for t in tools:
        assert t.description and t.input_schema["type"] == "object", t.name
        assert t.annotations.read_only_hint is True, t.name
        assert all(p["type"] == "string" for p in t.input_schema["properties"].values()), t.name
    assert by_name["traceql-search"].input_schema["required"] == ["query"]
    assert by_name["get-trace"].input_schema["required"] == ["trace_id"]
    assert "filter-query" in by_name["get-attribute-values"].input_schema["properties"]


def test_every_tool_answers(traced):
    s, service, trace_id, tag = traced
    calls = [
        ("traceql-search", {"query": f'{{ resource.service.name = "{service}" && status = error }}'}),
        ("traceql-metrics-instant", {"query": f'{{ resource.service.name = "{service}" }} | count_over_time()'}),
        ("traceql-metrics-range", {"query": f'{{ resource.service.name = "{service}" }} | rate() by (name)'}),
        ("get-trace", {"trace_id": trace_id}),
        ("get-attribute-names", {"scope": "span"}),
        ("get-attribute-values", {"name": "resource.service.name"}),
        ("get-attribute-values", {"name": "span.http.route", "filter-query": f'{{ resource.service.name = "{service}" }}'}),
        ("docs-traceql", {"name": "metrics"}),
        ("sql", {"query": f"SELECT count(*) AS n FROM spans WHERE service_name = '{service}'"}),
        ("service-graph", {}),
        ("critical-path", {"trace_id": trace_id}),
        ("trace-errors", {"trace_id": trace_id}),
    ]
    _, results = mcp_calls(s.api + "/api/mcp", {"X-Scope-OrgID": "mcp-a"}, calls)
    for (name, _), (is_error, text) in zip(calls, results):
        assert not is_error, (name, text)
    search, instant, range_, trace, names, values, routes, docs, sql, graph, path, errors = [t for _, t in results]
    assert [t["traceID"] for t in json.loads(search)["traces"]] == [trace_id.lstrip("0")]
    assert [x["value"] for x in json.loads(instant)["series"]] == [4.0], instant
    assert "GET /checkout" in range_ and "series" in range_
    trace_json = json.loads(trace)
    assert {sp["name"] for rs in trace_json["trace"]["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]} == \
        {"GET /checkout", "SELECT orders", "row decode", "publish"}
    assert "http.route" in names
    assert service in values and f"mcp-front-{tag}" in values
    assert "/checkout" in routes
    assert "rate()" in docs and "quantile_over_time" in docs
    assert json.loads(sql)["rows"] == [[4]], sql
    assert {"parent": f"mcp-front-{tag}", "child": f"mcp-back-{tag}", "callCount": 1} in json.loads(graph)["data"]
    path = json.loads(path)
    assert path["rootName"] == "GET /checkout" and path["rootService"] == service
    assert abs(sum(step["percent"] for step in path["path"]) - 100) < 1, path
    errors = json.loads(errors)
    assert errors["spans"] == 4 and errors["errorSpans"] == 1 and errors["servicesWithErrors"] == [service]
    (failing,) = errors["errors"]
    assert failing["name"] == "GET /checkout" and failing["statusMessage"] == "payment failed"
    assert failing["exceptions"] == [{"type": "ValueError", "message": "card declined"}]


def test_other_tenants_see_nothing_and_bad_arguments_are_tool_errors(traced):
    s, service, trace_id, _ = traced
    calls = [
        ("traceql-search", {"query": f'{{ resource.service.name = "{service}" }}'}),
        ("trace-errors", {"trace_id": trace_id}),
        ("sql", {"query": f"SELECT count(*) FROM spans WHERE service_name = '{service}'"}),
        # Bad arguments: each is the tool's error, saying what is wrong.
        ("traceql-search", {"query": "{ } | rate()"}),
        ("traceql-metrics-range", {"query": "{ status = error }"}),
        ("traceql-search", {"query": "{ nonsense"}),
        ("traceql-search", {}),
        ("traceql-search", {"query": 5}),
        ("traceql-search", {"query": "{ .a = \"" + "x" * 70_000 + "\" }"}),
        ("get-trace", {"trace_id": "not-hex"}),
        ("get-attribute-values", {"name": "unscoped"}),
        ("docs-traceql", {"name": "poetry"}),
        ("sql", {"query": "DROP TABLE spans"}),
        ("service-graph", {"start": "yesterday"}),
        ("no-such-tool", {}),
    ]
    _, results = mcp_calls(s.api + "/api/mcp", {"X-Scope-OrgID": "mcp-b"}, calls)
    assert not results[0][0] and json.loads(results[0][1])["traces"] == []
    assert results[1][0] and "no trace" in results[1][1]
    assert json.loads(results[2][1])["rows"] == [[0]]
    expected = ["traceql-metrics", "traceql-search", "400", "required", "must be a string", "longer than",
                "invalid trace id", "must be scoped", "no TraceQL docs", "400", "RFC 3339", "no tool named"]
    for (name, _), (is_error, text), want in zip(calls[3:], results[3:], expected):
        assert is_error and want in text, (name, text[:300])


def test_api_keys_decide_the_tenant(tmp_path):
    key = "key-mcp-reader-0123456789"
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n"
                    f"  - name: writer\n    sha256: {hashlib.sha256(b'key-mcp-writer-0123456789').hexdigest()}\n"
                    "    tenants: [k1]\n    access: [write]\n"
                    f"  - name: reader\n    sha256: {hashlib.sha256(key.encode()).hexdigest()}\n"
                    "    tenants: [k1]\n    access: [read]\n")
    s = Spindle(extra_args=["--api-keys-file", str(keys)]).start()
    try:
        spans, trace_id = make_trace("mcp-keyed")
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=s.otlp_grpc, insecure=True, timeout=30,
                                    headers={"authorization": "Bearer key-mcp-writer-0123456789"})
        exporter.export(spans)
        exporter.shutdown()
        # No key, or a tenant the key does not grant: refused before MCP (401, 403).
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        mcp_headers = {"Accept": "application/json, text/event-stream"}
        assert requests.post(s.api + "/api/mcp", json=init, headers=mcp_headers, timeout=30).status_code == 401
        r = requests.post(s.api + "/api/mcp", json=init, timeout=30,
                          headers={**mcp_headers, "Authorization": f"Bearer {key}", "X-Scope-OrgID": "other"})
        assert r.status_code == 403, r.text
        with pytest.raises(Exception):
            mcp_calls(s.api + "/api/mcp", {"Authorization": f"Bearer {key}", "X-Scope-OrgID": "other"}, [])
        # The reader's key alone: its tenant's trace.
        _, results = mcp_calls(s.api + "/api/mcp", {"Authorization": f"Bearer {key}"}, [("get-trace", {"trace_id": trace_id})])
        assert not results[0][0] and "mcp-keyed" in results[0][1], results
    finally:
        s.stop()


def test_hostile_http_bodies_get_4xx(shared_spindle):
    url = shared_spindle.api + "/api/mcp"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    for body in (b"", b"{", b"[]", b"null", b'{"jsonrpc": "2.0"}', b"[" * 50_000, b"x" * (2 * 1024 * 1024),
                 json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}).encode()):
        r = requests.post(url, data=body, headers=headers, timeout=30)
        assert r.status_code < 500, (body[:40], r.status_code, r.text[:200])
    assert requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=30).status_code < 500
    assert requests.get(shared_spindle.api + "/ready", timeout=5).status_code == 200
