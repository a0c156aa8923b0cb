"""docker-dir-exec when things go wrong around it: many cold starts at once, the image
removed while execs start, the daemon killed during a load or not running, no engine
binary, SIGINT/SIGTERM/SIGHUP (and a terminal hangup) while the command runs, and
signals or SIGKILL while the image loads or while an exec waits for another's load.

All against real engines: the shared dockerd for what leaves it intact, a side dockerd
(own network namespace, tests/engines.py) for what kills or freezes a daemon, and an
isolated podman for the load through an engine's CLI.

Moments of a load are reached without hooks in the code. docker-dir-exec streams a load
into dockerd over its socket (POST /images/load): the side daemon is frozen (SIGSTOP)
once its import began, and what docker-dir-exec then sleeps in says where it is: sending
the stream, or, the whole stream sent, receiving the answer. podman's load is a
`podman load` child fed through a pipe: the child is frozen instead, and docker-dir-exec
sleeps writing the pipe or waiting for the child.
"""
import contextlib
import fcntl
import hashlib
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from plumbum import local

from conftest import BIN, count_events, docker, image_id_of, import_image, private_ref, raw_save
from engines import Target, Unavailable, side_dockerd
from procs import (CHILD_WAIT, PIPE_WRITE, SOCKET_RECV, SOCKET_SEND, all_children, argv_of, asleep_in, children,
                   freeze, state_of, thaw)

from docker_dir.nodelocal import runtime_dir
from docker_dir.errors import EXIT_ENGINE_FAILED, EXIT_ENGINE_UNAVAILABLE

EXEC = str(BIN / "docker-dir-exec")
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
# Lines docker-dir-exec prints on stderr that are progress, not errors.
INFO_PREFIX = "docker-dir-exec: waiting for another process"


