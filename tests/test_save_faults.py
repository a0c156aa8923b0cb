"""docker-dir-save under faults: signals at chosen moments, random kills, an engine
dying mid-stream, a full disk, TMPDIR, and --force replacing DIR atomically.

The engine is a real dockerd 20.10: a side daemon (tests/engines.py, shared by this
module) for everything that freezes or kills it, the shared one otherwise. docker-dir-save
streams the export over the daemon's socket (GET /images/get), as users' saves do.
Moments inside a save are reached without hooks in the code: the side daemon is
SIGSTOPped and let run in short steps; while it is frozen docker-dir-save drains the
socket and blocks, so the state of its temp dir can be inspected and the signal sent
exactly there. The daemon's export ends when docker-dir-save's connection closes: its
temp dir data-root/tmp/docker-export-* goes away.

The CLI path stays covered where it differs (DOCKER_HOST names a socket that does not
exist, so docker-dir-save falls back to `docker save`; a wrapper points the real client at
the side daemon, its stream unchanged): there the `docker save` child is what is stopped,
and it must die with docker-dir-save. It alone has the moment "every file extracted, DIR
not yet in place" as a wait (for the child's exit): over the socket, docker-dir-save goes
from the end of the stream straight to its commit, a span no stop signal can land in
reliably, so the commit is watched there by running docker-dir-save in short steps.
One FAKE `docker` (test_engine_dies_mid_stream) cuts the CLI's stream short; the daemon
killed mid-stream is the real thing on the socket path.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plumbum import local

from conftest import BIN, cli, seeded_rng
from engines import side_dockerd_or_skip
from procs import CHILD_WAIT, PIPE_READ, SOCKET_RECV, argv_of, asleep_in, children, freeze, stat_of, thaw

from docker_dir.errors import EXIT_CANT_WRITE, EXIT_ENGINE_FAILED

REAL_DOCKER = shutil.which("docker")
TEMP_MARK = ".docker-dir-save-"
HANG_GUARD = 60


# -- the engine ------------------------------------------------------------------

@pytest.fixture(scope="module")
def side(images):
    """A side dockerd holding the fixture images `one` and `multi`."""
    daemon = side_dockerd_or_skip("20.10", "dockerd 20.10 for docker-dir-save faults")
    try:
        (local["docker"]["save", images.one, images.multi]
         | local["docker"]["load", "-q"].with_env(DOCKER_HOST=daemon.host))(timeout=120)
        yield daemon
    finally:
        daemon.stop()


def exports(daemon):
    """The daemon's exports in progress (dockerd 20.10 builds each in a temp dir first)."""
    return list(Path(daemon.dir, "data", "tmp").glob("docker-export-*"))


def cli_docker(bindir, daemon, body=None, what="Wrapper, not a fake: the real client, pointed at a side daemon."):
    """Make docker-dir-save use the docker CLI: DOCKER_HOST names a socket that does not
    exist, so docker-dir cannot ask the daemon itself; `docker` on PATH is a script that
    points the real client at `daemon`, then runs `body` for a save (default: the real
    client). `what` says in the script what it is. Returns the environment."""
    bindir.mkdir()
    script = bindir / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f"# {what}\n"
        f"export DOCKER_HOST={daemon.host}\n"
        f'[ "$1" = save ] || exec {REAL_DOCKER} "$@"\n'
        + (body or f'exec {REAL_DOCKER} "$@"') + "\n")
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", DOCKER_HOST=f"unix://{bindir}/no-daemon.sock")
    env.pop("DOCKER_CONTEXT", None)
    return env


