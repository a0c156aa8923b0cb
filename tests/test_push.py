"""docker-dir-push DIR docker://REF against real registries (Debian's docker-registry:
anonymous, TLS + Basic, token auth), with no engine on PATH, and real clients pulling back
what it pushed: dockerd 20.10, Docker 26 (classic and containerd store), podman, skopeo and
docker-dir-save docker://. The BlobProxy in front of a registry records what was sent
and cuts uploads.

Side daemons live in network namespaces of their own, where the host's loopback registry
is out of reach: NamespaceRelay listens on the registry's own address inside the daemon's
namespace and forwards to it, so they pull the very reference docker-dir-push printed.
"""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import BIN, cli, cli_on_tty, docker, image_id_of, one_line_error

from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_ENGINE_FAILED, EXIT_ENGINE_UNAVAILABLE,
                               EXIT_NO_PERMISSION, EXIT_SELECTION, EXIT_USAGE, EXIT_VERIFY)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
LARGE = 8 << 20  # the bench-like layers of dirs.big are larger than this, the rest smaller
MiB = 1 << 20


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- images saved as directories, absent from the main daemon ---------------------------------

def build(rootfs, work, tag, random_mib=(), base=None):
    """`docker build` (legacy builder, no registry) of busybox and a unique marker layer (or
    FROM base), plus one layer of random bytes per entry of random_mib. Returns the ID."""
    context = work / uuid.uuid4().hex
    context.mkdir(parents=True)
    steps = [f"FROM {base}"]
    if not base:
        shutil.copytree(rootfs, context / "rootfs", symlinks=True)
        (context / "marker").write_text(uuid.uuid4().hex)
        steps = ["FROM scratch", "COPY rootfs/ /", "COPY marker /marker"]
    for n, mib in enumerate(random_mib):
        (context / f"random-{n}").write_bytes(os.urandom(mib * MiB))
        steps.append(f"COPY random-{n} /random-{n}")
    steps += ["ENV PATH=/bin", 'CMD ["sh"]']
    (context / "Dockerfile").write_text("\n".join(steps) + "\n")
    docker("build", "-q", "-t", tag, str(context), env=dict(os.environ, DOCKER_BUILDKIT="0"))
    shutil.rmtree(context)
    return image_id_of(tag)


def save_dir(ref, directory):
    proc = cli("docker-dir-save", "-q", ref, directory)
    assert proc.returncode == 0, proc.stderr
    return Path(directory)


@pytest.fixture(scope="module")
def dirs(docker_engine, rootfs, tmp_path_factory):
    """Image directories saved by docker-dir-save from the main daemon, then removed from it,
    so a pull there is a real pull: small (busybox + marker), small2 (small + a new top layer
    of 1 MiB random bytes: a rebuild), big (busybox + 3 layers of 9 MiB random bytes: each
    more than one upload chunk once gzipped), other (a second small image)."""
    work = tmp_path_factory.mktemp("push-images")
    name = f"fixture/push-{uuid.uuid4().hex[:8]}"
    ids = {}
    try:
        ids["small"] = build(rootfs, work, f"{name}:small")
        ids["small2"] = build(rootfs, work, f"{name}:small2", [1], base=f"{name}:small")
        ids["big"] = build(rootfs, work, f"{name}:big", [9, 9, 9])
        ids["other"] = build(rootfs, work, f"{name}:other")
        paths = {key: save_dir(f"{name}:{key}", work / key) for key in ids}
    finally:
        for image in reversed(list(ids.values())):  # children before their parent
            docker("rmi", "-f", image, check=False)
    assert not any(image_id_of(image) for image in ids.values())
    yield SimpleNamespace(**paths, ids=ids, name=name)
    for image in reversed(list(ids.values())):
        docker("rmi", "-f", image, check=False)


def copy_dir(source, target):
    shutil.copytree(source, target, symlinks=True)
    return Path(target)


# -- running docker-dir-push -------------------------------------------------------------------

@pytest.fixture
def env(tmp_path):
    """A push's environment: no engine on PATH or reachable, no login anywhere, a cache of its
    own (XDG_CACHE_HOME), so what it mounts or skips comes from the registry and this test."""
    base = tmp_path / "env"
    for name in ("bin", "docker", "runtime", "config", "cache"):
        (base / name).mkdir(parents=True)
    environment = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONTEXT")}
    environment.update(PATH=str(base / "bin"), DOCKER_HOST=f"unix://{base}/no-docker.sock",
                       DOCKER_CONFIG=str(base / "docker"), XDG_RUNTIME_DIR=str(base / "runtime"),
                       XDG_CONFIG_HOME=str(base / "config"), XDG_CACHE_HOME=str(base / "cache"))
    assert not any(shutil.which(tool, path=environment["PATH"]) for tool in ("docker", "podman"))
    return environment


def fresh_cache(env, tmp_path):
    """env with an empty cache: another machine, as far as the push can tell."""
    cache = tmp_path / f"cache-{uuid.uuid4().hex[:8]}"
    cache.mkdir()
    return dict(env, XDG_CACHE_HOME=str(cache))


def push(directory, target, *options, env):
    return cli("docker-dir-push", *options, directory, f"docker://{target}", env=env)


def pushed(directory, host, repo_tag, *options, env):
    """Push; returns the digest after checking the printed reference names it."""
    proc = push(directory, f"{host}/{repo_tag}", *options, env=env)
    assert proc.returncode == 0, proc.stderr
    name = repo_tag.rsplit(":", 1)[0]
    pinned, _, digest = proc.stdout.strip().partition("@")
    assert pinned == f"{host}/{name}" and digest.startswith("sha256:") and proc.stdout.endswith("\n"), proc.stdout
    return digest


