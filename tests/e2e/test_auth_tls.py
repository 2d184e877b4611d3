"""API keys and TLS, end to end: the OpenTelemetry Python SDK sends over TLS (OTLP/gRPC and
OTLP/HTTP) with an API key; the key decides the tenant. Every read endpoint (trace by id v1 and
v2, search, tags, tag values, SQL, generated metrics) shows a key its own tenants only, whatever
headers, tenant lists, SQL or TraceQL it tries; missing or unknown keys get 401, keys used beyond
their rights 403 (gRPC: UNAUTHENTICATED / PERMISSION_DENIED). Keys and certificates are re-read
from their files without a restart."""

import datetime
import hashlib
import ipaddress
import os
import subprocess
import time

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExportResult

from otlp_util import make_trace
from spindle_proc import Spindle, free_port, spindle_binary

KEYS = {
    "writer-a": ("key-writer-a-0123456789", ["a"], ["write"]),
    "writer-b": ("key-writer-b-0123456789", ["b"], ["write"]),
    "reader-a": ("key-reader-a-0123456789", ["a"], ["read"]),
    "grafana": ("key-grafana-ab-0123456789", ["a", "b"], ["read"]),
    "ops": ("key-ops-0123456789", [], ["admin"]),
}


def own_session():
    """A requests session that uses the exporter's certificate_file: with REQUESTS_CA_BUNDLE in
    the environment (as on this machine), requests would use that bundle instead."""
    session = requests.Session()
    session.trust_env = False
    return session


def keys_yaml(names):
    lines = ["keys:"]
    for name in names:
        key, tenants, access = KEYS[name]
        lines += [f"  - name: {name}", f"    sha256: {hashlib.sha256(key.encode()).hexdigest()}",
                  f"    tenants: [{', '.join(tenants)}]", f"    access: [{', '.join(access)}]"]
    return "\n".join(lines) + "\n"


def bearer(name):
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


