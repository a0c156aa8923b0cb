"""The engine contract (engine/base.py) and what each engine builds from a RunRequest.

Every engine in ENGINES implements every method the application layer calls; a
capability an engine lacks is declared (can_save, can_tag), not discovered by an exception.
The run argv of each engine is checked here directly, option by option: the
end-to-end tests (test_exec.py, test_charliecloud.py) show that the engines accept it.
No engine runs here: argv building needs none.
"""
import ast
import os
from pathlib import Path

import pytest

from conftest import REPO

from docker_dir.engine import ENGINES, engine_class
from docker_dir.engine.base import Engine, Mount, RunRequest
from docker_dir.errors import UsageError

SAVE_METHODS = ("inspect_id", "image_size", "save")
TAG_METHODS = ("stored_digest", "tag")


def application_calls():
    """Names of the methods application/*.py call on an object named `engine`."""
    called = set()
    for path in (REPO / "lib" / "docker_dir" / "application").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "engine"):
                called.add(node.func.attr)
    return called


def test_the_contract_declares_every_method_the_application_calls():
    called = application_calls()
    assert {"has_image", "load", "save", "inspect_id", "image_size", "check_request", "run_command"} <= called
    for name in called:
        method = getattr(Engine, name, None)
        assert callable(method), f"application calls engine.{name}(), which Engine does not declare"
        assert method.__doc__ and len(method.__doc__.strip().splitlines()) <= 2, f"Engine.{name}: one-line docstring"


@pytest.mark.parametrize("name", ENGINES)
def test_engine_implements_the_contract(name):
    cls = engine_class(name)
    assert issubclass(cls, Engine)
    assert not cls.__abstractmethods__, f"{name} leaves {sorted(cls.__abstractmethods__)} unimplemented"
    assert cls.name == name and cls.program
    for flag, methods in (("can_save", SAVE_METHODS), ("can_tag", TAG_METHODS)):
        overridden = [m for m in methods if getattr(cls, m) is not getattr(Engine, m)]
        assert overridden == (list(methods) if getattr(cls, flag) else []), \
            f"{name}: {flag}={getattr(cls, flag)} but it implements {overridden}"


@pytest.mark.parametrize("name", [name for name in ENGINES if not engine_class(name).can_save])
def test_saving_from_an_engine_that_cannot_is_refused_by_its_declaration(name, tmp_path):
    from docker_dir.application.save import EngineImage, save

    cls = engine_class(name)
    engine = cls.__new__(cls)  # no program needed: the refusal comes before the engine is asked anything
    with pytest.raises(UsageError, match="keeps no images"):
        save([EngineImage("img:1")], str(tmp_path / "out"), engine)
    assert os.listdir(tmp_path) == []


# -- run argv: docker and podman ------------------------------------------------------

def cli_engine(name, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # rootful: no socket of ours
    return engine_class(name)(binary=f"/usr/bin/{name}")


def full_request():
    return RunRequest("img:1", ["sh", "-c", "echo $X"], "/work",
                      mounts=[Mount("/work", "/work"), Mount.parse("/data:/in:ro"), Mount.parse("/cache")],
                      env=["X=1", "Y"], user="1000:1000", tty=True, network="none", entrypoint="",
                      extra_args=["--label", "a=b"])


@pytest.mark.parametrize("name", ["docker", "podman"])
def test_cli_engine_argv_carries_every_field(name, monkeypatch):
    argv = cli_engine(name, monkeypatch).run_command(full_request()).argv
    assert argv[:6] == [f"/usr/bin/{name}", "run", "--rm", "--pull", "never", "--interactive"]
    assert argv[-4:] == ["img:1", "sh", "-c", "echo $X"]
    assert argv[argv.index("--user") + 1] == "1000:1000"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"] == ["/work:/work", "/data:/in:ro", "/cache"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--env"] == ["X=1", "Y"]
    assert argv[argv.index("--workdir") + 1] == "/work"
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--entrypoint") + 1] == ""
    assert {"--tty", "--init"} <= set(argv)
    assert argv.index("--label") < argv.index("img:1")  # engine args before the image


@pytest.mark.parametrize("name", ["docker", "podman"])
def test_cli_engine_defaults(name, monkeypatch):
    request = RunRequest("img:1", [], "/w", tty=False, init=False, interactive=False)
    argv = cli_engine(name, monkeypatch).run_command(request).argv
    assert not {"--tty", "--init", "--interactive", "--network", "--entrypoint"} & set(argv)
    assert argv[-1] == "img:1"
    if name == "docker" or os.geteuid() == 0:
        assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def test_podman_rootless_keeps_the_callers_id(monkeypatch):
    engine = cli_engine("podman", monkeypatch)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv = engine.run_command(RunRequest("img:1", ["true"], "/w")).argv
    assert "--userns=keep-id" in argv and "--user" not in argv
    argv = engine.run_command(RunRequest("img:1", ["true"], "/w", user="5:5")).argv
    assert argv[argv.index("--user") + 1] == "5:5"