def image_id(directory):
    proc = cli("docker-dir-id", directory)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def dir_json(directory):
    proc = cli("docker-dir-id", "--json", directory)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cache_files(env):
    """What the cache directory holds beside the remembered digests (a push keeps no work
    files: layers are compressed as they are uploaded)."""
    cache = Path(env["XDG_CACHE_HOME"]) / "docker-dir"
    kept = {"layer-digests.json", "layer-digests.json.lock"}
    return sorted(p.name for p in cache.iterdir() if p.name not in kept) if cache.is_dir() else []


# -- TLS registries: their CA where docker (and docker-dir) look for it -------------------------

@pytest.fixture
def trust():
    """trust(host, ca) puts ca in /etc/docker/certs.d/HOST/ca.crt until the test ends."""
    made = []

    def add(host, ca):
        directory = Path("/etc/docker/certs.d") / host
        directory.mkdir(parents=True)
        made.append(directory)
        shutil.copy(ca, directory / "ca.crt")

    yield add
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tls(registry_tls, trust):
    trust(registry_tls.host, registry_tls.ca_cert)
    return registry_tls


@pytest.fixture
def token(registry_token, trust):
    """The token registry, and its token server, trusted."""
    trust(registry_token.host, registry_token.ca_cert)
    trust(f"127.0.0.1:{registry_token.token_server.server.port}", registry_token.ca_cert)
    return registry_token


# -- the proxy's log ---------------------------------------------------------------------------

def blob_requests(proxy, method):
    return [r for r in proxy.requests if r.method == method and "/blobs/" in r.path]


def uploaded_digests(proxy):
    """Digests of the blobs whose upload the registry accepted (the closing PUT ?digest=), in order."""
    return [urllib.parse.parse_qs(r.query)["digest"][0] for r in proxy.requests
            if r.method == "PUT" and "/blobs/uploads/" in r.path and r.status == 201]


def manifest_puts(proxy):
    return [r for r in proxy.requests if r.method == "PUT" and "/manifests/" in r.path]


def streamed(proxy):
    """The uploads that streamed a blob of unknown digest (a layer compressed as it went
    up: one chunked PATCH), as upload session paths."""
    return {r.path for r in proxy.requests if r.method == "PATCH"
            and "chunked" in r.headers.get("transfer-encoding", "").lower()}


def asked_before_sent(proxy):
    """Every blob uploaded whose digest was known before (the config, a layer stored
    compressed, a layer whose compression was remembered) was asked for by name (HEAD)
    first; only a layer compressed for the first time goes up unasked, streamed."""
    log = proxy.requests
    for digest in uploaded_digests(proxy):
        put = next(n for n, r in enumerate(log) if r.method == "PUT" and digest in urllib.parse.unquote(r.query))
        if log[put].path in streamed(proxy):
            continue
        assert any(r.method == "HEAD" and r.path.endswith(digest) for r in log[:put]), digest


# == 1. the push: pinned reference, HEAD first, mounts, selection, indexes =====================

def test_push_prints_the_registry_digest_with_no_engine(dirs, registry_anon, blob_proxy, env):
    proxy = blob_proxy(registry_anon)
    repo = unique("push/first")

    digest = pushed(dirs.small, proxy.host, f"{repo}:1", env=env)

    served = registry_anon.manifest(repo, "1")
    assert served.digest == digest and served.media_type == OCI_MANIFEST
    assert served.json["config"]["digest"] == image_id(dirs.small)
    assert {layer["mediaType"] for layer in served.json["layers"]} == {LAYER + "+gzip"}
    blobs = [served.json["config"]["digest"]] + [layer["digest"] for layer in served.json["layers"]]
    assert sorted(uploaded_digests(proxy)) == sorted(blobs)
    asked_before_sent(proxy)
    assert proxy.requests[-1] == manifest_puts(proxy)[0] and len(manifest_puts(proxy)) == 1  # the manifest last


def mounts(proxy):
    """(digest, from) of every cross-repository mount asked, with the registry's status."""
    found = []
    for r in blob_requests(proxy, "POST"):
        query = urllib.parse.parse_qs(r.query)
        if "mount" in query:
            found.append((query["mount"][0], query["from"][0], r.status))
    return found


def test_blobs_another_repository_holds_are_mounted(dirs, registry_anon, blob_proxy, env, tmp_path):
    proxy = blob_proxy(registry_anon)
    first, second, third = unique("push/mount-a"), unique("push/mount-b"), unique("push/mount-c")
    pushed(dirs.small, proxy.host, f"{first}:1", env=env)
    blobs = set(uploaded_digests(proxy))
    proxy.forget()

    # pushed there before, by this cache
    digest = pushed(dirs.small, proxy.host, f"{second}:1", env=env)

    assert {(d, source) for d, source, status in mounts(proxy) if status == 201} == {(d, first) for d in blobs}
    assert uploaded_digests(proxy) == [] and blob_requests(proxy, "PATCH") == []
    assert proxy.bytes_uploaded() == len(registry_anon.manifest(second, "1").raw)
    assert registry_anon.manifest(second, "1").digest == digest

    # pulled from there: the directory records where it came from; the cache knows nothing
    pulled = tmp_path / "pulled"
    assert cli("docker-dir-save", "-q", f"docker://{proxy.host}/{first}:1", pulled, env=env).returncode == 0
    proxy.forget()
    assert pushed(pulled, proxy.host, f"{third}:1", env=fresh_cache(env, tmp_path)) == digest
    assert {(d, source) for d, source, status in mounts(proxy) if status == 201} == {(d, first) for d in blobs}
    assert uploaded_digests(proxy) == []


