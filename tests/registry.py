"""Real container registries for tests: Debian's docker-registry (CNCF distribution 2.8.2)
in three kinds, the token server one of them needs, a multi-platform index pushed by
podman, and a proxy that sends blob downloads elsewhere and injects faults.

Import from a test module (tests/ is on sys.path under pytest):

    from registry import RegistryServer, BlobProxy, push_platform_index, Unavailable
    from registry import IdentityToken, auths_document

conftest.py makes the session fixtures registry_anon, registry_tls, registry_token,
registry_identity (token, identity_tokens=True) and platform_index, and the function
fixture blob_proxy (a factory), from it; and for the proxy tests (tests/proxy.py)
registry_named_anon, registry_named_tls and registry_named_token. Repository names in
the session registries are shared by every test: make yours unique (uuid).

RegistryServer(kind, label=None, names=(), realm_name=None, certs_d=CERTS_D,
identity_tokens=False), kind one of KINDS:
    "anonymous"  plain HTTP, no auth.
    "basic-tls"  HTTPS with a private CA + htpasswd Basic auth (bcrypt, `htpasswd -Bbn`).
    "token"      HTTPS with a private CA + `auth: token`: a TokenServer (below) on another
                 loopback port issues the JWTs; users and grants are set by the test.
    `docker-registry serve CONFIG.yml` in the foreground on a free 127.0.0.1 port, its own
    storage dir, `storage.delete.enabled: true`, no blob descriptor cache (a deleted blob
    is gone at once).
    - start(timeout=30) -> self: waits until /v2/ answers (200 or 401); RuntimeError with
      its log's last lines if it does not; Unavailable when docker-registry or htpasswd
      is not installed.
    - stop(): SIGTERM by PID (then SIGKILL), token server stopped, temp dir removed. Safe
      twice. Also a context manager.
    - host "127.0.0.1:PORT", scheme "http"|"https", url "SCHEME://HOST", port, pid,
      storage (the registry's root directory), dir (temp dir), log_path.
    - ca_cert: path of the CA's PEM certificate (TLS kinds; None for "anonymous");
      cert_dir: a directory holding only ca.crt, for skopeo/podman --cert-dir.
      The server certificate names IP 127.0.0.1, DNS localhost and the `names`.
    - names: other names for 127.0.0.1, e.g. tests/proxy.py's TEST_NAMES, which only its
      squid resolves. The TLS kinds put them in their certificate, and at start the CA
      goes into BASE/NAME:PORT/ca.crt for every name, for the registry's port and the
      token server's, BASE in certs_d (/etc/docker/certs.d and /etc/containers/certs.d),
      where docker, podman and skopeo look; stop() removes them.
      host_named(name=None) -> "NAME:PORT" (default: the first name).
    - realm_name (token kind; added to names): the realm the registry announces is
      https://REALM_NAME:TOKENPORT/token, so only a client resolving that name (through
      the proxy) gets a token. dockerd cannot use the test proxy: it can neither log in
      nor push there; fill such a registry with skopeo_copy(..., env=proxy.env()).
    - trust(host, bases=certs_d) -> the directories BASE/HOST made, holding ca.crt;
      untrust(directories). Whatever is trusted is removed by stop().
    - username, password: the test user ("alice"; None for "anonymous"); credentials:
      (username, password) or None. admin: (user, password) allowed everything, used by
      the helpers below by default ("basic-tls": the same user; "token": "admin").
    - token_server: the TokenServer ("token" only); identity_tokens sets its offline_tokens.
    - blob_path(digest): the blob's data file in storage (the registry's filesystem layout).
    Real clients, credentials in private config dirs (never root's ~/.docker):
    - push(engine_ref, repo_tag, credentials=admin, check=True, host=None) ->
      Pushed(digest, proc): `docker tag` + `docker login` (when credentials) + `docker
      push` against the main dockerd; the HOST/REPO:TAG tag is removed again unless it was
      the image's only tag (then the image's owner removes it with the image: `docker rmi
      -f ID`). check=False returns Pushed(None, proc) on failure (of the login or the
      push) instead of raising. host: go through another front door (a BlobProxy's host).
    - pull(repo_tag, credentials=admin, check=True, host=None) -> CompletedProcess of
      `docker pull HOST/REPO:TAG` (the pulled tag stays: remove it, or the image by ID).
    - skopeo_flags(prefix="", credentials=admin) -> skopeo flags for this registry:
      --PREFIXtls-verify=false (HTTP) or --PREFIXcert-dir CERT_DIR, --PREFIXcreds U:P or
      --PREFIXno-creds (prefix "src-"/"dest-" for `skopeo copy`).
    - podman_flags(credentials=admin): the same for podman push/pull/manifest push
      (podman has no --no-creds: an empty --authfile instead, never root's shared one).
    - skopeo_copy(src, dest, *extra, credentials=admin, check=True, env=None): flags
      added for whichever side is docker://HOST/... or docker://NAME:PORT/... (env: e.g. a
      SquidProxy's env(), to reach the registry by name).
    - skopeo_inspect(repo_tag, *extra, credentials=admin, host=None, env=None) -> parsed
      JSON (--raw: the manifest as the registry serves it); host: e.g. host_named().
    Oracle, with urllib, independent of docker-dir (admin rights):
    - request(method, path, data=None, headers=None, authorize=True) -> Answer(status,
      headers, body); authorize=False sends no credentials at all.
    - manifest(repo, ref) -> Manifest(raw, media_type, digest, .json) or None on 404
      (accepts OCI and Docker manifests and indexes).
    - blob(repo, digest) -> bytes or None on 404; tags(repo) -> list or None on 404.
    - delete_blob(repo, digest): the registry's DELETE (202); the repository's link goes,
      so GET and HEAD answer 404 from then on (garbage collection never runs).
    Files for the client under test:
    - docker_config(directory, credentials=None, host=None, entries=None) -> directory:
      writes config.json ({"auths": {HOST: {"auth": base64}}}) for $DOCKER_CONFIG.
    - auth_file(path, credentials=None, host=None, entries=None) -> path: containers
      auth.json for $REGISTRY_AUTH_FILE. credentials default to (username, password); host
      to this registry's (give a BlobProxy's host to go through it). entries instead: the
      whole {key: value} of auths_document (below), e.g. {f"{HOST}/team-a": (user, pw),
      f"{HOST}/team-b": (user2, pw2)} or {HOST: IdentityToken(user, token)}.

auths_document(entries) -> {"auths": {key: auth_entry(value)}}; auth_entry(value): a
(user, password) tuple -> {"auth": base64("user:password")}; IdentityToken(user, token) ->
{"auth": base64("user:"), "identitytoken": token}, exactly what `docker login` writes when
the token server gives it a refresh token; a dict -> as is. Keys: "HOST[:PORT]" (docker
and containers) or "HOST[:PORT]/NAMESPACE[/...]" (containers only: podman and skopeo take
the longest matching key; see test_path_keyed_auth_json_two_accounts).

What each client needs here (measured with dockerd 20.10, docker CLI 28, skopeo 1.9.3,
podman 4.3.1):
    - docker: nothing for any kind: dockerd treats 127.0.0.0/8 as an insecure registry,
      so it speaks HTTPS without verifying the certificate (then falls back to HTTP) and
      never reads /etc/docker/certs.d for it. Logins go to a private $DOCKER_CONFIG; the
      token kind's login asks the token server for a token with no scope and
      offline_token=true; with identity_tokens it stores the refresh token it gets as
      identitytoken, and its pushes and pulls then exchange it by POST.
    - skopeo, podman: --tls-verify=false for "anonymous"; --cert-dir CERT_DIR for the TLS
      kinds (they verify, and trust the CA for the token server too); --creds U:P. By a
      name: HTTPS_PROXY (or https_proxy) of a SquidProxy, and the CA from certs.d.
    - docker push sends a HEAD for a layer only when it has pulled or pushed it before;
      a layer new to the daemon goes straight to POST (so assert "HEAD before upload" of
      the client under test, not of docker).

TokenServer (registry.token_server): HTTPS on its own loopback port (same CA and
certificate; url is the realm, by realm_name when the registry has one; direct_url is by
127.0.0.1; port), GET /token?service=...&scope=repository:NAME:pull,push[&scope=...]. Basic
credentials are checked (wrong ones: 401); no credentials = anonymous. Each scope gets the
requested actions the policy allows (possibly none); the JWT (RS256) carries the signing
certificate in its x5c header, issued by the registry's CA (the rootcertbundle).
    - add_user(name, password=None) -> password (random when None).
    - grant(user, pattern, *actions, type="repository"): user None = anonymous (and so
      everyone); pattern is an fnmatch pattern on the repository name. Grants add up.
    - make_public(repo): grant(None, repo, "pull").
    - reset_policy(): back to the default: admin may pull, push and delete anything and
      list the catalog; alice may pull anything and push to alice/*; anonymous may pull
      public/*.
    - RegistryServer.team_accounts(*teams) -> {team: (user, password)}: for each team a new
      user who may pull and push TEAM/* and nothing else (besides anonymous grants), so a
      client that takes the wrong account for a repository is refused.
    - issue(subject, access, lifetime=None) -> a signed JWT, for tests that craft tokens
      (the registry allows 60 s of clock leeway on exp and nbf).
    - token_lifetime (s, default 300), the expires_in of every answer.
    - requests: TokenRequest(user, scopes, access, status, method, grant_type, client_id,
      offline, presented, issued, error) for every request (GET and POST). No secret is
      kept: presented and issued are refresh tokens' fingerprints (fingerprint(token)).
OAuth2 (distribution's "OAuth2 Token Authentication" spec): POST /token, a form
(application/x-www-form-urlencoded, chunked or not) with client_id and service required:
    - grant_type=password, username, password [, access_type=offline] [, scope]: an
      access token for the user; with access_type=offline also a refresh_token (when
      offline_tokens).
    - grant_type=refresh_token, refresh_token [, scope]: an access token for that token's
      user, scopes granted by the same policy as GET; the answer repeats the refresh token
      (rotate_refresh_tokens=True: a new one, and the one presented is revoked).
    Answer: {access_token (never "token"), expires_in, issued_at, scope: the granted
    "type:name:actions" entries space-separated[, refresh_token]}. Refusals: 400 +
    {"error": invalid_request (no client_id, another service, no refresh_token, not a
    form) | invalid_grant (wrong password; an unknown, revoked or other service's refresh
    token) | unsupported_grant_type, "error_description": ...}.
    GET with offline_token=true and valid Basic credentials answers a refresh_token too
    (when offline_tokens): that is what `docker login` asks for (client_id "docker"), so
    it stores no password but the refresh token, in config.json
    as "identitytoken", and `docker pull` then has the daemon POST a refresh_token grant
    (client_id "docker"); skopeo and podman do the same from auth.json (client_id
    "containers/image", form sent chunked). Measured with docker CLI 28 + dockerd 20.10
    and skopeo 1.9.3.
    - offline_tokens: False by default (offline requests get no refresh token, as from
      Docker Hub, and `docker login` stores the password); RegistryServer(identity_tokens=
      True) sets it (conftest's registry_identity). Refresh tokens made otherwise (below)
      are honoured either way. oauth = True (False: POST answers 404, like token servers
      with GET only); rotate_refresh_tokens = False.
    - identity_token(user) -> a new refresh token, as a login would give; revoke_refresh_
      token(token); issued_refresh_tokens: every one issued, the secrets themselves, to
      look for where they must never go (e.g. BlobProxy.received(token): the registry).
    The registry answers a request its token does not cover with 401 and
    error="insufficient_scope" in WWW-Authenticate.

BlobProxy(registry, name=None, storage_name=None).start() -> a reverse proxy on a free
loopback port (HTTPS with the
registry's CA when the registry is HTTPS, so upload Locations the registry builds from the
Host header stay valid) that passes every request through, streamed (chunked or not,
uploads included), on keep-alive connections, except:
    - blob GETs (/v2/NAME/blobs/sha256:HEX): the proxy sends the registry a HEAD with the
      client's headers; on 200 (206 when they ask for a Range) it answers 307 to
      SCHEME://localhost:PORT2/blobs/sha256:HEX?repository=NAME, a storage server under a
      different host name that serves the bytes from the registry's storage (Range
      honoured: 206 + Content-Range; 416 out of range). Otherwise the GET goes through.
    Attributes: host ("127.0.0.1:PORT"), url, scheme, port, storage_host ("localhost:PORT2"),
    storage_url, ca_cert, cert_dir, registry. name, storage_name: two of the registry's
    names to use instead of 127.0.0.1 and localhost (behind tests/proxy.py's squid, which
    resolves them), their CA trusted in certs.d while the proxy runs.
    Logs (secrets' values redacted, header names lower-case, the scheme kept:
    "Bearer <redacted>"):
    - requests: ProxyRequest(method, path, query, headers, status, bytes_in,
      bytes_out, redirected) for every request the proxy got (status -1: an upload cut,
      never answered).
    - storage_requests: StorageRequest(method, path, query, headers, status, bytes_out,
      range) for every request the storage server got (a cut one: its status, fewer
      bytes_out than it announced).
    - bytes_uploaded() / bytes_downloaded(): request bodies through the proxy / response
      bodies from proxy and storage. forget(): empties both logs.
    - received(secret) -> True when `secret` reached the proxy or the storage server: as a
      secret header's value, its credential after the scheme, a Basic user:password or
      password (their sha256 is kept, never the value), or in a path, query or other header.
    Faults, each returned as a Fault whose `fired` counts the times it acted; `match` is
    a digest or any substring of the request path (+ query), None = every request; times
    None = every time, K = the first K times it acts:
    - corrupt(match=None, times=None, offset=None): the storage server flips the byte at
      `offset` of the blob (default: the middle) when it serves that byte.
    - cut(after, match=None, times=1): the storage server sends the headers (full length)
      and `after` bytes, then closes the connection.
    - fail(status, match=None, times=None, where="storage"): answer `status` instead;
      where="registry": the proxy answers it for requests to the registry.
    - cut_upload(after, match=None, times=1): a request body (POST/PATCH/PUT) that reaches
      `after` bytes is cut there: the registry gets those bytes, then both connections
      close. PATCH requests do not name the digest, so match a digest only for monolithic
      PUTs. The registry keeps the bytes, so the upload's Location (its _state says
      offset 0) is dead: "upload resumed at wrong offset", 404 BLOB_UPLOAD_INVALID; a
      client starts a new upload.
    - clear_faults().
    - page_tags(size): the proxy answers tag lists (GET /v2/NAME/tags/list) in pages of at
      most `size` tags (fewer when the client asks ?n= for fewer), as the OCI distribution
      spec and distribution 3 do: the registry's list sorted, ?last= the tag after which a
      page starts, and a Link header `</v2/NAME/tags/list?last=T&n=N>; rel="next"` while more
      remain. (distribution 2.8.2 ignores n and last and sends every tag, unsorted: measured.)
    - stop(): stops both servers and closes their open connections; safe twice.

push_platform_index(registry, repo_tag, rootfs, workdir, manifest_format="oci")
    -> PlatformIndex(registry, repo, tag, digest, media_type, manifests, native, foreign):
    two images imported by podman from the busybox rootfs (offline), one whose config
    claims this host's platform (native, runnable) and one claiming another (foreign:
    linux/arm64, or linux/amd64 on an arm64 host; it differs by one file), added with
    `podman manifest add --os --arch` and pushed with `podman manifest push --all
    --format FORMAT` ("oci": an OCI index of OCI manifests; "v2s2": a Docker manifest
    list of Docker v2 manifests; layers gzipped either way). manifests maps "os/arch" ->
    manifest digest, as the registry's index lists them; repo_tag is "REPO:TAG". podman's
    own images and list are removed afterwards.

registry_or_skip(kind) -> a started RegistryServer; pytest.skip(reason) when Unavailable.
"""
import base64
import contextlib
import datetime
import fnmatch
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from engines import Unavailable, podman_env, log_tail
from procs import terminate, wait_gone

