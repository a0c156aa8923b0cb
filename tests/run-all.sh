#!/usr/bin/env bash
# Run the whole test suite. On a Debian machine as root with no Docker engine
# reachable it installs and starts what the tests need; where an engine already
# answers (a laptop with Docker) it uses that and installs nothing system-wide.
# Extra arguments go to pytest, e.g. tests/run-all.sh -k exec -x
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "run-all: $*" >&2; }
die() { say "error: $*"; exit 1; }

SYSTEM_PACKAGES="docker.io busybox-static podman catatonit git-annex skopeo make iproute2 util-linux"

install_system_packages() {
  [ "$(id -u)" = 0 ] || die "no Docker engine reachable; start Docker, or run this as root on Debian to install it"
  command -v apt-get >/dev/null || die "no Docker engine reachable and no apt-get to install one; start Docker"
  say "installing $SYSTEM_PACKAGES"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $SYSTEM_PACKAGES >/dev/null
}

start_dockerd() {
  say "starting dockerd (log: /var/log/dockerd-docker-dir.log)"
  nohup dockerd >/var/log/dockerd-docker-dir.log 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -5 /var/log/dockerd-docker-dir.log >&2 || true
  die "dockerd did not answer 'docker info' within 60 s (see /var/log/dockerd-docker-dir.log)"
}

if ! docker info >/dev/null 2>&1; then
  install_system_packages
  start_dockerd
fi
command -v busybox >/dev/null || die "busybox is needed to build fixture images offline: install busybox-static"

# The package and its test tools, in the project's own virtual environment.
if [ ! -x .venv/bin/python ] || [ setup.py -nt .venv/.installed ]; then
  say "installing the package and its test extras into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi

export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest tests "$@"
