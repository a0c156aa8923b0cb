"""docker-dir-save under faults: signals at chosen moments, random kills, an engine
dying mid-stream, a full disk, TMPDIR, and --force replacing DIR atomically.

The engine is the real dockerd. Moments inside a save are reached without hooks
in the code: the real `docker save` client (the child of docker-dir-save) is
SIGSTOPped and let run in short steps; while it is stopped docker-dir-save
drains the pipe and blocks, so the state of its temp dir can be inspected and
the signal sent exactly there. Two wrappers around the real client stand in for
`docker` on PATH: one only holds back its exit after a complete, unchanged stream
(to reach "all extracted, not yet renamed", see Paused); the one fake
(test_engine_dies_mid_stream) cuts the stream short: a truncated stream is what
a real engine produces when it dies, which the shared daemon must not be made to do.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import BIN, cli, seeded_rng
from procs import argv_of, children, stat_of, wchan

from docker_dir.errors import EXIT_CANT_WRITE, EXIT_ENGINE_FAILED

REAL_DOCKER = shutil.which("docker")
TEMP_MARK = ".docker-dir-save-"


# -- process control ----------------------------------------------------------

def is_docker_save(pid):
    """The engine child, once exec'd (a fresh fork still shows python's command line)."""
    argv = argv_of(pid)
    return "save" in argv and not any("docker-dir-save" in arg for arg in argv)


def stop(pid):
    """SIGSTOP and wait until the process is really stopped (or gone)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    while True:
        st = stat_of(pid)
        if st is None or st[0] in "TtZX":
            return
        time.sleep(0.0002)


def cont(pid):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def wait_blocked(proc):
    """Until docker-dir-save waits on its engine (pipe read or child exit), or exits."""
    hang_guard = time.monotonic() + 60
    while proc.poll() is None:
        assert time.monotonic() < hang_guard, f"docker-dir-save never blocked: {wchan(proc.pid)}"
        where = wchan(proc.pid)
        if stat_of(proc.pid)[0] == "S" and ("pipe_read" in where or where in ("pipe_wait", "do_wait")):
            return True
        time.sleep(0.0005)
    return False


def temp_dirs(parent):
    return sorted(p for p in os.listdir(parent) if TEMP_MARK in p)


def file_sizes(root):
    """relpath -> size of every regular file under root (symlinks count as 0)."""
    sizes = {}
    for base, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            sizes[os.path.relpath(path, root)] = st.st_size if not os.path.islink(path) else 0
    return sizes


