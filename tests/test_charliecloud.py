"""The charliecloud engine (ch-run 0.31): images unpacked into a node-local cache, run
unprivileged.

docker-dir-exec runs as the test user ddrootless (tests/hosts.py), from the venv the
users can read, with nothing else to fall back on: DOCKER_HOST points at no daemon and
PATH holds ch-run only. Image directories belong to root (read-only to the user).

Oracles: `docker export` of a container of the same image for the unpacked tree (the
comparison helpers of test_unpack.py), and docker-dir-exec --engine docker on the main
daemon for what a command sees (argv, environment, working directory).
Unpacks are counted with inotify on the cache directory: each one makes a
`.<hex>.unpacking-*` directory.
"""
import ctypes
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import BIN, cli, docker, image_id_of, one_line_error, private_ref, raw_save
from hosts import (ROOTLESS, charliecloud, or_skip, remove_tree, run_as, sbatch, slurm_cluster, user_dir, user_info,
                   user_venv)
from layouts import write_layout
from test_unpack import ORACLE_DOCKERFILE, SPECIALS, assert_same_as_export, exported

from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CANT_WRITE, EXIT_ENGINE_FAILED, EXIT_ENGINE_UNAVAILABLE,
                               EXIT_NOT_LOADED, EXIT_USAGE)

USER = ROOTLESS
NO_DAEMON = "unix:///nonexistent/docker.sock"
# What the engine adds to a tree when the image lacks it (ch-run's mount points and files).
ADDED = ("dev", "proc", "sys", "tmp", "home", "mnt", "etc/passwd", "etc/group", "ch/environment", "ch", "etc")
RUNTIME_DOCKERFILE = r"""FROM scratch
COPY rootfs/ /
ENV PATH=/bin FOO=img GONE=img QUOTED="it's \"q\"" DOLLAR=\$PATH:/x SPACES="a  b" EQ=a=b
RUN mkdir -p /opt/real /work && ln -s /opt/real /abs-link && ln -s ../../../../../../var/dd-escape /esc && \
    ln -s loop-b /loop-a && ln -s loop-a /loop-b
WORKDIR /work
ENTRYPOINT ["echo", "ep"]
CMD ["c1", "c2"]
"""


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ch_run():
    return or_skip(charliecloud)


@pytest.fixture(scope="module")
def venv():
    return or_skip(user_venv)


@pytest.fixture(scope="module")
def shared(ch_run):
    """A root-owned directory the user may read but not write: image dirs go there."""
    top = Path(tempfile.mkdtemp(prefix="docker-dir-ch-", dir="/var/tmp"))
    top.chmod(0o755)
    # PATH for the user: ch-run and nothing else but setpriv, which run_as starts the user's command with
    for name, programs in (("bin", (ch_run, shutil.which("setpriv"))), ("no-ch-run", (shutil.which("setpriv"),))):
        (top / name).mkdir()
        for program in programs:
            os.symlink(program, top / name / os.path.basename(program))
    yield top
    shutil.rmtree(top)


