"""Under overload Spindle refuses writes with HTTP 429 + Retry-After and gRPC RESOURCE_EXHAUSTED
(with RetryInfo) instead of growing without bound, and loses nothing it acknowledged."""

import grpc
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from otlp_util import span_batch
from spindle_proc import Spindle


def request(batch_no, n=400):
    return span_batch(batch_no, n, "work " + "x" * 100, "pressure")


def test_overload_is_refused_with_retry_hints_and_nothing_acked_is_lost():
    s = Spindle(extra_args=["--max-unflushed-size", "2MiB", "--flush-max-size", "1GiB", "--flush-max-age", "10m"]).start()
    try:
        accepted = 0
        refused_http = None
        for b in range(1, 200):
            r = requests.post(s.otlp_http + "/v1/traces", data=request(b).SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
            if r.status_code == 200:
                accepted += 400
            else:
                refused_http = r
                break
        assert refused_http is not None, "the buffer limit was never reached"
        assert refused_http.status_code == 429
        assert refused_http.headers.get("Retry-After") == "1"

        channel = grpc.insecure_channel(s.otlp_grpc)
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        refused_grpc = None
        for b in range(1000, 1200):
            try:
                stub.Export(request(b), timeout=10)
                accepted += 400
            except grpc.RpcError as e:
                refused_grpc = e
                break
        assert refused_grpc is not None, "the buffer limit was never reached over gRPC"
        assert refused_grpc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused_grpc
        assert "unflushed bytes" in refused_grpc.details()
        details = dict(refused_grpc.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        assert b"RetryInfo" in details
        channel.close()

        # Everything acknowledged is there; once the buffer is flushed, writes are accepted again.
        assert s.sql("SELECT count(*) FROM spans").json()["rows"] == [[accepted]]
        assert s.terminate() == 0
        s.extra_args = ["--max-unflushed-size", "2MiB"]
        s.start()
        r = requests.post(s.otlp_http + "/v1/traces", data=request(5000).SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 200
        assert s.sql("SELECT count(*) FROM spans").json()["rows"] == [[accepted + 400]]
    finally:
        s.stop()
