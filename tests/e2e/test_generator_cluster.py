"""The metrics generator in a cluster of processes: two ingesters send every committed span to
two `spindle generator` processes, each generator the traces it owns (by trace id). A trace's
client span goes through one ingester and its server span through the other, yet every edge is
paired; the SQL table `metrics` holds both generators' samples. With one generator killed,
ingestion goes on as fast as before and the lost spans are counted."""

import random
import time

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

import prom_text
from cluster_proc import Cluster
from generator_util import MS, REQUEST_TOTAL, UNPAIRED, internal_metric, scrape, wait_until, write_config
from spindle_proc import Spindle

TENANT = "gen"
CONFIG = """\
generator:
  collection_interval: 1s
  sql_interval: 1s
  sql_flush_interval: 2s
  service_graphs:
    wait: 5s
"""
CLIENT, SERVER = ("frontend", "GET /items", "SPAN_KIND_CLIENT"), ("backend", "GET /items", "SPAN_KIND_SERVER")
EDGE = prom_text.key(REQUEST_TOTAL, client="frontend", server="backend", connection_type="")
CALLS = "traces_spanmetrics_calls_total"
DROPPED = "spindle_generator_dropped_spans_total"
MAX_EXPORT_SECONDS = 2.0


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(storage=1, ingesters=2, queriers=1, shards=2, rf=1)
    gens = [Spindle(role="generator", storage_url=c.storage_url) for _ in range(2)]
    for g in gens:
        g.extra_args += ["--config", write_config(g.data_dir, CONFIG)]
    for ing in c.ingesters:
        ing.extra_args += ["--generators", ",".join(g.internal for g in gens)]
    try:
        # Started half a second apart, so the two generators never collect in the same
        # millisecond (sql_calls_groups tells their collections apart by timestamp).
        gens[0].start()
        time.sleep(0.5)
        gens[1].start()
        c.start()
        c.generators = gens
        c.traces_sent = 0
        yield c
    finally:
        for g in gens:
            g.stop()
        c.stop()


# --- traces ------------------------------------------------------------------------------------

def resource(service):
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])


def edge_traces(n):
    """`n` two-span traces frontend (CLIENT) -> backend (SERVER): (client spans, server spans, trace ids)."""
    end = time.time_ns() - 1000 * MS
    clients, servers, ids = [], [], []
    for _ in range(n):
        trace_id, client_id = random.randbytes(16), random.randbytes(8)
        clients.append(Span(trace_id=trace_id, span_id=client_id, name=CLIENT[1], kind=Span.SPAN_KIND_CLIENT,
                            start_time_unix_nano=end - 10 * MS, end_time_unix_nano=end))
        servers.append(Span(trace_id=trace_id, span_id=random.randbytes(8), parent_span_id=client_id, name=SERVER[1],
                            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=end - 8 * MS, end_time_unix_nano=end - 1 * MS))
        ids.append(trace_id.hex())
    return clients, servers, ids


def request(service, spans):
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource(service), scope_spans=[ScopeSpans(spans=spans)])])


