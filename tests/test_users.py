"""docker-dir as other users: rootless podman and rootless Docker (a normal user, and one
whose UID lies above its subuid range), a docker-group user on the rootful daemon, the
hints when an engine cannot be reached, and a lock directory another user made first.

Runs as root (it creates and switches to the test users that tests/provision-extra.sh
makes; tests/hosts.py). /dev/net/tun is root-only on these machines, so the rootless
engines run with the host's network: podman with netns = "host" in the user's
containers.conf, rootlesskit with --net=host (DOCKERD_ROOTLESS_ROOTLESSKIT_NET=host).
"""
import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import docker, import_image, private_ref, raw_save
from engines import podman_load_count
from hosts import (DOCKER_GROUP, HIGHUID, ROOTLESS, RootlessDockerd, RootlessPodman, or_skip, remove_tree, run_as,
                   user_dir, user_info, user_venv)

from docker_dir.errors import EXIT_CANT_WRITE, EXIT_ENGINE_UNAVAILABLE

USERS = (ROOTLESS, HIGHUID)


@pytest.fixture(scope="module")
def venv():
    return or_skip(user_venv)


@pytest.fixture(scope="module")
def image_dir(rootfs, docker_engine):
    """A saved image every user may read, whose "/" they may enter (a 0700 "/", as a pytest
    temp dir gives, stops every non-root container user). Yields (dir, image ID)."""
    top = Path(tempfile.mkdtemp(prefix="docker-dir-users-", dir="/var/tmp"))
    tree = top / "rootfs"
    shutil.copytree(rootfs, tree, symlinks=True)
    os.chmod(tree, 0o755)
    image = import_image(tree, f"docker-dir-test/users-{uuid.uuid4().hex[:8]}:1", label=uuid.uuid4().hex)
    directory = raw_save(image, top / "img")
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    docker("rmi", "-f", image)
    yield directory, image
    docker("rmi", "-f", private_ref(image), check=False)
    shutil.rmtree(top)


def workdir_of(user):
    """A directory of the user's own, holding a file only the user may read."""
    work = user_dir(user)
    secret = work / "secret.txt"
    run_as(user, ["sh", "-c", f"umask 077; echo only-mine > {secret}"], check=True)
    assert secret.stat().st_mode & 0o777 == 0o600
    return work


def exec_as(user, venv, *args, env=None, cwd=None):
    return run_as(user, [venv / "docker-dir-exec", *args], cwd=cwd,
                  env={"PATH": f"{venv}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", **(env or {})})


def check_as_the_user(user, proc, work):
    """Ran as the user, read the user's 0600 file, wrote a file the user owns."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[:2] == ["only-mine", str(user_info(user).uid)], proc.stdout
    assert (work / "out.txt").stat().st_uid == user_info(user).uid
    assert (work / "out.txt").read_text() == "made\n"


COMMAND = ("sh", "-c", "cat secret.txt; id -u; echo made > out.txt; echo more >> out.txt; "
           "head -1 out.txt > out2.txt && mv out2.txt out.txt")


@pytest.mark.parametrize("user", USERS)
def test_rootless_podman_runs_as_the_user(user, venv, image_dir):
    work = workdir_of(user)
    podman = RootlessPodman(user)
    try:
        proc = exec_as(user, venv, "--engine", "podman", image_dir[0], *COMMAND, cwd=work)
        check_as_the_user(user, proc, work)
        # hot, and in parallel with itself: still the user, still one image
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            exec_as(user, venv, "--engine", "podman", "--no-load", image_dir[0], "id", "-u", cwd=work)))
            for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [(r.returncode, r.stdout.strip()) for r in results] == [(0, str(user_info(user).uid))] * 3, \
            [r.stderr for r in results]
        explicit = exec_as(user, venv, "--engine", "podman", "--user", "0:0", image_dir[0], "id", "-u", cwd=work)
        assert (explicit.returncode, explicit.stdout.strip()) == (0, "0"), explicit.stderr  # --user as asked
    finally:
        podman.podman("rmi", "-f", private_ref(image_dir[1]), check=False)
        podman.stop()
        remove_tree(work)


def private_events_env(podman, work):
    """CONTAINERS_CONF for the user's podman: the user's own containers.conf (which it
    replaces) with the events log in `work`, so only this test's loads count."""
    conf = Path(podman.user.home, ".config", "containers", "containers.conf").read_text()
    line = f'events_logfile_path = "{work / "events.log"}"'
    if "[engine]\n" in conf:
        conf = conf.replace("[engine]\n", f"[engine]\n{line}\n")
    else:
        conf += f"\n[engine]\n{line}\n"
    (work / "containers.conf").write_text(conf)
    os.chmod(work / "containers.conf", 0o644)
    return {"CONTAINERS_CONF": str(work / "containers.conf")}


