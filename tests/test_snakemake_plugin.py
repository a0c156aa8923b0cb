"""The Snakemake software-deployment plugin (snakemake-plugin/): the interface's own test
suite (TestSoftwareDeploymentBase) for an image directory and for a docker:// reference
from a real registry (Debian's docker-registry on loopback), on the main dockerd and on
Charliecloud; then what the suite does not check: the identity rule, one load under
parallel deploys (counted from dockerd's own events), docker-dir's errors as Snakemake's
WorkflowError, and Snakemake's own plugin registry finding the plugin and its settings.

The image holds a static bash (Debian bash-static), as Snakemake runs steps with bash by
default and the interface's suite with `bash -l -c`; the step runs bash inside the image.
"""
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, cli, count_events, docker, image_id_of, private_ref

if sys.version_info < (3, 11):
    pytest.skip("the Snakemake plugin interface needs Python >= 3.11: the plugin is not installed on "
                f"Python {sys.version.split()[0]}", allow_module_level=True)

# Python >= 3.11: tests/run-all.sh installs the plugin; missing here is a failure, not a skip.
import snakemake_software_deployment_plugin_docker_dir as plugin  # noqa: E402
from snakemake_interface_common.exceptions import WorkflowError  # noqa: E402
from snakemake_interface_software_deployment_plugins import EnvSpecSourceFile, ShellExecutable  # noqa: E402
from snakemake_interface_software_deployment_plugins.tests import TestSoftwareDeploymentBase  # noqa: E402

BASH_STATIC = "/bin/bash-static"
PROBE = "dd-plugin-probe"  # an executable only the image has


