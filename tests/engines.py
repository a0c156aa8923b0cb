"""Side engines for tests: extra dockerd daemons (Debian 20.10, Docker 26 classic and
containerd image store) and an isolated podman configuration.

Import from a test module (tests/ is on sys.path under pytest):

    from engines import SideDockerd, Unavailable, docker26_bin_dir, podman_env

SideDockerd(label, dockerd="dockerd", path_dirs=(), containerd_store=False)
    One dockerd in its own network and mount namespaces (`unshare --net --mount
    --fork`), so it can never touch the host's docker0 or iptables, with its
    data-root, exec-root, pidfile and socket in a short temp dir under /tmp (a unix
    socket path must stay under 108 bytes).
    - start(timeout=90) -> self: starts it, waits until `docker info` answers;
      raises RuntimeError with its complaints and last log lines if it does not.
    - host: "unix:///tmp/ddXXXXXXXXXX/s", for DOCKER_HOST.
    - env(**extra) -> os.environ copy with DOCKER_HOST set (plus extra).
    - docker(*args, check=True, input=None, timeout=120) -> CompletedProcess (text)
      of the docker client on PATH against this daemon.
    - pid: dockerd's PID, read from its pidfile; server_version: from `docker info`;
      dir: its temp dir; log_path: its log (kept across restarts).
    - kill(signum=SIGKILL): signal dockerd only (e.g. to kill it mid-load); its
      containerd dies with it, shims and containers stay until restart() or stop().
    - restart(timeout=90) -> self: ends what is left of it, starts it again on the
      same data-root (to see what a killed daemon kept).
    - stop(): SIGTERM dockerd (by pidfile PID), wait, then SIGKILL whatever of
      this daemon is left (processes whose command line names its temp dir,
      processes in its cgroup), unmount lazily anything under the temp dir, remove
      it. Safe to call twice and after kill(). Also a context manager.
    Containers there have no network: run them with `--network none`
    (docker-dir-exec --network none).

side_dockerd(kind, label) -> started SideDockerd, where kind is "20.10" (Debian's
    /usr/sbin/dockerd), "26" (classic store) or "26-containerd"; raises Unavailable
    with the reason when the engine cannot be had (tests turn it into a skip).

side_dockerd_or_skip(kind, label=None) -> the same, for a fixture: pytest.skip(reason)
    when Unavailable. E.g. in a test module:

        @pytest.fixture
        def second_daemon():
            daemon = side_dockerd_or_skip("20.10")
            yield daemon          # run with env=daemon.env(), containers with --network none
            daemon.stop()

docker26_bin_dir() -> Path of a directory with Docker 26's dockerd, docker-proxy,
    docker-init and containerd 1.7 (+ shim) from Debian trixie, fetched once with
    apt through a private source list into ~/.cache/docker-dir-tests/docker26 and
    reused. runc comes from the system (trixie's needs a newer glibc than bookworm).

podman_env(directory, **extra) -> env dict for podman: CONTAINERS_CONF with the
    ulimits root podman needs here and a private events log (podman_events_path).
podman_load_count(env) -> how many loads podman logged in that private log.

Target(name, engine, env, daemon=None): one engine as docker-dir sees it ("docker"
    or "podman" with the environment that reaches it): cli(*args), exec(*args, cwd),
    save(ref, dir), image_id(ref), has(ref), load_dir(dir), remove(*refs),
    mark() / loads_since(mark) (loads this engine recorded), created (images to remove).
    conftest.py makes the session fixtures main_docker, side20, docker26, docker26c
    and podman from it.
"""
import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from plumbum import local

from procs import alive, argv_of, wait_gone

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "docker-dir-tests"
DOCKER26_DIR = CACHE / "docker26"
TRIXIE_PACKAGES = ("docker.io", "containerd", "tini")
# name in bin/ -> path inside the extracted packages
DOCKER26_BINARIES = {
    "dockerd": "usr/sbin/dockerd",
    "docker-proxy": "usr/sbin/docker-proxy",
    "docker-init": "usr/bin/tini-static",
    "containerd": "usr/bin/containerd",
    "containerd-shim-runc-v2": "usr/bin/containerd-shim-runc-v2",
}


class Unavailable(Exception):
    """A side engine cannot be had here; the message says why (shown as the skip reason)."""


# -- Docker 26 from Debian trixie ---------------------------------------------