class ApiSave:
    """The users' path: the export streams over the side daemon's socket. The daemon is
    what is frozen; its export must end once docker-dir-save's connection is closed."""

    receiving = SOCKET_RECV

    def __init__(self, daemon, bindir):
        self.daemon = daemon

    def env(self, moment):
        return self.daemon.env()

    def engine(self, save_pid):
        return self.daemon.pid

    def release(self, engine):
        thaw(engine)  # never killed: the daemon serves the next test

    def engine_went_on(self, engine):
        """After docker-dir-save ended: does the daemon's export go on (for nobody)?"""
        thaw(self.daemon.pid)
        deadline = time.monotonic() + HANG_GUARD
        while exports(self.daemon) and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(exports(self.daemon))


class CliSave:
    """The CLI path: the `docker save` child is what is stopped; it must die with
    docker-dir-save (parent-death signal), as it could otherwise export for nobody.
    At "end" the wrapper runs the real client, then stops itself before it exits, so
    docker-dir-save has the whole stream and waits for the exit: the real client cannot
    be stopped between its last write and its exit (it does both within one time slice)."""

    receiving = PIPE_READ + CHILD_WAIT

    def __init__(self, daemon, bindir):
        self.daemon, self.bindir = daemon, bindir

    def env(self, moment):
        # stdout closed first: docker-dir-save sees the end of the stream, then waits for the exit
        hold_exit = (f'{REAL_DOCKER} "$@"\nstatus=$?\nexec >/dev/null\nkill -STOP $$\nexit $status'
                     if moment == "end" else None)
        return cli_docker(self.bindir, self.daemon, hold_exit,
                          "Wrapper, not a fake: the real client, pointed at a side daemon; its exit held back.")

    def engine(self, save_pid):
        """The child running the client (a fresh fork still shows python's command line)."""
        return next((pid for pid in children(save_pid) if "save" in argv_of(pid)
                     and not any("docker-dir-save" in arg for arg in argv_of(pid))), None)

    def release(self, engine):
        if stat_of(engine):
            os.kill(engine, signal.SIGKILL)
            thaw(engine)

    def engine_went_on(self, engine):
        if engine is None:
            return False  # none started
        deadline = time.monotonic() + HANG_GUARD
        while stat_of(engine) and stat_of(engine)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(stat_of(engine)) and stat_of(engine)[0] != "Z"


PATHS = {"api": ApiSave, "cli": CliSave}


# -- process control ----------------------------------------------------------

