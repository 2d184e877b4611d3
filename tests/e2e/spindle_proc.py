"""Starts and stops real `spindle` processes on loopback for end-to-end tests: all-in-one, or
one role per process forming a cluster."""

import os
import signal
import socket
import subprocess
import tempfile
import time

import requests

from object_stores import Backend, backend


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spindle_binary():
    path = os.environ.get("SPINDLE_BIN")
    if not path:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/spindle-target"))
        path = os.path.join(target, "debug", "spindle")
    if not os.path.exists(path):
        raise RuntimeError(f"spindle binary not found at {path}: run `cargo build -p spindle` first")
    return path


class Spindle:
    """One spindle process with its own data dir and ports.

    role "all" (default) runs everything; "storage", "ingester" and "querier" run one role and
    need `seeds` (internal addresses of storage nodes); "generator" (a metrics generator) serves
    its push API on `internal` and needs only the cluster's `storage_url`."""

    def __init__(self, data_dir=None, extra_args=(), role="all", node_id=None, seeds=(), storage_url=None,
                 store_via=None, env=None, tls=False):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix=f"spindle-e2e-{role}-")
        self.extra_args = list(extra_args)
        self.role = role
        self.node_id = node_id
        self.seeds = list(seeds)
        if storage_url is None and backend().name != "fs" and role != "ingester":
            storage_url = backend().new_url()
        self.storage_url = storage_url
        # Port of a proxy in front of the object store, when the test wants to cut it off.
        self.store_via = store_via
        # Environment over the backend's (a value of None removes the variable).
        self.env = dict(env or {})
        self.http_port, self.grpc_port, self.otlp_http_port = free_port(), free_port(), free_port()
        self.internal_port, self.zipkin_port = free_port(), free_port()
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "spindle.log")
        # TLS with the self-signed certificate spindle writes to <data>/tls/cert.pem.
        self.tls = tls

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def ca(self):
        """The certificate to trust (TLS), else True (requests' default verification)."""
        return os.path.join(self.data_dir, "data", "tls", "cert.pem") if self.tls else True

    @property
    def api(self):
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def otlp_http(self):
        return f"{self.scheme}://127.0.0.1:{self.otlp_http_port}"

    @property
    def zipkin(self):
        """Base URL of the Zipkin receiver (POST /api/v2/spans)."""
        return f"{self.scheme}://127.0.0.1:{self.zipkin_port}"

    @property
    def otlp_grpc(self):
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def internal(self):
        """Internal gRPC address of a storage node or a generator."""
        return f"127.0.0.1:{self.internal_port}"

    def args(self):
        args = [spindle_binary()]
        if self.role != "all":
            args.append(self.role)
        args += ["--http-addr", f"127.0.0.1:{self.http_port}"]
        if self.role in ("all", "storage", "querier", "compactor", "generator"):
            args += ["--data-dir", os.path.join(self.data_dir, "data")]
        if self.storage_url:
            args += ["--storage-url", self.storage_url]
            if not self.storage_url.startswith("file://"):
                args += backend().args(self.store_via)
        if self.role in ("all", "ingester"):
            args += ["--otlp-grpc-addr", self.otlp_grpc, "--otlp-http-addr", f"127.0.0.1:{self.otlp_http_port}",
                     "--zipkin-addr", f"127.0.0.1:{self.zipkin_port}"]
        if self.role == "storage":
            args += ["--grpc-addr", self.internal, "--advertise-addr", self.internal, "--node-id", str(self.node_id)]
        if self.role == "generator":
            args += ["--grpc-addr", self.internal]
        if self.seeds:
            args += ["--seeds", ",".join(self.seeds)]
        if self.tls:
            args += ["--tls-self-signed", "true"]
        return args + self.extra_args

    def start(self, timeout=60, wait=True):
        self.log = open(self.log_path, "ab")
        env = {**os.environ, **backend().env(), **self.env}
        env = {k: v for k, v in env.items() if v is not None}
        self.proc = subprocess.Popen(self.args(), stdout=self.log, stderr=self.log, env=env)
        if wait:
            self.wait_ready(timeout)
        return self

    def is_ready(self):
        try:
            return requests.get(self.api + "/ready", timeout=1, verify=self.ca).status_code == 200
        except OSError:  # requests' errors, and a TLS certificate not written yet
            return False

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spindle {self.role} exited with {self.proc.returncode}: {self.read_log()[-3000:]}")
            if self.is_ready():
                return self
            time.sleep(0.1)
        reason = ""
        try:
            reason = requests.get(self.api + "/ready", timeout=1, verify=self.ca).text
        except OSError:
            pass
        raise RuntimeError(f"spindle {self.role} did not become ready ({reason}): " + self.read_log()[-3000:])

    def blocks(self):
        """Paths of the span blocks (Parquet) in this process's block store,
        <tenant>/blocks/...: not the metrics generator's sample files (<tenant>/metrics/...)."""
        url = self.storage_url or "file://" + os.path.join(self.data_dir, "data", "blocks")
        if url.startswith("file://"):
            root = url[len("file://"):]
            files = Backend().list_parquet(url)
            relative = [os.path.relpath(f, root) for f in files]
        else:
            prefix = url.split("/", 3)[3] if url.count("/") >= 3 else ""
            files = backend().list_parquet(url)
            relative = [f[len(prefix):].lstrip("/") for f in files]
        return [f for f, rel in zip(files, relative) if rel.split("/")[1:2] == ["blocks"]]

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def sigstop(self):
        self.proc.send_signal(signal.SIGSTOP)

    def sigcont(self):
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout=60):
        """SIGTERM; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)

    def status(self):
        """A storage node's /admin/status."""
        return requests.get(self.api + "/admin/status", timeout=5).json()

    def sql(self, query, tenant=None, fmt=None):
        headers = {"X-Scope-OrgID": tenant} if tenant else {}
        params = {"format": fmt} if fmt else {}
        return requests.post(self.api + "/api/v1/sql", json={"query": query}, headers=headers, params=params, timeout=60)
