#!/usr/bin/env bash
# Runs Spindle's whole test suite: Rust unit and integration tests (cargo nextest), then the
# end-to-end tests that drive real `spindle` processes with the OpenTelemetry Python SDK.
# Installs what the tests need (cargo-nextest, a Python venv under .cache/) by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "== building"
cargo build --workspace --all-targets

echo "== rust tests"
cargo nextest run --workspace --no-fail-fast

echo "== python end-to-end tests"
VENV=.cache/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
# Azurite (the Azure Blob emulator) from npm, pinned, into .cache/npm.
if [ ! -x .cache/npm/node_modules/.bin/azurite-blob ] || ! cmp -s tests/e2e/npm/package.json .cache/npm/package.json; then
  mkdir -p .cache/npm
  cp tests/e2e/npm/package.json .cache/npm/package.json
  npm install --prefix .cache/npm --no-audit --no-fund --loglevel=error
fi
# Prometheus (the Debian package, unpacked into .cache/prometheus-deb) receives the metrics
# generator's remote write in tests/e2e/test_generator_prometheus.py (skipped without it).
if bash tests/e2e/install_prometheus.sh; then
  export PROMETHEUS_BIN="$PWD/.cache/prometheus-deb/usr/bin/prometheus"
else
  echo "   (no Prometheus: the generator's remote-write test will be skipped)"
fi
export SPINDLE_BIN="$CARGO_TARGET_DIR/debug/spindle"
PYTEST=("$VENV/bin/python" -m pytest -q -p no:cacheprovider)

# The OCI image of spindle (deploy/docker/build-image.sh, made offline), for the container tests
# (tests/e2e/test_container.py, tests/helm/test_kube_play.py). It carries the debug binary built
# above (stripped of debug info), not a release build: a cold release build would not fit CI.
echo "== container image (podman)"
bash tests/e2e/install_podman.sh
SPINDLE_IMAGE=$(bash deploy/docker/build-image.sh --binary "$SPINDLE_BIN" --tag localhost/spindle:test)
export SPINDLE_IMAGE
echo "   $SPINDLE_IMAGE"

echo "== Helm chart and deploy assets (lint, schemas, promtool, rendered manifests run locally)"
bash tests/helm/check.sh

echo "== end-to-end tests, blocks on the local filesystem"
SPINDLE_TEST_BACKEND=fs "${PYTEST[@]}" tests/e2e

# The suite that touches blocks (OTLP in, trace by id, search, SQL, kill -9 and restart,
# compaction, retention, an object-store outage, a replicated cluster) against real servers.
OBJECT_STORE_SUITE=(tests/e2e/test_sdk_roundtrip.py tests/e2e/test_durability.py tests/e2e/test_lifecycle.py
  tests/e2e/test_object_store_outage.py tests/e2e/test_block_cache.py tests/e2e/test_object_store_config.py
  tests/e2e/test_cluster.py::test_leader_killed_under_load
  tests/e2e/test_cluster.py::test_whole_cluster_killed_and_restarted_keeps_everything)
echo "== end-to-end tests, blocks in S3 (moto server)"
SPINDLE_TEST_BACKEND=s3 "${PYTEST[@]}" "${OBJECT_STORE_SUITE[@]}"
echo "== end-to-end tests, blocks in Azure Blob (Azurite)"
SPINDLE_TEST_BACKEND=azure "${PYTEST[@]}" "${OBJECT_STORE_SUITE[@]}"