KINDS = ("anonymous", "basic-tls", "token")
CERTS_D = ("/etc/docker/certs.d", "/etc/containers/certs.d")
TOKEN_SERVICE = "docker-dir-test-registry"
TOKEN_ISSUER = "docker-dir-test-token-server"
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
# Not forwarded by the proxy: they describe one connection, not the request.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "expect"}
BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
TAGS_PATH = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
STORAGE_PATH = re.compile(r"^/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
PIECE = 64 << 10


# -- certificates ------------------------------------------------------------------

class CertificateAuthority:
    """A private CA in `directory` (ca.crt, ca.key) and the certificates it issues."""

    def __init__(self, directory, name="docker-dir test CA"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {uuid.uuid4().hex[:8]}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(_key_usage(cert_sign=True), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                    critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = self._write("ca", self.cert, self.key)

    def issue(self, stem, common_name, *, server=True, names=()):
        """A certificate and key, written as STEM.crt and STEM.key: for TLS on 127.0.0.1,
        localhost and the DNS `names` (server=True, EC key), or for signing tokens (RSA key,
        digitalSignature). Returns (certificate, private key, certificate path, key path)."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1()) if server else rsa.generate_private_key(65537, 2048)
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_key_usage(), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if server:
            builder = (builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                 *map(x509.DNSName, names)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self._write(stem, cert, key)
        return cert, key, cert_path, self.directory / f"{stem}.key"

    def _write(self, stem, cert, key):
        from cryptography.hazmat.primitives import serialization

        key_path = self.directory / f"{stem}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_path, 0o600)
        cert_path = self.directory / f"{stem}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path

    def client_context(self):
        return ssl.create_default_context(cafile=str(self.cert_path))


def _key_usage(cert_sign=False):
    from cryptography import x509

    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _server_context(cert_path, key_path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_path), str(key_path))
    return context


# -- small HTTP servers ----------------------------------------------------------

class _Server(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server on a free 127.0.0.1 port, TLS when given a context;
    the TLS handshake happens in the connection's thread, so a stalled client stalls
    nobody else. stop() also closes the keep-alive connections still open."""

    daemon_threads = True

    def __init__(self, handler, owner, ssl_context=None):
        self.owner = owner
        self.ssl_context = ssl_context
        self.open_connections = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server_address[1]

    def get_request(self):
        connection, address = super().get_request()
        if self.ssl_context:
            connection = self.ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        with self.lock:
            self.open_connections.add(connection)
        return connection, address

    def finish_request(self, request, client_address):
        if self.ssl_context:
            request.settimeout(30)
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError):
                return  # e.g. a client that does not trust the CA: its own error says so
        super().finish_request(request, client_address)

    def shutdown_request(self, request):
        with self.lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError, socket.timeout)):
            super().handle_error(request, client_address)

    def stop(self):
        self.shutdown()
        with self.lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self.thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle keep-alive connection ends its thread eventually

    def log_message(self, format, *args):
        pass  # every request is recorded by its owner instead

    def send_simple(self, status, body=b"", content_type="text/plain", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return len(body) if self.command != "HEAD" else 0

    def _body_pieces(self):
        """The request body as it arrives, de-chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, PIECE))
                    if not piece:
                        raise ConnectionError("client closed the connection mid-body")
                    left -= len(piece)
                    yield piece
                self.rfile.readline(1024)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, PIECE))
                if not piece:
                    raise ConnectionError("client closed the connection mid-body")
                left -= len(piece)
                yield piece

    def abort(self):
        """Close the client's connection at once, mid-request or mid-response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def redacted(headers):
    """Header name (lower case) -> value, secrets replaced by their scheme + <redacted>."""
    result = {}
    for name, value in headers.items():
        name = name.lower()
        if name in SECRET_HEADERS:
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = f"{scheme} <redacted>".strip()
        result[name] = f"{result[name]}, {value}" if name in result else value
    return result


# -- token server ---------------------------------------------------------------------

@dataclass
class Grant:
    user: Optional[str]  # None: anonymous, and so everyone
    pattern: str
    actions: frozenset
    type: str = "repository"


@dataclass
class TokenRequest:
    """One request to the token server. Secrets are never kept: refresh tokens appear as
    their fingerprint (TokenServer.fingerprint)."""
    user: Optional[str]
    scopes: list
    access: list
    status: int
    method: str = "GET"
    grant_type: Optional[str] = None  # POST: "password", "refresh_token", or what the client sent
    client_id: Optional[str] = None
    offline: bool = False  # a refresh token was asked for (GET offline_token=true, POST access_type=offline)
    presented: Optional[str] = None  # fingerprint of the refresh token the client sent
    issued: Optional[str] = None  # fingerprint of the refresh token in the answer
    error: Optional[str] = None  # the OAuth2 error code of a refused POST


@dataclass
class RefreshToken:
    user: str
    service: str
    client_id: str
    revoked: bool = False


class _OAuthError(Exception):
    def __init__(self, code, description):
        super().__init__(description)
        self.code, self.description = code, description


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenHandler(_Handler):
    def do_GET(self):
        self.server.owner.answer(self)

    def do_POST(self):
        self.server.owner.answer_oauth(self)


class TokenServer:
    """Issues the registry's JWTs and refresh tokens; see the module docstring."""

    def __init__(self, ca, tls_cert, tls_key, realm_name=None):
        self.ca = ca
        self.realm_name = realm_name
        self.users = {}
        self.grants = []
        self.requests = []
        self.refresh_tokens = {}  # token -> RefreshToken
        self.token_lifetime = 300
        self.offline_tokens = False
        self.oauth = True
        self.rotate_refresh_tokens = False
        self.lock = threading.Lock()
        cert, self.signing_key, _, _ = ca.issue("token-signer", "docker-dir test token signer", server=False)
        from cryptography.hazmat.primitives import serialization

        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.admin = ("admin", secrets.token_hex(12))
        self.users[self.admin[0]] = self.admin[1]
        self.users["alice"] = secrets.token_hex(12)
        self.reset_policy()
        self.server = _Server(_TokenHandler, self, _server_context(tls_cert, tls_key))

    @property
    def port(self):
        return self.server.port

    @property
    def url(self):
        """The realm: by realm_name when given (reachable only where that name resolves)."""
        return f"https://{self.realm_name or '127.0.0.1'}:{self.port}/token"

    @property
    def direct_url(self):
        return f"https://127.0.0.1:{self.port}/token"

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    def add_user(self, name, password=None):
        self.users[name] = password or secrets.token_hex(12)
        return self.users[name]

    def grant(self, user, pattern, *actions, type="repository"):
        grant = Grant(user, pattern, frozenset(actions), type)
        self.grants.append(grant)
        return grant

    def make_public(self, repo):
        return self.grant(None, repo, "pull")

    def reset_policy(self):
        self.grants = []
        self.grant(self.admin[0], "*", "pull", "push", "delete")
        self.grant(self.admin[0], "catalog", "*", type="registry")
        self.grant("alice", "*", "pull")
        self.grant("alice", "alice/*", "pull", "push")
        self.grant(None, "public/*", "pull")

    def allowed(self, user, type_, name, requested):
        allowed = set()
        for grant in self.grants:
            if grant.type == type_ and grant.user in (None, user) and fnmatch.fnmatchcase(name, grant.pattern):
                allowed |= grant.actions
        return [action for action in requested if action in allowed]

    def issue(self, subject, access, lifetime=None):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {"iss": TOKEN_ISSUER, "sub": subject or "", "aud": TOKEN_SERVICE, "iat": now, "nbf": now,
                  "exp": now + (self.token_lifetime if lifetime is None else lifetime),
                  "jti": uuid.uuid4().hex, "access": access}
        signed = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
        signature = self.signing_key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64url(signature)}"

    # -- refresh tokens (identity tokens, as docker's config.json calls them)
    @staticmethod
    def fingerprint(token):
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]

    def identity_token(self, user, client_id="docker-dir-tests"):
        """A new refresh token for `user`, as a login with access_type=offline would get."""
        if user not in self.users:
            raise KeyError(f"no user {user!r}")
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.refresh_tokens[token] = RefreshToken(user, TOKEN_SERVICE, client_id)
        return token

    def revoke_refresh_token(self, token):
        self.refresh_tokens[token].revoked = True

    @property
    def issued_refresh_tokens(self):
        """Every refresh token issued (the secrets themselves, to look for where they must not be)."""
        return list(self.refresh_tokens)

    # -- answers
    def _user_of(self, handler):
        """(user or None, credentials valid)."""
        value = handler.headers.get("Authorization", "")
        if not value.lower().startswith("basic "):
            return None, True
        try:
            user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        except ValueError:
            return None, False
        return user, self._password_ok(user, password)

    def _password_ok(self, user, password):
        known = self.users.get(user)
        return known is not None and secrets.compare_digest(known.encode(), (password or "").encode())

    def _grant_scopes(self, record):
        """The policy applied to each requested scope (the same for GET and POST)."""
        for scope in record.scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            type_, name, requested = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            record.access.append({"type": type_, "name": name,
                                  "actions": self.allowed(record.user, type_, name, requested)})

    def _issued_at(self):
        return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def answer(self, handler):
        url = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(url.query)
        scopes = [scope for value in query.get("scope", []) for scope in value.split(" ") if scope]
        user, valid = self._user_of(handler)
        record = TokenRequest(user, scopes, [], 0, client_id=query.get("client_id", [None])[0],
                              offline=query.get("offline_token", [""])[0].lower() == "true")
        self.requests.append(record)
        if url.path != "/token":
            record.status = 404
            handler.send_simple(404, "not found")
            return
        if not valid:
            record.status = 401
            handler.send_simple(401, json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                                             "message": "invalid username or password"}]}),
                                "application/json", [("WWW-Authenticate", 'Basic realm="docker-dir test"')])
            return
        if query.get("service", [TOKEN_SERVICE])[0] != TOKEN_SERVICE:
            record.status = 400
            handler.send_simple(400, json.dumps({"errors": [{"code": "DENIED", "message": "unknown service"}]}),
                                "application/json")
            return
        self._grant_scopes(record)
        token = self.issue(user, record.access)
        answer = {"token": token, "access_token": token, "expires_in": self.token_lifetime,
                  "issued_at": self._issued_at()}
        if record.offline and user and self.offline_tokens:
            answer["refresh_token"] = self.identity_token(user, record.client_id or "")
            record.issued = self.fingerprint(answer["refresh_token"])
        record.status = 200
        handler.send_simple(200, json.dumps(answer), "application/json")

    def answer_oauth(self, handler):
        """POST /token: distribution's OAuth2 token endpoint (password and refresh_token grants)."""
        record = TokenRequest(None, [], [], 0, method="POST")
        self.requests.append(record)
        body = b"".join(handler._body_pieces())  # skopeo sends its form chunked
        if urllib.parse.urlsplit(handler.path).path != "/token" or not self.oauth:
            record.status = 404
            handler.send_simple(404, "not found")
            return
        form = urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True)

        def field(name):
            values = form.get(name)
            return values[0] if values else None

        record.grant_type, record.client_id = field("grant_type"), field("client_id")
        record.scopes = [scope for value in form.get("scope", []) for scope in value.split(" ") if scope]
        try:
            refresh_token = self._oauth_grant(handler, record, field)
        except _OAuthError as error:
            record.status, record.error = 400, error.code  # RFC 6749 5.2
            handler.send_simple(400, json.dumps({"error": error.code,
                                                          "error_description": error.description}),
                                "application/json")
            return
        self._grant_scopes(record)
        answer = {"access_token": self.issue(record.user, record.access), "expires_in": self.token_lifetime,
                  "issued_at": self._issued_at(),
                  "scope": " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}"
                                    for a in record.access if a["actions"])}
        if refresh_token:
            answer["refresh_token"] = refresh_token
            record.issued = self.fingerprint(refresh_token)
        record.status = 200
        handler.send_simple(200, json.dumps(answer), "application/json")

    def _oauth_grant(self, handler, record, field):
        """Authenticates the POST; sets record.user; returns the refresh token to answer, if any."""
        content_type = handler.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
        if not record.client_id:
            raise _OAuthError("invalid_request", "client_id is required")
        if field("service") != TOKEN_SERVICE:
            raise _OAuthError("invalid_request", "unknown service")
        if record.grant_type == "password":
            record.user = field("username")
            record.offline = field("access_type") == "offline"
            if not record.user or not self._password_ok(record.user, field("password")):
                raise _OAuthError("invalid_grant", "invalid username or password")
            if record.offline and self.offline_tokens:
                return self.identity_token(record.user, record.client_id)
            return None
        if record.grant_type == "refresh_token":
            presented = field("refresh_token")
            if not presented:
                raise _OAuthError("invalid_request", "refresh_token is required")
            record.presented = self.fingerprint(presented)
            with self.lock:
                known = self.refresh_tokens.get(presented)
                if known is None or known.revoked or known.service != field("service"):
                    raise _OAuthError("invalid_grant", "unknown or revoked refresh token")
                record.user = known.user
                if not self.rotate_refresh_tokens:
                    return presented  # the spec: the same refresh token, not a new one
                known.revoked = True
            return self.identity_token(record.user, record.client_id)
        raise _OAuthError("unsupported_grant_type", f"grant_type {record.grant_type!r} is not supported")


