"""The spindle OCI image under test and podman, for tests that run the image (stdlib only, so
tests/helm can use it too).

The image is $SPINDLE_IMAGE when set (tests/run.sh builds it once with
deploy/docker/build-image.sh from the debug binary); otherwise it is built here the same way from
$SPINDLE_BIN. Podman runs through deploy/docker/podman.sh, which adds the flags this machine
kind needs. A missing podman is an error with the reason, never a skip."""

import functools
import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PODMAN = ["bash", os.path.join(ROOT, "deploy", "docker", "podman.sh")]
TEST_TAG = "localhost/spindle:test"


def podman(*args, check=True, timeout=120):
    """Runs podman; returns its stdout. Failures raise with podman's stderr."""
    r = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


@functools.cache
def image():
    """The image to test: $SPINDLE_IMAGE, else one built from $SPINDLE_BIN."""
    name = os.environ.get("SPINDLE_IMAGE")
    if name:
        podman("image", "exists", name)
        return name
    binary = os.environ.get("SPINDLE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/spindle-target")), "debug", "spindle")
    r = subprocess.run(["bash", os.path.join(ROOT, "deploy", "docker", "build-image.sh"), "--binary", binary,
                        "--tag", TEST_TAG], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"building the image failed: {r.stderr.strip()[-2000:]}")
    return r.stdout.strip().splitlines()[-1]