def build(rootfs, shared, dockerfile, name, extra=None):
    """Build an image offline (legacy builder), save it under `shared`; returns (ref, dir, config hex)."""
    ref = f"docker-dir-ch/{name}-{uuid.uuid4().hex[:8]}:1"
    context = Path(tempfile.mkdtemp(dir=shared))
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    for path, data in (extra or {}).items():
        (context / path).write_bytes(data)
    (context / "Dockerfile").write_text(dockerfile)
    docker("build", "-q", "-t", ref, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    shutil.rmtree(context)
    directory = raw_save(ref, shared / name)
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    return ref, directory, image_id_of(ref).split(":")[1]


@pytest.fixture(scope="module")
def oracle(docker_engine, rootfs, shared):
    """test_unpack's oracle image (deletions, opaque dirs, hardlinks, symlinks, modes): saved
    dir, config hex, and its docker export."""
    ref, directory, hex_id = build(rootfs, shared, ORACLE_DOCKERFILE, "oracle")
    try:
        yield SimpleNamespace(ref=ref, dir=directory, hex=hex_id, export=exported(ref))
    finally:
        docker("rmi", "-f", ref, check=False)


@pytest.fixture(scope="module")
def runtime(docker_engine, rootfs, shared):
    """An image with Env, Entrypoint, Cmd, WorkingDir and symlinks to mount through."""
    ref, directory, hex_id = build(rootfs, shared, RUNTIME_DOCKERFILE, "runtime")
    docker("rmi", "-f", ref)
    yield SimpleNamespace(dir=directory, hex=hex_id)
    docker("rmi", "-f", private_ref(hex_id), check=False)


@pytest.fixture(scope="module")
def big(docker_engine, rootfs, shared):
    """An image with a 96 MiB layer: an unpack long enough to interrupt."""
    ref, directory, hex_id = build(rootfs, shared, "FROM scratch\nCOPY rootfs/ /\nCOPY big.bin /big.bin\n"
                                                   'ENV PATH=/bin\nCMD ["sh"]\n', "big",
                                   {"big.bin": os.urandom(96 << 20)})
    docker("rmi", "-f", ref)
    return SimpleNamespace(dir=directory, hex=hex_id)


@pytest.fixture
def cache():
    """A cache path inside a directory of the user's (not made yet: the engine makes it)."""
    top = user_dir(USER, "ch")
    yield top / "cache"
    remove_tree(top)


@pytest.fixture
def work():
    """The user's working directory."""
    top = user_dir(USER, "chwork")
    yield top
    remove_tree(top)


def user_env(shared, cache, **extra):
    """No daemon, nothing on PATH but ch-run (and setpriv)."""
    return {"DOCKER_HOST": NO_DAEMON, "PATH": str(shared / "bin"), "DOCKER_DIR_CACHE": str(cache), **extra}


def exec_as(venv, shared, cache, *args, cwd=None, env=None, input=None, engine="charliecloud", timeout=120):
    prefix = ["--engine", engine] if engine else []
    return run_as(USER, [venv / "docker-dir-exec", *prefix, *map(str, args)], cwd=cwd,
                  env=user_env(shared, cache, **(env or {})), input=input, timeout=timeout)


def exec_popen(venv, shared, cache, *args, cwd):
    user = user_info(USER)
    env = {"HOME": user.home, "USER": USER, "LANG": "C.UTF-8", **user_env(shared, cache)}
    return subprocess.Popen(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--",
                             str(venv / "docker-dir-exec"), "--engine", "charliecloud", *map(str, args)],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def entries(cache):
    return sorted(os.listdir(cache)) if cache.exists() else []


def without_additions(tree, export, dest):
    """A copy of the unpacked tree without what the engine added where the image has nothing."""
    subprocess.run(["cp", "-a", str(tree), str(dest)], check=True)
    theirs = set(export[0])
    for name in ADDED:
        if name not in theirs or name in ("dev", "proc", "sys"):  # those three the export shows as docker's
            subprocess.run(["rm", "-rf", str(dest / name)], check=True)
    return dest


class Unpacks:
    """Counts unpacks in a cache directory (inotify: each makes a .<hex>.unpacking-* directory)."""

    IN_CREATE, IN_MOVED_TO = 0x100, 0x80

    def __init__(self, cache):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, str(cache).encode(),
                                                       self.IN_CREATE | self.IN_MOVED_TO) >= 0
        self.created, self.moved = [], []

    def wait_created(self, timeout=60):
        deadline = time.monotonic() + timeout
        while not self.created and time.monotonic() < deadline:
            select.select([self.fd], [], [], 0.1)
            self.read()
        return self.created

    def read(self):
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        while data:
            _, mask, _, size = struct.unpack_from("iIII", data)
            name = data[16:16 + size].rstrip(b"\0").decode()
            if mask & self.IN_CREATE and ".unpacking-" in name:
                self.created.append(name)
            if mask & self.IN_MOVED_TO:
                self.moved.append(name)
            data = data[16 + size:]

    def count(self):
        self.read()
        return len(self.created)

    def close(self):
        os.close(self.fd)


def made_cache(venv, shared, cache):
    """The cache directory, made by the engine (as a prune of nothing does)."""
    proc = exec_as(venv, shared, cache, "--prune-cache", "1")
    assert proc.returncode == 0, proc.stderr
    return cache


# -- the unpacked tree -------------------------------------------------------------

