"""Every image directory people keep (tests/layouts.py writes each with its real tool):
docker-dir-id (plain, --verify, --json) and docker-dir-exec, cold then hot, on dockerd
20.10, podman, Docker 26 classic and containerd store; multi-platform indexes; content
dropped by git-annex; and what docker-dir refuses, named as what it is."""
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import cli, docker, import_image, one_line_error, private_ref, raw_save
from engines import Unavailable
from layouts import KINDS, write_layout

from docker_dir.errors import EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_ENGINE_FAILED, EXIT_SELECTION, EXIT_VERIFY

ENGINES = ("main_docker", "podman", "docker26", "docker26c")
MULTI_PLATFORM = ("podman-index", "nested-index")


@pytest.fixture(scope="module")
def source(docker_engine, rootfs):
    """A tagged image in the main dockerd whose /docker-dir-test holds a marker."""
    marker = f"layouts-{uuid.uuid4().hex[:8]}"
    ref = f"docker-dir-test/{marker}:1"
    image = import_image(rootfs, ref, label=marker)
    yield ref, marker
    docker("rmi", "-f", image, check=False)


# The layouts only a side daemon writes; every other one is written with the main
# daemon, skopeo and podman, so its tests never wait on a side daemon.
SIDE_DAEMON_KINDS = {"docker26-save": "docker26", "docker26-containerd-save": "docker26c"}


@pytest.fixture(scope="module")
def written(source, request, tmp_path_factory):
    """{kind: Layout, or why it could not be written (a side daemon or tool unavailable)}."""
    base = tmp_path_factory.mktemp("layouts")
    result = {}
    for kind in KINDS:
        try:
            daemon = request.getfixturevalue(SIDE_DAEMON_KINDS[kind]).daemon if kind in SIDE_DAEMON_KINDS else None
            result[kind] = write_layout(kind, source[0], base / kind, daemon=daemon)
        except (Unavailable, pytest.skip.Exception) as why:
            result[kind] = why
    return result


def layout(written, kind):
    found = written[kind]
    if isinstance(found, (Unavailable, pytest.skip.Exception)):
        pytest.skip(f"{kind}: {found}")
    return found


# -- an oracle read with json, independent of docker-dir --------------------------------

def _json(path):
    return json.loads(Path(path).read_text())


def configs_by_platform(directory):
    """{"os/arch[/variant]" or None: config digest} of the images a layout holds."""
    directory = Path(directory)
    found = {}

    def blob(digest):
        hexd = digest.split(":")[1]
        for path in (directory / "blobs" / "sha256" / hexd, directory / f"{hexd}.manifest.json"):
            if path.exists():
                return _json(path)
        raise AssertionError(f"{digest} not in {directory}")

    def walk(node, platform):
        if "manifests" in node:
            for entry in node["manifests"]:
                child_platform = entry.get("platform")
                name = "/".join(child_platform[k] for k in ("os", "architecture", "variant")
                                if child_platform.get(k)) if child_platform else platform
                walk(blob(entry["digest"]), name)
        else:
            found[platform] = node["config"]["digest"]

    if (directory / "manifest.json").exists() and isinstance(_json(directory / "manifest.json"), list):
        return {None: "sha256:" + _json(directory / "manifest.json")[0]["Config"].split("/")[-1].split(".")[0]}
    walk(_json(directory / "manifest.json") if (directory / "version").exists() else _json(directory / "index.json"),
         None)
    return found


def expected_id(directory):
    configs = configs_by_platform(directory)
    return configs.get("linux/amd64", next(iter(configs.values())))