def start_exec(*args, env=None):
    return subprocess.Popen([sys.executable, EXEC, *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_exec(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, EXEC, *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=timeout)


def error_lines(stderr):
    """The stderr lines that are not progress; asserts there is no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(INFO_PREFIX)]


def assert_one_line_error(stderr):
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("docker-dir-exec: "), stderr
    return lines[0]


def wait_until(predicate, timeout, what, proc=None, poll=0.002):
    """Poll `predicate` every `poll` s until it returns something true; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"docker-dir-exec exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(poll)


def containers(label, env=None):
    proc = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label={label}"], capture_output=True,
                          text=True, env=env, check=True)
    return proc.stdout.split()


def reaped(pid):
    """(wait status,) once child `pid` has ended, else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return (status,) if done else None


def load_child(pid):
    """The `<engine> load` process docker-dir-exec started, once it runs the engine binary."""
    for child in children(pid):
        if argv_of(child)[1:2] == ["load"]:
            return child
    return None


def lock_is_free(image_id):
    """No process holds the image's load lock (a holder that ended cleanly removed its file)."""
    path = os.path.join(runtime_dir(), f"load-{image_id.split(':')[-1]}.lock")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# -- many at once ---------------------------------------------------------------

def test_16_parallel_cold_execs_load_once(cold_dir):
    directory, image = cold_dir()
    since = time.time()
    procs = [start_exec(directory, "echo", f"out-{i}") for i in range(16)]
    results = [(proc, *proc.communicate(timeout=180)) for proc in procs]
    for i, (proc, out, err) in enumerate(results):
        assert proc.returncode == 0, err
        assert out == f"out-{i}\n"
        assert error_lines(err) == [], err
    assert count_events("load", since, image=image) == 1


def test_image_removed_while_16_execs_start(cold_dir):
    """Each exec runs or fails with a clear message, whatever it was doing when
    another process removed the image; afterwards one exec loads it again."""
    directory, image = cold_dir()
    ref = private_ref(image)

    def remove_image():
        # midway: once the first exec has loaded it, while the others look, wait or start
        wait_until(lambda: image_id_of(ref), 120, "load of the image")
        docker("rmi", "-f", ref, check=False)
        docker("rmi", "-f", image, check=False)

    with ThreadPoolExecutor(1) as pool:
        removal = pool.submit(remove_image)
        procs = [start_exec(directory, "echo", f"out-{i}") for i in range(16)]
        results = [(proc, *proc.communicate(timeout=180)) for proc in procs]
        removal.result()
    for i, (proc, out, err) in enumerate(results):
        if proc.returncode == 0:
            assert out == f"out-{i}\n", err
            continue
        lines = error_lines(err)
        # either our own one line, or the docker CLI's (it adds a pointer to 'docker run --help')
        assert lines and (lines[0].startswith("docker-dir-exec: ") and len(lines) == 1
                          or "No such image: " + ref in lines[0]
                          and all("docker run --help" in line for line in lines[1:])), err
    again = run_exec(directory, "echo", "again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr


# -- engine missing or down -----------------------------------------------------

def stale_socket(path):
    """A unix socket file nobody listens on: what a stopped daemon leaves behind."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


@pytest.mark.parametrize("where", ["no socket", "stale socket"])
def test_daemon_not_running(saved, tmp_path, where):
    sock = tmp_path / "docker.sock" if where == "stale socket" else Path("/nonexistent/docker.sock")
    if where == "stale socket":
        stale_socket(sock)
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    env.pop("DOCKER_CONTEXT", None)
    proc = run_exec(saved.one, "true", env=env, timeout=5)  # a hang guard
    assert proc.returncode == EXIT_ENGINE_UNAVAILABLE, proc.stderr
    line = assert_one_line_error(proc.stderr)
    assert "start the daemon" in line and "DOCKER_HOST" in line


@pytest.mark.parametrize("options, env_choice, engine", [(["--engine", "docker"], {}, "docker"),
                                                        ([], {}, "docker"),
                                                        ([], {"DOCKER_DIR_ENGINE": "podman"}, "podman")],
                         ids=["--engine docker", "default", "DOCKER_DIR_ENGINE=podman"])
def test_engine_binary_missing(saved, tmp_path, options, env_choice, engine):
    """No engine on PATH (an empty directory): the chosen one is named, with what to do."""
    env = dict(os.environ, PATH=str(tmp_path))
    env.pop("DOCKER_DIR_ENGINE", None)
    env.update(env_choice)
    proc = run_exec(*options, saved.one, "true", env=env)
    assert proc.returncode == EXIT_ENGINE_UNAVAILABLE, proc.stderr
    line = assert_one_line_error(proc.stderr)
    assert f"{engine} is not installed" in line and "--engine" in line


# -- signals ----------------------------------------------------------------------

@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_while_command_runs(saved, signum):
    """The docker CLI docker-dir-exec became forwards the signal; tini (--init) makes
    `sleep` honour it, so the container goes and its status is ours."""
    label = f"docker-dir-test-signal={uuid.uuid4().hex}"
    proc = start_exec(f"--engine-arg=--label={label}", saved.one, "sleep", "300")
    try:
        wait_until(lambda: subprocess.run(["docker", "ps", "-q", "--filter", f"label={label}",
                                           "--filter", "status=running"], capture_output=True,
                                          text=True).stdout.strip(), 60, "running container", proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 128 + signum, err
        assert "Traceback" not in err
        wait_until(lambda: not containers(label), 15, "removal of the container")
    finally:
        proc.kill()
        proc.wait()
        for container in containers(label):
            docker("rm", "-f", container, check=False)


def test_terminal_hangup_while_command_runs(saved):
    """Closing the terminal (an ssh session dropping) hangs up the docker CLI that
    docker-dir-exec became, running with --tty: the container goes too."""
    label = f"docker-dir-test-signal={uuid.uuid4().hex}"
    pid, terminal = pty.fork()
    if pid == 0:
        try:
            os.execv(sys.executable, [sys.executable, EXEC, f"--engine-arg=--label={label}", str(saved.one),
                                      "sleep", "300"])
        finally:
            os._exit(127)
    status = None
    try:
        container = wait_until(lambda: subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label={label}", "--filter", "status=running"],
            capture_output=True, text=True).stdout.strip(), 60, "running container")
        assert docker("inspect", "--format", "{{.Config.Tty}}", container).stdout.strip() == "true"
        os.close(terminal)
        terminal = None
        (status,) = wait_until(lambda: reaped(pid), 15, "end of docker-dir-exec")
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP
        wait_until(lambda: not containers(label), 15, "removal of the container")
    finally:
        if terminal is not None:
            os.close(terminal)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for container in containers(label):
            docker("rm", "-f", container, check=False)


# -- signals and SIGKILL while the image loads ---------------------------------------

@pytest.fixture(scope="module")
def side_daemon():
    try:
        daemon = side_dockerd("20.10", "dockerd 20.10 for docker-dir-exec faults")
    except Unavailable as why:
        pytest.skip(str(why))
    yield daemon
    daemon.stop()


BUSYBOX = "/bin/busybox"


@pytest.fixture(scope="module")
def loads(rootfs, tmp_path_factory):
    """Image directories to load, none of them in any engine; by the phase of a load they reach:
    - "writing": 16 MiB of random data, far more than a socket's or pipe's buffer and what
      the daemon reads before it is frozen, so docker-dir-exec is still sending;
    - "waiting": one small file, so the whole stream fits in a buffer and docker-dir-exec
      waits for the engine's answer. It has no shell: commands run the host's static busybox
      mounted into it (`run`).
    Each: SimpleNamespace(dir, image, mount, run, big_sha)."""
    base = tmp_path_factory.mktemp("loads")
    root = base / "big-root"
    shutil.copytree(rootfs, root, symlinks=True)
    data = os.urandom(16 << 20)
    (root / "big.bin").write_bytes(data)
    tiny = base / "tiny-root"
    tiny.mkdir()
    (tiny / "hello").write_text("hello\n")
    made = {}
    try:
        big = import_image(root, None, label=uuid.uuid4().hex)
        made["writing"] = SimpleNamespace(dir=raw_save(big, base / "big"), image=big, mount=[], run=[],
                                          big_sha=hashlib.sha256(data).hexdigest())
        small = (local["tar"]["-C", str(tiny), "-c", "."]
                 | local["docker"]["import", "-c", f"LABEL docker-dir-test={uuid.uuid4().hex}", "-"])().strip()
        made["waiting"] = SimpleNamespace(dir=raw_save(small, base / "tiny"), image=small,
                                          mount=[f"--volume={BUSYBOX}:{BUSYBOX}:ro"], run=[BUSYBOX], big_sha=None)
    finally:
        for load in made.values():
            docker("rmi", "-f", load.image, check=False)
    return made


class DaemonLoad:
    """docker (the users' path): the load streams over the side daemon's socket. The daemon
    is frozen once its import began (its temp dir data-root/tmp/docker-import-* exists);
    that import ends, and the temp dir goes, when the connection closes."""

    writing, waiting = SOCKET_SEND, SOCKET_RECV

    def __init__(self, daemon):
        self.daemon = daemon
        self.target = Target("side dockerd", "docker", daemon.env(), daemon)
        self.frozen = None

    def imports(self):
        return list(Path(self.daemon.dir, "data", "tmp").glob("docker-import-*"))

    def hold(self, proc):
        """Freeze the daemon while docker-dir-exec's load is in progress."""
        wait_until(self.imports, 60, "import in the daemon", proc, poll=0.0002)
        self.frozen = self.daemon.pid
        freeze(self.frozen)
        assert self.imports(), "the daemon finished the import before it could be frozen"

    def release(self):
        if self.frozen:
            thaw(self.frozen)
            self.frozen = None

    def check_abandoned(self, load, stream_cut):
        """After docker-dir-exec ended: the daemon's import ends with the connection. With
        the stream cut it leaves no image; the whole stream, already in the daemon's socket
        buffer, the daemon may still import: then the image is whole, under the private tag."""
        self.release()
        wait_until(lambda: not self.imports(), 60, "end of the daemon's import (its connection closed)")
        ref = private_ref(load.image)
        if stream_cut:
            assert not self.target.has(ref) and not self.target.has(load.image), "an image from a cut stream"
        elif self.target.has(ref):
            assert self.target.image_id(ref) == load.image


class ChildLoad:
    """podman: the load is a `podman load` child fed through a pipe. The child is frozen
    as soon as it runs; it must end with docker-dir-exec, killed on a signal, by the
    parent-death signal on SIGKILL (it could neither finish nor notice the closed pipe)."""

    writing, waiting = PIPE_WRITE, CHILD_WAIT

    def __init__(self, target):
        self.target = target
        self.frozen = None

    def hold(self, proc):
        self.frozen = wait_until(lambda: load_child(proc.pid), 60, "podman load process", proc)
        freeze(self.frozen)
        assert state_of(self.frozen) == "T", "podman load finished before it could be stopped"

    def release(self):
        if self.frozen and state_of(self.frozen) not in (None, "Z"):
            os.kill(self.frozen, signal.SIGKILL)
            thaw(self.frozen)
        self.frozen = None

    def check_abandoned(self, load, stream_cut):
        loader = self.frozen
        wait_until(lambda: state_of(loader) in (None, "Z"), 30, "end of the podman load child")
        assert not self.target.has(private_ref(load.image)), "podman imported a load it never finished reading"
        self.release()


@pytest.fixture(params=["docker-api", "podman"])
def loading(request):
    """The engine a load goes to, and how it is held in progress (DaemonLoad, ChildLoad)."""
    if request.param == "docker-api":
        return DaemonLoad(request.getfixturevalue("side_daemon"))
    return ChildLoad(request.getfixturevalue("podman"))


def exec_on(target, *args):
    """docker-dir-exec on `target` (containers without network: the side daemon has none)."""
    return start_exec("--engine", target.engine, "--network", "none", *args, env=target.env)


def run_on(target, *args):
    return run_exec("--engine", target.engine, "--network", "none", *args, env=target.env)


def engine_containers(target, label):
    return target.cli("ps", "-a", "-q", "--filter", f"label={label}").stdout.split()


@contextlib.contextmanager
def cold(target, load):
    """The engine lacks the image before and after."""
    refs = (private_ref(load.image), load.image)
    target.remove(*refs)
    try:
        yield
    finally:
        target.remove(*refs)


@pytest.mark.parametrize("phase", ["writing", "waiting"])
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_during_load(loading, loads, phase, signum):
    """A signal while the image loads: the engine's import is abandoned, no container
    starts, the lock is free, and the next exec loads and runs."""
    load, target = loads[phase], loading.target
    label = f"docker-dir-test-signal={uuid.uuid4().hex}"
    with cold(target, load):
        proc = exec_on(target, f"--engine-arg=--label={label}", *load.mount, load.dir, *load.run, "sleep", "300")
        try:
            loading.hold(proc)
            wait_until(lambda: asleep_in(proc.pid, loading.writing + loading.waiting), 30,
                       "docker-dir-exec asleep sending the stream or waiting for the answer", proc)
            where = loading.writing if phase == "writing" else loading.waiting
            assert asleep_in(proc.pid, where), f"docker-dir-exec is not {phase}"
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 128 + signum, err
            assert assert_one_line_error(err).startswith("docker-dir-exec: interrupted")
            loading.check_abandoned(load, stream_cut=phase == "writing")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            loading.release()
        assert not engine_containers(target, label)
        assert lock_is_free(load.image)
        again = run_on(target, *load.mount, load.dir, *load.run, "echo", "again")
        assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr


def test_sigkill_during_load(loading, loads):
    """SIGKILL cannot be handled: the engine's import ends with docker-dir-exec (it would
    otherwise go on for nobody), the kernel drops the lock, and the next exec loads."""
    load, target = loads["writing"], loading.target
    with cold(target, load):
        proc = exec_on(target, load.dir, "echo", "ran")
        try:
            loading.hold(proc)
            wait_until(lambda: asleep_in(proc.pid, loading.writing), 30, "docker-dir-exec sending the stream", proc)
            proc.kill()
            proc.wait()
            loading.check_abandoned(load, stream_cut=True)
            assert lock_is_free(load.image)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            loading.release()
        again = run_on(target, load.dir, "echo", "again")
        assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr


def untar_helper(daemon):
    """The process dockerd 20.10 unpacks a loaded archive in (`docker-untar`, its own
    binary re-executed), fed the stream through a pipe."""
    return next((pid for pid in all_children(daemon.pid) if argv_of(pid)[:1] == ["docker-untar"]), None)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_while_waiting_for_another_load(side_daemon, loads, signum):
    """An exec waiting for the load lock goes at once on a signal; the loading one goes on.
    The daemon must answer the waiting exec's questions, so it is not frozen whole: only its
    helper unpacking the first exec's stream is, which holds that load (and the lock) open."""
    load, target = loads["writing"], Target("side dockerd", "docker", side_daemon.env(), side_daemon)
    with cold(target, load):
        first = exec_on(target, load.dir, "echo", "first")
        helper = wait_until(lambda: untar_helper(side_daemon), 60, "the daemon unpacking the load", first,
                            poll=0.0002)
        freeze(helper)
        try:
            assert state_of(helper) == "T", "the daemon unpacked the whole load before it could be stopped"
            second = exec_on(target, load.dir, "echo", "second")
            assert second.stderr.readline().startswith(INFO_PREFIX)
            second.send_signal(signum)
            out, err = second.communicate(timeout=15)
            assert second.returncode == 128 + signum, err
            assert out == ""
            assert assert_one_line_error(err).startswith("docker-dir-exec: interrupted")
        finally:
            thaw(helper)
            out, err = first.communicate(timeout=120)
        assert (first.returncode, out) == (0, "first\n"), err


# -- the presence check outlives nothing ------------------------------------------------

def presence_check(pid):
    """The `podman image exists` child of docker-dir-exec, once it runs."""
    return next((child for child in children(pid) if argv_of(child)[1:3] == ["image", "exists"]), None)


def test_sigkill_during_the_presence_check_ends_the_check(podman, saved):
    """The hot path's presence check is a child (`podman image exists`); frozen, then its
    parent SIGKILLed, it gets the parent-death signal as process.py's children do, instead
    of staying behind stopped for ever."""
    proc = start_exec("--engine", "podman", saved.one, "true", env=podman.env)
    check = None
    try:
        check = wait_until(lambda: presence_check(proc.pid), 30, "podman image exists", proc, poll=0.0002)
        freeze(check)
        proc.kill()
        proc.wait()
        wait_until(lambda: state_of(check) in (None, "Z"), 10, "the end of the orphaned presence check")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if check is not None and state_of(check) not in (None, "Z"):
            os.kill(check, signal.SIGKILL)
            thaw(check)


# -- the daemon killed during a load (a side dockerd: never the shared one) -------

def test_daemon_killed_during_load(side_daemon, loads):
    """dockerd is frozen while it unpacks the archive (its docker-import-* temp dir exists),
    then SIGKILLed: docker-dir-exec says so in one line, in words, naming the daemon's log
    (not "[Errno 104] Connection reset by peer"); while the daemon is down it says how to
    start it; once the daemon is back, the next exec loads the image whole."""
    load, loading = loads["writing"], DaemonLoad(side_daemon)
    env = side_daemon.env()
    with cold(loading.target, load):
        proc = exec_on(loading.target, load.dir, "echo", "ran")
        try:
            loading.hold(proc)
            side_daemon.kill(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == EXIT_ENGINE_FAILED, err
        assert out == ""
        line = assert_one_line_error(err)
        assert f"the docker daemon closed the connection while loading {load.dir}" in line, line
        assert f"check its log, {side_daemon.log_path}" in line, line  # where the side daemon writes it
        assert lock_is_free(load.image)

        down = run_exec("--network", "none", load.dir, "echo", "ran", env=env, timeout=5)  # a hang guard
        assert down.returncode == EXIT_ENGINE_UNAVAILABLE, down.stderr
        assert "start the daemon" in assert_one_line_error(down.stderr)

        side_daemon.restart()
        again = run_on(loading.target, load.dir, "sha256sum", "/big.bin")
        assert again.returncode == 0, again.stderr
        assert again.stdout.split()[0] == load.big_sha
        assert loading.target.image_id(private_ref(load.image)) == load.image