def test_unpacked_tree_matches_docker_export(venv, shared, cache, oracle, tmp_path):
    proc = exec_as(venv, shared, cache, "--load-only", oracle.dir)
    assert proc.returncode == 0, proc.stderr
    tree = cache / oracle.hex / "root"
    assert_same_as_export(without_additions(tree, oracle.export, tmp_path / "copy"), oracle.export, SPECIALS)
    uid = user_info(USER).uid
    assert {os.lstat(p).st_uid for p in [cache, *cache.rglob("*")]} == {uid}
    assert cache.stat().st_mode & 0o777 == 0o700


def test_zstd_oci_layout_matches_docker_export(venv, shared, cache, oracle, tmp_path):
    layout = or_skip(write_layout, "skopeo-oci-zstd", oracle.ref, shared / f"oci-zstd-{uuid.uuid4().hex[:8]}")
    subprocess.run(["chmod", "-R", "a+rX", str(layout.path)], check=True)
    proc = exec_as(venv, shared, cache, "--load-only", layout.path)
    assert proc.returncode == 0, proc.stderr
    hex_id = cli("docker-dir-id", layout.path).stdout.strip().split(":")[1]
    tree = cache / hex_id / "root"
    assert_same_as_export(without_additions(tree, oracle.export, tmp_path / "copy"), oracle.export, SPECIALS)


def test_what_ch_run_needs_is_written(venv, shared, cache, runtime):
    proc = exec_as(venv, shared, cache, "--load-only", runtime.dir)
    assert proc.returncode == 0, proc.stderr
    entry = cache / runtime.hex
    assert sorted(os.listdir(entry)) == ["root", "run.json"]
    root = entry / "root"
    for name in ("dev", "proc", "sys", "tmp", "home", "mnt"):
        assert (root / name).is_dir() and not (root / name).is_symlink()
    assert (root / "etc/passwd").read_bytes() == b"" and (root / "etc/group").read_bytes() == b""
    assert (root / "ch/environment").read_text().splitlines() == [
        "HOME='/'", "PATH='/bin'", "FOO='img'", "GONE='img'", """QUOTED='it's "q"'""", "DOLLAR='$PATH:/x'",
        "SPACES='a  b'", "EQ='a=b'"]


# -- running like the other engines --------------------------------------------------

