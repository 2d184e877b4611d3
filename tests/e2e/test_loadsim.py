"""A short loadsim run against a real spindle: every sampled acknowledged span reads back,
over gRPC and HTTP and across tenants; and the checker does fail when spans are missing."""

import json
import os
import subprocess

from spindle_proc import Spindle


def loadsim_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/spindle-target"))
    path = os.path.join(os.path.dirname(os.environ["SPINDLE_BIN"]), "loadsim") if os.environ.get("SPINDLE_BIN") else os.path.join(target, "debug", "loadsim")
    assert os.path.exists(path), f"loadsim not built at {path}"
    return path


def run_loadsim(*args, timeout=180):
    p = subprocess.run([loadsim_binary(), *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip().startswith("{") else None, p.stderr


def test_loadsim_grpc_and_http_lose_nothing():
    s = Spindle().start()
    try:
        rc, report, err = run_loadsim(
            "--endpoint", s.otlp_grpc, "--services", "20", "--rate", "50", "--duration", "5s",
            "--verify", "--query-endpoint", f"127.0.0.1:{s.http_port}",
        )
        assert rc == 0, err
        assert report["lost_spans"] == 0 and report["verify"]["wrong_spans"] == 0
        assert report["spans_acknowledged"] >= 3000
        assert report["verify"]["spans_checked"] == report["spans_acknowledged"]

        rc, report, err = run_loadsim(
            "--protocol", "http", "--endpoint", f"127.0.0.1:{s.otlp_http_port}", "--services", "10", "--rate", "100",
            "--duration", "3s", "--tenants", "3", "--verify", "--query-endpoint", f"127.0.0.1:{s.http_port}",
        )
        assert rc == 0, err
        assert report["lost_spans"] == 0 and report["requests"] == {"ok": report["requests"]["ok"]}
        tenants = s.sql("SELECT count(*) FROM spans", tenant="tenant-1").json()["rows"][0][0]
        assert 0 < tenants < report["spans_acknowledged"]
    finally:
        s.stop()


def test_verification_fails_when_spans_are_missing():
    writer, empty = Spindle().start(), Spindle().start()
    try:
        rc, report, err = run_loadsim(
            "--endpoint", writer.otlp_grpc, "--services", "5", "--rate", "100", "--duration", "1s",
            "--verify", "--query-endpoint", f"127.0.0.1:{empty.http_port}",
        )
        assert rc != 0
        assert report["lost_spans"] == report["spans_acknowledged"] > 0
    finally:
        writer.stop()
        empty.stop()