def test_selectors_choose_the_image(dirs, registry_anon, env, tmp_path):
    both = tmp_path / "both"
    assert cli("docker-dir-save", "-q", f"dir:{dirs.small}", f"dir:{dirs.other}", both).returncode == 0
    small, other = dirs.ids["small"], dirs.ids["other"]
    repo = unique("push/select")

    refused = push(both, f"{registry_anon.host}/{repo}:1", env=env)

    line = one_line_error(refused, EXIT_SELECTION)
    assert "--repo-tag" in line or "--config" in line, line
    assert registry_anon.tags(repo) is None
    by_tag = pushed(both, registry_anon.host, f"{repo}:tag", "--repo-tag", f"{dirs.name}:other", env=env)
    by_config = pushed(both, registry_anon.host, f"{repo}:config", "--config", small[7:19], env=env)
    assert registry_anon.manifest(repo, by_tag).json["config"]["digest"] == other
    assert registry_anon.manifest(repo, by_config).json["config"]["digest"] == small
    # the same image alone gives the same digest: nothing of the other image leaks in
    assert pushed(dirs.small, registry_anon.host, f"{repo}:alone", env=env) == by_config


@pytest.fixture(scope="module")
def index_dir(platform_index, tmp_path_factory):
    """platform_index (two platforms, pushed by podman) saved whole by docker-dir-save --all-platforms."""
    directory = tmp_path_factory.mktemp("index") / "all"
    registry = platform_index.registry
    proc = cli("docker-dir-save", "-q", "--all-platforms", f"docker://{registry.host}/{platform_index.repo_tag}",
               directory)
    assert proc.returncode == 0, proc.stderr
    return directory


def test_all_platforms_pushes_the_index(platform_index, index_dir, registry_anon, env, tmp_path):
    registry = platform_index.registry
    repo = unique("push/index")

    digest = pushed(index_dir, registry.host, f"{repo}:1", "--all-platforms", env=env)

    served = registry.manifest(repo, "1")
    assert served.digest == digest and served.media_type == OCI_INDEX
    listed = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in served.json["manifests"]}
    assert listed == platform_index.manifests  # podman's manifests, byte for byte
    assert digest == platform_index.digest  # and its index: a pulled index goes back as it came
    for platform, manifest_digest in listed.items():
        assert registry.manifest(repo, manifest_digest).digest == manifest_digest
    # one platform of it, by --platform
    foreign = pushed(index_dir, registry.host, f"{repo}:foreign", "--platform", platform_index.foreign, env=env)
    assert foreign == platform_index.manifests[platform_index.foreign]
    assert pushed(index_dir, registry.host, f"{repo}:native", env=env) == platform_index.manifests[
        platform_index.native]
    # and what docker pulls from the pushed index runs
    native_config = registry.manifest(repo, listed[platform_index.native]).json["config"]["digest"]
    assert image_id_of(native_config) is None  # a real pull
    try:
        docker("pull", f"{registry.host}/{repo}@{digest}")
        assert image_id_of(f"{registry.host}/{repo}@{digest}") == native_config
        run = docker("run", "--rm", native_config, "cat", "/platform")
        assert run.stdout == f"{platform_index.native}\n"
    finally:
        docker("rmi", "-f", native_config, check=False)


def test_all_platforms_needs_an_index(dirs, registry_anon, env):
    repo = unique("push/not-index")
    line = one_line_error(push(dirs.small, f"{registry_anon.host}/{repo}:1", "--all-platforms", env=env),
                          EXIT_USAGE)
    assert "--all-platforms" in line and "one image" in line
    assert registry_anon.tags(repo) is None


# == 2. reproducible =========================================================================

def test_same_digest_every_time_and_from_an_empty_cache(dirs, registry_anon, blob_proxy, env, tmp_path):
    proxy = blob_proxy(registry_anon)
    repo, elsewhere = unique("push/again"), unique("push/elsewhere")
    first = pushed(dirs.big, proxy.host, f"{repo}:1", env=env)

    assert pushed(dirs.big, proxy.host, f"{repo}:1", env=env) == first
    assert pushed(dirs.big, proxy.host, f"{repo}:2", env=fresh_cache(env, tmp_path)) == first
    proxy.forget()
    # another machine: nothing remembered, a repository without the blobs: compressed and sent again
    assert pushed(dirs.big, proxy.host, f"{elsewhere}:1", env=fresh_cache(env, tmp_path)) == first
    layers = registry_anon.manifest(elsewhere, "1").json["layers"]
    assert sorted(uploaded_digests(proxy)) == sorted([l["digest"] for l in layers] + [
        registry_anon.manifest(elsewhere, "1").json["config"]["digest"]])
    assert proxy.bytes_uploaded() >= sum(layer["size"] for layer in layers)


def test_config_goes_up_with_its_bytes(dirs, registry_anon, env):
    repo = unique("push/config")
    digest = pushed(dirs.small, registry_anon.host, f"{repo}:1", env=env)
    config = registry_anon.manifest(repo, digest).json["config"]
    config_path = dirs.small / "blobs" / "sha256" / config["digest"][7:]
    assert registry_anon.blob(repo, config["digest"]) == config_path.read_bytes()
    assert config["digest"] == image_id(dirs.small) == dirs.ids["small"]


@pytest.mark.parametrize("compress, suffix", [("gzip", "+gzip"), ("zstd", "+zstd"), ("none", "")])
def test_compression_of_uncompressed_layers(dirs, registry_anon, env, tmp_path, compress, suffix):
    repo = unique(f"push/{compress}")
    options = ["--compress", compress] if compress != "gzip" else []

    digest = pushed(dirs.small, registry_anon.host, f"{repo}:1", *options, env=env)

    layers = registry_anon.manifest(repo, digest).json["layers"]
    assert [layer["mediaType"] for layer in layers] == [LAYER + suffix] * len(layers)
    stored = [dirs.small / "blobs" / "sha256" / l for l in
              (entry.split(":")[1] for entry in dir_json(dirs.small)["layers"])]
    magic = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "none": None}[compress]
    for layer, path in zip(layers, stored):
        data = registry_anon.blob(repo, layer["digest"])
        if magic:
            assert data.startswith(magic)
        else:
            assert data == path.read_bytes()
    # deterministic: again from an empty cache, the same bytes
    assert pushed(dirs.small, registry_anon.host, f"{repo}:2", *options, env=fresh_cache(env, tmp_path)) == digest


