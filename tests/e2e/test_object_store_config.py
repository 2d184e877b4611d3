"""How Spindle finds the object store's credentials: an AWS profile in the shared credentials
file, as on a developer's machine (the other tests pass keys in the environment)."""

import os
import tempfile

import pytest

from object_stores import backend
from spindle_proc import Spindle
from test_lifecycle import make_spans, send, trace_span_ids, wait_flushes


@pytest.mark.skipif(backend().name != "s3", reason="S3 only (SPINDLE_TEST_BACKEND=s3)")
def test_s3_keys_from_an_aws_profile():
    home = tempfile.mkdtemp(prefix="spindle-home-")
    os.makedirs(os.path.join(home, ".aws"))
    with open(os.path.join(home, ".aws", "credentials"), "w") as f:
        f.write("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
                "[spindle-e2e]\naws_access_key_id = test\naws_secret_access_key = test\n")
    with open(os.path.join(home, ".aws", "config"), "w") as f:
        f.write("[profile spindle-e2e]\nregion = us-east-1\n")
    env = {"HOME": home, "AWS_PROFILE": "spindle-e2e", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
           "AWS_DEFAULT_REGION": None, "AWS_REGION": None}
    s = Spindle(env=env, extra_args=["--flush-max-age", "1s", "--compactor", "false"]).start()
    try:
        spans = make_spans(3)
        send(s, spans)
        wait_flushes(s, 1)
        assert s.blocks(), "the block reached the bucket with the profile's keys"
        assert len(trace_span_ids(s, spans[0].trace_id.hex())) == 3
    finally:
        s.stop()
