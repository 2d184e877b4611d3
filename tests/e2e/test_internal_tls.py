"""Mutual TLS on the internal gRPC API: a cluster of real processes (3 storage nodes, an
ingester, a querier and a metrics generator) whose certificates come from `spindle certs` talks
only TLS among its members (Raft, pushes, reads, metadata, generator pushes), survives a leader
killed with SIGKILL, and refuses plaintext clients, clients without a certificate, clients with
a certificate from another CA, and clients that do not trust the cluster CA."""

import os
import subprocess
import tempfile
import time

import grpc
import pytest
import requests

from cluster_proc import Cluster, Probe, count_spans, kill_leader
from spindle_proc import Spindle, spindle_binary

INTERNAL_METHODS = (
    "/spindle.storage.v1.Storage/Push",
    "/spindle.storage.v1.Cluster/GetTopology",
    "/spindle.storage.v1.Raft/Vote",
)


def make_certs(directory, *names):
    out = subprocess.run([spindle_binary(), "certs", directory, *names], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    stem = names[0]
    return {
        "ca": os.path.join(directory, "ca.pem"),
        "cert": os.path.join(directory, f"{stem}.pem"),
        "key": os.path.join(directory, f"{stem}-key.pem"),
    }


def tls_args(files):
    return ["--internal-tls-ca-file", files["ca"], "--internal-tls-cert-file", files["cert"],
            "--internal-tls-key-file", files["key"]]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def call(addr, method, credentials=None):
    """One internal call with an empty request; returns the status code (OK when answered)."""
    channel = grpc.secure_channel(addr, credentials) if credentials else grpc.insecure_channel(addr)
    try:
        stub = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        stub(b"", timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()
    finally:
        channel.close()


@pytest.fixture(scope="module")
def certs():
    directory = tempfile.mkdtemp(prefix="spindle-internal-tls-")
    member = make_certs(directory, "127.0.0.1", "localhost")
    # A second node certificate from the same CA: nodes need not share one.
    other_member = make_certs(directory, "localhost", "127.0.0.1")
    stranger = make_certs(tempfile.mkdtemp(prefix="spindle-other-ca-"), "127.0.0.1")
    return member, other_member, stranger


def test_certs_reuses_the_ca_and_refuses_no_names(certs):
    member, other_member, _ = certs
    assert member["ca"] == other_member["ca"] and member["cert"] != other_member["cert"]
    out = subprocess.run([spindle_binary(), "certs", tempfile.mkdtemp()], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "NAMES" in out.stderr, out.stderr


def test_cluster_over_mutual_tls(certs):
    member, other_member, stranger = certs
    c = Cluster(storage=3, ingesters=1, queriers=1, shards=2, common_args=tls_args(member),
                storage_args=["--flush-max-age", "5s"])
    # One storage node with the other certificate of the same CA.
    swap = {member[k]: other_member[k] for k in ("cert", "key")}
    c.storage[2].extra_args = [swap.get(a, a) for a in c.storage[2].extra_args]
    generator = Spindle(role="generator", storage_url=c.storage_url, extra_args=tls_args(member))
    c.ingesters[0].extra_args += ["--generators", generator.internal]
    generator.start()
    c.start()
    try:
        probe = Probe(c.ingesters[0], traces=20).start()
        time.sleep(4)
        victim, _ = kill_leader(c, 0, probe, " (mutual TLS)")
        victim.start(timeout=90)
        time.sleep(3)
        probe.stop()

        acked = probe.acked_traces()
        assert acked
        querier = c.queriers[0]
        assert count_spans(querier, "probe") >= len(acked)
        for trace in acked[:: max(1, len(acked) // 30)]:
            r = requests.get(f"{querier.api}/api/v2/traces/{trace}", headers={"X-Scope-OrgID": "probe"}, timeout=30)
            assert r.status_code == 200, (trace, r.status_code, r.text[:200])
        # The ingester reached the generator over TLS too.
        def generated():
            r = requests.get(f"{generator.api}/api/generator/metrics", headers={"X-Scope-OrgID": "probe"}, timeout=5)
            return r.status_code == 200 and "traces_spanmetrics_calls_total" in r.text
        deadline = time.time() + 30
        while not generated() and time.time() < deadline:
            time.sleep(0.5)
        assert generated(), generator.read_log()[-2000:]

        member_creds = grpc.ssl_channel_credentials(read(member["ca"]), read(member["key"]), read(member["cert"]))
        no_cert = grpc.ssl_channel_credentials(read(member["ca"]))
        stranger_cert = grpc.ssl_channel_credentials(read(member["ca"]), read(stranger["key"]), read(stranger["cert"]))
        # Trusts another CA only: the node's certificate must not satisfy it.
        wrong_trust = grpc.ssl_channel_credentials(read(stranger["ca"]), read(member["key"]), read(member["cert"]))
        for addr in [c.storage[0].internal, generator.internal]:
            methods = INTERNAL_METHODS if addr != generator.internal else ("/spindle.generator.v1.Generator/Push",)
            for method in methods:
                assert call(addr, method) == grpc.StatusCode.UNAVAILABLE, (addr, method, "plaintext")
                for name, creds in [("no client certificate", no_cert), ("another CA's certificate", stranger_cert),
                                    ("not trusting the cluster CA", wrong_trust)]:
                    assert call(addr, method, creds) == grpc.StatusCode.UNAVAILABLE, (addr, method, name)
                # A member gets past TLS: the empty request is then answered or refused by the
                # service itself.
                got = call(addr, method, member_creds)
                assert got not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), (addr, method, got)
    finally:
        c.stop()
        generator.stop()


def test_internal_tls_options_go_together(certs):
    member, _, _ = certs
    node = Spindle(role="storage", node_id=1, extra_args=["--bootstrap-expect", "1",
                                                          "--internal-tls-ca-file", member["ca"]])
    out = subprocess.run(node.args(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "go together" in out.stderr, out.stderr
    # A node certificate that does not load stops the node at start, with the file named.
    bad = tls_args({**member, "cert": member["ca"] + ".missing"})
    node = Spindle(role="storage", node_id=1, extra_args=["--bootstrap-expect", "1", *bad])
    out = subprocess.run(node.args(), capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and ".missing" in out.stderr, out.stderr
