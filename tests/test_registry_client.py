"""The registry client (docker_dir.registry) against real registries.

What is pure (references, WWW-Authenticate, where credentials are looked up) is tested
on its own; the rest runs against Debian's docker-registry (CNCF distribution 2.8):
anonymous over plain HTTP, TLS + htpasswd Basic, and token auth whose token service is
written below from distribution's token documentation (the registry verifies every
token for real). Images go in with the real docker CLI, and what the client pushes
comes back out through `docker pull`.

Until the shared fixtures (tests/registry.py) land, the registries, a fault-injecting
proxy and a hostile fake registry are set up here.
"""
import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import docker, image_id_of, sh
from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CANT_WRITE, EXIT_ENGINE_UNAVAILABLE, EXIT_NO_PERMISSION,
                               EXIT_SELECTION, EXIT_USAGE, EXIT_VERIFY, AuthRefused, BadImageDir, BadRegistryData,
                               CantWrite, DigestMismatch, RegistryUnavailable, SelectionError, UsageError)
from docker_dir.registry import retry
from docker_dir.registry.auth import parse_challenges
from docker_dir.registry.client import Registry
from docker_dir.registry.credentials import Credentials, auth_files, credentials_for
from docker_dir.registry.reference import Reference

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = [DOCKER_V2, OCI_MANIFEST]
USER, PASSWORD = "tester", "s3cret-Pa55-" + uuid.uuid4().hex[:8]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_listening(host, port, proc, log_path, what):
    """Wait (bounded) until something accepts connections on host:port; fail loudly if the
    process exits or never listens."""
    for _ in range(600):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}): {Path(log_path).read_text()[-2000:]}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} does not listen on {host}:{port}: {Path(log_path).read_text()[-2000:]}")


@contextlib.contextmanager
def environment(**variables):
    """os.environ with these variables set (None: removed), restored afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = str(value)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def no_logins(tmp_path, monkeypatch):
    """Each test starts with no login anywhere: its own empty docker and podman config places."""
    empty = tmp_path / "no-logins"
    (empty / "docker").mkdir(parents=True)
    (empty / "runtime").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(empty / "runtime"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return empty


def docker_config(directory, auths=None, **more):
    """Write DIR/config.json as docker writes it; returns DIR."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(more)
    if auths is not None:
        config["auths"] = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
                           for host, (user, password) in auths.items()}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# -- real registries --------------------------------------------------------------------

class RegistryProcess:
    """Debian's docker-registry in the foreground with its own config, storage and port."""

    def __init__(self, base_dir, bind="127.0.0.1", storage=None, tls=None, htpasswd=None, token=None,
                 relative_urls=False, client_ca=None):
        self.dir = Path(tempfile.mkdtemp(dir=base_dir, prefix="registry-"))
        self.storage = Path(storage) if storage else self.dir / "storage"
        self.port = free_port(bind)
        self.host = f"{bind}:{self.port}"
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "docker-dir-tests", "relativeurls": relative_urls},
        }
        if tls:
            config["http"]["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
            if client_ca:  # then every client must show a certificate this CA signed
                config["http"]["tls"]["clientcas"] = [str(client_ca)]
        if htpasswd:
            config["auth"] = {"htpasswd": {"realm": "docker-dir-tests", "path": str(htpasswd)}}
        if token:
            config["auth"] = {"token": {"realm": token.realm, "service": token.service, "issuer": token.issuer,
                                        "rootcertbundle": str(token.cert)}}
        config_path = self.dir / "config.yml"  # JSON is YAML
        config_path.write_text(json.dumps(config))
        self.log = self.dir / "log.txt"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(config_path)], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_listening(bind, self.port, self.proc, self.log, "docker-registry")

    def blob_data(self, digest):
        hex_digest = digest.split(":")[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def openssl(*args, input=None):
    return subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True, check=True).stdout


def make_tls(directory):
    """A CA and a server certificate it signed for 127.0.0.1 and localhost."""
    directory = Path(directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / "ca.key",
            "-out", directory / "ca.crt", "-subj", "/CN=docker-dir test CA", "-days", "2")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / "server.key",
            "-out", directory / "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", directory / "server.csr", "-CA", directory / "ca.crt",
            "-CAkey", directory / "ca.key", "-CAcreateserial", "-out", directory / "server.crt",
            "-days", "2", "-extfile", directory / "san.ext")
    return SimpleNamespace(ca=directory / "ca.crt", cert=directory / "server.crt", key=directory / "server.key")


def make_client_certificate(directory, tls):
    """A client certificate signed by the test CA: (NAME.cert, NAME.key) as certs.d wants them."""
    directory = Path(directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / "client.key",
            "-out", directory / "client.csr", "-subj", "/CN=docker-dir test client")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", directory / "client.csr", "-CA", tls.ca, "-CAkey", tls.ca.with_suffix(".key"),
            "-CAcreateserial", "-out", directory / "client.cert", "-days", "2", "-extfile", directory / "client.ext")
    return directory / "client.cert", directory / "client.key"