def test_rootless_podman_tags_an_image_it_holds_never_loads_it(venv, rootfs):
    """A directory saved from the user's podman, docker-dir's private tag removed (the
    README's Cleaning up): each exec tags the image podman holds, none loads it."""
    work = user_dir(ROOTLESS)
    podman = RootlessPodman(ROOTLESS)
    tag = f"localhost/docker-dir-test/held-{uuid.uuid4().hex[:8]}:1"
    image = podman.import_rootfs(rootfs, tag, changes=("ENV PATH=/bin", f"LABEL docker-dir-test={uuid.uuid4().hex}"))
    try:
        env = private_events_env(podman, work)
        saved = work / "saved"
        proc = run_as(ROOTLESS, [venv / "docker-dir-save", "--engine", "podman", "-q", tag, saved], cwd=work,
                      env={"PATH": f"{venv}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", **env})
        assert (proc.returncode, proc.stdout.strip()) == (0, image), proc.stderr
        for _ in range(2):
            proc = exec_as(ROOTLESS, venv, "--engine", "podman", saved, "sh", "-c", "echo tagged", env=env, cwd=work)
            assert (proc.returncode, proc.stdout) == (0, "tagged\n"), proc.stderr
            held = podman.podman("image", "inspect", "--format", "{{.Id}}", private_ref(image)).stdout.strip()
            assert "sha256:" + held == image
            podman.podman("rmi", private_ref(image))
        assert podman_load_count(env) == 0
        # The count sees this podman's loads: with the image gone, the same exec loads it.
        podman.podman("rmi", tag)
        proc = exec_as(ROOTLESS, venv, "--engine", "podman", saved, "true", env=env, cwd=work)
        assert proc.returncode == 0, proc.stderr
        assert podman_load_count(env) == 1
    finally:
        podman.podman("rmi", "-f", tag, private_ref(image), check=False)
        podman.stop()
        remove_tree(work)


@pytest.mark.parametrize("user", USERS)
def test_rootless_docker_runs_as_the_user(user, venv, image_dir):
    work = workdir_of(user)
    daemon = or_skip(RootlessDockerd(user).start)
    try:
        proc = exec_as(user, venv, "--engine", "docker", image_dir[0], *COMMAND, env=daemon.env(), cwd=work)
        # container root is the user there: `id -u` says 0, the file is the user's
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[:2] == ["only-mine", "0"], proc.stdout
        assert (work / "out.txt").stat().st_uid == user_info(user).uid
        assert daemon.docker("image", "inspect", "--format", "{{.Id}}", private_ref(image_dir[1])).stdout.strip() \
            == image_dir[1]
        # through the "rootless" context its setup tool would make, without DOCKER_HOST
        config = work / "docker-config"
        env = {k: v for k, v in daemon.env(DOCKER_CONFIG=str(config)).items() if k != "DOCKER_HOST"}
        run_as(user, ["docker", "context", "create", "rootless", "--docker", f"host={daemon.host}"], env=env,
               check=True)
        run_as(user, ["docker", "context", "use", "rootless"], env=env, check=True)
        (work / "out.txt").unlink()
        via_context = exec_as(user, venv, "--no-load", image_dir[0], *COMMAND, env=env, cwd=work)
        assert via_context.returncode == 0, via_context.stderr
        assert (work / "out.txt").stat().st_uid == user_info(user).uid
    finally:
        daemon.stop()
        remove_tree(work)


def test_docker_group_user_on_the_rootful_daemon(venv, image_dir):
    work = workdir_of(DOCKER_GROUP)
    try:
        proc = exec_as(DOCKER_GROUP, venv, "--engine", "docker", image_dir[0], *COMMAND, cwd=work)
        check_as_the_user(DOCKER_GROUP, proc, work)
    finally:
        remove_tree(work)


# -- the hints when the engine cannot be reached ---------------------------------------

def test_user_outside_the_docker_group_is_told_about_the_group_and_podman(venv, image_dir):
    proc = exec_as(ROOTLESS, venv, image_dir[0], "true")  # docker is the default: installed
    assert proc.returncode == EXIT_ENGINE_UNAVAILABLE, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "/var/run/docker.sock" in line and "docker group" in line and "--engine podman" in line, line


def test_a_running_rootless_daemon_is_named_when_docker_host_is_unset(venv, image_dir):
    daemon = or_skip(RootlessDockerd(ROOTLESS).start)
    try:
        env = {k: v for k, v in daemon.env().items() if k != "DOCKER_HOST"}
        proc = exec_as(ROOTLESS, venv, image_dir[0], "true", env=env)
        assert proc.returncode == EXIT_ENGINE_UNAVAILABLE, proc.stderr
        assert f"export DOCKER_HOST={daemon.host}" in proc.stderr, proc.stderr
    finally:
        daemon.stop()


# -- the lock directory on a shared machine ---------------------------------------------

@pytest.fixture
def victim_lock_dir():
    """/tmp/docker-dir-UID of the docker-group user, who has no XDG_RUNTIME_DIR."""
    path = Path(f"/tmp/docker-dir-{user_info(DOCKER_GROUP).uid}")
    subprocess.run(["rm", "-rf", str(path)], check=True)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=True)