# -- the registry -----------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: object  # http.client.HTTPMessage
    body: bytes


@dataclass
class Manifest:
    raw: bytes
    media_type: str
    digest: str

    @property
    def json(self):
        return json.loads(self.raw)


@dataclass
class Pushed:
    digest: Optional[str]
    proc: subprocess.CompletedProcess


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(argv, check=True, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 300)
    proc = subprocess.run([str(a) for a in argv], **kwargs)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class RegistryServer:
    """Debian's docker-registry, in one of KINDS; see the module docstring for the API."""

    def __init__(self, kind="anonymous", label=None, names=(), realm_name=None, certs_d=CERTS_D,
                 identity_tokens=False):
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; one of {KINDS}")
        if (realm_name or identity_tokens) and kind != "token":
            raise ValueError("realm_name and identity_tokens are for the token kind")
        self.kind = kind
        self.label = label or f"registry ({kind})"
        self.names = tuple(dict.fromkeys([*names, *([realm_name] if realm_name else [])]))
        self.realm_name = realm_name
        self.identity_tokens = identity_tokens
        self.certs_d = tuple(certs_d)
        self.trusted = []  # certs.d directories made by trust(), removed by stop()
        self.dir = None
        self.process = None
        self.port = None
        self.ca = None
        self.tls_cert = self.tls_key = None
        self.token_server = None
        self.username = self.password = None
        self.admin = None

    # -- where it is
    @property
    def scheme(self):
        return "http" if self.kind == "anonymous" else "https"

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"{self.scheme}://{self.host}"

    def host_named(self, name=None):
        """NAME:PORT, the registry by one of its names (default: the first)."""
        name = name or self.names[0]
        if name not in self.names:
            raise ValueError(f"{self.label}: {name!r} is not one of its names {self.names}")
        return f"{name}:{self.port}"

    @property
    def pid(self):
        return self.process.pid if self.process else None

    @property
    def storage(self):
        return self.dir / "storage"

    @property
    def log_path(self):
        return self.dir / "log"

    @property
    def ca_cert(self):
        return self.ca.cert_path if self.ca else None

    @property
    def cert_dir(self):
        return self.dir / "certs" if self.ca else None

    @property
    def credentials(self):
        return (self.username, self.password) if self.username else None

    def blob_path(self, digest):
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    # -- life
    def start(self, timeout=30):
        for tool in ("docker-registry",) + (("htpasswd",) if self.kind == "basic-tls" else ()):
            if not shutil.which(tool):
                package = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils"}[tool]
                raise Unavailable(f"{self.label}: {tool} not installed (Debian package {package})")
        self.dir = Path(tempfile.mkdtemp(prefix=f"registry-{self.kind}-"))
        try:
            self._prepare()
            for _attempt in range(5):
                self.port = _free_port()
                self._write_config()
                if self._launch(timeout):
                    for name in self.names if self.ca else ():
                        self.trust(f"{name}:{self.port}")
                        if self.token_server:
                            self.trust(f"{name}:{self.token_server.port}")
                    return self
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"{self.label}: no free port found in 5 attempts")

    def _prepare(self):
        self.storage.mkdir()
        auth = None
        if self.kind != "anonymous":
            try:
                self.ca = CertificateAuthority(self.dir / "ca")
            except ImportError:
                raise Unavailable(f"{self.label}: the Python package cryptography is missing "
                                  "(the test extras install it)") from None
            self.tls_cert, self.tls_key = self.ca.issue("server", "127.0.0.1", names=self.names)[2:]
            self.cert_dir.mkdir()
            shutil.copy(self.ca_cert, self.cert_dir / "ca.crt")
        if self.kind == "basic-tls":
            self.username, self.password = "alice", secrets.token_hex(12)
            line = _run(["htpasswd", "-Bbn", self.username, self.password]).stdout.strip()
            (self.dir / "htpasswd").write_text(line + "\n")
            self.admin = self.credentials
            auth = {"htpasswd": {"realm": "docker-dir-test", "path": str(self.dir / "htpasswd")}}
        elif self.kind == "token":
            self.token_server = TokenServer(self.ca, self.tls_cert, self.tls_key, self.realm_name)
            self.token_server.offline_tokens = self.identity_tokens
            self.username, self.password = "alice", self.token_server.users["alice"]
            self.admin = self.token_server.admin
            auth = {"token": {"realm": self.token_server.url, "service": TOKEN_SERVICE, "issuer": TOKEN_ISSUER,
                              "rootcertbundle": str(self.ca_cert)}}
        self._auth = auth

    def _write_config(self):
        http_ = {"addr": self.host, "secret": secrets.token_hex(16),
                 "headers": {"X-Content-Type-Options": ["nosniff"]}}
        if self.ca:
            http_["tls"] = {"certificate": str(self.tls_cert), "key": str(self.tls_key)}
        config = {"version": 0.1, "log": {"level": "info", "formatter": "text"},
                  "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True},
                              "maintenance": {"uploadpurging": {"enabled": False}}},
                  "http": http_}
        if self._auth:
            config["auth"] = self._auth
        # JSON is YAML: no YAML library needed
        (self.dir / "config.yml").write_text(json.dumps(config, indent=1))

    def _launch(self, timeout):
        """Start it and wait for /v2/; False when its port was taken meanwhile."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("REGISTRY_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["docker-registry", "serve", str(self.dir / "config.yml")],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                if "address already in use" in self.log_path.read_text(errors="replace"):
                    self.log_path.unlink()
                    return False
                raise RuntimeError(f"{self.label}: docker-registry exited:\n{log_tail(self.log_path)}")
            try:
                status = self.request("GET", "/v2/", authorize=False, timeout=5).status
            except OSError:
                status = None
            if status in (200, 401):
                return True
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: /v2/ did not answer within {timeout} s:\n{log_tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self):
        if self.process is not None:
            terminate(self.process, grace=10)
            wait_gone([self.process.pid], 5)
            self.process = None
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
        self.untrust(self.trusted)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start() if self.dir is None else self

    def __exit__(self, *exc):
        self.stop()

    def trust(self, host, bases=None):
        """The CA in BASE/HOST/ca.crt for each base (default: certs_d), where docker, podman,
        skopeo look for a registry's CA; removed by untrust() or stop(). Returns the dirs made."""
        made = []
        for base in self.certs_d if bases is None else bases:
            directory = Path(base) / host
            directory.mkdir(parents=True, exist_ok=True)  # a killed run's leftover: same port, same CA role
            shutil.copy(self.ca_cert, directory / "ca.crt")
            made.append(directory)
        self.trusted += made
        return made

    def untrust(self, directories):
        for directory in list(directories):
            shutil.rmtree(directory, ignore_errors=True)
            if directory in self.trusted:
                self.trusted.remove(directory)

    # -- the oracle
    def _authorization(self, path):
        if self.kind == "basic-tls":
            return "Basic " + base64.b64encode(":".join(self.admin).encode()).decode()
        if self.kind == "token":
            match = re.match(r"^/v2/(.+)/(manifests|blobs|tags)/", path)
            access = ([{"type": "repository", "name": match[1], "actions": ["pull", "push", "delete"]}]
                      if match else [{"type": "registry", "name": "catalog", "actions": ["*"]}])
            return "Bearer " + self.token_server.issue(self.admin[0], access)
        return None

    def request(self, method, path, data=None, headers=None, authorize=True, timeout=60):
        headers = dict(headers or {})
        authorization = authorize and self._authorization(path)
        if authorization:
            headers["Authorization"] = authorization
        handlers = [urllib.request.HTTPSHandler(context=self.ca.client_context())] if self.ca else []
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with opener.open(request, timeout=timeout) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Answer(error.code, error.headers, error.read())

    def _expect(self, answer, what, *ok):
        if answer.status not in ok:
            raise AssertionError(f"{self.label}: {what}: {answer.status} {answer.body[:300]!r}")

    def manifest(self, repo, ref):
        answer = self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if answer.status == 404:
            return None
        self._expect(answer, f"manifest {repo}:{ref}", 200)
        return Manifest(answer.body, answer.headers.get("Content-Type"),
                        "sha256:" + hashlib.sha256(answer.body).hexdigest())

    def blob(self, repo, digest):
        answer = self.request("GET", f"/v2/{repo}/blobs/{digest}")
        if answer.status == 404:
            return None
        self._expect(answer, f"blob {repo}@{digest}", 200)
        return answer.body

    def tags(self, repo):
        answer = self.request("GET", f"/v2/{repo}/tags/list")
        if answer.status == 404:
            return None
        self._expect(answer, f"tags of {repo}", 200)
        return json.loads(answer.body)["tags"]

    def delete_blob(self, repo, digest):
        self._expect(self.request("DELETE", f"/v2/{repo}/blobs/{digest}"), f"DELETE blob {repo}@{digest}", 202)

    # -- real clients
    def _docker_env(self, credentials, directory, host):
        env = dict(os.environ, DOCKER_CONFIG=str(directory))
        env.pop("DOCKER_CONTEXT", None)
        if credentials:
            login = _run(["docker", "login", "-u", credentials[0], "--password-stdin", host],
                         check=False, input=credentials[1], env=env)
            if login.returncode:
                return env, login
        return env, None

    def push(self, engine_ref, repo_tag, credentials=None, check=True, host=None):
        credentials = credentials or self.admin
        host = host or self.host
        target = f"{host}/{repo_tag}"
        _run(["docker", "tag", engine_ref, target])
        with tempfile.TemporaryDirectory(prefix="docker-config-") as config:
            try:
                env, failed_login = self._docker_env(credentials, config, host)
                proc = failed_login or _run(["docker", "push", target], check=False, env=env)
            finally:
                tags = _run(["docker", "image", "inspect", "--format", "{{json .RepoTags}}", target]).stdout
                if len(json.loads(tags) or []) > 1:
                    _run(["docker", "rmi", target])
        if proc.returncode:
            if check:
                raise AssertionError(f"{self.label}: docker push {target} failed: {proc.stderr.strip()}")
            return Pushed(None, proc)
        return Pushed(re.search(r"digest: (sha256:[0-9a-f]{64})", proc.stdout)[1], proc)

    def pull(self, repo_tag, credentials=None, check=True, host=None):
        credentials = credentials or self.admin
        source = f"{host or self.host}/{repo_tag}"
        with tempfile.TemporaryDirectory(prefix="docker-config-") as config:
            env, failed_login = self._docker_env(credentials, config, host or self.host)
            proc = failed_login or _run(["docker", "pull", source], check=False, env=env)
        if check and proc.returncode:
            raise AssertionError(f"{self.label}: docker pull {source} failed: {proc.stderr.strip()}")
        return proc

    def skopeo_flags(self, prefix="", credentials=None):
        credentials = credentials or self.admin
        flags = [f"--{prefix}tls-verify=false"] if self.scheme == "http" else [f"--{prefix}cert-dir",
                                                                                 str(self.cert_dir)]
        flags += [f"--{prefix}creds", ":".join(credentials)] if credentials else [f"--{prefix}no-creds"]
        return flags

    def podman_flags(self, credentials=None):
        """podman has no --no-creds: without credentials it reads an empty auth file, never
        root's shared one."""
        credentials = credentials or self.admin
        if credentials:
            return self.skopeo_flags("", credentials)
        empty = self.dir / "no-credentials.json"
        empty.write_text('{"auths": {}}\n')
        return [*self.skopeo_flags("")[:-1], "--authfile", str(empty)]

    def skopeo_copy(self, src, dest, *extra, credentials=None, check=True, env=None):
        mine = tuple(f"docker://{host}/" for host in (self.host, *map(self.host_named, self.names)))
        flags = []
        for prefix, ref in (("src-", src), ("dest-", dest)):
            if ref.startswith(mine):
                flags += self.skopeo_flags(prefix, credentials)
        return _run(["skopeo", "copy", "-q", *flags, *extra, src, dest], check=check, env=env)

    def skopeo_inspect(self, repo_tag, *extra, credentials=None, host=None, env=None):
        proc = _run(["skopeo", "inspect", *self.skopeo_flags("", credentials), *extra,
                     f"docker://{host or self.host}/{repo_tag}"], env=env)
        return json.loads(proc.stdout)

    # -- files for the client under test
    def _auths(self, credentials, host, entries):
        if entries is None:
            credentials = credentials or self.credentials
            entries = {host or self.host: credentials} if credentials else {}
        return json.dumps(auths_document(entries), indent=1)

    def docker_config(self, directory, credentials=None, host=None, entries=None):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(self._auths(credentials, host, entries))
        return directory

    def auth_file(self, path, credentials=None, host=None, entries=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._auths(credentials, host, entries))
        return path

    def team_accounts(self, *teams):
        """For each team (a repository namespace, e.g. "team-a"): a user allowed to pull and push
        TEAM/* and nothing else (token kind; the policy's anonymous grants apply to all).
        Returns {team: (user, password)}."""
        if self.kind != "token":
            raise ValueError("per-repository accounts need the token kind (htpasswd grants everything)")
        accounts = {}
        for team in teams:
            user = f"{team}-{uuid.uuid4().hex[:6]}"
            accounts[team] = (user, self.token_server.add_user(user))
            self.token_server.grant(user, f"{team}/*", "pull", "push")
        return accounts