# -- docker-dir-id ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_id_verify_and_json(written, kind):
    lay = layout(written, kind)
    proc = cli("docker-dir-id", lay.path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_id(lay.path) + "\n"
    verify = cli("docker-dir-id", "--verify", lay.path)
    assert (verify.returncode, verify.stdout) == (0, proc.stdout), verify.stderr
    summary = json.loads(cli("docker-dir-id", "--json", lay.path).stdout)
    assert summary["id"] == proc.stdout.strip()
    assert summary["layers"] and all(d.startswith("sha256:") for d in summary["layers"])
    if lay.tag:
        # a bare OCI ref name ("1") is a tag of any name; a full one must be named as it is
        wanted = lay.tag if ":" in lay.tag or "/" in lay.tag else f"any-name:{lay.tag}"
        tag = cli("docker-dir-id", "--repo-tag", wanted, lay.path)
        assert tag.stdout == proc.stdout, (lay.tag, tag.stderr)


@pytest.mark.parametrize("kind", ["skopeo-oci", "skopeo-oci-zstd", "skopeo-dir-oci"])
def test_verify_names_a_corrupt_compressed_or_dir_layer(written, kind, tmp_path):
    lay = layout(written, kind)
    copy = tmp_path / "copy"
    shutil.copytree(lay.path, copy)
    summary = json.loads(cli("docker-dir-id", "--json", copy).stdout)
    hexd = summary["layers"][-1].split(":")[1]
    path = next(p for p in (copy / "blobs" / "sha256" / hexd, copy / hexd) if p.exists())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    line = one_line_error(cli("docker-dir-id", "--verify", copy), EXIT_VERIFY)
    assert hexd in line or str(path) in line, line


# -- docker-dir-exec on every engine ----------------------------------------------------

def engine_id(engine, ref):
    found = engine.image_id(ref)
    return found if found is None or found.startswith("sha256:") else "sha256:" + found


@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("kind", KINDS)
def test_cold_then_hot_exec(written, source, kind, engine_name, request, tmp_path):
    lay = layout(written, kind)
    engine = request.getfixturevalue(engine_name)
    image_id = expected_id(lay.path)
    ref = private_ref(image_id)
    engine.remove(ref)
    engine.created.append(ref)
    # An engine that still holds the image (by config or manifest digest) gets a tag, not a load.
    digests = [image_id, json.loads(cli("docker-dir-id", "--json", lay.path).stdout)["manifest_digest"]]
    held = any(d and engine.has(d) for d in digests)
    mark = engine.mark()
    if kind == "skopeo-oci-zstd" and engine_name == "main_docker":
        line = one_line_error(engine.exec(lay.path, "true", cwd=tmp_path), EXIT_ENGINE_FAILED)
        assert "zstd" in line and "20.10" in line, line
        assert not engine.has(ref)
        return
    proc = engine.exec(lay.path, "cat", "/docker-dir-test", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, source[1]), proc.stderr
    if engine_name == "docker26c":
        assert engine.has(ref)  # the containerd store names the image by a manifest digest
    else:
        assert engine_id(engine, ref) == image_id  # the engine's ID is the directory's
    hot = engine.exec("--no-load", lay.path, "cat", "/docker-dir-test", cwd=tmp_path)
    assert (hot.returncode, hot.stdout) == (0, source[1]), hot.stderr
    if engine_name != "main_docker":  # the shared main daemon's events are everyone's
        assert engine.loads_since(mark) == (0 if held else 1)


# -- multi-platform indexes ---------------------------------------------------------------

@pytest.mark.parametrize("kind", MULTI_PLATFORM)
def test_platform_is_the_hosts_by_default_and_chosen_by_option(written, kind):
    lay = layout(written, kind)
    configs = configs_by_platform(lay.path)
    assert set(configs) == {"linux/amd64", "linux/arm64/v8"}, configs
    assert cli("docker-dir-id", lay.path).stdout == configs["linux/amd64"] + "\n"
    for wanted in ("linux/arm64", "linux/arm64/v8"):
        proc = cli("docker-dir-id", "--platform", wanted, lay.path)
        assert proc.stdout == configs["linux/arm64/v8"] + "\n", proc.stderr
    summary = json.loads(cli("docker-dir-id", "--json", "--platform", "linux/arm64", lay.path).stdout)
    assert summary["platform"] == "linux/arm64/v8"
    line = one_line_error(cli("docker-dir-id", "--platform", "linux/s390x", lay.path), EXIT_SELECTION)
    assert "linux/s390x" in line and "linux/amd64" in line and "linux/arm64/v8" in line


def test_exec_loads_the_chosen_platform(written, main_docker, tmp_path):
    lay = layout(written, "podman-index")
    arm = configs_by_platform(lay.path)["linux/arm64/v8"]
    main_docker.remove(private_ref(arm))
    main_docker.created.append(private_ref(arm))
    proc = main_docker.exec("--platform", "linux/arm64", "--load-only", lay.path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert engine_id(main_docker, private_ref(arm)) == arm
    arch = main_docker.cli("image", "inspect", "--format", "{{.Architecture}}", private_ref(arm)).stdout.strip()
    assert arch == "arm64"


# -- content dropped by git-annex (DataLad's default annexes every file) -------------------

def git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)


def annexed_and_dropped(directory, repo):
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "annex", "init", "-q")
    shutil.copytree(directory, repo / "img", symlinks=True)
    git(repo, "-c", "annex.largefiles=anything", "annex", "add", "-q", "img")
    git(repo, "commit", "-q", "-m", "image")
    git(repo, "annex", "drop", "-q", "--force", "img")
    assert not (repo / "img" / "manifest.json").exists() and os.path.islink(repo / "img" / "manifest.json")
    return repo / "img"


