"""docker-dir-exec with the real engine: hot and cold paths, tags, prune, parallel loads,
read-only and git-annex dirs, run defaults and options, shebang use, exit codes, errors.

Signals and engine faults are in test_exec_faults.py.
"""
import json
import os
import pty
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from conftest import (BIN, REPO, cli, cli_on_tty, count_events, docker, image_id_of, manifest, one_line_error,
                      private_ref, raw_save)

from docker_dir.application.exec import ExecOptions, run_request
from docker_dir.engine import get_engine
from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_ENGINE_FAILED, EXIT_ENGINE_UNAVAILABLE,
                               EXIT_NOT_LOADED, EXIT_USAGE)


def test_runs_command_in_image(images, saved, tmp_path):
    proc = cli("docker-dir-exec", saved.multi, "sh", "-c", "wc -c < /data/b.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(4 << 20)


@pytest.mark.parametrize("status", [0, 1, 42, 127])
def test_exit_status_passes_through(saved, tmp_path, status):
    proc = cli("docker-dir-exec", saved.one, "sh", "-c", f"exit {status}", cwd=tmp_path)
    assert proc.returncode == status, proc.stderr


def test_missing_command_gives_127(saved, tmp_path):
    assert cli("docker-dir-exec", saved.one, "no-such-command", cwd=tmp_path).returncode == 127


def test_hot_path_imports_only_what_it_needs(saved, tmp_path):
    """No plumbum; and, with a docker client config present, none of json, argparse or
    socket.py, whose imports would cost as much as the rest of exec's own work, nor the
    registry client (ssl, http.client)."""
    assert cli("docker-dir-exec", "--load-only", saved.one).returncode == 0
    client_config = tmp_path / "docker-config"
    client_config.mkdir()
    (client_config / "config.json").write_text('{"auths": {}, "currentContext": "default"}')
    env = dict(os.environ, DOCKER_CONFIG=str(client_config))
    proc = subprocess.run([sys.executable, "-X", "importtime", str(BIN / "docker-dir-exec"), str(saved.one), "true"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "docker_dir.cli.exec" in imported  # importtime did report
    assert not imported & {"plumbum", "json", "argparse", "socket", "ssl", "http.client", "docker_dir.registry",
                           "docker_dir.application.pull"}, imported


def test_stdin_passes_through(saved, tmp_path):
    proc = cli("docker-dir-exec", saved.one, "sh", "-c", "tr a-z A-Z", cwd=tmp_path, input="hello\n")
    assert proc.stdout == "HELLO\n"


def test_cwd_is_mounted_at_same_path_and_is_workdir(saved, tmp_path):
    proc = cli("docker-dir-exec", saved.one, "sh", "-c", "pwd; echo made > out.txt", cwd=tmp_path)
    assert proc.stdout.strip() == str(tmp_path), proc.stderr
    assert (tmp_path / "out.txt").read_text() == "made\n"
    assert (tmp_path / "out.txt").stat().st_uid == os.getuid()


def test_default_user_is_caller(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = get_engine("docker").run_command(run_request(ExecOptions(str(tmp_path), ["true"]), "img")).argv
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert {"--rm", "--interactive", "--init"} <= set(argv)
    assert argv[argv.index("--pull") + 1] == "never"
    assert argv[-2:] == ["img", "true"]


def test_options_reach_the_engine(saved, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "f").write_text("from volume\n")
    proc = cli("docker-dir-exec", "-v", f"{extra}:/extra:ro", "-e", "GREETING=hi", "-w", "/extra",
               "--user", "1234:1234", "--network", "none", "--engine-arg=--label=docker-dir-test=opt",
               saved.one, "sh", "-c", 'echo "$GREETING $(id -u) $(pwd) $(cat f)"; ls /sys/class/net',
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, *nets = proc.stdout.split("\n")
    assert first == "hi 1234 /extra from volume"
    assert [n for n in nets if n] == ["lo"]  # --network none
    entry = cli("docker-dir-exec", "--entrypoint", "echo", saved.one, "via", "entrypoint", cwd=tmp_path)
    assert entry.stdout == "via entrypoint\n", entry.stderr


def test_double_dash_separates_command(saved, tmp_path):
    proc = cli("docker-dir-exec", saved.one, "--", "echo", "-v", "--help", cwd=tmp_path)
    assert proc.stdout == "-v --help\n", proc.stderr


def test_no_tty_when_stdout_redirected(saved, tmp_path):
    """stdin is a terminal, stdout a pipe: no --tty, so no CRLF in the output."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, str(BIN / "docker-dir-exec"), str(saved.one), "sh", "-c",
                               "echo a; echo b; [ -t 1 ] && echo tty || echo notty"],
                              stdin=slave, capture_output=True, cwd=tmp_path, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"a\nb\nnotty\n"


# -- load -----------------------------------------------------------------

def test_cold_exec_loads_under_private_tag_and_survives_prune(cold_dir, tmp_path):
    d, image = cold_dir()
    assert image_id_of(image) is None
    since = time.time()
    proc = cli("docker-dir-exec", d, "echo", "ok", cwd=tmp_path)
    assert proc.stdout == "ok\n", proc.stderr
    assert count_events("load", since, image=image) == 1
    assert image_id_of(private_ref(image)) == image
    label = docker("image", "inspect", "--format", '{{index .Config.Labels "docker-dir-test"}}', image).stdout.strip()
    docker("image", "prune", "-f", "--filter", f"label=docker-dir-test={label}")
    assert image_id_of(private_ref(image)) == image, "the loaded image must not be dangling"
    since = time.time()
    assert cli("docker-dir-exec", d, "true", cwd=tmp_path).returncode == 0
    assert count_events("load", since, image=image) == 0


def test_load_never_moves_a_user_tag(fresh_image, tmp_path):
    tag = f"fixture/bb-{uuid.uuid4().hex[:8]}:1"
    saved_image = fresh_image(tag)
    d = raw_save(tag, tmp_path / "img")
    assert manifest(d)[0]["RepoTags"] == [tag]
    other = fresh_image()
    docker("tag", other, tag)  # the user's tag now names another image
    docker("rmi", "-f", saved_image)  # and the saved one is gone from the engine
    before = docker("image", "inspect", tag).stdout
    proc = cli("docker-dir-exec", d, "true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert docker("image", "inspect", tag).stdout == before
    assert image_id_of(tag) == other
    assert image_id_of(private_ref(saved_image)) == saved_image


def test_image_saved_from_this_engine_is_tagged_not_loaded(fresh_image, tmp_path):
    image = fresh_image(f"fixture/present-{uuid.uuid4().hex[:8]}:1")
    d = raw_save(image, tmp_path / "img")
    since = time.time()
    assert cli("docker-dir-exec", d, "true", cwd=tmp_path).returncode == 0
    assert count_events("load", since, image=image) == 0
    assert image_id_of(private_ref(image)) == image


def test_eight_parallel_cold_execs_load_once(cold_dir, tmp_path):
    d, image = cold_dir()
    since = time.time()

    def one(i):
        return cli("docker-dir-exec", d, "echo", f"job {i}", cwd=tmp_path)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, proc in enumerate(results):
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"job {i}\n"
    assert count_events("load", since, image=image) == 1


def test_no_load_and_load_only(cold_dir, tmp_path):
    d, image = cold_dir()
    line = one_line_error(cli("docker-dir-exec", "--no-load", d, "true", cwd=tmp_path), EXIT_NOT_LOADED)
    assert "--no-load" in line
    assert image_id_of(private_ref(image)) is None
    proc = cli("docker-dir-exec", "--load-only", "-q", d)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert image_id_of(private_ref(image)) == image
    assert cli("docker-dir-exec", "--no-load", d, "true", cwd=tmp_path).returncode == 0


def test_load_progress_on_a_tty(cold_dir, tmp_path):
    """The files to send are the total; percent; one final line kept."""
    d, image = cold_dir()
    status, out = cli_on_tty("docker-dir-exec", "--load-only", f"{d}/", cwd=tmp_path)
    assert status == 0, out
    text = out.decode().replace("\x1b[K", "")
    final = text.replace("\r", "\n").strip().splitlines()[-1]
    sent = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.name != "manifest.json"
               and f.name not in ("VERSION", "json", "repositories"))
    total = f"{sent / 1e6:.1f} MB" if sent >= 1e6 else f"{sent / 1e3:.1f} kB"
    assert final.startswith(f"loading {d}: ") and f"of {total} (100%)" in final, (final, total)
    assert text.endswith("\n")


# -- read-only and git-annex directories -----------------------------------

@pytest.fixture
def read_only_copy(tmp_path):
    """Factory: a read-only bind mount of a directory (root ignores mode bits)."""
    mounts = []

    def make(src):
        target = tmp_path / f"ro-{len(mounts)}"
        target.mkdir()
        subprocess.run(["mount", "--bind", str(src), str(target)], check=True)
        mounts.append(target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        return target

    yield make
    for target in mounts:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="read-only bind mounts need root")
def test_read_only_dir_cold_load(cold_dir, read_only_copy, tmp_path):
    d, image = cold_dir()
    subprocess.run(["chmod", "-R", "a-w", str(d)], check=True)
    ro = read_only_copy(d)
    proc = cli("docker-dir-exec", ro, "echo", "ro ok", cwd=tmp_path)
    assert proc.stdout == "ro ok\n", proc.stderr
    assert image_id_of(private_ref(image)) == image


def git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)


@pytest.fixture
def annexed(cold_dir, tmp_path):
    """An image directory inside a git-annex repository (every file a link into .git/annex)."""
    d, image = cold_dir("src")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "annex", "init", "-q")
    shutil.copytree(d, repo / "img")
    git(repo, "annex", "add", "-q", "img")
    git(repo, "commit", "-q", "-m", "image")
    assert os.path.islink(repo / "img" / "manifest.json")
    return SimpleNamespace(repo=repo, dir=repo / "img", image=image)


def test_git_annex_tree(annexed, tmp_path):
    proc = cli("docker-dir-exec", annexed.dir, "echo", "annexed", cwd=tmp_path)
    assert proc.stdout == "annexed\n", proc.stderr
    assert image_id_of(private_ref(annexed.image)) == annexed.image


def test_dropped_content_is_reported_and_nothing_is_loaded(annexed, tmp_path):
    layers = manifest(annexed.dir)[0]["Layers"]
    git(annexed.repo, "annex", "drop", "-q", "--force", *[f"img/{layer}" for layer in layers])
    since = time.time()
    line = one_line_error(cli("docker-dir-exec", annexed.dir, "true", cwd=tmp_path), EXIT_CONTENT_MISSING)
    assert f"{len(layers)} of" in line and "datalad get" in line and "git annex get" in line
    assert count_events("load", since, image=annexed.image) == 0
    assert image_id_of(private_ref(annexed.image)) is None


def test_link_leaving_the_repository_is_refused(annexed, tmp_path):
    layer = manifest(annexed.dir)[0]["Layers"][0]
    outside = tmp_path / "outside.tar"
    shutil.copy(annexed.dir / layer, outside)
    os.unlink(annexed.dir / layer)
    os.symlink(outside, annexed.dir / layer)
    line = one_line_error(cli("docker-dir-exec", annexed.dir, "true", cwd=tmp_path), EXIT_BAD_DIR)
    assert layer in line and "outside" in line


def test_link_leaving_dir_outside_git_is_refused(cold_dir, tmp_path):
    d, _ = cold_dir()
    layer = manifest(d)[0]["Layers"][0]
    shutil.move(d / layer, tmp_path / "elsewhere.tar")
    os.symlink(tmp_path / "elsewhere.tar", d / layer)
    line = one_line_error(cli("docker-dir-exec", d, "true", cwd=tmp_path), EXIT_BAD_DIR)
    assert layer in line


# -- shebang ----------------------------------------------------------------

@pytest.fixture
def venv_path_env():
    """PATH with the venv's installed docker-dir-exec (pip install -e) first."""
    bindir = os.path.dirname(sys.executable)
    assert os.path.exists(os.path.join(bindir, "docker-dir-exec")), "pip install -e . did not install the scripts"
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


def test_shebang_with_dir(saved, tmp_path, venv_path_env):
    script = tmp_path / "scripts" / "hello"
    script.parent.mkdir()
    script.write_text(f"#!/usr/bin/env -S docker-dir-exec {saved.one} sh\necho \"in image: $(pwd) $1\"\n")
    script.chmod(0o755)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    proc = subprocess.run([str(script), "arg1"], capture_output=True, text=True, cwd=elsewhere,
                          env=venv_path_env)
    assert proc.stdout == f"in image: {elsewhere} arg1\n", proc.stderr


def test_shebang_with_env(saved, tmp_path, venv_path_env):
    script = tmp_path / "hello-env"
    script.write_text("#!/usr/bin/env -S docker-dir-exec sh\necho \"env form $#\"\n")
    script.chmod(0o755)
    env = dict(venv_path_env, DOCKER_DIR_IMAGE=str(saved.one))
    proc = subprocess.run([str(script), "a", "b"], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.stdout == "env form 2\n", proc.stderr


# -- errors -----------------------------------------------------------------

def test_engine_missing(saved, tmp_path):
    env = dict(os.environ, PATH="/nonexistent")
    line = one_line_error(cli("docker-dir-exec", "--engine", "docker", saved.one, "true", env=env, cwd=tmp_path),
                          EXIT_ENGINE_UNAVAILABLE)
    assert "not installed" in line


def test_daemon_down(saved, tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    line = one_line_error(cli("docker-dir-exec", saved.one, "true", env=env, cwd=tmp_path),
                          EXIT_ENGINE_UNAVAILABLE)
    assert "start the daemon" in line


def test_corrupt_layer_is_rejected_naming_the_dir(cold_dir, tmp_path):
    d, image = cold_dir()
    layer = d / manifest(d)[0]["Layers"][0]
    with open(layer, "r+b") as stream:
        stream.seek(2000)
        byte = stream.read(1)
        stream.seek(2000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    line = one_line_error(cli("docker-dir-exec", d, "true", cwd=tmp_path), EXIT_ENGINE_FAILED)
    assert str(d) in line
    assert image_id_of(private_ref(image)) is None


def test_unknown_option(saved, tmp_path):
    line = one_line_error(cli("docker-dir-exec", "--bogus", saved.one, "true", cwd=tmp_path), EXIT_USAGE)
    assert "--bogus" in line
    one_line_error(cli("docker-dir-exec"), EXIT_USAGE)


def test_not_an_image_dir(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x").write_text("x")
    line = one_line_error(cli("docker-dir-exec", tmp_path / "plain", "true", cwd=tmp_path), EXIT_BAD_DIR)
    assert "manifest.json" in line


def test_load_stream_holds_only_the_selected_image(images, tmp_path):
    """What exec sends to `load`: a manifest naming only the private tag, and only the
    files of the selected image, however much else DIR holds."""
    import io
    import json
    import tarfile

    from docker_dir.format.imagedir import ImageDir
    from docker_dir.format.loadstream import write_load_stream

    d = raw_save([images.one, images.multi], tmp_path / "both")
    (d / "unrelated.bin").write_bytes(b"x" * 1000)
    saved_entry = next(e for e in manifest(d) if images.one in (e["RepoTags"] or []))
    image = ImageDir(str(d)).select(repo_tag=images.one)
    out = io.BytesIO()
    write_load_stream(image, out, ["localhost/docker-dir:abc"])
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        names = tar.getnames()
        sent = json.load(tar.extractfile("manifest.json"))
    assert sent == [{"Config": saved_entry["Config"], "RepoTags": ["localhost/docker-dir:abc"],
                     "Layers": saved_entry["Layers"]}]  # legacy names: <hex>.json, <v1 id>/layer.tar
    assert sorted(names) == sorted({"manifest.json", saved_entry["Config"], *saved_entry["Layers"]})


def test_dropped_content_is_not_needed_when_the_engine_has_the_image(fresh_image, tmp_path):
    """Content is only needed to load: an image the engine still has is just tagged."""
    image = fresh_image(f"fixture/kept-{uuid.uuid4().hex[:8]}:1")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "annex", "init", "-q")
    raw_save(image, repo / "img")
    git(repo, "annex", "add", "-q", "img")
    git(repo, "commit", "-q", "-m", "image")
    layers = manifest(repo / "img")[0]["Layers"]
    git(repo, "annex", "drop", "-q", "--force", *[f"img/{layer}" for layer in layers])
    since = time.time()
    proc = cli("docker-dir-exec", repo / "img", "echo", "tagged", cwd=tmp_path)
    assert proc.stdout == "tagged\n", proc.stderr
    assert count_events("load", since, image=image) == 0
    assert image_id_of(private_ref(image)) == image


@pytest.mark.parametrize("argv", [["img", "echo", "-v", "--help"], ["img", "--", "ls", "-l"], ["img"],
                                  ["/abs/img", "sh", "-c", "exit 3"]])
def test_command_line_without_options_parses_as_argparse_would(argv):
    from docker_dir.cli.exec import _NoOptions, _parse_options

    full = vars(_parse_options(argv))
    quick = _NoOptions(argv)
    assert {key: getattr(quick, key) for key in full} == full


# -- standard streams closed, options after DIR -------------------------------------------

@pytest.mark.parametrize("closed", [0, 1, 2], ids=["stdin", "stdout", "stderr"])
def test_closed_standard_stream_runs_as_raw_docker_does(saved, tmp_path, closed):
    """Cron, some schedulers and daemons start programs with a standard stream closed:
    `docker run -i` then exits 0, and so does docker-dir-exec (the stream is /dev/null)."""
    raw = subprocess.run(["docker", "run", "--rm", "-i", "--init", images_ref(saved), "sh", "-c", "echo hi; true"],
                         capture_output=closed != 1, preexec_fn=lambda: os.close(closed), timeout=120)
    proc = subprocess.run([sys.executable, str(BIN / "docker-dir-exec"), str(saved.one), "sh", "-c", "echo hi; true"],
                          stdout=None if closed == 1 else subprocess.PIPE,
                          stderr=None if closed == 2 else subprocess.PIPE, cwd=tmp_path,
                          preexec_fn=lambda: os.close(closed), timeout=120)
    assert raw.returncode == 0
    assert proc.returncode == 0, proc.stderr
    if closed != 2:
        assert b"Traceback" not in proc.stderr and proc.stderr == b""
    if closed != 1:
        assert proc.stdout == b"hi\n"


def images_ref(saved):
    """The ID of the image saved in saved.one, for raw docker."""
    return json.loads((saved.one / "manifest.json").read_text())[0]["Config"].split(".")[0]


@pytest.mark.parametrize("where", ["after the command", "as the command's argument"])
def test_debug_after_dir_belongs_to_the_command(tmp_path, where):
    """Only docker-dir's own options count: a `--debug` in CMD leaves errors one line."""
    argv = [tmp_path / "missing", "tool", "--debug"] if where == "after the command" else \
        [tmp_path / "missing", "--", "--debug"]
    line = one_line_error(cli("docker-dir-exec", *argv), EXIT_BAD_DIR)
    assert "no such directory" in line
    traced = cli("docker-dir-exec", "--debug", tmp_path / "missing", "tool")
    assert traced.returncode != 0 and "Traceback" in traced.stderr
