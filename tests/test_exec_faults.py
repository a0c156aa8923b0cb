"""docker-dir-exec when things go wrong around it: many cold starts at once, the image
removed while execs start, the daemon killed during a load or not running, no engine
binary, SIGINT/SIGTERM/SIGHUP (and a terminal hangup) while the command runs, and
signals or SIGKILL while the image loads or while an exec waits for another's load.

All against real engines: the shared dockerd for what leaves it intact, a side dockerd
(own network namespace, tests/engines.py) for what kills or freezes a daemon.
"""
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

import pytest
from plumbum import local

from conftest import BIN, count_events, docker, image_id_of, import_image, private_ref, raw_save
from engines import Unavailable, side_dockerd
from procs import argv_of, children, state_of, wchan

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


def wait_until(predicate, timeout, what, proc=None):
    """Poll `predicate` until it returns something true; fail early if `proc` exits."""
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
        time.sleep(0.002)


def containers(label, env=None):
    proc = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label={label}"], capture_output=True,
                          text=True, env=env, check=True)
    return proc.stdout.split()


def reaped(pid):
    """(wait status,) once child `pid` has ended, else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return (status,) if done else None


WRITING_TO_PIPE = ("pipe_write", "anon_pipe_write")  # older, newer kernels
WAITING_FOR_CHILD = ("do_wait",)


def load_child(pid):
    """The `<engine> load` process docker-dir-exec started, once it runs the engine binary."""
    for child in children(pid):
        if argv_of(child)[1:2] == ["load"]:
            return child
    return None


def lock_is_free(image_id):
    path = os.path.join(runtime_dir(), f"load-{image_id.split(':')[-1]}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_while_waiting_for_another_load(cold_dir, signum):
    """An exec waiting for the load lock goes at once on a signal; the loading one goes on."""
    directory, image = cold_dir()
    first = start_exec(directory, "echo", "first")
    loader = wait_until(lambda: load_child(first.pid), 60, "docker load process", first)
    os.kill(loader, signal.SIGSTOP)  # the load, and the lock with it, stays held
    try:
        second = start_exec(directory, "echo", "second")
        assert second.stderr.readline().startswith(INFO_PREFIX)
        second.send_signal(signum)
        out, err = second.communicate(timeout=15)
        assert second.returncode == 128 + signum, err
        assert out == ""
        assert assert_one_line_error(err).startswith("docker-dir-exec: interrupted")
    finally:
        os.kill(loader, signal.SIGCONT)
        out, err = first.communicate(timeout=120)
    assert (first.returncode, out) == (0, "first\n"), err


@pytest.fixture
def tiny_dir(rootfs, tmp_path):
    """A cold image whose whole load stream fits in a pipe buffer: one small file.
    It has no shell; commands run the host's static busybox mounted into it."""
    files = tmp_path / "tiny-root"
    files.mkdir()
    (files / "hello").write_text("hello\n")
    image = (local["tar"]["-C", str(files), "-c", "."]
             | local["docker"]["import", "-c", f"LABEL docker-dir-test={uuid.uuid4().hex}", "-"])().strip()
    try:
        directory = raw_save(image, tmp_path / "tiny")
    finally:
        docker("rmi", "-f", image)
    yield directory, image
    docker("rmi", "-f", private_ref(image), check=False)
    docker("rmi", "-f", image, check=False)


BUSYBOX = "/bin/busybox"


