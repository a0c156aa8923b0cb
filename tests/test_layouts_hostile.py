"""Hostile OCI and dir: layouts, written in Python (no tool writes them): each is refused
with one line and exit 65 by docker-dir-id and by docker-dir-exec before any engine is
asked (exec runs with an unreachable DOCKER_HOST: reaching the engine would give 69)."""
import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from conftest import cli, one_line_error

from docker_dir.errors import EXIT_BAD_DIR, EXIT_VERIFY

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def layer_tar(name, content):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


class OciDir:
    """An OCI image layout written blob by blob; digests are right unless a test says otherwise."""

    def __init__(self, path):
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data, name=None):
        if not isinstance(data, bytes):
            data = json.dumps(data).encode()
        hexd = name or sha(data)
        (self.path / "blobs" / "sha256" / hexd).write_bytes(data)
        return {"digest": "sha256:" + hexd, "size": len(data)}

    def image(self, diff_content=b"hello\n", config_extra=None):
        """A manifest descriptor of a one-layer image."""
        tar = layer_tar("hello", diff_content)
        layer = dict(self.blob(gzip.compress(tar, mtime=0)), mediaType=LAYER_GZIP)
        config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(tar)]},
                  **(config_extra or {})}
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": dict(self.blob(config), mediaType=CONFIG),
                    "layers": [layer]}
        return dict(self.blob(manifest), mediaType=MANIFEST)

    def index(self, descriptors, name="index.json"):
        data = {"schemaVersion": 2, "mediaType": INDEX, "manifests": descriptors}
        if name == "index.json":
            (self.path / "index.json").write_text(json.dumps(data))
            return None
        return dict(self.blob(data), mediaType=INDEX)


def refused(directory, *words):
    line = one_line_error(cli("docker-dir-id", directory), EXIT_BAD_DIR)
    for word in words:
        assert word in line, line
    env = dict(os.environ, DOCKER_HOST="unix:///nonexistent/docker.sock")
    exec_line = one_line_error(cli("docker-dir-exec", "--engine", "docker", directory, "true", env=env),
                               EXIT_BAD_DIR)
    assert exec_line.split(": ", 1)[1] == line.split(": ", 1)[1]
    return line


@pytest.fixture
def oci(tmp_path):
    return OciDir(tmp_path / "img")


def test_a_well_formed_layout_is_read(oci):
    """The builder's baseline: every refusal below comes from its one mutation."""
    oci.index([oci.image()])
    proc = cli("docker-dir-id", "--verify", oci.path)
    assert proc.returncode == 0 and proc.stdout.startswith("sha256:"), proc.stderr


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "/etc/passwd", "sha256:" + "A" * 64,
                                    "sha256:" + "0" * 63, "md5:d41d8cd98f00b204e9800998ecf8427e", "sha512:" + "0" * 128,
                                    "", None, 7])
def test_a_digest_that_is_not_sha256_hex(oci, digest):
    oci.index([dict(oci.image(), digest=digest)])
    refused(oci.path, "not sha256:<64 hex digits>")


def test_a_layer_digest_that_is_not_sha256_hex(oci):
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": dict(oci.blob({"os": "linux"}), mediaType=CONFIG),
                "layers": [{"mediaType": LAYER_GZIP, "digest": "sha256:../../../etc/passwd", "size": 1}]}
    oci.index([dict(oci.blob(manifest), mediaType=MANIFEST)])
    refused(oci.path, "not sha256:<64 hex digits>")


def test_a_blob_that_is_a_symlink_out_of_the_directory(oci, tmp_path):
    desc = oci.image()
    outside = tmp_path / "outside.json"
    path = oci.path / "blobs" / "sha256" / desc["digest"][7:]
    outside.write_bytes(path.read_bytes())
    path.unlink()
    os.symlink(outside, path)
    oci.index([desc])
    refused(oci.path, "outside the image directory")


