"""docker-dir-id on real saved directories, content dropped, selection, verify, -o, --json, bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BIN, cli, manifest, one_line_error, raw_save

import docker_dir
from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_SELECTION, EXIT_USAGE, EXIT_VERIFY)


def copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_prints_config_digest_of_legacy_layout(images, saved):
    proc = cli("docker-dir-id", saved.one)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == images.one_id + "\n"
    assert cli("docker-dir-id", saved.multi).stdout == images.multi_id + "\n"


def test_python_api(images, saved):
    assert docker_dir.image_id(str(saved.one)) == images.one_id
    assert docker_dir.image_id(str(saved.two), repo_tag=images.two[1]) == images.two_id


def test_untagged_archive(images, saved):
    assert manifest(saved.untagged)[0]["RepoTags"] is None
    assert cli("docker-dir-id", saved.untagged).stdout == images.untagged_id + "\n"


def test_works_with_layers_deleted_or_dangling(images, saved, tmp_path):
    d = copy(saved.multi, tmp_path / "img")
    layers = manifest(d)[0]["Layers"]
    os.unlink(d / layers[0])
    for layer in layers[1:]:
        os.unlink(d / layer)
        os.symlink("/nonexistent/.git/annex/objects/XX/" + os.path.basename(layer), d / layer)
    proc = cli("docker-dir-id", d)
    assert proc.stdout == images.multi_id + "\n", proc.stderr


def test_dangling_config_digest_from_name(images, saved, tmp_path):
    d = copy(saved.one, tmp_path / "img")
    config = manifest(d)[0]["Config"]
    os.unlink(d / config)
    os.symlink(".git/annex/objects/gone", d / config)
    assert cli("docker-dir-id", d).stdout == images.one_id + "\n"


def test_no_daemon_needed(images, saved):
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent.sock", PATH="/nonexistent")
    proc = subprocess.run([sys.executable, str(BIN / "docker-dir-id"), str(saved.one)], capture_output=True,
                          text=True, env=env)
    assert proc.stdout == images.one_id + "\n", proc.stderr


def test_imports_only_what_it_needs(saved):
    """No plumbum, none of the modules whose import would double the start-up time, and
    nothing of the registry client (docker-dir-save docker://)."""
    code = ("import sys, runpy; sys.argv=['docker-dir-id', %r]\n"
            "try: runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit: pass\n"
            "assert 'plumbum' not in sys.modules, 'plumbum imported'\n"
            "assert 'subprocess' not in sys.modules, 'subprocess imported'\n"
            "assert 'argparse' not in sys.modules, 'argparse imported'\n"
            "assert 'json' not in sys.modules, 'json imported'\n"
            "pulling = [m for m in sys.modules if m.startswith(('docker_dir.registry', 'docker_dir.application.pull',"
            " 'http.', 'ssl'))]\n"
            "assert not pulling, f'{pulling} imported'\n") % (str(saved.one), str(BIN / "docker-dir-id"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- selection --------------------------------------------------------------

@pytest.fixture(scope="module")
def multi_image_dir(images, tmp_path_factory):
    """One directory holding two images, as `docker save A B` writes it."""
    d = tmp_path_factory.mktemp("both")
    return raw_save([images.one, *images.two], d)


def test_several_images_need_a_selector(images, multi_image_dir):
    line = one_line_error(cli("docker-dir-id", multi_image_dir), EXIT_SELECTION)
    assert images.one in line and images.two[0] in line
    assert images.one_id[7:19] in line and images.two_id[7:19] in line


def test_select_by_repo_tag(images, multi_image_dir):
    assert cli("docker-dir-id", "--repo-tag", images.two[1], multi_image_dir).stdout == images.two_id + "\n"
    assert cli("docker-dir-id", "--repo-tag", images.one, multi_image_dir).stdout == images.one_id + "\n"


@pytest.mark.parametrize("form", ["hex12", "sha256:hex12", "full"])
def test_select_by_config_prefix(images, multi_image_dir, form):
    hexid = images.two_id[7:]
    prefix = {"hex12": hexid[:12], "sha256:hex12": "sha256:" + hexid[:12], "full": images.two_id}[form]
    proc = cli("docker-dir-id", "--config", prefix, multi_image_dir)
    assert proc.stdout == images.two_id + "\n", proc.stderr


def test_select_by_config_prefix_in_blobs_form(images, saved, tmp_path):
    """The same prefix works when Config is blobs/sha256/<hex> (Docker >= 25 layout)."""
    d = copy(saved.one, tmp_path / "img")
    data = manifest(d)
    config = data[0]["Config"]
    (d / "blobs" / "sha256").mkdir(parents=True)
    os.rename(d / config, d / "blobs" / "sha256" / config[:-5])
    data[0]["Config"] = "blobs/sha256/" + config[:-5]
    (d / "manifest.json").write_text(json.dumps(data))
    proc = cli("docker-dir-id", "--config", "sha256:" + images.one_id[7:19], d)
    assert proc.stdout == images.one_id + "\n", proc.stderr


def test_selector_matching_nothing(images, multi_image_dir):
    line = one_line_error(cli("docker-dir-id", "--repo-tag", "nope:1", multi_image_dir), EXIT_SELECTION)
    assert "nope:1" in line and images.one in line
    one_line_error(cli("docker-dir-id", "--config", "ffffffffffff", multi_image_dir), EXIT_SELECTION)


# -- verify -----------------------------------------------------------------

def test_verify_passes_on_intact_dir(images, saved):
    assert cli("docker-dir-id", "--verify", saved.multi).stdout == images.multi_id + "\n"


def flip_byte(path, offset=1000):
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0xFF]))


