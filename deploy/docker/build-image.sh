#!/usr/bin/env bash
# Builds the spindle OCI image without pulling anything: no base image, no registry. The image
# holds what the binary needs from this machine (the stripped binary, the glibc libraries it
# links, CA certificates, a passwd entry for the non-root user 65532) and is otherwise the image
# deploy/docker/Dockerfile makes: same entrypoint, user, ports, data directories and labels.
#
#   bash deploy/docker/build-image.sh [--binary PATH] [--tag TAG]
#
# Without --binary it builds the release binary first (cargo build --release -p spindle); the
# test suite passes the debug binary it already built. The default tag is localhost/spindle:<version>.
# Builds with podman through deploy/docker/podman.sh; SPINDLE_IMAGE_ENGINE=docker uses docker.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}"
die() { echo "build-image.sh: $*" >&2; exit 1; }

binary="" tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) die "unknown argument $1 (usage: build-image.sh [--binary PATH] [--tag TAG])" ;;
  esac
done
if [ -z "$binary" ]; then
  cargo build --release --locked -p spindle
  binary="$CARGO_TARGET_DIR/release/spindle"
fi
[ -x "$binary" ] || die "no executable at $binary"
version=$("$binary" --version | awk '{print $2}')
tag="${tag:-localhost/spindle:$version}"
case "${SPINDLE_IMAGE_ENGINE:-podman}" in
  podman) engine=(bash deploy/docker/podman.sh) ;;
  docker) engine=(docker) ;;
  *) die "SPINDLE_IMAGE_ENGINE must be podman or docker" ;;
esac

ctx=$(mktemp -d "${TMPDIR:-/tmp}/spindle-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
owned="$ctx/owned"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$owned/var/lib/spindle" \
  "$owned/var/cache/spindle" "$owned/home/nonroot"
# Debug sections are most of the file and not needed to run (the release profile keeps them).
objcopy --strip-debug "$binary" "$root/usr/local/bin/spindle" 2>/dev/null || cp "$binary" "$root/usr/local/bin/spindle"
# The dynamic loader and every library the binary links, at the paths the binary asks for.
ldd "$binary" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" ||
  die "no CA certificates at /etc/ssl/certs/ca-certificates.crt (Debian: apt-get install ca-certificates)"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"

cat >"$ctx/Containerfile" <<CONTAINERFILE
FROM scratch
COPY rootfs/ /
# The data and cache directories belong to the user, so a new volume mounted there is writable.
COPY --chown=65532:65532 owned/ /
LABEL org.opencontainers.image.title="spindle" \\
      org.opencontainers.image.description="OpenTelemetry-native trace backend" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 3200 4317 4318 7400 9411
ENTRYPOINT ["/usr/local/bin/spindle"]
CONTAINERFILE
previous=$("${engine[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
"${engine[@]}" build --quiet -t "$tag" "$ctx" >/dev/null
# The image this tag named before is left untagged by the build: remove it (unless in use).
current=$("${engine[@]}" image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  "${engine[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$tag"
