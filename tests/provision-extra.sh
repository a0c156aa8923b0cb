# Extra provisioning for the tests that need more than one Docker engine run by root:
# test users, rootless podman and Docker, Charliecloud, and a one-node Slurm cluster.
#
# Sourced by tests/provision.sh (which defines say and die), as root on Debian.
# It only defines functions; each is idempotent and returns at once when its work
# is already done, so calling them on every run costs next to nothing:
#
#   provision_extra              all of the below
#   provision_rootless_packages  uidmap slirp4netns fuse-overlayfs dbus-user-session rootlesskit python3-venv
#   provision_test_users         ddrootless, ddhighuid, dddocker (see TEST_USERS), /run/user/UID,
#                                rootless podman's containers.conf for each
#   provision_charliecloud       charliecloud-runtime (ch-run)
#   provision_slurm              slurmctld + slurmd + munged on this node, started, node idle
#   stop_slurm                   stops those three daemons (by the PIDs in their pidfiles)
#
# It can also be run, e.g. by tests/hosts.py: bash tests/provision-extra.sh provision_slurm

# Other people run apt on this machine too: wait for their lock instead of failing.
EXTRA_APT_OPTIONS=(-o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)

# user:uid:groups. ddhighuid's UID lies above every subuid range useradd hands out
# here and outside the 65536 IDs a rootless engine maps, like an LDAP user's.
TEST_USERS="ddrootless:: ddhighuid:2000000: dddocker::docker"
# group:members: two users sharing a blob store (tests/test_store.py)
TEST_GROUPS="ddstore:ddhighuid,dddocker"

SLURM_CONF=/etc/slurm/slurm.conf
SLURM_LOG_DIR=/var/log/slurm
SLURM_STATE_DIR=/var/lib/slurm

_extra_lock_depth=0
_extra_lock_fd=9 # daemons are started with it closed: they would hold the lock forever

# Run "$@" holding the provisioning lock; re-entrant, released on exit too (die).
_extra_locked() {
  if [ "$_extra_lock_depth" -gt 0 ]; then
    "$@"
    return
  fi
  local status
  exec {_extra_lock_fd}>>/run/lock/docker-dir-provision-extra.lock
  flock "$_extra_lock_fd"
  _extra_lock_depth=1
  "$@"
  status=$?
  _extra_lock_depth=0
  exec {_extra_lock_fd}>&-
  return $status
}