def test_blobs_directory_that_is_a_symlink_out(oci, tmp_path):
    oci.index([oci.image()])
    os.rename(oci.path / "blobs", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", oci.path / "blobs")
    refused(oci.path, "outside the image directory")


def test_a_media_type_that_lies_manifest_called_index(oci):
    oci.index([dict(oci.image(), mediaType=INDEX)])
    refused(oci.path, "media type says", "holds a manifest")


def test_a_media_type_that_lies_index_called_manifest(oci):
    inner = oci.index([oci.image()], name="inner")
    oci.index([dict(inner, mediaType=MANIFEST)])
    refused(oci.path, "media type says", "holds an index")


def test_a_blob_whose_own_media_type_lies(oci):
    desc = oci.image()
    manifest = json.loads((oci.path / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    manifest["mediaType"] = INDEX
    oci.index([dict(oci.blob(manifest), mediaType=None)])
    refused(oci.path, "media type says")


def test_a_manifest_naming_itself(oci):
    config = oci.blob({"os": "linux"})
    hexd = "e" * 64  # the manifest is stored under this name and names it as its config
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": {"mediaType": CONFIG, "digest": "sha256:" + hexd,
                                                                         "size": 1}, "layers": []}
    oci.blob(manifest, name=hexd)
    oci.index([{"mediaType": MANIFEST, "digest": "sha256:" + hexd, "size": 1}])
    del config
    refused(oci.path, "names itself")


def test_an_index_containing_itself(oci):
    hexd = "f" * 64
    oci.blob({"schemaVersion": 2, "mediaType": INDEX, "manifests": [{"mediaType": INDEX, "digest": "sha256:" + hexd,
                                                                      "size": 1, "platform": {"os": "linux",
                                                                                              "architecture": "amd64"}}]},
             name=hexd)
    oci.index([{"mediaType": INDEX, "digest": "sha256:" + hexd, "size": 1}])
    refused(oci.path, "loop")


def test_platform_entries_that_loop_between_two_indexes(oci):
    a, b = "a" * 64, "b" * 64
    for name, other, arch in ((a, b, "amd64"), (b, a, "arm64")):
        oci.blob({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
            {"mediaType": INDEX, "digest": "sha256:" + other, "size": 1, "platform": {"os": "linux", "architecture": arch}},
            oci.image()]}, name=name)
    oci.index([{"mediaType": INDEX, "digest": "sha256:" + a, "size": 1}])
    refused(oci.path, "loop")


def test_indexes_nested_too_deep(oci):
    desc = oci.image()
    for _ in range(8):
        desc = oci.index([desc], name="inner")
    oci.index([desc])
    refused(oci.path, "nested deeper")


def test_an_index_too_wide(oci):
    desc = oci.image()
    oci.index([desc] * 1100)
    refused(oci.path, "more than 1024 manifests")


def test_a_huge_index_json_is_refused_before_it_is_read(oci):
    (oci.path / "index.json").write_bytes(b'{"manifests": [' + b'{"digest": "x"},' * (1 << 20) + b'{}]}')
    refused(oci.path, "larger than 16 MiB")


def test_diff_id_mismatch_behind_a_correct_blob_digest_fails_verify(oci):
    desc = oci.image(config_extra={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}})
    oci.index([desc])
    assert cli("docker-dir-id", oci.path).returncode == 0
    line = one_line_error(cli("docker-dir-id", "--verify", oci.path), EXIT_VERIFY)
    assert "diff_id" in line


def test_dir_layout_instance_outside(tmp_path):
    """containers' dir: layout: an index whose instance manifest file is a link out."""
    d = tmp_path / "img"
    d.mkdir()
    (d / "version").write_text("Directory Transport Version: 1.1\n")
    instance = "c" * 64
    (d / "manifest.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": MANIFEST, "digest": "sha256:" + instance, "size": 1}]}))
    (tmp_path / "evil.json").write_text("{}")
    os.symlink(tmp_path / "evil.json", d / f"{instance}.manifest.json")
    refused(d, "outside the image directory")