def start_save(*args, env=None):
    return subprocess.Popen([sys.executable, str(BIN / "docker-dir-save"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


class Paused:
    """A save of `ref` into parent/img, held at one moment:
    - "temp": its temp dir exists, the engine not started or just starting
      (docker-dir-save itself is stopped);
    - "mid": part of the layers extracted (the real `docker save` is stopped, save blocks on it);
    - "end": every file extracted, DIR not yet in place: save waits for the engine to exit.
      The real client cannot be stopped between its last write and its exit (it does both
      within one scheduler slice), so here `docker` is a wrapper that runs the real
      `docker save` and then stops itself before exiting. It alters nothing in the stream.
    """

    def __init__(self, moment, ref, parent, expected, *options):
        self.moment, self.parent, self.dir = moment, parent, parent / "img"
        self.expected = expected
        self.engine = None
        self.had_dir = self.dir.exists()
        env = None
        if moment == "end":
            env = exit_holding_docker(parent.parent / f"{parent.name}-bin")
        self.proc = start_save(*options, ref, self.dir, env=env)

    def reach(self):
        while not temp_dirs(self.parent):
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.0005)
        self.temp = self.parent / temp_dirs(self.parent)[0]
        if self.moment == "temp":
            stop(self.proc.pid)
            return
        while not self.engine:
            assert self.proc.poll() is None, self.proc.communicate()
            self.engine = next((c for c in children(self.proc.pid) if is_docker_save(c)), None)
            time.sleep(0.0005)
        if self.moment == "end":
            while stat_of(self.engine)[0] not in "TtZX":
                time.sleep(0.001)
            # the whole stream is in; save waits for the engine's EOF and exit
            assert wait_blocked(self.proc), self.proc.communicate()
            assert sum(file_sizes(self.temp).values()) > sum(self.expected.values()) // 2
            assert self.dir.exists() == self.had_dir
            return
        stop(self.engine)
        total = sum(self.expected.values())
        while True:
            assert wait_blocked(self.proc), f"save finished before the moment: {self.proc.communicate()}"
            got = file_sizes(self.temp)
            done = sum(got.values())
            if 0 < done < total // 2 and any(n.endswith("layer.tar") for n in got):
                return
            cont(self.engine)
            if done == 0:
                time.sleep(0.002)
            stop(self.engine)

    def finish(self, signum=None):
        """Send `signum` (None: just let it run), resume, and return (returncode, stderr)."""
        if signum is not None:
            os.kill(self.proc.pid, signum)
        if signum != signal.SIGKILL:
            cont(self.proc.pid)
            if self.engine and signum is None:
                cont(self.engine)
        out, err = self.proc.communicate(timeout=120)
        self.engine_left = bool(self.engine and stat_of(self.engine))
        self.release_engine()
        return self.proc.returncode, err

    def release_engine(self):
        if self.engine and stat_of(self.engine):
            os.kill(self.engine, signal.SIGKILL)
            cont(self.engine)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            cont(self.proc.pid)
            self.proc.wait()
        self.release_engine()


def exit_holding_docker(bindir):
    bindir.mkdir()
    script = bindir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        "# Wrapper, not a fake: the real client's stream unchanged; only its exit is held back.\n"
        f'[ "$1" = save ] || exec {REAL_DOCKER} "$@"\n'
        f'{REAL_DOCKER} "$@"\n'
        "status=$?\n"
        "kill -STOP $$\n"
        "exit $status\n")
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


@pytest.fixture
def pauses():
    made = []

    def make(*args):
        paused = Paused(*args)
        made.append(paused)
        return paused

    yield make
    for paused in made:
        paused.kill()


@pytest.fixture(scope="module")
def multi_files(saved):
    return file_sizes(saved.multi)


def verify(d, image_id):
    proc = cli("docker-dir-id", "--verify", d)
    assert proc.returncode == 0 and proc.stdout == image_id + "\n", proc.stderr


def one_line(err):
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- signals at chosen moments ------------------------------------------------

MOMENTS = ["temp", "mid", "end"]
CATCHABLE = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signum", CATCHABLE, ids=lambda s: s.name)
def test_signal_leaves_nothing(images, multi_files, tmp_path, pauses, moment, signum):
    save = pauses(moment, images.multi, tmp_path, multi_files)
    save.reach()
    code, err = save.finish(signum)
    assert code == 128 + signum, err
    assert "interrupted" in one_line(err)
    assert os.listdir(tmp_path) == [], err
    if moment == "mid":
        assert not save.engine_left, "the engine's save went on after docker-dir-save stopped"


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_leftover_is_removed_by_next_run(images, multi_files, tmp_path, pauses, moment):
    save = pauses(moment, images.multi, tmp_path, multi_files)
    save.reach()
    save.finish(signal.SIGKILL)
    assert temp_dirs(tmp_path) == [save.temp.name] and not save.dir.exists()
    proc = cli("docker-dir-save", images.multi, save.dir)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == ["img"]
    verify(save.dir, images.multi_id)


@pytest.fixture
def old_dir(images, tmp_path):
    d = tmp_path / "img"
    assert cli("docker-dir-save", images.one, d).returncode == 0
    return d


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_force_keeps_old_content_when_interrupted(images, multi_files, tmp_path, old_dir, pauses, moment, signum):
    save = pauses(moment, images.multi, tmp_path, multi_files, "--force")
    save.reach()
    verify(old_dir, images.one_id)
    save.finish(signum)
    verify(old_dir, images.one_id)
    assert cli("docker-dir-save", "--force", images.multi, old_dir).returncode == 0
    assert os.listdir(tmp_path) == ["img"]


def test_force_replaces_only_once_new_content_is_complete(images, multi_files, tmp_path, old_dir, pauses):
    """DIR is watched at every step of the commit: it is always one whole tree, old or new."""
    save = pauses("end", images.multi, tmp_path, multi_files, "--force")
    old_inode, old_files = old_dir.stat().st_ino, file_sizes(old_dir)
    save.reach()
    verify(old_dir, images.one_id)
    new_inode = save.temp.stat().st_ino
    stop(save.proc.pid)
    cont(save.engine)  # the engine exits; docker-dir-save goes on only in the short runs below
    seen = []
    while save.proc.poll() is None:
        state = "old" if file_sizes(old_dir) == old_files else "new" if file_sizes(old_dir) == multi_files else None
        assert state, f"DIR is neither the old nor the new tree after {seen}: {sorted(os.listdir(old_dir))}"
        if not seen or seen[-1] != state:
            seen.append(state)
        cont(save.proc.pid)
        stop(save.proc.pid)
    assert save.proc.returncode == 0, save.proc.communicate()
    assert seen[0] == "old"
    verify(old_dir, images.multi_id)
    # the prepared tree itself took DIR's place (a rename, not a copy), the old one is gone
    assert old_dir.stat().st_ino == new_inode != old_inode
    assert os.listdir(tmp_path) == ["img"]


def test_rename_exchange_swaps_whole_trees(tmp_path):
    from docker_dir.fs import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y").write_text("b")
    assert exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert os.listdir(tmp_path / "a") == ["y"] and os.listdir(tmp_path / "b") == ["x"]


def test_engine_save_dies_with_a_killed_docker_dir_save(images, tmp_path):
    """kill -9 of docker-dir-save left its `docker save` exporting for nobody for up to
    3.7 s; it has the parent-death signal now."""
    proc = start_save(images.multi, tmp_path / "img")
    deadline = time.monotonic() + 60
    engine = None
    while engine is None and time.monotonic() < deadline and proc.poll() is None:
        engine = next((c for c in children(proc.pid) if is_docker_save(c)), None)
        time.sleep(0.001)
    assert engine is not None, "no docker save child seen"
    stop(engine)  # it can neither finish nor notice the closed pipe
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 2
    while stat_of(engine) and stat_of(engine)[0] != "Z":
        assert time.monotonic() < deadline, "docker save outlived docker-dir-save by 2 s"
        time.sleep(0.01)


# -- random kills (issue 7) ---------------------------------------------------

def test_random_sigkills_leave_dir_absent_or_complete(images, tmp_path):
    d = tmp_path / "img"
    started = time.monotonic()
    assert cli("docker-dir-save", images.multi, tmp_path / "timing").returncode == 0
    full = time.monotonic() - started
    shutil.rmtree(tmp_path / "timing")
    rng, seed = seeded_rng()
    seen_complete = False
    outcomes = {"finished": 0, "killed mid-save": 0, "killed before its temp dir": 0}
    for _ in range(20):
        earlier = set(temp_dirs(tmp_path))
        proc = start_save("--force", "-q", images.multi, d)
        time.sleep(rng.uniform(0, full))
        proc.kill()
        proc.communicate()
        leftovers = temp_dirs(tmp_path)
        outcomes["finished" if proc.returncode == 0 else "killed mid-save" if set(leftovers) - earlier
                 else "killed before its temp dir"] += 1
        if d.exists():
            verify(d, images.multi_id)
            seen_complete = True
        else:
            assert not seen_complete, f"once complete, DIR is only ever swapped, never removed (seed {seed})"
        assert len(leftovers) <= 2, f"seed {seed}"  # this run's, and the old tree of a swap
    assert outcomes["killed mid-save"], (outcomes, seed)
    final = cli("docker-dir-save", "--force", images.multi, d)
    assert final.returncode == 0, final.stderr
    verify(d, images.multi_id)
    assert os.listdir(tmp_path) == ["img"], outcomes
    print("random kills:", outcomes)


@pytest.mark.parametrize("signum", CATCHABLE, ids=lambda s: s.name)
def test_random_signals_leave_no_temp_dir(images, tmp_path, signum):
    d = tmp_path / "img"
    rng, seed = seeded_rng()
    for _ in range(4):
        proc = start_save("--force", images.multi, d)
        while proc.poll() is None and not temp_dirs(tmp_path):
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signum)
        _, err = proc.communicate()
        # -signum: it came while Python shut down after a complete save (handlers reset then)
        assert proc.returncode in (0, 128 + signum, -signum), (err, seed)
        assert temp_dirs(tmp_path) == [], f"seed {seed}"
        if d.exists():
            verify(d, images.multi_id)


