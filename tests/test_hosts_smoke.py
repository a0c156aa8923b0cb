"""The helpers of hosts.py against the real things, without docker-dir: other users,
rootless podman and Docker, Charliecloud, Slurm. Each fixture skips with the reason
when its piece cannot be had here."""
import uuid

import pytest

from conftest import docker, import_image
from hosts import (DOCKER_GROUP, HIGHUID, ROOTLESS, RootlessDockerd, RootlessPodman, ch_run, ch_tree,
                   charliecloud, or_skip, remove_tree, run_as, sbatch, slurm_cluster, user_dir, user_info,
                   user_env, user_venv)


def subid_start(user, file="/etc/subuid"):
    for line in open(file):
        name, start, _count = line.strip().split(":")
        if name == user.name:
            return int(start)
    raise AssertionError(f"{user.name} not in {file}")


def owner(path):
    stat = path.stat()
    return stat.st_uid, stat.st_gid


@pytest.fixture(scope="module")
def rootless():
    return or_skip(user_info, ROOTLESS)


@pytest.fixture(scope="module")
def highuid():
    return or_skip(user_info, HIGHUID)


@pytest.fixture
def shared_dir(rootless):
    """A directory anyone may write into (1777), so a write by any mapped ID succeeds."""
    path = user_dir(rootless, "shared")
    path.chmod(0o1777)
    yield path
    remove_tree(path)


# -- users -------------------------------------------------------------------------

def test_run_as_gives_a_clean_login_environment(rootless):
    proc = run_as(rootless, ["sh", "-c", "id -u; id -g; id -G; pwd; env"], check=True)
    uid, gid, groups, cwd, *env = proc.stdout.splitlines()
    assert (int(uid), int(gid), groups) == (rootless.uid, rootless.gid, str(rootless.gid))
    assert cwd == rootless.home
    env = dict(line.split("=", 1) for line in env)
    env.pop("PWD", None), env.pop("SHLVL", None), env.pop("_", None)  # the shell's own
    assert env == user_env(rootless)
    assert env["XDG_RUNTIME_DIR"] == f"/run/user/{rootless.uid}"


def test_test_users_have_what_the_tests_need(rootless, highuid):
    for user in (rootless, highuid):
        assert subid_start(user) and subid_start(user, "/etc/subgid")
        proc = run_as(user, ["sh", "-c", 'test -O "$XDG_RUNTIME_DIR" && stat -c %a "$XDG_RUNTIME_DIR"'])
        assert proc.stdout.strip() == "700", proc.stderr
    assert highuid.uid > subid_start(highuid) + 65536  # above its range
    docker_user = or_skip(user_info, DOCKER_GROUP)
    assert "docker" in run_as(docker_user, ["id", "-Gn"], check=True).stdout.split()
    assert run_as(rootless, ["id", "-Gn"], check=True).stdout.split() == [rootless.name]


def test_user_venv_runs_for_other_users(rootless):
    bin_dir = or_skip(user_venv)
    for name in ("docker-dir-save", "docker-dir-id", "docker-dir-exec"):
        proc = run_as(rootless, [bin_dir / name, "--help"])
        assert proc.returncode == 0, proc.stderr
    assert user_venv() == bin_dir  # unchanged sources: no reinstall


# -- rootless podman ----------------------------------------------------------------

@pytest.fixture(scope="module")
def podman_images(rootfs, rootless, highuid):
    engines = {}
    try:
        for user in (rootless, highuid):
            podman = or_skip(RootlessPodman, user)
            ref = f"localhost/fixture/bb-{uuid.uuid4().hex[:8]}:1"
            podman.import_rootfs(rootfs, ref)
            engines[user.name] = (podman, ref)
        yield engines
    finally:
        for podman, ref in engines.values():
            podman.podman("rmi", "-f", ref, check=False)
            podman.stop()


