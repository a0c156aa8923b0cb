"""Other users, rootless engines, Charliecloud and Slurm on this host, for tests.

Import from a test module (tests/ is on sys.path under pytest):

    from hosts import (ROOTLESS, HIGHUID, DOCKER_GROUP, run_as, user_dir, user_venv,
                       RootlessPodman, RootlessDockerd, ch_tree, ch_run, slurm_cluster, sbatch)

Everything here needs root (it switches users) and the users and packages that
tests/provision-extra.sh sets up; helpers run that script's steps when something
is missing and raise Unavailable (from engines.py) with the reason when it cannot
be had, so a fixture can skip loudly: or_skip(function, *args) does that.

Users (created by provision-extra.sh, each with a 65536-ID subuid/subgid range and
/run/user/UID; all in no supplementary group unless said):
    ROOTLESS = "ddrootless"    a normal user (UID ~1001); also the Charliecloud user
    HIGHUID = "ddhighuid"      UID 2000000, above its subuid range: a rootless engine maps
                               container IDs 0..65536 only, so `--user 2000000:2000000` fails
    DOCKER_GROUP = "dddocker"  in the docker group: talks to the main (root) dockerd

user_info(name) -> User(name, uid, gid, home, runtime_dir) after making sure the users exist
    (runs provision_test_users once per process; 0.1 s when they do). Every `user`
    argument below takes a name or a User.
user_env(user, **extra) -> a clean login-like environment: HOME, USER, LOGNAME, SHELL,
    PATH (with the sbin dirs: dockerd-rootless.sh execs dockerd), LANG, XDG_RUNTIME_DIR=/run/user/UID.
run_as(user, argv, env=None, cwd=None, input=None, timeout=120, check=False) -> CompletedProcess
    (text). argv runs through `setpriv --reuid --regid --init-groups` (no PAM, no session)
    with user_env(user) updated by `env`; cwd defaults to the user's home and must be
    reachable by the user.
user_dir(user, prefix="dd") -> Path of a new directory under /var/tmp/docker-dir-tests
    owned by the user, mode 0755: where the user's files, bind mounts and job outputs go
    (pytest's tmp_path is under root's 0700 /tmp/pytest-of-root). remove_tree(path) removes
    it as root, files made by subordinate IDs included.

user_venv(repo=REPO) -> Path of the bin dir of a virtualenv that the test users can run:
    made from Debian's /usr/bin/python3 (root's pyenv python sits under /root, 0700) at
    /opt/docker-dir-tests/venv, world-readable, with `pip install` of a fresh copy of the
    repo's packaging files (setup.py, pyproject.toml, … whichever exist), README.md, lib/ and
    bin/ (non-editable: the users never read the checkout, which may be under /root; the
    checkout gets no build/ dir, and no stale build/ is ever reused). Reinstalled only when
    the hash of those files changed. Holds docker-dir-save, docker-dir-id, docker-dir-exec.

RootlessPodman(user)
    - env(**extra): user_env; rootless podman reads ~/.config/containers/containers.conf
      (netns = "host": /dev/net/tun is root-only here; cgroupfs; file events log).
    - podman(*args, check=True, input=None, timeout=120, cwd=None) -> CompletedProcess as the user.
    - import_rootfs(rootfs, ref, changes=("ENV PATH=/bin", 'CMD ["sh"]')) -> image ID:
      `podman import` of a tar of the directory (e.g. conftest's rootfs fixture), offline.
      The tar makes everything readable by all (go+rX): conftest's rootfs is a 0700 pytest
      temp dir, and a 0700 "/" in an image stops every non-root container user with
      'exec: "sh": executable file not found in $PATH' (conftest.import_image has that "/").
    - stop(): removes the user's containers (`podman rm -af -t 0`) and ends podman's pause
      process (by the PID in its pidfile), so nothing of the user's podman is left running.
      Images stay in the user's storage; use unique tags. Also a context manager.
    The podman command that starts the pause process (the first one, or the first after
    stop()) prints 'level=warning msg="\"/\" is not a shared mount, …"' on stderr ("/" is
    a private mount here): run something (e.g. import_rootfs) first before checking stderr.
    Owners on the host of a file the container writes in a bind mount: container root
    (default) -> the user; --userns=keep-id (runs as the user) -> the user;
    --user UID:GID without keep-id -> subordinate ID (start of the user's range)+UID-1,
    e.g. 101000 for UID 1001 (so it cannot write into the user's own 0755 directories).

RootlessDockerd(user)
    One `dockerd-rootless.sh --bridge=none --iptables=false --ip6tables=false` as the user
    (DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host, PORT_DRIVER=none), with a private
    XDG_RUNTIME_DIR (/run/user/UID/ddXXXXXXXX, hence its socket, pidfile, exec-root and
    lock files) and a private --data-root under the user's home, so two instances for
    the same user (two test sessions) never meet; each starts with an empty image store.
    - start(timeout=60) -> self: waits until `docker version` answers on the socket;
      RuntimeError with the daemon's complaints if not, Unavailable if a piece is missing.
      One start per object (a second raises RuntimeError); `with RootlessDockerd(u) as d:` starts it.
    - host: "unix://…/docker.sock"; env(**extra): user_env with that XDG_RUNTIME_DIR and
      DOCKER_HOST (for docker and docker-dir as the user).
    - docker(*args, check=True, input=None, timeout=120, cwd=None) -> CompletedProcess as the user.
    - import_rootfs(rootfs, ref, changes=...) -> image ID (`docker import`).
    - pid (rootlesskit), dockerd_pid, server_version, log_path (beside the runtime dir,
      removed by stop()).
    - stop(): removes containers, SIGTERMs rootlesskit (which ends dockerd), waits, then
      SIGKILLs every process left in its user namespace (containerd, shims, containers),
      removes the private dirs. Safe to call twice; also a context manager.
    Container root is the user there; --user UID:GID maps to subordinate IDs; there is no
    --userns=keep-id ("docker: --userns: invalid USER mode").

Charliecloud (ch-run 0.31, Debian charliecloud-runtime):
charliecloud() -> path of ch-run (installed by provision-extra.sh when missing).
ch_tree(rootfs, directory) -> Path: an unpacked image tree ch-run accepts: a copy of
    rootfs plus the mount points ch-run needs (dev, proc, sys, tmp, home, mnt) and empty
    etc/passwd and etc/group (ch-run binds the host's over them); world-readable,
    owned by root (read-only to the users, like an admin-provided image).
ch_run(user, tree, argv, options=(), **run_as_kwargs) -> CompletedProcess of
    `ch-run OPTIONS TREE -- ARGV` as the user. Facts about 0.31: it starts in / unless -c DIR
    is given (the host cwd is not kept); -b SRC[:DST] needs DST in the tree (it tries to
    mkdir it and fails: "can't mkdir: …: Read-only file system"); --home binds $HOME at
    /home/$USER on a tmpfs /home (not bound by default, while $HOME still names it); the
    host environment passes through unless --unset-env=GLOB (CH_RUNNING is always set);
    --set-env=FILE and --set-env=NAME=VALUE both work, expanding $NAME only as a whole
    colon-separated item ($PATH:/x yes; $HOME/x and ${HOME} give an empty value; no
    expansion with --env-no-expand), quotes in FILE are kept literally; bare --set-env
    reads /ch/environment in the tree. It needs $USER (and $HOME for --home) set.

Slurm (Debian slurm-wlm 22.05, one node, accounting off):
slurm_cluster() -> SlurmCluster(node, partition, started_here): runs provision_slurm (fast
    when up: it checks the daemons and that the node is idle). cluster.stop() stops the
    daemons only when this call started them (started_here).
sbatch(script=None, wrap=None, user=None, array=None, cwd=None, options=(), env=None,
       wait=True, timeout=120) -> SlurmJob
    Submits with `sbatch --parsable` (the script goes on stdin; or --wrap) as `user` (root
    when None) from `cwd` (default: a new user_dir; remove_tree(job.cwd) when done), output
    to cwd/slurm-%A_%a.out (arrays) or cwd/slurm-%j.out. Jobs get the submitter's environment
    (user_env for a user, so XDG_RUNTIME_DIR too) updated by `env`. With wait it polls scontrol every 0.1 s (sbatch --wait polls far
    more slowly: 10 s for an 8-task array that is done in 4) and on timeout cancels the
    job and raises TimeoutError.
SlurmJob: job_id, cwd; wait(timeout); tasks() -> {task_id or None: SlurmTask(state, exit_code,
    reason)} from `scontrol show job -o` (finished jobs stay visible: MinJobAge is a day);
    states() -> sorted list of states; done(); succeeded(); output(task=None) -> text; cancel().

or_skip(function, *args, **kwargs) -> its result, or pytest.skip(reason) on Unavailable.
"""
import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from plumbum import local