def test_compressed_layers_go_up_as_they_are(dirs, fresh_image, registry_anon, tls, env, tmp_path):
    """A directory pulled from a registry keeps the registry's gzip layers: pushed to another
    registry they are the same blobs (docker's own gzip, not docker-dir's), under the manifest
    the directory records; one docker-dir pushed comes back with the digest it had."""
    tls.docker_config(env["DOCKER_CONFIG"])
    by_docker = unique("push/by-docker")
    registry_anon.push(fresh_image(f"fixture/push-src:{uuid.uuid4().hex[:8]}"), f"{by_docker}:1")
    docker_manifest = registry_anon.manifest(by_docker, "1")
    from_docker = tmp_path / "from-docker"
    assert cli("docker-dir-save", "-q", f"docker://{registry_anon.host}/{by_docker}:1", from_docker,
               env=env).returncode == 0

    digest = pushed(from_docker, tls.host, f"{by_docker}:1", env=env)

    served = tls.manifest(by_docker, "1")
    assert [l["digest"] for l in served.json["layers"]] == [l["digest"] for l in docker_manifest.json["layers"]]
    assert [l["mediaType"] for l in served.json["layers"]] == [LAYER + "+gzip"] * len(served.json["layers"])
    assert digest == dir_json(from_docker)["manifest_digest"]

    by_docker_dir = unique("push/by-docker-dir")
    original = pushed(dirs.small, registry_anon.host, f"{by_docker_dir}:1", env=env)
    from_docker_dir = tmp_path / "from-docker-dir"
    assert cli("docker-dir-save", "-q", f"docker://{registry_anon.host}/{by_docker_dir}:1", from_docker_dir,
               env=env).returncode == 0
    assert pushed(from_docker_dir, tls.host, f"{by_docker_dir}:1", env=fresh_cache(env, tmp_path)) == original


# == 3. what comes back runs =================================================================

CLONE_NEWNET = 0x40000000


class NamespaceRelay:
    """127.0.0.1:PORT inside the network namespace of process `pid` (a side dockerd) forwarded
    to 127.0.0.1:PORT of this namespace, where the registries run. The listening socket is
    made by a thread that enters that namespace (setns acts on the calling thread only) and
    then ends; everything else runs in this namespace."""

    def __init__(self, pid, port):
        self.pid, self.port = pid, port
        self.listener = None
        self.threads = []

    def start(self):
        made = {}

        def listen_there():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/proc/{self.pid}/ns/net") as namespace:
                    if libc.setns(namespace.fileno(), CLONE_NEWNET):
                        raise OSError(ctypes.get_errno(), "setns into the side daemon's network namespace")
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(16)
                made["listener"] = listener
            except OSError as error:
                made["error"] = error

        thread = threading.Thread(target=listen_there)
        thread.start()
        thread.join()
        if "error" in made:
            raise made["error"]
        self.listener = made["listener"]
        self._spawn(self._accept)
        return self

    def _spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self):
        while True:
            try:
                there, _ = self.listener.accept()
            except OSError:
                return  # stopped
            here = socket.create_connection(("127.0.0.1", self.port))
            self._spawn(self._pump, there, here)
            self._spawn(self._pump, here, there)

    @staticmethod
    def _pump(source, sink):
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            for end in (source, sink):
                end.close()

    def stop(self):
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None


@pytest.fixture
def reach():
    """reach(side_target, registry): the side daemon's namespace gets the registry's address."""
    relays = []

    def make(target, registry):
        relays.append(NamespaceRelay(target.daemon.pid, registry.port).start())

    yield make
    for relay in relays:
        relay.stop()


@pytest.fixture(scope="module")
def published(dirs, registry_anon, tmp_path_factory):
    """dirs.small pushed (gzip) by docker-dir-push with no engine: the pinned reference, its
    digest, and the ID docker-dir-id prints for the directory, which every client must report."""
    cache = tmp_path_factory.mktemp("published-cache")
    environment = dict(os.environ, PATH=str(tmp_path_factory.mktemp("no-engine")), XDG_CACHE_HOME=str(cache))
    proc = push(dirs.small, f"{registry_anon.host}/{unique('push/published')}:1", env=environment)
    assert proc.returncode == 0, proc.stderr
    pinned = proc.stdout.strip()
    return SimpleNamespace(ref=pinned, digest=pinned.partition("@")[2], id=image_id(dirs.small))


def test_docker_2010_pulls_and_runs_it(published):
    assert image_id_of(published.id) is None  # a real pull
    try:
        docker("pull", published.ref)
        assert image_id_of(published.ref) == published.id
        assert docker("run", "--rm", published.ref, "echo", "pulled by 20.10").stdout == "pulled by 20.10\n"
    finally:
        docker("rmi", "-f", published.id, check=False)


@pytest.mark.parametrize("side", ["docker26", "docker26c"])
def test_docker26_pulls_and_runs_it(published, registry_anon, reach, request, side):
    target = request.getfixturevalue(side)
    reach(target, registry_anon)

    try:
        target.cli("pull", published.ref)

        # the classic store names an image by its config, the containerd store by its manifest
        assert target.image_id(published.ref) == (published.digest if side == "docker26c" else published.id)
        run = target.cli("run", "--rm", "--network", "none", published.ref, "echo", f"pulled by {side}")
        assert run.stdout == f"pulled by {side}\n"
    finally:
        target.remove(published.ref, published.id)


def test_podman_pulls_and_runs_it(published, podman):
    try:
        podman.cli("pull", "-q", "--tls-verify=false", published.ref)
        assert "sha256:" + podman.cli("image", "inspect", "--format", "{{.Id}}", published.ref).stdout.strip() \
            == published.id
        run = podman.cli("run", "--rm", "--network", "none", published.ref, "echo", "pulled by podman")
        assert run.stdout == "pulled by podman\n"
    finally:
        podman.remove(published.ref)