# (options, CMD): docker-dir-exec OPTIONS DIR CMD
CASES = {
    "entrypoint_and_cmd": ([], []),
    "cmd_replaces_cmd": ([], ["x", "y"]),
    "entrypoint_replaces_both": (["--entrypoint", "env"], []),
    "empty_entrypoint": (["--entrypoint", ""], ["echo", "hi"]),
    "env_options": (["--entrypoint", "env", "-e", "NEW=v a'l", "-e", "FROM_CALLER", "-e", "GONE", "-e",
                     "FOO=override", "-e", "QUOTED='x'"], []),
    "cwd_is_the_workdir": (["--entrypoint", "pwd"], []),
    "missing_workdir_is_made": (["--entrypoint", "pwd", "-w", "/missing/deeper"], []),
    "workdir_through_a_symlink": (["--entrypoint", "pwd", "-w", "/abs-link/sub"], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_runs_like_docker(venv, shared, cache, work, runtime, case):
    options, command = CASES[case]
    caller = {"FROM_CALLER": "from caller"}
    ours = exec_as(venv, shared, cache, *options, runtime.dir, *command, cwd=work, env=caller)
    theirs = cli("docker-dir-exec", "--engine", "docker", *options, runtime.dir, *command, cwd=work,
                 env={**os.environ, **caller})
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    if "env" in options:
        def env_of(proc, own):
            return sorted(line for line in proc.stdout.splitlines() if not line.startswith(own + "="))

        assert env_of(ours, "CH_RUNNING") == env_of(theirs, "HOSTNAME")
    else:
        assert ours.stdout == theirs.stdout


def test_no_command_is_a_usage_error(venv, shared, cache, work, oracle):
    line = one_line_error(exec_as(venv, shared, cache, oracle.dir, cwd=work), EXIT_USAGE)
    assert "no command" in line


@pytest.mark.parametrize("status", [0, 1, 42, 127])
def test_exit_status_passes_through(venv, shared, cache, work, runtime, status):
    proc = exec_as(venv, shared, cache, "--entrypoint", "sh", runtime.dir, "-c", f"exit {status}", cwd=work)
    assert proc.returncode == status, proc.stderr


def test_stdin_and_files_written_in_the_cwd(venv, shared, cache, work, runtime):
    proc = exec_as(venv, shared, cache, "--entrypoint", "sh", runtime.dir, "-c", "tr a-z A-Z | tee out.txt",
                   cwd=work, input="hello\n")
    assert (proc.returncode, proc.stdout) == (0, "HELLO\n"), proc.stderr
    assert (work / "out.txt").read_text() == "HELLO\n"
    assert (work / "out.txt").stat().st_uid == user_info(USER).uid


def test_hot_exec_is_the_command_and_signals_reach_it(venv, shared, cache, work, runtime):
    """execv of ch-run, which execs the command: one process from start to end, so a
    signal to docker-dir-exec is a signal to the command (no init needed, none left)."""
    assert exec_as(venv, shared, cache, "--load-only", runtime.dir).returncode == 0
    proc = exec_popen(venv, shared, cache, "--entrypoint", "sleep", runtime.dir, "300", cwd=work)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_volumes_and_symlinked_destinations(venv, shared, cache, work, runtime):
    """-v binds; a destination below a symlink is made where the container resolves it,
    inside the tree even for a link climbing above /, and nothing outside is touched."""
    data = work / "data"
    data.mkdir()
    (data / "f").write_text("from volume\n")
    more = work / "more"
    more.mkdir()
    (more / "g").write_text("more\n")
    user = user_info(USER)
    for path in (data, data / "f", more, more / "g"):
        os.chown(path, user.uid, user.gid)
    escape = f"/var/dd-escape/{uuid.uuid4().hex[:8]}"
    proc = exec_as(venv, shared, cache, "--entrypoint", "sh", "-v", f"{data}:/abs-link/data", "-v",
                   f"{more}:/esc/{escape.rsplit('/', 1)[1]}:rw", "-w", "/abs-link/data", runtime.dir,
                   "-c", f"cat f /opt/real/data/f {escape}/g; pwd; echo w > written", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from volume\nfrom volume\nmore\n/opt/real/data\n"  # getcwd: the link resolved
    assert (data / "written").read_text() == "w\n"
    root = cache / runtime.hex / "root"
    assert (root / "opt/real/data").is_dir() and (root / escape.lstrip("/")).is_dir()
    assert not os.path.lexists(escape)


def test_numeric_user_and_host_network(venv, shared, cache, work, runtime):
    proc = exec_as(venv, shared, cache, "--entrypoint", "sh", "--user", "1234:1234", "--network", "host",
                   runtime.dir, "-c", "id -u; id -g", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "1234\n1234\n"), proc.stderr


def test_engine_args_reach_ch_run(venv, shared, cache, work, runtime):
    proc = exec_as(venv, shared, cache, "--entrypoint", "sh", "--engine-arg=--set-env=EXTRA=yes", runtime.dir,
                   "-c", "echo $EXTRA", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "yes\n"), proc.stderr


def test_root_is_read_only_and_tmp_private(venv, shared, cache, work, runtime):
    proc = exec_as(venv, shared, cache, "--entrypoint", "sh", runtime.dir, "-c",
                   "touch /opt/x 2>/dev/null && echo root-writable; echo t > /tmp/t && cat /tmp/t", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "t\n"), proc.stderr
    assert not (cache / runtime.hex / "root/tmp/t").exists()


@pytest.mark.parametrize("args, message", [
    (["--network", "none"], "no network isolation"),
    (["--user", "nobody"], "numeric UID"),
    (["-v", "/anon"], "anonymous volumes"),
    (["-v", "named:/x"], "named volumes"),
    (["-v", "{work}:/x:ro"], "read-write only"),
    (["-v", "{work}/missing:/x"], "does not exist"),
    (["--engine-arg=-w"], "writable"),
    (["-e", "=x"], "no variable name"),
])
def test_unsupported_options_are_refused_before_unpacking(venv, shared, cache, work, runtime, args, message):
    args = [a.format(work=work) for a in args]
    line = one_line_error(exec_as(venv, shared, cache, *args, runtime.dir, "true", cwd=work), EXIT_USAGE)
    assert message in line
    assert entries(cache) == []


def test_shebang_script_outside_the_cwd(venv, shared, cache, work, oracle):
    """The read-only bind docker-dir-exec asks for the script is bound read-write:
    ch-run 0.31 has no read-only binds, and the interpreter only reads it."""
    scripts = user_dir(USER, "chscript")
    try:
        script = scripts / "count"
        script.write_text(f"#!/usr/bin/env -S {venv}/docker-dir-exec --engine charliecloud {oracle.dir} sh\n"
                          'echo "script $1"\n')
        script.chmod(0o755)
        proc = run_as(USER, [script, "arg"], cwd=work, env=user_env(shared, cache, PATH=f"{shared}/bin:/usr/bin"))
        assert (proc.returncode, proc.stdout) == (0, "script arg\n"), proc.stderr
    finally:
        remove_tree(scripts)


def test_hot_path_imports_only_what_it_needs(runtime, tmp_path):
    """As the trampoline it is: no plumbum, subprocess, json, argparse, tarfile, the unpacker
    or the registry client."""
    env = dict(os.environ, DOCKER_DIR_ENGINE="charliecloud", DOCKER_DIR_CACHE=str(tmp_path / "cache"))
    assert cli("docker-dir-exec", "--load-only", runtime.dir, env=env).returncode == 0
    proc = subprocess.run([sys.executable, "-X", "importtime", str(BIN / "docker-dir-exec"), str(runtime.dir)],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "docker_dir.engine.charliecloud" in imported
    assert not imported & {"plumbum", "subprocess", "json", "argparse", "tarfile", "docker_dir.format.unpack",
                           "docker_dir.application.load", "docker_dir.registry", "docker_dir.application.pull",
                           "ssl", "http.client"}, imported


# -- where nothing else is -----------------------------------------------------------

def test_default_engine_is_charliecloud_when_only_ch_run_is_installed(venv, shared, cache, work, runtime):
    proc = exec_as(venv, shared, cache, "--entrypoint", "echo", runtime.dir, "default", cwd=work, engine=None)
    assert (proc.returncode, proc.stdout) == (0, "default\n"), proc.stderr
    assert entries(cache) == [runtime.hex]


def test_default_prefers_docker_and_podman(monkeypatch, tmp_path, ch_run):
    from docker_dir.engine import get_engine

    monkeypatch.delenv("DOCKER_DIR_ENGINE", raising=False)
    for name in ("ch-run", "podman", "docker"):
        os.symlink(ch_run, tmp_path / name)
        monkeypatch.setenv("PATH", str(tmp_path))
        assert get_engine().name == {"ch-run": "charliecloud"}.get(name, name)


def test_environment_variable_chooses_it(venv, shared, cache, work, runtime):
    proc = exec_as(venv, shared, cache, "--entrypoint", "echo", runtime.dir, "by env", cwd=work, engine=None,
                   env={"DOCKER_DIR_ENGINE": "charliecloud", "PATH": "/usr/bin:/bin"})
    assert (proc.returncode, proc.stdout) == (0, "by env\n"), proc.stderr


def test_git_annex_dir(venv, shared, cache, work, runtime):
    repo = Path(tempfile.mkdtemp(dir=shared))
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    for argv in (["init", "-q"], ["annex", "init", "-q"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True, env=env)
    shutil.copytree(runtime.dir, repo / "img")
    for argv in (["annex", "add", "-q", "img"], ["commit", "-q", "-m", "image"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, capture_output=True, env=env)
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)
    assert os.path.islink(repo / "img/manifest.json")
    proc = exec_as(venv, shared, cache, "--entrypoint", "echo", repo / "img", "annexed", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "annexed\n"), proc.stderr


def test_parallel_cold_execs_unpack_once(venv, shared, cache, work, runtime):
    unpacks = Unpacks(made_cache(venv, shared, cache))
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            exec_as(venv, shared, cache, "--entrypoint", "echo", runtime.dir, "ok", cwd=work))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [(r.returncode, r.stdout) for r in results] == [(0, "ok\n")] * 4, [r.stderr for r in results]
        assert unpacks.count() == 1 and unpacks.moved == [runtime.hex]
    finally:
        unpacks.close()


def test_slurm_array_unpacks_once_per_node(venv, shared, cache, runtime):
    or_skip(slurm_cluster)
    unpacks = Unpacks(made_cache(venv, shared, cache))
    script = (f"#!/bin/sh\nexport PATH={shared}/bin DOCKER_HOST={NO_DAEMON} DOCKER_DIR_CACHE={cache}\n"
              f"exec {venv}/docker-dir-exec --entrypoint sh -e SLURM_ARRAY_TASK_ID {runtime.dir} "
              "-c 'echo task $SLURM_ARRAY_TASK_ID'\n")
    job = sbatch(script, user=USER, array="1-6", timeout=180)
    try:
        assert job.succeeded(), job.tasks()
        # the output holds stderr too: "waiting for another process loading this image" of those that waited
        assert [job.output(task).splitlines()[-1] for task in range(1, 7)] == [f"task {t}" for t in range(1, 7)]
        assert unpacks.count() == 1 and unpacks.moved == [runtime.hex]
        assert entries(cache) == [runtime.hex]
    finally:
        unpacks.close()
        remove_tree(job.cwd)


# -- errors ------------------------------------------------------------------------

def interrupted_unpack(venv, shared, cache, work, image, signum):
    """Start a cold exec, wait until it is unpacking, send it signum; returns (status, stderr)."""
    unpacks = Unpacks(made_cache(venv, shared, cache))
    try:
        proc = exec_popen(venv, shared, cache, "--entrypoint", "true", image.dir, cwd=work)
        assert unpacks.wait_created(), proc.communicate()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        assert unpacks.moved == [], "the unpack finished before the signal came"
        return proc.returncode, stderr
    finally:
        unpacks.close()


def test_killed_unpack_is_never_used_and_cleaned_by_the_next_exec(venv, shared, cache, work, big):
    interrupted_unpack(venv, shared, cache, work, big, signal.SIGKILL)
    left = entries(cache)
    assert len(left) == 1 and left[0].startswith(f".{big.hex}.unpacking-")
    assert exec_as(venv, shared, cache, "--no-load", big.dir, "true", cwd=work).returncode == EXIT_NOT_LOADED
    proc = exec_as(venv, shared, cache, big.dir, "sh", "-c", "wc -c < /big.bin", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, f"{96 << 20}\n"), proc.stderr
    assert entries(cache) == [big.hex]


def test_terminated_unpack_cleans_up_at_once(venv, shared, cache, work, big):
    status, stderr = interrupted_unpack(venv, shared, cache, work, big, signal.SIGTERM)
    assert (status, stderr) == (128 + signal.SIGTERM, "docker-dir-exec: interrupted by SIGTERM\n")
    assert entries(cache) == []


def test_half_removed_entry_is_replaced(venv, shared, cache, work, runtime):
    """An entry someone began to remove by hand (run.json gone) is unpacked again."""
    assert exec_as(venv, shared, cache, "--load-only", runtime.dir).returncode == 0
    (cache / runtime.hex / "run.json").unlink()
    shutil.rmtree(cache / runtime.hex / "root/bin")
    proc = exec_as(venv, shared, cache, "--entrypoint", "echo", runtime.dir, "again", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "again\n"), proc.stderr
    assert entries(cache) == [runtime.hex]


@pytest.mark.parametrize("owner", ["root", "nobody"])
def test_cache_dir_of_someone_else_is_refused(venv, shared, work, runtime, owner):
    squatted = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        os.chmod(squatted, 0o777 if owner == "nobody" else 0o755)
        os.chown(squatted, *(65534, 65534) if owner == "nobody" else (0, 0))
        line = one_line_error(exec_as(venv, shared, squatted, runtime.dir, "true", cwd=work), EXIT_CANT_WRITE)
        assert f"{squatted}: the cache directory belongs to uid" in line and "DOCKER_DIR_CACHE" in line
        assert os.listdir(squatted) == []
    finally:
        shutil.rmtree(squatted)


def test_unreadable_layer(venv, shared, cache, work, runtime):
    copy = Path(tempfile.mkdtemp(dir=shared)) / "img"
    copy.parent.chmod(0o755)
    shutil.copytree(runtime.dir, copy)
    layer = sorted(copy.glob("*/layer.tar"))[0]
    layer.chmod(0)
    line = one_line_error(exec_as(venv, shared, cache, copy, "true", cwd=work), EXIT_BAD_DIR)
    assert line.endswith(f"{layer}: cannot read the layer (Permission denied)"), line
    assert entries(cache) == []


def test_ch_run_missing(venv, shared, cache, work, runtime):
    line = one_line_error(exec_as(venv, shared, cache, runtime.dir, "true", cwd=work,
                                  env={"PATH": str(shared / "no-ch-run")}), EXIT_ENGINE_UNAVAILABLE)
    assert "ch-run is not installed" in line and "apt-get install charliecloud-runtime" in line
    assert not cache.exists()


def test_full_disk(venv, shared, work, big):
    mountpoint = Path(tempfile.mkdtemp(dir="/var/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=16m,uid={user_info(USER).uid},mode=0700", "tmpfs",
                    str(mountpoint)], check=True)
    try:
        line = one_line_error(exec_as(venv, shared, mountpoint, big.dir, "true", cwd=work), EXIT_CANT_WRITE)
        assert "No space left on device" in line and "DOCKER_DIR_CACHE" in line
        assert os.listdir(mountpoint) == []
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
        mountpoint.rmdir()


@pytest.mark.parametrize("workdir, message", [
    ("/d2f/sub", "/d2f is not a directory there"),  # a file of the image in the way
    ("/zero/in/new", "/zero/in/new: Permission denied"),  # below a 0000 directory
    ("/ro/other", "/ro/other: Permission denied"),  # in a 0555 one
    ("/ro/new", "/ro/new is not a directory there"),  # a file where the workdir goes
])
def test_workdir_the_tree_cannot_hold(venv, shared, cache, work, oracle, workdir, message):
    line = one_line_error(exec_as(venv, shared, cache, "-w", workdir, oracle.dir, "true", cwd=work),
                          EXIT_ENGINE_FAILED)
    assert f"cannot make {workdir} in the unpacked image" in line and message in line


def test_file_bound_onto_a_directory_of_the_image(venv, shared, cache, work, runtime):
    line = one_line_error(exec_as(venv, shared, cache, "-v", f"{shared}/bin/ch-run:/work", runtime.dir, "true",
                                  cwd=work), EXIT_ENGINE_FAILED)
    assert "/work is a directory there" in line


def test_symlink_loop_in_a_destination(venv, shared, cache, work, runtime):
    line = one_line_error(exec_as(venv, shared, cache, "-w", "/loop-a/x", runtime.dir, "true", cwd=work),
                          EXIT_ENGINE_FAILED)
    assert "too many symlinks" in line


def test_without_user_variable(venv, shared, cache, work, runtime):
    """ch-run needs $USER; cron and some batch systems do not set it."""
    user = user_info(USER)
    env = {"PATH": str(shared / "bin"), "DOCKER_DIR_CACHE": str(cache), "DOCKER_HOST": NO_DAEMON}
    proc = subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--",
                           str(venv / "docker-dir-exec"), "--engine", "charliecloud", "--entrypoint", "echo",
                           str(runtime.dir), "no USER"], env=env, cwd=work, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "no USER\n"), proc.stderr


def test_cwd_with_a_colon_and_a_bind_on_root_are_refused(venv, shared, cache, work, runtime):
    odd = work / "a:b"
    odd.mkdir()
    os.chown(odd, user_info(USER).uid, user_info(USER).gid)
    line = one_line_error(exec_as(venv, shared, cache, runtime.dir, "true", cwd=odd), EXIT_USAGE)
    assert "cannot bind a path with ':'" in line
    line = one_line_error(exec_as(venv, shared, cache, "-v", f"{work}:/", runtime.dir, "true", cwd=work),
                          EXIT_USAGE)
    assert "absolute path other than /" in line
    assert entries(cache) == []


def test_env_value_with_a_newline(venv, shared, cache, work, rootfs):
    """A value ch-run's environment file cannot hold as a line goes on its command line;
    entries without a name are left out, as they cannot be set."""
    import hashlib
    import io
    import json
    import tarfile

    directory = Path(tempfile.mkdtemp(dir=shared))
    directory.chmod(0o755)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    layer = layer.getvalue()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin", "NL=line1\nline2", "NOEQ", "=nameless"]},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]}
                         }).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    (directory / f"{config_hex}.json").write_bytes(config)
    (directory / "layer").mkdir()
    (directory / "layer/layer.tar").write_bytes(layer)
    (directory / "manifest.json").write_text(json.dumps([{"Config": f"{config_hex}.json", "RepoTags": None,
                                                          "Layers": ["layer/layer.tar"]}]))
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    proc = exec_as(venv, shared, cache, directory, "sh", "-c", 'printf "%s|" "$NL"; env | grep -c NOEQ', cwd=work)
    assert proc.stdout == "line1\nline2|0\n", proc.stderr