_extra_installed() {
  dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# Install the packages not installed yet; apt-get update only when the lists do not know one.
extra_apt_install() {
  local missing=() package
  for package in "$@"; do
    _extra_installed "$package" || missing+=("$package")
  done
  [ ${#missing[@]} = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
  command -v apt-get >/dev/null || die "no apt-get to install ${missing[*]}"
  say "installing ${missing[*]}"
  # needrestart would ask about (and complain of) services there are none of here
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null || die "apt-get update failed"
  fi
  apt-get "${EXTRA_APT_OPTIONS[@]}" install "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

_extra_provision_rootless_packages() {
  # python3-venv: the test users need a Python they can run; root's pyenv lives
  # under /root (0700), so their venv is made from Debian's /usr/bin/python3.
  extra_apt_install uidmap slirp4netns fuse-overlayfs dbus-user-session rootlesskit python3-venv
}

_extra_user_dirs() {
  local user=$1 uid home
  uid=$(id -u "$user") home=$(getent passwd "$user" | cut -d: -f6)
  # No systemd login session here, so nobody makes XDG_RUNTIME_DIR for the user.
  if [ ! -d "/run/user/$uid" ]; then
    install -d -m 0755 /run/user
    install -d -m 0700 -o "$user" -g "$(id -g "$user")" "/run/user/$uid"
  fi
  # /dev/net/tun is root-only here: slirp4netns cannot work, containers share the host network.
  local conf="$home/.config/containers/containers.conf"
  local want='[containers]
netns = "host"

[engine]
# no systemd and no journald here
cgroup_manager = "cgroupfs"
events_logger = "file"'
  if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    runuser -u "$user" -- mkdir -p "$home/.config/containers"
    printf '%s\n' "$want" | runuser -u "$user" -- tee "$conf" >/dev/null
  fi
}

# The next free 65536 IDs after every range in the file, as useradd would pick them.
_extra_add_subids() {
  local user=$1 file=$2 start
  start=$(awk -F: 'BEGIN { end = 100000 } $2 + $3 > end { end = $2 + $3 } END { print end }' "$file" 2>/dev/null ||
    echo 100000)
  if [ "$file" = /etc/subuid ]; then
    usermod --add-subuids "$start-$((start + 65535))" "$user"
  else
    usermod --add-subgids "$start-$((start + 65535))" "$user"
  fi
}

_extra_provision_test_users() {
  _extra_provision_rootless_packages
  local entry user uid groups
  for entry in $TEST_USERS; do
    IFS=: read -r user uid groups <<<"$entry"
    if ! id "$user" >/dev/null 2>&1; then
      say "creating test user $user"
      if [ -n "$uid" ]; then
        # -l: no lastlog/faillog entry, which for a high UID is a huge sparse file
        groupadd -g "$uid" "$user"
        useradd -m -l -s /bin/bash -u "$uid" -g "$user" ${groups:+-G "$groups"} "$user"
      else
        useradd -m -s /bin/bash ${groups:+-G "$groups"} "$user"
      fi
    fi
    # useradd gives a range only to users whose UID is within UID_MIN..UID_MAX
    local file
    for file in /etc/subuid /etc/subgid; do
      grep -q "^$user:" "$file" 2>/dev/null || _extra_add_subids "$user" "$file"
    done
    _extra_user_dirs "$user"
  done
  local group members member
  for entry in $TEST_GROUPS; do
    IFS=: read -r group members <<<"$entry"
    getent group "$group" >/dev/null || groupadd "$group"
    for member in ${members//,/ }; do
      id -nG "$member" | tr ' ' '\n' | grep -qx "$group" || usermod -aG "$group" "$member"
    done
  done
}

_extra_provision_charliecloud() {
  extra_apt_install charliecloud-runtime
}

# -- Slurm ------------------------------------------------------------------------

_extra_pid_alive() {
  # $1 pidfile, $2 the command name the process must have (a stale pidfile may name another)
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

_extra_slurm_conf() {
  local host
  host=$(hostname -s)
  cat <<EOF
# Written by docker-dir's tests/provision-extra.sh: a one-node cluster for tests.
ClusterName=dockerdir
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_STATE_DIR/slurmctld
SlurmdSpoolDir=$SLURM_STATE_DIR/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_LOG_DIR/slurmd.log
# no cgroups to manage here (no systemd)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# schedule as soon as a job ends (default: batch jobs wait up to 3 s, an 8-task array takes 10 s)
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# keep finished jobs visible to squeue/scontrol (no accounting, so no sacct)
MinJobAge=86400
MaxJobCount=100000
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

_extra_provision_slurm() {
  local start=${EPOCHREALTIME/[.,]/} started=0
  extra_apt_install munge slurmd slurmctld slurm-client
  local installed=${EPOCHREALTIME/[.,]/}

  # munge: its key, its run dir, the daemon
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  if ! _extra_pid_alive /run/munge/munged.pid munged; then
    say "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged {_extra_lock_fd}>&- || die "munged did not start (see /var/log/munge/munged.log)"
    started=1
  fi

  # config; a changed one restarts the daemons started from the old one
  install -d -m 0755 /etc/slurm "$SLURM_LOG_DIR" "$SLURM_STATE_DIR/slurmctld" "$SLURM_STATE_DIR/slurmd"
  local want
  want=$(_extra_slurm_conf)
  if [ ! -f "$SLURM_CONF" ] || [ "$(cat "$SLURM_CONF")" != "$want" ]; then
    say "writing $SLURM_CONF"
    printf '%s\n' "$want" >"$SLURM_CONF"
    _extra_stop_pidfile /run/slurmd.pid slurmd
    _extra_stop_pidfile /run/slurmctld.pid slurmctld
  fi

  # -i: start even if the saved state is unreadable (e.g. from another slurm.conf)
  if ! _extra_pid_alive /run/slurmctld.pid slurmctld; then
    say "starting slurmctld (log: $SLURM_LOG_DIR/slurmctld.log)"
    /usr/sbin/slurmctld -i {_extra_lock_fd}>&- || die "slurmctld did not start (see $SLURM_LOG_DIR/slurmctld.log)"
    started=1
  fi
  if ! _extra_pid_alive /run/slurmd.pid slurmd; then
    say "starting slurmd (log: $SLURM_LOG_DIR/slurmd.log)"
    /usr/sbin/slurmd {_extra_lock_fd}>&- || die "slurmd did not start (see $SLURM_LOG_DIR/slurmd.log)"
    started=1
  fi

  local node state
  node=$(hostname -s)
  for _ in $(seq 300); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    case $state in
      idle | mixed | allocated) break ;;
      # a node left down or drained by an earlier run (e.g. a killed slurmd)
      down* | drain* | fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case $state in
    idle | mixed | allocated) ;;
    *) die "Slurm node $node is '${state:-unknown}', not idle, after 60 s (see $SLURM_LOG_DIR/)" ;;
  esac
  if [ "$started" = 1 ] || [ "$installed" -gt $((start + 1000000)) ]; then
    local now=${EPOCHREALTIME/[.,]/}
    say "Slurm up in $(((now - start) / 1000)) ms (installing: $(((installed - start) / 1000)) ms," \
      "starting to idle: $(((now - installed) / 1000)) ms)"
  fi
}

# SIGTERM the daemon named in a pidfile, wait until it is gone (SIGKILL after 20 s).
_extra_stop_pidfile() {
  local pid
  _extra_pid_alive "$1" "$2" || return 0
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

_extra_stop_slurm() {
  _extra_stop_pidfile /run/slurmd.pid slurmd
  _extra_stop_pidfile /run/slurmctld.pid slurmctld
  _extra_stop_pidfile /run/munge/munged.pid munged
}

# Public steps hold one lock, so two test runs provisioning at once take turns.
provision_rootless_packages() { _extra_locked _extra_provision_rootless_packages; }
provision_test_users() { _extra_locked _extra_provision_test_users; }
provision_charliecloud() { _extra_locked _extra_provision_charliecloud; }
provision_slurm() { _extra_locked _extra_provision_slurm; }
stop_slurm() { _extra_locked _extra_stop_slurm; }

provision_extra() {
  provision_test_users
  provision_charliecloud
  provision_slurm
}

# Run directly: define say/die and call the functions named on the command line.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  say() { echo "provision-extra: $*" >&2; }
  die() { say "error: $*"; exit 1; }
  [ $# -gt 0 ] || set -- provision_extra
  for step in "$@"; do
    "$step"
  done
fi
