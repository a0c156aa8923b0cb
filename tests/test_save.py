"""docker-dir-save with the real engine: references, determinism, output, existing DIR, errors.

Hostile archives and interruptions are in test_save_hostile.py and test_save_faults.py.
"""
import json
import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import cli, cli_on_tty, docker, manifest, one_line_error, tree_digest

from docker_dir.cli.save import normalize_ref
from docker_dir.errors import EXIT_CANT_WRITE, EXIT_ENGINE_FAILED, EXIT_ENGINE_UNAVAILABLE, EXIT_USAGE


def no_leftovers(parent):
    return [p for p in os.listdir(parent) if ".docker-dir-save-" in p]


def test_save_prints_id_and_writes_docker_save_files(images, tmp_path):
    d = tmp_path / "img"
    proc = cli("docker-dir-save", images.multi, d)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == images.multi_id + "\n"
    assert "saved" in proc.stderr
    assert manifest(d)[0]["RepoTags"] == [images.multi]
    assert cli("docker-dir-id", "--verify", d).stdout == images.multi_id + "\n"
    assert no_leftovers(tmp_path) == []


def test_quiet_silences_stderr(images, tmp_path):
    proc = cli("docker-dir-save", "-q", images.one, tmp_path / "img")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == images.one_id + "\n"


def test_two_saves_are_identical_and_dir_mtime_is_now(images, tmp_path):
    before = time.time()
    assert cli("docker-dir-save", images.multi, tmp_path / "a").returncode == 0
    time.sleep(1.1)  # tar mtimes would differ between saves; file contents must not
    assert cli("docker-dir-save", images.multi, tmp_path / "b").returncode == 0
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a == b and len(a) > 4
    assert (tmp_path / "a").stat().st_mtime >= before - 1


@pytest.mark.parametrize("ref, expected", [
    ("busybox", "busybox:latest"),
    ("fixture/bb", "fixture/bb:latest"),
    ("fixture/bb:1", "fixture/bb:1"),
    ("localhost:5000/name", "localhost:5000/name:latest"),
    ("localhost:5000/name:2", "localhost:5000/name:2"),
    ("name@sha256:" + "a" * 64, "name@sha256:" + "a" * 64),
    ("sha256:" + "b" * 64, "sha256:" + "b" * 64),
    ("c" * 64, "c" * 64),
    ("0123456789ab", "0123456789ab"),
])
def test_reference_normalization(ref, expected):
    assert normalize_ref(ref) == expected


def test_bare_name_means_latest_only(fresh_image, tmp_path):
    repo = f"fixture/latest-{uuid.uuid4().hex[:8]}"
    latest = fresh_image(f"{repo}:latest")
    fresh_image(f"{repo}:other")
    proc = cli("docker-dir-save", repo, tmp_path / "img")
    assert proc.stdout == latest + "\n", proc.stderr
    assert [e["RepoTags"] for e in manifest(tmp_path / "img")] == [[f"{repo}:latest"]]


def test_registry_port_reference(fresh_image, tmp_path):
    """A ':' in the registry part is not a tag: the adapter's check got this wrong."""
    repo = f"localhost:5000/fixture-{uuid.uuid4().hex[:8]}/p"
    image = fresh_image(f"{repo}:latest")
    proc = cli("docker-dir-save", repo, tmp_path / "img")
    assert proc.stdout == image + "\n", proc.stderr
    assert manifest(tmp_path / "img")[0]["RepoTags"] == [f"{repo}:latest"]


@pytest.mark.parametrize("form", ["full", "hex", "short"])
def test_save_by_id_is_untagged(images, tmp_path, form):
    ref = {"full": images.one_id, "hex": images.one_id[7:], "short": images.one_id[7:19]}[form]
    proc = cli("docker-dir-save", ref, tmp_path / "img")
    assert proc.stdout == images.one_id + "\n", proc.stderr
    assert manifest(tmp_path / "img")[0]["RepoTags"] is None


def test_unknown_digest_reference_is_a_clean_error(tmp_path):
    line = one_line_error(cli("docker-dir-save", "fixture/none@sha256:" + "0" * 64, tmp_path / "img"),
                          EXIT_ENGINE_FAILED)
    assert "not found" in line
    assert not (tmp_path / "img").exists()