def auth_entry(value):
    """An auths entry: (user, password) -> {"auth": base64}; IdentityToken(user, token) -> what
    `docker login` writes for an identity token; a dict as is."""
    if isinstance(value, IdentityToken):
        return {"auth": base64.b64encode(f"{value.user}:".encode()).decode(), "identitytoken": value.token}
    if isinstance(value, dict):
        return value
    return {"auth": base64.b64encode(":".join(value).encode()).decode()}


def auths_document(entries):
    """{"auths": {key: auth_entry(value)}}: keys "HOST[:PORT]" (docker and containers) or
    "HOST[:PORT]/NAMESPACE[/...]" (containers' auth.json only; podman and skopeo match the
    longest prefix first)."""
    return {"auths": {key: auth_entry(value) for key, value in entries.items()}}


@dataclass
class IdentityToken:
    user: str
    token: str


def registry_or_skip(kind):
    import pytest

    try:
        return RegistryServer(kind).start()
    except Unavailable as why:
        pytest.skip(str(why))


# -- the blob proxy -----------------------------------------------------------------------

@dataclass
class Fault:
    kind: str  # "corrupt", "cut", "status", "upload_cut"
    match: Optional[str]
    times: Optional[int]
    after: int = 0
    status: int = 0
    offset: Optional[int] = None
    where: str = "storage"
    fired: int = 0

    def applies_to(self, target):
        return (self.times is None or self.fired < self.times) and (self.match is None or self.match in target)


