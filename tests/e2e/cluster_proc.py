"""A Spindle cluster of real processes on loopback (storage nodes, ingesters, queriers sharing one
block directory), and a probe that keeps writing through an ingester and records when writes
succeed."""

import os
import random
import tempfile
import threading
import time

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from object_stores import backend
from spindle_proc import Spindle


class Cluster:
    def __init__(self, storage=3, ingesters=1, queriers=1, shards=4, rf=3, storage_args=(), common_args=()):
        self.dir = tempfile.mkdtemp(prefix="spindle-cluster-")
        self.storage_url = (
            "file://" + os.path.join(self.dir, "blocks") if backend().name == "fs" else backend().new_url()
        )
        self.shards, self.rf = shards, rf
        self.storage_args = list(storage_args)
        # Options of every process (storage nodes, ingesters, queriers).
        self.common_args = list(common_args)
        self.storage = []
        for i in range(storage):
            self.storage.append(self._storage_node(i + 1, expect=storage))
        seeds = [n.internal for n in self.storage]
        for n in self.storage:
            n.seeds = seeds
        self.ingesters = [Spindle(role="ingester", seeds=seeds, extra_args=self.common_args) for _ in range(ingesters)]
        self.queriers = [Spindle(role="querier", seeds=seeds, storage_url=self.storage_url, extra_args=self.common_args)
                         for _ in range(queriers)]

    def _storage_node(self, node_id, expect):
        args = ["--bootstrap-expect", str(expect), "--shards", str(self.shards), "--replication-factor", str(self.rf)]
        return Spindle(role="storage", node_id=node_id, storage_url=self.storage_url, extra_args=args + self.storage_args + self.common_args)

    @property
    def seeds(self):
        return [n.internal for n in self.storage]

    def start(self, timeout=90):
        for n in self.storage:
            n.start(wait=False)
        for n in self.storage:
            n.wait_ready(timeout)
        for p in self.ingesters + self.queriers:
            p.start(timeout=timeout)
        return self

    def add_storage_node(self, timeout=90):
        node = self._storage_node(len(self.storage) + 1, expect=1)
        node.seeds = self.seeds
        self.storage.append(node)
        node.start(timeout=timeout)
        return node

    def live_storage(self):
        return [n for n in self.storage if n.proc and n.proc.poll() is None]

    def status(self, node):
        return node.status()

    def cluster_state(self):
        for n in self.live_storage():
            try:
                return requests.get(n.api + "/admin/cluster", timeout=3).json()
            except requests.RequestException:
                continue
        raise RuntimeError("no storage node answers")

    def leader_of(self, shard, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for n in self.live_storage():
                try:
                    st = n.status()
                except requests.RequestException:
                    continue
                for s in st["shards"]:
                    if s["shard"] == shard and s["role"] == "Leader":
                        return n
            time.sleep(0.2)
        raise RuntimeError(f"shard {shard} has no leader")

    def stop(self):
        for p in self.ingesters + self.queriers + self.storage:
            p.stop()


def probe_request(traces, service="probe"):
    spans = []
    now = time.time_ns()
    for _ in range(traces):
        spans.append(Span(
            trace_id=random.randbytes(16), span_id=random.randbytes(8), name="probe",
            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now, end_time_unix_nano=now + 1_000_000,
        ))
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])])
    return request, [s.trace_id.hex() for s in spans]


class Probe:
    """Writes a request of `traces` one-span traces every `interval` through an ingester's
    OTLP/HTTP endpoint (tenant `probe`) and records (start, end, ok, trace ids) per request."""

    def __init__(self, ingester, traces=64, interval=0.1, timeout=3.0, tenant="probe"):
        self.ingester, self.traces, self.interval, self.timeout, self.tenant = ingester, traces, interval, timeout, tenant
        self.results = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self):
        session = requests.Session()
        while not self._stop.is_set():
            request, ids = probe_request(self.traces)
            start = time.time()
            try:
                r = session.post(
                    self.ingester.otlp_http + "/v1/traces", data=request.SerializeToString(), timeout=self.timeout,
                    headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": self.tenant},
                )
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            self.results.append((start, time.time(), ok, ids))
            time.sleep(self.interval)

    def acked_traces(self):
        return [t for (_, _, ok, ids) in self.results if ok for t in ids]

    def resumed_after(self, t, timeout=30):
        """Seconds from `t` until a write that started after `t` succeeded."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for start, end, ok, _ in list(self.results):
                if ok and start >= t:
                    return end - t
            time.sleep(0.05)
        raise AssertionError(f"no write succeeded within {timeout} s after {t}")


def kill_leader(cluster, shard, probe, what=""):
    """Kills the leader of `shard` with SIGKILL; returns it and the seconds until the probe's
    writes succeeded again."""
    victim = cluster.leader_of(shard)
    killed_at = time.time()
    victim.kill9()
    resumed = probe.resumed_after(killed_at)
    print(f"writes resumed {resumed:.2f} s after the leader of shard {shard} was killed{what}")
    return victim, resumed


def duplicates(querier, tenant):
    """Spans stored more than once (same trace id and span id)."""
    r = querier.sql(
        "SELECT count(*) FROM (SELECT trace_id, span_id FROM spans GROUP BY trace_id, span_id HAVING count(*) > 1)",
        tenant=tenant,
    )
    assert r.status_code == 200, r.text
    return r.json()["rows"][0][0]


def count_spans(querier, tenant):
    r = querier.sql("SELECT count(*) FROM spans", tenant=tenant)
    assert r.status_code == 200, r.text
    return r.json()["rows"][0][0]
