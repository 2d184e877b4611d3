#!/usr/bin/env bash
# Makes sure podman and runc are installed (the Debian packages; podman needs root's package
# manager, unlike the suite's other tools, because it is a system service and setuid helpers).
# The container tests (tests/e2e/test_container.py, tests/helm/test_kube_play.py) need them.
#
# Run from anywhere: bash tests/e2e/install_podman.sh
# Exits non-zero, saying why, when they cannot be installed.
set -euo pipefail
die() { echo "install_podman.sh: $*" >&2; exit 1; }

if command -v podman >/dev/null && command -v runc >/dev/null; then
  exit 0
fi
echo "== installing podman and runc (Debian packages)"
command -v apt-get >/dev/null || die "podman and runc are missing and there is no apt-get: install them"
SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "podman and runc are missing: install them as root (apt-get install podman runc)"
  SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -qq podman runc >/dev/null; then
  "${SUDO[@]}" apt-get update -qq >/dev/null
  "${SUDO[@]}" apt-get install -y -qq podman runc >/dev/null || die "'apt-get install podman runc' failed"
fi
command -v podman >/dev/null && command -v runc >/dev/null || die "podman or runc still missing after apt-get"