def wait_blocked(proc, where):
    """Until docker-dir-save sleeps in `where` (waiting on its engine), or exits."""
    hang_guard = time.monotonic() + HANG_GUARD
    while proc.poll() is None:
        if asleep_in(proc.pid, where):
            return True
        assert time.monotonic() < hang_guard, "docker-dir-save never blocked on its engine"
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
    """A save of `ref` into parent/img over `path` (ApiSave, CliSave), held at one moment:
    - "temp": its temp dir exists, the engine not asked or just asked
      (docker-dir-save itself is stopped);
    - "mid": part of the layers extracted (the engine is stopped, docker-dir-save blocks on it);
    - "end" (CliSave only): every file extracted, DIR not yet in place: docker-dir-save
      waits for the child's exit.
    """

    def __init__(self, moment, path, ref, parent, expected, *options):
        self.moment, self.path, self.parent, self.dir = moment, path, parent, parent / "img"
        self.expected, self.total = expected, sum(expected.values())
        self.engine = None
        self.had_dir = self.dir.exists()
        self.proc = start_save(*options, ref, self.dir, env=path.env(moment))

    def _alive(self):
        assert self.proc.poll() is None, f"the save ended before the moment: {self.proc.communicate()}"

    def reach(self):
        while not temp_dirs(self.parent):
            self._alive()
            time.sleep(0.0005)
        self.temp = self.parent / temp_dirs(self.parent)[0]
        if self.moment == "temp":
            freeze(self.proc.pid)
            return
        while not self.engine:
            self._alive()
            self.engine = self.path.engine(self.proc.pid)
            time.sleep(0.0005)
        if self.moment == "mid":
            self._step_engine(lambda got, done: 0 < done < self.total // 2 and any(
                n.endswith("layer.tar") for n in got))
        else:  # "end": the wrapper stops itself once the client is done
            assert isinstance(self.path, CliSave), "over the socket a save never waits at its end"
            while stat_of(self.engine)[0] not in "TtZX":
                time.sleep(0.001)
            assert wait_blocked(self.proc, CHILD_WAIT), self.proc.communicate()
            # the export is extracted into a staging directory of the temp dir, then moved to blobs/
            (staging,) = [p for p in self.temp.iterdir() if p.name.startswith(".staging-")]
            assert file_sizes(staging) == self.expected
        assert self.dir.exists() == self.had_dir and self.temp.exists()

    def _step_engine(self, arrived):
        """Let the engine run in short steps until what arrived satisfies `arrived`;
        it is left frozen, docker-dir-save blocked on it."""
        freeze(self.engine)
        while True:
            assert wait_blocked(self.proc, self.path.receiving), \
                f"save finished before the moment: {self.proc.communicate()}"
            got = file_sizes(self.temp)
            done = sum(got.values())
            if arrived(got, done):
                return
            thaw(self.engine)
            if done == 0:
                time.sleep(0.002)  # the daemon builds its export before the first byte
            freeze(self.engine)

    def finish(self, signum):
        """Send `signum`, resume docker-dir-save, and return (returncode, stderr).
        Sets engine_went_on: whether the engine's export outlived docker-dir-save."""
        os.kill(self.proc.pid, signum)
        if signum != signal.SIGKILL:
            thaw(self.proc.pid)
        _, err = self.proc.communicate(timeout=120)
        self.engine_went_on = self.path.engine_went_on(self.engine)
        self.release_engine()
        return self.proc.returncode, err

    def release_engine(self):
        if self.engine:
            self.path.release(self.engine)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            thaw(self.proc.pid)
            self.proc.wait()
        self.release_engine()


@pytest.fixture
def pauses(side, tmp_path):
    made = []

    def make(moment, path_name, *args):
        paused = Paused(moment, PATHS[path_name](side, tmp_path.parent / f"{tmp_path.name}-bin"), *args)
        made.append(paused)
        return paused

    yield make
    for paused in made:
        paused.kill()