def test_skopeo_copies_it_and_docker_runs_the_copy(published, tmp_path):
    archive = tmp_path / "copy.tar"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{published.ref}",
                    f"docker-archive:{archive}"], check=True, capture_output=True)
    assert image_id_of(published.id) is None
    try:
        loaded = docker("load", "-q", "-i", str(archive)).stdout
        assert published.id in loaded
        assert docker("run", "--rm", published.id, "echo", "copied by skopeo").stdout == "copied by skopeo\n"
    finally:
        docker("rmi", "-f", published.id, check=False)


def test_docker_dir_save_round_trip(published, dirs, tmp_path, env):
    back = tmp_path / "back"

    saved = cli("docker-dir-save", "-q", f"docker://{published.ref}", back, env=env)

    assert saved.returncode == 0, saved.stderr
    assert saved.stdout == published.id + "\n" == image_id(dirs.small) + "\n"
    assert dir_json(back)["manifest_digest"] == published.digest
    verified = cli("docker-dir-id", "--verify", back)
    assert verified.returncode == 0 and verified.stdout == published.id + "\n", verified.stderr
    assert image_id_of(published.id) is None
    try:
        ran = cli("docker-dir-exec", back, "echo", "round trip", cwd=tmp_path)
        assert ran.returncode == 0 and ran.stdout == "round trip\n", ran.stderr
    finally:
        docker("rmi", "-f", published.id, check=False)
    # and the directory pushed again is the same image, to the same digest
    host_name = published.ref.partition("@")[0]
    again = pushed(back, host_name.split("/", 1)[0], f"{host_name.split('/', 1)[1]}:again", env=env)
    assert again == published.digest


def test_zstd_layers_come_back_on_docker26_and_podman_not_on_2010(dirs, registry_anon, docker26, podman, reach,
                                                                   env, tmp_path):
    repo = unique("push/zstd")
    digest = pushed(dirs.other, registry_anon.host, f"{repo}:1", "--compress", "zstd", env=env)
    ref, config = f"{registry_anon.host}/{repo}@{digest}", dirs.ids["other"]
    reach(docker26, registry_anon)
    try:
        docker26.cli("pull", ref)
        assert docker26.image_id(ref) == config
        assert docker26.cli("run", "--rm", "--network", "none", ref, "echo", "zstd").stdout == "zstd\n"
        podman.cli("pull", "-q", "--tls-verify=false", ref)
        assert podman.cli("run", "--rm", "--network", "none", ref, "echo", "zstd").stdout == "zstd\n"
    finally:
        docker26.remove(ref, config)
        podman.remove(ref)
    # dockerd 20.10 cannot read zstd layers: docker-dir says so before the engine fails
    back = tmp_path / "back"
    assert cli("docker-dir-save", "-q", f"docker://{ref}", back, env=env).returncode == 0
    assert image_id_of(config) is None
    line = one_line_error(cli("docker-dir-exec", back, "true", cwd=tmp_path), EXIT_ENGINE_FAILED)
    assert "cannot load the zstd-compressed layers" in line and "skopeo copy" in line, line
    assert image_id_of(config) is None


# == 4. only what is missing, a few at a time, chunked, resumed ================================

def test_repush_after_a_new_top_layer_sends_that_layer_only(dirs, registry_anon, blob_proxy, env):
    proxy = blob_proxy(registry_anon)
    repo = unique("push/rebuilt")
    pushed(dirs.small, proxy.host, f"{repo}:1", env=env)
    old_layers = {l["digest"] for l in registry_anon.manifest(repo, "1").json["layers"]}
    proxy.forget()

    digest = pushed(dirs.small2, proxy.host, f"{repo}:1", env=env)

    new = registry_anon.manifest(repo, digest)
    layers = {l["digest"]: l["size"] for l in new.json["layers"]}
    (top,) = set(layers) - old_layers
    assert old_layers < set(layers)
    assert sorted(uploaded_digests(proxy)) == sorted([top, new.json["config"]["digest"]])
    config_size = new.json["config"]["size"]
    assert proxy.bytes_uploaded() == layers[top] + config_size + len(new.raw)  # nothing else, nothing twice
    assert MiB <= layers[top] < MiB + (64 << 10)  # random bytes: gzip keeps their size


def open_uploads(proxy):
    """The most upload sessions open at once in the proxy's log (arrival order): a POST opens
    one, the PUT that ends it closes it."""
    most = current = 0
    for r in proxy.requests:
        if r.method == "POST" and r.path.endswith("/blobs/uploads/") and r.status == 202:
            current += 1
            most = max(most, current)
        elif r.method == "PUT" and "/blobs/uploads/" in r.path and r.status == 201:
            current -= 1
    return most


def test_uploads_overlap_and_layers_stream_as_they_are_compressed(dirs, registry_anon, blob_proxy, env):
    """No work file, no round trip per chunk: each layer, compressed for the first time, goes
    up in one chunked PATCH as it is compressed, and a PUT then names its digest; a re-push
    knows the digests and finds every blob there."""
    proxy = blob_proxy(registry_anon)
    repo = unique("push/parallel")

    digest = pushed(dirs.big, proxy.host, f"{repo}:1", env=env)

    layers = registry_anon.manifest(repo, digest).json["layers"]
    assert len([l for l in layers if l["size"] > LARGE]) == 3
    assert open_uploads(proxy) >= 2, [(r.method, r.path[-20:]) for r in proxy.requests]
    patches = blob_requests(proxy, "PATCH")
    assert len(patches) == len(streamed(proxy)) == len(layers)
    assert all("content-length" not in r.headers and "content-range" not in r.headers for r in patches)
    assert sorted(r.bytes_in for r in patches) == sorted(l["size"] for l in layers)
    assert cache_files(env) == []
    proxy.forget()
    assert pushed(dirs.big, proxy.host, f"{repo}:1", env=env) == digest
    assert blob_requests(proxy, "PATCH") == [] and blob_requests(proxy, "POST") == []