class Sender:
    """Exports client spans through one ingester's OTLP/HTTP and server spans through another's
    OTLP/gRPC; records how long each export took."""

    def __init__(self, client_ingester, server_ingester):
        self.http = requests.Session()
        self.client_url = client_ingester.otlp_http + "/v1/traces"
        self.channel = grpc.insecure_channel(server_ingester.otlp_grpc)
        self.stub = trace_service_pb2_grpc.TraceServiceStub(self.channel)
        self.durations = []

    def send(self, traces, per_request=10):
        """Sends `traces` edge traces, `per_request` at a time; returns their trace ids."""
        ids = []
        for i in range(0, traces, per_request):
            clients, servers, batch_ids = edge_traces(min(per_request, traces - i))
            start = time.time()
            r = self.http.post(self.client_url, data=request("frontend", clients).SerializeToString(), timeout=30,
                               headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": TENANT})
            self.durations.append(time.time() - start)
            assert r.status_code == 200, f"OTLP/HTTP export of client spans: {r.status_code} {r.text[:300]}"
            start = time.time()
            self.stub.Export(request("backend", servers), metadata=[("x-scope-orgid", TENANT)], timeout=30)  # raises unless OK
            self.durations.append(time.time() - start)
            ids += batch_ids
        return ids

    def close(self):
        self.channel.close()
        self.http.close()


# --- reading the generators back ---------------------------------------------------------------

def generator_state(g):
    """What one generator holds for TENANT: ({(service, span_name, span_kind): calls}, edge
    requests, {series: value} of unpaired spans, all request_total series)."""
    parsed = scrape(g, TENANT)
    calls = {}
    for labels, v in prom_text.series(parsed, CALLS):
        k = (labels["service"], labels["span_name"], labels["span_kind"])
        calls[k] = calls.get(k, 0) + v
    unpaired = {prom_text.show(k): v for k, v in parsed.items() if k[0] == UNPAIRED and v != 0}
    edges = {prom_text.show(k): v for k, v in parsed.items() if k[0] == REQUEST_TOTAL}
    return calls, parsed.get(EDGE, 0), unpaired, edges


def metric_by_reason(s, name):
    """{reason: value} of `name` on a process's /metrics."""
    parsed = prom_text.parse(requests.get(s.api + "/metrics", timeout=10).text)
    out = {}
    for labels, v in prom_text.series(parsed, name):
        out[labels.get("reason", "")] = out.get(labels.get("reason", ""), 0) + v
    return out


def dropped(ingesters):
    out = {}
    for ing in ingesters:
        for reason, v in metric_by_reason(ing, DROPPED).items():
            out[reason] = out.get(reason, 0) + v
    return out


def sql_calls_groups(querier, after_ms):
    """Rows of calls_total with a timestamp after `after_ms`, grouped by timestamp (one group is
    one collection of one generator: it stamps every series it collects with the same instant):
    [(timestamp, {(service, span_name, span_kind): value}, duplicated keys)]."""
    r = querier.sql("SELECT CAST(\"timestamp\" AS BIGINT) AS ts, labels['service'] AS service, labels['span_name'] AS span_name, "
                    "labels['span_kind'] AS span_kind, labels['status_code'] AS status_code, \"value\" FROM metrics "
                    f"WHERE metric = '{CALLS}'", tenant=TENANT)
    assert r.status_code == 200, f"SQL over metrics: {r.status_code} {r.text[:500]}"
    groups = {}
    for ts, service, span_name, kind, status, value in r.json()["rows"]:
        if ts <= after_ms:
            continue
        rows, dup = groups.setdefault(ts, ({}, [False]))
        key = (service, span_name, kind)
        assert status == "STATUS_CODE_UNSET", f"unexpected status_code {status} in SQL"
        if key in rows:
            dup[0] = True  # two generators collected in the same millisecond
        rows[key] = rows.get(key, 0) + value
    return [(ts, rows, dup[0]) for ts, (rows, dup) in sorted(groups.items())]


# --- the tests ---------------------------------------------------------------------------------

def send(cluster, traces, per_request=10):
    """Sends `traces` edge traces (client spans through ingester A, server spans through ingester
    B); asserts every export was quick; returns the trace ids."""
    sender = Sender(*cluster.ingesters)
    try:
        ids = sender.send(traces, per_request)
    finally:
        sender.close()
    assert max(sender.durations) < MAX_EXPORT_SECONDS, f"export durations {sender.durations}"
    return ids


def settled(cluster):
    """Problems for wait_until: summed over both generators, not exactly one edge and one call
    per side for each trace sent so far, or any unpaired span or other edge."""
    states = [generator_state(g) for g in cluster.generators]
    traces = cluster.traces_sent
    problems = []
    edges = sum(s[1] for s in states)
    if edges != traces:
        problems.append(f"{prom_text.show(EDGE)} summed over generators = {edges} ({[s[1] for s in states]}), expected {traces}")
    calls = {}
    for s in states:
        for k, v in s[0].items():
            calls[k] = calls.get(k, 0) + v
    if calls != {CLIENT: traces, SERVER: traces}:
        problems.append(f"calls summed over generators are {calls}, expected {traces} for {CLIENT} and {SERVER}")
    for i, s in enumerate(states):
        if s[2]:
            problems.append(f"generator {i} has unpaired spans: {s[2]}")
        other = {k: v for k, v in s[3].items() if k != prom_text.show(EDGE)}
        if other:
            problems.append(f"generator {i} has other edges: {other}")
    return problems


def test_edges_paired_across_ingesters_and_generators(cluster):
    gens = cluster.generators
    send(cluster, 40)
    cluster.traces_sent += 40
    wait_until(lambda: settled(cluster), 30, "the service graph and span metrics summed over both generators")

    states = [generator_state(g) for g in gens]
    per_generator = [s[1] for s in states]
    print(f"edges per generator: {per_generator}")
    assert all(n > 0 for n in per_generator), f"a generator got no traces: {per_generator}"
    # A generator sees both spans of the traces it owns and nothing else.
    spans = [internal_metric(g, "spindle_generator_spans_total") for g in gens]
    assert spans == [2 * n for n in per_generator], f"spans per generator {spans}, edges {per_generator}"
    for i, s in enumerate(states):
        assert s[0] == {CLIENT: s[1], SERVER: s[1]}, f"generator {i}: calls {s[0]} for {s[1]} edges"
    assert sum(dropped(cluster.ingesters).values()) == 0, dropped(cluster.ingesters)


def test_sql_metrics_has_both_generators_samples(cluster):
    """Each generator writes its own sample files and rows do not say which generator wrote them,
    but a generator stamps every series of one collection with the same instant: once the counts
    are final, every collection is one generator's complete snapshot. Both generators' snapshots
    (as scraped) must show up in SQL, and nothing else."""
    send(cluster, 10)
    cluster.traces_sent += 10
    wait_until(lambda: settled(cluster), 30, "the service graph and span metrics summed over both generators")
    snapshots = [generator_state(g)[0] for g in cluster.generators]
    final_ms = int(time.time() * 1000)
    querier = cluster.queriers[0]

    def sql_has_both_snapshots():
        groups = sql_calls_groups(querier, final_ms)
        clean = [(ts, rows) for ts, rows, dup in groups if not dup]
        problems = [f"SQL rows at {ts} are {rows}, which is neither generator's counts {snapshots}"
                    for ts, rows in clean if rows not in snapshots]
        for i, snap in enumerate(snapshots):
            if not any(rows == snap for _, rows in clean):
                problems.append(f"no collection in SQL after {final_ms} has generator {i}'s counts {snap} "
                                f"(collections after it: {[(ts, rows) for ts, rows, _ in groups]})")
        return problems

    wait_until(sql_has_both_snapshots, 20, "both generators' samples in the SQL table metrics")


def test_killed_generator_never_slows_ingestion(cluster):
    survivor, victim = cluster.generators
    querier = cluster.queriers[0]
    spans_before = internal_metric(survivor, "spindle_generator_spans_total")
    edges_before = generator_state(survivor)[1]
    dropped_before = sum(dropped(cluster.ingesters).values())

    victim.kill9()
    traces = 40
    ids = send(cluster, traces, per_request=5)

    # Every span either reached the survivor or was counted as dropped by an ingester.
    def accounted():
        got = internal_metric(survivor, "spindle_generator_spans_total") - spans_before
        lost = sum(dropped(cluster.ingesters).values()) - dropped_before
        if got + lost != 2 * traces:
            return [f"survivor got {got} spans, ingesters dropped {lost}: expected {2 * traces} in all"]
        return []

    wait_until(accounted, 20, "spans reaching the survivor plus spans dropped")
    reasons = dropped(cluster.ingesters)
    print(f"dropped by the ingesters: {reasons}")
    assert reasons.get("unreachable", 0) + reasons.get("queue_full", 0) > dropped_before, reasons
    assert {r for r, v in reasons.items() if v} <= {"unreachable", "queue_full"}, reasons

    # The survivor pairs the traces it owns, and still owns some.
    got = internal_metric(survivor, "spindle_generator_spans_total") - spans_before

    def survivor_pairs():
        calls, edges, unpaired, _ = generator_state(survivor)
        problems = [f"survivor has unpaired spans: {unpaired}"] if unpaired else []
        if (edges - edges_before) * 2 != got:
            problems.append(f"survivor paired {edges - edges_before} new edges for {got} new spans")
        return problems

    wait_until(survivor_pairs, 20, "the survivor's new edges")
    assert 0 < got < 2 * traces, f"survivor got {got} of {2 * traces} spans"

    # Every trace is stored, both spans.
    def stored():
        missing = []
        for trace_id in ids:
            r = requests.get(f"{querier.api}/api/v2/traces/{trace_id}", headers={"X-Scope-OrgID": TENANT}, timeout=30)
            n = 0
            if r.status_code == 200:
                n = sum(len(ss.get("spans", [])) for rs in r.json()["trace"].get("resourceSpans", [])
                        for ss in rs.get("scopeSpans", []))
            if n != 2:
                missing.append(f"{trace_id}: HTTP {r.status_code}, {n} spans")
        return missing

    wait_until(stored, 20, "the traces sent with a generator down, through the querier")
    assert survivor.proc.poll() is None and victim.proc.poll() is not None
