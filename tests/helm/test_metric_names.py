"""The Grafana dashboards and the alert rules in deploy/ query only metrics Spindle exports: the
metric names in their PromQL must appear on /metrics of a running `spindle all` (started from the
chart's single-mode manifests, see local_pods.py) after traffic: loadsim with --verify (writes,
trace-by-id reads), a search, SQL, a rejected span, a truncated span, a refused query and a
compaction round. The services (RED) dashboard queries the metrics generator's series: they must
appear on its scrape endpoint.

SPINDLE_HELM_SINGLE: the rendered single-mode manifests; SPINDLE_BIN: the spindle binary."""

import json
import os
import re
import subprocess
import time

import pytest
import requests

import promql
from local_pods import LocalCluster, load, loadsim_bin

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "spindle.json")
# Series the rules join with that come from kube-state-metrics, not from Spindle.
FROM_KUBERNETES = {"kube_pod_container_resource_limits"}
RED_DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "spindle-red.json")
RULES = os.path.join(ROOT, "deploy", "prometheus", "spindle-alerts.yaml")
MANIFESTS = os.environ.get("SPINDLE_HELM_SINGLE", os.path.join(ROOT, ".cache", "helm-out", "single.yaml"))


def used_names():
    used = {}
    for source, exprs in (("dashboard", promql.dashboard_exprs(DASHBOARD)), ("alert rules", promql.rule_exprs(RULES))):
        for title, expr in exprs:
            for name in promql.metric_names(expr):
                used.setdefault(name, set()).add(f"{source}: {title}")
    for name in promql.dashboard_variable_metrics(DASHBOARD):
        used.setdefault(name, set()).add("dashboard: variables")
    return used


def test_name_extraction():
    assert promql.metric_names(
        'histogram_quantile(0.99, sum by (endpoint, le) (rate(a_bucket{namespace=~"$namespace"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert promql.metric_names("sum by (ns) (x_total) / on (ns) group_left (y) z > 0.8 * 768 * 1e6 unless w") == {
        "x_total", "z", "w"}


@pytest.fixture(scope="module")
def metrics_text(tmp_path_factory):
    if not os.path.exists(MANIFESTS):
        pytest.fail(f"{MANIFESTS} missing: run tests/helm/check.sh")
    cluster = LocalCluster(load(MANIFESTS), namespace=os.environ.get("SPINDLE_HELM_NAMESPACE", "spindle"))
    (pod,) = cluster.pods
    # Flush and compact within the test (flags win over the chart's config file).
    pod.argv += ["--flush-max-age", "2s", "--compaction-interval", "3s"]
    try:
        pod.start()
        pod.wait_ready(timeout=60)
        api = f"http://127.0.0.1:{pod.port('http')}"
        report = tmp_path_factory.mktemp("loadsim") / "report.json"
        for i in range(2):  # two rounds: two blocks per shard, which compaction merges
            run = subprocess.run(
                [loadsim_bin(), "--endpoint", f"127.0.0.1:{pod.port('otlp-grpc')}", "--services", "5", "--rate", "40",
                 "--duration", "2s", "--batch", "100", "--concurrency", "2", "--seed", str(i + 1), "--verify", "--verify-sample", "50",
                 "--query-endpoint", f"127.0.0.1:{pod.port('http')}", "--report", str(report)],
                capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr[-3000:]
            time.sleep(3)
        assert requests.get(f"{api}/api/search", params={"tags": "service.name=x"}, timeout=30).status_code == 200
        assert requests.post(f"{api}/api/v1/sql", json={"query": "SELECT count(*) FROM spans"}, timeout=30).ok
        bad = {"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "0" * 32, "spanId": "0102030405060708", "name": "bad", "kind": 1,
            "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}
        r = requests.post(f"http://127.0.0.1:{pod.port('otlp-http')}/v1/traces", data=json.dumps(bad),
                          headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200, r.text  # partial success
        # A span cut by the span limits, and a query refused (more tenants than the limit).
        long = dict(bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0], traceId="1" * 32,
                    attributes=[{"key": "big", "value": {"stringValue": "x" * 100_000}}])
        r = requests.post(f"http://127.0.0.1:{pod.port('otlp-http')}/v1/traces",
                          data=json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [long]}]}]}),
                          headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200, r.text
        r = requests.post(f"{api}/api/v1/sql", json={"query": "SELECT 1"}, timeout=30,
                          headers={"X-Scope-OrgID": "|".join(f"t{i}" for i in range(17))})
        assert r.status_code == 400, r.text
        deadline = time.time() + 30
        text = ""
        while time.time() < deadline:
            text = requests.get(f"{api}/metrics", timeout=5).text
            if "spindle_compactor_jobs_done_total 0" not in text:
                break
            time.sleep(1)
        generated = requests.get(f"{api}/api/generator/metrics", timeout=5).text
        yield {"metrics": text, "generator": generated}
    finally:
        cluster.stop()


def test_dashboard_and_alerts_use_only_exported_metrics(metrics_text):
    exported = promql.exported_names(metrics_text["metrics"])
    used = used_names()
    assert len(used) >= 20, f"expected the dashboard and rules to use many metrics, found {sorted(used)}"
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported and name not in FROM_KUBERNETES}
    assert not unknown, f"metrics not exported by spindle: {json.dumps(unknown, indent=1)}"
    unused = sorted(n for n in exported if n.startswith("spindle_") and n not in used
                    and not n.endswith(("_sum", "_created")))
    print("exported but not on the dashboard or in alerts:", unused)


def test_red_dashboard_uses_only_generated_series(metrics_text):
    """Every series the services dashboard queries is on the generator's scrape endpoint after
    loadsim's traffic, with the label values its selectors use."""
    generated = metrics_text["generator"]
    exported = promql.exported_names(generated)
    used = {}
    for title, expr in promql.dashboard_exprs(RED_DASHBOARD):
        for name in promql.metric_names(expr):
            used.setdefault(name, set()).add(title)
    used.update({n: {"variables"} for n in promql.dashboard_variable_metrics(RED_DASHBOARD)})
    assert len(used) >= 4, sorted(used)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"series not generated: {json.dumps(unknown, indent=1)}"
    assert 'span_kind="SPAN_KIND_SERVER"' in generated and 'status_code="STATUS_CODE_ERROR"' in generated


def test_traffic_produced_the_labelled_series(metrics_text):
    """The families with labels show samples after the traffic, with the label values the
    dashboard and alerts rely on."""
    metrics_text = metrics_text["metrics"]
    assert re.search(r'spindle_ingester_spans_rejected_total\{[^}]*reason="invalid_span"', metrics_text)
    assert 'outcome="ok"' in metrics_text and 'protocol="grpc"' in metrics_text
    assert re.search(r'spindle_query_duration_seconds_bucket\{[^}]*endpoint="trace_by_id"', metrics_text)
    assert re.search(r'spindle_query_duration_seconds_count\{[^}]*endpoint="search"', metrics_text)
    assert re.search(r"^spindle_compactor_jobs_done_total [1-9]", metrics_text, re.M), "no compaction ran"