@dataclass
class ProxyRequest:
    method: str
    path: str
    query: str
    headers: dict
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    redirected: bool = False


@dataclass
class StorageRequest:
    method: str
    path: str
    query: str
    headers: dict
    status: int = 0
    bytes_out: int = 0
    range: Optional[tuple] = None


class _Cut(Exception):
    """A fault ended the exchange: the connection is closed, nothing more to send."""


class _ProxyHandler(_Handler):
    upstream = None  # one connection to the registry per client connection

    def do_GET(self):
        proxy = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        record = ProxyRequest(self.command, url.path, url.query, redacted(self.headers))
        proxy.requests.append(record)
        proxy._note_secrets(self.headers)
        try:
            fault = proxy._fire("status", self.path, where="registry")
            if fault:
                self._discard_body(record)
                record.status = fault.status
                record.bytes_out = self.send_simple(fault.status, f"fault injected: {fault.status}\n")
                return
            if self.command == "GET" and proxy.tag_page_size and TAGS_PATH.match(url.path):
                self._tag_page(record, url, proxy.tag_page_size)
                return
            blob = BLOB_PATH.match(url.path) if self.command == "GET" else None
            if blob and self._exchange("HEAD", record, body=False, relay=False).status in (200, 206):
                record.redirected = True
                record.status = 307
                self.send_simple(307, headers=[("Location", proxy._storage_location(blob["name"], blob["digest"])),
                                               ("Docker-Distribution-Api-Version", "registry/2.0")])
                return
            self._exchange(self.command, record, body=True, relay=True)
        except _Cut:
            self.abort()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def finish(self):
        if self.upstream is not None:
            self.upstream.close()
        super().finish()

    def _connection(self):
        if self.upstream is None:
            registry = self.server.owner.registry
            if registry.ca:
                self.upstream = http.client.HTTPSConnection("127.0.0.1", registry.port, timeout=120,
                                                            context=registry.ca.client_context())
            else:
                self.upstream = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=120)
        return self.upstream

    def _discard_body(self, record):
        for piece in self._body_pieces():
            record.bytes_in += len(piece)

    def _exchange(self, method, record, body, relay):
        """Send this request to the registry as `method` (with the body when `body`); relay the
        answer to the client when `relay`. Returns the registry's response (read)."""
        proxy = self.server.owner
        connection = self._connection()
        chunked = body and "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            connection.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and (body or name.lower() != "content-length"):
                    connection.putheader(name, value)
            connection.putheader("X-Forwarded-Proto", proxy.scheme)
            if chunked:
                connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            if body:
                self._send_body(connection, record, chunked)
            response = connection.getresponse()
        except _Cut:
            connection.close()
            raise
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            record.status = 502
            self.send_simple(502, f"proxy: the registry did not answer: {error}\n")
            self.close_connection = True
            raise _Cut from error
        if not relay:
            response.read()
            return response
        self._relay(response, record)
        return response

    def _tag_page(self, record, url, size):
        """One page of the registry's whole tag list (see page_tags)."""
        connection = self._connection()
        connection.putrequest("GET", url.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        headers = [(name, value) for name, value in response.getheaders()
                   if name.lower() not in HOP_BY_HOP | {"content-length", "content-type"}]
        if response.status == 200:
            listed = json.loads(body)
            asked = urllib.parse.parse_qs(url.query)
            last = asked.get("last", [""])[0]
            wanted = min(size, int(asked["n"][0])) if "n" in asked else size
            rest = [tag for tag in sorted(listed["tags"] or []) if tag > last]
            page = rest[:wanted]
            body = json.dumps({"name": listed["name"], "tags": page}).encode()
            if len(rest) > wanted:
                following = urllib.parse.urlencode({"last": page[-1], "n": wanted})
                headers.append(("Link", f'<{url.path}?{following}>; rel="next"'))
        record.status = response.status
        record.bytes_out = self.send_simple(response.status, body, response.getheader("Content-Type") or "",
                                            headers)

    def _send_body(self, connection, record, chunked):
        fault = self.server.owner._armed("upload_cut", self.path)
        for piece in self._body_pieces():
            if fault and record.bytes_in + len(piece) >= fault.after and self.server.owner._take(fault):
                piece = piece[:fault.after - record.bytes_in]
                record.bytes_in += len(piece)
                connection.send(b"%x\r\n%s" % (len(piece), piece) if chunked and piece else piece)
                record.status = -1  # no answer: cut
                raise _Cut
            record.bytes_in += len(piece)
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            connection.send(b"0\r\n\r\n")

    def _relay(self, response, record):
        record.status = response.status
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD" or response.status in (204, 304):
            self.end_headers()
            response.read()
            return
        if response.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif response.length is None:
            self.send_header("Connection", "close")
        self.end_headers()
        while True:
            piece = response.read(PIECE)
            if not piece:
                break
            record.bytes_out += len(piece)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if response.chunked else piece)
        if response.chunked:
            self.wfile.write(b"0\r\n\r\n")


