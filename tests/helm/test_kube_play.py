"""The chart's single-mode manifests played by `podman kube play` against the spindle image
(deploy/docker/build-image.sh): the pod as the chart renders it (command, args, config file from
the ConfigMap, security contexts with user 65532 and a read-only root filesystem, the data
volume and the emptyDir cache), a span in over OTLP/HTTP and back out of the Tempo API.

kube play (podman 4.3) runs Pods, ConfigMaps and PersistentVolumeClaims but not StatefulSets,
so the StatefulSet becomes its pod `<name>-0` with its volume claim, as the StatefulSet
controller would make them. The rest is rewritten only where this machine needs it: host
networking (container ports dropped: kube play refuses port mappings on the host network), free
ports through the chart's `ports` values, and loopback addresses through `single.extraArgs`.
Mode distributed is not played: its storage nodes are a StatefulSet whose pods find each other
by DNS names and share one port, which host networking cannot give them; its manifests run as
local processes in test_distributed_manifests.py.

Env: SPINDLE_HELM (Helm binary, tests/helm/check.sh installs it), SPINDLE_IMAGE (else built from
SPINDLE_BIN, see tests/e2e/container.py)."""

import json
import os
import subprocess
import sys
import time
import uuid

import requests
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from container import ROOT, image, podman  # noqa: E402
from local_pods import free_port  # noqa: E402

HELM = os.environ.get("SPINDLE_HELM", os.path.join(ROOT, ".cache", "helm-bin", "helm"))


def render(release, ports):
    repository, _, tag = image().rpartition(":")
    args = [HELM, "template", release, os.path.join(ROOT, "helm", "spindle"),
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never",
            "--set", f"ports.http={ports['http']}", "--set", f"ports.otlpGrpc={ports['grpc']}",
            "--set", f"ports.otlpHttp={ports['otlp_http']}", "--set", f"ports.zipkin={ports['zipkin']}"]
    for i, (flag, port) in enumerate([("--http-addr", ports["http"]), ("--otlp-grpc-addr", ports["grpc"]),
                                      ("--otlp-http-addr", ports["otlp_http"]), ("--zipkin-addr", ports["zipkin"])]):
        args += ["--set", f"single.extraArgs[{2 * i}]={flag}", "--set", f"single.extraArgs[{2 * i + 1}]=127.0.0.1:{port}"]
    if not os.path.exists(HELM):
        raise RuntimeError(f"no Helm at {HELM}: tests/helm/check.sh installs it (or set SPINDLE_HELM)")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def as_pods(docs):
    """ConfigMaps as they are; each StatefulSet as its first pod and that pod's volume claims."""
    out, kinds = [], set()
    for d in docs:
        kinds.add(d["kind"])
        if d["kind"] == "ConfigMap":
            out.append(d)
        elif d["kind"] == "StatefulSet":
            name = f"{d['metadata']['name']}-0"
            spec = dict(d["spec"]["template"]["spec"])
            spec["hostNetwork"] = True
            spec["containers"] = [{k: v for k, v in c.items() if k != "ports"} for c in spec["containers"]]
            volumes = list(spec.get("volumes", []))
            for template in d["spec"].get("volumeClaimTemplates", []):
                claim = f"{template['metadata']['name']}-{name}"
                out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                            "spec": template["spec"]})
                volumes.append({"name": template["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
            spec["volumes"] = volumes
            out.append({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "labels": d["spec"]["template"]["metadata"]["labels"]},
                        "spec": spec})
    assert {"ConfigMap", "StatefulSet"} <= kinds, f"single mode renders {kinds}"
    return out


def otlp_json_trace(trace_id, span_id, service):
    now = time.time_ns()
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": span_id, "name": "kube-play-span", "kind": 2,
                                   "startTimeUnixNano": str(now - 5_000_000), "endTimeUnixNano": str(now)}]}]}]}


def test_single_mode_pod_plays_and_serves(tmp_path):
    ports = {"http": free_port(), "grpc": free_port(), "otlp_http": free_port(), "zipkin": free_port()}
    release = f"kp{uuid.uuid4().hex[:8]}"
    docs = as_pods(render(release, ports))
    manifest = tmp_path / "play.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    volumes = [d["metadata"]["name"] for d in docs if d["kind"] in ("PersistentVolumeClaim", "ConfigMap")]
    pod = next(d for d in docs if d["kind"] == "Pod")
    container = f"{pod['metadata']['name']}-{pod['spec']['containers'][0]['name']}"
    api = f"http://127.0.0.1:{ports['http']}"
    try:
        podman("kube", "play", str(manifest))
        deadline = time.time() + 90
        while True:
            try:
                if requests.get(f"{api}/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise AssertionError(f"the pod is not ready: {podman('logs', container, check=False)[-3000:]}")
            time.sleep(0.2)
        info = json.loads(podman("inspect", container))[0]
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        with open(f"/proc/{info['State']['Pid']}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        assert uid == "65532"
        mounts = {m["Destination"] for m in info["Mounts"]}
        assert {"/etc/spindle", "/var/lib/spindle", "/var/cache/spindle", "/tmp"} <= mounts, mounts

        trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        r = requests.post(f"http://127.0.0.1:{ports['otlp_http']}/v1/traces",
                          json=otlp_json_trace(trace_id, span_id, "kube-play"), timeout=30)
        assert r.status_code == 200, r.text
        r = requests.get(f"{api}/api/v2/traces/{trace_id}", headers={"Accept": "application/json"}, timeout=30)
        assert r.status_code == 200, r.text
        assert "kube-play-span" in r.text and "kube-play" in r.text

        # The chart's Zipkin port: a Zipkin v2 span in, read back through the Tempo API.
        zipkin_trace = uuid.uuid4().hex
        now_us = int(time.time() * 1e6)
        r = requests.post(f"http://127.0.0.1:{ports['zipkin']}/api/v2/spans", timeout=30, json=[
            {"traceId": zipkin_trace, "id": span_id, "name": "kube-play-zipkin", "timestamp": now_us - 5000,
             "duration": 5000, "kind": "SERVER", "localEndpoint": {"serviceName": "kube-play-zipkin-svc"}}])
        assert r.status_code == 202, r.text
        r = requests.get(f"{api}/api/v2/traces/{zipkin_trace}", headers={"Accept": "application/json"}, timeout=30)
        assert r.status_code == 200 and "kube-play-zipkin-svc" in r.text, r.text
    finally:
        podman("kube", "down", str(manifest), check=False)
        for v in volumes:
            podman("volume", "rm", "-f", v, check=False)
