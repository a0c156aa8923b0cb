"""docker-dir-save docker://REF DIR: images pulled from a registry with no engine (issue 21).

Every registry here is real: Debian's docker-registry (tests/registry.py: anonymous HTTP,
TLS + htpasswd Basic, TLS + token auth with its token server), filled by real clients
(`docker push`, `skopeo copy`, `podman manifest push --all`) or, for documents no client
writes, through the registry's own HTTP API. The oracles are real too: `docker pull` +
`docker images --no-trunc` and `podman pull` for the ID, `docker image inspect` for
RepoDigests, skopeo and umoci for what reads the directory. BlobProxy (tests/registry.py)
sends blob downloads to another host name and injects faults there.

What no real registry sends comes from a tiny hostile server in this file (see
test_hostile_server): distribution refuses to store a manifest over 4 MiB, JSON nested
deeper than Go's parser allows, or a manifest whose body contradicts its Content-Type; it
never serves a manifest that does not match the digest it was asked for; and its errors
and tokens are well-formed.
"""
import base64
import contextlib
import hashlib
import http.server
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

import registry as registry_module
from conftest import (BIN, cli, cli_on_tty, docker, image_id_of, import_image, one_line_error, private_ref, raw_save,
                      seeded_rng)
from engines import Unavailable, podman_env
from registry import RegistryServer, push_platform_index

from docker_dir.application.save import RegistryImage
from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CANT_WRITE, EXIT_ENGINE_UNAVAILABLE, EXIT_NO_PERMISSION,
                               EXIT_SELECTION, EXIT_USAGE, EXIT_VERIFY)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TEMP_MARK = ".docker-dir-save-"
NO_ENGINE = {"PATH": "/nonexistent"}  # no docker, no podman, nothing else either
MiB = 1 << 20


# -- helpers -----------------------------------------------------------------------------

def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def save(*args, env=None):
    return cli("docker-dir-save", *args, env=env)


