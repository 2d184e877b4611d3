#!/usr/bin/env bash
# Runs podman with the settings a machine without crun, systemd or raisable ulimits needs
# (Debian 12's podman 4.3 in a container or a minimal VM, as Spindle's test machines are):
#
#   --runtime runc            crun is refused there; runc works
#   --cgroup-manager=cgroupfs no systemd to manage cgroups
#   CONTAINERS_CONF with `default_ulimits = []`: podman's default ulimits cannot be set there
#
# Usage: bash deploy/docker/podman.sh <podman arguments...>   (e.g. `images`, `run --rm ...`)
# On a workstation with a complete podman (or docker) none of this is needed.
set -euo pipefail
command -v podman >/dev/null || {
  echo "podman.sh: podman is not installed (Debian/Ubuntu: apt-get install podman runc)" >&2
  exit 127
}
command -v runc >/dev/null || {
  echo "podman.sh: runc is not installed (Debian/Ubuntu: apt-get install runc)" >&2
  exit 127
}
conf="${XDG_CACHE_HOME:-$HOME/.cache}/spindle-podman/containers.conf"
if [ ! -f "$conf" ]; then
  mkdir -p "$(dirname "$conf")"
  printf '[containers]\n# podman cannot raise these limits here: start containers with the inherited ones.\ndefault_ulimits = []\n' >"$conf.tmp"
  mv "$conf.tmp" "$conf"
fi
export CONTAINERS_CONF="$conf"
exec podman --runtime runc --cgroup-manager=cgroupfs "$@"