def test_a_dropped_upload_is_sent_again_alone(dirs, registry_anon, blob_proxy, env):
    proxy = blob_proxy(registry_anon)
    repo = unique("push/cut")
    cut = proxy.cut_upload(3 * MiB, "/blobs/uploads/", times=1)  # in a large layer, as it streams

    digest = pushed(dirs.big, proxy.host, f"{repo}:1", env=env)

    assert cut.fired == 1
    served = registry_anon.manifest(repo, digest)
    blobs = [served.json["config"]] + served.json["layers"]
    assert sorted(uploaded_digests(proxy)) == sorted(b["digest"] for b in blobs)
    # what went up twice is what the cut request carried: distribution then refuses that
    # session, and the layer streams again from its start in a new one
    wasted = proxy.bytes_uploaded() - sum(b["size"] for b in blobs) - len(served.raw)
    assert wasted == 3 * MiB
    assert len(blob_requests(proxy, "PATCH")) == len(served.json["layers"]) + 1
    # the same digest as a push nothing disturbed: the registry holds the right bytes
    assert pushed(dirs.big, registry_anon.host, f"{unique('push/uncut')}:1", env=env) == digest


def test_more_cuts_than_retries_fail_and_leave_the_tag_alone(dirs, registry_anon, blob_proxy, env):
    proxy = blob_proxy(registry_anon)
    repo = unique("push/cut-always")
    old = pushed(dirs.small, proxy.host, f"{repo}:1", env=env)
    proxy.forget()
    cut = proxy.cut_upload(100 << 10, "/blobs/uploads/", times=None)  # every upload of more than 100 kB, every time

    failed = push(dirs.small2, f"{proxy.host}/{repo}:1", env=env)
    new_tag = push(dirs.small2, f"{proxy.host}/{repo}:2", env=env)

    for proc in (failed, new_tag):
        line = one_line_error(proc, EXIT_ENGINE_UNAVAILABLE)
        assert "broke 4 times" in line and "try again" in line, line
    assert cut.fired == 2 * 4  # a first try and 3 retries, for each push
    assert manifest_puts(proxy) == []  # never the manifest without its blobs
    assert registry_anon.manifest(repo, "1").digest == old and registry_anon.manifest(repo, "2") is None
    proxy.clear_faults()
    new = pushed(dirs.small2, proxy.host, f"{repo}:1", env=env)
    assert registry_anon.manifest(repo, "1").digest == new != old


# == 5. credentials, TLS, errors, interruptions ================================================

def write_helper(directory, name, store):
    """docker-credential-NAME: a stand-in for a keychain helper (docker-credential-pass,
    -secretservice, -osxkeychain; none is on this machine) speaking the helper protocol:
    `get` reads a server on stdin, prints {"ServerURL", "Username", "Secret"} or "credentials
    not found in native keychain" with status 1. It logs the servers it was asked for."""
    (directory / f"{name}.json").write_text(json.dumps(store))
    script = directory / f"docker-credential-{name}"
    script.write_text(f"""#!{sys.executable}
import json, sys
server = sys.stdin.read().strip()
with open({str(directory / f"{name}.log")!r}, "a") as log:
    log.write(server + "\\n")
store = json.load(open({str(directory / f"{name}.json")!r}))
if sys.argv[1:] != ["get"] or server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": store[server][0], "Secret": store[server][1]}}))
""")
    script.chmod(0o755)
    return directory / f"{name}.log"


def no_secret_shown(proc, secret):
    assert secret not in proc.stdout and secret not in proc.stderr


@pytest.mark.parametrize("where", ["docker config", "credential helper", "REGISTRY_AUTH_FILE"])
def test_credentials_where_logins_put_them(dirs, tls, env, tmp_path, where):
    repo = unique("push/login")
    user, password = tls.credentials
    if where == "docker config":
        tls.docker_config(env["DOCKER_CONFIG"])
    elif where == "credential helper":
        (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"credHelpers": {tls.host: "keychain"}}))
        asked = write_helper(Path(env["PATH"]), "keychain", {tls.host: [user, password]})
    else:
        env["REGISTRY_AUTH_FILE"] = str(tls.auth_file(tmp_path / "auth.json"))

    proc = push(dirs.small, f"{tls.host}/{repo}:1", env=env)

    assert proc.returncode == 0, proc.stderr
    no_secret_shown(proc, password)
    assert tls.manifest(repo, "1").digest == proc.stdout.strip().partition("@")[2]
    if where == "credential helper":
        assert set(asked.read_text().split()) == {tls.host}


def test_refused_login_is_77_and_shows_no_secret(dirs, tls, env):
    repo = unique("push/refused")
    tls.docker_config(env["DOCKER_CONFIG"], credentials=(tls.username, "wrong-" + tls.password))

    proc = push(dirs.small, f"{tls.host}/{repo}:1", env=env)

    line = one_line_error(proc, EXIT_NO_PERMISSION)
    assert tls.host in line and "docker login" in line, line
    no_secret_shown(proc, tls.password)
    debug = push(dirs.small, f"{tls.host}/{repo}:1", "--debug", env=env)
    assert debug.returncode and "Traceback" in debug.stderr
    no_secret_shown(debug, tls.password)
    assert tls.tags(repo) is None


def test_no_secret_in_a_debug_traceback_mid_push(dirs, tls, blob_proxy, trust, env):
    """A failure with valid credentials in use, deep in the upload: the traceback shows none."""
    proxy = blob_proxy(tls)
    trust(proxy.host, tls.ca_cert)
    tls.docker_config(env["DOCKER_CONFIG"], host=proxy.host)
    proxy.cut_upload(100 << 10, "/blobs/uploads/", times=None)

    proc = push(dirs.small, f"{proxy.host}/{unique('push/debug')}:1", "--debug", env=env)

    assert proc.returncode and "Traceback" in proc.stderr and "RegistryUnavailable" in proc.stderr
    no_secret_shown(proc, tls.password)
    assert not any("authorization" in r.headers and tls.password in r.headers["authorization"]
                   for r in proxy.requests)  # the log redacts: this only checks it did


