#!/usr/bin/env bash
# Run the whole test suite. On a Debian machine as root with no Docker engine
# reachable it installs and starts what the tests need; where an engine already
# answers (a laptop with Docker) it uses that and installs nothing system-wide.
# Extra arguments go to pytest, e.g. tests/run-all.sh -k exec -x
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "run-all: $*" >&2; }
die() { say "error: $*"; exit 1; }

. tests/provision.sh

export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -rs tests "$@"  # -rs: a skipped side engine says why