def _debian_mirror():
    """The Debian mirror the machine's apt already uses (deb822 or one-line sources)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for line in Path(path).read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(path):
            for line in Path(path).read_text().splitlines():
                words = line.split()
                if words[:1] == ["deb"] and "security" not in line:
                    return next(w for w in words[1:] if not w.startswith("["))
    return "http://deb.debian.org/debian"


def _fetch_docker26(target):
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise Unavailable("Docker 26: needs apt-get and dpkg-deb to fetch Debian trixie's docker.io")
    work = Path(tempfile.mkdtemp(prefix="docker26-", dir=target.parent))
    try:
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "debs").mkdir()
        (work / "sources.list").write_text(f"deb {_debian_mirror()} trixie main\n")
        options = [f"-oDir::Etc::SourceList={work}/sources.list", "-oDir::Etc::SourceParts=/dev/null",
                   f"-oDir::State::Lists={work}/lists", f"-oDir::Cache={work}/cache",
                   "-oAPT::Sandbox::User=root", "-q"]
        for step, cwd in ((["update"], work), (["download", *TRIXIE_PACKAGES], work / "debs")):
            proc = subprocess.run(["apt-get", *options, *step], cwd=cwd, capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode:
                raise Unavailable(f"Docker 26: 'apt-get {step[0]}' from Debian trixie failed: "
                                  f"{proc.stderr.strip()[-300:]}")
        root = work / "root"
        for deb in (work / "debs").glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        bin_dir = work / "bin"
        bin_dir.mkdir()
        for name, inside in DOCKER26_BINARIES.items():
            if not (root / inside).exists():
                raise Unavailable(f"Docker 26: {inside} missing from the trixie packages")
            os.symlink(os.path.join("..", "root", inside), bin_dir / name)
        shutil.rmtree(work / "lists")
        shutil.rmtree(work / "cache", ignore_errors=True)
        os.rename(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def docker26_bin_dir():
    """bin/ of Docker 26 (see the module docstring); fetched once, under a lock."""
    if not shutil.which("runc"):
        raise Unavailable("Docker 26: no runc on PATH (Debian package runc)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "docker26.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (DOCKER26_DIR / "bin" / "dockerd").exists():
            shutil.rmtree(DOCKER26_DIR, ignore_errors=True)
            _fetch_docker26(DOCKER26_DIR)
    return DOCKER26_DIR / "bin"


# -- side dockerd ---------------------------------------------------------------

def log_tail(path, lines=8, skip=()):
    """A daemon's complaints (warnings and worse) and its last lines: enough to see why it failed."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    complaints = [line for line in text if "level=info" not in line and "level=debug" not in line
                  and not line.startswith(skip)]
    return "\n".join(dict.fromkeys(complaints[-20:] + text[-lines:]))