def build_image(rootfs, ref, label, extra_mib=0):
    """The busybox fixture plus bash, a probe executable, a marker file /docker-dir-test
    holding `label` and, with extra_mib, a layer of random data. Returns the image ID."""
    if not os.access(BASH_STATIC, os.X_OK):
        pytest.fail(f"{BASH_STATIC} is needed in the fixture image (Debian bash-static): run tests/run-all.sh")
    context = Path(tempfile.mkdtemp(prefix="sdm-image-"))
    try:
        shutil.copytree(rootfs, context / "rootfs", symlinks=True)
        shutil.copy(BASH_STATIC, context / "rootfs" / "bin" / "bash")
        (context / "rootfs" / "bin" / PROBE).write_text("#!/bin/sh\necho probe\n")
        (context / "rootfs" / "bin" / PROBE).chmod(0o755)
        (context / "rootfs" / "docker-dir-test").write_text(label)
        data = ""
        if extra_mib:
            (context / "data.bin").write_bytes(os.urandom(extra_mib << 20))
            data = "COPY data.bin /data.bin\n"
        (context / "Dockerfile").write_text(f"FROM scratch\nCOPY rootfs/ /\n{data}ENV PATH=/bin\nCMD [\"sh\"]\n")
        docker("build", "-q", "-t", ref, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    finally:
        shutil.rmtree(context)
    return image_id_of(ref)


def save_dir(ref, directory, *args):
    proc = cli("docker-dir-save", *args, ref, directory)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def bash_image(docker_engine, rootfs, registry_anon, tmp_path_factory):
    """The image saved as a directory and pushed to the registry: dir, ref (docker://), id, label."""
    label = uuid.uuid4().hex
    engine_ref = f"fixture/sdm-{label[:8]}:1"
    image = build_image(rootfs, engine_ref, label)
    directory = tmp_path_factory.mktemp("sdm") / "image"
    assert save_dir(engine_ref, directory) == image
    repo = f"sdm/bash-{label[:8]}"
    digest = registry_anon.push(engine_ref, f"{repo}:1").digest
    yield SimpleNamespace(dir=directory, ref=f"docker://{registry_anon.host}/{repo}:1", id=image, label=label,
                          engine_ref=engine_ref, pinned=f"{registry_anon.host}/{repo}@{digest}",
                          tag=f"{registry_anon.host}/{repo}:1")
    docker("rmi", "-f", private_ref(image), check=False)
    docker("rmi", "-f", engine_ref, check=False)


@pytest.fixture(scope="module")
def ch_cache(tmp_path_factory):
    """Charliecloud's cache of unpacked images for this module (a directory of root's, 0700)."""
    from hosts import charliecloud, or_skip

    or_skip(charliecloud)
    cache = tmp_path_factory.mktemp("ch") / "cache"
    return cache


def spec_of(source, **selectors):
    """An EnvSpec as Snakemake's docker_dir() makes one."""
    if str(source).startswith("docker://"):
        spec = plugin.EnvSpec(ref=str(source), **selectors)
    else:
        spec = plugin.EnvSpec(path=EnvSpecSourceFile(str(source)), **selectors)
    spec.technical_init()
    return spec


def make_env(spec, prefix, engine="docker", shell=ShellExecutable("bash", command_arg="-c"), **settings):
    """An Env as Snakemake's deployment manager makes one, its prefixes under `prefix`."""
    prefixes = {name: Path(prefix) / name for name in ("deployments", "cache", "pins")}
    for path in prefixes.values():
        path.mkdir(parents=True, exist_ok=True)
    return plugin.Env(spec=spec, within=None, settings=plugin.Settings(engine=engine, **settings),
                      shell_executable=shell, mountpoints=[Path.cwd()], envvars=set(),
                      tempdir=Path(tempfile.gettempdir()), deployment_prefix=prefixes["deployments"],
                      cache_prefix=prefixes["cache"], pinfile_prefix=prefixes["pins"])


# -- the interface's own suite ---------------------------------------------------------------

class _InterfaceSuite(TestSoftwareDeploymentBase):
    engine = None
    source = None  # "dir" or "ref"

    @pytest.fixture(autouse=True)
    def _workspace(self, request, bash_image, tmp_path, monkeypatch):
        if self.engine == "charliecloud":
            monkeypatch.setenv("DOCKER_DIR_CACHE", str(request.getfixturevalue("ch_cache")))
        monkeypatch.delenv("DOCKER_DIR_ENGINE", raising=False)
        monkeypatch.chdir(tmp_path)  # the step's working directory, mounted at its own path
        self.image = bash_image
        self.workdir = tmp_path

    def get_env_spec(self):
        return spec_of(self.image.dir if self.source == "dir" else self.image.ref)

    def get_env_cls(self):
        return plugin.Env

    def get_settings_cls(self):
        return plugin.Settings

    def get_settings(self):
        return plugin.Settings(engine=self.engine)

    def get_test_cmd(self):
        # true only inside this image, in the caller's directory
        return f'test "$(cat /docker-dir-test)" = {self.image.label} && test "$PWD" = {self.workdir}'

    def get_contained_executable(self):
        return PROBE


class TestImageDirOnDocker(_InterfaceSuite):
    __test__ = True
    engine, source = "docker", "dir"


class TestRegistryRefOnDocker(_InterfaceSuite):
    __test__ = True
    engine, source = "docker", "ref"


class TestImageDirOnCharliecloud(_InterfaceSuite):
    __test__ = True
    engine, source = "charliecloud", "dir"


class TestRegistryRefOnCharliecloud(_InterfaceSuite):
    __test__ = True
    engine, source = "charliecloud", "ref"


# -- beyond the suite ------------------------------------------------------------------------

def test_identity_is_the_image_id(bash_image, rootfs, tmp_path, monkeypatch):
    """Re-saving the same image, copying the directory or pulling the image from a registry
    keeps the environment's hash (and so Snakemake's software-env trigger quiet); a new
    image saved over the directory changes it."""
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "image"
    assert save_dir(bash_image.engine_ref, directory) == bash_image.id
    first = make_env(spec_of(directory), tmp_path / "a").hash()
    inode = directory.stat().st_ino
    assert save_dir(bash_image.engine_ref, directory, "--force") == bash_image.id
    assert directory.stat().st_ino != inode  # another directory, the same image
    assert make_env(spec_of(directory), tmp_path / "b").hash() == first
    assert make_env(spec_of(bash_image.dir), tmp_path / "c").hash() == first
    assert make_env(spec_of(bash_image.ref), tmp_path / "d").hash() == first

    other_ref = f"fixture/sdm-other-{uuid.uuid4().hex[:8]}:1"
    other = build_image(rootfs, other_ref, uuid.uuid4().hex)
    try:
        assert save_dir(other_ref, directory, "--force") == other
        assert make_env(spec_of(directory), tmp_path / "e").hash() != first
    finally:
        docker("rmi", "-f", other_ref, check=False)


def waiting_on_flock(path):
    """How many processes wait to flock the file at `path` (/proc/locks marks them '->')."""
    st = os.stat(path)
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "-> FLOCK" in line and line.split()[-3] == file_id)