class _StorageHandler(_Handler):
    def do_GET(self):
        proxy = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        record = StorageRequest(self.command, url.path, url.query, redacted(self.headers))
        proxy.storage_requests.append(record)
        proxy._note_secrets(self.headers)
        match = STORAGE_PATH.match(url.path)
        path = match and proxy.registry.blob_path(match["digest"])
        if not path or not path.is_file():
            record.status = 404
            self.send_simple(404, "no such blob\n")
            return
        fault = proxy._fire("status", self.path)
        if fault:
            record.status = fault.status
            record.bytes_out = self.send_simple(fault.status, f"fault injected: {fault.status}\n")
            return
        size = path.stat().st_size
        first, last = 0, size - 1
        wanted = self.headers.get("Range")
        if wanted:
            parsed = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if parsed and parsed[1]:
                first, last = int(parsed[1]), min(int(parsed[2]) if parsed[2] else size - 1, size - 1)
            elif parsed and parsed[2]:  # the last N bytes
                first = max(size - int(parsed[2]), 0)
            if not parsed or first > last:
                record.status = 416
                self.send_simple(416, "range not satisfiable\n", headers=[("Content-Range", f"bytes */{size}")])
                return
            record.range = (first, last)
        record.status = 206 if wanted else 200
        self.send_response(record.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{match["digest"]}"')
        if wanted:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._send_bytes(proxy, path, first, last, size, record)

    do_HEAD = do_GET

    def _send_bytes(self, proxy, path, first, last, size, record):
        corrupt = proxy._armed("corrupt", self.path)
        flip = None
        if corrupt:
            flip = size // 2 if corrupt.offset is None else corrupt.offset
            if not (first <= flip <= last and proxy._take(corrupt)):
                flip = None
        cut = proxy._armed("cut", self.path)
        stop_at = last + 1
        if cut and first + cut.after < last + 1 and proxy._take(cut):
            stop_at = first + cut.after
        with open(path, "rb") as blob:
            position = first
            blob.seek(first)
            while position < stop_at:
                piece = bytearray(blob.read(min(PIECE, stop_at - position)))
                if flip is not None and position <= flip < position + len(piece):
                    piece[flip - position] ^= 0xFF
                self.wfile.write(piece)
                position += len(piece)
                record.bytes_out += len(piece)
        if stop_at <= last:
            self.abort()


class BlobProxy:
    """A registry's front door that redirects blob GETs and injects faults; see the module
    docstring."""

    def __init__(self, registry, name=None, storage_name=None):
        for wanted in (name, storage_name):
            if wanted and wanted not in registry.names:
                raise ValueError(f"{wanted!r} is not in the registry's certificate names {registry.names}")
        self.registry = registry
        self.name = name
        self.storage_name = storage_name
        self.requests = []
        self.storage_requests = []
        self.faults = []
        self.tag_page_size = None
        self.secret_hashes = set()  # sha256 of every secret header value (and its parts) received
        self.trusted = []
        self.lock = threading.Lock()
        self.server = self.storage = None

    def start(self):
        context = _server_context(self.registry.tls_cert, self.registry.tls_key) if self.registry.ca else None
        self.server = _Server(_ProxyHandler, self, context)
        self.storage = _Server(_StorageHandler, self, context)
        for name, host in ((self.name, self.host), (self.storage_name, self.storage_host)):
            if name:
                self.trusted += self.registry.trust(host)
        return self

    def stop(self):
        for server in (self.server, self.storage):
            if server is not None:
                server.stop()
        self.server = self.storage = None
        self.registry.untrust(self.trusted)
        self.trusted = []

    def __enter__(self):
        return self.start() if self.server is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- where it is
    scheme = property(lambda self: self.registry.scheme)
    ca_cert = property(lambda self: self.registry.ca_cert)
    cert_dir = property(lambda self: self.registry.cert_dir)
    port = property(lambda self: self.server.port)
    host = property(lambda self: f"{self.name or '127.0.0.1'}:{self.port}")
    url = property(lambda self: f"{self.scheme}://{self.host}")
    storage_host = property(lambda self: f"{self.storage_name or 'localhost'}:{self.storage.port}")
    storage_url = property(lambda self: f"{self.scheme}://{self.storage_host}")

    def _storage_location(self, name, digest):
        return f"{self.storage_url}/blobs/{digest}?{urllib.parse.urlencode({'repository': name})}"

    # -- logs
    def _note_secrets(self, headers):
        for name, value in headers.items():
            if name.lower() not in SECRET_HEADERS:
                continue
            parts = {value, value.partition(" ")[2]}
            if value.lower().startswith("basic "):
                with contextlib.suppress(ValueError):
                    decoded = base64.b64decode(value[6:], validate=True).decode()
                    parts |= {decoded, decoded.partition(":")[2]}
            with self.lock:
                self.secret_hashes |= {hashlib.sha256(part.encode()).hexdigest() for part in parts if part}

    def received(self, secret):
        """True when `secret` reached the proxy or its storage server: as a whole secret header
        value, a Bearer/Basic credential, a Basic password, or anywhere in a path, query or
        other header."""
        if hashlib.sha256(secret.encode()).hexdigest() in self.secret_hashes:
            return True
        return any(secret in record.path or secret in record.query or
                   any(secret in value for value in record.headers.values())
                   for record in [*self.requests, *self.storage_requests])

    def forget(self):
        self.requests.clear()
        self.storage_requests.clear()
        with self.lock:
            self.secret_hashes.clear()

    def bytes_uploaded(self):
        return sum(request.bytes_in for request in self.requests)

    def bytes_downloaded(self):
        return sum(r.bytes_out for r in self.requests) + sum(r.bytes_out for r in self.storage_requests)

    # -- faults
    def _arm(self, fault):
        with self.lock:
            self.faults.append(fault)
        return fault

    def corrupt(self, match=None, times=None, offset=None):
        return self._arm(Fault("corrupt", match, times, offset=offset))

    def cut(self, after, match=None, times=1):
        return self._arm(Fault("cut", match, times, after=after))

    def fail(self, status, match=None, times=None, where="storage"):
        if where not in ("storage", "registry"):
            raise ValueError(f"where={where!r}: 'storage' or 'registry'")
        return self._arm(Fault("status", match, times, status=status, where=where))

    def cut_upload(self, after, match=None, times=1):
        return self._arm(Fault("upload_cut", match, times, after=after))

    def clear_faults(self):
        with self.lock:
            self.faults.clear()

    def page_tags(self, size):
        self.tag_page_size = size

    def _armed(self, kind, target, where="storage"):
        """The first fault of `kind` that may act on this request (not counted yet)."""
        with self.lock:
            return next((f for f in self.faults if f.kind == kind and f.where == where and f.applies_to(target)),
                        None)

    def _take(self, fault):
        """Count the fault as acting now, unless its times ran out meanwhile."""
        with self.lock:
            if fault.times is not None and fault.fired >= fault.times:
                return False
            fault.fired += 1
            return True

    def _fire(self, kind, target, where="storage"):
        fault = self._armed(kind, target, where)
        return fault if fault and self._take(fault) else None


# -- a multi-platform index ------------------------------------------------------------

@dataclass
class PlatformIndex:
    registry: RegistryServer
    repo: str
    tag: str
    digest: str
    media_type: str
    manifests: dict = field(default_factory=dict)  # "os/arch" -> manifest digest
    native: str = ""
    foreign: str = ""

    @property
    def repo_tag(self):
        return f"{self.repo}:{self.tag}"


def push_platform_index(registry, repo_tag, rootfs, workdir, manifest_format="oci"):
    """See the module docstring."""
    if not shutil.which("podman"):
        raise Unavailable("podman not installed (Debian package podman)")
    workdir = Path(workdir)
    env = podman_env(workdir / "podman")

    def podman(*args):
        return _run(["podman", *args], env=env)

    native_arch = podman("info", "--format", "{{.Host.Arch}}").stdout.strip()
    foreign_arch = "amd64" if native_arch == "arm64" else "arm64"
    local_name = f"localhost/docker-dir-index-{uuid.uuid4().hex[:12]}"
    images = []
    try:
        for arch in (native_arch, foreign_arch):
            marker = workdir / f"marker-{arch}"
            marker.mkdir()
            (marker / "platform").write_text(f"linux/{arch}\n")
            tar = workdir / f"{arch}.tar"
            _run(["tar", "-C", rootfs, "-cf", tar, ".", "-C", marker, "platform"])
            podman("import", "-q", "--os", "linux", "--arch", arch, "--change", "ENV PATH=/bin",
                   "--change", 'CMD ["sh"]', tar, f"{local_name}:{arch}")
            images.append(f"{local_name}:{arch}")
        podman("manifest", "create", f"{local_name}:list")
        images.append(f"{local_name}:list")
        for arch in (native_arch, foreign_arch):
            podman("manifest", "add", "--os", "linux", "--arch", arch, f"{local_name}:list",
                   f"containers-storage:{local_name}:{arch}")
        digest_file = workdir / "index.digest"
        podman("manifest", "push", "--all", "-q", "--format", manifest_format, "--digestfile", digest_file,
               *registry.podman_flags(), f"{local_name}:list", f"docker://{registry.host}/{repo_tag}")
    finally:
        # podman 4.3's `rmi LIST` removes the list's native image, not the list
        if f"{local_name}:list" in images:
            _run(["podman", "manifest", "rm", images.pop()], check=False, env=env)
        for image in images:
            _run(["podman", "rmi", "-f", image], check=False, env=env)
    repo, tag = repo_tag.rsplit(":", 1)
    index = registry.manifest(repo, tag)
    if index is None or index.digest != digest_file.read_text().strip():
        raise AssertionError(f"{registry.label}: the index podman pushed to {repo_tag} is not there")
    manifests = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
                 for m in index.json["manifests"]}
    return PlatformIndex(registry, repo, tag, index.digest, index.media_type, manifests,
                         f"linux/{native_arch}", f"linux/{foreign_arch}")
