"""TraceQL end to end: traces sent with the OpenTelemetry Python SDK, then TraceQL search,
tag autocomplete narrowed by `q=`, and TraceQL metrics through the Tempo HTTP API, bodies checked
field by field; once over unflushed spans and again after a restart has flushed them into
blocks (whose footers answer autocomplete). Hostile queries get 400 and Spindle keeps serving."""

import time

import pytest
import requests

from otlp_util import make_trace
from spindle_proc import Spindle
from test_sdk_roundtrip import export_grpc, export_http


@pytest.fixture(scope="module")
def loaded():
    s = Spindle().start()
    traces = {}
    for service, send in [("tql-a", export_grpc), ("tql-b", export_grpc), ("tql-c", export_http)]:
        spans, trace_id = make_trace(service, {"team": service[-1]})
        assert send(s, spans).name == "SUCCESS"
        traces[service] = (spans, trace_id)
    yield s, traces
    s.stop()


def search(s, q, **params):
    r = requests.get(f"{s.api}/api/search", params={"q": q, **params}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def span_ids(spans, name):
    return [format(x.context.span_id, "016x") for x in spans if x.name == name]


def attrs(kvs):
    return {a["key"]: next(iter(a["value"].values())) for a in kvs}


def check_search_bodies(s, traces):
    spans_a, tid_a = traces["tql-a"]
    body = search(s, '{ resource.service.name = "tql-a" && status = error }')
    assert [t["traceID"] for t in body["traces"]] == [tid_a.lstrip("0")]
    t = body["traces"][0]
    root = next(x for x in spans_a if x.parent is None)
    assert t["rootServiceName"] == "tql-a"
    assert t["rootTraceName"] == "GET /checkout"
    assert t["startTimeUnixNano"] == str(min(x.start_time for x in spans_a))
    assert t["durationMs"] == (max(x.end_time for x in spans_a) - min(x.start_time for x in spans_a)) // 1_000_000
    assert t["serviceStats"] == {"tql-a": {"spanCount": 4, "errorCount": 1}}
    assert t["spanSet"] == t["spanSets"][0]
    ss = t["spanSets"][0]
    assert ss["matched"] == 1
    span = ss["spans"][0]
    assert span["spanID"] == format(root.context.span_id, "016x")
    assert span["name"] == "GET /checkout"
    assert span["startTimeUnixNano"] == str(root.start_time)
    assert span["durationNanos"] == str(root.end_time - root.start_time)
    assert attrs(span["attributes"]) == {"service.name": "tql-a", "status": "error"}
    assert "inspectedTraces" in body["metrics"]

    # Structural: the client span below the failing server span, in every trace.
    body = search(s, "{ span.http.status_code >= 500 } >> { kind = client }", limit=10)
    assert {t["traceID"] for t in body["traces"]} == {tid.lstrip("0") for _, tid in traces.values()}
    for t in body["traces"]:
        assert [x["name"] for x in t["spanSets"][0]["spans"]] == ["SELECT orders"]
    # Negated and union forms, siblings, children.
    body = search(s, '{ resource.service.name = "tql-b" } &> { kind = client }')
    names = sorted(x["name"] for x in body["traces"][0]["spanSets"][0]["spans"])
    assert names == ["GET /checkout", "SELECT orders"]
    body = search(s, '{ name = "publish" } ~ { resource.service.name = "tql-c" }')
    assert [x["name"] for x in body["traces"][0]["spanSets"][0]["spans"]] == ["SELECT orders"]
    body = search(s, '{ kind = server } !> { resource.service.name = "tql-a" }')
    assert sorted(x["name"] for x in body["traces"][0]["spanSets"][0]["spans"]) == ["GET /checkout", "row decode"]
    # Events, links, instrumentation scope, trace-level intrinsics.
    assert len(search(s, '{ event:name = "checkout.started" && event.step = 1 }', limit=10)["traces"]) == 3
    assert len(search(s, '{ link.link.reason = "retry-of" }', limit=10)["traces"]) == 3
    assert len(search(s, '{ instrumentation:name = "e2e.scope" && resource.team = "a" }')["traces"]) == 1
    body = search(s, '{ rootServiceName = "tql-c" && childCount = 1 && traceDuration > 0 }')
    assert [x["name"] for x in body["traces"][0]["spanSets"][0]["spans"]] == ["SELECT orders"]
    # Pipelines: spanset attributes carry by() and aggregate values.
    body = search(s, "{ } | by(resource.service.name) | count() > 3", limit=10, spss=2)
    assert len(body["traces"]) == 3
    for t in body["traces"]:
        ss = t["spanSets"][0]
        assert ss["matched"] == 4 and len(ss["spans"]) == 2
        a = attrs(ss["attributes"])
        assert a["by(resource.service.name)"] == t["rootServiceName"]
        assert a["count()"] == "4"  # jsonpb writes int64 as a string
    body = search(s, '{ span.user.id = "user-42" } | select(span.cart.total, span.http.route)', limit=10)
    assert len(body["traces"]) == 3
    assert attrs(body["traces"][0]["spanSets"][0]["spans"][0]["attributes"]) == {
        "user.id": "user-42", "cart.total": 99.5, "http.route": "/checkout"}
    # The parent scope (which Tempo 3.0.3 refuses): fields of the span's parent, nil for roots.
    body = search(s, '{ parent.name = "GET /checkout" && parent.status = error }', limit=10)
    assert len(body["traces"]) == 3
    for t in body["traces"]:
        assert sorted(x["name"] for x in t["spanSets"][0]["spans"]) == ["SELECT orders", "publish"]
    body = search(s, '{ parent.kind = client && parent.span.db.system = "postgresql" && parent.duration >= duration }')
    assert [x["name"] for x in body["traces"][0]["spanSets"][0]["spans"]] == ["row decode"]
    body = search(s, '{ parent = nil } | by(parent.resource.service.name) | count() = 1', limit=10)
    assert len(body["traces"]) == 3
    assert [x["name"] for x in body["traces"][0]["spanSets"][0]["spans"]] == ["GET /checkout"]
    r = requests.get(f"{s.api}/api/search", params={"q": "{ parent }"}, timeout=30)
    assert r.status_code == 400 and "parent can only be compared with nil" in r.text, r.text
    # minDuration / maxDuration bound the trace duration.
    assert len(search(s, "{ }", minDuration="1ns", limit=10)["traces"]) == 3
    assert search(s, "{ }", minDuration="1h")["traces"] == []


def check_tags(s, traces):
    r = requests.get(f"{s.api}/api/v2/search/tags", params={"q": '{ resource.service.name = "tql-a" }'}, timeout=30)
    assert r.status_code == 200, r.text
    scopes = {x["name"]: x["tags"] for x in r.json()["scopes"]}
    assert {"service.name", "team", "deployment.environment"} <= set(scopes["resource"])
    assert {"http.method", "user.id", "db.system", "rows"} <= set(scopes["span"])
    assert "step" in scopes["event"] and "link.reason" in scopes["link"]
    assert "name" in scopes["intrinsic"] and "traceDuration" in scopes["intrinsic"]

    def values(tag, q=None):
        # Grafana URL-encodes the tag twice.
        encoded = requests.utils.quote(requests.utils.quote(tag, safe=""), safe="")
        r = requests.get(f"{s.api}/api/v2/search/tag/{encoded}/values", params={"q": q} if q else {}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["tagValues"]

    assert values("resource.service.name") == [{"type": "string", "value": v} for v in ["tql-a", "tql-b", "tql-c"]]
    # Narrowed by the query being typed, finished or not.
    assert values("resource.service.name", '{ resource.team = "b" }') == [{"type": "string", "value": "tql-b"}]
    assert values("resource.service.name", '{ resource.team = "c" && span.http.method = ') == [
        {"type": "string", "value": "tql-c"}]
    assert values("span.rows") == [{"type": "int", "value": "17"}]
    assert {"type": "string", "value": "GET /checkout"} in values("name", '{ kind = server }')
    assert values("name", '{ kind = server }') == [{"type": "string", "value": "GET /checkout"}]
    assert values("status") == [{"type": "keyword", "value": v} for v in ["error", "ok", "unset"]]
    assert values("event.note") == [{"type": "string", "value": "begin"}]
    r = requests.get(f"{s.api}/api/v2/search/tag/http.method/values", timeout=30)
    assert r.status_code == 400 and "scoped" in r.text
    r = requests.get(f"{s.api}/api/search/tag/http.method/values", timeout=30)
    assert r.json()["tagValues"] == ["GET"]


def check_metrics(s, traces):
    spans = [x for sp, _ in traces.values() for x in sp]
    start_s = min(x.start_time for x in spans) // 10**9 - 60
    end_s = max(x.start_time for x in spans) // 10**9 + 60
    r = requests.get(f"{s.api}/api/metrics/query_range", timeout=30, params={
        "q": "{ } | count_over_time() by (resource.service.name)", "start": start_s, "end": end_s, "step": "15s"})
    assert r.status_code == 200, r.text
    body = r.json()
    series = {x["labels"][0]["value"]["stringValue"]: x for x in body["series"]}
    assert set(series) == {"tql-a", "tql-b", "tql-c"}
    for x in series.values():
        assert x["labels"][0]["key"] == "resource.service.name"
        assert sum(float(p.get("value", 0)) for p in x["samples"]) == 4
        assert all(int(p["timestampMs"]) % 15000 == 0 for p in x["samples"])
        assert x["exemplars"] and x["exemplars"][0]["labels"][0]["key"] == "trace:id"
    ids = {tid.lstrip("0") for _, tid in traces.values()}
    assert {x["exemplars"][0]["labels"][0]["value"]["stringValue"] for x in series.values()} == ids

    r = requests.get(f"{s.api}/api/metrics/query_range", timeout=30, params={
        "q": "{ kind = client } | rate()", "start": start_s, "end": end_s, "step": "30"})
    body = r.json()
    assert body["series"][0]["labels"] == [{"key": "__name__", "value": {"stringValue": "rate"}}]
    assert abs(sum(float(p.get("value", 0)) for p in body["series"][0]["samples"]) * 30 - 3) < 1e-9

    r = requests.get(f"{s.api}/api/metrics/query_range", timeout=30, params={
        "q": "{ } | quantile_over_time(duration, .5, .99)", "start": start_s, "end": end_s})
    labels = [x["labels"] for x in r.json()["series"]]
    assert labels == [[{"key": "p", "value": {"doubleValue": 0.5}}], [{"key": "p", "value": {"doubleValue": 0.99}}]]

    r = requests.get(f"{s.api}/api/metrics/query", timeout=30, params={
        "q": '{ span.http.status_code >= 500 } >> { } | count_over_time() by (name)', "start": start_s, "end": end_s})
    assert r.status_code == 200, r.text
    got = {x["labels"][0]["value"]["stringValue"]: x["value"] for x in r.json()["series"]}
    assert got == {"SELECT orders": 3, "row decode": 3, "publish": 3}
    # Tempo 3.0: comparisons on the series' values, before or after topk; exemplars off by hint.
    for q, want in (("{ } | count_over_time() by (name) > 2", {"SELECT orders", "row decode", "publish", "GET /checkout"}),
                    ("{ kind = client } | count_over_time() by (name) >= 3", {"SELECT orders"}),
                    ("{ } | count_over_time() by (name) < 3", set()),
                    ("{ } | count_over_time() by (name) | topk(2) != 0 with(exemplars=false)", None)):
        r = requests.get(f"{s.api}/api/metrics/query", timeout=30, params={"q": q, "start": start_s, "end": end_s})
        assert r.status_code == 200, (q, r.text)
        names = {x["labels"][0]["value"]["stringValue"] for x in r.json()["series"]}
        if want is not None:
            assert names == want, (q, names)
        else:
            assert len(names) == 2, (q, names)
    r = requests.get(f"{s.api}/api/metrics/query_range", timeout=30, params={
        "q": "{ } | count_over_time() with(exemplars=false)", "start": start_s, "end": end_s})
    assert r.status_code == 200 and all(not x.get("exemplars") for x in r.json()["series"]), r.text

    r = requests.get(f"{s.api}/api/metrics/query_range", timeout=30, params={
        "q": "{ } | count_over_time() by (span:name) | topk(1)", "start": start_s, "end": end_s, "step": "600s"})
    assert len(r.json()["series"]) >= 1
    r = requests.get(f"{s.api}/api/metrics/query", timeout=30, params={
        "q": "{ } | compare({ status = error }, 2)", "start": start_s, "end": end_s})
    assert r.status_code == 200, r.text
    got = {(x["labels"][0]["value"]["stringValue"], x["labels"][1]["key"], next(iter(x["labels"][1]["value"].values()))): x["value"]
           for x in r.json()["series"]}
    assert got[("selection", "name", "GET /checkout")] == 3 and got[("selection_total", "name", "nil")] == 3
    assert got[("baseline_total", "kind", "nil")] == 9 and got[("selection", "span.user.id", "user-42")] == 3
    r = requests.get(f"{s.api}/api/metrics/query_range", params={"q": "{ } | rate()", "start": 0, "end": 10**9, "step": "1s"})
    assert r.status_code == 400 and "step" in r.text


def test_traceql_over_unflushed_then_flushed_spans(loaded):
    s, traces = loaded
    check_search_bodies(s, traces)
    check_tags(s, traces)
    check_metrics(s, traces)
    # Restart: SIGTERM flushes every span into blocks; the same answers come from Parquet.
    assert s.terminate() == 0
    s.start()
    deadline = time.time() + 30
    while not s.blocks() and time.time() < deadline:
        time.sleep(0.2)
    assert s.blocks(), "a restart flushes the spans"
    check_search_bodies(s, traces)
    check_tags(s, traces)
    check_metrics(s, traces)


def test_bad_traceql_gets_400_and_spindle_keeps_serving(loaded):
    s, _ = loaded
    for q, words in [
        ("{ .a = }", "line 1, column 8"),
        ('{ span.foo =~ "[" }', "invalid regular expression"),
        ("({ .a } | count()) > ({ .b } | count())", "unsupported"),
        ("{ 1 >= parent }", "compared with nil"),
        ("{ 1 + 1 }", "condition"),
        ("{ " + "(" * 3000 + "true" + ")" * 3000 + " }", "nested"),
        ("{ } | rate()", "metrics"),
    ]:
        r = requests.get(f"{s.api}/api/search", params={"q": q}, timeout=30)
        assert r.status_code == 400, (q, r.text)
        assert words in r.text, (q, r.text)
    nested = "{ } | count_over_time() by (" + ", ".join(f"span.a{i}" for i in range(300)) + ")"
    r = requests.get(f"{s.api}/api/metrics/query_range", params={"q": nested}, timeout=30)
    assert r.status_code == 400 and "at most" in r.text, r.text
    r = requests.get(f"{s.api}/api/metrics/query_range", params={"q": "{ " + "!" * 5000 + "true }"}, timeout=30)
    assert r.status_code == 400 and "nested" in r.text
    r = requests.get(f"{s.api}/api/metrics/query_range", params={"q": "{ status = error }"}, timeout=30)
    assert r.status_code == 400 and "metrics" in r.text
    assert requests.get(f"{s.api}/ready", timeout=5).status_code == 200