DEPLOY = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from test_snakemake_plugin import make_env, spec_of
asyncio.run(make_env(spec_of(sys.argv[1]), sys.argv[2]).deploy())
"""


def test_parallel_deploys_load_once(rootfs, tmp_path, monkeypatch):
    """Four deploys of an image the engine lacks, started while docker-dir-exec's load lock
    is held, so that all four wait on it at once: dockerd reports one load."""
    from docker_dir.application import QUIET
    from docker_dir.application.load import _lock, _unlock

    monkeypatch.chdir(tmp_path)
    engine_ref = f"fixture/sdm-cold-{uuid.uuid4().hex[:8]}:1"
    image = build_image(rootfs, engine_ref, uuid.uuid4().hex, extra_mib=16)
    try:
        directory = tmp_path / "image"
        assert save_dir(engine_ref, directory) == image
        docker("rmi", "-f", engine_ref)
        assert image_id_of(image) is None, "the engine must lack the image for a load to happen"
        since = time.time()
        lock = _lock(image.split(":")[1], QUIET)
        script = DEPLOY.format(tests=str(REPO / "tests"))
        deploys = [subprocess.Popen([sys.executable, "-c", script, str(directory), str(tmp_path / f"p{n}")],
                                    stderr=subprocess.PIPE, text=True) for n in range(4)]
        try:
            deadline = time.monotonic() + 120
            while waiting_on_flock(lock[1]) < len(deploys):
                assert all(p.poll() is None for p in deploys), [p.communicate()[1] for p in deploys]
                assert time.monotonic() < deadline, "the deploys never all waited on the load lock"
                time.sleep(0.05)
        finally:
            _unlock(lock)
        for deploy in deploys:
            assert deploy.wait(timeout=300) == 0, deploy.stderr.read()
        assert count_events("load", since, image=image) == 1
        assert image_id_of(private_ref(image)) == image
        for n in range(4):
            (deployed,) = (tmp_path / f"p{n}" / "deployments").iterdir()
            assert (deployed / "image-id").read_text() == image + "\n"
    finally:
        docker("rmi", "-f", private_ref(image), check=False)
        docker("rmi", "-f", engine_ref, check=False)


def assert_docker_dir_line(raised, tool, *args, env=None):
    """The WorkflowError says exactly the line docker-dir's command prints, and carries no
    exception of docker-dir's internals (no traceback of them)."""
    proc = cli(tool, *args, env=env)
    lines = proc.stderr.splitlines()
    assert proc.returncode not in (0, 1) and len(lines) == 1, proc.stderr
    assert str(raised.value) == lines[0].removeprefix(f"{tool}: ")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_not_an_image_directory_is_a_workflow_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    not_image = tmp_path / "notes"
    not_image.mkdir()
    (not_image / "README").write_text("not an image\n")
    for directory in (not_image, tmp_path / "missing"):
        env = make_env(spec_of(directory), tmp_path / "prefix")
        with pytest.raises(WorkflowError) as raised:
            env.hash()
        assert_docker_dir_line(raised, "docker-dir-id", directory)
        with pytest.raises(WorkflowError) as raised:
            asyncio.run(env.deploy())
        assert_docker_dir_line(raised, "docker-dir-exec", "--load-only", directory)