# -- the engine dies mid-stream -------------------------------------------------

def cutting_docker(bindir, cut_bytes, ending):
    """FAKE `docker`: the real client, its save stream cut after `cut_bytes`, then `ending`."""
    bindir.mkdir()
    script = bindir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        "# FAKE docker: the real one, whose save stream is cut short as when the engine dies.\n"
        f'[ "$1" = save ] || exec {REAL_DOCKER} "$@"\n'
        f'{REAL_DOCKER} "$@" | head -c {cut_bytes}\n'
        f"{ending}\n")
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


@pytest.mark.parametrize("ending, message", [
    ("echo 'Error response from daemon: unexpected EOF' >&2; exit 1", "unexpected EOF"),
    ("kill -KILL $$", "docker"),
    ("exit 0", "malformed archive"),
], ids=["engine-error", "engine-killed", "silent-truncation"])
def test_engine_dies_mid_stream(images, tmp_path, ending, message):
    env = cutting_docker(tmp_path / "bin", 3 << 20, ending)
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("docker-dir-save", "--engine", "docker", images.multi, work / "img", env=env)
    assert proc.returncode == EXIT_ENGINE_FAILED, proc.stderr
    assert message in one_line(proc.stderr)
    assert os.listdir(work) == []


# -- full disk and TMPDIR -------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs: the multi image (~8 MB) does not fit, the one-layer image (~2 MB) does."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def empty_tmpdir(tmp_path):
    d = tmp_path / "tmpdir"
    d.mkdir()
    return d


