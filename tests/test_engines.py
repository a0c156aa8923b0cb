"""Engines: choosing one (--engine, DOCKER_DIR_ENGINE, default, DOCKER_HOST, contexts),
real podman, real Docker 26 with the classic and the containerd image store, and a
cross-engine matrix (a directory saved by each engine runs under each other one).

Side engines are started here (tests/engines.py) and stopped by PID; one is skipped,
with the reason, only when its package cannot be had on this machine.
"""
import json
import os
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from plumbum import local

from conftest import cli, docker, import_image, manifest, private_ref, raw_save
from engines import Target, side_dockerd_or_skip

from docker_dir.errors import EXIT_NOT_LOADED, EXIT_USAGE

PARALLEL = 4


@pytest.fixture
def cold_tagged(fresh_image, tmp_path):
    """Factory: (dir, image ID, tag) of a tagged image no engine has."""

    def make():
        tag = f"docker-dir-test/cold-{uuid.uuid4().hex[:8]}:1"
        image = fresh_image(tag)
        directory = raw_save(tag, tmp_path / tag.split("/")[1])
        docker("rmi", "-f", image)
        return directory, image, tag

    return make


def parallel(function, count):
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: function(), range(count)))


# -- choosing the engine ------------------------------------------------------------

def test_id_takes_engine_option_and_needs_no_engine(images, saved):
    for engine in ("docker", "podman"):
        proc = cli("docker-dir-id", "--engine", engine, saved.one, env=dict(os.environ, PATH="/nonexistent"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == images.one_id
    proc = cli("docker-dir-id", "--engine", "rkt", saved.one)
    assert proc.returncode == EXIT_USAGE
    assert "invalid choice" in proc.stderr


def test_environment_picks_engine_and_option_wins(cold_dir, podman, main_docker, tmp_path):
    directory, image = cold_dir()
    ref = private_ref(image)
    podman.created.append(ref)
    env = dict(podman.env, DOCKER_DIR_ENGINE="podman")

    proc = cli("docker-dir-exec", "--load-only", directory, env=env)
    assert proc.returncode == 0, proc.stderr
    assert podman.has(ref) and not main_docker.has(ref)

    proc = cli("docker-dir-save", "-q", ref, tmp_path / "from-podman", env=env)
    assert (proc.returncode, proc.stdout) == (0, image + "\n"), proc.stderr
    assert manifest(tmp_path / "from-podman")[0]["Layers"][0].startswith("blobs/sha256/")  # the one layout

    proc = cli("docker-dir-exec", "--engine", "docker", "--load-only", directory, env=env)
    assert proc.returncode == 0, proc.stderr
    assert main_docker.has(ref)

    proc = cli("docker-dir-exec", "--load-only", directory, env=dict(env, DOCKER_DIR_ENGINE="rkt"))
    assert proc.returncode == EXIT_USAGE
    assert "unknown engine 'rkt'" in proc.stderr


def test_default_is_podman_when_docker_is_not_installed(cold_dir, podman, main_docker, tmp_path):
    directory, image = cold_dir()
    ref = private_ref(image)
    podman.created.append(ref)
    only_podman = tmp_path / "bin"
    only_podman.mkdir()
    os.symlink(shutil.which("podman"), only_podman / "podman")
    env = dict(podman.env, PATH=str(only_podman))
    env.pop("DOCKER_DIR_ENGINE", None)

    proc = cli("docker-dir-exec", "--network", "none", directory, "echo", "on-podman", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "on-podman\n"
    assert podman.has(ref) and not main_docker.has(ref)


def test_docker_host_reaches_a_second_daemon(cold_dir, side20, main_docker, tmp_path):
    directory, image = cold_dir()
    ref = private_ref(image)

    proc = side20.exec(directory, "sh", "-c", "echo side", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "side\n"
    assert side20.image_id(ref) == image
    assert not main_docker.has(ref)

    # the presence check (the daemon's API over DOCKER_HOST's socket) asks the side daemon
    assert side20.exec("--no-load", directory, "true", cwd=tmp_path).returncode == 0
    on_main = cli("docker-dir-exec", "--no-load", directory, "true", env=main_docker.env, cwd=tmp_path)
    assert on_main.returncode == EXIT_NOT_LOADED


@pytest.mark.parametrize("how", ["DOCKER_CONTEXT", "docker context use"])
def test_docker_context_reaches_a_second_daemon(how, cold_dir, side20, main_docker, tmp_path):
    directory, image = cold_dir()
    ref = private_ref(image)
    env = dict(main_docker.env, DOCKER_CONFIG=str(tmp_path / "config"))
    env.pop("DOCKER_HOST", None)  # it would win over any context
    name = f"side-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "context", "create", name, "--docker", f"host={side20.daemon.host}"], env=env,
                   check=True, capture_output=True)
    if how == "DOCKER_CONTEXT":
        env["DOCKER_CONTEXT"] = name
    else:
        subprocess.run(["docker", "context", "use", name], env=env, check=True, capture_output=True)

    proc = cli("docker-dir-exec", "--network", "none", directory, "echo", "ctx", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ctx\n"
    assert side20.has(ref) and not main_docker.has(ref)
    no_load = cli("docker-dir-exec", "--no-load", "--network", "none", directory, "true", env=env, cwd=tmp_path)
    assert no_load.returncode == 0, no_load.stderr


# -- podman -------------------------------------------------------------------------

def podman_import(podman, rootfs, ref):
    (local["tar"]["-C", str(rootfs), "-c", "."]
     | local["podman"]["import", "--change", "ENV PATH=/bin", "--change", f"LABEL docker-dir-test={uuid.uuid4().hex}",
                       "-", ref].with_env(**podman.env))()
    image = "sha256:" + podman.image_id(ref)
    podman.created.append(image)
    return image


def test_podman_round_trip_keeps_user_tags(podman, rootfs, tmp_path):
    tag = f"localhost/docker-dir-test/pod-{uuid.uuid4().hex[:8]}:1"
    image = podman_import(podman, rootfs, tag)
    podman.created.append(private_ref(image))

    proc = podman.save(tag, tmp_path / "saved")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == image
    assert manifest(tmp_path / "saved")[0]["RepoTags"] == [tag]
    proc = cli("docker-dir-id", tmp_path / "saved")
    assert proc.stdout.strip() == image

    # The tag now names another image: exec must load the saved one without moving the tag.
    podman.remove(image)
    other = podman_import(podman, rootfs, tag)
    mark = podman.mark()
    proc = podman.exec(tmp_path / "saved", "sh", "-c", "echo podman-ran", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "podman-ran\n"
    assert podman.loads_since(mark) == 1
    assert "sha256:" + podman.image_id(private_ref(image)) == image
    assert "sha256:" + podman.image_id(tag) == other

    # present now: found through `podman image exists`, nothing loaded again
    proc = podman.exec("--no-load", tmp_path / "saved", "true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert podman.loads_since(mark) == 1


def test_podman_missing_image_with_no_load(cold_dir, podman, tmp_path):
    directory, _ = cold_dir()
    proc = podman.exec("--no-load", directory, "true", cwd=tmp_path)
    assert proc.returncode == EXIT_NOT_LOADED, proc.stderr


def test_podman_parallel_cold_execs_load_once(cold_dir, podman, tmp_path):
    directory, image = cold_dir()
    podman.created.append(private_ref(image))
    mark = podman.mark()
    results = parallel(lambda: podman.exec(directory, "echo", "ok", cwd=tmp_path), PARALLEL)
    assert [(r.returncode, r.stdout) for r in results] == [(0, "ok\n")] * PARALLEL, [r.stderr for r in results]
    assert podman.loads_since(mark) == 1


# -- Docker 26 ----------------------------------------------------------------------

@pytest.fixture(params=["docker26", "docker26c"])
def docker26_any(request):
    return request.getfixturevalue(request.param)


def test_docker26_save_is_oci_layout_and_runs(docker26_any, cold_tagged, tmp_path):
    engine = docker26_any
    directory, image, tag = cold_tagged()
    engine.load_dir(directory)
    engine_id = engine.image_id(tag)

    saved = tmp_path / "saved26"
    proc = engine.save(tag, saved)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == image
    for name in ("oci-layout", "index.json", "manifest.json", f"blobs/sha256/{image.split(':')[1]}"):
        assert (saved / name).exists(), name
    assert manifest(saved)[0]["Config"].startswith("blobs/sha256/")

    summary = json.loads(cli("docker-dir-id", "--json", saved).stdout)
    assert summary["id"] == image
    assert summary["repo_tags"] == [tag]
    index_digests = [m["digest"] for m in json.loads((saved / "index.json").read_text())["manifests"]]
    assert summary["manifest_digest"] in index_digests
    if "containerd" in engine.name:
        # The containerd store names images by their (Docker v2s2) manifest: docker-dir
        # writes an OCI one and records the store's digest beside it.
        (annotation,) = {m["annotations"]["io.docker-dir.source-digest"]
                         for m in json.loads((saved / "index.json").read_text())["manifests"]}
        assert engine_id == annotation
    else:
        assert engine_id == image

    # Still present (saved from this engine): found by the ID this store uses, tagged, not loaded.
    mark = engine.mark()
    proc = engine.exec("--load-only", saved, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert engine.loads_since(mark) == 0
    assert engine.image_id(private_ref(image)) == engine_id
    engine.remove(private_ref(image))

    engine.remove(tag)
    mark = engine.mark()
    proc = engine.exec(saved, "sh", "-c", "echo from-26", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from-26\n"
    assert engine.loads_since(mark) == 1


@pytest.fixture(params=["side20", "docker26", "docker26c"])
def side_any(request):
    return request.getfixturevalue(request.param)


def test_side_daemon_parallel_cold_execs_load_once(side_any, cold_tagged, tmp_path):
    engine = side_any
    directory, image, user_tag = cold_tagged()
    ref = private_ref(image)
    mark = engine.mark()

    results = parallel(lambda: engine.exec(directory, "echo", "ok", cwd=tmp_path), PARALLEL)
    assert [(r.returncode, r.stdout) for r in results] == [(0, "ok\n")] * PARALLEL, [r.stderr for r in results]
    assert engine.loads_since(mark) == 1
    assert not engine.has(user_tag)  # loaded under the private tag only

    loaded_id = engine.image_id(ref)
    if "containerd" in engine.name:
        # The containerd store names the image by its manifest digest, and does not
        # know it by the config digest at all; exec still finds it by its private tag.
        assert loaded_id != image
        assert not engine.has(image)
    else:
        assert loaded_id == image

    proc = engine.exec(directory, "echo", "warm", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "warm\n"), proc.stderr
    assert engine.loads_since(mark) == 1


# -- an image the engine holds is tagged, never loaded ---------------------------------

@pytest.fixture(params=["side20", "docker26", "docker26c", "podman"])
def any_engine(request):
    """dockerd 20.10 (a side daemon: its events are this suite's alone), Docker 26 with
    each image store, root podman (a private events log)."""
    return request.getfixturevalue(request.param)


def test_an_image_the_engine_holds_is_tagged_never_loaded(any_engine, cold_tagged, tmp_path):
    """As the README's Cleaning up promises: with docker-dir's private tag removed, an exec
    of a directory saved from the engine tags the image the engine still holds under the
    user's name; it never loads it (podman did, every time: its IDs are bare hex)."""
    engine = any_engine
    directory, image, tag = cold_tagged()
    engine.load_dir(directory)
    held_as = tag if engine.engine == "docker" else "localhost/" + tag
    ref = private_ref(image)
    engine.created += [ref, held_as]
    engine_id = engine.image_id(held_as)
    saved = tmp_path / "saved"
    proc = engine.save(held_as, saved)
    assert (proc.returncode, proc.stdout.strip()) == (0, image), proc.stderr

    mark = engine.mark()
    for _ in range(2):
        assert not engine.has(ref)
        proc = engine.exec(saved, "sh", "-c", "echo tagged", cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (0, "tagged\n"), proc.stderr
        assert engine.image_id(ref) == engine_id
        engine.remove(ref)  # the private tag only, as Cleaning up says
    assert engine.loads_since(mark) == 0
    assert engine.image_id(held_as) == engine_id

    # The count sees this engine's loads: with the image gone, the same exec loads it.
    engine.remove(held_as)
    assert not engine.has(engine_id)
    proc = engine.exec(saved, "true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert engine.loads_since(mark) == 1


# -- cross-engine matrix ------------------------------------------------------------

ENGINES = ("main", "podman", "docker26", "docker26c")


@pytest.fixture(scope="module")
def matrix(main_docker, rootfs, tmp_path_factory, request):
    """One image, saved by each engine: by dockerd 20.10 (plain docker save), then
    loaded into each other engine with its own `load` and saved back with
    docker-dir-save. The engines' copies are removed, so every exec loads."""
    targets = {"main": main_docker}
    skipped = {}
    for name in ENGINES[1:]:
        try:
            targets[name] = request.getfixturevalue(name)
        except pytest.skip.Exception as why:
            skipped[name] = str(why)
    base = tmp_path_factory.mktemp("matrix")
    tag = f"docker-dir-test/matrix-{uuid.uuid4().hex[:8]}:1"
    image = import_image(rootfs, tag, label=uuid.uuid4().hex)
    dirs = {"main": raw_save(tag, base / "main")}
    docker("rmi", "-f", tag)
    for name, target in targets.items():
        if name == "main":
            continue
        target.load_dir(dirs["main"])
        saved_tag = tag if target.engine == "docker" else "localhost/" + tag
        proc = target.save(saved_tag, base / name)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        dirs[name] = base / name
        target.remove(saved_tag)
    yield dict(targets=targets, dirs=dirs, image=image, skipped=skipped)
    for target in targets.values():
        target.remove(private_ref(image))
    docker("rmi", "-f", image, check=False)


def test_matrix_ids_agree(matrix):
    # With one engine there is nothing to compare: that must not pass as agreement.
    assert len(matrix["dirs"]) >= 2, f"the cross-engine matrix ran on one engine only; skipped: {matrix['skipped']}"
    for name, directory in matrix["dirs"].items():
        proc = cli("docker-dir-id", directory)
        assert proc.stdout.strip() == matrix["image"], (name, proc.stderr)
        assert cli("docker-dir-id", "--verify", directory).returncode == 0, name


@pytest.mark.parametrize("source,target", [(s, t) for s in ENGINES for t in ENGINES if s != t])
def test_matrix_runs_everywhere(matrix, source, target, tmp_path):
    for name in (source, target):
        if name in matrix["skipped"]:
            pytest.skip(matrix["skipped"][name])
    engine = matrix["targets"][target]
    ref = private_ref(matrix["image"])
    engine.remove(ref)
    proc = engine.exec(matrix["dirs"][source], "sh", "-c", "echo $((6 * 7))", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "42\n"
    assert engine.has(ref)


def test_docker26_built_image_with_compressed_layers_runs_everywhere(docker26c, docker26, podman, main_docker,
                                                                     rootfs, tmp_path):
    """An image built in the containerd store keeps gzip layers; its save (blobs named by
    the compressed digest) verifies, and every other engine loads and runs it."""
    context = tmp_path / "context"
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    (context / "Dockerfile").write_text(f'FROM scratch\nCOPY rootfs/ /\nLABEL docker-dir-test={uuid.uuid4().hex}\n'
                                        'ENV PATH=/bin\n')
    tag = f"docker-dir-test/built-{uuid.uuid4().hex[:8]}:1"
    build = subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], capture_output=True, text=True,
                           env=dict(docker26c.env, DOCKER_BUILDKIT="0"))
    assert build.returncode == 0, build.stderr
    saved = tmp_path / "saved"
    proc = docker26c.save(tag, saved)
    assert proc.returncode == 0, proc.stderr
    image = proc.stdout.strip()
    layer = saved / manifest(saved)[0]["Layers"][0]
    assert layer.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert cli("docker-dir-id", "--verify", saved).returncode == 0

    for engine in (main_docker, podman, docker26):
        engine.created.append(private_ref(image))
        proc = engine.exec(saved, "sh", "-c", "echo built-ran", cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (0, "built-ran\n"), (engine.name, proc.stderr)
        assert engine.has(private_ref(image)), engine.name


def test_podman_warnings_do_not_break_the_presence_check(cold_dir, podman, tmp_path):
    """A storage.conf key this podman does not know (one written for a newer podman)
    makes every podman command warn on stderr; the answer is still the exit status."""
    store = podman.cli("info", "--format", "{{.Store.GraphDriverName}} {{.Store.GraphRoot}} {{.Store.RunRoot}}")
    driver, graph_root, run_root = store.stdout.split()
    storage_conf = tmp_path / "storage.conf"
    storage_conf.write_text(f'docker_dir_test_future_key = "x"\n[storage]\ndriver = "{driver}"\n'
                            f'graphroot = "{graph_root}"\nrunroot = "{run_root}"\n')
    warning = Target("podman (warning)", "podman", dict(podman.env, CONTAINERS_STORAGE_CONF=str(storage_conf)))
    assert "docker_dir_test_future_key" in warning.cli("image", "exists", "docker-dir-test/none:1", check=False).stderr

    directory, image = cold_dir()
    podman.created.append(private_ref(image))
    proc = warning.exec("--load-only", directory, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = warning.exec("--no-load", directory, "echo", "warned", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "warned\n"), proc.stderr


# -- the harness itself -------------------------------------------------------------

def test_side_daemon_killed_restarts_and_stops_without_leftovers(images, saved):
    """Other tests kill side daemons mid-load: killing, restarting and stopping one
    must keep its images and leave no process, cgroup, mount or directory behind."""
    from procs import argv_of

    daemon = side_dockerd_or_skip("20.10", "dockerd 20.10 (killed)")
    try:
        Target("killed", "docker", daemon.env()).load_dir(saved.one)
        daemon.docker("run", "-d", "--network", "none", images.one, "sh", "-c", "while true; do sleep 1; done")
        killed = daemon.pid
        daemon.kill()
        daemon.restart()
        assert daemon.pid != killed
        assert daemon.docker("image", "inspect", "--format", "{{.Id}}", images.one).stdout.strip() == images.one_id
        daemon.docker("run", "-d", "--network", "none", images.one, "sh", "-c", "while true; do sleep 1; done")
        directory, cgroups = daemon.dir, daemon._cgroup_dirs()
        assert cgroups
    finally:
        daemon.stop()
    assert not os.path.exists(directory)
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and directory in " ".join(argv_of(pid))]
    assert not [d for d in cgroups if os.path.exists(d)]
    with open("/proc/self/mountinfo") as info:
        assert directory not in info.read()