def cold_exec_without_runtime_dir(venv, image_dir, timeout=60):
    return run_as(DOCKER_GROUP, ["env", "-u", "XDG_RUNTIME_DIR", venv / "docker-dir-exec", "--engine", "docker",
                                 image_dir[0], "true"], env={"PATH": f"{venv}:/usr/bin:/bin"}, timeout=timeout)


@pytest.mark.parametrize("how", ["directory made first", "symlink to the squatter's directory"])
def test_a_lock_directory_squatted_by_another_user_is_refused_not_waited_on(venv, image_dir, victim_lock_dir,
                                                                            how):
    docker("rmi", "-f", private_ref(image_dir[1]), check=False)  # a cold exec takes the lock
    squatter = user_dir(ROOTLESS)
    target = squatter / "locks" if how.startswith("symlink") else victim_lock_dir
    run_as(ROOTLESS, ["mkdir", "-m", "0777", target], check=True)
    lock = target / f"load-{image_dir[1][7:]}.lock"
    holder = subprocess.Popen(["setpriv", f"--reuid={user_info(ROOTLESS).uid}", f"--regid={user_info(ROOTLESS).gid}",
                               "--init-groups", "flock", str(lock), "sleep", "120"])
    try:
        if how.startswith("symlink"):
            run_as(ROOTLESS, ["ln", "-s", target, victim_lock_dir], check=True)
        for _ in range(100):
            if lock.exists():
                break
            time.sleep(0.05)
        # The squatter holds its lock for 120 s, longer than the call's timeout: an exec
        # that waited on it would fail the call instead of answering.
        proc = cold_exec_without_runtime_dir(venv, image_dir)
        assert proc.returncode == EXIT_CANT_WRITE, proc.stderr
        assert str(victim_lock_dir) in proc.stderr and "XDG_RUNTIME_DIR" in proc.stderr, proc.stderr
        assert f"uid {user_info(ROOTLESS).uid}" in proc.stderr or "symlink" in proc.stderr, proc.stderr
    finally:
        holder.kill()
        holder.wait()
        remove_tree(squatter)


def test_an_own_lock_directory_open_to_others_is_closed(venv, image_dir, victim_lock_dir):
    docker("rmi", "-f", private_ref(image_dir[1]), check=False)
    run_as(DOCKER_GROUP, ["mkdir", "-m", "0777", victim_lock_dir], check=True)
    proc = cold_exec_without_runtime_dir(venv, image_dir)
    assert proc.returncode == 0, proc.stderr
    assert victim_lock_dir.stat().st_mode & 0o777 == 0o700
    assert list(victim_lock_dir.iterdir()) == []  # the lock file went with the load


@pytest.mark.parametrize("planted", ["symlink", "another user's file"])
def test_a_lock_file_planted_in_the_lock_directory_is_refused(venv, image_dir, victim_lock_dir, planted):
    docker("rmi", "-f", private_ref(image_dir[1]), check=False)
    run_as(DOCKER_GROUP, ["mkdir", "-m", "0700", victim_lock_dir], check=True)
    lock = victim_lock_dir / f"load-{image_dir[1][7:]}.lock"
    if planted == "symlink":
        run_as(DOCKER_GROUP, ["ln", "-s", "/etc/passwd", lock], check=True)
    else:
        lock.touch()  # root's (nobody else can write there but root)
    proc = cold_exec_without_runtime_dir(venv, image_dir)
    assert proc.returncode == EXIT_CANT_WRITE, proc.stderr
    assert str(lock) in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_lock_files_do_not_pile_up(rootfs, tmp_path):
    """One lock file per image ever loaded used to stay in the lock directory."""
    from conftest import cli
    from docker_dir.nodelocal import runtime_dir

    lock_dir = Path(runtime_dir())
    before = set(lock_dir.glob("load-*.lock")) if lock_dir.exists() else set()
    made = []
    try:
        for n in range(5):  # one left behind shows; a few show it is not a one-off
            image = import_image(rootfs, None, label=f"lock-{n}-{uuid.uuid4().hex}")
            made.append(image)
            directory = raw_save(image, tmp_path / f"img{n}")
            docker("rmi", "-f", image)
            proc = cli("docker-dir-exec", "--load-only", directory)
            assert proc.returncode == 0, proc.stderr
        after = set(lock_dir.glob("load-*.lock"))
        assert after - before == set(), sorted(after - before)[:3]
    finally:
        for image in made:
            docker("rmi", "-f", private_ref(image), image, check=False)


def test_flock_of_the_lock_holder_blocks_only_the_same_image(tmp_path):
    """The lock protocol: a waiter whose file was removed by the holder locks the new one."""
    from docker_dir.application.load import _lock, _unlock
    from docker_dir.application import QUIET

    first = _lock("a" * 64, QUIET)
    got = []
    waiter = threading.Thread(target=lambda: got.append(_lock("a" * 64, QUIET)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # waiting
    _unlock(first)
    waiter.join(10)
    assert got, "the waiter never got the lock"
    fd, path = got[0]
    assert os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino
    fcntl.flock(fd, fcntl.LOCK_UN)
    _unlock(got[0])
    assert not os.path.exists(path)