def test_full_disk(images, small_fs, empty_tmpdir):
    env = dict(os.environ, TMPDIR=str(empty_tmpdir))
    proc = cli("docker-dir-save", images.multi, small_fs / "img", env=env)
    assert proc.returncode == EXIT_CANT_WRITE, proc.stderr
    assert "no space" in one_line(proc.stderr)
    assert os.listdir(small_fs) == []
    assert os.listdir(empty_tmpdir) == []


def test_full_disk_with_force_keeps_old_content(images, small_fs, empty_tmpdir):
    env = dict(os.environ, TMPDIR=str(empty_tmpdir))
    d = small_fs / "img"
    assert cli("docker-dir-save", images.one, d, env=env).returncode == 0
    proc = cli("docker-dir-save", "--force", images.multi, d, env=env)
    assert proc.returncode == EXIT_CANT_WRITE, proc.stderr
    assert "no space" in one_line(proc.stderr)
    verify(d, images.one_id)
    assert os.listdir(small_fs) == ["img"]
    assert os.listdir(empty_tmpdir) == []


def test_tmpdir_untouched_by_success_and_failure(images, tmp_path, empty_tmpdir):
    env = dict(os.environ, TMPDIR=str(empty_tmpdir))
    assert cli("docker-dir-save", images.multi, tmp_path / "img", env=env).returncode == 0
    assert os.listdir(empty_tmpdir) == []
    proc = start_save(images.multi, tmp_path / "img2", env=env)
    while not temp_dirs(tmp_path):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.0005)
    stop(proc.pid)  # so the signal surely comes before the save is done
    proc.send_signal(signal.SIGTERM)
    cont(proc.pid)
    proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert os.listdir(empty_tmpdir) == []
    assert not (tmp_path / "img2").exists()


DROPPED_SIGNAL = """
import os, signal, sys
sys.path.insert(0, {lib!r})
from docker_dir.application import save
from docker_dir.cli.common import run, trap_signals
from docker_dir.engine import get_engine


class SignalInDel:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # its exception is raised here, where Python drops it


engine = get_engine("docker")
real_save = engine.save


def save_with_a_dropped_signal(refs):
    stream = real_save(refs)
    SignalInDel()
    return stream


engine.save = save_with_a_dropped_signal
trap_signals()
sys.exit(run("docker-dir-save", lambda argv: argv, lambda args: save.save(engine, [{ref!r}], {dir!r}) and 0))
"""


def test_signal_whose_exception_python_drops_still_stops_the_save(images, tmp_path):
    """Seen for real: a SIGHUP landing in an import's module-lock callback was printed as
    'Exception ignored' and the save went on to exit 0. Here the signal lands in a __del__."""
    from conftest import REPO

    d = tmp_path / "img"
    script = DROPPED_SIGNAL.format(lib=str(REPO / "lib"), ref=images.one, dir=str(d))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "interrupted by SIGTERM" in one_line(proc.stderr)
    assert os.listdir(tmp_path) == []