def test_absent_engine_is_a_workflow_error(bash_image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for engine in ("docker", "charliecloud"):
        env = make_env(spec_of(bash_image.dir), tmp_path / engine, engine=engine)
        with pytest.raises(WorkflowError) as raised:
            asyncio.run(env.deploy())
        assert_docker_dir_line(raised, "docker-dir-exec", "--engine", engine, "--load-only", bash_image.dir,
                               env={**os.environ, "PATH": str(empty)})
        with pytest.raises(WorkflowError) as raised:
            env.contains_executable(PROBE)
        assert "not installed" in str(raised.value)


def test_unreachable_registry_is_a_workflow_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket_free_port() as port:
        ref = f"docker://127.0.0.1:{port}/nothing/here:1"
        env = make_env(spec_of(ref), tmp_path / "prefix")
        with pytest.raises(WorkflowError) as raised:
            env.hash()
        assert_docker_dir_line(raised, "docker-dir-save", ref, tmp_path / "out")
    assert list((tmp_path / "prefix" / "cache").iterdir()) == [], "a failed pull leaves nothing in the cache"


class socket_free_port:
    """A loopback port nothing listens on while the block runs (bound, not listening)."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_step_runs_as_docker_dir_exec_runs_it(bash_image, tmp_path, monkeypatch):
    """The decorated command: the step's exit status comes back, files it writes in the
    working directory are the caller's, settings' mounts and variables reach it, and only
    the image answers contains_executable."""
    monkeypatch.chdir(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "in.txt").write_text("mounted\n")
    monkeypatch.setenv("SDM_PASSED", "from-host")
    env = make_env(spec_of(bash_image.dir), tmp_path / "prefix", mounts=[f"{extra}:/extra"],
                   env=["SDM_SET=set", "SDM_PASSED"])
    step = env.managed_decorate_shellcmd('set -euo pipefail; cat /extra/in.txt > out.txt; '
                                         'echo "$SDM_SET $SDM_PASSED" >> out.txt; exit 7')
    assert subprocess.run(["bash", "-c", step]).returncode == 7
    assert (tmp_path / "out.txt").read_text() == "mounted\nset from-host\n"
    assert (tmp_path / "out.txt").stat().st_uid == os.getuid()
    assert env.contains_executable(PROBE)
    assert not env.contains_executable("python3")  # the host has it, the image has not


def test_report_pin_and_cache_of_a_registry_image(bash_image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env(spec_of(bash_image.ref), tmp_path / "prefix")
    (report,) = env.report_software()
    assert report.version == bash_image.id
    assert re.fullmatch(re.escape(bash_image.tag) + r" \(linux/[a-z0-9]+\)", report.name), report.name
    asyncio.run(env.pin())
    assert env.pinfile.read_text() == bash_image.pinned + "\n"
    # The hash pulled it already: caching keeps that copy (no second download), as a link.
    (asset,) = asyncio.run(env.get_cache_assets())
    before = os.readlink(env.get_cache_asset_path(asset))
    asyncio.run(env.managed_cache_asset(asset))
    assert os.readlink(env.get_cache_asset_path(asset)) == before
    assert cli("docker-dir-id", env.get_cache_asset_path(asset)).stdout == bash_image.id + "\n"
    asyncio.run(env.remove_cache())
    assert [p.name for p in env.cache_path.iterdir()] == [plugin.STORE]
    assert list((env.cache_path / plugin.STORE).iterdir()) == []


def test_snakemake_finds_the_plugin_and_its_settings():
    """Snakemake's plugin registry (as its CLI uses it) lists docker-dir and parses its options."""
    import argparse

    from snakemake_interface_software_deployment_plugins.registry import SoftwareDeploymentPluginRegistry

    registered = SoftwareDeploymentPluginRegistry().get_plugin("docker-dir")
    assert registered.common_settings.provides == "docker_dir"
    parser = argparse.ArgumentParser()
    registered.register_cli_args(parser, "software deployment")
    args = parser.parse_args(["--sdm-docker-dir-engine", "charliecloud", "--sdm-docker-dir-env", "A=1", "B",
                              "--sdm-docker-dir-mounts", "/data:/data"])
    assert registered.get_settings(args) == plugin.Settings(engine="charliecloud", mounts=["/data:/data"],
                                                            env=["A=1", "B"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--sdm-docker-dir-engine", "rkt"])