def test_verify_catches_corrupt_layer(saved, tmp_path):
    d = copy(saved.multi, tmp_path / "img")
    layer = manifest(d)[0]["Layers"][-1]
    flip_byte(d / layer)
    line = one_line_error(cli("docker-dir-id", "--verify", d), EXIT_VERIFY)
    assert layer in line
    # without --verify the ID is still printed: only the config is read
    assert cli("docker-dir-id", d).returncode == 0


def test_verify_catches_corrupt_config(saved, tmp_path):
    d = copy(saved.one, tmp_path / "img")
    config = manifest(d)[0]["Config"]
    text = (d / config).read_text()
    (d / config).write_text(text.replace('"architecture"', '"architecturE"'))
    line = one_line_error(cli("docker-dir-id", "--verify", d), EXIT_VERIFY)
    assert config in line


def test_verify_reports_missing_content(saved, tmp_path):
    d = copy(saved.multi, tmp_path / "img")
    layer = manifest(d)[0]["Layers"][0]
    os.unlink(d / layer)
    os.symlink("../.git/annex/objects/gone", d / layer)
    line = one_line_error(cli("docker-dir-id", "--verify", d), EXIT_CONTENT_MISSING)
    assert "not present" in line and "datalad get" in line and "git annex get" in line


# -- output -----------------------------------------------------------------

def test_output_file_written_only_when_changed(images, saved, tmp_path):
    out = tmp_path / "image.id"
    assert cli("docker-dir-id", "-o", out, saved.one).returncode == 0
    assert out.read_text() == images.one_id + "\n"
    old = 1_000_000_000
    os.utime(out, (old, old))
    assert cli("docker-dir-id", "--output", out, saved.one).returncode == 0
    assert out.stat().st_mtime == old, "unchanged ID must keep the stamp's mtime"
    assert cli("docker-dir-id", "-o", out, saved.multi).returncode == 0
    assert out.read_text() == images.multi_id + "\n"
    assert out.stat().st_mtime > old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.id"], "no temp file left"


def test_json(images, saved):
    proc = cli("docker-dir-id", "--json", saved.multi)
    data = json.loads(proc.stdout)
    assert data["id"] == images.multi_id
    assert data["repo_tags"] == [images.multi]
    assert len(data["layers"]) == len(manifest(saved.multi)[0]["Layers"]) >= 3
    assert all(d.startswith("sha256:") for d in data["layers"])
    assert data["size"] > 8 << 20
    assert data["manifest_digest"] is None  # legacy layout has no OCI manifest


# -- bad input --------------------------------------------------------------

def write_manifest(d, content):
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(content)
    return d


@pytest.mark.parametrize("case, code, words", [
    ("missing", EXIT_BAD_DIR, "no such directory"),
    ("file", EXIT_BAD_DIR, "not a directory"),
    ("empty", EXIT_BAD_DIR, "empty"),
    ("no-manifest", EXIT_BAD_DIR, "no manifest.json"),
    ("malformed", EXIT_BAD_DIR, "malformed JSON"),
    ("not-list", EXIT_BAD_DIR, "not a list"),
    ("no-config", EXIT_BAD_DIR, "no Config"),
    ("dotdot", EXIT_BAD_DIR, "leaves the image directory"),
    ("absolute", EXIT_BAD_DIR, "leaves the image directory"),
    ("symlink-out", EXIT_BAD_DIR, "outside the image directory"),
])
def test_bad_input(tmp_path, case, code, words):
    d = tmp_path / "img"
    if case == "file":
        d.write_text("x")
    elif case == "empty":
        d.mkdir()
    elif case == "no-manifest":
        d.mkdir()
        (d / "other").write_text("x")
    elif case == "malformed":
        write_manifest(d, '[{"Config": ')
    elif case == "not-list":
        write_manifest(d, '{"Config": "a.json"}')
    elif case == "no-config":
        write_manifest(d, '[{"RepoTags": ["a:b"], "Layers": []}]')
    elif case == "dotdot":
        (tmp_path / "x").write_text("{}")
        write_manifest(d, '[{"Config": "../x", "Layers": []}]')
    elif case == "absolute":
        write_manifest(d, '[{"Config": "/etc/hostname", "Layers": []}]')
    elif case == "symlink-out":
        write_manifest(d, '[{"Config": "c.json", "Layers": []}]')
        os.symlink("/etc/hostname", d / "c.json")
    line = one_line_error(cli("docker-dir-id", d), code)
    assert words in line
    assert line.startswith("docker-dir-id: ")


