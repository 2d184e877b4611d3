"""The metrics generator end to end: traces sent with the OpenTelemetry Python SDK across seven
services become Tempo's span metrics and service graph series, exactly (every series, every
bucket, nothing else), on the scrape endpoint of the tenant that sent them and only there, and as
rows of the SQL table `metrics`."""

from opentelemetry.trace import SpanKind, StatusCode

import prom_text
from generator_util import (MS, REQUEST_FAILED, REQUEST_TOTAL, SERVICE_GRAPH_HISTOGRAMS, SIZE_TOTAL, SPAN_METRICS,
                            TARGET_INFO, UNPAIRED, Traces, compare, expected_jobs, expected_service_graph,
                            expected_span_metrics, export_grpc, scrape, internal_metric, wait_until, write_config)
from spindle_proc import Spindle

CONFIG = """\
generator:
  collection_interval: 1s
  sql_interval: 1s
  sql_flush_interval: 2s
  span_metrics:
    dimensions: [http.method]
  service_graphs:
    wait: 2s
    max_items: 10000
tenants:
  acme:
    generator:
      span_metrics:
        dimensions: [deployment.environment]
"""
DIMENSIONS = ["http.method"]
ACME_DIMENSIONS = ["deployment.environment"]  # replaces the default list for tenant acme

CLIENT, SERVER, INTERNAL = SpanKind.CLIENT, SpanKind.SERVER, SpanKind.INTERNAL
PRODUCER, CONSUMER = SpanKind.PRODUCER, SpanKind.CONSUMER
GET, POST = {"http.method": "GET"}, {"http.method": "POST"}


def shop_traces():
    """Seven traces (17 spans); durations on and around bucket bounds (1 ms, 2 ms exactly, 3 ms,
    50 ms, 100 ms exactly, 250 ms, 1.5 s, 20 s)."""
    t = Traces(resources={"frontend": {"service.namespace": "shop", "service.instance.id": "fe-1"}})
    # 1. user -> frontend -> checkout (error) -> postgres, an internal step, kafka -> worker.
    cart = t.span("frontend", "GET /cart", SERVER, 1500 * MS, attributes=GET)
    call = t.span("frontend", "POST /checkout", CLIENT, 250 * MS, parent=cart, attributes=POST)
    checkout = t.span("checkout", "POST /checkout", SERVER, 100 * MS, parent=call, status=StatusCode.ERROR, attributes=POST)
    t.span("checkout", "SELECT orders", CLIENT, 3 * MS, parent=checkout,
           attributes={"db.system": "postgresql", "db.name": "orders", "db.statement": "SELECT * FROM orders"})
    t.span("checkout", 'validate "cart"', INTERNAL, 1 * MS, parent=checkout)
    publish = t.span("checkout", "publish order", PRODUCER, 2 * MS, parent=checkout, attributes={"messaging.system": "kafka"})
    t.span("worker", "process order", CONSUMER, 50 * MS, parent=publish, attributes={"messaging.system": "kafka"})
    # 2. frontend -> checkout, the client fails (a 20 s timeout), the server says OK.
    call = t.span("frontend", "POST /checkout", CLIENT, 20_000 * MS, status=StatusCode.ERROR, attributes=POST)
    t.span("checkout", "POST /checkout", SERVER, 50 * MS, parent=call, status=StatusCode.OK, attributes=POST)
    # 3, 4. frontend -> inventory without http.method, twice (2 ms exactly on both sides once).
    call = t.span("frontend", "GET /inventory", CLIENT, 3 * MS)
    t.span("inventory", "GET /inventory", SERVER, 1 * MS, parent=call)
    call = t.span("frontend", "GET /inventory", CLIENT, 2 * MS)
    t.span("inventory", "GET /inventory", SERVER, 2 * MS, parent=call)
    # 5. frontend -> checkout, fine.
    call = t.span("frontend", "POST /checkout", CLIENT, 1 * MS, attributes=POST)
    t.span("checkout", "POST /checkout", SERVER, 1 * MS, parent=call, status=StatusCode.OK, attributes=POST)
    # 6. A call to an uninstrumented service named by peer.service.
    t.span("reporting", "GET /rates", CLIENT, 50 * MS, attributes={**GET, "peer.service": "exchange-api"})
    # 7. A call nobody answers and nothing names.
    t.span("batch", "GET /nowhere", CLIENT, 1500 * MS)
    return t.finished()