@pytest.mark.parametrize("phase", ["writing", "waiting"])
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_signal_during_load(cold_dir, tiny_dir, phase, signum):
    """A signal while the image loads: the engine's load process goes too, no container
    starts, the lock is free, and the next exec loads and runs.

    The `docker load` child is stopped (SIGSTOP) so the load stays in progress: while
    docker-dir-exec writes the stream (an image larger than the pipe buffer), or after
    it wrote all of it and waits for the engine (a tiny image)."""
    directory, image = cold_dir() if phase == "writing" else tiny_dir
    label = f"docker-dir-test-signal={uuid.uuid4().hex}"
    mount = [] if phase == "writing" else [f"--volume={BUSYBOX}:{BUSYBOX}:ro"]
    command = ["sleep", "300"] if phase == "writing" else [BUSYBOX, "sleep", "300"]
    proc = start_exec(f"--engine-arg=--label={label}", *mount, directory, *command)
    loader = None
    try:
        loader = wait_until(lambda: load_child(proc.pid), 60, "docker load process", proc)
        os.kill(loader, signal.SIGSTOP)
        state = wait_until(lambda: state_of(loader) in ("T", "Z", None) and str(state_of(loader)), 10,
                           "stopped docker load")
        assert state == "T", "docker load finished before it could be stopped"
        where = WRITING_TO_PIPE if phase == "writing" else WAITING_FOR_CHILD
        wait_until(lambda: wchan(proc.pid) in where, 30, f"docker-dir-exec in {where}", proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 128 + signum, err
        assert assert_one_line_error(err).startswith("docker-dir-exec: interrupted")
        assert state_of(loader) is None, "the engine's load process was left behind"
        assert not containers(label)
        assert lock_is_free(image)
    finally:
        proc.kill()
        proc.wait()
        if loader and state_of(loader) not in (None, "Z"):
            os.kill(loader, signal.SIGKILL)
    again = run_exec(*mount, directory, *(["echo"] if phase == "writing" else [BUSYBOX, "echo"]), "again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr


# -- the daemon killed during a load (a side dockerd: never the shared one) -------

@pytest.fixture(scope="module")
def side_daemon():
    try:
        daemon = side_dockerd("20.10", "dockerd 20.10 for docker-dir-exec faults")
    except Unavailable as why:
        pytest.skip(str(why))
    yield daemon
    daemon.stop()


@pytest.fixture
def big_dir(rootfs, tmp_path):
    """A cold image with a 64 MB layer, so a load lasts long enough to be caught in the daemon.
    Returns (dir, image ID, sha256 of the big file)."""
    root = tmp_path / "big-root"
    shutil.copytree(rootfs, root, symlinks=True)
    data = os.urandom(64 << 20)
    (root / "big.bin").write_bytes(data)
    image = import_image(root, None, label=uuid.uuid4().hex)
    try:
        directory = raw_save(image, tmp_path / "big")
    finally:
        docker("rmi", "-f", image)
    return directory, image, hashlib.sha256(data).hexdigest()


def restart(daemon, launch):
    """Start a killed side daemon again on the same data-root, as a service manager would.
    Its old containerd goes first: left in the old mount namespace, it could not see
    the new daemon's container mounts."""
    left = daemon._own_pids()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    daemon.process.wait(timeout=30)
    wait_until(lambda: all(state_of(pid) in (None, "Z") for pid in left), 30, "end of the old containerd")
    # A dead containerd that nobody reaped yet still "exists" for dockerd, which would
    # wait for its socket instead of starting a new one.
    pidfile = Path(launch[launch.index("--exec-root") + 1], "containerd", "containerd.pid")
    if pidfile.exists() and state_of(int(pidfile.read_text())) in (None, "Z"):
        pidfile.unlink()
    with open(daemon.log_path, "ab") as log:
        daemon.process = subprocess.Popen(launch, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
    daemon._wait_ready(90)


def test_daemon_killed_during_load(side_daemon, big_dir):
    """dockerd is frozen while it unpacks the archive (its docker-import-* temp dir exists),
    then SIGKILLed: docker-dir-exec says so in one line; while the daemon is down it says
    how to start it; once the daemon is back, the next exec loads the image whole."""
    directory, image, big_sha = big_dir
    env = side_daemon.env()
    launch = argv_of(side_daemon.process.pid)
    unpacking = Path(side_daemon.dir, "data", "tmp")
    proc = start_exec("--network", "none", directory, "echo", "ran", env=env)
    try:
        wait_until(lambda: list(unpacking.glob("docker-import-*")), 60, "load in the daemon", proc)
        side_daemon.kill(signal.SIGSTOP)
        assert list(unpacking.glob("docker-import-*")), "the load finished before the daemon could be stopped"
        side_daemon.kill(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode in (EXIT_ENGINE_UNAVAILABLE, EXIT_ENGINE_FAILED), err
    assert out == ""
    assert_one_line_error(err)
    assert lock_is_free(image)

    down = run_exec("--network", "none", directory, "echo", "ran", env=env, timeout=5)  # a hang guard
    assert down.returncode == EXIT_ENGINE_UNAVAILABLE, down.stderr
    assert "start the daemon" in assert_one_line_error(down.stderr)

    restart(side_daemon, launch)
    again = run_exec("--network", "none", directory, "sha256sum", "/big.bin", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[0] == big_sha
    assert side_daemon.docker("image", "inspect", "--format", "{{.Id}}", private_ref(image)).stdout.strip() == image


def test_sigkill_during_load(cold_dir):
    """SIGKILL cannot be handled: the engine's load dies with docker-dir-exec (it would
    otherwise import for nobody), the kernel drops the lock, and the next exec loads."""
    directory, image = cold_dir()
    proc = start_exec(directory, "echo", "ran")
    loader = wait_until(lambda: load_child(proc.pid), 60, "docker load process", proc)
    os.kill(loader, signal.SIGSTOP)  # it can neither finish nor notice the closed pipe
    try:
        wait_until(lambda: wchan(proc.pid) in WRITING_TO_PIPE, 30, "docker-dir-exec writing", proc)
        proc.kill()
        proc.wait()
        wait_until(lambda: state_of(loader) in (None, "Z"), 2, "end of the docker load child (parent-death signal)")
        assert lock_is_free(image)
    finally:
        try:
            os.kill(loader, signal.SIGCONT)
        except ProcessLookupError:
            pass
    again = run_exec(directory, "echo", "again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr
