"""The one layout docker-dir writes: an OCI image layout that is also a docker-archive.

Written from every engine (dockerd 20.10, podman, Docker 26 on both stores) and by
conversion from other directories with no engine at all; read back by the real tools
that read OCI layouts (skopeo, umoci, buildah, podman, docker load on every daemon) and
by every docker-dir command; the same ID and the same bytes on every save; hostile
source directories refused before anything is written.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from plumbum import local

from conftest import BIN, cli, docker, import_image, one_line_error, private_ref, raw_save, tree_digest
from engines import Unavailable
from layouts import write_layout

from docker_dir.errors import EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_SELECTION, EXIT_USAGE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
ENGINES = ("main_docker", "podman", "docker26", "docker26c")
# No engine can be found with this PATH: conversions must need none.
NO_ENGINE = {"PATH": "/nonexistent"}


@pytest.fixture(scope="module")
def source(docker_engine, rootfs):
    """A tagged image in the main dockerd, tagged twice, whose /docker-dir-test holds a marker."""
    marker = f"oci-{uuid.uuid4().hex[:8]}"
    tags = (f"docker-dir-test/{marker}:1", f"docker-dir-test/{marker}-b:2")
    image = import_image(rootfs, tags[0], label=marker)
    docker("tag", *tags)
    yield tags, image, marker
    docker("rmi", "-f", image, check=False)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def blob(directory, digest):
    data = (Path(directory) / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    assert sha(data) == digest.split(":")[1], digest
    return data


def check_layout(directory, config_id, tags):
    """The files of the one layout, each checked against what names it."""
    directory = Path(directory)
    assert json.loads((directory / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((directory / "index.json").read_text())
    assert index["mediaType"] == OCI_INDEX
    names = sorted(d["annotations"]["io.containerd.image.name"] for d in index["manifests"] if "annotations" in d)
    assert names == sorted(t if t.startswith("localhost/") else "docker.io/" + t for t in tags)
    assert {d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"] if "annotations" in d} \
        == {t.rpartition(":")[2] for t in tags}
    (digest,) = {d["digest"] for d in index["manifests"]}
    assert {d["mediaType"] for d in index["manifests"]} == {OCI_MANIFEST}
    manifest = json.loads(blob(directory, digest))
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["config"]["mediaType"] == OCI_CONFIG
    assert manifest["config"]["digest"] == config_id
    config = json.loads(blob(directory, config_id))
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    for layer in manifest["layers"]:
        assert layer["mediaType"].startswith("application/vnd.oci.image.layer.v1.tar")
        assert len(blob(directory, layer["digest"])) == layer["size"]
    (entry,) = json.loads((directory / "manifest.json").read_text())
    assert entry["Config"] == "blobs/sha256/" + config_id[7:]
    assert entry["Layers"] == ["blobs/sha256/" + layer["digest"][7:] for layer in manifest["layers"]]
    assert sorted(entry["RepoTags"]) == sorted(tags)
    assert set(json.loads((directory / "repositories").read_text())) == {t.rpartition(":")[0] for t in tags}
    legacy = [p.name for p in directory.iterdir() if p.name.endswith(".json") and len(p.name) == 69 or p.is_dir()
              and p.name != "blobs"]
    assert legacy == [], legacy
    return manifest


# -- every engine writes it -------------------------------------------------------

@pytest.fixture(scope="module")
def saved_by(source, request, tmp_path_factory):
    """{engine fixture name: the directory docker-dir-save wrote from that engine, or why not}."""
    tags, image, _ = source
    base = tmp_path_factory.mktemp("saved-by")
    result = {}
    for name in ENGINES:
        try:
            target = request.getfixturevalue(name)
        except pytest.skip.Exception as why:
            result[name] = why
            continue
        refs = list(tags) if target.engine == "docker" else [f"localhost/{t}" for t in tags]
        if name != "main_docker":
            producer = local["docker"]["save", *tags]
            (producer | local[target.engine]["load", "-q"].with_env(**target.env))(timeout=120)
            target.created += refs  # podman names a loaded docker-archive's tags localhost/...
        proc = target.save(refs[0], base / name)
        assert proc.returncode == 0, (name, proc.stderr)
        result[name] = (target, base / name, refs[:1])
    return result


def saved(saved_by, name):
    found = saved_by[name]
    if isinstance(found, pytest.skip.Exception):
        pytest.skip(f"{name}: {found}")
    return found


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_writes_the_one_layout(saved_by, source, name):
    _, image, _ = source
    target, directory, refs = saved(saved_by, name)
    check_layout(directory, image, refs)
    proc = cli("docker-dir-id", "--verify", directory)
    assert (proc.returncode, proc.stdout) == (0, image + "\n"), proc.stderr
    summary = json.loads(cli("docker-dir-id", "--json", directory).stdout)
    assert summary["manifest_digest"] == json.loads((directory / "index.json").read_text())["manifests"][0]["digest"]


def test_same_id_as_a_raw_save_and_same_bytes_every_time(images, tmp_path):
    raw = raw_save(images.one, tmp_path / "raw")
    assert cli("docker-dir-id", raw).stdout == images.one_id + "\n"
    trees = []
    for n, refs in enumerate([[images.one], [images.one], [images.one, images.multi, *images.two],
                              [images.multi, *images.two, images.one], [images.untagged_id], [images.untagged_id]]):
        d = tmp_path / f"img{n}"
        proc = cli("docker-dir-save", "-q", *refs, d)
        assert proc.returncode == 0, proc.stderr
        trees.append(tree_digest(d))
    assert trees[0] == trees[1] and trees[2] == trees[3] and trees[4] == trees[5]
    assert cli("docker-dir-id", tmp_path / "img0").stdout == images.one_id + "\n"
    untagged = json.loads((tmp_path / "img4" / "index.json").read_text())["manifests"]
    assert len(untagged) == 1 and "annotations" not in untagged[0]
    assert json.loads((tmp_path / "img4" / "manifest.json").read_text())[0]["RepoTags"] is None
    assert not (tmp_path / "img4" / "repositories").exists()


# -- read by every tool that reads OCI layouts ---------------------------------------

@pytest.fixture(scope="module")
def ours(saved_by):
    return saved(saved_by, "main_docker")


def test_skopeo_inspects_and_copies_it(ours, source, tmp_path):
    tags, image, _ = source
    _, directory, _ = ours
    tag = tags[0].rpartition(":")[2]  # skopeo names an image of an OCI layout by its tag alone
    digest = json.loads((directory / "index.json").read_text())["manifests"][0]["digest"]
    inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{directory}:{tag}"], capture_output=True,
                                          text=True, check=True).stdout)
    assert inspected["Digest"] == digest
    subprocess.run(["skopeo", "copy", "-q", f"oci:{directory}:{tag}", f"dir:{tmp_path / 'dir'}"], check=True)
    assert cli("docker-dir-id", "--verify", tmp_path / "dir").stdout == image + "\n"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{directory}:{tag}", f"docker-archive:{tmp_path / 'a.tar'}:x/y:1"],
                   check=True)
    loaded = subprocess.run(["docker", "load", "-q", "-i", tmp_path / "a.tar"], capture_output=True, text=True,
                            check=True).stdout
    assert image in loaded or "x/y:1" in loaded


def test_umoci_unpacks_it(ours, source, tmp_path):
    tags, _, marker = source
    _, directory, _ = ours
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)  # umoci writes into the layout it unpacks from (its lock)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{copy}:{tags[0].rpartition(':')[2]}",
                    tmp_path / "bundle"], check=True, capture_output=True)
    assert (tmp_path / "bundle" / "rootfs" / "docker-dir-test").read_text() == marker


def test_buildah_and_podman_take_it(ours, source, podman, tmp_path):
    tags, image, marker = source
    _, directory, _ = ours
    tag = tags[0].rpartition(":")[2]
    container = podman.cli("run", "--rm", f"oci:{directory}:{tag}", "cat", "/docker-dir-test").stdout
    assert container == marker
    built = subprocess.run(["buildah", "from", "--quiet", f"oci:{directory}:{tag}"], capture_output=True, text=True,
                           env=podman.env)
    assert built.returncode == 0, built.stderr
    subprocess.run(["buildah", "rm", built.stdout.strip()], env=podman.env, capture_output=True)
    podman.remove(image)
    podman.cli("load", "-q", "-i", directory)
    podman.created.append(image)
    assert podman.image_id(image) == image[7:]  # podman shows IDs without "sha256:"


@pytest.mark.parametrize("name", ["main_docker", "docker26", "docker26c"])
def test_docker_load_takes_it(ours, source, request, name):
    tags, image, marker = source
    target = request.getfixturevalue(name)
    _, directory, _ = ours
    target.remove(*tags)
    target.load_dir(directory)
    target.created += list(tags)
    assert target.cli("run", "--rm", "--network", "none", tags[0], "cat", "/docker-dir-test").stdout == marker
    if name != "docker26c":  # the containerd store names the image by its manifest digest
        assert target.image_id(tags[0]) == image


@pytest.mark.parametrize("engine_name", ENGINES)
def test_docker_dir_exec_cold_and_hot_on_every_engine(ours, source, engine_name, request, tmp_path):
    _, image, marker = source
    _, directory, _ = ours
    engine = request.getfixturevalue(engine_name)
    ref = private_ref(image)
    engine.remove(ref)
    engine.created.append(ref)
    cold = engine.exec(directory, "cat", "/docker-dir-test", cwd=tmp_path)
    assert (cold.returncode, cold.stdout) == (0, marker), cold.stderr
    hot = engine.exec("--no-load", directory, "cat", "/docker-dir-test", cwd=tmp_path)
    assert (hot.returncode, hot.stdout) == (0, marker), hot.stderr


def test_charliecloud_unpacks_it(ours, source, tmp_path, monkeypatch):
    from docker_dir.engine.charliecloud import CharliecloudEngine
    from docker_dir.format.consistent import read_consistently

    _, image, marker = source
    _, directory, _ = ours
    try:
        engine = CharliecloudEngine()
    except Exception as why:  # ch-run comes with the test provisioning
        pytest.fail(f"charliecloud: {why}")
    monkeypatch.setenv("DOCKER_DIR_CACHE", str(tmp_path / "cache"))
    selected = read_consistently(str(directory), lambda d: d.select())
    engine.load(selected, image[7:])
    assert (tmp_path / "cache" / image[7:] / "root" / "docker-dir-test").read_text() == marker


# -- directories written before ------------------------------------------------------

def test_force_over_a_directory_written_before_rewrites_it_with_the_same_id(images, tmp_path):
    old = raw_save(images.one, tmp_path / "img")
    assert (old / "manifest.json").exists() and not (old / "index.json").exists()  # the legacy layout
    assert cli("docker-dir-exec", old, "true", cwd=tmp_path).returncode == 0  # still works as it is
    proc = cli("docker-dir-save", "--force", images.one, old)
    assert (proc.returncode, proc.stdout) == (0, images.one_id + "\n"), proc.stderr
    check_layout(old, images.one_id, [images.one])
    legacy = raw_save(images.one, tmp_path / "legacy")
    converted = cli("docker-dir-save", "--force", f"docker-archive:{legacy}", legacy, env=NO_ENGINE)
    assert (converted.returncode, converted.stdout) == (0, images.one_id + "\n"), converted.stderr
    assert tree_digest(legacy) == tree_digest(old)


# -- conversion without an engine -------------------------------------------------------

@pytest.fixture(scope="module")
def sources(images, source, tmp_path_factory):
    """Directories and archives of other tools, for conversion: {name: (SOURCE argument, its ID)}."""
    tags, image, _ = source
    base = tmp_path_factory.mktemp("sources")
    found = {"legacy dir": (f"docker-archive:{raw_save(tags[0], base / 'legacy')}", image)}
    docker("save", "-o", base / "saved.tar", tags[0])
    found["docker save -o"] = (f"docker-archive:{base / 'saved.tar'}", image)
    for kind, prefix in (("skopeo-oci", "oci"), ("skopeo-dir-v2s2", "dir"), ("skopeo-oci-zstd", "oci"),
                         ("podman-oci-dir", "oci")):
        layout = write_layout(kind, tags[0], base / kind)
        config = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"{prefix}:{layout.path}"],
                                           capture_output=True, text=True, check=True).stdout)["config"]["digest"]
        found[kind] = (f"{prefix}:{layout.path}", config)
    return found


@pytest.mark.parametrize("kind", ["legacy dir", "docker save -o", "skopeo-oci", "skopeo-dir-v2s2", "skopeo-oci-zstd",
                                  "podman-oci-dir"])
def test_converts_any_layout_with_no_engine(sources, kind, tmp_path):
    argument, config_id = sources[kind]
    out = tmp_path / "out"
    proc = cli("docker-dir-save", argument, out, env=NO_ENGINE)
    assert (proc.returncode, proc.stdout) == (0, config_id + "\n"), proc.stderr
    assert cli("docker-dir-id", "--verify", out).stdout == config_id + "\n"
    index = json.loads((out / "index.json").read_text())
    assert {d["mediaType"] for d in index["manifests"]} == {OCI_MANIFEST}
    subprocess.run(["skopeo", "inspect", f"oci:{out}"], check=True, capture_output=True)
    again = tmp_path / "again"
    assert cli("docker-dir-save", argument, again, env=NO_ENGINE).returncode == 0
    assert tree_digest(again) == tree_digest(out)


def test_an_oci_manifest_is_kept_as_it_is(sources, tmp_path):
    argument, _ = sources["skopeo-oci"]
    path = Path(argument.split(":", 1)[1])
    theirs = json.loads((path / "index.json").read_text())["manifests"][0]["digest"]
    assert cli("docker-dir-save", argument, tmp_path / "out", env=NO_ENGINE).returncode == 0
    ours = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"][0]["digest"]
    assert ours == theirs


def test_conversion_selects_as_elsewhere(images, tmp_path):
    both = raw_save([images.one, images.multi], tmp_path / "both")
    all_of_them = cli("docker-dir-save", f"docker-archive:{both}", tmp_path / "all", env=NO_ENGINE)
    assert sorted(all_of_them.stdout.split()) == sorted([images.one_id, images.multi_id])
    one = cli("docker-dir-save", "--repo-tag", images.multi, f"docker-archive:{both}", tmp_path / "one", env=NO_ENGINE)
    assert one.stdout == images.multi_id + "\n", one.stderr
    tag = images.one.rpartition(":")[2]
    by_tag = cli("docker-dir-save", "--config", images.one_id[7:19], f"docker-archive:{both}:{tag}",
                 tmp_path / "tag", env=NO_ENGINE)
    assert by_tag.stdout == images.one_id + "\n", by_tag.stderr
    line = one_line_error(cli("docker-dir-save", f"docker-archive:{both}:nosuchtag", tmp_path / "none",
                              env=NO_ENGINE), EXIT_SELECTION)
    assert "nosuchtag" in line
    assert not (tmp_path / "none").exists()


def test_conversion_of_a_multi_platform_index_picks_one(images, source, tmp_path):
    tags, _, _ = source
    try:
        layout = write_layout("podman-index", tags[0], tmp_path / "index")
    except Unavailable as why:
        pytest.fail(f"podman-index layout: {why}")
    host = cli("docker-dir-id", layout.path).stdout
    arm = cli("docker-dir-id", "--platform", "linux/arm64", layout.path).stdout
    assert host != arm
    assert cli("docker-dir-save", f"oci:{layout.path}", tmp_path / "host", env=NO_ENGINE).stdout == host
    assert cli("docker-dir-save", "--platform", "linux/arm64", f"oci:{layout.path}", tmp_path / "arm",
               env=NO_ENGINE).stdout == arm
    one_line_error(cli("docker-dir-save", "--all-platforms", f"oci:{layout.path}", tmp_path / "all", env=NO_ENGINE),
                   EXIT_USAGE)


def test_dropped_content_is_named(images, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for argv in (["init", "-q"], ["annex", "init", "-q"]):
        subprocess.run(["git", "-C", repo, *argv], check=True, env=env, capture_output=True)
    raw_save(images.one, repo / "img")
    for argv in (["annex", "add", "-q", "img"], ["commit", "-q", "-m", "i"], ["annex", "drop", "-q", "--force",
                                                                             "img"]):
        subprocess.run(["git", "-C", repo, *argv], check=True, env=env, capture_output=True)
    line = one_line_error(cli("docker-dir-save", f"docker-archive:{repo / 'img'}", tmp_path / "out", env=NO_ENGINE),
                          EXIT_CONTENT_MISSING)
    assert "datalad get" in line and not (tmp_path / "out").exists()


# -- hostile sources: refused before anything is written -------------------------------

def _oci_copy(sources, tmp_path):
    argument, _ = sources["skopeo-oci"]
    copy = tmp_path / "src"
    shutil.copytree(argument.split(":", 1)[1], copy)
    index = json.loads((copy / "index.json").read_text())
    manifest_path = copy / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    return copy, index, manifest_path, json.loads(manifest_path.read_text())


def _rewrite_manifest(copy, index, manifest_path, manifest):
    data = json.dumps(manifest).encode()
    (copy / "blobs" / "sha256" / sha(data)).write_bytes(data)
    index["manifests"][0].update(digest="sha256:" + sha(data), size=len(data))
    (copy / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("how, words", [
    ("layer linked out", "outside the image directory"),
    ("lying digest", "does not match its digest"),
    ("lying size", "descriptor says"),
    ("dot-dot path", "leaves the image directory"),
])
def test_hostile_source_is_refused_before_anything_is_written(sources, tmp_path, how, words):
    copy, index, manifest_path, manifest = _oci_copy(sources, tmp_path)
    layer = copy / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]
    if how == "layer linked out":
        outside = tmp_path / "outside"
        outside.write_bytes(layer.read_bytes())
        layer.unlink()
        layer.symlink_to(outside)
    elif how == "lying digest":
        data = bytearray(layer.read_bytes())
        data[len(data) // 2] ^= 0xFF
        layer.write_bytes(bytes(data))
    elif how == "lying size":
        manifest["layers"][-1]["size"] -= 1
        _rewrite_manifest(copy, index, manifest_path, manifest)
    else:
        shutil.rmtree(copy)
        copy.mkdir()
        (copy / "manifest.json").write_text(json.dumps([{"Config": "../x.json", "RepoTags": None, "Layers": []}]))
    work = tmp_path / "work"
    work.mkdir()
    line = one_line_error(cli("docker-dir-save", f"oci:{copy}", work / "out", env=NO_ENGINE), EXIT_BAD_DIR)
    assert words in line, line
    assert os.listdir(work) == []  # neither DIR nor a temporary directory


def test_kill_during_a_conversion_leaves_nothing_half_written(rootfs, tmp_path):
    """A 64 MB layer, so the copy is caught in the middle: SIGKILL, then DIR is absent
    (or, with --force, the old one whole), and the next save removes the leftover."""
    root = tmp_path / "big-root"
    shutil.copytree(rootfs, root, symlinks=True)
    (root / "big.bin").write_bytes(os.urandom(64 << 20))
    image = import_image(root, None, label=uuid.uuid4().hex)
    try:
        big = raw_save(image, tmp_path / "big")
    finally:
        docker("rmi", "-f", image)
    work = tmp_path / "work"
    work.mkdir()
    old = work / "old"
    assert cli("docker-dir-save", f"docker-archive:{big}", old, env=NO_ENGINE).returncode == 0
    before = tree_digest(old)
    for target, extra in ((work / "new", []), (old, ["--force"])):
        proc = subprocess.Popen([sys.executable, str(BIN / "docker-dir-save"), "-q", *extra, f"docker-archive:{big}",
                                 str(target)], env=NO_ENGINE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") and p.stat().st_size > (1 << 20)
                      for p in work.glob(f".{target.name}.docker-dir-save-*/blobs/sha256/.*")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no copy in progress within 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target == old:
            assert tree_digest(old) == before
        else:
            assert not target.exists()
    # the next save to each DIR removes what the killed one left beside it
    assert cli("docker-dir-save", f"docker-archive:{big}", work / "new", env=NO_ENGINE).returncode == 0
    assert cli("docker-dir-save", "--force", f"docker-archive:{big}", old, env=NO_ENGINE).returncode == 0
    assert tree_digest(old) == before
    assert sorted(p.name for p in work.iterdir()) == ["new", "old"]  # the killed saves' temp dirs are gone