def acme_traces():
    t = Traces(resources={"acme-svc": {"deployment.environment": "staging"}})
    t.span("acme-svc", "GET /acme", SERVER, 1 * MS, attributes=GET)
    return t.finished()


def expected_series(spans, dimensions):
    series = expected_span_metrics(spans, dimensions)
    graph, unpaired = expected_service_graph(spans)
    series.update(graph)
    return series, unpaired


def check_tenant(parsed, spans, dimensions, expected, unpaired):
    """Problems with one tenant's scrape: every span metrics and service graph series exactly as
    expected and nothing more (a failed-requests series may also be absent or 0 for an edge that
    never failed), size_total > 0 per span metrics series, one target_info per resource."""
    problems = compare(parsed, expected, SPAN_METRICS, sums={"traces_spanmetrics_latency_sum"})
    problems += compare(parsed, expected, [REQUEST_TOTAL, *SERVICE_GRAPH_HISTOGRAMS],
                        sums={"traces_service_graph_request_server_seconds_sum", "traces_service_graph_request_client_seconds_sum"})
    failed = {k: v for k, v in parsed.items() if k[0] == REQUEST_FAILED and (v != 0 or k in expected)}
    problems += compare(failed, expected, [REQUEST_FAILED])
    edges = {labels for name, labels in expected if name == REQUEST_TOTAL}
    problems += [f"failed-requests series for an edge that does not exist: {prom_text.show(k)}"
                 for k in parsed if k[0] == REQUEST_FAILED and k[1] not in edges]

    calls = {labels for name, labels in expected if name == "traces_spanmetrics_calls_total"}
    sizes = {labels: v for (name, labels), v in parsed.items() if name == SIZE_TOTAL}
    if set(sizes) != calls:
        problems.append(f"{SIZE_TOTAL} series {sorted(map(sorted, sizes))} are not the calls series {sorted(map(sorted, calls))}")
    problems += [f"{prom_text.show((SIZE_TOTAL, labels))} = {v}, expected > 0" for labels, v in sizes.items() if not v > 0]

    for client, n in unpaired.items():
        k = prom_text.key(UNPAIRED, client=client, server="", connection_type="")
        if parsed.get(k) != n:
            problems.append(f"{prom_text.show(k)} = {parsed.get(k)}, expected {n}")

    info = prom_text.series(parsed, TARGET_INFO)
    jobs = sorted(labels.get("job") for labels, _ in info)
    if jobs != expected_jobs(spans):
        problems.append(f"{TARGET_INFO} jobs are {jobs}, expected {expected_jobs(spans)}")
    problems += [f"{TARGET_INFO}{labels} = {v}, expected 1" for labels, v in info if v != 1]
    return problems


def sql_latest_calls(s, tenant=None):
    """({(service, span_name): calls}, error): over the calls_total series of each (service,
    span_name), the sum of the values of their rows with the latest timestamp."""
    r = s.sql("SELECT labels['service'] AS service, labels['span_name'] AS span_name, labels['span_kind'] AS span_kind, "
              "labels['status_code'] AS status_code, labels['http_method'] AS http_method, \"value\" FROM metrics "
              "WHERE metric = 'traces_spanmetrics_calls_total' ORDER BY \"timestamp\"", tenant=tenant)
    if r.status_code != 200:
        return None, f"SQL over metrics: {r.status_code} {r.text[:500]}"
    latest = {}
    for service, span_name, kind, status, method, value in r.json()["rows"]:
        latest[(service, span_name, kind, status, method)] = value
    out = {}
    for (service, span_name, *_), value in latest.items():
        out[(service, span_name)] = out.get((service, span_name), 0) + value
    return out, None


def sql_calls_are(s, want, tenant=None):
    """Problems for wait_until: the calls SQL gives per (service, span_name) are not `want`."""
    got, error = sql_latest_calls(s, tenant)
    if error:
        return [error]
    if got != want:
        return [f"calls per (service, span_name) in SQL ({tenant or 'default tenant'}) are {sorted(got.items())}, "
                f"expected {sorted(want.items())}"]
    return []