def test_token_registry_push_inside_and_outside_the_grant(dirs, token, env):
    token.docker_config(env["DOCKER_CONFIG"])  # alice: push to alice/*, pull elsewhere
    own, foreign = unique("alice/app"), unique("bob/app")

    digest = pushed(dirs.small, token.host, f"{own}:1", env=env)
    refused = push(dirs.small, f"{token.host}/{foreign}:1", env=env)

    assert token.manifest(own, "1").digest == digest
    line = one_line_error(refused, EXIT_NO_PERMISSION)
    # alice's login is good: the message says what she may not do, not that it was refused
    assert token.host in line and f"repository {foreign}" in line and "insufficient_scope" in line, line
    assert "refused the credentials" not in line, line
    no_secret_shown(refused, token.password)
    assert token.tags(foreign) is None
    asked = [r for r in token.token_server.requests if any(foreign in scope for scope in r.scopes)]
    assert asked and all(r.user == "alice" for r in asked)


def test_unreachable_registry_is_69(dirs, env):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = one_line_error(push(dirs.small, f"127.0.0.1:{port}/push/nowhere:1", env=env), EXIT_ENGINE_UNAVAILABLE)
    assert f"127.0.0.1:{port}" in line and "running" in line, line


def test_registry_certificate_without_its_ca_is_69(dirs, registry_tls, blob_proxy, env):
    proxy = blob_proxy(registry_tls)  # the registry's certificate, at an address no certs.d names
    registry_tls.docker_config(env["DOCKER_CONFIG"], host=proxy.host)

    line = one_line_error(push(dirs.small, f"{proxy.host}/{unique('push/no-ca')}:1", env=env),
                          EXIT_ENGINE_UNAVAILABLE)

    assert "certificate" in line and f"/etc/docker/certs.d/{proxy.host}/ca.crt" in line, line
    assert blob_requests(proxy, "POST") == []


def git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)


def test_layers_dropped_by_git_annex_are_66(dirs, registry_anon, env, tmp_path):
    if not shutil.which("git-annex"):
        pytest.skip("git-annex not installed (Debian package git-annex)")
    repo = tmp_path / "dataset"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "annex", "init", "-q")
    copy_dir(dirs.small, repo / "img")
    git(repo, "annex", "add", "-q", "img")
    git(repo, "commit", "-q", "-m", "image")
    layers = [f"img/blobs/sha256/{layer.split(':')[1]}" for layer in dir_json(dirs.small)["layers"]]
    git(repo, "annex", "drop", "-q", "--force", *layers)
    target = unique("push/dropped")

    line = one_line_error(push(repo / "img", f"{registry_anon.host}/{target}:1", env=env), EXIT_CONTENT_MISSING)

    assert "git annex get" in line or "datalad get" in line, line
    assert registry_anon.tags(target) is None


def damage_index(directory):
    (directory / "index.json").write_text("{not json")


