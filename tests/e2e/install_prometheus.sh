#!/usr/bin/env bash
# Makes sure the Debian package `prometheus` is unpacked into .cache/prometheus-deb (Prometheus
# and promtool in .cache/prometheus-deb/usr/bin/); downloads it with `apt-get download` when it
# is missing. Nothing is installed system-wide and nothing is started.
#
# Run from anywhere: bash tests/e2e/install_prometheus.sh
# Exits non-zero, saying why, when the package cannot be had (no apt-get, no package index).
set -euo pipefail
cd "$(dirname "$0")/../.."

DEST=.cache/prometheus-deb
die() { echo "install_prometheus.sh: $*" >&2; exit 1; }

if [ -x "$DEST/usr/bin/prometheus" ] && [ -x "$DEST/usr/bin/promtool" ]; then
  exit 0
fi
echo "== fetching Prometheus (Debian package prometheus) into $DEST"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || die "apt-get and dpkg-deb are needed to fetch the Debian package prometheus"
DEB_DIR=$(mktemp -d)
trap 'rm -rf "$DEB_DIR"' EXIT
if ! (cd "$DEB_DIR" && apt-get download prometheus >/dev/null 2>&1); then
  [ "$(id -u)" = 0 ] || die "'apt-get download prometheus' failed: run 'sudo apt-get update' first"
  apt-get update -qq >/dev/null
  (cd "$DEB_DIR" && apt-get download prometheus >/dev/null 2>&1) || die "'apt-get download prometheus' failed"
fi
rm -rf "$DEST.tmp"
dpkg-deb -x "$DEB_DIR"/prometheus_*.deb "$DEST.tmp"
[ -x "$DEST.tmp/usr/bin/prometheus" ] || die "the package has no usr/bin/prometheus"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