@pytest.fixture(scope="module")
def multi_files(side, images, tmp_path_factory):
    """The files of the side daemon's export of `multi` (what a save extracts), and their sizes."""
    d = tmp_path_factory.mktemp("multi-export")
    export = subprocess.run(f"docker save {images.multi} | tar -x -C {d}", shell=True, env=side.env(),
                            capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    return file_sizes(d)


@pytest.fixture(scope="module")
def multi_saved(side, images, tmp_path_factory):
    """The files docker-dir-save writes for `multi`, and their sizes."""
    d = tmp_path_factory.mktemp("multi-saved") / "img"
    proc = cli("docker-dir-save", images.multi, d, env=side.env())
    assert proc.returncode == 0, proc.stderr
    return file_sizes(d)


def verify(d, image_id):
    proc = cli("docker-dir-id", "--verify", d)
    assert proc.returncode == 0 and proc.stdout == image_id + "\n", proc.stderr


def one_line(err):
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- signals at chosen moments ------------------------------------------------

# Over the socket, and through the CLI where the engine is a child: stopped mid-stream,
# and waited for at the end.
MOMENTS = [("api", "temp"), ("api", "mid"), ("cli", "mid"), ("cli", "end")]
# One of each for what the path does not change.
COMMIT_MOMENTS = [("api", "temp"), ("api", "mid"), ("cli", "end")]
CATCHABLE = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("path, moment", MOMENTS, ids=["-".join(m) for m in MOMENTS])
@pytest.mark.parametrize("signum", CATCHABLE, ids=lambda s: s.name)
def test_signal_leaves_nothing(images, multi_files, tmp_path, pauses, path, moment, signum):
    save = pauses(moment, path, images.multi, tmp_path, multi_files)
    save.reach()
    code, err = save.finish(signum)
    assert code == 128 + signum, err
    assert "interrupted" in one_line(err)
    assert os.listdir(tmp_path) == [], err
    assert not save.engine_went_on, "the engine's export went on after docker-dir-save stopped"


@pytest.mark.parametrize("path, moment", COMMIT_MOMENTS, ids=["-".join(m) for m in COMMIT_MOMENTS])
def test_sigkill_leftover_is_removed_by_next_run(side, images, multi_files, tmp_path, pauses, path, moment):
    save = pauses(moment, path, images.multi, tmp_path, multi_files)
    save.reach()
    save.finish(signal.SIGKILL)
    assert not save.engine_went_on, "the engine's export went on after docker-dir-save was killed"
    assert temp_dirs(tmp_path) == [save.temp.name] and not save.dir.exists()
    proc = cli("docker-dir-save", images.multi, save.dir, env=side.env())
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == ["img"]
    verify(save.dir, images.multi_id)


@pytest.fixture
def old_dir(side, images, tmp_path):
    d = tmp_path / "img"
    assert cli("docker-dir-save", images.one, d, env=side.env()).returncode == 0
    return d


@pytest.mark.parametrize("path, moment", COMMIT_MOMENTS, ids=["-".join(m) for m in COMMIT_MOMENTS])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_force_keeps_old_content_when_interrupted(side, images, multi_files, tmp_path, old_dir, pauses, path, moment,
                                                  signum):
    save = pauses(moment, path, images.multi, tmp_path, multi_files, "--force")
    save.reach()
    verify(old_dir, images.one_id)
    save.finish(signum)
    verify(old_dir, images.one_id)
    assert cli("docker-dir-save", "--force", images.multi, old_dir, env=side.env()).returncode == 0
    assert os.listdir(tmp_path) == ["img"]


def test_force_replaces_only_once_new_content_is_complete(images, multi_files, multi_saved, tmp_path, old_dir,
                                                          pauses):
    """DIR is watched at every step of the rest of the save, the commit included: it is
    always one whole tree, old or new."""
    save = pauses("mid", "api", images.multi, tmp_path, multi_files, "--force")
    old_inode, old_files = old_dir.stat().st_ino, file_sizes(old_dir)
    save.reach()
    verify(old_dir, images.one_id)
    new_inode = save.temp.stat().st_ino
    freeze(save.proc.pid)
    save.release_engine()  # the daemon sends the rest; docker-dir-save goes on only in the short runs below
    seen = []
    while save.proc.poll() is None:
        state = "old" if file_sizes(old_dir) == old_files else "new" if file_sizes(old_dir) == multi_saved else None
        assert state, f"DIR is neither the old nor the new tree after {seen}: {sorted(os.listdir(old_dir))}"
        if not seen or seen[-1] != state:
            seen.append(state)
        thaw(save.proc.pid)
        freeze(save.proc.pid)
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


@pytest.mark.parametrize("path", ["api", "cli"])
def test_engine_export_ends_with_a_killed_docker_dir_save(side, images, multi_files, tmp_path, pauses, path):
    """kill -9 of docker-dir-save mid-stream, its engine frozen so it could neither finish
    nor notice on its own: over the socket the daemon's export ends once the kernel closes
    the connection (more is left to send than the socket holds, so nothing else ends it);
    the CLI's `docker save` child dies by the parent-death signal (it once went on
    exporting for nobody for seconds)."""
    save = pauses("mid", path, images.multi, tmp_path, multi_files)
    save.reach()
    assert exports(side), "no export in progress in the daemon"
    save.finish(signal.SIGKILL)
    assert not save.engine_went_on, f"the engine's export outlived docker-dir-save by {HANG_GUARD} s"


# -- random kills (issue 7) ---------------------------------------------------

def test_random_sigkills_leave_dir_absent_or_complete(side, images, tmp_path):
    d = tmp_path / "img"
    env = side.env()
    started = time.monotonic()
    assert cli("docker-dir-save", images.multi, tmp_path / "timing", env=env).returncode == 0
    full = time.monotonic() - started
    shutil.rmtree(tmp_path / "timing")
    rng, seed = seeded_rng()
    seen_complete = False
    outcomes = {"finished": 0, "killed mid-save": 0, "killed before its temp dir": 0}
    for _ in range(20):
        earlier = set(temp_dirs(tmp_path))
        proc = start_save("--force", "-q", images.multi, d, env=env)
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
    final = cli("docker-dir-save", "--force", images.multi, d, env=env)
    assert final.returncode == 0, final.stderr
    verify(d, images.multi_id)
    assert os.listdir(tmp_path) == ["img"], outcomes
    assert_exports_end(side, seed)
    print("random kills:", outcomes)


def assert_exports_end(daemon, seed):
    """Every export of the killed or interrupted saves ends with its connection."""
    deadline = time.monotonic() + HANG_GUARD
    while exports(daemon):
        assert time.monotonic() < deadline, f"an export outlived its docker-dir-save (seed {seed})"
        time.sleep(0.01)


@pytest.mark.parametrize("signum", CATCHABLE, ids=lambda s: s.name)
def test_random_signals_leave_no_temp_dir(side, images, tmp_path, signum):
    d = tmp_path / "img"
    rng, seed = seeded_rng()
    for _ in range(4):
        proc = start_save("--force", images.multi, d, env=side.env())
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
    assert_exports_end(side, seed)


# -- the engine dies mid-stream -------------------------------------------------

def cutting_docker(bindir, daemon, cut_bytes, ending):
    """FAKE `docker` (on the CLI path, see cli_docker): the real client, its save stream cut
    after `cut_bytes`, then `ending`."""
    return cli_docker(bindir, daemon, f'{REAL_DOCKER} "$@" | head -c {cut_bytes}\n{ending}',
                      what="FAKE docker: the real one, whose save stream is cut short as when the engine dies.")


@pytest.mark.parametrize("ending, message", [
    ("echo 'Error response from daemon: unexpected EOF' >&2; exit 1", "unexpected EOF"),
    ("kill -KILL $$", "docker"),
    ("exit 0", "malformed archive"),
], ids=["engine-error", "engine-killed", "silent-truncation"])
def test_engine_dies_mid_stream(side, images, tmp_path, ending, message):
    env = cutting_docker(tmp_path / "bin", side, 3 << 20, ending)
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("docker-dir-save", "--engine", "docker", images.multi, work / "img", env=env)
    assert proc.returncode == EXIT_ENGINE_FAILED, proc.stderr
    assert message in one_line(proc.stderr)
    assert os.listdir(work) == []


def test_daemon_killed_mid_stream(side, images, multi_files, tmp_path, pauses):
    """The socket path's engine death, for real: the side daemon, frozen mid-export, is
    SIGKILLed. docker-dir-save says in one line that the stream is cut (the end of an
    HTTP/1.0 body is the daemon closing, so this is a truncated archive) and writes
    nothing; the daemon is started again (on its data) for the tests after."""
    work = tmp_path / "work"
    work.mkdir()
    save = pauses("mid", "api", images.multi, work, multi_files)
    save.reach()
    try:
        side.kill(signal.SIGKILL)
        save.engine = None  # gone: nothing to resume
        _, err = save.proc.communicate(timeout=60)
    finally:
        side.restart()
    assert save.proc.returncode == EXIT_ENGINE_FAILED, err
    assert "malformed archive" in one_line(err)
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
    freeze(proc.pid)  # so the signal surely comes before the save is done
    proc.send_signal(signal.SIGTERM)
    thaw(proc.pid)
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
sys.exit(run("docker-dir-save", lambda argv: argv, lambda args: save.save([save.EngineImage({ref!r})], {dir!r}, engine) and 0))
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