from engines import Unavailable, log_tail

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PROVISION = TESTS / "provision-extra.sh"

ROOTLESS = "ddrootless"
HIGHUID = "ddhighuid"
DOCKER_GROUP = "dddocker"
TEST_USERS = (ROOTLESS, HIGHUID, DOCKER_GROUP)

USER_DIRS = Path("/var/tmp/docker-dir-tests")
USER_VENV = Path("/opt/docker-dir-tests/venv")
DEBIAN_PYTHON = "/usr/bin/python3"
DOCKERD_ROOTLESS = "/usr/share/docker.io/contrib/dockerd-rootless.sh"
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


def or_skip(function, *args, **kwargs):
    """For fixtures: the result, or a skip whose reason says what is missing."""
    import pytest

    try:
        return function(*args, **kwargs)
    except Unavailable as why:
        pytest.skip(str(why))


def _alive(pid):
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    pids = list(pids)
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if _alive(pid)]
    return pids


# -- provisioning ------------------------------------------------------------------

def provision(*steps, timeout=900):
    """Run steps (function names) of provision-extra.sh; Unavailable with its complaint if they fail."""
    if os.geteuid() != 0:
        raise Unavailable(f"{' '.join(steps)}: needs root (provisioning users, packages, daemons)")
    if not shutil.which("apt-get") and not shutil.which("dpkg-query"):
        raise Unavailable(f"{' '.join(steps)}: needs Debian (apt-get)")
    proc = subprocess.run(["bash", str(PROVISION), *steps], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise Unavailable(f"{' '.join(steps)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stderr


class User(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str

    @property
    def runtime_dir(self):
        return f"/run/user/{self.uid}"


_users_ready = False


def user_info(name):
    """The user, after provision_test_users has run once in this process."""
    global _users_ready
    if not _users_ready:
        provision("provision_test_users")
        _users_ready = True
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise Unavailable(f"test user {name} does not exist (see TEST_USERS in {PROVISION.name})") from None
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _user(user):
    return user if isinstance(user, User) else user_info(user)


def user_env(user, **extra):
    user = _user(user)
    env = {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": "/bin/bash",
           "PATH": USER_PATH, "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": user.runtime_dir}
    env.update(extra)
    return env


def _as_user_argv(user, argv):
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *map(str, argv)]


def run_as(user, argv, env=None, cwd=None, input=None, timeout=120, check=False):
    """Run argv as the user with a clean environment (see the module docstring)."""
    if os.geteuid() != 0:
        raise Unavailable("running as another user needs root")
    user = _user(user)
    full_env = user_env(user)
    full_env.update(env or {})
    proc = subprocess.run(_as_user_argv(user, argv), env=full_env, cwd=cwd or user.home, input=input,
                          capture_output=True, text=input is None or isinstance(input, str), timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, argv))} as {user.name} failed ({proc.returncode}): "
                             f"{proc.stderr}")
    return proc