def damage_layer_kind(directory):
    """The largest layer replaced by bytes that are no tar, gzip or zstd."""
    layer = max((directory / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    layer.write_bytes(b"\0garbage" * 1000)


@pytest.mark.parametrize("damage", [damage_index, damage_layer_kind])
def test_damaged_directory_is_65(dirs, registry_anon, env, tmp_path, damage):
    damaged = copy_dir(dirs.small, tmp_path / "damaged")
    damage(damaged)
    target = unique("push/damaged")

    line = one_line_error(push(damaged, f"{registry_anon.host}/{target}:1", env=env), EXIT_BAD_DIR)

    assert str(damaged) in line, line
    assert registry_anon.tags(target) is None


@pytest.mark.parametrize("target, said", [
    ("{host}/push/usage:1", "docker://"),
    ("docker://{host}/push/usage@sha256:" + "a" * 64, "digest"),
    ("docker://{host}/Push/Upper:1", "Push/Upper"),
])
def test_target_usage_errors_are_2(dirs, registry_anon, env, target, said):
    proc = cli("docker-dir-push", dirs.small, target.format(host=registry_anon.host), env=env)
    line = one_line_error(proc, EXIT_USAGE)
    assert said in line, line


def flip_a_byte(path):
    """A byte in the middle of the file changed: a damaged copy that is still a tar or gzip."""
    path.chmod(0o644)
    with open(path, "r+b") as stream:
        stream.seek(path.stat().st_size // 2)
        byte = stream.read(1)
        stream.seek(-1, os.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("stored", ["uncompressed", "uncompressed, its compression remembered", "gzip"])
def test_layer_that_does_not_match_its_digest_is_1(dirs, published, tls, registry_anon, env, tmp_path, stored):
    """Uncompressed, docker-dir finds it as it compresses (the registry would see only new
    compressed bytes), whether the compressed digest was known (one PUT of known size) or
    not (streamed); compressed, the registry finds it. Pushed where no blob can be found or
    mounted, so the layer is read."""
    if stored == "uncompressed, its compression remembered":  # pushed elsewhere first, whole
        assert push(dirs.small, f"{registry_anon.host}/{unique('push/whole')}:1", env=env).returncode == 0
    if stored == "gzip":
        source = tmp_path / "pulled"
        assert cli("docker-dir-save", "-q", f"docker://{published.ref}", source, env=env).returncode == 0
    else:
        source = dirs.small
    damaged = copy_dir(source, tmp_path / "damaged")
    layers = [damaged / "blobs" / "sha256" / d.split(":")[1] for d in dir_json(damaged)["layers"]]
    flip_a_byte(max(layers, key=lambda p: p.stat().st_size))
    tls.docker_config(env["DOCKER_CONFIG"])
    repo = unique("push/corrupt")

    line = one_line_error(push(damaged, f"{tls.host}/{repo}:1", env=env), EXIT_VERIFY)

    assert "does not match" in line and ("save the image again" in line or "--verify" in line), line
    assert tls.tags(repo) is None


def wait_for(condition, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the push ended before the moment wanted: {proc.communicate()}"
        assert time.monotonic() < deadline, "the moment wanted never came"
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_push_leaves_no_tag_and_the_next_succeeds(dirs, registry_anon, blob_proxy, env, signum):
    proxy = blob_proxy(registry_anon)
    repo = unique("push/interrupted")
    argv = [sys.executable, str(BIN / "docker-dir-push"), str(dirs.big), f"docker://{proxy.host}/{repo}:1"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Stopped once a layer's bytes begin to stream (the large layers are streaming or
    # waiting for a worker), so the signal finds most of the work not done.
    wait_for(lambda: any(r.bytes_in for r in blob_requests(proxy, "PATCH")), proc)
    proc.send_signal(signal.SIGSTOP)
    done = set(uploaded_digests(proxy))

    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)

    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert (proc.returncode, out) == (128 + signum, "")
        assert len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err, err
    assert cache_files(env) == []  # nothing left behind, even by a kill
    after_signal = set(uploaded_digests(proxy)) - done
    assert manifest_puts(proxy) == [] and registry_anon.tags(repo) is None
    digest = pushed(dirs.big, proxy.host, f"{repo}:1", env=env)
    assert registry_anon.manifest(repo, "1").digest == digest
    if signum != signal.SIGKILL:  # it stopped: the large layers not sent yet were not sent after the signal
        large = {l["digest"] for l in registry_anon.manifest(repo, digest).json["layers"] if l["size"] > LARGE}
        assert len(large) == 3 and len(large & after_signal) < 3, f"all went up after {signum.name}"


def test_progress_is_one_line_on_a_terminal(dirs, registry_anon, env):
    repo = unique("push/tty")
    status, output = cli_on_tty("docker-dir-push", dirs.big, f"docker://{registry_anon.host}/{repo}:1", env=env)

    assert status == 0, output
    progress, summary, pinned, end = output.decode().split("\r\n")
    label = f"pushing {dirs.big} to docker://{registry_anon.host}/{repo}: "
    updates = [u for u in progress.split("\r") if u]
    assert updates and all(u.startswith(label) and u.endswith("\x1b[K") for u in updates), progress
    sent = summary.split("blobs uploaded, ")[1].split(";")[0]
    assert updates[-1][len(label):].startswith(sent + ","), (updates[-1], summary)
    assert pinned.startswith(f"{registry_anon.host}/{repo}@sha256:") and end == ""


# == 6. -o FILE, and make ====================================================================

def test_output_file_is_written_only_when_the_reference_changes(dirs, registry_anon, env, tmp_path):
    target = f"{registry_anon.host}/{unique('push/output')}:1"
    out = tmp_path / "pushed.ref"

    first = push(dirs.small, target, "-o", out, env=env)

    assert first.returncode == 0 and first.stdout == "", first.stderr
    pinned = out.read_text()
    assert pinned.endswith("\n") and registry_anon.manifest(*target.split("/", 1)[1].split(":")).digest == \
        pinned.strip().partition("@")[2]
    day_ago = time.time() - 86400
    os.utime(out, (day_ago, day_ago))
    inode = out.stat().st_ino

    assert push(dirs.small, target, "-o", out, env=fresh_cache(env, tmp_path)).returncode == 0
    assert out.read_text() == pinned and out.stat().st_mtime == day_ago and out.stat().st_ino == inode

    assert push(dirs.small2, target, "-o", out, env=env).returncode == 0
    assert out.read_text() != pinned and out.stat().st_mtime > day_ago
    assert out.stat().st_ino != inode  # replaced by a rename, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    changed = out.read_text()
    # a failed push leaves it as it was
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{sock.getsockname()[1]}/push/output:1"
    assert push(dirs.small, nowhere, "-o", out, env=env).returncode == EXIT_ENGINE_UNAVAILABLE
    assert out.read_text() == changed


MAKEFILE = """\
# save, then push whenever the image changed
image:
\tdocker-dir-save $(IMAGE_REF) $@

image.id: image
\tdocker-dir-id -o $@ image

image.pushed: image.id
\tdocker-dir-push -q -o $@ image docker://$(TARGET)
"""


def test_make_pushes_again_only_for_a_new_image(fresh_image, registry_anon, tmp_path):
    ref = f"fixture/push-make-{uuid.uuid4().hex[:8]}:latest"
    first = fresh_image(ref)
    second = fresh_image()
    repo = unique("push/make")
    work = tmp_path / "work"
    work.mkdir()
    (work / "Makefile").write_text(MAKEFILE)
    path = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]])
    make_env = dict(os.environ, PATH=path, XDG_CACHE_HOME=str(tmp_path / "cache"))

    def make():
        proc = subprocess.run(["make", f"IMAGE_REF={ref}", f"TARGET={registry_anon.host}/{repo}:1", "image.pushed"],
                              cwd=work, env=make_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        time.sleep(0.02)  # past the file system's timestamp granularity, so a rewrite shows
        return [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("docker-dir-")]

    def pushed_digest():
        return (work / "image.pushed").read_text().strip().partition("@")[2]

    assert make() == ["docker-dir-save", "docker-dir-id", "docker-dir-push"]
    assert registry_anon.manifest(repo, "1").json["config"]["digest"] == first
    digest = pushed_digest()
    assert registry_anon.manifest(repo, "1").digest == digest

    assert make() == []  # nothing changed

    assert cli("docker-dir-save", "-q", "--force", ref, work / "image").returncode == 0
    assert make() == ["docker-dir-id"]  # the same image saved again: its ID is unchanged, no push

    docker("tag", second, ref)
    assert cli("docker-dir-save", "-q", "--force", ref, work / "image").returncode == 0
    assert make() == ["docker-dir-id", "docker-dir-push"]
    assert pushed_digest() != digest and registry_anon.manifest(repo, "1").digest == pushed_digest()
    assert registry_anon.manifest(repo, "1").json["config"]["digest"] == second