def test_usage_errors_exit_2(saved):
    line = one_line_error(cli("docker-dir-id", "--bogus", saved.one), EXIT_USAGE)
    assert "--bogus" in line
    one_line_error(cli("docker-dir-id"), EXIT_USAGE)


def test_debug_shows_traceback(tmp_path):
    proc = cli("docker-dir-id", "--debug", tmp_path / "missing")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# -- what is missing: dropped content (66) or a broken directory (65) ---------------------

@pytest.mark.parametrize("how, code, words", [
    ("symlink loop", EXIT_BAD_DIR, "symlink loop"),
    ("dangling link elsewhere", EXIT_BAD_DIR, "dangling symlink"),
    ("deleted", EXIT_BAD_DIR, "missing"),
    ("dangling link into an annex", EXIT_CONTENT_MISSING, "datalad get"),
    ("unlocked annex pointer", EXIT_CONTENT_MISSING, "datalad get"),
])
def test_absent_layer_is_content_missing_only_when_git_annex_would_provide_it(cold_dir, tmp_path, how, code,
                                                                             words):
    d, _ = cold_dir()
    layer = d / manifest(d)[0]["Layers"][0]
    layer.unlink()
    if how == "symlink loop":
        os.symlink(layer.name, layer)
    elif how == "dangling link elsewhere":
        os.symlink("../gone/elsewhere.tar", layer)
    elif how == "dangling link into an annex":
        os.symlink("../.git/annex/objects/Xx/Yy/SHA256E-s1--ab/SHA256E-s1--ab", layer)
    elif how == "unlocked annex pointer":
        layer.write_text("/annex/objects/SHA256E-s10240--" + "a" * 64 + "\n")
    line = one_line_error(cli("docker-dir-id", "--verify", d), code)
    assert words in line, line
    exec_line = one_line_error(cli("docker-dir-exec", d, "true", cwd=tmp_path), code)  # cold: needs the layers
    assert words in exec_line, exec_line
    assert cli("docker-dir-id", d).returncode == 0  # the ID needs no layer


# -- every command, the same verdict on a path the manifest names -------------------------

@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "a\x00b", "\ud800", "x/../../y", "a\nb"])
def test_a_bad_layer_path_gets_the_same_verdict_from_every_command(saved, tmp_path, bad):
    d = copy(saved.one, tmp_path / "img")
    entries = manifest(d)
    entries[0]["Layers"].append(bad)
    (d / "manifest.json").write_text(json.dumps(entries))  # \ud800 and NUL as JSON escapes
    for options in ([], ["--json"], ["--verify"]):
        one_line_error(cli("docker-dir-id", *options, d), EXIT_BAD_DIR)
    one_line_error(cli("docker-dir-exec", "--engine", "docker", d, "true",
                       env=dict(os.environ, DOCKER_HOST="unix:///nonexistent.sock")), EXIT_BAD_DIR)


def test_a_huge_manifest_is_refused_before_it_is_read(saved, tmp_path):
    """78 MB of manifest took seconds and 585 MB of memory to parse; refused unread now:
    what shows it is the peak memory, far below the file's size (speed is bench's)."""
    d = copy(saved.one, tmp_path / "img")
    entry = manifest(d)[0]
    with open(d / "manifest.json", "w") as out:  # written in pieces: a 78 MB string here would
        out.write(json.dumps([entry])[:-3])  # make this process (and its forks) as large
        for _ in range(1200):
            out.write(', "' + '", "'.join(["x" * 64 + "/layer.tar"] * 1000) + '"')
        out.write("]}]")
    assert (d / "manifest.json").stat().st_size > 78 << 20
    line = one_line_error(cli("docker-dir-id", d), EXIT_BAD_DIR)
    assert "larger than 16 MiB" in line
    # Its peak memory, measured by a small parent of its own (pytest's children inherit
    # pytest's size in their peak until they exec).
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    peak_kb = int(subprocess.run([sys.executable, "-c", measure, sys.executable, str(BIN / "docker-dir-id"), str(d)],
                                 capture_output=True, text=True, check=True).stdout)
    assert peak_kb < 60_000, peak_kb


def _closing(fd):
    """A preexec_fn closing `fd` in the child: a program started with it closed (`>&-`)."""
    return lambda: os.close(fd)


def test_closed_stdout_is_an_error_not_a_silent_success(saved):
    proc = subprocess.run([sys.executable, str(BIN / "docker-dir-id"), str(saved.one)], stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, preexec_fn=_closing(1))
    assert proc.returncode == 73, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "standard output is closed" in proc.stderr


def test_write_error_on_stdout_is_an_error(saved):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, str(BIN / "docker-dir-id"), str(saved.one)], stdout=full,
                              stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 73, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "No space left" in proc.stderr


def test_closed_stderr_and_stdin_change_nothing(images, saved):
    proc = subprocess.run([sys.executable, str(BIN / "docker-dir-id"), str(saved.one)], stdout=subprocess.PIPE,
                          text=True, preexec_fn=lambda: (os.close(0), os.close(2)))
    assert (proc.returncode, proc.stdout) == (0, images.one_id + "\n")