def test_rootless_docker_runs_as_container_root(monkeypatch, tmp_path):
    sock = tmp_path / "docker.sock"
    sock.touch()
    os.chown(sock, 1000, 1000)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    engine = engine_class("docker")(binary="/usr/bin/docker")
    assert "--user" not in engine.run_command(RunRequest("img:1", ["true"], "/w")).argv


# -- run argv: charliecloud -----------------------------------------------------------

@pytest.fixture
def ch_entry(tmp_path, monkeypatch):
    """A cache entry as an unpack leaves it (a tree with a symlinked /srv), and the engine."""
    import json

    from docker_dir.engine.charliecloud_tree import prepare_tree
    from docker_dir.format.unpack import remove_tree

    cache = tmp_path / "cache"
    monkeypatch.setenv("DOCKER_DIR_CACHE", str(cache))
    hexd = "ab" * 32
    root = cache / hexd / "root"
    (root / "opt" / "real").mkdir(parents=True)
    (root / "srv").symlink_to("/opt/real")
    prepare_tree(str(root), ["PATH=/bin", "MULTI=a\nb"], remove_tree)
    (cache / hexd / "run.json").write_text(json.dumps(
        {"Entrypoint": ["/entry"], "Cmd": ["default"], "WorkingDir": "/app", "Env": ["MULTI=a\nb"]}))
    os.chmod(cache, 0o700)
    engine = engine_class("charliecloud")(binary="/usr/bin/ch-run")
    return engine, hexd, root


def tree_state(root):
    return sorted((str(p.relative_to(root)), p.is_symlink() or p.is_dir()) for p in Path(root).rglob("*"))


def test_charliecloud_argv_builds_without_changing_anything(ch_entry, tmp_path, monkeypatch):
    engine, hexd, root = ch_entry
    host = tmp_path / "host"
    host.mkdir()
    monkeypatch.delenv("USER", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    request = RunRequest(hexd, ["sh", "-c", "x"], str(host),
                         mounts=[Mount(str(host), str(host)), Mount(str(host), "/srv/data")],
                         env=["X=1", "UNSET_ME"], user="1000:1001", tty=True, extra_args=["--quiet"])
    before, entry_mtime = tree_state(root), os.stat(root.parent).st_mtime
    command = engine.run_command(request)
    assert tree_state(root) == before and os.stat(root.parent).st_mtime == entry_mtime
    assert "USER" not in os.environ and command.env["USER"]
    argv = command.argv
    assert argv[:3] == ["/usr/bin/ch-run", "--unset-env=*", "--env-no-expand"]
    assert "--set-env=TERM='xterm'" in argv
    assert "--set-env" in argv and "--set-env=MULTI='a\nb'" in argv
    assert "--set-env=X='1'" in argv and "--unset-env=UNSET_ME" in argv
    assert argv[argv.index("--uid") + 1] == "1000" and argv[argv.index("--gid") + 1] == "1001"
    # /srv is a link to /opt/real in the image: ch-run is handed the path without it
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"] == [f"{host}:/opt/real/data",
                                                                          f"{host}:{host}"]  # shallow first
    assert argv[argv.index("--cd") + 1] == str(host)
    assert "--private-tmp" in argv
    assert argv[argv.index(str(root)) - 1] == "--quiet"
    assert argv[argv.index(str(root)) + 1:] == ["--", "/entry", "sh", "-c", "x"]


def test_charliecloud_prepare_makes_the_mount_points_and_workdir(ch_entry, tmp_path):
    engine, hexd, root = ch_entry
    host = tmp_path / "host"
    host.mkdir()
    (host / "file").write_text("x")
    request = RunRequest(hexd, [], "", mounts=[Mount(str(host), "/srv/data"), Mount(str(host / "file"), "/etc/f"),
                                               Mount(str(host), "/tmp/below-ch-run")])
    engine.prepare_run(request)
    assert (root / "opt" / "real" / "data").is_dir()
    assert (root / "etc" / "f").is_file()
    assert not (root / "tmp" / "below-ch-run").exists()  # ch-run mounts /tmp itself
    assert (root / "app").is_dir()  # the image's WorkingDir
    argv = engine.run_command(request).argv
    assert argv[argv.index("--cd") + 1] == "/app"
    assert argv[-3:] == ["--", "/entry", "default"]


@pytest.mark.parametrize("request_args, words", [
    ({"network": "bridge"}, "no network isolation"),
    ({"user": "alice"}, "numeric UID"),
    ({"env": ["=x"]}, "no variable name"),
    ({"mounts": [Mount.parse("/named")]}, "anonymous volumes"),
    ({"mounts": [Mount.parse("vol:/x")]}, "named volumes"),
    ({"mounts": [Mount("/", "/x", "ro")]}, "read-write only"),
    ({"mounts": [Mount("/nonexistent-src", "/x")]}, "does not exist"),
    ({"extra_args": ["-w"]}, "writable"),
])
def test_charliecloud_refuses_what_it_cannot_do(ch_entry, request_args, words):
    engine, hexd, _ = ch_entry
    with pytest.raises(UsageError, match=words):
        engine.check_request(RunRequest(hexd, ["true"], "/", **request_args))
