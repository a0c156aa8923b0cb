# Provision what docker-dir's tests need to run for real, for the test suite and the demo.
# Sourced, not run. As root on Debian it installs what is missing (engines, tools, test
# users, rootless engines' prerequisites, Charliecloud, a one-node Slurm cluster) and
# starts dockerd when no Docker engine answers; elsewhere (a laptop with Docker) it
# installs nothing system-wide and uses what is there. Then the package goes into the
# project's own virtual environment, .venv.
# Expects: the repository as the current directory, and say/die functions.
# PROVISION_FOR=demo provisions only what the demo needs (docker and busybox).

if [ "${PROVISION_FOR:-tests}" = demo ]; then
  SYSTEM_PACKAGES="docker.io busybox-static"
else
  # docker-registry and apache2-utils (htpasswd): the real registries of tests/registry.py;
  # squid: the forward proxy of tests/proxy.py
  # bash-static: bash in the Snakemake plugin's fixture image (Snakemake runs steps with bash)
  SYSTEM_PACKAGES="docker.io busybox-static podman catatonit git-annex skopeo umoci buildah make iproute2 util-linux
python3-venv docker-registry apache2-utils squid bash-static"
fi

. tests/provision-extra.sh

# Squid's postinst starts its service on port 3128 (unless a policy-rc.d forbids it, as in
# Docker-built images); the tests run squids of their own, so it is stopped and disabled
# the way it was started: systemd, or the init script and its pidfile /run/squid.pid.
stop_packaged_squid() {
  if [ -d /run/systemd/system ]; then
    systemctl disable --now squid.service >/dev/null 2>&1 || true
    return 0
  fi
  update-rc.d squid disable >/dev/null 2>&1 || true
  if _extra_pid_alive /run/squid.pid squid; then
    say "stopping the squid service the package started (tests start their own)"
    /etc/init.d/squid stop >/dev/null || die "could not stop the packaged squid (pidfile /run/squid.pid)"
  fi
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

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # With recommends: podman needs some of them (as it was tried here).
  without_recommends=("${EXTRA_APT_OPTIONS[@]}")
  EXTRA_APT_OPTIONS=(-o DPkg::Lock::Timeout=600 -y -q)
  squid_was_installed=yes
  _extra_installed squid || squid_was_installed=
  # shellcheck disable=SC2086
  _extra_locked extra_apt_install $SYSTEM_PACKAGES
  [ -n "$squid_was_installed" ] || [ "${PROVISION_FOR:-tests}" = demo ] || stop_packaged_squid
  EXTRA_APT_OPTIONS=("${without_recommends[@]}")
  [ "${PROVISION_FOR:-tests}" = demo ] || provision_extra
  docker info >/dev/null 2>&1 || start_dockerd
elif ! docker info >/dev/null 2>&1; then
  die "no Docker engine reachable; start Docker, or run this as root on Debian to install and start one"
fi
command -v busybox >/dev/null || die "busybox is needed to build fixture images offline: install busybox-static"

# The package and its test tools, in the project's own virtual environment.
# DOCKER_DIR_EXTRAS picks the pip extras: "test" (default) or "" for the bare package.
extras=${DOCKER_DIR_EXTRAS-test}
stamp=".venv/.installed-${extras:-base}"
if [ ! -x .venv/bin/python ] || [ ! -e "$stamp" ] || [ setup.py -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] ||
   [ snakemake-plugin/pyproject.toml -nt "$stamp" ]; then
  say "installing the package${extras:+ with its $extras extras} into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".${extras:+[$extras]}"
  # The Snakemake plugin, a distribution of its own, where its interface installs (Python >= 3.11).
  # A second pip run on purpose: the interface needs packaging >= 26.1 (through
  # snakemake-interface-common >= 1.23.1) while snakemake 9.27.1 caps packaging < 26, so one
  # resolution of both fails; pip then warns about snakemake's cap, and snakemake 9.27.1 runs
  # the test suite's workflows with packaging 26 all the same.
  if [ -n "$extras" ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    .venv/bin/pip install -q -e ./snakemake-plugin
  fi
  touch "$stamp"
fi
# An editable install leaves no bytecode, and PYTHONDONTWRITEBYTECODE may forbid
# writing it at run time: compile once, so the commands start as they would installed.
.venv/bin/python -m compileall -q lib
