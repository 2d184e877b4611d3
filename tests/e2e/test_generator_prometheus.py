"""The metrics generator's remote write into a real Prometheus (2.42, the Debian package): span
metrics, service graph edges and exemplars carrying the trace id arrive and answer PromQL."""

import os
import shutil
import subprocess
import tempfile
import time

import pytest
import requests
from opentelemetry.trace import SpanKind

from generator_util import MS, Traces, export_http, trace_id_hex, write_config
from spindle_proc import Spindle, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEB_PROMETHEUS = os.path.join(ROOT, ".cache", "prometheus-deb", "usr", "bin", "prometheus")


def prometheus_binary():
    """$PROMETHEUS_BIN, the unpacked Debian package, `prometheus` on PATH, or the Debian package
    fetched now by install_prometheus.sh; skips the test when there is none of these."""
    for path in (os.environ.get("PROMETHEUS_BIN"), DEB_PROMETHEUS, shutil.which("prometheus")):
        if path and os.access(path, os.X_OK):
            return path
    p = subprocess.run(["bash", os.path.join(ROOT, "tests", "e2e", "install_prometheus.sh")],
                       capture_output=True, text=True, timeout=600)
    if p.returncode == 0 and os.access(DEB_PROMETHEUS, os.X_OK):
        return DEB_PROMETHEUS
    pytest.skip("no Prometheus: PROMETHEUS_BIN unset, none at .cache/prometheus-deb or on PATH, and "
                f"tests/e2e/install_prometheus.sh could not fetch it: {(p.stdout + p.stderr).strip()[-500:]}")


class Prometheus:
    """A Prometheus on 127.0.0.1 that scrapes nothing and accepts remote write and exemplars."""

    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="spindle-e2e-prometheus-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(self.dir, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-remote-write-receiver",
             "--enable-feature=exemplar-storage", "--log.level=warn"],
            stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.read_log()[-3000:]}")
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready: " + self.read_log()[-3000:])

    def query(self, promql):
        """[(labels, float value)] of an instant query at now."""
        r = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        assert r.status_code == 200, f"{promql}: {r.status_code} {r.text[:500]}"
        return [(x["metric"], float(x["value"][1])) for x in r.json()["data"]["result"]]

    def exemplars(self, promql, start, end):
        """[(series labels, exemplar labels, float value)]."""
        r = requests.get(self.url + "/api/v1/query_exemplars", params={"query": promql, "start": start, "end": end}, timeout=10)
        assert r.status_code == 200, f"exemplars of {promql}: {r.status_code} {r.text[:500]}"
        return [(series["seriesLabels"], e["labels"], float(e["value"]))
                for series in r.json()["data"] or [] for e in series["exemplars"]]

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus():
    p = Prometheus(prometheus_binary())
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


def poll(what, fetch, wanted, timeout=30):
    """Calls `fetch` until `wanted(result)` holds; fails showing the last result."""
    deadline = time.time() + timeout
    while True:
        result = fetch()
        if wanted(result):
            return result
        if time.time() > deadline:
            raise AssertionError(f"{what}: after {timeout}s Prometheus has {result}")
        time.sleep(0.5)


def test_remote_write_to_prometheus_with_exemplars(prometheus):
    s = Spindle()
    config = f"""\
generator:
  collection_interval: 1s
  service_graphs:
    wait: 2s
  remote_write:
    - url: {prometheus.url}/api/v1/write
"""
    s.extra_args += ["--config", write_config(s.data_dir, config)]
    s.start()
    try:
        t = Traces()
        call = t.span("web", "GET /api", SpanKind.CLIENT, 30 * MS)  # -> api, 20 ms (le 0.032)
        t.span("api", "GET /api", SpanKind.SERVER, 20 * MS, parent=call)
        home = t.span("web", "GET /home", SpanKind.SERVER, 5 * MS)  # root: user -> web
        spans = t.finished()
        api_trace, home_trace = trace_id_hex(call), trace_id_hex(home)
        start = time.time() - 60
        export_http(s, spans)

        def one(promql):
            return lambda: prometheus.query(promql)

        def equals(v):
            return lambda result: [value for _, value in result] == [v]

        poll("calls of api's server span", one(
            'traces_spanmetrics_calls_total{service="api",span_name="GET /api",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"}'),
            equals(1))
        poll("calls of web's client span", one(
            'traces_spanmetrics_calls_total{service="web",span_name="GET /api",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET"}'),
            equals(1))
        api_server = 'service="api",span_name="GET /api",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"'
        poll("api's 20 ms in bucket le=0.032", one(f'traces_spanmetrics_latency_bucket{{{api_server},le="0.032"}}'), equals(1))
        poll("api's 20 ms not in bucket le=0.016", one(f'traces_spanmetrics_latency_bucket{{{api_server},le="0.016"}}'), equals(0))
        poll("api's latency count", one(f'traces_spanmetrics_latency_count{{{api_server}}}'), equals(1))
        poll("the web -> api edge", one('traces_service_graph_request_total{client="web",server="api",connection_type=""}'), equals(1))
        poll("the user -> web edge", one('traces_service_graph_request_total{client="user",server="web",connection_type="virtual_node"}'),
             equals(1))
        poll("the edges", one("count(traces_service_graph_request_total)"), equals(2))

        # Exemplars carry the trace id, on the bucket the observation fell into.
        def api_exemplars():
            return [(series, labels, value) for series, labels, value in
                    prometheus.exemplars(f'traces_spanmetrics_latency_bucket{{{api_server}}}', start, time.time() + 60)
                    if labels.get("traceID") == api_trace]
        found = poll(f"an exemplar with traceID {api_trace} on api's latency", api_exemplars, bool)
        assert {series.get("le") for series, _, _ in found} == {"0.032"}, f"exemplars on other buckets than le=0.032: {found}"
        found = poll("any exemplar with a sent trace id on traces_spanmetrics_latency_bucket",
                     lambda: prometheus.exemplars("traces_spanmetrics_latency_bucket", start, time.time() + 60),
                     lambda result: {labels.get("traceID") for _, labels, _ in result} >= {api_trace, home_trace})
        assert all(len(labels.get("traceID", "")) == 32 for _, labels, _ in found), found
        poll(f"an exemplar with traceID {api_trace} on the web -> api server seconds",
             lambda: prometheus.exemplars('traces_service_graph_request_server_seconds_bucket{client="web",server="api"}',
                                          start, time.time() + 60),
             lambda result: api_trace in {labels.get("traceID") for _, labels, _ in result})
    finally:
        s.stop()
