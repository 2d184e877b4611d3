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
SPINDLE_BIN="$CARGO_TARGET_DIR/debug/spindle" "$VENV/bin/python" -m pytest tests/e2e -q -p no:cacheprovider