@contextlib.contextmanager
def trusted_ca(host, ca):
    """The CA in /etc/docker/certs.d/HOST/ca.crt, where docker and the client look for it."""
    directory = Path("/etc/docker/certs.d") / host
    directory.mkdir(parents=True)
    shutil.copy(ca, directory / "ca.crt")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """A token service as distribution documents it ("Token Authentication Implementation"):
    GET /token?service=&scope=…&account= with optional Basic credentials, answered with an
    RS256 JWT signed by a key whose certificate (x5c) the registry trusts. `USER` may pull
    and push everywhere; anonymous callers may pull repositories under public/.
    `poison_next` makes the next token one the registry must refuse."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.key, self.cert = self.dir / "token.key", self.dir / "token.crt"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
                "-subj", "/CN=docker-dir token signer", "-days", "2")
        self.x5c = base64.b64encode(openssl("x509", "-in", self.cert, "-outform", "DER")).decode()
        self.service, self.issuer = "docker-dir-test-registry", "docker-dir-test-issuer"
        self.requests = []  # (account, authenticated, scopes)
        self.issued = []
        self.poison_next = False
        self._lock = threading.Lock()
        self.server = serve(self._handle)
        self.realm = f"http://127.0.0.1:{self.server.server_port}/token"

    def _handle(self, handler):
        query = parse_qs(urlsplit(handler.path).query)
        scopes = query.get("scope", [])
        header = handler.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        authenticated = header == expected
        with self._lock:
            self.requests.append((query.get("account", [None])[0], authenticated, tuple(scopes)))
            poison, self.poison_next = self.poison_next, False
        if header and not authenticated:
            return respond(handler, 401, b'{"details":"incorrect username or password"}')
        access = []
        for item in scopes:
            kind, name, actions = item.split(":")
            allowed = actions.split(",") if authenticated else (["pull"] if name.startswith("public/") else [])
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a in allowed]})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": USER if authenticated else "", "aud": self.service,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (b64url(json.dumps({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}).encode()) + "."
                         + b64url(json.dumps(claims).encode()))
        signature = openssl("dgst", "-sha256", "-sign", self.key, input=signing_input.encode())
        if poison:
            signature = bytes(b ^ 0xFF for b in signature)
        token = signing_input + "." + b64url(signature)
        self.issued.append(token)
        respond(handler, 200, json.dumps({"token": token, "expires_in": 300}).encode())

    def scopes_asked(self):
        return [scopes for _, _, scopes in self.requests]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def respond(handler, status, body=b"", headers=()):
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def serve(handle, port=0):
    """An HTTP/1.1 server on 127.0.0.1 calling handle(handler) for every request."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_any(self):
            handle(self)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_any

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is part of the tests
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Proxy:
    """A plain HTTP proxy in front of a registry that breaks chosen exchanges on purpose:
    cut a body short, forget the Range header, drop the connection before or after
    forwarding, or redirect. A rule applies to the requests it matches after skipping `skip`
    of them, `times` times; the first ready rule wins. Every request is logged."""

    _HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}

    def __init__(self, upstream, ca=None, upstream_authorization=None):
        self.upstream = urlsplit(upstream)
        self.context = ssl.create_default_context(cafile=str(ca)) if ca else None
        self.upstream_authorization = upstream_authorization
        self.rules = []
        self.log = []
        self._lock = threading.Lock()
        self.server = serve(self._handle)
        self.host = f"127.0.0.1:{self.server.server_port}"

    def add(self, method, path_part, action, times=1, skip=0, **options):
        self.rules.append(SimpleNamespace(method=method, path_part=path_part, action=action, left=times,
                                          skip=skip, options=options))

    def _take(self, method, path):
        chosen = None
        with self._lock:
            for rule in self.rules:
                if rule.left and rule.method == method and rule.path_part in path:
                    if rule.skip:
                        rule.skip -= 1
                    elif chosen is None:
                        rule.left -= 1
                        chosen = rule
        return chosen

    def requests(self, method=None, path_part=""):
        return [entry for entry in self.log if (method is None or entry.method == method)
                and path_part in entry.path]

    def _handle(self, handler):
        body = read_request_body(handler)
        rule = self._take(handler.command, handler.path)
        entry = SimpleNamespace(method=handler.command, path=handler.path, headers=dict(handler.headers),
                                status=None, action=rule.action if rule else None)
        self.log.append(entry)
        if rule and rule.action == "drop-before":
            handler.close_connection = True
            return
        if rule and rule.action == "redirect":
            return respond(handler, 307, headers=[("Location", rule.options["to"](handler.path))])
        headers = {name: value for name, value in handler.headers.items() if name.lower() not in self._HOP}
        if rule and rule.action == "strip-range":
            headers.pop("Range", None)
        headers["X-Forwarded-Proto"] = "http"
        if self.upstream_authorization:
            headers["Authorization"] = self.upstream_authorization
        if self.context:
            upstream = http.client.HTTPSConnection(self.upstream.hostname, self.upstream.port, context=self.context)
        else:
            upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port)
        upstream.request(handler.command, handler.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        entry.status = answer.status
        if rule and rule.action == "drop-after":
            handler.close_connection = True
            return
        handler.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in self._HOP and name.lower() != "content-length":
                handler.send_header(name, value)
        handler.send_header("Content-Length", answer.getheader("Content-Length") if handler.command == "HEAD"
                            else str(len(data)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if rule and rule.action == "cut":
            handler.wfile.write(data[:rule.options["after"]])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(data)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def read_request_body(handler):
    """The body of the request `handler` serves: by its Content-Length, or chunked."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        pieces = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(pieces)
            pieces.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("registry-client")


@pytest.fixture(scope="module")
def plain(workdir):
    """An anonymous registry over plain HTTP on loopback."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is missing: apt-get install -y docker-registry (tests/run-all.sh does)")
    registry = RegistryProcess(workdir)
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def pushed(plain, rootfs, workdir, docker_engine):
    """A two-layer image (busybox, and 20 MiB of random bytes: more than one upload chunk)
    pushed into `plain` by docker, then removed from the engine so pulls fetch every blob."""
    session = uuid.uuid4().hex[:10]
    context = workdir / "image"
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    (context / "big.bin").write_bytes(os.urandom(20 << 20))
    (context / "Dockerfile").write_text(f'FROM scratch\nCOPY rootfs/ /\nCOPY big.bin /data/big.bin\n'
                                        f'LABEL docker-dir-test=registry-{session}\nENV PATH=/bin\nCMD ["sh"]\n')
    ref = f"{plain.host}/source-{session}/image:1"
    docker("build", "-q", "-t", ref, str(context))
    image_id = image_id_of(ref)
    docker("push", ref)
    repo_digest = json.loads(docker("image", "inspect", "-f", "{{json .RepoDigests}}", ref).stdout)[0]
    docker("rmi", "-f", image_id)
    manifest = json.loads(urlopen_bytes(f"http://{plain.host}/v2/source-{session}/image/manifests/1", DOCKER_V2))
    blobs = [(item["digest"], item["size"]) for item in [manifest["config"]] + manifest["layers"]]
    yield SimpleNamespace(registry=plain, repo=f"source-{session}/image", tag="1", image_id=image_id,
                          digest=repo_digest.split("@")[1], blobs=blobs, config=blobs[0], layers=blobs[1:],
                          session=session)
    docker("rmi", "-f", image_id, check=False)


def urlopen_bytes(url, accept):
    """A plain GET, independent of the client under test."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.request("GET", parts.path, headers={"Accept": accept})
    response = connection.getresponse()
    assert response.status == 200, (url, response.status)
    return response.read()


@pytest.fixture(scope="module")
def blob_files(pushed, workdir):
    """Every blob of the pushed image as a local file (fetched with curl, not the client)."""
    directory = workdir / "blobs"
    directory.mkdir()
    files = {}
    for digest, _ in pushed.blobs:
        path = directory / digest.split(":")[1]
        sh("curl", "-sSf", "-o", path, f"http://{pushed.registry.host}/v2/{pushed.repo}/blobs/{digest}")
        assert sha256(path.read_bytes()) == digest
        files[digest] = path
    return files


def opener(path):
    def open_stream(offset):
        stream = open(path, "rb")
        stream.seek(offset)
        return stream

    return open_stream


def upload_image(registry, repo, tag, pushed, blob_files, on_bytes=None):
    for digest, size in pushed.blobs:
        registry.upload_blob(repo, opener(blob_files[digest]), on_bytes, digest, size)
    manifest = urlopen_bytes(f"http://{pushed.registry.host}/v2/{pushed.repo}/manifests/{pushed.tag}", DOCKER_V2)
    return registry.put_manifest(repo, tag, manifest, DOCKER_V2)


@pytest.fixture
def proxies():
    """Factory: Proxy(upstream, …), each stopped after the test."""
    started = []

    def start(*args, **kwargs):
        started.append(Proxy(*args, **kwargs))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def tls_basic(workdir):
    """A registry with TLS (its CA in /etc/docker/certs.d) and htpasswd Basic auth."""
    directory = workdir / "tls"
    directory.mkdir()
    tls = make_tls(directory)
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(sh("htpasswd", "-Bbn", USER, PASSWORD).stdout)
    registry = RegistryProcess(workdir, tls=tls, htpasswd=htpasswd, relative_urls=True)
    registry.tls = tls
    with trusted_ca(registry.host, tls.ca):
        yield registry
    registry.stop()


@pytest.fixture(scope="module")
def token_registry(workdir):
    service = TokenService(workdir)
    registry = RegistryProcess(workdir, token=service)
    registry.tokens = service
    yield registry
    registry.stop()
    service.stop()


@pytest.fixture
def logged_in(no_logins):
    """Credentials for `hosts` in DOCKER_CONFIG (the config.json docker login writes)."""

    def login(*hosts, password=PASSWORD):
        docker_config(os.environ["DOCKER_CONFIG"], auths={host: (USER, password) for host in hosts})

    return login


def exit_code(err):
    return err.value.exit_code


def one_line(err):
    text = str(err.value)
    assert "\n" not in text and text.isprintable(), text
    return text


# -- references -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("team/app", "docker.io", "team/app", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/team/app:2", "docker.io", "team/app", "2", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/a/b/c:v1.0-rc_1", "localhost:5000", "a/b/c", "v1.0-rc_1", None),
    ("127.0.0.1:5000/x/y", "127.0.0.1:5000", "x/y", "latest", None),
    ("[::1]:5000/x:1", "[::1]:5000", "x", "1", None),
    ("quay.io/org/repo-name__x.y", "quay.io", "org/repo-name__x.y", "latest", None),
    ("Registry/x", "Registry", "x", "latest", None),  # capitals: a host, as docker decides
    ("host:5000", "docker.io", "library/host", "5000", None),  # no slash: NAME:TAG, as docker reads it
    ("busybox@sha256:" + "a" * 64, "docker.io", "library/busybox", None, "sha256:" + "a" * 64),
    ("h.example/x:t@sha256:" + "b" * 64, "h.example", "x", "t", "sha256:" + "b" * 64),
])
def test_reference_parse_normalizes_as_docker(text, registry, repository, tag, digest):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.manifest_reference == (digest or tag)
    assert Reference.parse(str(ref)) == ref


def test_reference_api_host_str_and_with_digest():
    hub = Reference.parse("busybox")
    assert hub.api_host == "registry-1.docker.io"
    assert str(hub) == "docker.io/library/busybox:latest"
    assert hub.with_digest("sha256:" + "c" * 64) == "docker.io/library/busybox@sha256:" + "c" * 64
    local = Reference.parse("127.0.0.1:5000/x/y:2")
    assert local.api_host == "127.0.0.1:5000" and str(local) == "127.0.0.1:5000/x/y:2"


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("docker://busybox", "no URL scheme"),
    ("a" * 64, "image ID"),
    ("Busybox", "lowercase"),
    ("team/App", "lowercase"),
    ("busybox:", "a tag is"),
    ("busybox:-x", "a tag is"),
    ("busybox:" + "t" * 129, "a tag is"),
    ("busybox@sha256:abc", "sha256: and 64"),
    ("busybox@sha512:" + "a" * 128, "sha256: and 64"),
    ("bad_host.example:x/y", "not a valid registry"),
    ("example.com/a//b", "each part"),
    ("example.com/-a", "each part"),
    ("example.com/a/", "each part"),
    ("example.com/" + "a/" * 130 + "b", "longer than 255"),
])
def test_reference_parse_refuses_malformed(text, reason):
    with pytest.raises(UsageError) as err:
        Reference.parse(text)
    assert exit_code(err) == EXIT_USAGE
    assert reason in one_line(err) and "expected [HOST[:PORT]/]NAME" in str(err.value)


@pytest.mark.parametrize("call", [
    lambda registry: registry.get_manifest("Upper/case", "1", ACCEPT),
    lambda registry: registry.get_manifest("x/y", "bad tag", ACCEPT),
    lambda registry: registry.get_manifest("x/y", "sha256:short", ACCEPT),
    lambda registry: registry.blob_size("x y", "sha256:" + "a" * 64),
    lambda registry: registry.mount_blob("x/y", "sha256:" + "a" * 64, "../z"),
    lambda registry: registry.put_manifest("x/y", "t\n", b"{}", DOCKER_V2),
])
def test_names_are_checked_before_any_request(call):
    """Bad names are refused before anything is sent (nothing listens on the port)."""
    with pytest.raises((UsageError, BadRegistryData)) as err, Registry(f"127.0.0.1:{free_port()}") as registry:
        call(registry)
    message = one_line(err)
    assert exit_code(err) in (EXIT_USAGE, EXIT_BAD_DIR)
    assert "invalid" in message or "not a digest" in message


# -- WWW-Authenticate -------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"})]),
    ('Bearer realm="https://a/token",service="reg",scope="repository:x/y:pull,push",error="insufficient_scope"',
     [("bearer", {"realm": "https://a/token", "service": "reg", "scope": "repository:x/y:pull,push",
                  "error": "insufficient_scope"})]),
    ('bearer Realm = "https://a/t" , Service=reg', [("bearer", {"realm": "https://a/t", "service": "reg"})]),
    (r'Basic realm="a \"quoted\", realm"', [("basic", {"realm": 'a "quoted", realm'})]),
    ('Basic realm="x", Bearer realm="https://t/", service="s"',
     [("basic", {"realm": "x"}), ("bearer", {"realm": "https://t/", "service": "s"})]),
    ("Negotiate", [("negotiate", {})]),
    ("", []),
    ('Bearer realm="unterminated', [("bearer", {"realm": "unterminated"})]),
])
def test_parse_challenges(header, expected):
    assert parse_challenges(header) == expected


# -- credentials --------------------------------------------------------------------------------

def write_helper(directory, name, store):
    """docker-credential-NAME on PATH: it stands in for a real keychain helper (docker-credential-
    secretservice, -pass, -osxkeychain), which this machine lacks. It implements the helper
    protocol: `get` reads the server on stdin and prints {"ServerURL","Username","Secret"}, or
    "credentials not found in native keychain" with status 1. It logs the servers asked for."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(store))
    script = directory / f"docker-credential-{name}"
    script.write_text(f"""#!{sys.executable}
import json, sys
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read().strip()
with open({str(directory / f"{name}.log")!r}, "a") as log:
    log.write(server + "\\n")
store = json.load(open({str(directory / f"{name}.json")!r}))
if server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = store[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
""")
    script.chmod(0o755)
    return directory / f"{name}.log"


@pytest.fixture
def helper_dir(tmp_path, monkeypatch):
    directory = tmp_path / "helpers"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory


def pair(credentials):
    username, secret = credentials
    return username, secret.reveal()


def test_credentials_from_docker_config_auths(no_logins):
    docker_config(os.environ["DOCKER_CONFIG"], auths={"https://index.docker.io/v1/": ("hub", "pw1"),
                                                      "http://127.0.0.1:5000": ("local", "pw2"),
                                                      "quay.io": ("quay", "pw:with:colons")})
    assert pair(credentials_for("docker.io")) == ("hub", "pw1")
    assert pair(credentials_for("127.0.0.1:5000")) == ("local", "pw2")
    assert pair(credentials_for("QUAY.io")) == ("quay", "pw:with:colons")
    assert credentials_for("127.0.0.1:5001") is None
    assert credentials_for("ghcr.io") is None


def test_credentials_home_docker_config_when_docker_config_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    docker_config(tmp_path / ".docker", auths={"r.example": ("u", "p")})
    assert pair(credentials_for("r.example")) == ("u", "p")


def test_credentials_lookup_order(tmp_path, monkeypatch, no_logins):
    """$REGISTRY_AUTH_FILE, then $XDG_RUNTIME_DIR/containers/auth.json, then
    $XDG_CONFIG_HOME/containers/auth.json, then docker's config; a file without the host
    passes the question on."""
    host = "r.example:5000"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    docker_config(tmp_path / "config-home" / "containers", auths={"config-home.example": ("c", "h")})
    (tmp_path / "config-home" / "containers" / "config.json").rename(
        tmp_path / "config-home" / "containers" / "auth.json")
    assert pair(credentials_for("config-home.example")) == ("c", "h")
    docker_config(os.environ["DOCKER_CONFIG"], auths={host: ("docker", "d"), "only-docker.example": ("o", "o")})
    podman_dir = Path(os.environ["XDG_RUNTIME_DIR"]) / "containers"
    docker_config(podman_dir, auths={host: ("podman", "p")})
    (podman_dir / "config.json").rename(podman_dir / "auth.json")
    assert pair(credentials_for(host)) == ("podman", "p")
    authfile = tmp_path / "explicit.json"
    authfile.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(b"explicit:e").decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(authfile))
    assert pair(credentials_for(host)) == ("explicit", "e")
    assert pair(credentials_for("only-docker.example")) == ("o", "o")
    assert auth_files() == [str(authfile), str(podman_dir / "auth.json"),
                            str(tmp_path / "config-home" / "containers" / "auth.json"),
                            os.path.join(os.environ["DOCKER_CONFIG"], "config.json")]


def test_credentials_podman_runtime_path_without_xdg_runtime_dir(monkeypatch):
    """podman as root without XDG_RUNTIME_DIR logs in to /run/containers/UID/auth.json."""
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert auth_files()[0] == f"/run/containers/{os.getuid()}/auth.json"


def test_credentials_helpers(helper_dir, no_logins):
    """credHelpers[host] first, else credsStore for every host, else auths; Docker Hub is asked
    for as https://index.docker.io/v1/, as docker does."""
    helper_log = write_helper(helper_dir, "keychain", {"r.example": ["helper-user", "helper-secret"],
                                                       "https://index.docker.io/v1/": ["hub-user", "hub-secret"]})
    store_log = write_helper(helper_dir, "store", {"s.example": ["store-user", "store-secret"]})
    docker_config(os.environ["DOCKER_CONFIG"], auths={"r.example": ("file", "f"), "s.example": ("file", "f")},
                  credHelpers={"r.example": "keychain", "docker.io": "keychain"})
    assert pair(credentials_for("r.example")) == ("helper-user", "helper-secret")
    assert pair(credentials_for("docker.io")) == ("hub-user", "hub-secret")
    assert pair(credentials_for("s.example")) == ("file", "f")
    assert helper_log.read_text().split() == ["r.example", "https://index.docker.io/v1/"]
    docker_config(os.environ["DOCKER_CONFIG"], auths={"s.example": ("file", "f"), "t.example": ("file", "t")},
                  credHelpers={"r.example": "keychain"}, credsStore="store")
    assert pair(credentials_for("s.example")) == ("store-user", "store-secret")
    assert credentials_for("t.example") is None  # the store answers for every host: not found is final
    assert pair(credentials_for("r.example")) == ("helper-user", "helper-secret")
    assert store_log.read_text().split() == ["s.example", "t.example"]


def test_credentials_helper_failures(helper_dir, no_logins):
    docker_config(os.environ["DOCKER_CONFIG"], credHelpers={"r.example": "absent"})
    with pytest.raises(RegistryUnavailable) as err:
        credentials_for("r.example")
    assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE
    assert "docker-credential-absent" in one_line(err) and "not on PATH" in str(err.value)
    broken = helper_dir / "docker-credential-broken"
    broken.write_text("#!/bin/sh\necho 'cannot unlock the keyring' ; exit 3\n")
    broken.chmod(0o755)
    docker_config(os.environ["DOCKER_CONFIG"], credHelpers={"r.example": "broken"})
    with pytest.raises(RegistryUnavailable) as err:
        credentials_for("r.example")
    assert "exit status 3" in one_line(err) and "cannot unlock the keyring" in str(err.value)


def test_credentials_damaged_files(no_logins, tmp_path, monkeypatch):
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    config.write_text('{"auths": {"r.example": {"auth": "not base64!"}}}')
    with pytest.raises(UsageError) as err:
        credentials_for("r.example")
    assert "damaged" in one_line(err) and "not base64!" not in str(err.value)
    config.write_text('{"auths": ')
    with pytest.raises(UsageError) as err:
        credentials_for("r.example")
    assert str(config) in one_line(err)



def test_credentials_identity_token_is_read_and_never_shown(no_logins):
    """az acr login writes an identitytoken beside an auth of "<uuid>:"; docker login against a
    token service that hands out refresh tokens, one without a username."""
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    user = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
    config.write_text(json.dumps({"auths": {"r.example": {"auth": user, "identitytoken": "refresh-token-value"},
                                            "s.example": {"identitytoken": "other-refresh-token"}}}))
    found = credentials_for("r.example")
    assert found.identity_token and found.secret.reveal() == "refresh-token-value"
    assert found.username == "00000000-0000-0000-0000-000000000000"
    assert credentials_for("s.example").identity_token
    assert "refresh-token" not in repr(found) + str(found)
    with pytest.raises(AuthRefused) as err:  # a Basic registry takes no refresh token
        found.basic_authorization("r.example")
    assert "identity token" in one_line(err) and "refresh-token-value" not in str(err.value)


def test_credentials_never_show_the_secret(no_logins):
    docker_config(os.environ["DOCKER_CONFIG"], auths={"r.example": ("someone", PASSWORD)})
    found = credentials_for("r.example")
    assert isinstance(found, Credentials)
    for text in (repr(found), str(found), repr(found.secret), str(found.secret), repr(found.basic_authorization("r.example"))):
        assert PASSWORD not in text
    assert found.username in repr(found)


# -- the anonymous registry ------------------------------------------------------------------------

def test_get_manifest_by_tag_and_by_digest(pushed):
    registry = Registry(pushed.registry.host)
    data, media_type, digest = registry.get_manifest(pushed.repo, pushed.tag, ACCEPT)
    assert (media_type, digest) == (DOCKER_V2, pushed.digest) and sha256(data) == pushed.digest
    assert registry.get_manifest(pushed.repo, pushed.digest, DOCKER_V2) == (data, DOCKER_V2, pushed.digest)
    registry.close()


def test_blob_size(pushed):
    with Registry(pushed.registry.host) as registry:
        for digest, size in pushed.blobs:
            assert registry.blob_size(pushed.repo, digest) == size
        assert registry.blob_size(pushed.repo, "sha256:" + "0" * 64) is None
        assert registry.blob_size("no/such-repo-" + pushed.session, pushed.config[0]) is None


def test_fetch_blob_streams_and_checks(pushed, tmp_path):
    with Registry(pushed.registry.host) as registry:
        for digest, size in pushed.blobs:
            path = tmp_path / digest.split(":")[1]
            progress = []
            registry.fetch_blob(pushed.repo, digest, size, path, on_bytes=progress.append)
            assert sha256(path.read_bytes()) == digest and sum(progress) == size and min(progress) > 0


def test_fetch_blob_refuses_an_existing_file(pushed, tmp_path):
    path = tmp_path / "taken"
    path.write_text("keep me")
    with pytest.raises(CantWrite) as err, Registry(pushed.registry.host) as registry:
        registry.fetch_blob(pushed.repo, *pushed.config, path)
    assert exit_code(err) == EXIT_CANT_WRITE and str(path) in one_line(err)
    assert path.read_text() == "keep me"


def test_fetch_blob_that_does_not_match_its_digest(plain, tmp_path):
    """The registry's stored copy is damaged (same size, other bytes): DigestMismatch, no file."""
    repo = f"damaged-{uuid.uuid4().hex[:10]}/x"
    content = os.urandom(300_000)
    digest = sha256(content)
    with Registry(plain.host) as registry:
        registry.upload_blob(repo, lambda offset: io.BytesIO(content[offset:]), digest=digest, size=len(content))
        plain.blob_data(digest).write_bytes(os.urandom(len(content)))
        path = tmp_path / "blob"
        with pytest.raises(DigestMismatch) as err:
            registry.fetch_blob(repo, digest, len(content), path)
    assert exit_code(err) == EXIT_VERIFY and digest in one_line(err)
    assert not path.exists()


def test_fetch_blob_larger_than_expected_stops(pushed, tmp_path):
    digest, size = pushed.layers[-1]
    path = tmp_path / "blob"
    with pytest.raises(BadRegistryData) as err, Registry(pushed.registry.host) as registry:
        registry.fetch_blob(pushed.repo, digest, size - 1, path)
    assert exit_code(err) == EXIT_BAD_DIR and "more than" in one_line(err)
    assert not path.exists()


def test_fetch_blob_on_a_full_disk(pushed, tmp_path):
    """ENOSPC (a 1 MiB tmpfs, for a 20 MiB layer): 73, and the partial file is gone."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small, check=False)
    if mounted.returncode:
        pytest.fail(f"cannot mount a small tmpfs to fill (this test needs root): {mounted.stderr}")
    try:
        digest, size = pushed.layers[-1]
        with pytest.raises(CantWrite) as err, Registry(pushed.registry.host) as registry:
            registry.fetch_blob(pushed.repo, digest, size, small / "blob")
        assert exit_code(err) == EXIT_CANT_WRITE and "No space left on device" in one_line(err)
        assert os.listdir(small) == []
    finally:
        sh("umount", small)


def test_fetch_blob_resumes_with_range(proxies, pushed, tmp_path):
    proxy = proxies(f"http://{pushed.registry.host}")
    digest, size = pushed.layers[-1]
    proxy.add("GET", f"/blobs/{digest}", "cut", after=size // 3)
    path = tmp_path / "blob"
    progress = []
    with Registry(proxy.host) as registry:
        registry.fetch_blob(pushed.repo, digest, size, path, on_bytes=progress.append)
    assert sha256(path.read_bytes()) == digest and sum(progress) == size and min(progress) > 0
    first, second = proxy.requests("GET", "/blobs/")
    assert "Range" not in first.headers and first.action == "cut"
    assert second.headers["Range"] == f"bytes={size // 3}-" and second.status == 206


def test_fetch_blob_starts_over_when_range_is_ignored(proxies, pushed, tmp_path):
    proxy = proxies(f"http://{pushed.registry.host}")
    digest, size = pushed.layers[-1]
    proxy.add("GET", f"/blobs/{digest}", "cut", after=size // 2)
    proxy.add("GET", f"/blobs/{digest}", "strip-range")
    path = tmp_path / "blob"
    progress = []
    with Registry(proxy.host) as registry:
        registry.fetch_blob(pushed.repo, digest, size, path, on_bytes=progress.append)
    assert sha256(path.read_bytes()) == digest
    assert sum(progress) == size and -(size // 2) in progress  # the first half taken back
    assert [entry.status for entry in proxy.requests("GET", "/blobs/")] == [200, 200]


def test_fetch_blob_gives_up_after_its_retries(proxies, pushed, tmp_path):
    proxy = proxies(f"http://{pushed.registry.host}")
    digest, size = pushed.layers[-1]
    proxy.add("GET", f"/blobs/{digest}", "cut", times=100, after=1000)
    path = tmp_path / "blob"
    with pytest.raises(RegistryUnavailable) as err, Registry(proxy.host) as registry:
        registry.fetch_blob(pushed.repo, digest, size, path)
    assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE and f"broke {retry.ATTEMPTS} times" in one_line(err)
    assert len(proxy.requests("GET", "/blobs/")) == retry.ATTEMPTS and not path.exists()


def test_upload_push_and_docker_pull_gives_the_same_image(proxies, pushed, blob_files):
    """Blobs and manifest pushed by the client (each blob of known digest in one PUT on the
    upload session's Location, its query string kept), then pulled by docker: same image ID."""
    proxy = proxies(f"http://{pushed.registry.host}")
    repo = f"copy-{pushed.session}/image"
    progress = []
    with Registry(proxy.host) as registry:
        digest = upload_image(registry, repo, "2", pushed, blob_files, on_bytes=progress.append)
    assert digest == pushed.digest and sum(progress) == sum(size for _, size in pushed.blobs)
    puts = proxy.requests("PUT", "/blobs/uploads/")
    assert len(puts) == len(pushed.blobs) and not proxy.requests("PATCH")
    assert all("_state=" in entry.path and "digest=sha256%3A" in entry.path for entry in puts)
    ref = f"{pushed.registry.host}/{repo}:2"
    docker("pull", "-q", ref)
    try:
        assert image_id_of(ref) == pushed.image_id
    finally:
        docker("rmi", "-f", ref)


def test_upload_resumes_from_what_the_registry_has(proxies, pushed, blob_files):
    """The PUT of the whole blob is dropped before it reaches the registry: the client asks
    where the upload stands (nothing held) and sends it again. That one's answer is lost
    after the registry stored it: distribution then knows the session no more (404), and the
    client starts the blob over in a new one (the registry holds it: a no-op)."""
    proxy = proxies(f"http://{pushed.registry.host}")
    proxy.add("PUT", "/blobs/uploads/", "drop-before")
    proxy.add("PUT", "/blobs/uploads/", "drop-after", skip=1)
    digest, size = pushed.layers[-1]
    repo = f"resumed-{pushed.session}/image"
    progress = []
    with Registry(proxy.host) as registry:
        assert registry.upload_blob(repo, opener(blob_files[digest]), progress.append, digest, size) == (digest, size)
        assert registry.blob_size(repo, digest) == size
    assert sum(progress) == size and min(progress) < 0  # the bytes sent again were taken back
    exchanges = [(entry.method, entry.action, entry.status, entry.headers.get("Content-Length"))
                 for entry in proxy.log if "/blobs/uploads/" in entry.path]
    assert exchanges == [
        ("POST", None, 202, "0"),
        ("PUT", "drop-before", None, str(size)),
        ("GET", None, 204, None),
        ("PUT", "drop-after", 201, str(size)),
        ("GET", None, 404, None),
        ("POST", None, 202, "0"),
        ("PUT", None, 201, str(size)),
    ]


class Produced:
    """A blob made as it is read (as a push compresses a layer): its digest known only
    once it was read to the end."""

    def __init__(self, content, offset):
        self.stream, self.content = io.BytesIO(content[offset:]), content
        self.digest = self.size = None

    def read(self, size=-1):
        data = self.stream.read(size)
        if not data:
            self.digest, self.size = hashlib.sha256(self.content).hexdigest(), len(self.content)
        return data

    def close(self):
        self.stream.close()


def test_upload_of_unknown_digest_streams_in_one_patch(proxies, plain):
    """Chunked, with no Content-Length (its size is not known either); the closing PUT names
    the digest the stream gave. A dropped PATCH goes on from what the registry holds."""
    proxy = proxies(f"http://{plain.host}")
    proxy.add("PATCH", "/blobs/uploads/", "drop-before")
    content = os.urandom(3 << 20)
    repo = f"streamed-{uuid.uuid4().hex[:10]}/x"
    with Registry(proxy.host) as registry:
        assert registry.upload_blob(repo, lambda offset: Produced(content, offset)) == (sha256(content), len(content))
        assert registry.blob_size(repo, sha256(content)) == len(content)
    exchanges = [(entry.method, entry.action, entry.headers.get("Transfer-Encoding"))
                 for entry in proxy.log if "/blobs/uploads/" in entry.path]
    assert exchanges == [("POST", None, None), ("PATCH", "drop-before", "chunked"), ("GET", None, None),
                         ("PATCH", None, "chunked"), ("PUT", None, None)]
    assert proxy.requests("PUT")[0].path.endswith("digest=" + sha256(content).replace(":", "%3A"))


def test_upload_small_blob_in_one_put(proxies, plain):
    proxy = proxies(f"http://{plain.host}")
    content = os.urandom(1000)
    repo = f"small-{uuid.uuid4().hex[:10]}/x"
    with Registry(proxy.host) as registry:
        registry.upload_blob(repo, lambda offset: io.BytesIO(content[offset:]), digest=sha256(content),
                             size=len(content))
    assert [entry.method for entry in proxy.log if "/blobs/" in entry.path] == ["POST", "PUT"]


def test_upload_of_damaged_local_content(plain):
    content = os.urandom(5000)
    repo = f"bad-{uuid.uuid4().hex[:10]}/x"
    with Registry(plain.host) as registry:
        with pytest.raises(DigestMismatch) as err:
            registry.upload_blob(repo, lambda offset: io.BytesIO(content[offset:]), digest=sha256(b"other"),
                                 size=len(content))
        assert exit_code(err) == EXIT_VERIFY and "does not match its digest" in one_line(err)
        with pytest.raises(BadImageDir) as err:
            registry.upload_blob(repo, lambda offset: io.BytesIO(content[offset:]), digest=sha256(content),
                                 size=len(content) + 10)
        assert exit_code(err) == EXIT_BAD_DIR and "ended before its declared size" in one_line(err)


def test_mount_blob(proxies, pushed):
    proxy = proxies(f"http://{pushed.registry.host}")
    repo = f"mounted-{pushed.session}/image"
    digest, size = pushed.layers[0]
    with Registry(proxy.host) as registry:
        assert registry.mount_blob(repo, digest, pushed.repo) is True
        assert registry.blob_size(repo, digest) == size
        assert registry.mount_blob(repo, "sha256:" + "1" * 64, pushed.repo) is False
    deleted = proxy.requests("DELETE")
    assert len(deleted) == 1 and deleted[0].status == 204  # the refused mount's upload session, closed


def test_put_manifest_refused(pushed):
    manifest = json.loads(urlopen_bytes(f"http://{pushed.registry.host}/v2/{pushed.repo}/manifests/1", DOCKER_V2))
    manifest["layers"][0]["digest"] = "sha256:" + "2" * 64
    with pytest.raises(BadRegistryData) as err, Registry(pushed.registry.host) as registry:
        registry.put_manifest(f"other-{pushed.session}/x", "1", json.dumps(manifest).encode(), DOCKER_V2)
    assert exit_code(err) == EXIT_BAD_DIR and "MANIFEST_BLOB_UNKNOWN" in one_line(err)


def test_not_found_errors(pushed, tmp_path):
    with Registry(pushed.registry.host) as registry:
        with pytest.raises(SelectionError) as err:
            registry.get_manifest(pushed.repo, "no-such-tag", ACCEPT)
        assert exit_code(err) == EXIT_SELECTION and "no-such-tag" in one_line(err)
        with pytest.raises(SelectionError) as err:
            registry.get_manifest(f"no/such-{pushed.session}", "1", ACCEPT)
        assert f"no/such-{pushed.session}" in one_line(err)
        with pytest.raises(SelectionError) as err:
            registry.fetch_blob(pushed.repo, "sha256:" + "3" * 64, 10, tmp_path / "blob")
        assert "sha256:" + "3" * 64 in one_line(err) and not (tmp_path / "blob").exists()


def test_unreachable_registry():
    port = free_port()
    with pytest.raises(RegistryUnavailable) as err, Registry(f"127.0.0.1:{port}") as registry:
        registry.get_manifest("x/y", "1", ACCEPT)
    assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE
    assert f"cannot connect to 127.0.0.1:{port}" in one_line(err) and "Connection refused" in str(err.value)


def test_a_registry_that_stays_down_is_tried_once_a_request_until_it_answers():
    """After one request went unanswered through all its tries, the same Registry (a git-annex
    remote's, a mirror's) tries each later request once, not with the whole backoff again;
    an answer brings the retries back. Counted in connections (plain HTTP is tried after
    HTTPS on loopback: one connection each)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)
    connections, answering = [], threading.Event()

    def serve():
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            connections.append(peer)
            if answering.is_set():
                peer.recv(65536)
                peer.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # reset
            peer.close()

    threading.Thread(target=serve, daemon=True).start()

    def connections_of_one_request(registry):
        before = len(connections)
        with pytest.raises(RegistryUnavailable):
            registry.get_manifest("x/y", "1", ACCEPT)
        return len(connections) - before

    try:
        with Registry(f"127.0.0.1:{server.getsockname()[1]}") as registry:
            assert connections_of_one_request(registry) == 1 + retry.ATTEMPTS
            assert connections_of_one_request(registry) == 1 + 1
            assert connections_of_one_request(registry) == 1 + 1
            answering.set()
            assert connections_of_one_request(registry) == 1 + 1  # answered: the next gets its retries
            assert connections_of_one_request(registry) == 1 + retry.ATTEMPTS
    finally:
        server.close()


def docker0_address():
    for line in sh("ip", "-4", "-o", "addr", "show", "docker0", check=False).stdout.splitlines():
        return line.split()[3].split("/")[0]
    return None


def test_plain_http_only_for_loopback_or_insecure(plain, pushed):
    """A plain HTTP registry on a non-loopback address needs --insecure-registry."""
    address = docker0_address()
    if address is None:
        pytest.skip("no docker0 address: no non-loopback local address to serve a registry on")
    second = RegistryProcess(plain.dir.parent, bind=address, storage=plain.storage)
    try:
        with pytest.raises(RegistryUnavailable) as err, Registry(second.host) as registry:
            registry.get_manifest(pushed.repo, pushed.tag, ACCEPT)
        assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE
        assert "does not speak TLS" in one_line(err) and f"--insecure-registry {second.host}" in str(err.value)
        with Registry(second.host, insecure=[second.host]) as registry:
            assert registry.get_manifest(pushed.repo, pushed.tag, ACCEPT)[2] == pushed.digest
    finally:
        second.stop()


# -- TLS + Basic ---------------------------------------------------------------------------------

def test_tls_basic_with_docker_login(tls_basic, pushed, blob_files, tmp_path, monkeypatch):
    """`docker login` writes the config; the client reads it and pushes and pulls over TLS
    (the CA from /etc/docker/certs.d), with the registry's relative Locations."""
    config = tmp_path / "docker-login"
    login = sh("docker", "--config", config, "login", "-u", USER, "--password-stdin", tls_basic.host,
               input=PASSWORD + "\n", check=False)
    assert login.returncode == 0, login.stderr
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    assert pair(credentials_for(tls_basic.host)) == (USER, PASSWORD)
    repo = f"tls-{pushed.session}/image"
    with Registry(tls_basic.host) as registry:
        assert upload_image(registry, repo, "1", pushed, blob_files) == pushed.digest
        assert registry.get_manifest(repo, "1", ACCEPT)[2] == pushed.digest
        assert registry.mount_blob(f"tls-mount-{pushed.session}/x", pushed.config[0], repo) is True


@pytest.mark.parametrize("docker_config_set", [False, True])
def test_podman_login_is_read(tls_basic, pushed, monkeypatch, docker_config_set):
    """`podman login` writes $XDG_RUNTIME_DIR/containers/auth.json, or $DOCKER_CONFIG/config.json
    when DOCKER_CONFIG is set (podman 4.3, as root): the client reads both."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: tests/run-all.sh installs it")
    written = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    if not docker_config_set:
        monkeypatch.delenv("DOCKER_CONFIG")
        written = Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    login = sh("podman", "login", "--tls-verify=false", "-u", USER, "--password-stdin", tls_basic.host,
               input=PASSWORD + "\n", check=False)
    assert login.returncode == 0, login.stderr
    assert tls_basic.host in json.loads(written.read_text())["auths"]
    assert pair(credentials_for(tls_basic.host)) == (USER, PASSWORD)
    with Registry(tls_basic.host) as registry:
        assert registry.blob_size(f"nothing-{pushed.session}/x", pushed.config[0]) is None


def test_tls_refused_credentials(tls_basic, logged_in):
    wrong = "wrong-" + PASSWORD
    logged_in(tls_basic.host, password=wrong)
    with pytest.raises(AuthRefused) as err, Registry(tls_basic.host) as registry:
        registry.get_manifest("x/y", "1", ACCEPT)
    assert exit_code(err) == EXIT_NO_PERMISSION
    message = one_line(err)
    assert message.startswith(f"{tls_basic.host} refused the credentials from ")
    assert "repository x/y (HTTP 401" in message
    assert message.endswith(f"log in with 'docker login {tls_basic.host}' or 'podman login {tls_basic.host}'")
    assert_no_secret_in_traceback(err.value, wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode())


def assert_no_secret_in_traceback(error, *secrets):
    """Neither the message nor any local variable of the client's frames (what a traceback
    that shows locals prints) holds a secret."""
    summary = traceback.TracebackException.from_exception(error, capture_locals=True)
    frames = [frame for frame in summary.stack if f"{os.sep}docker_dir{os.sep}" in frame.filename]
    assert frames, "no frame of the client in the traceback: nothing was checked"
    shown = str(error) + "".join(f"{frame.line} {frame.locals}" for frame in frames)
    assert "credentials" in shown
    for secret in secrets:
        assert secret not in shown


def test_tls_without_credentials(tls_basic):
    with pytest.raises(AuthRefused) as err, Registry(tls_basic.host) as registry:
        registry.blob_size("x/y", "sha256:" + "4" * 64)
    assert exit_code(err) == EXIT_NO_PERMISSION
    assert f"{tls_basic.host} requires credentials for repository x/y" in one_line(err)


def test_tls_certificate_refused(tls_basic):
    """Without the CA in certs.d, the certificate is refused: 69, naming where the CA goes."""
    certs = Path("/etc/docker/certs.d") / tls_basic.host
    aside = certs.with_name(certs.name + ".aside")
    certs.rename(aside)
    try:
        with pytest.raises(RegistryUnavailable) as err, Registry(tls_basic.host) as registry:
            registry.get_manifest("x/y", "1", ACCEPT)
    finally:
        aside.rename(certs)
    assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE
    assert "certificate" in one_line(err) and f"/etc/docker/certs.d/{tls_basic.host}/ca.crt" in str(err.value)


def test_tls_client_certificate(workdir, tmp_path):
    """A registry that wants a client certificate: without one in certs.d, 69 naming where it
    goes; with NAME.cert + NAME.key there, it answers."""
    tls = make_tls(tmp_path)
    registry = RegistryProcess(workdir, tls=tls, client_ca=tls.ca)
    try:
        with trusted_ca(registry.host, tls.ca) as certs:
            with pytest.raises(RegistryUnavailable) as err, Registry(registry.host) as client:
                client.blob_size("x/y", "sha256:" + "5" * 64)
            assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE
            assert f"{registry.host} refused the TLS session" in one_line(err)
            assert f"(NAME.cert and NAME.key) in /etc/docker/certs.d/{registry.host}/" in str(err.value)
            for path in make_client_certificate(tmp_path, tls):
                shutil.copy(path, certs / path.name)
            with Registry(registry.host) as client:
                assert client.blob_size("x/y", "sha256:" + "5" * 64) is None
    finally:
        registry.stop()


def test_redirect_to_blob_storage_drops_authorization(proxies, tls_basic, pushed, blob_files, logged_in, tmp_path):
    """Blob GETs redirected to another host (as to S3 or a CDN) go there without the
    registry's Authorization. The storage stand-in is a proxy with its own credentials, as a
    pre-signed storage URL carries its own."""
    repo = f"redirected-{pushed.session}/image"
    front = proxies(f"https://{tls_basic.host}", ca=tls_basic.tls.ca)
    storage = proxies(f"https://{tls_basic.host}", ca=tls_basic.tls.ca, upstream_authorization="Basic " +
                    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    storage_port = storage.host.split(":")[1]
    front.add("GET", "/blobs/sha256:", "redirect", to=lambda path: f"http://localhost:{storage_port}{path}")
    logged_in(front.host, tls_basic.host)
    with Registry(tls_basic.host) as registry:
        upload_image(registry, repo, "1", pushed, blob_files)
    digest, size = pushed.config
    with Registry(front.host) as registry:
        registry.fetch_blob(repo, digest, size, tmp_path / "blob")
    assert sha256((tmp_path / "blob").read_bytes()) == digest
    (redirected,) = front.requests("GET", "/blobs/")
    assert redirected.headers["Authorization"].startswith("Basic ")
    (stored,) = storage.requests("GET", "/blobs/")
    assert "Authorization" not in stored.headers


def next_hop(path):
    """path?hop=N+1: a new address each time."""
    base, _, query = path.partition("?hop=")
    return f"{base}?hop={int(query or 0) + 1}"


@pytest.mark.parametrize("to, requests, said", [
    (lambda path: path, 1, "redirects in a loop"),
    (lambda path: path.split("?")[0] if "?" in path else path + "?other", 2, "redirects in a loop"),
    (next_hop, 11, "more than 10 redirects"),
])
def test_redirects_are_bounded(proxies, pushed, tmp_path, to, requests, said):
    proxy = proxies(f"http://{pushed.registry.host}")
    proxy.add("GET", "/blobs/", "redirect", times=100, to=to)
    with pytest.raises(BadRegistryData) as err, Registry(proxy.host) as registry:
        registry.fetch_blob(pushed.repo, *pushed.config, tmp_path / "blob")
    assert exit_code(err) == EXIT_BAD_DIR and said in one_line(err) and not (tmp_path / "blob").exists()
    assert len(proxy.requests("GET", "/blobs/")) == requests


# -- token auth --------------------------------------------------------------------------------------

def push_small_image(registry, repo):
    """A config and one layer of random bytes, and their manifest; returns (manifest digest, blobs)."""
    layer, config = os.urandom(50_000), json.dumps({"architecture": "amd64", "os": "linux",
                                                    "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    blobs = [(sha256(config), len(config), config), (sha256(layer), len(layer), layer)]
    for digest, size, content in blobs:
        registry.upload_blob(repo, lambda offset, content=content: io.BytesIO(content[offset:]), digest=digest,
                             size=size)
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_V2,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": blobs[0][0], "size": blobs[0][1]},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "digest": blobs[1][0], "size": blobs[1][1]}]}
    return registry.put_manifest(repo, "1", json.dumps(manifest).encode(), DOCKER_V2), blobs


def test_token_auth_push_and_anonymous_pull(token_registry, logged_in):
    repo = f"public/p-{uuid.uuid4().hex[:10]}"
    logged_in(token_registry.host)
    with Registry(token_registry.host) as registry:
        digest, blobs = push_small_image(registry, repo)
    os.unlink(Path(os.environ["DOCKER_CONFIG"]) / "config.json")
    before = len(token_registry.tokens.requests)
    with Registry(token_registry.host) as registry:
        assert registry.get_manifest(repo, "1", ACCEPT)[2] == digest
        for blob_digest, size, _ in blobs:
            assert registry.blob_size(repo, blob_digest) == size
        with pytest.raises(AuthRefused) as err:
            registry.upload_blob(repo, lambda offset: io.BytesIO(blobs[1][2][offset:]), digest=blobs[1][0],
                                 size=blobs[1][1])
    asked = token_registry.tokens.requests[before:]
    assert asked[0] == (None, False, (f"repository:{repo}:pull",))  # one anonymous token, cached
    assert asked.count(asked[0]) == 1
    assert exit_code(err) == EXIT_NO_PERMISSION
    assert f"requires credentials for repository {repo}" in one_line(err)
    assert_no_secret_in_traceback(err.value, *token_registry.tokens.issued, PASSWORD)


def test_token_refused_credentials(token_registry, logged_in):
    wrong = "wrong-" + PASSWORD
    logged_in(token_registry.host, password=wrong)
    with pytest.raises(AuthRefused) as err, Registry(token_registry.host) as registry:
        registry.get_manifest("public/x", "1", ACCEPT)
    assert exit_code(err) == EXIT_NO_PERMISSION
    assert f"the token service of {token_registry.host} (127.0.0.1:{token_registry.tokens.server.server_port}) " \
           "refused the credentials" in one_line(err) and "incorrect username or password" in str(err.value)
    assert_no_secret_in_traceback(err.value, wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode())


def test_token_refused_by_registry_is_renewed_once(token_registry, logged_in):
    logged_in(token_registry.host)
    repo = f"private/r-{uuid.uuid4().hex[:10]}"
    with Registry(token_registry.host) as registry:
        digest, _ = push_small_image(registry, repo)
    token_registry.tokens.poison_next = True
    before = len(token_registry.tokens.requests)
    with Registry(token_registry.host) as registry:
        assert registry.get_manifest(repo, "1", ACCEPT)[2] == digest
    assert token_registry.tokens.scopes_asked()[before:] == [(f"repository:{repo}:pull",)] * 2


def test_token_mount_asks_for_both_repositories(token_registry, logged_in):
    logged_in(token_registry.host)
    source, target = f"private/s-{uuid.uuid4().hex[:10]}", f"private/t-{uuid.uuid4().hex[:10]}"
    with Registry(token_registry.host) as registry:
        _, blobs = push_small_image(registry, source)
        before = len(token_registry.tokens.requests)
        assert registry.mount_blob(target, blobs[1][0], source) is True
    assert token_registry.tokens.scopes_asked()[before:] == [
        (f"repository:{target}:pull,push", f"repository:{source}:pull")]


def test_parallel_uploads_and_fetches_share_tokens(token_registry, logged_in, tmp_path):
    """Threads uploading, then fetching, at once (each on its own connections), with one
    token per scope between them."""
    logged_in(token_registry.host)
    repo = f"private/par-{uuid.uuid4().hex[:10]}"
    contents = [os.urandom(200_000 + index) for index in range(4)]
    before = len(token_registry.tokens.requests)

    def in_threads(work):
        failures = []

        def run(index):
            try:
                work(index)
            except Exception as err:  # reported below, with the others
                failures.append(err)

        threads = [threading.Thread(target=run, args=(index,)) for index in range(len(contents))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []

    with Registry(token_registry.host) as registry:
        in_threads(lambda index: registry.upload_blob(repo, lambda offset: io.BytesIO(contents[index][offset:]),
                                                      digest=sha256(contents[index]), size=len(contents[index])))
        in_threads(lambda index: [registry.fetch_blob(repo, sha256(content), len(content),
                                                      tmp_path / f"{index}-{number}")
                                  for number, content in enumerate(contents)])
    for index in range(len(contents)):
        for number, content in enumerate(contents):
            assert (tmp_path / f"{index}-{number}").read_bytes() == content
    assert token_registry.tokens.scopes_asked()[before:] == [(f"repository:{repo}:pull,push",),
                                                             (f"repository:{repo}:pull",)]


# -- a hostile registry ---------------------------------------------------------------------------

class Hostile:
    """A fake registry on loopback for what a real one never sends: oversized or lying
    answers, endless headers, a misbehaving token service. `routes` maps a path to a
    handler; every request is counted."""

    def __init__(self, routes):
        self.routes = routes
        self.hits = []
        self.server = serve(self._handle)
        self.host = f"127.0.0.1:{self.server.server_port}"

    def _handle(self, handler):
        path = urlsplit(handler.path).path
        self.hits.append((handler.command, path))
        if path == "/v2/" and path not in self.routes:
            return respond(handler, 200, b"{}")
        route = self.routes.get(path)
        if route is None:
            return respond(handler, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}')
        route(handler)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def hostile(routes):
    server = Hostile(routes)
    try:
        with Registry(server.host) as registry:
            yield registry, server
    finally:
        server.stop()


def endless(handler, status=200, headers=(), chunk=b"x" * 65536, total=64 << 20):
    """An answer with no Content-Length that goes on for `total` bytes (then the connection closes)."""
    handler.send_response(status)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    try:
        for _ in range(total // len(chunk)):
            handler.wfile.write(chunk)
    except OSError:
        pass  # the client stopped reading: what it should do


def test_hostile_manifest_too_large():
    big = json.dumps({"mediaType": DOCKER_V2, "pad": "x" * (5 << 20)}).encode()
    routes = {
        "/v2/x/manifests/declared": lambda h: respond(h, 200, big, [("Content-Type", DOCKER_V2)]),
        "/v2/x/manifests/streamed": lambda h: endless(h, headers=[("Content-Type", DOCKER_V2)]),
    }
    with hostile(routes) as (registry, _):
        for tag in ("declared", "streamed"):
            with pytest.raises(BadRegistryData) as err:
                registry.get_manifest("x", tag, ACCEPT)
            assert exit_code(err) == EXIT_BAD_DIR and "larger than 4 MiB" in one_line(err)


def test_hostile_manifest_lies():
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2}).encode()
    routes = {
        "/v2/x/manifests/type": lambda h: respond(h, 200, manifest, [("Content-Type", OCI_MANIFEST)]),
        "/v2/x/manifests/digest": lambda h: respond(h, 200, manifest, [
            ("Content-Type", DOCKER_V2), ("Docker-Content-Digest", sha256(b"other"))]),
        f"/v2/x/manifests/{sha256(b'other')}": lambda h: respond(h, 200, manifest, [("Content-Type", DOCKER_V2)]),
        "/v2/x/manifests/json": lambda h: respond(h, 200, b"{not json", [("Content-Type", DOCKER_V2)]),
    }
    with hostile(routes) as (registry, _):
        with pytest.raises(BadRegistryData) as err:
            registry.get_manifest("x", "type", ACCEPT)
        assert OCI_MANIFEST in one_line(err) and DOCKER_V2 in str(err.value)
        with pytest.raises(DigestMismatch) as err:
            registry.get_manifest("x", "digest", ACCEPT)
        assert exit_code(err) == EXIT_VERIFY
        with pytest.raises(DigestMismatch) as err:
            registry.get_manifest("x", sha256(b"other"), ACCEPT)
        assert sha256(manifest) in one_line(err)
        with pytest.raises(BadRegistryData) as err:
            registry.get_manifest("x", "json", ACCEPT)
        assert "not valid JSON" in one_line(err)


def test_hostile_blob_beyond_its_size(tmp_path):
    digest = sha256(b"small")
    with hostile({f"/v2/x/blobs/{digest}": endless}) as (registry, _):
        with pytest.raises(BadRegistryData) as err:
            registry.fetch_blob("x", digest, 5, tmp_path / "blob")
    assert "more than the 5 bytes" in one_line(err) and not (tmp_path / "blob").exists()


def test_hostile_headers():
    def many_headers(handler):
        handler.send_response(200)
        for index in range(200):
            handler.send_header(f"X-Header-{index}", "x")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def long_header(handler):
        handler.send_response(200)
        handler.send_header("X-Long", "x" * (1 << 17))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with hostile({"/v2/x/manifests/many": many_headers, "/v2/x/manifests/long": long_header}) as (registry, _):
        for tag in ("many", "long"):
            with pytest.raises(BadRegistryData) as err:
                registry.get_manifest("x", tag, ACCEPT)
            assert exit_code(err) == EXIT_BAD_DIR and "breaks HTTP or exceeds its limits" in one_line(err)


def test_hostile_error_body_shown_short_and_printable():
    body = json.dumps({"errors": [{"code": "DENIED", "message": "\x1b[31mred\x1b[0m\n" + "y" * 100_000}]}).encode()
    with hostile({"/v2/x/manifests/1": lambda h: respond(h, 403, body)}) as (registry, _):
        with pytest.raises(AuthRefused) as err:
            registry.get_manifest("x", "1", ACCEPT)
    message = one_line(err)
    assert "DENIED" in message and "\x1b" not in message and len(message) < 500


def test_hostile_server_errors_are_retried_a_bounded_number_of_times():
    with hostile({"/v2/x/manifests/1": lambda h: respond(h, 503, b"overloaded")}) as (registry, server):
        with pytest.raises(RegistryUnavailable) as err:
            registry.get_manifest("x", "1", ACCEPT)
    assert exit_code(err) == EXIT_ENGINE_UNAVAILABLE and "HTTP 503" in one_line(err)
    assert server.hits.count(("GET", "/v2/x/manifests/1")) == retry.ATTEMPTS


def test_hostile_token_service(no_logins):
    token_port = free_port()
    challenge = f'Bearer realm="http://127.0.0.1:{token_port}/token",service="s"'
    routes = {"/v2/": lambda h: respond(h, 401, b"", [("WWW-Authenticate", challenge)])}
    token = serve(lambda h: endless(h, headers=[("Content-Type", "application/json")]), port=token_port)
    try:
        with hostile(routes) as (registry, _):
            with pytest.raises(BadRegistryData) as err:
                registry.get_manifest("x", "1", ACCEPT)
        assert "answered with more than 1 MiB" in one_line(err)
    finally:
        token.shutdown()
        token.server_close()
    routes = {"/v2/": lambda h: respond(h, 401, b"", [("WWW-Authenticate", 'Bearer realm="file:///etc/passwd"')])}
    with hostile(routes) as (registry, _):
        with pytest.raises(BadRegistryData) as err:
            registry.get_manifest("x", "1", ACCEPT)
    assert "not an HTTP address" in one_line(err)
