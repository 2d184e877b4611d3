"""Queriers cache what they read of blocks: once a trace has been read, reading it again needs
no block read from the object store (memory tier), or, with --cache-dir, the whole block file
is served from local disk. Shown by cutting the object store off after a first read."""

import glob
import os
import tempfile
import time

import pytest
import requests

from object_stores import FlakyProxy, backend
from spindle_proc import Spindle
from test_lifecycle import make_spans, send, trace_span_ids, wait_flushes


@pytest.mark.skipif(backend().name == "fs", reason="needs a network object store (SPINDLE_TEST_BACKEND=s3|azure)")
@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_repeated_lookups_do_not_reach_the_store(tier):
    proxy = FlakyProxy(backend().port)
    cache_dir = tempfile.mkdtemp(prefix="spindle-cache-")
    args = ["--flush-max-age", "1s", "--compactor", "false"]
    if tier == "disk":
        # Too small a memory tier to hold anything: reads must come from the disk tier.
        args += ["--cache-dir", cache_dir, "--memory-cache-size", "2KiB"]
    s = Spindle(store_via=proxy.port, extra_args=args).start()
    try:
        spans = make_spans(20)
        send(s, spans)
        wait_flushes(s, 1)
        # Later pushes keep the unflushed data small; the trace is only in the block now.
        trace = spans[0].trace_id.hex()
        assert len(trace_span_ids(s, trace)) == 3
        if tier == "disk":
            deadline = time.time() + 30
            while not glob.glob(os.path.join(cache_dir, "*.parquet")):
                assert time.time() < deadline, "the block file was not cached on disk"
                time.sleep(0.2)
            trace_span_ids(s, spans[3].trace_id.hex())
        proxy.down()
        for sp in (spans[0], spans[3]):
            assert len(trace_span_ids(s, sp.trace_id.hex())) == 3, "served from the cache with the store cut off"
        proxy.up()
    finally:
        s.stop()
        proxy.down()