@pytest.mark.parametrize("mode", ["default", "keep-id", "user"])
def test_rootless_podman_bind_mount_owner(podman_images, rootless, shared_dir, mode):
    podman, ref = podman_images[rootless.name]
    options = {"default": [], "keep-id": ["--userns=keep-id"],
               "user": ["--user", f"{rootless.uid}:{rootless.gid}"]}[mode]
    proc = podman.podman("run", "--rm", *options, "-v", f"{shared_dir}:/w", ref, "sh", "-c", "id -u; touch /w/f")
    inside = {"default": 0, "keep-id": rootless.uid, "user": rootless.uid}[mode]
    assert int(proc.stdout.split()[0]) == inside
    expected = {
        "default": (rootless.uid, rootless.gid),  # container root is the user
        "keep-id": (rootless.uid, rootless.gid),
        # container ID n >= 1 is subordinate ID start + n - 1
        "user": (subid_start(rootless) + rootless.uid - 1, subid_start(rootless, "/etc/subgid") + rootless.gid - 1),
    }[mode]
    assert owner(shared_dir / "f") == expected


def test_rootless_podman_user_above_subuid_range_cannot_run_as_itself(podman_images, highuid):
    podman, ref = podman_images[highuid.name]
    proc = podman.podman("run", "--rm", "--user", f"{highuid.uid}:{highuid.gid}", ref, "true", check=False)
    assert proc.returncode != 0
    assert "unable to setup user" in proc.stderr and "invalid argument" in proc.stderr, proc.stderr
    # keep-id maps the user's own ID in, so it works there
    proc = podman.podman("run", "--rm", "--userns=keep-id", ref, "id", "-u")
    assert proc.stdout.strip() == str(highuid.uid)


# -- rootless Docker -----------------------------------------------------------------

@pytest.fixture(scope="module")
def rootless_dockerd(rootfs, rootless):
    daemon = RootlessDockerd(rootless)
    or_skip(daemon.start)
    try:
        daemon.ref = "fixture/bb:1"  # a private data root: nobody else's tags there
        daemon.import_rootfs(rootfs, daemon.ref)
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.parametrize("mode", ["default", "user"])
def test_rootless_docker_bind_mount_owner(rootless_dockerd, rootless, shared_dir, mode):
    options = ["--user", f"{rootless.uid}:{rootless.gid}"] if mode == "user" else []
    proc = rootless_dockerd.docker("run", "--rm", *options, "-v", f"{shared_dir}:/w", rootless_dockerd.ref,
                                   "sh", "-c", "id -u; touch /w/f")
    assert int(proc.stdout.split()[0]) == (rootless.uid if mode == "user" else 0)
    expected = ((subid_start(rootless) + rootless.uid - 1, subid_start(rootless, "/etc/subgid") + rootless.gid - 1)
                if mode == "user" else (rootless.uid, rootless.gid))
    assert owner(shared_dir / "f") == expected


def test_rootless_docker_has_no_keep_id(rootless_dockerd):
    proc = rootless_dockerd.docker("run", "--rm", "--userns=keep-id", rootless_dockerd.ref, "true", check=False)
    assert proc.returncode != 0 and "invalid USER mode" in proc.stderr, proc.stderr


def test_rootless_docker_user_above_subuid_range(rootfs, highuid):
    daemon = RootlessDockerd(highuid)
    or_skip(daemon.start)
    with daemon:
        daemon.import_rootfs(rootfs, "fixture/bb:1")
        proc = daemon.docker("run", "--rm", "--user", f"{highuid.uid}:{highuid.gid}", "fixture/bb:1", "true",
                             check=False)
        assert proc.returncode == 125
        assert "unable to setup user" in proc.stderr and "invalid argument" in proc.stderr, proc.stderr
        assert daemon.docker("run", "--rm", "fixture/bb:1", "id", "-u").stdout.strip() == "0"
        pids = daemon._own_pids()
        assert pids  # dockerd, containerd...
    assert daemon.runtime_dir is None and not [p for p in pids if _exists(p)]


