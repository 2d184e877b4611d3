"""The chart's distributed manifests, run: every container's command, args, env and config file
as rendered (only ports, paths, DNS names and the object store rewritten for loopback, see
local_pods.py) start as local `spindle` processes, form a cluster through the seeds and the
advertised addresses the chart gives them, pass their readiness and liveness probes, and lose
no span of a `loadsim --verify` run sent through the ingester Service and read back through the
querier Service.

SPINDLE_HELM_DISTRIBUTED: the rendered manifests (tests/helm/check.sh renders them from
values-local-test.yaml); SPINDLE_BIN: the spindle binary (loadsim next to it)."""

import json
import os
import subprocess
import time

import pytest
import requests

from local_pods import LocalCluster, load, loadsim_bin

MANIFESTS = os.environ.get("SPINDLE_HELM_DISTRIBUTED", ".cache/helm-out/local-test.yaml")
NAMESPACE = os.environ.get("SPINDLE_HELM_NAMESPACE", "spindle")


@pytest.fixture(scope="module")
def docs():
    if not os.path.exists(MANIFESTS):
        pytest.fail(f"{MANIFESTS} missing: run tests/helm/check.sh")
    return load(MANIFESTS)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def blocks(cluster):
    return [f for _, _, files in os.walk(cluster.blocks) for f in files if f.endswith(".parquet")]


def loadsim(otlp, query, report, seconds, seed):
    """A paced loadsim run through the ingester Service that reads every sampled acknowledged
    trace back through the querier Service."""
    run = subprocess.run(
        [loadsim_bin(), "--endpoint", otlp, "--services", "10", "--rate", "20", "--duration", f"{seconds}s",
         "--batch", "100", "--concurrency", "2", "--seed", str(seed), "--verify", "--verify-sample", "300",
         "--query-endpoint", query, "--report", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["spans_acknowledged"] > 0, summary
    assert summary["lost_spans"] == 0 and summary["verify"]["wrong_spans"] == 0, summary
    return summary


def test_workloads_are_wired_for_kubernetes(docs):
    """What a cluster of storage pods needs from Kubernetes, checked on the objects themselves."""
    sts = by_kind(docs, "StatefulSet")
    storage = next(s for s in sts.values() if s["metadata"]["labels"]["app.kubernetes.io/component"] == "storage")
    spec = storage["spec"]
    assert spec["ordinals"]["start"] == 1, "node ids are the ordinals and must start at 1"
    assert spec["podManagementPolicy"] == "Parallel", "bootstrap needs every seed up at once"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    headless = by_kind(docs, "Service")[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    pdbs = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: p for p in by_kind(docs, "PodDisruptionBudget").values()}
    assert pdbs["storage"]["spec"]["maxUnavailable"] == 1
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    deployments = by_kind(docs, "Deployment")
    assert {n for n in deployments if n.endswith(("-ingester", "-querier"))} == hpas
    assert by_kind(docs, "ServiceMonitor"), "serviceMonitor.enabled renders a ServiceMonitor"

    for w in list(sts.values()) + list(deployments.values()):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["enableServiceLinks"] is False
        mounts = set()
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
            assert c["resources"]["requests"] and c["resources"]["limits"]
            mounts |= {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts
        if "--cache-dir" in pod["containers"][0]["args"]:
            assert "/var/cache/spindle" in mounts


def test_rendered_cluster_runs_and_loses_nothing(docs, tmp_path):
    existed = os.path.exists("/var/lib/spindle")
    cluster = LocalCluster(docs, namespace=NAMESPACE)
    storage = cluster.component("storage")
    others = [p for p in cluster.pods if p not in storage]
    assert len(storage) == 3 and {p.labels["app.kubernetes.io/component"] for p in others} == {
        "ingester", "querier", "compactor", "generator"}
    generators = cluster.component("generator")
    assert len(generators) == 2
    try:
        for p in storage:
            p.start()
        for p in storage:
            p.wait_ready(timeout=90)
        for p in others:
            p.start()
        for p in others:
            p.wait_ready(timeout=60)
        for p in cluster.pods:
            assert p.probe("livenessProbe")[0] == 200
            assert p.probe("startupProbe")[0] == 200

        # The cluster the storage nodes formed: three active nodes, each at its advertised name.
        state = requests.get(f"http://127.0.0.1:{storage[0].port('http')}/admin/cluster", timeout=5).json()
        text = json.dumps(state)
        for p in storage:
            assert p.env["SPINDLE_ADVERTISE_ADDR"] in text, f"{p.name} is not in the cluster state: {text[:2000]}"

        fullname = storage[0].workload["metadata"]["name"].removesuffix("-storage")
        otlp = cluster.service_address(f"{fullname}-ingester", "otlp-grpc")
        query = cluster.service_address(f"{fullname}-querier", "http")
        summary = loadsim(otlp, query, tmp_path / "loadsim.json", seconds=5, seed=1)

        # The ingester sent every committed span to the generator pods listed in the chart's
        # config (each the traces it owns): both got spans, none was dropped, none lost.
        def generated_spans(pod):
            text = requests.get(f"http://127.0.0.1:{pod.port('http')}/metrics", timeout=5).text
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("spindle_generator_spans_total"))
        deadline = time.time() + 20
        while time.time() < deadline and sum(map(generated_spans, generators)) < summary["spans_acknowledged"]:
            time.sleep(0.5)
        counts = [generated_spans(g) for g in generators]
        assert sum(counts) == summary["spans_acknowledged"] and all(counts), (counts, summary["spans_acknowledged"])
        scrape = requests.get(f"http://127.0.0.1:{generators[0].port('http')}/api/generator/metrics", timeout=5).text
        assert "traces_service_graph_request_total{" in scrape and "traces_spanmetrics_calls_total{" in scrape

        # The storage nodes flush to the shared store (flush_max_age 5s in the test values).
        deadline = time.time() + 30
        while time.time() < deadline and not blocks(cluster):
            time.sleep(0.5)
        assert blocks(cluster), "no block reached the object store"

        # A rolling update's step: the StatefulSet stops the highest ordinal (SIGTERM: it flushes
        # what it leads and exits 0 within its grace period), the others keep every shard's
        # quorum and take writes, and the pod comes back with the same id and volume.
        last = storage[-1]
        assert last.terminate(timeout=last.spec["terminationGracePeriodSeconds"]) == 0, last.read_log()[-3000:]
        loadsim(otlp, query, tmp_path / "loadsim-2.json", seconds=3, seed=2)
        last.start()
        last.wait_ready(timeout=90)
        loadsim(otlp, query, tmp_path / "loadsim-3.json", seconds=2, seed=3)

        # The stateless roles stop cleanly on SIGTERM.
        for p in others:
            assert p.terminate(timeout=p.spec["terminationGracePeriodSeconds"]) == 0, p.read_log()[-3000:]
    except BaseException:
        for p in cluster.pods:
            if p.proc:
                print(f"----- {p.name}: {' '.join(p.argv)}\n{p.read_log()[-4000:]}")
        raise
    finally:
        cluster.stop()
    if not existed:
        assert not os.path.exists("/var/lib/spindle"), "a process wrote outside its volumes (read-only root fs)"