def test_span_metrics_and_service_graphs_from_sdk_traces():
    s = Spindle()
    s.extra_args += ["--config", write_config(s.data_dir, CONFIG)]
    s.start()
    try:
        spans = shop_traces()
        acme = acme_traces()
        assert len(spans) == 17 and len(acme) == 1
        expected, unpaired = expected_series(spans, DIMENSIONS)
        acme_expected, acme_unpaired = expected_series(acme, ACME_DIMENSIONS)

        # The expectations, spelled out for the edges (the rules are in expected_service_graph).
        totals = {(d["client"], d["server"], d["connection_type"]): v
                  for (name, labels), v in expected.items() if name == REQUEST_TOTAL for d in [dict(labels)]}
        assert totals == {
            ("user", "frontend", "virtual_node"): 1, ("frontend", "checkout", ""): 3, ("checkout", "orders", "database"): 1,
            ("checkout", "worker", "messaging_system"): 1, ("frontend", "inventory", ""): 2,
            ("reporting", "exchange-api", "virtual_node"): 1,
        }
        assert expected[prom_text.key(REQUEST_FAILED, client="frontend", server="checkout", connection_type="")] == 2
        assert unpaired == {"batch": 1}
        inventory = {"service": "frontend", "span_name": "GET /inventory", "span_kind": "SPAN_KIND_CLIENT",
                     "status_code": "STATUS_CODE_UNSET", "http_method": ""}
        assert [expected[prom_text.key("traces_spanmetrics_latency_bucket", **inventory, le=le)] for le in ("0.002", "0.004", "+Inf")] == [1, 2, 2]

        export_grpc(s, spans)
        export_grpc(s, acme, tenant="acme")

        wait_until(lambda: check_tenant(scrape(s), spans, DIMENSIONS, expected, unpaired), 25,
                   "the default tenant's generator series")
        wait_until(lambda: check_tenant(scrape(s, "acme"), acme, ACME_DIMENSIONS, acme_expected, acme_unpaired), 15,
                   "tenant acme's generator series")

        # Each tenant sees its own series only; ?tenant= is the same as the header.
        mine, theirs = scrape(s), scrape(s, "acme")
        assert scrape(s, "single-tenant") == mine
        assert scrape(s, "acme", via_param=True) == theirs
        leaked = [prom_text.show(k) for k in mine if "acme-svc" in dict(k[1]).values()]
        assert not leaked, f"tenant acme's series in the default tenant's scrape: {leaked}"
        services = {span.resource.attributes["service.name"] for span in spans} | {"orders", "exchange-api"}
        leaked = [prom_text.show(k) for k in theirs if set(dict(k[1]).values()) & services]
        assert not leaked, f"the default tenant's series in tenant acme's scrape: {leaked}"

        # SQL: the latest row of each calls_total series adds up to the spans sent.
        want = {}
        for span in spans:
            name = (span.resource.attributes["service.name"], span.name)
            want[name] = want.get(name, 0) + 1
        assert want[("frontend", "POST /checkout")] == 3 and want[("checkout", 'validate "cart"')] == 1

        wait_until(lambda: sql_calls_are(s, want), 20, "SQL table metrics")
        wait_until(lambda: sql_calls_are(s, {("acme-svc", "GET /acme"): 1}, "acme"), 10, "tenant acme's SQL table metrics")
        r = s.sql("SELECT \"value\" FROM metrics WHERE metric = 'traces_spanmetrics_latency_bucket' AND labels['service'] = 'frontend' "
                  "AND labels['span_name'] = 'GET /cart' AND labels['le'] = '2.048' ORDER BY \"timestamp\" DESC LIMIT 1")
        assert r.status_code == 200 and r.json()["rows"] == [[1.0]], f"GET /cart's le=2.048 bucket in SQL: {r.text[:500]}"
        r = s.sql("SELECT count(*) FROM metrics WHERE labels['service'] = 'acme-svc'")
        assert r.status_code == 200 and r.json()["rows"] == [[0]], f"tenant acme's rows in the default tenant's SQL: {r.text[:500]}"

        # The generator's own counters.
        assert internal_metric(s, "spindle_generator_spans_total") == len(spans) + len(acme)
        assert internal_metric(s, "spindle_generator_dropped_spans_total") == 0
    finally:
        s.stop()