@pytest.fixture(scope="module")
def secured():
    s = Spindle(tls=True)
    keys = os.path.join(s.data_dir, "keys.yaml")
    with open(keys, "w") as f:
        f.write(keys_yaml(KEYS))
    s.extra_args += ["--api-keys-file", keys]
    s.start()
    s.keys_path = keys
    try:
        # Tenant a's trace over gRPC, tenant b's over HTTP, both with TLS and a key.
        spans_a, s.trace_a = make_trace("svc-a")
        spans_b, s.trace_b = make_trace("svc-b")
        with open(s.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
        grpc_exporter = GrpcExporter(endpoint=f"https://{s.otlp_grpc}", credentials=creds,
                                     headers=(("authorization", f"Bearer {KEYS['writer-a'][0]}"),), timeout=30)
        assert grpc_exporter.export(spans_a) == SpanExportResult.SUCCESS
        grpc_exporter.shutdown()
        http_exporter = HttpExporter(endpoint=s.otlp_http + "/v1/traces", certificate_file=s.ca,
                                     headers=bearer("writer-b"), timeout=30, session=own_session())
        assert http_exporter.export(spans_b) == SpanExportResult.SUCCESS
        http_exporter.shutdown()
        yield s
    finally:
        s.stop()


def get(s, path, key=None, tenant=None, params=None):
    headers = bearer(key) if key else {}
    if tenant is not None:
        headers["X-Scope-OrgID"] = tenant
    return requests.get(s.api + path, headers=headers, params=params, verify=s.ca, timeout=30)


def sql(s, query, key, tenant=None):
    headers = bearer(key)
    if tenant is not None:
        headers["X-Scope-OrgID"] = tenant
    return requests.post(s.api + "/api/v1/sql", json={"query": query}, headers=headers, verify=s.ca, timeout=30)


def wait_for(check, timeout=20):
    deadline = time.time() + timeout
    while True:
        result = check()
        if result or time.time() > deadline:
            return result
        time.sleep(0.3)


def test_keys_decide_what_each_read_endpoint_shows(secured):
    s = secured
    a, b = s.trace_a, s.trace_b
    # Trace by id, v1 and v2: a reader of a finds a's trace, never b's.
    def found(r):
        """v1: 200 or 404; v2: always 200, an unknown trace is empty."""
        assert r.status_code in (200, 404), (r.status_code, r.text[:300])
        return r.status_code == 200 and ("batches" in r.json() or "resourceSpans" in r.json().get("trace", {}))

    for path in ("/api/traces/{}", "/api/v2/traces/{}"):
        assert found(get(s, path.format(a), "reader-a"))
        assert not found(get(s, path.format(b), "reader-a"))
        assert found(get(s, path.format(b), "grafana", tenant="b"))
        assert found(get(s, path.format(b), "grafana", tenant="a|b"))
        assert not found(get(s, path.format(b), "grafana"))  # the key's first tenant: a
        # Header tricks: naming b, or sneaking b into a list, is refused.
        for tenant in ("b", "a|b", "b|a", "b ", "a|b|c", "a| b"):
            r = get(s, path.format(b), "reader-a", tenant=tenant)
            assert r.status_code == 403, (path, tenant, r.status_code, r.text)
        # A tenant name that is not one is a 400, not a way around.
        assert get(s, path.format(b), "reader-a", tenant="../b").status_code == 400
    # Search, tags, tag values.
    r = get(s, "/api/search", "reader-a", params={"tags": "service.name=svc-b"})
    assert r.status_code == 200 and r.json()["traces"] == [], r.text
    r = get(s, "/api/search", "reader-a", params={"q": '{ resource.service.name = "svc-b" }'})
    assert r.status_code == 200 and r.json()["traces"] == [], r.text
    r = get(s, "/api/search", "reader-a", params={"q": "{ }"})
    assert {t["traceID"].lstrip("0") for t in r.json()["traces"]} == {a.lstrip("0")}, r.text
    r = get(s, "/api/search/tag/service.name/values", "reader-a")
    assert r.status_code == 200 and "svc-b" not in r.text and "svc-a" in r.text, r.text
    r = get(s, "/api/v2/search/tag/resource.service.name/values", "reader-a")
    assert r.status_code == 200 and "svc-b" not in r.text, r.text
    r = get(s, "/api/search/tags", "reader-a")
    assert r.status_code == 200
    # SQL: only the caller's spans; no catalog, no files, no other tenant's blocks by path.
    r = sql(s, "SELECT DISTINCT service_name FROM spans", "reader-a")
    assert r.status_code == 200 and r.json()["rows"] == [["svc-a"]], r.text
    r = sql(s, "SELECT DISTINCT service_name FROM spans", "grafana", tenant="b")
    assert r.status_code == 200 and r.json()["rows"] == [["svc-b"]], r.text
    assert sql(s, "SELECT 1", "grafana", tenant="a|b").status_code == 400  # SQL: one tenant
    for query in ("SELECT * FROM information_schema.tables", "SHOW TABLES",
                  f"SELECT * FROM '{s.data_dir}/data/blocks'", "SELECT * FROM 'b/blocks'",
                  "SELECT * FROM read_parquet('b')", "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/'",
                  "COPY (SELECT 1) TO '/tmp/x.csv'", "SET datafusion.catalog.information_schema = true"):
        r = sql(s, query, "reader-a")
        assert r.status_code == 400, (query, r.status_code, r.text[:300])
    assert sql(s, "SELECT count(*) FROM spans", "reader-a", tenant="b").status_code == 403
    # Generated metrics: the tenant's own only, whatever ?tenant= says.
    def scrape(**kw):
        return get(s, "/api/generator/metrics", "reader-a", **kw)
    assert wait_for(lambda: "svc-a" in scrape().text), scrape().text[:500]
    assert "svc-b" not in scrape().text and "svc-b" not in scrape(params={"tenant": "b"}).text
    assert scrape(tenant="b").status_code == 403


def test_missing_wrong_and_misused_keys(secured):
    s = secured
    # No key, an unknown key, a malformed header: 401 with a Bearer challenge.
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEYS["reader-a"][0]},
                    {"Authorization": "Basic " + KEYS["reader-a"][0]}):
        r = requests.get(s.api + "/api/search", headers=headers, verify=s.ca, timeout=10)
        assert r.status_code == 401 and r.headers.get("WWW-Authenticate") == "Bearer", (headers, r.status_code)
    # A writer cannot read, a reader cannot write, nobody but ops administers.
    assert get(s, "/api/search", "writer-a").status_code == 403
    spans, _ = make_trace("svc-x")
    exporter = HttpExporter(endpoint=s.otlp_http + "/v1/traces", certificate_file=s.ca, headers=bearer("reader-a"),
                            timeout=10, session=own_session())
    assert exporter.export(spans) == SpanExportResult.FAILURE
    exporter.shutdown()
    r = requests.post(s.otlp_http + "/v1/traces", data=b"", headers={"Content-Type": "application/x-protobuf", **bearer("reader-a")},
                      verify=s.ca, timeout=10)
    assert r.status_code == 403, r.text
    r = requests.post(s.otlp_http + "/v1/traces", data=b"", headers={"Content-Type": "application/x-protobuf"}, verify=s.ca, timeout=10)
    assert r.status_code == 401, r.text
    r = requests.post(s.otlp_http + "/v1/traces", data=b"", verify=s.ca, timeout=10,
                      headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": "b", **bearer("writer-a")})
    assert r.status_code == 403, r.text
    assert get(s, "/admin/status", "reader-a").status_code == 403
    assert get(s, "/admin/status").status_code == 401
    assert get(s, "/admin/status", "ops").status_code == 200
    # gRPC codes.
    with open(s.ca, "rb") as f:
        channel = grpc.secure_channel(s.otlp_grpc, grpc.ssl_channel_credentials(f.read()))
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    empty = trace_service_pb2.ExportTraceServiceRequest()
    for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                           ((("authorization", "Bearer nope"),), grpc.StatusCode.UNAUTHENTICATED),
                           ((("authorization", f"Bearer {KEYS['reader-a'][0]}"),), grpc.StatusCode.PERMISSION_DENIED),
                           ((("authorization", f"Bearer {KEYS['writer-a'][0]}"), ("x-scope-orgid", "b")), grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.RpcError) as e:
            stub.Export(empty, metadata=metadata, timeout=10)
        assert e.value.code() == code, (metadata, e.value.code(), e.value.details())
    assert stub.Export(empty, metadata=(("authorization", f"Bearer {KEYS['writer-a'][0]}"),), timeout=10) is not None
    channel.close()
    # Plain HTTP to a TLS port gets no answer a client could mistake for success; probes stay open.
    with pytest.raises(requests.RequestException):
        requests.get(s.api.replace("https", "http") + "/api/search", timeout=5)
    assert requests.get(s.api + "/ready", verify=s.ca, timeout=5).status_code == 200
    assert requests.get(s.api + "/metrics", verify=s.ca, timeout=5).status_code == 200


def test_keys_file_is_reloaded(secured):
    s = secured
    assert get(s, "/api/search", "reader-a").status_code == 200
    with open(s.keys_path, "w") as f:
        f.write(keys_yaml([n for n in KEYS if n != "reader-a"]))
    assert wait_for(lambda: get(s, "/api/search", "reader-a").status_code == 401, timeout=20)
    assert get(s, "/api/search", "grafana").status_code == 200
    # A broken file keeps the keys in force.
    with open(s.keys_path, "w") as f:
        f.write("keys: [nonsense\n")
    time.sleep(7)
    assert get(s, "/api/search", "grafana").status_code == 200


def make_cert(path_prefix, name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with open(path_prefix + ".crt", "wb") as f:
        f.write(cert_pem)
    with open(path_prefix + ".key", "wb") as f:
        f.write(key_pem)
    return path_prefix + ".crt"


def test_certificate_files_are_reloaded(tmp_path):
    first = make_cert(str(tmp_path / "first"), "first")
    second = make_cert(str(tmp_path / "second"), "second")
    cert, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    os.replace(str(tmp_path / "first.crt"), cert)
    os.replace(str(tmp_path / "first.key"), key)
    first = str(tmp_path / "first-ca.crt")
    with open(cert, "rb") as src, open(first, "wb") as dst:
        dst.write(src.read())
    s = Spindle(extra_args=["--tls-cert-file", cert, "--tls-key-file", key])

    def ok(ca):
        try:
            return requests.get(f"https://127.0.0.1:{s.http_port}/ready", verify=ca, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    s.start(wait=False)
    try:
        assert wait_for(lambda: ok(first), timeout=60), s.read_log()[-2000:]
        assert not ok(second)
        # cert-manager style renewal: the files are replaced while spindle runs.
        os.replace(str(tmp_path / "second.key"), key)
        os.replace(second, cert)
        second = str(tmp_path / "second-ca.crt")
        with open(cert, "rb") as src, open(second, "wb") as dst:
            dst.write(src.read())
        assert wait_for(lambda: ok(second), timeout=30), s.read_log()[-2000:]
        assert not ok(first)
    finally:
        s.stop()


def test_non_loopback_listener_needs_keys_or_an_explicit_choice(tmp_path):
    args = [spindle_binary(), "--data-dir", str(tmp_path / "data"), "--http-addr", f"0.0.0.0:{free_port()}",
            "--otlp-grpc-addr", f"127.0.0.1:{free_port()}", "--otlp-http-addr", f"127.0.0.1:{free_port()}"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2, refused.stderr
    assert "--api-keys-file" in refused.stderr and "--trust-tenant-header" in refused.stderr, refused.stderr


def test_internal_api_needs_the_cluster_secret():
    """A storage node and a generator with a cluster secret answer internal calls that carry it
    and refuse every other one with UNAUTHENTICATED (pushes, reads, metadata, Raft votes)."""
    secret = "e2e-cluster-secret-0123456789"
    node = Spindle(role="storage", node_id=1, extra_args=["--bootstrap-expect", "1", "--cluster-secret", secret])
    gen = Spindle(role="generator", extra_args=["--cluster-secret", secret])
    node.start()
    gen.start()
    try:
        calls = [(node.internal, m) for m in ("/spindle.storage.v1.Storage/Push", "/spindle.storage.v1.Cluster/GetTopology",
                                              "/spindle.storage.v1.Cluster/ProposeMeta", "/spindle.storage.v1.Raft/Vote",
                                              "/spindle.storage.v1.Raft/AppendEntries")]
        calls.append((gen.internal, "/spindle.generator.v1.Generator/Push"))
        for addr, method in calls:
            channel = grpc.insecure_channel(addr)
            call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            for metadata in (None, (("x-spindle-cluster-secret", "wrong-secret-0123456789"),),
                             (("x-spindle-cluster-secret", secret[:-1]),)):
                with pytest.raises(grpc.RpcError) as e:
                    call(b"", metadata=metadata, timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata, e.value.code())
            # With the secret the call gets past the check (an empty request is then refused, or
            # answered, by the service itself).
            try:
                call(b"", metadata=(("x-spindle-cluster-secret", secret),), timeout=10)
            except grpc.RpcError as e:
                assert e.code() != grpc.StatusCode.UNAUTHENTICATED, (method, e.code(), e.details())
            channel.close()
        # The node itself, which calls its own internal API with the secret, works.
        assert node.status()
    finally:
        gen.stop()
        node.stop()
