#!/usr/bin/env bash
# The main job, offline: build a tiny image, save it into a directory, print its
# ID, run a command in it. Installs and starts an engine first where needed
# (see tests/provision.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "demo: $*" >&2; }
die() { say "error: $*"; exit 1; }
PROVISION_FOR=demo DOCKER_DIR_EXTRAS=${DOCKER_DIR_EXTRAS-} . tests/provision.sh
export PATH="$PWD/.venv/bin:$PATH"

work=$(mktemp -d)
image="docker-dir-demo:$(date +%s)"
cleanup() {
  set +x
  # the image and the private tag docker-dir-exec gave it
  [ -e "$work/img/manifest.json" ] && docker rmi -f "localhost/docker-dir:$(docker-dir-id "$work/img" | cut -d: -f2)" >/dev/null 2>&1
  docker rmi -f "$image" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

say "building $image from busybox (no registry needed)"
mkdir -p "$work/rootfs/bin"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for applet in sh echo cat uname; do ln -s busybox "$work/rootfs/bin/$applet"; done
tar -C "$work/rootfs" -c . | docker import -c 'ENV PATH=/bin' - "$image" >/dev/null

set -x
docker-dir-save "$image" "$work/img"
docker-dir-id "$work/img"
cd "$work" && docker-dir-exec "$work/img" sh -c 'echo "hello from $(uname -m) in $PWD"; ls'
# Gone from the engine? The next exec loads it from the directory, under a private tag.
docker rmi -f "$image" "localhost/docker-dir:$(docker-dir-id "$work/img" | cut -d: -f2)" >/dev/null
docker-dir-exec "$work/img" echo "loaded again from $work/img"