def _exists(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_docker_group_user_uses_the_main_daemon(docker_engine, rootfs, shared_dir):
    user = or_skip(user_info, DOCKER_GROUP)
    ref = f"fixture/bb-group-{uuid.uuid4().hex[:8]}:1"
    import_image(rootfs, ref)
    try:
        proc = run_as(user, ["docker", "run", "--rm", "--user", f"{user.uid}:{user.gid}", "-v", f"{shared_dir}:/w",
                             ref, "touch", "/w/f"])
        assert proc.returncode == 0, proc.stderr
        assert owner(shared_dir / "f") == (user.uid, user.gid)
    finally:
        docker("rmi", "-f", ref, check=False)


# -- Charliecloud -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ch_image(rootfs, rootless):
    or_skip(charliecloud)
    home = user_dir(rootless, "ch")
    yield ch_tree(rootfs, home / "img")
    remove_tree(home)


def test_ch_run_as_unprivileged_user(ch_image, rootless, shared_dir):
    assert ch_run(rootless, ch_image, ["true"]).returncode == 0
    proc = ch_run(rootless, ch_image, ["sh", "-c", "id -u; pwd; touch made"],
                  options=["-b", f"{shared_dir}:/mnt", "-c", "/mnt"], cwd=shared_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(rootless.uid), "/mnt"]
    assert owner(shared_dir / "made") == (rootless.uid, rootless.gid)


def test_ch_run_031_behaviour(ch_image, rootless, shared_dir):
    # the host cwd is not kept: without -c it starts in /
    assert ch_run(rootless, ch_image, ["pwd"], cwd="/tmp").stdout.strip() == "/"
    # a bind destination must exist in the (read-only) tree
    proc = ch_run(rootless, ch_image, ["true"], options=["-b", f"{shared_dir}:/nowhere"])
    assert proc.returncode != 0 and "can't mkdir" in proc.stderr, proc.stderr
    # --set-env=NAME=VALUE, $NAME expanded only as a whole colon-separated item
    proc = ch_run(rootless, ch_image, ["sh", "-c", 'echo "$A|$B|$C"'],
                  options=["--set-env=A=x", "--set-env=B=$PATH:/y", "--set-env=C=$HOME/z"])
    assert proc.stdout.strip() == f"x|{user_env(rootless)['PATH']}:/y|", proc.stderr
    # the environment passes through unless unset
    proc = ch_run(rootless, ch_image, ["env"], options=["--unset-env=*", "--set-env=PATH=/bin"])
    assert sorted(line.split("=")[0] for line in proc.stdout.splitlines()) == ["CH_RUNNING", "PATH"]
    # $HOME is not bound unless --home
    assert ch_run(rootless, ch_image, ["ls", "-A", "/home"]).stdout.strip() == ""
    proc = ch_run(rootless, ch_image, ["sh", "-c", 'test -d "$HOME" && echo bound'], options=["--home"])
    assert proc.stdout.strip() == "bound", proc.stderr


# -- Slurm ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm():
    cluster = or_skip(slurm_cluster)
    yield cluster
    cluster.stop()


def test_slurm_array_job_as_user(slurm, rootless):
    job = sbatch(script="#!/bin/sh\necho task $SLURM_ARRAY_TASK_ID as $(id -un) in $XDG_RUNTIME_DIR\n",
                 user=rootless, array="1-4", timeout=120)
    try:
        assert job.succeeded(), job.tasks()
        assert sorted(job.tasks()) == [1, 2, 3, 4]
        for task in range(1, 5):
            assert job.output(task) == f"task {task} as {rootless.name} in /run/user/{rootless.uid}\n"
    finally:
        remove_tree(job.cwd)


def test_slurm_failed_task_is_reported(slurm):
    job = sbatch(wrap='exit $((SLURM_ARRAY_TASK_ID - 1))', array="1-2", timeout=120)
    try:
        tasks = job.tasks()
        assert (tasks[1].state, tasks[1].exit_code) == ("COMPLETED", "0:0")
        assert (tasks[2].state, tasks[2].exit_code) == ("FAILED", "1:0")
        assert not job.succeeded()
    finally:
        remove_tree(job.cwd)