class SideDockerd:
    """A dockerd beside the main one; see the module docstring for the API."""

    def __init__(self, label, dockerd="dockerd", path_dirs=(), containerd_store=False):
        self.label = label
        self.dockerd = dockerd
        self.path_dirs = [str(p) for p in path_dirs]
        self.containerd_store = containerd_store
        self.dir = None
        self.process = None
        self.pid = None

    # paths, short on purpose (unix socket paths are limited to 108 bytes)
    @property
    def socket(self):
        return f"{self.dir}/s"

    @property
    def host(self):
        return f"unix://{self.socket}"

    @property
    def log_path(self):
        return f"{self.dir}/log"

    @property
    def cgroup_parent(self):
        """Also its containerd namespace."""
        return os.path.basename(self.dir)

    def env(self, **extra):
        env = dict(os.environ, DOCKER_HOST=self.host, **extra)
        env.pop("DOCKER_CONTEXT", None)
        return env

    def docker(self, *args, check=True, input=None, timeout=120):
        proc = subprocess.run(["docker", *map(str, args)], env=self.env(), capture_output=True, text=True,
                              input=input, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"docker {' '.join(map(str, args))} on {self.label} failed: {proc.stderr}")
        return proc

    def start(self, timeout=90):
        if os.geteuid() != 0:
            raise Unavailable(f"{self.label}: a side dockerd needs root")
        for tool in ("unshare", "docker"):
            if not shutil.which(tool):
                raise Unavailable(f"{self.label}: {tool} not installed")
        # also its containerd namespace and cgroup name: letters and digits only
        self.dir = f"/tmp/dd{uuid.uuid4().hex[:10]}"
        os.mkdir(self.dir, 0o700)
        config = {"features": {"containerd-snapshotter": True}} if self.containerd_store else {}
        Path(self.dir, "daemon.json").write_text(json.dumps(config))
        self._launch(timeout)
        return self

    def restart(self, timeout=90):
        """Stop what is left of it (e.g. after kill()) and start it again on the same data."""
        self._terminate()
        # A killed dockerd's containerd may linger as a zombie (an init that does not
        # reap, as on these machines): dockerd would take its stale PID for a live
        # containerd and wait for it forever.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.dir}/x/containerd/containerd.pid")
        self._launch(timeout)
        return self

    def _launch(self, timeout):
        argv = [self.dockerd, "--config-file", f"{self.dir}/daemon.json", "--data-root", f"{self.dir}/data",
                "--exec-root", f"{self.dir}/x", "--pidfile", f"{self.dir}/pid", "-H", self.host,
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--shutdown-timeout=3",
                "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", f"/{self.cgroup_parent}",
                "--containerd-namespace", self.cgroup_parent,
                "--containerd-plugins-namespace", f"{self.cgroup_parent}p"]
        # Own network namespace: a second dockerd on the host network once deleted
        # docker0. Own mount namespace: a system containerd's socket is hidden, so
        # this daemon starts its own containerd instead of sharing the host's.
        script = ('command -v ip >/dev/null && ip link set lo up; '
                  '[ -S /run/containerd/containerd.sock ] && mount -t tmpfs tmpfs /run/containerd; '
                  'exec "$@"')
        path = os.pathsep.join([*self.path_dirs, os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        self.pid = None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--net", "--mount", "--fork", "sh", "-c", script, "sh", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PATH=path))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: dockerd exited ({self.process.returncode}):\n{self._log_tail()}")
            info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], env=self.env(),
                                  capture_output=True, text=True, timeout=30)
            if info.returncode == 0:
                self.server_version = info.stdout.strip()
                self.pid = int(Path(self.dir, "pid").read_text())
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no answer to 'docker info' within {timeout} s:\n"
                                   f"{self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self):
        return log_tail(self.log_path)

    def kill(self, signum=signal.SIGKILL):
        os.kill(self.pid, signum)

    def _own_pids(self):
        """Processes of this daemon: their command line names its temp dir (dockerd,
        containerd, shims), or they sit in its cgroup (containers)."""
        mine = {int(p) for p in os.listdir("/proc") if p.isdigit() and self.dir in " ".join(argv_of(p))}
        mine.update(self._cgroup_pids())
        mine.discard(os.getpid())
        return sorted(mine)

    def _cgroup_dirs(self):
        # cgroup v2: /sys/fs/cgroup/<parent>; v1: /sys/fs/cgroup/<controller>/<parent>
        found = glob.glob(f"/sys/fs/cgroup/{self.cgroup_parent}") + glob.glob(
            f"/sys/fs/cgroup/*/{self.cgroup_parent}")
        return [d for d in found if os.path.isdir(d)]

    def _cgroup_pids(self):
        """Processes in its cgroup: its containers."""
        pids = set()
        for top in self._cgroup_dirs():
            for root, _dirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError):
                        pids.update(int(pid) for pid in Path(root, "cgroup.procs").read_text().split())
        return pids

    def stop(self):
        if self.dir is None:
            return
        self._terminate()
        self._unmount_all()
        for top in self._cgroup_dirs():
            for root, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(root)
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def _terminate(self):
        """SIGTERM dockerd by its pidfile PID; then SIGKILL anything of it still there.
        Its containers are killed first: dockerd would give each 10 s to stop."""
        for pid in self._cgroup_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.pid and alive(self.pid) and self.dir in " ".join(argv_of(self.pid)):
            os.kill(self.pid, signal.SIGTERM)
        if self.process is not None:
            # unshare reaps dockerd, then exits: wait for it, never kill it first, or
            # dockerd stays a zombie under an init that does not reap (as here).
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        elif self.pid:
            wait_gone([self.pid], 20)
        left = self._own_pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_gone(left, 10)

    def _unmount_all(self):
        """Mounts live in the daemon's own mount namespace and go with it; anything
        under its dir in ours (there should be none) is unmounted lazily."""
        with open("/proc/self/mountinfo") as info:
            points = [line.split()[4] for line in info]
        for point in sorted((p for p in points if p == self.dir or p.startswith(self.dir + "/")),
                            key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    def __enter__(self):
        return self.start() if self.dir is None else self

    def __exit__(self, *exc):
        self.stop()


SIDE_KINDS = ("20.10", "26", "26-containerd")


def side_dockerd(kind, label=None):
    """A started side daemon of `kind` (see SIDE_KINDS); Unavailable when it cannot be had."""
    label = label or f"dockerd {kind}"
    if kind == "20.10":
        if not os.path.exists("/usr/sbin/dockerd"):
            raise Unavailable("dockerd 20.10: /usr/sbin/dockerd missing (Debian package docker.io)")
        return SideDockerd(label, dockerd="/usr/sbin/dockerd").start()
    if kind not in SIDE_KINDS:
        raise ValueError(f"unknown side dockerd kind {kind!r}")
    bin_dir = docker26_bin_dir()
    return SideDockerd(label, dockerd=str(bin_dir / "dockerd"), path_dirs=[bin_dir],
                       containerd_store=kind == "26-containerd").start()


def side_dockerd_or_skip(kind, label=None):
    import pytest

    try:
        return side_dockerd(kind, label)
    except Unavailable as why:
        pytest.skip(str(why))


# -- podman ---------------------------------------------------------------------

PODMAN_CONF = """\
[containers]
# root podman cannot raise rlimits on these machines ("error setting rlimit type 7")
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# a private events log, so tests count their own loads only
events_logger = "file"
events_logfile_path = "{events}"
"""


def podman_events_path(env):
    return Path(env["CONTAINERS_CONF"]).parent / "events.log"


def podman_env(directory, **extra):
    """Environment for podman (and docker-dir with --engine podman) in tests."""
    if not shutil.which("podman"):
        raise Unavailable("podman not installed (Debian package podman)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "containers.conf"
    conf.write_text(PODMAN_CONF.format(events=directory / "events.log"))
    return dict(os.environ, CONTAINERS_CONF=str(conf), **extra)


def podman_load_count(env):
    """Loads podman logged in the private events log of `env`."""
    path = podman_events_path(env)
    if not path.exists():
        return 0
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(1 for event in events if event.get("Status") == "loadfromarchive")


# -- engines as test targets ------------------------------------------------------

class Target:
    """One engine as docker-dir sees it: the environment to run in, the engine's own CLI."""

    def __init__(self, name, engine, env, daemon=None):
        self.name, self.engine, self.env, self.daemon = name, engine, env, daemon
        self.created = []  # images a test gave this engine, removed with the fixture

    def cli(self, *args, check=True):
        proc = subprocess.run([self.engine, *map(str, args)], env=self.env, capture_output=True, text=True,
                              timeout=120)
        if check and proc.returncode:
            raise AssertionError(f"{self.engine} {' '.join(map(str, args))} on {self.name}: {proc.stderr}")
        return proc

    def exec(self, *args, cwd=None):
        """docker-dir-exec on this engine; containers get no network (side daemons have none)."""
        from conftest import cli

        return cli("docker-dir-exec", "--engine", self.engine, "--network", "none", *args, env=self.env, cwd=cwd)

    def save(self, ref, directory):
        from conftest import cli

        return cli("docker-dir-save", "--engine", self.engine, "-q", ref, directory, env=self.env)

    def image_id(self, ref):
        proc = self.cli("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def has(self, ref):
        return self.image_id(ref) is not None

    def load_dir(self, directory):
        """The engine's own `load` of a saved directory (tags as saved)."""
        (local["tar"]["-C", str(directory), "-c", "."] | local[self.engine]["load"].with_env(**self.env))(
            timeout=120)

    def remove(self, *refs):
        for ref in refs:
            self.cli("rmi", "-f", ref, check=False)

    def loads_since(self, since):
        """How many image loads the engine recorded since `since`: a side daemon's
        events or podman's private events log, so only this suite's loads count
        (not for the shared main daemon)."""
        if self.engine == "podman":
            return podman_load_count(self.env) - since
        proc = self.cli("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                        "--filter", "type=image", "--filter", "event=load", "--format", "{{.Action}}")
        return len(proc.stdout.split())

    def mark(self):
        """A starting point for loads_since."""
        return podman_load_count(self.env) if self.engine == "podman" else time.time()
