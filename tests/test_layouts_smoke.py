"""tests/layouts.py writes each layout with its real tool: check each one's files, so a
tool that changes what it writes (or stops working here) shows up as a failure."""
import gzip
import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import docker, import_image
from engines import Unavailable, podman_env
from layouts import ARM64_PLATFORM, KINDS, write_layout

INDEX = "application/vnd.oci.image.index.v1+json"
OCI_KINDS = {"skopeo-oci", "skopeo-oci-zstd", "podman-oci-dir", "podman-oci-archive", "umoci", "podman-index",
             "nested-index", "docker26-save", "docker26-containerd-save"}
DIR_KINDS = {"skopeo-dir-v2s2", "skopeo-dir-oci", "podman-docker-dir"}


@pytest.fixture(scope="module")
def source(docker_engine, rootfs):
    ref = f"fixture/layouts-{uuid.uuid4().hex[:8]}:1"
    image = import_image(rootfs, ref, label=ref)
    yield ref, image
    docker("rmi", "-f", image, check=False)


def layout_or_skip(kind, ref, dest, **options):
    try:
        return write_layout(kind, ref, dest, **options)
    except Unavailable as why:
        pytest.skip(str(why))


def blob(directory, digest):
    """Bytes of an OCI blob, checked against its digest."""
    algorithm, hex_ = digest.split(":")
    data = (Path(directory) / "blobs" / algorithm / hex_).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hex_, digest
    return data


def oci_images(directory):
    """(platform, manifest, config) of every image below index.json, through nested indexes;
    also checks that every blob named on the way is present with its digest."""
    found = []

    def walk(descriptor, platform, depth):
        data = json.loads(blob(directory, descriptor["digest"]))
        if data.get("mediaType", descriptor["mediaType"]) == INDEX or "manifests" in data:
            for entry in data["manifests"]:
                walk(entry, entry.get("platform", platform), depth + 1)
            return
        config = json.loads(blob(directory, data["config"]["digest"]))
        for layer in data["layers"]:
            blob(directory, layer["digest"])
        found.append((platform, data, config, depth))

    index = json.loads((Path(directory) / "index.json").read_text())
    for entry in index["manifests"]:
        walk(entry, entry.get("platform"), 1)
    return found


def unreferenced_blobs(directory, images):
    named = set()
    for _platform, manifest, _config, _depth in images:
        named.add(manifest["config"]["digest"].split(":")[1])
        named.update(layer["digest"].split(":")[1] for layer in manifest["layers"])
    present = {p.name for p in (Path(directory) / "blobs" / "sha256").iterdir()}
    manifests = set()
    for name in present - named:
        data = json.loads((Path(directory) / "blobs" / "sha256" / name).read_bytes())
        if "manifests" in data or "layers" in data:
            manifests.add(name)
    return present - named - manifests


@pytest.mark.parametrize("kind", KINDS)
def test_writer_produces_its_layout(kind, source, tmp_path):
    ref, image = source
    layout = layout_or_skip(kind, ref, tmp_path / kind)
    assert layout.kind == kind and layout.path == tmp_path / kind and layout.writer
    directory = layout.path
    source_layers = json.loads(docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout)

    if kind in DIR_KINDS:
        assert (directory / "version").read_text().startswith("Directory Transport Version")
        manifest = json.loads((directory / "manifest.json").read_text())
        assert isinstance(manifest, dict)
        names = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
        for digest in names:
            data = (directory / digest.split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        oci = kind == "skopeo-dir-oci"
        assert manifest["mediaType"] == ("application/vnd.oci.image.manifest.v1+json" if oci else
                                         "application/vnd.docker.distribution.manifest.v2+json")
        # v2s2 keeps the engine's config bytes: the same image ID
        assert (manifest["config"]["digest"] == image) is (not oci)
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            ["manifest.json", "version", *{d.split(":")[1] for d in names}])
        return

    assert kind in OCI_KINDS
    assert json.loads((directory / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    images = oci_images(directory)
    extra = unreferenced_blobs(directory, images)
    if kind == "docker26-save":
        # the classic store also writes each layer's legacy v1 JSON ("id", no manifest names it)
        extra = {name for name in extra
                 if "id" not in json.loads((directory / "blobs" / "sha256" / name).read_bytes())}
    assert not extra
    if kind in ("podman-index", "nested-index"):
        platforms = sorted((p["os"], p["architecture"], p.get("variant", "")) for p, *_ in images)
        assert platforms == sorted([("linux", "amd64", ""), ARM64_PLATFORM])
        for platform, _manifest, config, depth in images:
            assert config["architecture"] == platform["architecture"]
            assert depth == (3 if kind == "nested-index" else 2)
        return
    (_platform, manifest, config, depth), = images
    assert depth == 1
    layer_types = [layer["mediaType"] for layer in manifest["layers"]]
    diff_ids = config["rootfs"]["diff_ids"]
    if kind == "umoci":
        assert diff_ids[:-1] == source_layers and len(diff_ids) == len(source_layers) + 1
    else:
        assert diff_ids == source_layers
    if kind == "skopeo-oci-zstd":
        assert set(layer_types) == {"application/vnd.oci.image.layer.v1.tar+zstd"}
        assert blob(directory, manifest["layers"][0]["digest"])[:4] == b"\x28\xb5\x2f\xfd"
    elif kind.startswith("docker26"):
        # loaded from an uncompressed docker-archive: kept uncompressed, same config bytes
        assert manifest["config"]["digest"] == image
        assert (directory / "manifest.json").exists()
        assert blob(directory, manifest["layers"][0]["digest"])[257:262] == b"ustar"
    else:
        assert set(layer_types) == {"application/vnd.oci.image.layer.v1.tar+gzip"}
        gzip.decompress(blob(directory, manifest["layers"][0]["digest"]))


@pytest.fixture
def podman_source(rootfs, tmp_path):
    try:
        env = podman_env(tmp_path / "podman")
    except Unavailable as why:
        pytest.skip(str(why))
    ref = f"localhost/fixture/layouts-{uuid.uuid4().hex[:8]}:1"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-q", "-c", "ENV PATH=/bin", "-", ref], stdin=tar.stdout, env=env,
                   check=True, capture_output=True)
    tar.stdout.close()
    tar.wait()
    yield ref, env
    subprocess.run(["podman", "rmi", "-f", ref], env=env, capture_output=True)


@pytest.mark.parametrize("kind", ["skopeo-oci", "podman-oci-dir", "podman-index"])
def test_writer_reads_a_podman_image(kind, podman_source, tmp_path):
    ref, env = podman_source
    layout = layout_or_skip(kind, ref, tmp_path / kind, source="podman", env=env)
    images = oci_images(layout.path)
    assert len(images) == (2 if kind == "podman-index" else 1)
    podman_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
    assert podman_id  # the source is left in place


def test_dest_must_be_empty(source, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        write_layout("skopeo-oci", source[0], tmp_path / "full")