def test_dropped_manifest_still_gives_the_id(images, saved, main_docker, tmp_path):
    dropped = annexed_and_dropped(saved.one, tmp_path / "repo")
    assert cli("docker-dir-id", dropped).stdout == images.one_id + "\n"
    assert cli("docker-dir-id", "--config", images.one_id[7:19], dropped).stdout == images.one_id + "\n"
    line = one_line_error(cli("docker-dir-id", "--repo-tag", images.one, dropped), EXIT_CONTENT_MISSING)
    assert "--repo-tag" in line and "datalad get" in line
    one_line_error(cli("docker-dir-id", "--verify", dropped), EXIT_CONTENT_MISSING)
    # the engine still has it: exec needs nothing more than the ID
    assert main_docker.exec("--load-only", saved.one, cwd=tmp_path).returncode == 0
    proc = main_docker.exec("--no-load", dropped, "echo", "still runs", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "still runs\n"), proc.stderr


def test_dropped_manifest_of_several_images_asks_for_a_choice(images, tmp_path):
    both = raw_save([images.one, images.multi], tmp_path / "both")
    dropped = annexed_and_dropped(both, tmp_path / "repo")
    line = one_line_error(cli("docker-dir-id", dropped), EXIT_SELECTION)
    assert images.one_id[7:19] in line and images.multi_id[7:19] in line and "--config" in line
    assert cli("docker-dir-id", "--config", images.multi_id, dropped).stdout == images.multi_id + "\n"


# -- what docker-dir does not read, named as what it is --------------------------------------

def _sif(path):
    # A SIF file begins with a launcher line, then SIF_MAGIC at byte 32.
    path.write_bytes(b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC" + b"\0" * 200)


@pytest.mark.parametrize("case, words", [
    ("docker save -o", "tar archive"),
    ("gzip archive", "gzip-compressed"),
    ("sif", "SIF"),
    ("manifest file", "JSON file"),
    ("rootfs", "unpacked root file system"),
    ("sandbox", "Singularity/Apptainer sandbox"),
    ("dir with an archive", "an archive; extract it"),
])
def test_other_things_are_named_not_called_damaged(images, rootfs, tmp_path, case, words):
    target = tmp_path / "target"
    if case == "docker save -o":
        docker("save", "-o", target, images.one)
    elif case == "gzip archive":
        docker("save", "-o", tmp_path / "a.tar", images.one)
        target.write_bytes(__import__("gzip").compress((tmp_path / "a.tar").read_bytes()))
    elif case == "sif":
        _sif(target)
    elif case == "manifest file":
        target.write_text(json.dumps({"schemaVersion": 2, "config": {}, "layers": []}))
    elif case == "rootfs":
        shutil.copytree(rootfs, target, symlinks=True)
        for name in ("etc", "usr"):
            (target / name).mkdir(exist_ok=True)
    elif case == "sandbox":
        (target / ".singularity.d").mkdir(parents=True)
        (target / "bin").mkdir()
    elif case == "dir with an archive":
        target.mkdir()
        docker("save", "-o", target / "image.tar", images.one)
    for prog in ("docker-dir-id", "docker-dir-exec"):
        line = one_line_error(cli(prog, target, *(["true"] if prog == "docker-dir-exec" else [])), EXIT_BAD_DIR)
        assert words in line and "damaged" not in line, line


def test_dir_layout_without_its_version_file_is_not_called_damaged(written, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(layout(written, "skopeo-dir-v2s2").path, copy)
    os.unlink(copy / "version")
    line = one_line_error(cli("docker-dir-id", copy), EXIT_BAD_DIR)
    assert "'version' file" in line and "damaged" not in line


def test_config_digest_is_sha256_of_the_config_file(written):
    """The oracle above reads digests from the layouts' own JSON; the content agrees."""
    lay = layout(written, "skopeo-oci")
    digest = expected_id(lay.path)
    data = (lay.path / "blobs" / "sha256" / digest[7:]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