def test_entry_made_meanwhile_by_another_node_is_kept(monkeypatch, tmp_path, runtime, ch_run):
    """Two nodes sharing a cache take no common lock: the second rename finds the first's
    complete entry, keeps it and drops its own."""
    from docker_dir.engine.charliecloud import CharliecloudEngine
    from docker_dir.format.imagedir import ImageDir

    monkeypatch.setenv("DOCKER_DIR_CACHE", str(tmp_path / "cache"))
    engine, image = CharliecloudEngine(), ImageDir(str(runtime.dir)).select()
    engine.load(image, runtime.hex)
    first = os.stat(tmp_path / "cache" / runtime.hex).st_ino
    engine.load(image, runtime.hex)
    assert os.stat(tmp_path / "cache" / runtime.hex).st_ino == first
    assert os.listdir(tmp_path / "cache") == [runtime.hex]


def test_entry_gone_between_check_and_run(monkeypatch, tmp_path, ch_run):
    from docker_dir.engine.base import RunRequest
    from docker_dir.engine.charliecloud import CharliecloudEngine
    from docker_dir.errors import EngineFailed

    monkeypatch.setenv("DOCKER_DIR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EngineFailed, match="went away"):
        CharliecloudEngine().run_command(RunRequest("ab" * 32, ["true"], "/"))


def test_save_is_refused(tmp_path):
    line = one_line_error(cli("docker-dir-save", "--engine", "charliecloud", "busybox", tmp_path / "out"),
                          EXIT_USAGE)
    assert "charliecloud keeps no images" in line


# -- the cache's housekeeping ---------------------------------------------------------

def test_use_touches_the_entry_and_prune_removes_what_was_not_used(venv, shared, cache, work, runtime, oracle):
    for image in (runtime, oracle):
        assert exec_as(venv, shared, cache, "--load-only", image.dir).returncode == 0
    day = 86400
    for image in (runtime, oracle):
        os.utime(cache / image.hex, (time.time() - 3 * day,) * 2)
    stale = cache / f".{runtime.hex}.unpacking-stale"  # what a killed unpack leaves: nobody holds its lock
    run_as(USER, ["mkdir", "-p", stale / "sub"], check=True)
    assert exec_as(venv, shared, cache, "--entrypoint", "true", runtime.dir, cwd=work).returncode == 0
    assert time.time() - (cache / runtime.hex).stat().st_mtime < 60  # used: touched
    before = (cache / runtime.hex).stat().st_mtime
    assert exec_as(venv, shared, cache, "--entrypoint", "true", runtime.dir, cwd=work).returncode == 0
    assert (cache / runtime.hex).stat().st_mtime == before  # at most hourly
    proc = exec_as(venv, shared, cache, "--prune-cache", "2")
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 unpacked image(s)" in proc.stderr and str(cache) in proc.stderr
    assert entries(cache) == [runtime.hex]
    proc = exec_as(venv, shared, cache, "--prune-cache", "0", "-q")
    assert (proc.returncode, proc.stderr, entries(cache)) == (0, "", [])


def test_prune_needs_charliecloud_and_days(tmp_path):
    line = one_line_error(cli("docker-dir-exec", "--engine", "docker", "--prune-cache", "3"), EXIT_USAGE)
    assert "--prune-cache is for --engine charliecloud" in line
    line = one_line_error(cli("docker-dir-exec", "--engine", "charliecloud", "--prune-cache", "soon"), EXIT_USAGE)
    assert "number of days" in line