def test_several_images_in_one_dir(images, tmp_path):
    d = tmp_path / "img"
    proc = cli("docker-dir-save", images.one, images.multi, d)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == sorted([images.one_id, images.multi_id])
    assert cli("docker-dir-id", "--repo-tag", images.multi, d).stdout == images.multi_id + "\n"
    assert cli("docker-dir-id", "--config", images.one_id[7:19], d).stdout == images.one_id + "\n"
    run = cli("docker-dir-exec", "--repo-tag", images.multi, d, "wc", "-c", "/data/a.bin", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.split()[0] == str(4 << 20), run.stderr


def test_multi_image_saves_are_byte_identical(images, tmp_path):
    """Engines list the images of one archive in an order that changes from save to save."""
    digests = []
    for n in range(6):
        proc = cli("docker-dir-save", "-q", images.one, images.multi, *images.two, tmp_path / f"img{n}")
        assert proc.returncode == 0, proc.stderr
        digests.append((tree_digest(tmp_path / f"img{n}"), proc.stdout))
    assert all(d == digests[0] for d in digests), [d[1] for d in digests]


def test_layout_is_independent_of_the_engine_order(tmp_path):
    """Engines list images (and tags) in an order that changes from save to save."""
    from docker_dir.format.canonical import Blobs, Entry, write_layout

    def entries():
        return [Entry(c * 64, 10, [(c * 64, 5, "application/vnd.oci.image.layer.v1.tar")], repo_tags=[f"x/{c}:1"])
                for c in "cab"] + [Entry("c" * 64, 10, [("c" * 64, 5, "application/vnd.oci.image.layer.v1.tar")],
                                         repo_tags=["x/c:0"])]

    outputs = set()
    for shift in range(4):
        d = tmp_path / f"d{shift}"
        d.mkdir()
        shuffled = entries()[shift:] + entries()[:shift]
        write_layout(str(d), Blobs(str(d)), shuffled)
        outputs.add(tuple((d / name).read_text() for name in ("index.json", "manifest.json", "repositories")))
    assert len(outputs) == 1
    index, archive, _ = outputs.pop()
    assert [e["RepoTags"] for e in json.loads(archive)] == [["x/a:1"], ["x/b:1"], ["x/c:0", "x/c:1"]]
    assert [d["annotations"]["org.opencontainers.image.ref.name"] for d in json.loads(index)["manifests"]] == \
        ["1", "1", "0", "1"]


def test_existing_empty_dir_is_used(images, tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    assert cli("docker-dir-save", images.one, d).returncode == 0
    assert cli("docker-dir-id", d).stdout == images.one_id + "\n"


def test_existing_nonempty_dir_is_refused_without_force(images, tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    (d / "precious").write_text("keep me")
    line = one_line_error(cli("docker-dir-save", images.one, d), EXIT_CANT_WRITE)
    assert "--force" in line
    assert os.listdir(d) == ["precious"]
    proc = cli("docker-dir-save", "--force", images.one, d)
    assert proc.returncode == 0, proc.stderr
    assert not (d / "precious").exists()
    assert cli("docker-dir-id", "--verify", d).stdout == images.one_id + "\n"
    assert no_leftovers(tmp_path) == []


def test_gitattributes(images, tmp_path):
    d = tmp_path / "img"
    assert cli("docker-dir-save", "--gitattributes", images.multi, d).returncode == 0
    text = (d / ".gitattributes").read_text()
    layers = manifest(d)[0]["Layers"]
    assert text.startswith("* annex.largefiles=nothing\n")
    for layer in layers:
        assert f"/{layer} annex.largefiles=anything" in text
    assert cli("docker-dir-id", "--verify", d).stdout == images.multi_id + "\n"
    assert cli("docker-dir-exec", d, "true", cwd=tmp_path).returncode == 0


def progress_lines(out):
    """The states a progress line went through on a terminal, and the lines printed after."""
    text = out.decode(errors="replace").replace("\x1b[K", "")
    return [part.strip() for part in text.replace("\n", "\r").split("\r") if part.strip()]


def test_progress_only_on_a_tty(images, tmp_path):
    """A total (the engine's image size), percent and time left; what the first byte waits
    for; one final line kept when done."""
    status, out = cli_on_tty("docker-dir-save", images.multi, tmp_path / "t")
    assert status == 0, out
    states = progress_lines(out)
    size = docker("image", "inspect", "--format", "{{.Size}}", images.multi).stdout.strip()
    total = f"{int(size) / 1e6:.1f} MB"
    assert states[0] == f"saving {images.multi}: the engine is preparing the export ({total})", states
    final = [s for s in states if s.startswith("saving ") and "%" in s][-1]
    assert re.fullmatch(rf"saving {re.escape(images.multi)}: [\d.]+ MB of {re.escape(total)} \(\d+%\), "
                        r"[\d.]+ [kMG]?B/s, [\d.]+ s", final), final
    assert out.count(b"\n") >= 2  # the final progress line stays, then the summary
    plain = cli("docker-dir-save", images.multi, tmp_path / "p")
    assert "\r" not in plain.stderr and "MB/s" not in plain.stderr


# -- errors -----------------------------------------------------------------

def test_engine_not_installed(images, tmp_path):
    env = dict(os.environ, PATH="/nonexistent")
    line = one_line_error(cli("docker-dir-save", "--engine", "docker", images.one, tmp_path / "img", env=env),
                          EXIT_ENGINE_UNAVAILABLE)
    assert "not installed" in line
    assert not (tmp_path / "img").exists()


def test_daemon_not_running(images, tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
    line = one_line_error(cli("docker-dir-save", images.one, tmp_path / "img", env=env), EXIT_ENGINE_UNAVAILABLE)
    assert "start the daemon" in line
    assert not (tmp_path / "img").exists()


def test_image_not_found(tmp_path):
    line = one_line_error(cli("docker-dir-save", f"fixture/missing-{uuid.uuid4().hex}:1", tmp_path / "img"),
                          EXIT_ENGINE_FAILED)
    assert "not found" in line
    assert not (tmp_path / "img").exists() and no_leftovers(tmp_path) == []


def test_parent_missing(images, tmp_path):
    line = one_line_error(cli("docker-dir-save", images.one, tmp_path / "no" / "img"), EXIT_CANT_WRITE)
    assert "does not exist" in line


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only mount: the tests run as root, for whom a mode of 0555 is no barrier."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], check=True)
    else:
        d.chmod(0o555)
    yield d
    if os.geteuid() == 0:
        subprocess.run(["umount", str(d)], check=True)


def test_parent_not_writable(images, read_only_dir):
    line = one_line_error(cli("docker-dir-save", images.one, read_only_dir / "img"), EXIT_CANT_WRITE)
    assert "not writable" in line
    assert os.listdir(read_only_dir) == []


def test_usage(tmp_path):
    one_line_error(cli("docker-dir-save", tmp_path / "img"), EXIT_USAGE)
    one_line_error(cli("docker-dir-save", "--nope", "x", tmp_path / "img"), EXIT_USAGE)



@pytest.mark.parametrize("moment", ["before open", "before lock"])
def test_temp_dir_removed_by_a_concurrent_cleanup_is_made_again(tmp_path, monkeypatch, moment):
    """Another save's stale-temp cleanup can remove our temp dir between mkdtemp and flock."""
    import fcntl
    import tempfile

    from docker_dir.nodelocal import BuildDir

    real_mkdtemp, real_flock = tempfile.mkdtemp, fcntl.flock
    made = []

    def mkdtemp(**kwargs):
        made.append(real_mkdtemp(**kwargs))
        if moment == "before open" and len(made) == 1:
            os.rmdir(made[0])
        return made[-1]

    def flock(fd, op):
        if moment == "before lock" and len(made) == 1:
            os.rmdir(made[0])
        return real_flock(fd, op)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(fcntl, "flock", flock)
    with BuildDir(str(tmp_path), ".img.docker-dir-save-", shutil.rmtree) as tmp:
        assert len(made) == 2 and tmp == made[1] and os.path.isdir(tmp)