def user_dir(user, prefix="dd"):
    user = _user(user)
    USER_DIRS.mkdir(parents=True, exist_ok=True)
    os.chmod(USER_DIRS, 0o755)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{user.name}-", dir=USER_DIRS))
    os.chown(path, user.uid, user.gid)
    os.chmod(path, 0o755)
    return path


def remove_tree(path):
    """rm -rf as root: a rootless container's files belong to subordinate IDs."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# -- the package for other users -----------------------------------------------------

def _source_files(repo):
    files = [repo / name for name in ("setup.py", "pyproject.toml", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE")
             if (repo / name).is_file()]
    for top in ("lib", "bin"):
        for path in sorted((repo / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and not any(
                    part.endswith(".egg-info") for part in path.parts):
                files.append(path)
    return files


def _source_hash(repo):
    digest = hashlib.sha256()
    for path in _source_files(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def user_venv(repo=REPO):
    """bin/ of a venv the test users can run, holding the package installed from repo."""
    repo = Path(repo).resolve()
    if os.geteuid() != 0:
        raise Unavailable(f"the test users' venv goes into {USER_VENV}: needs root")
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        raise Unavailable(f"{DEBIAN_PYTHON} missing (Debian package python3)")
    stamp = USER_VENV / ".docker-dir-source"
    wanted = _source_hash(repo)
    USER_VENV.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o022)  # the users must read all of it
    try:
        with open(USER_VENV.parent / "venv.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stamp.exists() and stamp.read_text() == wanted:
                return USER_VENV / "bin"
            if not (USER_VENV / "bin" / "python").exists():
                provision("provision_rootless_packages")  # python3-venv
                proc = subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(USER_VENV)], capture_output=True,
                                      text=True)
                if proc.returncode:
                    shutil.rmtree(USER_VENV, ignore_errors=True)
                    raise Unavailable(f"python3 -m venv {USER_VENV} failed: {proc.stderr.strip()[-300:]}")
            with tempfile.TemporaryDirectory(prefix="docker-dir-src-") as copy:
                for path in _source_files(repo):
                    target = Path(copy, path.relative_to(repo))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
                env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
                env.pop("PYTHONDONTWRITEBYTECODE", None)  # the users cannot write bytecode later
                # pip always reinstalls a project given as a directory; plumbum stays
                proc = subprocess.run([str(USER_VENV / "bin" / "pip"), "install", "-q", copy],
                                      capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode:
                raise Unavailable(f"pip install into {USER_VENV} failed: {proc.stderr.strip()[-500:]}")
            stamp.write_text(wanted)
    finally:
        os.umask(old_umask)
    return USER_VENV / "bin"


# -- rootless podman -------------------------------------------------------------------

def _import_as(user, env, engine, rootfs, ref, changes):
    """`engine import` of a tar of rootfs as the user (plumbum pipeline); its output."""
    # go+rX: conftest's rootfs is a pytest temp dir (0700), and a 0700 "/" in the image
    # stops every non-root container user ("executable file not found in $PATH")
    tar = local["tar"]["-C", str(rootfs), "-c", "--mode=go+rX", "."]
    argv = _as_user_argv(user, [engine, "import", *(["-q"] if engine == "podman" else []), *_import_argv(changes),
                                "-", ref])
    with local.cwd(user.home):
        status, out, err = (tar | local[argv[0]][argv[1:]].with_env(**env)).run(retcode=None, timeout=120)
    if status:
        raise AssertionError(f"{engine} import as {user.name} failed: {err}")
    return out.strip().splitlines()[-1]


def _import_argv(changes):
    argv = []
    for change in changes:
        argv += ["--change", change]
    return argv


class RootlessPodman:
    """A user's rootless podman; see the module docstring."""

    def __init__(self, user):
        if not shutil.which("podman"):
            raise Unavailable("rootless podman: podman not installed (Debian package podman)")
        self.user = _user(user)

    def env(self, **extra):
        return user_env(self.user, **extra)

    def podman(self, *args, check=True, input=None, timeout=120, cwd=None):
        return run_as(self.user, ["podman", *args], input=input, timeout=timeout, cwd=cwd, check=check)

    def import_rootfs(self, rootfs, ref, changes=("ENV PATH=/bin", 'CMD ["sh"]')):
        return _import_as(self.user, self.env(), "podman", rootfs, ref, changes)

    def stop(self):
        self.podman("rm", "-af", "-t", "0", check=False)
        # the pause process keeps podman's user namespace; it outlives every podman command
        pidfile = Path(self.user.runtime_dir, "libpod", "tmp", "pause.pid")
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            if _alive(pid) and os.stat(f"/proc/{pid}").st_uid == self.user.uid:
                os.kill(pid, signal.SIGKILL)
                _wait_gone([pid], 10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# -- rootless Docker ---------------------------------------------------------------------

def _userns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


class RootlessDockerd:
    """A user's rootless dockerd with private dirs; see the module docstring."""

    def __init__(self, user):
        self.user = _user(user)
        self.runtime_dir = None
        self.data_root = None
        self.process = None
        self.pid = self.dockerd_pid = None
        self.userns = None
        self.server_version = None

    @property
    def host(self):
        return f"unix://{self.runtime_dir}/docker.sock"

    @property
    def log_path(self):
        return f"{self.runtime_dir}.log"

    def env(self, **extra):
        return user_env(self.user, XDG_RUNTIME_DIR=self.runtime_dir, DOCKER_HOST=self.host, **extra)

    def docker(self, *args, check=True, input=None, timeout=120, cwd=None):
        return run_as(self.user, ["docker", *args], env=self.env(), input=input, timeout=timeout, cwd=cwd,
                      check=check)

    def import_rootfs(self, rootfs, ref, changes=("ENV PATH=/bin", 'CMD ["sh"]')):
        return _import_as(self.user, self.env(), "docker", rootfs, ref, changes)

    def start(self, timeout=60):
        if self.runtime_dir is not None:
            raise RuntimeError(f"rootless dockerd of {self.user.name} already started ({self.runtime_dir})")
        if os.geteuid() != 0:
            raise Unavailable("rootless Docker: starting it as a test user needs root")
        for path in (DOCKERD_ROOTLESS, "/usr/sbin/dockerd"):
            if not os.path.exists(path):
                raise Unavailable(f"rootless Docker: {path} missing (Debian package docker.io)")
        if not shutil.which("rootlesskit"):
            raise Unavailable("rootless Docker: rootlesskit missing (Debian package rootlesskit)")
        if not shutil.which("docker"):
            raise Unavailable("rootless Docker: no docker client on PATH")
        name = f"dd{uuid.uuid4().hex[:8]}"
        # short: the socket path must stay under 108 bytes
        self.runtime_dir = f"{self.user.runtime_dir}/{name}"
        os.mkdir(self.runtime_dir, 0o700)
        os.chown(self.runtime_dir, self.user.uid, self.user.gid)
        self.data_root = f"{self.user.home}/.local/share/docker-dir-tests/{name}"
        run_as(self.user, ["mkdir", "-p", self.data_root], check=True)
        env = self.env(DOCKERD_ROOTLESS_ROOTLESSKIT_NET="host", DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER="none")
        del env["DOCKER_HOST"]
        argv = [DOCKERD_ROOTLESS, "--bridge=none", "--iptables=false", "--ip6tables=false",
                "--data-root", self.data_root, "--shutdown-timeout=3"]
        with open(self.log_path, "ab") as log:
            # setpriv and the script exec: the PID is rootlesskit's
            self.process = subprocess.Popen(_as_user_argv(self.user, argv), env=env, cwd=self.user.home,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pid = self.process.pid
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"rootless dockerd of {self.user.name} exited ({self.process.returncode}):\n"
                                   f"{self._log_tail()}")
            proc = self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30)
            if proc.returncode == 0 and proc.stdout.strip():
                self.server_version = proc.stdout.strip()
                with contextlib.suppress(OSError, ValueError):
                    self.dockerd_pid = int(Path(self.runtime_dir, "docker.pid").read_text())
                    self.userns = _userns(self.dockerd_pid)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"rootless dockerd of {self.user.name}: no answer within {timeout} s:\n"
                                   f"{self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self):
        return log_tail(self.log_path, skip=("+ ",))  # dockerd-rootless.sh traces its shell

    def _own_pids(self):
        """Every process in the daemon's user namespace (dockerd, containerd, shims, containers),
        and any of the user's naming its private dirs (when it died before that was known)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            if self.userns and _userns(entry) == self.userns:
                pids.append(int(entry))
                continue
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid != self.user.uid:
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                if self.runtime_dir in cmdline or self.data_root in cmdline:
                    pids.append(int(entry))
        return pids

    def stop(self):
        if self.runtime_dir is None:
            return
        if self.process is not None and self.process.poll() is None:
            listed = self.docker("ps", "-aq", check=False, timeout=30)
            if listed.returncode == 0 and listed.stdout.split():
                self.docker("rm", "-f", *listed.stdout.split(), check=False, timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)  # rootlesskit passes it on to dockerd
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        left = self._own_pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(left, 10)
        remove_tree(self.runtime_dir)
        remove_tree(self.data_root)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)
        self.runtime_dir = None

    def __enter__(self):
        return self.start() if self.runtime_dir is None else self

    def __exit__(self, *exc):
        self.stop()


# -- Charliecloud ------------------------------------------------------------------------

def charliecloud():
    if not shutil.which("ch-run"):
        provision("provision_charliecloud")
    path = shutil.which("ch-run")
    if not path:
        raise Unavailable("Charliecloud: ch-run missing after provisioning (Debian package charliecloud-runtime)")
    return path


def ch_tree(rootfs, directory):
    """An unpacked image tree for ch-run from a root filesystem directory."""
    directory = Path(directory)
    shutil.copytree(rootfs, directory, symlinks=True)
    for name in ("dev", "proc", "sys", "tmp", "home", "mnt"):
        (directory / name).mkdir(exist_ok=True)
    (directory / "etc").mkdir(exist_ok=True)
    for name in ("passwd", "group"):
        (directory / "etc" / name).touch()
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    os.chmod(directory, 0o755)
    return directory


def ch_run(user, tree, argv, options=(), **kwargs):
    return run_as(user, [charliecloud(), *options, str(tree), "--", *argv], **kwargs)


# -- Slurm -----------------------------------------------------------------------------

SLURM_PIDFILES = {"munged": "/run/munge/munged.pid", "slurmctld": "/run/slurmctld.pid",
                  "slurmd": "/run/slurmd.pid"}
SLURM_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
               "BOOT_FAIL", "DEADLINE", "REVOKED"}


def _daemon_running(name, pidfile):
    try:
        pid = int(Path(pidfile).read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except (OSError, ValueError):
        return False


class SlurmCluster(NamedTuple):
    node: str
    partition: str
    started_here: bool

    def stop(self):
        """Stop the daemons if slurm_cluster() started them (leave a cluster others run)."""
        if self.started_here:
            provision("stop_slurm")


def slurm_cluster():
    was_running = all(_daemon_running(name, path) for name, path in SLURM_PIDFILES.items())
    provision("provision_slurm")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    return SlurmCluster(node, partition[0].rstrip("*") if partition else "", not was_running)


class SlurmTask(NamedTuple):
    state: str
    exit_code: str  # "status:signal", as scontrol prints it
    reason: str


class SlurmJob:
    def __init__(self, job_id, cwd, array):
        self.job_id = job_id
        self.cwd = Path(cwd)
        self.array = array

    def tasks(self):
        proc = subprocess.run(["scontrol", "show", "job", "-o", self.job_id], capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError(f"scontrol show job {self.job_id}: {proc.stderr.strip()}")
        tasks = {}
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            task = fields.get("ArrayTaskId")
            key = int(task) if task and task.isdigit() else task  # "3-8" while not yet split
            tasks[key] = SlurmTask(fields.get("JobState", ""), fields.get("ExitCode", ""), fields.get("Reason", ""))
        return tasks

    def states(self):
        return sorted(task.state for task in self.tasks().values())

    def done(self):
        return all(task.state in SLURM_FINAL for task in self.tasks().values())

    def succeeded(self):
        tasks = self.tasks()
        return bool(tasks) and all(t.state == "COMPLETED" and t.exit_code == "0:0" for t in tasks.values())

    def wait(self, timeout=120):
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"Slurm job {self.job_id} not done within {timeout} s: {self.tasks()}")
            time.sleep(0.1)
        return self

    def cancel(self):
        subprocess.run(["scancel", self.job_id], capture_output=True)

    def output(self, task=None):
        name = f"slurm-{self.job_id}_{task}.out" if self.array else f"slurm-{self.job_id}.out"
        return (self.cwd / name).read_text()


def sbatch(script=None, wrap=None, user=None, array=None, cwd=None, options=(), env=None, wait=True,
           timeout=120):
    """Submit a job (see the module docstring); returns the SlurmJob, finished when wait."""
    if (script is None) == (wrap is None):
        raise ValueError("sbatch: give script or wrap")
    if cwd is None:
        cwd = user_dir(user) if user else Path(tempfile.mkdtemp(prefix="dd-slurm-", dir=_root_dir()))
    output = "slurm-%A_%a.out" if array else "slurm-%j.out"
    argv = ["sbatch", "--parsable", f"--output={output}", *([f"--array={array}"] if array else []), *options]
    if wrap is not None:
        argv.append(f"--wrap={wrap}")
    if user:
        proc = run_as(user, argv, env=env, cwd=cwd, input=script, timeout=60)
    else:
        proc = subprocess.run(argv, env=dict(os.environ, **(env or {})), cwd=cwd, input=script, capture_output=True,
                              text=True, timeout=60)
    if proc.returncode:
        raise AssertionError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    job = SlurmJob(proc.stdout.strip().split(";")[0], cwd, array)
    return job.wait(timeout) if wait else job


def _root_dir():
    USER_DIRS.mkdir(parents=True, exist_ok=True)
    return USER_DIRS