def saved_id(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def dir_id(directory, *args):
    proc = cli("docker-dir-id", *args, directory)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def dir_json(directory, *args):
    proc = cli("docker-dir-id", "--json", *args, directory)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def verified(directory, *args):
    proc = cli("docker-dir-id", "--verify", *args, directory)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def blob_bytes(directory, digest):
    return (Path(directory) / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def dir_manifest(directory):
    """The OCI manifest DIR's index.json names (a single-image directory)."""
    index = json.loads((Path(directory) / "index.json").read_text())
    (descriptor,) = index["manifests"]
    return descriptor, json.loads(blob_bytes(directory, descriptor["digest"]))


def nothing_written(parent, *kept):
    """Neither DIR nor a temp dir of the save: only `kept` in parent."""
    assert sorted(os.listdir(parent)) == sorted(kept)


def tree_digest(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def isolated_env(tmp_path):
    """No engine on PATH and no login anywhere but what the test writes: the docker and
    containers places where credentials are looked for all point into tmp_path."""
    home = tmp_path / "home"
    for sub in (".docker", ".config", "run"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {"PATH": "/nonexistent", "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(home / "run")}


@contextlib.contextmanager
def trusted(ca_cert, *hosts, base="/etc/docker/certs.d"):
    """The CA in BASE/HOST:PORT/ca.crt for each host (where docker and podman look), removed after."""
    made = []
    try:
        for host in hosts:
            directory = Path(base) / host
            directory.mkdir(parents=True)
            made.append(directory)
            shutil.copy(ca_cert, directory / "ca.crt")
        yield made
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


def host_of(url):
    return urlsplit(url).netloc


def put_blob(registry, repo, data):
    """A blob uploaded with the registry's API (POST, then PUT ?digest=); returns its digest."""
    digest = sha256(data)
    started = registry.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"")
    assert started.status == 202, started.body
    location = urlsplit(started.headers["Location"])
    answer = registry.request("PUT", f"{location.path}?{location.query}&digest={quote(digest)}", data=data,
                              headers={"Content-Type": "application/octet-stream"})
    assert answer.status == 201, answer.body
    return digest


def put_manifest(registry, repo, reference, document, media_type):
    """A manifest or index stored with the registry's API; returns (digest, size)."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    answer = registry.request("PUT", f"/v2/{repo}/manifests/{reference}", data=data,
                              headers={"Content-Type": media_type})
    assert answer.status == 201, answer.body.decode()
    return sha256(data), len(data)


def podman_pull_id(registry, ref, workdir):
    """The ID podman shows after pulling HOST/ref (podman's storage is cleaned up after)."""
    try:
        env = podman_env(workdir)
    except Unavailable as why:
        pytest.fail(f"podman is the oracle here and is missing: {why}")
    source = f"{registry.host}/{ref}"
    pulled = subprocess.run(["podman", "pull", "-q", *registry.podman_flags(), source], env=env,
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    try:
        shown = subprocess.run(["podman", "images", "--no-trunc", "--format", "{{.ID}}", source], env=env,
                               capture_output=True, text=True, check=True).stdout.split()
    finally:
        subprocess.run(["podman", "rmi", "-f", pulled.stdout.strip()], env=env, capture_output=True)
    (image,) = set(shown)
    return image if image.startswith("sha256:") else "sha256:" + image


def docker_pull(registry, ref):
    """(ID as `docker images --no-trunc` shows it, RepoDigests) after `docker pull HOST/ref`."""
    source = f"{registry.host}/{ref}"
    registry.pull(ref)
    try:
        repository, tag = source.rsplit(":", 1)
        shown = docker("images", "--no-trunc", "--format", "{{.Tag}} {{.ID}}", repository).stdout.split("\n")
        image = dict(line.split() for line in shown if line.strip())[tag]
        digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", source).stdout)
    finally:
        docker("rmi", source, check=False)
    return image, digests


class Pushed:
    def __init__(self, registry, repo, tag, image_id, digest):
        self.registry, self.repo, self.tag, self.id, self.digest = registry, repo, tag, image_id, digest

    @property
    def ref(self):
        return f"{self.repo}:{self.tag}"

    @property
    def source(self):
        return f"docker://{self.registry.host}/{self.repo}:{self.tag}"

    def via(self, host):
        return f"docker://{host}/{self.repo}:{self.tag}"

    def manifest(self):
        return self.registry.manifest(self.repo, self.tag).json


def push(registry, engine_ref, repo=None, tag="1"):
    repo = repo or unique("pull/app")
    digest = registry.push(engine_ref, f"{repo}:{tag}").digest
    return Pushed(registry, repo, tag, image_id_of(engine_ref), digest)


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(docker_engine, rootfs, tmp_path_factory, registry_anon):
    """A 4-layer image (busybox, two 2 MiB random layers, a marker) in registry_anon; the
    engine keeps it (tests that need it absent use fresh images); engine_ref names it there."""
    context = tmp_path_factory.mktemp("app")
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    for name in ("a", "b"):
        (context / f"data-{name}.bin").write_bytes(os.urandom(2 * MiB))
    (context / "marker").write_text(uuid.uuid4().hex + "\n")
    ref = f"{unique('docker-dir-pull/app')}:1"
    (context / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\nCOPY data-a.bin /data/a.bin\n"
                                        "COPY data-b.bin /data/b.bin\nCOPY marker /marker\n"
                                        'ENV PATH=/bin\nCMD ["sh"]\n')
    docker("build", "-q", "-t", ref, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    pushed = push(registry_anon, ref)
    pushed.engine_ref = ref
    yield pushed
    docker("rmi", "-f", pushed.id, check=False)


@pytest.fixture
def fresh_pushed(fresh_image, registry_anon):
    """Factory: a new one-layer image pushed to registry_anon, then removed from the engine
    (unless `keep`), so a pull into the engine is a real one."""
    def make(keep=False):
        engine_ref = f"fixture/pull:{uuid.uuid4().hex[:8]}"
        fresh_image(engine_ref)
        pushed = push(registry_anon, engine_ref)
        if not keep:
            docker("rmi", "-f", pushed.id)
        return pushed
    return make


@pytest.fixture
def out(tmp_path):
    """An empty parent directory for DIR (out/img), so 'nothing written' is checkable."""
    parent = tmp_path / "out"
    parent.mkdir()
    return parent


# -- 1. the pull, with no engine ------------------------------------------------------------

def test_pull_by_tag_and_by_digest_with_no_engine(app, out):
    by_tag, by_digest = out / "tag", out / "digest"
    assert saved_id(save(app.source, by_tag, env=NO_ENGINE)) == app.id
    assert saved_id(save(f"docker://{app.registry.host}/{app.repo}@{app.digest}", by_digest,
                         env=NO_ENGINE)) == app.id
    for directory in (by_tag, by_digest):
        assert verified(directory) == app.id
        assert dir_json(directory)["repo_digests"] == [f"{app.registry.host}/{app.repo}@{app.digest}"]
    assert dir_json(by_tag)["repo_tags"] == [f"{app.registry.host}/{app.ref}"]
    assert dir_json(by_digest)["repo_tags"] == []  # a digest names no tag
    assert tree_digest(by_tag / "blobs") == tree_digest(by_digest / "blobs")


def test_several_sources_in_one_save(app, images, fresh_pushed, out, tmp_path):
    """A registry image, an engine image and an oci: directory in one save."""
    other = fresh_pushed()
    layout = tmp_path / "layout"
    assert saved_id(save(images.two[0], layout)) == images.two_id
    proc = save(app.source, images.one, f"oci:{layout}", other.source, out / "img")
    assert sorted(saved_id(proc).split()) == sorted({app.id, images.one_id, images.two_id, other.id})
    for image_id in (app.id, images.one_id, images.two_id, other.id):
        assert verified(out / "img", "--config", image_id) == image_id
    assert dir_id(out / "img", "--repo-tag", f"{app.registry.host}/{app.ref}") == app.id
    assert dir_id(out / "img", "--repo-tag", images.one) == images.one_id


@pytest.mark.parametrize("reference", ["python:3.12", "library/python:3.12", "docker.io/library/python:3.12",
                                       "index.docker.io/python:3.12", "python"])
def test_docker_hub_names_go_to_docker_hub(reference, out):
    """Docker's name rules: no host is Docker Hub, whose API is registry-1.docker.io; there
    is no internet here, so the pull fails there with 69."""
    assert str(RegistryImage(reference)) == "docker://docker.io/library/python:" + (
        "3.12" if ":" in reference else "latest")
    line = one_line_error(save(f"docker://{reference}", out / "img", env=NO_ENGINE), EXIT_ENGINE_UNAVAILABLE)
    assert "registry-1.docker.io" in line
    nothing_written(out)


@pytest.mark.parametrize("reference, registry, repository", [
    ("localhost/team/app:1", "localhost", "team/app"),
    ("registry.example:5000/app", "registry.example:5000", "app"),
    ("Team/app:1", "Team", "app"),  # capitals: a host, never a name
    ("team/app:1", "docker.io", "team/app"),  # one slash and no dot: a Docker Hub user's repository
])
def test_host_or_name(reference, registry, repository):
    assert str(RegistryImage(reference)).startswith(f"docker://{registry}/{repository}:")


@pytest.mark.parametrize("reference, said", [
    ("", "it is empty"),
    ("team/App:1", "lowercase"),
    ("app:-1", "a tag is"),
    ("app@sha256:abc", "the digest must be"),
    ("http://host/app", "no URL scheme"),
])
def test_malformed_references(reference, said, out):
    line = one_line_error(save(f"docker://{reference}", out / "img", env=NO_ENGINE), EXIT_USAGE)
    assert said in line
    nothing_written(out)


# -- 2. the ID users expect, layers as the registry serves them ------------------------------

def push_zstd(registry, pushed, workdir):
    """skopeo's zstd: the image copied into a dir: with zstd layers (an OCI manifest; skopeo
    converts the config too), then into the registry. The layer is the fresh image's own,
    so skopeo's blob-info cache knows no gzip twin of it to substitute."""
    copy = workdir / "zstd"
    registry.skopeo_copy(pushed.source, f"dir:{copy}", "--format", "oci", "--dest-compress",
                         "--dest-compress-format", "zstd")
    registry.skopeo_copy(f"dir:{copy}", f"docker://{registry.host}/{pushed.repo}:zstd")
    manifest = registry.manifest(pushed.repo, "zstd")
    return Pushed(registry, pushed.repo, "zstd", manifest.json["config"]["digest"], manifest.digest)


def push_uncompressed(registry, engine_ref, pushed, workdir):
    """Docker's config and the engine's uncompressed layer tar under an OCI manifest, pushed
    with the registry's API (what docker and podman also pull, BRIEF §8)."""
    exported = raw_save(engine_ref, workdir / "exported")
    (entry,) = json.loads((exported / "manifest.json").read_text())
    config = (exported / entry["Config"]).read_bytes()
    layers = [(exported / path).read_bytes() for path in entry["Layers"]]
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": put_blob(registry, pushed.repo, config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": put_blob(registry, pushed.repo, layer), "size": len(layer)}
                           for layer in layers]}
    digest, _ = put_manifest(registry, pushed.repo, "plain", document, OCI_MANIFEST)
    return Pushed(registry, pushed.repo, "plain", sha256(config), digest)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_id_is_the_one_docker_and_podman_pull_show(compression, fresh_pushed, out, tmp_path):
    """The ID docker-dir-id prints is the one `docker pull` + `docker images --no-trunc` and
    `podman pull` show; layers stay as the registry serves them (gzip from docker push,
    zstd from skopeo, uncompressed); --json gives the manifest digest and RepoDigests."""
    gzipped = fresh_pushed(keep=compression == "none")  # the uncompressed layer comes from the engine
    if compression == "gzip":
        pushed = gzipped
    elif compression == "zstd":
        pushed = push_zstd(gzipped.registry, gzipped, tmp_path)
    else:
        pushed = push_uncompressed(gzipped.registry, gzipped.id, gzipped, tmp_path)
        docker("rmi", "-f", gzipped.id)
    assert saved_id(save(pushed.source, out / "img", env=NO_ENGINE)) == pushed.id
    served = pushed.manifest()
    descriptor, kept = dir_manifest(out / "img")
    assert [layer["digest"] for layer in kept["layers"]] == [layer["digest"] for layer in served["layers"]]
    suffix = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[compression]
    assert [layer["mediaType"] for layer in kept["layers"]] == ["application/vnd.oci.image.layer.v1.tar" + suffix]
    for layer in served["layers"]:
        assert blob_bytes(out / "img", layer["digest"]) == pushed.registry.blob(pushed.repo, layer["digest"])
    summary = dir_json(out / "img")
    repo_digest = f"{pushed.registry.host}/{pushed.repo}@{pushed.digest}"
    assert summary["repo_digests"] == [repo_digest]
    if served["mediaType"] == OCI_MANIFEST:  # kept byte for byte: its digest is the registry's
        assert summary["manifest_digest"] == descriptor["digest"] == pushed.digest
    assert verified(out / "img") == pushed.id
    assert podman_pull_id(pushed.registry, pushed.ref, tmp_path / "podman") == pushed.id
    if compression != "zstd":  # dockerd 20.10 cannot read zstd layers
        image, repo_digests = docker_pull(pushed.registry, pushed.ref)
        assert image == pushed.id
        assert summary["repo_digests"] == repo_digests


# -- 3. multi-platform -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifest_list(registry_anon, rootfs, tmp_path_factory):
    """The same two platforms as platform_index, as a Docker manifest list of v2s2 manifests."""
    return push_platform_index(registry_anon, f"{unique('index-v2s2')}/multi:1", rootfs,
                               tmp_path_factory.mktemp("manifest-list"), manifest_format="v2s2")


@pytest.fixture(params=["oci index", "docker manifest list"])
def index(request):
    return request.getfixturevalue("platform_index" if request.param == "oci index" else "manifest_list")


def config_of(index, platform):
    return index.registry.manifest(index.repo, index.manifests[platform]).json["config"]["digest"]


def skopeo_config_digest(directory, tag, arch=None):
    """The digest of the config skopeo reads from oci:DIR:TAG (for this host, or `arch`)."""
    proc = subprocess.run(["skopeo", *(["--override-arch", arch] if arch else []), "inspect", "--config", "--raw",
                           f"oci:{directory}:{tag}"], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    return sha256(proc.stdout)


def umoci_unpacks(directory, tag, workdir):
    copy = workdir / "umoci-layout"
    shutil.copytree(directory, copy)  # umoci writes into the layout it unpacks from (its lock)
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{copy}:{tag}", workdir / "bundle"], check=True,
                   capture_output=True)
    return (workdir / "bundle" / "rootfs" / "platform").read_text().strip()


def test_platform_of_an_index(index, out, tmp_path):
    source = f"docker://{index.registry.host}/{index.repo_tag}"
    native, foreign = config_of(index, index.native), config_of(index, index.foreign)
    assert saved_id(save(source, out / "native", env=NO_ENGINE)) == native
    assert saved_id(save("--platform", index.foreign, source, out / "foreign", env=NO_ENGINE)) == foreign
    assert verified(out / "native") == native and verified(out / "foreign") == foreign
    config = json.loads(blob_bytes(out / "foreign", foreign))
    assert f"{config['os']}/{config['architecture']}" == index.foreign
    assert dir_json(out / "foreign")["repo_digests"] == [f"{index.registry.host}/{index.repo}@{index.digest}"]
    assert umoci_unpacks(out / "foreign", index.tag, tmp_path) == index.foreign  # the marker file of that image
    line = one_line_error(save("--platform", "linux/s390x", source, out / "none", env=NO_ENGINE), EXIT_SELECTION)
    assert "linux/s390x" in line and index.native in line and index.foreign in line
    nothing_written(out, "native", "foreign")


def test_all_platforms(index, out, tmp_path):
    """The whole index kept: docker-dir-id and exec choose with --platform, skopeo reads it
    (this host's platform, or another with --override-arch). umoci 0.4.7 lists it but
    unpacks no nested index ("tag is ambiguous", as for skopeo's own `copy --all` layout),
    so it unpacks the single-platform pulls of test_platform_of_an_index instead."""
    source = f"docker://{index.registry.host}/{index.repo_tag}"
    native, foreign = config_of(index, index.native), config_of(index, index.foreign)
    directory = out / "img"
    assert sorted(saved_id(save("--all-platforms", source, directory, env=NO_ENGINE)).split()) == sorted(
        [native, foreign])
    assert dir_id(directory) == native
    assert verified(directory, "--platform", index.foreign) == foreign
    assert verified(directory, "--platform", index.native) == native
    try:
        ran = cli("docker-dir-exec", "--platform", index.native, directory, "cat", "/platform", cwd=tmp_path)
        assert (ran.returncode, ran.stdout) == (0, index.native + "\n"), ran.stderr
    finally:
        docker("rmi", "-f", private_ref(native), check=False)
    assert skopeo_config_digest(directory, index.tag) == native
    assert skopeo_config_digest(directory, index.tag, index.foreign.split("/")[1]) == foreign
    listed = subprocess.run(["umoci", "ls", "--layout", directory], capture_output=True, text=True)
    assert listed.stdout.split() == [index.tag], listed.stderr
    if index.media_type == OCI_INDEX:  # the registry's own index, byte for byte
        (descriptor,) = json.loads((directory / "index.json").read_text())["manifests"]
        assert descriptor["digest"] == index.digest
    line = one_line_error(save("--all-platforms", source, f"oci:{directory}", out / "two", env=NO_ENGINE),
                          EXIT_USAGE)
    assert "--all-platforms" in line
    nothing_written(out, "img")


# -- 4. authentication -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(docker_engine, rootfs):
    """A one-layer image for the registries with auth."""
    ref = f"{unique('docker-dir-pull/small')}:1"
    image = import_image(rootfs, ref, label=uuid.uuid4().hex)
    yield ref
    docker("rmi", "-f", image, check=False)


@pytest.fixture(scope="module")
def on_tls(small, registry_tls):
    return push(registry_tls, small)


@pytest.fixture(scope="module")
def on_token(small, registry_token):
    return push(registry_token, small)  # the token server lets alice pull any repository


@pytest.fixture
def trust_tls(registry_tls):
    with trusted(registry_tls.ca_cert, registry_tls.host):
        yield registry_tls


@pytest.fixture
def trust_token(registry_token):
    with trusted(registry_token.ca_cert, registry_token.host, host_of(registry_token.token_server.url)):
        yield registry_token


def secrets_of(credentials):
    """What must never show: the password, and the base64 of user:password (Basic, config.json)."""
    user, password = credentials
    return [password, base64.b64encode(f"{user}:{password}".encode()).decode()]


def assert_secrets_absent(secrets, proc, *directories):
    assert secrets and all(secrets)
    for secret in secrets:
        assert secret not in proc.stdout and secret not in proc.stderr
    files = [path for directory in directories for path in Path(directory).rglob("*") if path.is_file()]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path


def write_helper(directory, name, credentials, log):
    """docker-credential-NAME standing in for a real keychain helper (docker-credential-pass,
    -secretservice, -osxkeychain): the `get` protocol, server on stdin, JSON on stdout."""
    directory.mkdir(parents=True, exist_ok=True)
    helper = directory / f"docker-credential-{name}"
    helper.write_text("#!/bin/sh\n"
                      '[ "$1" = get ] || exit 1\n'
                      "read -r server\n"
                      f'echo "$server" >> {log}\n'
                      f'printf \'{{"ServerURL":"%s","Username":"{credentials[0]}","Secret":"{credentials[1]}"}}\\n\' '
                      '"$server"\n')
    helper.chmod(0o755)
    return directory


def login(argv, credentials, env):
    proc = subprocess.run([*argv, "-u", credentials[0], "--password-stdin"], input=credentials[1] + "\n", env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def credentials_env(source, registry, tmp_path, credentials=None):
    """An isolated environment where `source` holds the credentials for registry."""
    credentials = credentials or registry.credentials
    env = isolated_env(tmp_path)
    if source == "config.json auths":
        registry.docker_config(env["DOCKER_CONFIG"], credentials)
    elif source == "docker login":  # into $DOCKER_CONFIG/config.json
        login(["docker", "login", registry.host], credentials, dict(os.environ, DOCKER_CONFIG=env["DOCKER_CONFIG"]))
        assert registry.host in json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())["auths"]
    elif source == "podman login":  # into $XDG_RUNTIME_DIR/containers/auth.json
        without_docker_config = {name: value for name, value in os.environ.items() if name != "DOCKER_CONFIG"}
        login(["podman", "login", "--cert-dir", registry.cert_dir, registry.host], credentials,
              dict(without_docker_config, XDG_RUNTIME_DIR=env["XDG_RUNTIME_DIR"]))
        assert (Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json").exists()
    elif source == "credHelpers":
        name = unique("ddtest")
        helpers = write_helper(tmp_path / "helpers", name, credentials, tmp_path / "helper.log")
        (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"credHelpers": {registry.host: name}}))
        env["PATH"] = f"{helpers}:/nonexistent"
    else:
        env["REGISTRY_AUTH_FILE"] = str(registry.auth_file(tmp_path / "auth.json", credentials))
    return env


@pytest.mark.parametrize("source", ["docker login", "podman login", "credHelpers", "REGISTRY_AUTH_FILE"])
@pytest.mark.parametrize("kind", ["basic", "token"])
def test_credentials(kind, source, request, out, tmp_path):
    registry = request.getfixturevalue("trust_tls" if kind == "basic" else "trust_token")
    pushed = request.getfixturevalue("on_tls" if kind == "basic" else "on_token")
    env = credentials_env(source, registry, tmp_path)
    if kind == "token":
        registry.token_server.requests.clear()
    proc = save(pushed.source, out / "img", env=env)
    assert saved_id(proc) == pushed.id
    assert verified(out / "img") == pushed.id
    if source == "credHelpers":  # the helper was asked, for this registry
        assert (tmp_path / "helper.log").read_text().split() == [registry.host]
    if kind == "token":  # the token was alice's, for pulling this repository
        asked = [r for r in registry.token_server.requests if r.scopes]
        assert asked and all(r.user == registry.username and r.status == 200 for r in asked)
        assert {scope for r in asked for scope in r.scopes} == {f"repository:{pushed.repo}:pull"}
    assert_secrets_absent(secrets_of(registry.credentials), proc, out)


def test_token_anonymous_pull_of_a_public_repository(small, trust_token, out, tmp_path):
    pushed = push(trust_token, small, repo=unique("public/app"))
    trust_token.token_server.requests.clear()
    assert saved_id(save(pushed.source, out / "img", env=isolated_env(tmp_path))) == pushed.id
    asked = [r for r in trust_token.token_server.requests if r.scopes]
    assert asked and all(r.user is None for r in asked)


@pytest.mark.parametrize("kind, case", [("basic", "wrong password"), ("basic", "no credentials"),
                                        ("token", "wrong password"), ("token", "no credentials"),
                                        ("token", "no grant")])
def test_refused_login(kind, case, request, out, tmp_path):
    """77, naming the registry and how to log in; nothing written; no secret in the message,
    the --debug traceback, or anything on disk."""
    registry = request.getfixturevalue("trust_tls" if kind == "basic" else "trust_token")
    pushed = request.getfixturevalue("on_tls" if kind == "basic" else "on_token")
    user, password = registry.credentials
    if case == "wrong password":
        credentials = (user, "wrong-" + password)
    elif case == "no grant":
        credentials = (unique("nobody"), uuid.uuid4().hex)
        registry.token_server.add_user(*credentials)
    else:
        credentials = None
    env = isolated_env(tmp_path)
    if credentials:
        registry.docker_config(env["DOCKER_CONFIG"], credentials)
    refused = save(pushed.source, out / "img", env=env)
    line = one_line_error(refused, EXIT_NO_PERMISSION)
    assert registry.host in line and f"docker login {registry.host}" in line
    if case == "wrong password":
        assert "refused the credentials" in line
    nothing_written(out)
    debug = save("--debug", pushed.source, out / "img", env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "AuthRefused" in debug.stderr
    nothing_written(out)
    secrets = secrets_of(registry.credentials) + (secrets_of(credentials) if credentials else [])
    for proc in (refused, debug):
        assert_secrets_absent(secrets, proc, out)


def test_damaged_credentials_file(on_tls, trust_tls, out, tmp_path):
    """A config.json nested past the parser's recursion is named, not a traceback."""
    env = isolated_env(tmp_path)
    config = Path(env["DOCKER_CONFIG"]) / "config.json"
    config.write_bytes(b'{"auths":' + b"[" * 100000 + b"]" * 100000 + b"}")
    line = one_line_error(save(on_tls.source, out / "img", env=env), EXIT_USAGE)
    assert str(config) in line
    nothing_written(out)


# -- 5. TLS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["/etc/docker/certs.d", "/etc/containers/certs.d"])
def test_ca_from_certs_d(base, on_tls, out, tmp_path):
    registry = on_tls.registry
    env = credentials_env("config.json auths", registry, tmp_path)
    line = one_line_error(save(on_tls.source, out / "img", env=env), EXIT_ENGINE_UNAVAILABLE)
    assert "certificate" in line and f"/etc/docker/certs.d/{registry.host}/ca.crt" in line
    nothing_written(out)
    with trusted(registry.ca_cert, registry.host, base=base):
        assert saved_id(save(on_tls.source, out / "img", env=env)) == on_tls.id


class ClientCertRegistry(RegistryServer):
    """The TLS + Basic registry that also wants a client certificate its CA signed
    (distribution's http.tls.clientcas). The readiness check and the oracle show one."""

    def _prepare(self):
        super()._prepare()
        _, _, self.client_cert, self.client_key = self.ca.issue("client", "docker-dir test client", server=False)
        ca, cert, key = self.ca, str(self.client_cert), str(self.client_key)

        def with_client_certificate():
            context = ssl.create_default_context(cafile=str(ca.cert_path))
            context.load_cert_chain(cert, key)
            return context
        self.ca.client_context = with_client_certificate
        shutil.copy(self.client_cert, self.cert_dir / "client.cert")  # for skopeo --cert-dir
        shutil.copy(self.client_key, self.cert_dir / "client.key")

    def _write_config(self):
        super()._write_config()
        path = self.dir / "config.yml"
        config = json.loads(path.read_text())
        config["http"]["tls"]["clientcas"] = [str(self.ca_cert)]
        path.write_text(json.dumps(config))


def test_client_certificate_from_certs_d(fresh_pushed, out, tmp_path):
    with ClientCertRegistry("basic-tls", label="registry (client certificates)") as registry:
        source = fresh_pushed()
        pushed = Pushed(registry, source.repo, source.tag, source.id, None)
        copy_between(source, registry)
        env = credentials_env("config.json auths", registry, tmp_path)
        with trusted(registry.ca_cert, registry.host) as (certs,):
            line = one_line_error(save(pushed.source, out / "img", env=env), EXIT_ENGINE_UNAVAILABLE)
            assert f"{registry.host} refused the TLS session" in line
            assert f"(NAME.cert and NAME.key) in /etc/docker/certs.d/{registry.host}/" in line
            nothing_written(out)
            shutil.copy(registry.client_cert, certs / "client.cert")
            shutil.copy(registry.client_key, certs / "client.key")
            assert saved_id(save(pushed.source, out / "img", env=env)) == pushed.id


def copy_between(pushed, registry):
    """skopeo copy of a pushed image into another registry, same repository and tag."""
    subprocess.run(["skopeo", "copy", "-q", *pushed.registry.skopeo_flags("src-"), *registry.skopeo_flags("dest-"),
                    pushed.source, f"docker://{registry.host}/{pushed.ref}"], check=True, capture_output=True)


def non_loopback_address():
    """docker0's address (a bridge local to this machine), else any other non-loopback one."""
    for selection in (["dev", "docker0"], []):
        listed = subprocess.run(["ip", "-4", "-o", "addr", "show", *selection], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            address = line.split()[3].split("/")[0]
            if not address.startswith("127."):
                return address
    return None


class BoundRegistry(RegistryServer):
    """The anonymous plain HTTP registry on another local address than loopback."""

    def __init__(self, address):
        super().__init__("anonymous", label=f"registry (plain HTTP on {address})")
        self.address = address

    @property
    def host(self):
        return f"{self.address}:{self.port}"


def test_plain_http_only_to_loopback_or_insecure_registry(fresh_pushed, out):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve a registry on")
    with BoundRegistry(address) as registry:
        source = fresh_pushed()
        pushed = Pushed(registry, source.repo, source.tag, source.id, None)
        copy_between(source, registry)
        line = one_line_error(save(pushed.source, out / "img", env=NO_ENGINE), EXIT_ENGINE_UNAVAILABLE)
        assert "does not speak TLS" in line and f"--insecure-registry {registry.host}" in line
        nothing_written(out)
        assert saved_id(save("--insecure-registry", registry.host, pushed.source, out / "img",
                             env=NO_ENGINE)) == pushed.id


# -- 6. redirects to blob storage --------------------------------------------------------------

def blob_digests(pushed):
    manifest = pushed.manifest()
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


def digest_of(request):
    return request.path.rsplit("/", 1)[-1]


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_blobs_from_storage_without_the_registry_authorization(kind, request, blob_proxy, out, tmp_path):
    """Blob GETs are redirected to another host name (BlobProxy's storage): the blobs come
    from there, and the registry's Authorization never reaches it."""
    registry = request.getfixturevalue("registry_tls" if kind == "basic" else "registry_token")
    pushed = request.getfixturevalue("on_tls" if kind == "basic" else "on_token")
    proxy = blob_proxy(registry)
    hosts = [proxy.host, proxy.storage_host] + ([host_of(registry.token_server.url)] if kind == "token" else [])
    env = isolated_env(tmp_path)
    registry.docker_config(env["DOCKER_CONFIG"], registry.credentials, host=proxy.host)
    with trusted(registry.ca_cert, *hosts):
        assert saved_id(save(pushed.via(proxy.host), out / "img", env=env)) == pushed.id
    assert verified(out / "img") == pushed.id
    wanted = blob_digests(pushed)
    redirected = [r for r in proxy.requests if r.redirected]
    assert {digest_of(r) for r in redirected} == wanted
    scheme = {"basic": "Basic ", "token": "Bearer "}[kind]
    assert all(r.headers.get("authorization", "").startswith(scheme) for r in redirected)
    fetched = [r for r in proxy.storage_requests if r.method == "GET"]
    assert {digest_of(r) for r in fetched} == wanted and all(r.status == 200 for r in fetched)
    assert [r.headers["authorization"] for r in fetched if "authorization" in r.headers] == []


# -- 7. integrity and atomicity ---------------------------------------------------------------

def largest_layer(pushed):
    layer = max(pushed.manifest()["layers"], key=lambda layer: layer["size"])
    return layer["digest"], layer["size"]


@pytest.fixture
def old_dir(fresh_pushed, out):
    """Factory: DIR holding another image already (for --force), with its files' digests."""
    def make():
        other = fresh_pushed()
        assert saved_id(save(other.source, out / "img", env=NO_ENGINE)) == other.id
        return other, tree_digest(out / "img")
    return make


@pytest.mark.parametrize("force", [False, True])
def test_corrupt_blob(force, app, blob_proxy, old_dir, out):
    old = old_dir() if force else None
    proxy = blob_proxy(app.registry)
    digest, _ = largest_layer(app)
    corrupt = proxy.corrupt(match=digest)
    line = one_line_error(save(*(["--force"] if force else []), app.via(proxy.host), out / "img", env=NO_ENGINE),
                          EXIT_VERIFY)
    assert corrupt.fired and f"blob {digest}" in line
    if force:
        nothing_written(out, "img")
        assert tree_digest(out / "img") == old[1] and verified(out / "img") == old[0].id
    else:
        nothing_written(out)


def test_cut_transfer_resumes_with_range(app, blob_proxy, out):
    proxy = blob_proxy(app.registry)
    digest, size = largest_layer(app)
    after = 256 << 10
    cut = proxy.cut(after, match=digest, times=2)
    assert saved_id(save(app.via(proxy.host), out / "img", env=NO_ENGINE)) == app.id
    assert cut.fired == 2 and verified(out / "img") == app.id
    tries = [r for r in proxy.storage_requests if r.method == "GET" and digest_of(r) == digest]
    assert [(r.status, r.range) for r in tries] == [(200, None), (206, (after, size - 1)),
                                                   (206, (2 * after, size - 1))]
    assert [r.bytes_out for r in tries] == [after, after, size - 2 * after]


def test_cut_more_times_than_the_retries(app, blob_proxy, out):
    proxy = blob_proxy(app.registry)
    digest, _ = largest_layer(app)
    cut = proxy.cut(256 << 10, match=digest, times=None)
    line = one_line_error(save(app.via(proxy.host), out / "img", env=NO_ENGINE), EXIT_ENGINE_UNAVAILABLE)
    assert f"blob {digest}" in line and "broke 4 times" in line
    assert cut.fired == 4  # the first try and 3 resumes: bounded
    nothing_written(out)


@contextlib.contextmanager
def storage_held(monkeypatch):
    """Blob bytes from BlobProxy's storage wait until released: a pull is then surely
    mid-download (its .partial files exist). Yields (started, release) events."""
    original = registry_module._StorageHandler._send_bytes
    started, release = threading.Event(), threading.Event()

    def held(handler, *args):
        started.set()
        release.wait(120)
        return original(handler, *args)

    monkeypatch.setattr(registry_module._StorageHandler, "_send_bytes", held)
    try:
        yield started, release
    finally:
        release.set()


def temp_dirs(parent):
    return sorted(name for name in os.listdir(parent) if TEMP_MARK in name)


@pytest.mark.parametrize("force", [False, True])
def test_sigkill_mid_download(force, app, blob_proxy, old_dir, out, monkeypatch):
    """kill -9 while blobs stream: DIR absent (or the old one whole); the next save to
    DIR removes what the killed one left."""
    old = old_dir() if force else None
    proxy = blob_proxy(app.registry)
    argv = [sys.executable, str(BIN / "docker-dir-save"), *(["--force"] if force else []), app.via(proxy.host),
            str(out / "img")]
    with storage_held(monkeypatch) as (started, release):
        proc = subprocess.Popen(argv, env=NO_ENGINE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert started.wait(60), "the pull never reached the blob storage"
            (temp,) = temp_dirs(out)
            assert [p for p in (out / temp).rglob("*.partial")], "no blob was being written"
        finally:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    if force:
        assert tree_digest(out / "img") == old[1] and verified(out / "img") == old[0].id
    else:
        assert not (out / "img").exists()
    assert temp_dirs(out) == [temp]  # SIGKILL leaves it: nothing could clean up
    assert saved_id(save("--force", app.source, out / "img", env=NO_ENGINE)) == app.id
    nothing_written(out, "img")


def test_sigkill_at_random_moments(app, out):
    """kill -9 at random moments of pulls: each time DIR is absent or whole."""
    rng, _ = seeded_rng()
    argv = [sys.executable, str(BIN / "docker-dir-save"), app.source, str(out / "img")]
    for _ in range(6):
        proc = subprocess.Popen(argv, env=NO_ENGINE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait()
        if (out / "img").exists():
            assert verified(out / "img") == app.id
            shutil.rmtree(out / "img")
    assert saved_id(save(app.source, out / "img", env=NO_ENGINE)) == app.id
    nothing_written(out, "img")


# -- 8. only what is missing, in parallel, with progress ----------------------------------------

def test_repull_downloads_only_the_new_layer(app, blob_proxy, out, tmp_path):
    repo = unique("pull/updated")
    first = Pushed(app.registry, repo, "1", app.id, app.registry.push(app.engine_ref, f"{repo}:1").digest)
    proxy = blob_proxy(app.registry)
    assert saved_id(save(first.via(proxy.host), out / "img", env=NO_ENGINE)) == app.id
    context = tmp_path / "update"
    context.mkdir()
    (context / "top.bin").write_bytes(os.urandom(MiB))
    (context / "Dockerfile").write_text(f"FROM {app.engine_ref}\nCOPY top.bin /top.bin\n")
    updated_ref = f"{unique('docker-dir-pull/updated')}:1"
    docker("build", "-q", "-t", updated_ref, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    try:
        second = push(app.registry, updated_ref, repo, "1")
    finally:
        docker("rmi", "-f", updated_ref, check=False)
    manifest = second.manifest()
    new_layer = manifest["layers"][-1]
    proxy.forget()
    assert saved_id(save("--force", second.via(proxy.host), out / "img", env=NO_ENGINE)) == second.id
    assert verified(out / "img") == second.id
    fetched = [r for r in proxy.storage_requests if r.method == "GET"]
    assert {digest_of(r) for r in fetched} == {new_layer["digest"], manifest["config"]["digest"]}
    downloaded = proxy.bytes_downloaded()
    new_bytes = new_layer["size"] + manifest["config"]["size"]
    print(f"re-pull: {downloaded} bytes downloaded for a new layer of {new_layer['size']} bytes")
    assert new_bytes <= downloaded <= new_bytes + (64 << 10)  # + manifest and /v2/


class InFlight:
    """Counts blob responses BlobProxy's storage is sending at once; each waits (bounded)
    for a second one, so a client fetching in parallel shows it and a serial one does not."""

    def __init__(self, monkeypatch):
        self.now = self.most = 0
        self.condition = threading.Condition()
        original = registry_module._StorageHandler._send_bytes

        def counted(handler, *args):
            with self.condition:
                self.now += 1
                self.most = max(self.most, self.now)
                self.condition.notify_all()
                self.condition.wait_for(lambda: self.most >= 2, timeout=5)
            try:
                return original(handler, *args)
            finally:
                with self.condition:
                    self.now -= 1

        monkeypatch.setattr(registry_module._StorageHandler, "_send_bytes", counted)


def test_blobs_download_in_parallel(app, blob_proxy, out, monkeypatch):
    proxy = blob_proxy(app.registry)
    in_flight = InFlight(monkeypatch)
    assert saved_id(save(app.via(proxy.host), out / "img", env=NO_ENGINE)) == app.id
    assert len([r for r in proxy.storage_requests if r.method == "GET"]) == len(blob_digests(app)) == 5
    assert in_flight.most >= 2


def test_progress_line_on_a_terminal(app, out):
    from docker_dir.cli.reporting import human

    manifest = app.manifest()
    total = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    status, output = cli_on_tty("docker-dir-save", app.source, out / "img", env=NO_ENGINE)
    text = output.decode()
    assert status == 0, text
    progress = [line for line in text.replace("\r", "\n").splitlines() if line.startswith(f"pulling {app.source}: ")]
    assert progress, text
    final = progress[-1]
    assert f"{human(total)} of {human(total)} (100%), " in final and "/s, " in final


# -- 9. errors ---------------------------------------------------------------------------------

def test_unreachable_registry(out):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    line = one_line_error(save(f"docker://127.0.0.1:{port}/x/y:1", out / "img", env=NO_ENGINE),
                          EXIT_ENGINE_UNAVAILABLE)
    assert f"cannot connect to 127.0.0.1:{port}" in line
    nothing_written(out)


@pytest.mark.parametrize("what", ["repository", "tag", "digest"])
def test_no_such_image(what, app, out):
    host = app.registry.host
    source = {"repository": f"docker://{host}/{unique('no/such')}:1",
              "tag": f"docker://{host}/{app.repo}:no-such-tag",
              "digest": f"docker://{host}/{app.repo}@sha256:{'0' * 64}"}[what]
    line = one_line_error(save(source, out / "img", env=NO_ENGINE), EXIT_SELECTION)
    assert host in line and "HTTP 404" in line
    nothing_written(out)


def image_parts(pushed):
    """(config descriptor, layer descriptors) of a pushed image, to build documents on."""
    manifest = pushed.manifest()
    return manifest["config"], manifest["layers"]


def oci_manifest(config, layers):
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": dict(config, mediaType=OCI_CONFIG),
            "layers": layers}


def descriptor(media_type, digest_size):
    digest, size = digest_size
    return {"mediaType": media_type, "digest": digest, "size": size}


def hostile_in_registry(registry, pushed, case):
    """A document that breaks docker-dir's rules but that distribution stores and serves;
    returns the repository:tag to pull."""
    repo = unique("hostile/doc")
    config, layers = image_parts(pushed)
    registry.push(pushed.engine_ref, f"{repo}:base")  # the blobs, in this repository
    manifest = put_manifest(registry, repo, "manifest", oci_manifest(config, [
        dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar+gzip") for layer in layers]), OCI_MANIFEST)
    if case == "deep nesting":  # indexes in indexes, deeper than any tool writes
        child = descriptor(OCI_MANIFEST, manifest)
        for level in range(6):
            child = descriptor(OCI_INDEX, put_manifest(registry, repo, f"level{level}",
                                                       {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                        "manifests": [child]}, OCI_INDEX))
        put_manifest(registry, repo, "1", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]},
                     OCI_INDEX)
    elif case == "descriptor that lies":  # an index naming an index as an image manifest
        inner = put_manifest(registry, repo, "inner", {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                       "manifests": [descriptor(OCI_MANIFEST, manifest)]}, OCI_INDEX)
        put_manifest(registry, repo, "1", {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": [descriptor(OCI_MANIFEST, inner)]}, OCI_INDEX)
    return f"{repo}:1"


@pytest.mark.parametrize("case, said", [("deep nesting", "nested deeper"),
                                        ("descriptor that lies", "its media type says")])
def test_hostile_documents_in_a_real_registry(case, said, app, out):
    ref = hostile_in_registry(app.registry, app, case)
    line = one_line_error(save(f"docker://{app.registry.host}/{ref}", out / "img", env=NO_ENGINE), EXIT_BAD_DIR)
    assert said in line
    nothing_written(out)


class ForeignLayersRegistry(RegistryServer):
    """The anonymous registry configured to store manifests whose layers name URLs
    (distribution refuses them unless validation.manifests.urls allows some)."""

    def _write_config(self):
        super()._write_config()
        path = self.dir / "config.yml"
        config = json.loads(path.read_text())
        config["validation"] = {"manifests": {"urls": {"allow": ["^https?://"]}}}
        path.write_text(json.dumps(config))


def test_layer_urls_pointing_elsewhere(app, out):
    """A non-distributable layer to be fetched from another URL: refused (65), neither
    fetched there nor trusted."""
    with ForeignLayersRegistry("anonymous", label="registry (foreign layers allowed)") as registry:
        repo = "hostile/urls"
        config, layers = image_parts(app)
        for descriptor_ in (config, *layers):
            put_blob(registry, repo, app.registry.blob(app.repo, descriptor_["digest"]))
        foreign = {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                   "digest": sha256(b"elsewhere"), "size": 9, "urls": ["http://elsewhere.example/layer.tar.gz"]}
        put_manifest(registry, repo, "1", oci_manifest(config, [foreign] + layers), OCI_MANIFEST)
        line = one_line_error(save(f"docker://{registry.host}/{repo}:1", out / "img", env=NO_ENGINE), EXIT_BAD_DIR)
    assert f"layer {foreign['digest'][:19]}" in line and "other URLs" in line
    nothing_written(out)


class HostileRegistry:
    """A tiny fake registry on loopback for what distribution never sends (see the module
    docstring). `routes` maps a path (query string ignored) to (status, headers, body), or
    (Content-Type, body) for a 200; GET /v2/ answers 200 unless routed; the rest is 404."""

    def __init__(self, routes):
        self.routes = routes
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                route = owner.routes.get(self.path.split("?", 1)[0])
                if route is None and self.path == "/v2/":
                    route = (200, {}, b"{}")
                elif route is None:
                    route = (404, {"Content-Type": "application/json"},
                             b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
                elif len(route) == 2:
                    route = (200, {"Content-Type": route[0]}, route[1])
                status, headers, body = route
                self.send_response(status)
                for name, value in dict(headers, **{"Content-Length": str(len(body))}).items():
                    self.send_header(name, value.replace("{host}", owner.host))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.host = f"127.0.0.1:{self.server.server_port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile_registry():
    servers = []

    def make(routes):
        servers.append(HostileRegistry(routes))
        return servers[-1]
    yield make
    for server in servers:
        server.stop()


def nested(depth):
    """JSON arrays nested `depth` deep: small, and deeper than Python's parser recurses."""
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("case, code, said", [
    ("huge", EXIT_BAD_DIR, "larger than 4 MiB"),
    ("deeply nested", EXIT_BAD_DIR, "not valid JSON"),
    ("deeply nested error", EXIT_SELECTION, "HTTP 404"),
    ("deeply nested token answer", EXIT_BAD_DIR, "answered without a token"),
    ("type that lies", EXIT_BAD_DIR, "but it says it is"),
    ("other content for a digest", EXIT_VERIFY, "sent content with digest"),
])
def test_hostile_server(case, code, said, hostile_registry, out):
    """Documents distribution refuses to store or never sends: a manifest over its 4 MiB
    limit, JSON nested past any parser's recursion (as a manifest, an error body, a token
    service's answer), a body whose mediaType contradicts the Content-Type it is served
    with, and content that is not what its digest names."""
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"{}"), "size": 2}, "layers": []}
    reference = "1"
    path = "/v2/hostile/doc/manifests/1"
    routes = {}
    if case == "huge":
        routes[path] = (OCI_MANIFEST, json.dumps(dict(manifest, padding="x" * (5 * MiB))).encode())
    elif case == "deeply nested":
        routes[path] = (OCI_MANIFEST, b'{"mediaType":"%s","layers":%s}' % (OCI_MANIFEST.encode(), nested(100000)))
    elif case == "deeply nested error":
        routes[path] = (404, {"Content-Type": "application/json"}, b'{"errors":%s}' % nested(5000))
    elif case == "deeply nested token answer":
        routes["/v2/"] = (401, {"WWW-Authenticate": 'Bearer realm="http://{host}/token",service="hostile"'}, b"")
        routes["/token"] = ("application/json", b'{"token":%s}' % nested(100000))
    elif case == "type that lies":
        routes[path] = (OCI_INDEX, json.dumps(manifest).encode())
    else:
        reference = sha256(b"what was asked for")
        routes[f"/v2/hostile/doc/manifests/{reference}"] = (OCI_MANIFEST, json.dumps(manifest).encode())
    server = hostile_registry(routes)
    separator = "@" if reference.startswith("sha256:") else ":"
    line = one_line_error(save(f"docker://{server.host}/hostile/doc{separator}{reference}", out / "img",
                               env=NO_ENGINE), code)
    assert said in line and server.host in line
    nothing_written(out)


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs: the app image (about 5 MB) does not fit, a one-layer image (1 MB) does."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("force", [False, True])
def test_disk_full(force, app, fresh_pushed, small_fs):
    old = None
    if force:
        other = fresh_pushed()
        assert saved_id(save(other.source, small_fs / "img", env=NO_ENGINE)) == other.id
        old = tree_digest(small_fs / "img")
    line = one_line_error(save(*(["--force"] if force else []), app.source, small_fs / "img", env=NO_ENGINE),
                          EXIT_CANT_WRITE)
    assert "no space" in line.lower()
    if force:
        nothing_written(small_fs, "img")
        assert tree_digest(small_fs / "img") == old and verified(small_fs / "img") == other.id
    else:
        nothing_written(small_fs)


# -- 10. and after: the pulled directory runs; the hot paths import no registry client ---------------

REGISTRY_MODULES = {"docker_dir.registry", "docker_dir.application.pull", "ssl", "http.client"}


def imported_modules(tool, *args, cwd=None, env=None):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(BIN / tool), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}


def label_of(directory, image_id):
    return json.loads(blob_bytes(directory, image_id))["config"]["Labels"]["docker-dir-test"]


def test_pulled_dir_runs_with_docker_exec(fresh_pushed, out, tmp_path):
    """Pulled with no engine, then run on the main dockerd (which never had the image: it
    loads the registry's gzip layers); docker-dir-id and the hot exec import nothing of the
    registry client."""
    pushed = fresh_pushed()
    assert image_id_of(pushed.id) is None
    assert saved_id(save(pushed.source, out / "img", env=NO_ENGINE)) == pushed.id
    label = label_of(out / "img", pushed.id)
    proc = cli("docker-dir-exec", out / "img", "cat", "/docker-dir-test", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, label), proc.stderr
    assert image_id_of(private_ref(pushed.id)) == pushed.id
    id_imports = imported_modules("docker-dir-id", out / "img")
    assert "docker_dir.cli.id" in id_imports and not id_imports & REGISTRY_MODULES
    exec_imports = imported_modules("docker-dir-exec", out / "img", "true", cwd=tmp_path)
    assert "docker_dir.cli.exec" in exec_imports and not exec_imports & REGISTRY_MODULES


def test_hpc_path_with_charliecloud(fresh_pushed, tmp_path):
    """The no-engine workflow end to end as an unprivileged user with only ch-run on PATH and
    no daemon: pull, docker-dir-id, docker-dir-exec --engine charliecloud."""
    from hosts import ROOTLESS, charliecloud, or_skip, remove_tree, run_as, user_dir, user_venv

    ch_run = or_skip(charliecloud)
    venv = or_skip(user_venv)
    pushed = fresh_pushed()
    tools = Path(tempfile.mkdtemp(prefix="docker-dir-pull-ch-", dir="/var/tmp"))
    work = user_dir(ROOTLESS, "pull")
    try:
        tools.chmod(0o755)
        for program in (ch_run, shutil.which("setpriv")):
            os.symlink(program, tools / os.path.basename(program))
        env = {"PATH": str(tools), "DOCKER_HOST": "unix:///nonexistent/docker.sock",
               "DOCKER_DIR_CACHE": str(work / "cache")}

        def as_user(tool, *args):
            proc = run_as(ROOTLESS, [venv / f"docker-dir-{tool}", *map(str, args)], cwd=work, env=env)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        assert as_user("save", pushed.source, work / "img") == pushed.id + "\n"
        assert as_user("id", work / "img") == pushed.id + "\n"
        label = label_of(work / "img", pushed.id)
        assert as_user("exec", "--engine", "charliecloud", work / "img", "cat", "/docker-dir-test") == label
        assert (work / "img").stat().st_uid == pwd.getpwnam(ROOTLESS).pw_uid
    finally:
        remove_tree(work)
        shutil.rmtree(tools)
