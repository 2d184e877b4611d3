"""Starts and stops real `spindle` processes on loopback for end-to-end tests."""

import os
import signal
import socket
import subprocess
import tempfile
import time

import requests


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
    """One all-in-one spindle process with its own data dir and ports."""

    def __init__(self, data_dir=None, extra_args=()):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="spindle-e2e-")
        self.extra_args = list(extra_args)
        self.http_port, self.grpc_port, self.otlp_http_port = free_port(), free_port(), free_port()
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "spindle.log")

    @property
    def api(self):
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def otlp_http(self):
        return f"http://127.0.0.1:{self.otlp_http_port}"

    @property
    def otlp_grpc(self):
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout=60):
        args = [
            spindle_binary(),
            "--data-dir", os.path.join(self.data_dir, "data"),
            "--http-addr", f"127.0.0.1:{self.http_port}",
            "--otlp-grpc-addr", f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-addr", f"127.0.0.1:{self.otlp_http_port}",
            *self.extra_args,
        ]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spindle exited with {self.proc.returncode}: {self.read_log()[-3000:]}")
            try:
                if requests.get(self.api + "/ready", timeout=1).text == "ready":
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("spindle did not become ready: " + self.read_log()[-3000:])

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout=60):
        """SIGTERM; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def sql(self, query, tenant=None, fmt=None):
        headers = {"X-Scope-OrgID": tenant} if tenant else {}
        params = {"format": fmt} if fmt else {}
        return requests.post(self.api + "/api/v1/sql", json={"query": query}, headers=headers, params=params, timeout=30)
