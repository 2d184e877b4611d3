"""The OCI image the Helm chart runs, started with podman: `spindle` all-in-one in a container
(host networking, non-root, read-only root filesystem, data on a volume), OTLP in from the Python
SDK and traces read back, and every acknowledged span kept across a kill of the container and a
restart on the same volume."""

import json
import time
import uuid

import requests
from opentelemetry.sdk.trace.export import SpanExportResult

from container import image, podman
from otlp_util import assert_same_trace, get_trace_all_ways, make_trace
from spindle_proc import free_port
from test_lifecycle import wait_flushes
from test_sdk_roundtrip import export_grpc, export_http


class Container:
    """`spindle` all-in-one in a container on the host network, data on a named volume."""

    def __init__(self, volume, extra_args=()):
        self.volume = volume
        self.extra_args = list(extra_args)
        self.http_port, self.grpc_port, self.otlp_http_port = free_port(), free_port(), free_port()
        self.name = None

    api = property(lambda self: f"http://127.0.0.1:{self.http_port}")
    otlp_http = property(lambda self: f"http://127.0.0.1:{self.otlp_http_port}")
    otlp_grpc = property(lambda self: f"127.0.0.1:{self.grpc_port}")

    def start(self, timeout=60):
        self.name = f"spindle-e2e-{uuid.uuid4().hex[:10]}"
        podman("run", "-d", "--name", self.name, "--network=host", "--read-only",
               "-v", f"{self.volume}:/var/lib/spindle", image(),
               "all", "--data-dir", "/var/lib/spindle", "--http-addr", f"127.0.0.1:{self.http_port}",
               "--otlp-grpc-addr", self.otlp_grpc, "--otlp-http-addr", f"127.0.0.1:{self.otlp_http_port}",
               "--zipkin-addr", f"127.0.0.1:{free_port()}",
               *self.extra_args)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.running():
                raise RuntimeError(f"the container exited: {self.logs()}")
            try:
                if requests.get(self.api + "/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"not ready within {timeout}s: {self.logs()}")

    def inspect(self):
        return json.loads(podman("inspect", self.name))[0]

    def running(self):
        return self.inspect()["State"]["Running"]

    def logs(self):
        return podman("logs", self.name, check=False)[-3000:]

    def kill9(self):
        """SIGKILL to the container's process (spindle is PID 1 in it), then remove it."""
        podman("kill", "--signal", "KILL", self.name)
        podman("rm", "-f", self.name)
        self.name = None

    def stop(self):
        if self.name:
            podman("rm", "-f", "-t", "0", self.name, check=False)
            self.name = None


def new_volume():
    name = f"spindle-e2e-{uuid.uuid4().hex[:10]}"
    podman("volume", "create", name)
    return name


def proc_ids(pid):
    """Real user and group ids of a host process, from /proc."""
    ids = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = int(value.split()[0])
    return ids


def test_image_runs_non_root_read_only_and_serves_otlp():
    volume = new_volume()
    c = Container(volume)
    try:
        c.start()
        info = c.inspect()
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert proc_ids(info["State"]["Pid"]) == {"Uid": 65532, "Gid": 65532}, "spindle must run as 65532"
        config = json.loads(podman("image", "inspect", image()))[0]["Config"]
        assert config["User"] == "65532:65532"
        assert config["Entrypoint"] == ["/usr/local/bin/spindle"]
        assert {"3200/tcp", "4317/tcp", "4318/tcp", "7400/tcp", "9411/tcp"} <= set(config["ExposedPorts"])
        sent = []
        for i, export in enumerate([export_grpc, export_http]):
            spans, trace_id = make_trace(f"container-{i}")
            assert export(c, spans) == SpanExportResult.SUCCESS
            sent.append((spans, trace_id))
        for spans, trace_id in sent:
            for returned in get_trace_all_ways(c.api, trace_id):
                assert_same_trace(spans, returned)
    finally:
        c.stop()
        podman("volume", "rm", "-f", volume, check=False)


def test_killed_container_restarted_on_its_volume_keeps_acknowledged_spans():
    volume = new_volume()
    c = Container(volume, ["--flush-max-age", "1s"])
    try:
        c.start()
        flushed, flushed_id = make_trace("container-flushed")
        assert export_http(c, flushed) == SpanExportResult.SUCCESS
        wait_flushes(c, 1, timeout=30)
        unflushed = []
        for i in range(5):
            spans, trace_id = make_trace(f"container-acked-{i}")
            assert export_grpc(c, spans) == SpanExportResult.SUCCESS
            unflushed.append((spans, trace_id))
        c.kill9()
        c.start()
        for spans, trace_id in [(flushed, flushed_id), *unflushed]:
            for returned in get_trace_all_ways(c.api, trace_id):
                assert_same_trace(spans, returned)
    finally:
        c.stop()
        podman("volume", "rm", "-f", volume, check=False)
