"""The registry fixtures of tests/registry.py work with real clients (docker, skopeo, podman,
urllib), so a later registry test that fails fails because of its subject, not its fixture."""
import base64
import hashlib
import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import pytest

import registry as registry_module
from conftest import docker, image_id_of

KIND_FIXTURES = ("registry_anon", "registry_tls", "registry_token")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def basic(credentials):
    return {"Authorization": "Basic " + base64.b64encode(":".join(credentials).encode()).decode()}


def connect(registry, port):
    """A raw HTTP(S) connection to 127.0.0.1:port: no redirects followed, nothing added."""
    if registry.ca:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=registry.ca.client_context())
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def get(registry, url, headers=None):
    """GET an absolute URL (a redirect's Location) -> (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    connection = connect(registry, parts.port)
    connection.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
    response = connection.getresponse()
    return response.status, response, response.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", KIND_FIXTURES)
def test_docker_push_pull_and_skopeo(kind, request, fresh_image, tmp_path):
    registry = request.getfixturevalue(kind)
    image = fresh_image(f"fixture/push:{uuid.uuid4().hex[:8]}")
    repo = unique("smoke/round-trip")

    pushed = registry.push(image, f"{repo}:1")

    manifest = registry.manifest(repo, "1")
    assert manifest.digest == pushed.digest
    assert manifest.json["config"]["digest"] == image
    assert registry.tags(repo) == ["1"]
    assert registry.blob(repo, image) is not None
    docker("rmi", "-f", image)
    assert image_id_of(image) is None
    # the files a client under test gets its credentials from: docker's and containers'
    docker("pull", f"{registry.host}/{repo}:1", env=dict(os.environ, DOCKER_CONFIG=str(
        registry.docker_config(tmp_path / "docker"))))
    assert image_id_of(f"{registry.host}/{repo}:1") == image
    assert registry.skopeo_inspect(f"{repo}:1")["Digest"] == pushed.digest
    tls = ["--tls-verify=false"] if registry.scheme == "http" else ["--cert-dir", str(registry.cert_dir)]
    inspected = subprocess.run(["skopeo", "inspect", "--authfile", str(registry.auth_file(tmp_path / "auth.json")),
                                *tls, f"docker://{registry.host}/{repo}:1"], capture_output=True, text=True)
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["Digest"] == pushed.digest, inspected.stderr
    registry.skopeo_copy(f"docker://{registry.host}/{repo}:1", f"dir:{tmp_path / 'copy'}")
    assert (tmp_path / "copy" / "manifest.json").read_bytes() == manifest.raw


def test_tls_registry_needs_the_ca_and_the_password(registry_tls, fresh_image):
    anonymous = registry_tls.request("GET", "/v2/", authorize=False)
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    untrusted = subprocess.run(["skopeo", "inspect", "--creds", ":".join(registry_tls.credentials),
                                f"docker://{registry_tls.host}/anything:1"], capture_output=True, text=True)
    assert untrusted.returncode and "x509: certificate signed by unknown authority" in untrusted.stderr
    image = fresh_image(f"fixture/tls:{uuid.uuid4().hex[:8]}")
    refused = registry_tls.push(image, f"{unique('smoke/wrong-password')}:1", credentials=("alice", "wrong"),
                                check=False)
    assert refused.digest is None and "401 Unauthorized" in refused.proc.stderr


def test_token_server_grants_per_scope(registry_token):
    server = registry_token.token_server
    base = f"{server.url}?service=docker-dir-test-registry"

    def token(query, credentials=None):
        status, _, body = get(registry_token, f"{base}&{query}", basic(credentials) if credentials else None)
        if status != 200:
            return status, None
        jwt = json.loads(body)["token"]
        header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                          for part in jwt.split(".")[:2])
        assert header["alg"] == "RS256" and header["x5c"]
        return status, claims["access"]

    status, access = token("scope=repository:alice/a:pull,push&scope=repository:bob/b:pull,push",
                           registry_token.credentials)
    assert status == 200 and access == [
        {"type": "repository", "name": "alice/a", "actions": ["pull", "push"]},
        {"type": "repository", "name": "bob/b", "actions": ["pull"]}]
    assert token("scope=repository:public/p:pull,push&scope=repository:alice/a:pull")[1] == [
        {"type": "repository", "name": "public/p", "actions": ["pull"]},
        {"type": "repository", "name": "alice/a", "actions": []}]
    assert token("scope=repository:alice/a:pull", ("alice", "wrong")) == (401, None)
    assert server.requests[-1].user == "alice" and server.requests[-1].status == 401


def test_token_registry_refuses_a_push_outside_the_grant(registry_token, fresh_image):
    image = fresh_image(f"fixture/grant:{uuid.uuid4().hex[:8]}")
    foreign, own = unique("someone-else/app"), unique("alice/app")

    refused = registry_token.push(image, f"{foreign}:1", credentials=registry_token.credentials, check=False)

    assert refused.digest is None
    assert "denied: requested access to the resource is denied" in refused.proc.stderr
    asked = [r for r in registry_token.token_server.requests if any(foreign in scope for scope in r.scopes)]
    assert asked and all(r.user == "alice" and r.access[0]["actions"] == ["pull"] for r in asked)
    assert registry_token.tags(foreign) is None
    # the same user, the same image, a repository the grant covers
    assert registry_token.push(image, f"{own}:1", credentials=registry_token.credentials).digest


def test_token_registry_anonymous_access_follows_the_policy(registry_token, fresh_image, tmp_path):
    image = fresh_image(f"fixture/anon:{uuid.uuid4().hex[:8]}")
    private, public = unique("private/app"), unique("public/app")
    registry_token.push(image, f"{private}:1")
    registry_token.push(image, f"{public}:1")
    anonymous = ("--no-creds", "--cert-dir", str(registry_token.cert_dir))

    listed = subprocess.run(["skopeo", "inspect", *anonymous, f"docker://{registry_token.host}/{public}:1"],
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    refused = subprocess.run(["skopeo", "inspect", *anonymous, f"docker://{registry_token.host}/{private}:1"],
                             capture_output=True, text=True)
    assert refused.returncode and "denied: requested access to the resource is denied" in refused.stderr
    pull = subprocess.run(["docker", "pull", f"{registry_token.host}/{private}:1"], capture_output=True, text=True,
                          env=dict(os.environ, DOCKER_CONFIG=str(tmp_path)))
    assert pull.returncode and "pull access denied" in pull.stderr

    challenge = registry_token.request("GET", f"/v2/{private}/manifests/1", authorize=False)
    assert challenge.status == 401
    assert challenge.headers["WWW-Authenticate"] == (
        f'Bearer realm="{registry_token.token_server.url}",service="docker-dir-test-registry",'
        f'scope="repository:{private}:pull"')
    pull_only = registry_token.token_server.issue("alice", [{"type": "repository", "name": private,
                                                             "actions": ["pull"]}])
    short = registry_token.request("PUT", f"/v2/{private}/manifests/2", data=b"{}", authorize=False,
                                   headers={"Authorization": f"Bearer {pull_only}"})
    assert short.status == 401 and 'error="insufficient_scope"' in short.headers["WWW-Authenticate"]


# -- BlobProxy -----------------------------------------------------------------------------

def test_docker_push_and_pull_through_the_proxy(registry_token, blob_proxy, fresh_image):
    proxy = blob_proxy(registry_token)
    image = fresh_image(f"fixture/proxy:{uuid.uuid4().hex[:8]}")
    repo = unique("smoke/proxy")

    pushed = registry_token.push(image, f"{repo}:1", host=proxy.host)

    manifest = registry_token.manifest(repo, "1")
    assert manifest.digest == pushed.digest
    layers = {layer["digest"]: layer["size"] for layer in manifest.json["layers"]}
    sequence = [(r.method, r.status) for r in proxy.requests if "/blobs/" in r.path]
    assert sequence.count(("POST", 202)) == sequence.count(("PATCH", 202)) == sequence.count(("PUT", 201)) >= 1
    assert ("HEAD", 200) in sequence, sequence  # docker checks what it uploaded
    assert sum(r.bytes_in for r in proxy.requests if r.method == "PATCH") >= sum(layers.values())
    assert ("PUT", 201) in [(r.method, r.status) for r in proxy.requests if "/manifests/" in r.path]

    docker("rmi", "-f", image)
    proxy.forget()
    registry_token.pull(f"{repo}:1", host=proxy.host)

    assert image_id_of(f"{proxy.host}/{repo}:1") == image
    redirected = {r.path.rsplit("/", 1)[1] for r in proxy.requests if r.redirected}
    assert redirected == {*layers, image}
    served = [r for r in proxy.storage_requests if r.method == "GET"]
    assert {r.path.rsplit("/", 1)[1] for r in served} == redirected
    assert all(r.status == 200 and "authorization" not in r.headers for r in served), served
    assert any("authorization" in r.headers for r in proxy.requests if r.redirected)
    assert sum(r.bytes_out for r in served if r.path.endswith(tuple(layers))) == sum(layers.values())


@pytest.fixture
def tls_blob(registry_tls, blob_proxy, fresh_image):
    """(proxy, repo, digest, bytes) of a pushed layer, behind a BlobProxy."""
    repo = unique("smoke/faults")
    registry_tls.push(fresh_image(f"fixture/faults:{uuid.uuid4().hex[:8]}"), f"{repo}:1")
    digest = registry_tls.manifest(repo, "1").json["layers"][0]["digest"]
    return blob_proxy(registry_tls), repo, digest, registry_tls.blob(repo, digest)


def redirect_of(proxy, repo, digest):
    status, response, _ = get(proxy.registry, f"{proxy.url}/v2/{repo}/blobs/{digest}",
                              basic(proxy.registry.credentials))
    assert status == 307, status
    return response.getheader("Location")


def test_proxy_redirects_blob_gets_to_another_host(tls_blob):
    proxy, repo, digest, data = tls_blob

    location = redirect_of(proxy, repo, digest)

    assert urllib.parse.urlsplit(location).netloc == proxy.storage_host
    assert proxy.storage_host.startswith("localhost:") and proxy.host.startswith("127.0.0.1:")
    status, _, body = get(proxy.registry, location)
    assert status == 200 and sha256(body) == digest and body == data
    assert "authorization" not in proxy.storage_requests[-1].headers
    status, response, tail = get(proxy.registry, location, {"Range": "bytes=10-"})
    assert status == 206 and tail == data[10:]
    assert response.getheader("Content-Range") == f"bytes 10-{len(data) - 1}/{len(data)}"
    unauthorized, _, _ = get(proxy.registry, f"{proxy.url}/v2/{repo}/blobs/{digest}")
    assert unauthorized == 401  # the proxy redirects only what the registry would serve


def test_proxy_faults_are_observable(tls_blob):
    proxy, repo, digest, data = tls_blob
    location = redirect_of(proxy, repo, digest)

    corrupt = proxy.corrupt(digest, times=1)
    status, _, body = get(proxy.registry, location)
    assert status == 200 and len(body) == len(data) and sha256(body) != digest and corrupt.fired == 1
    assert get(proxy.registry, location)[2] == data

    cut = proxy.cut(1000, digest, times=1)
    with pytest.raises(http.client.IncompleteRead) as short:
        get(proxy.registry, location)
    assert short.value.partial == data[:1000] and cut.fired == 1
    status, _, rest = get(proxy.registry, location, {"Range": "bytes=1000-"})
    assert status == 206 and short.value.partial + rest == data and cut.fired == 1

    failing = proxy.fail(503, digest, times=1)
    assert get(proxy.registry, location)[0] == 503
    assert get(proxy.registry, location)[0] == 200 and failing.fired == 1
    proxy.fail(500, f"/v2/{repo}/manifests/", where="registry")
    assert get(proxy.registry, f"{proxy.url}/v2/{repo}/manifests/1", basic(proxy.registry.credentials))[0] == 500


def test_proxy_cuts_an_upload(tls_blob):
    proxy, repo, _, _ = tls_blob
    registry = proxy.registry
    body = os.urandom(200_000)

    def upload(connection):
        connection.request("POST", f"/v2/{repo}/blobs/uploads/", headers=basic(registry.credentials))
        started = connection.getresponse()
        started.read()
        assert started.status == 202
        connection.request("PATCH", started.getheader("Location"), body=body,
                           headers={**basic(registry.credentials), "Content-Type": "application/octet-stream"})
        patched = connection.getresponse()
        patched.read()
        connection.request("PUT", f"{patched.getheader('Location')}&digest={sha256(body)}",
                           headers={**basic(registry.credentials), "Content-Length": "0"})
        return connection.getresponse()

    fault = proxy.cut_upload(50_000, times=1)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        upload(connect(registry, proxy.port))
    assert fault.fired == 1
    assert [r.bytes_in for r in proxy.requests if r.method == "PATCH"] == [50_000]
    assert registry.blob(repo, sha256(body)) is None

    assert upload(connect(registry, proxy.port)).status == 201
    assert registry.blob(repo, sha256(body)) == body and fault.fired == 1


def test_deleted_blob_is_gone(tls_blob):
    proxy, repo, digest, _ = tls_blob
    proxy.registry.delete_blob(repo, digest)
    assert proxy.registry.blob(repo, digest) is None
    status, _, _ = get(proxy.registry, f"{proxy.url}/v2/{repo}/blobs/{digest}", basic(proxy.registry.credentials))
    assert status == 404


# -- the multi-platform index -----------------------------------------------------------

def test_platform_index_has_both_platforms(platform_index):
    registry, index = platform_index.registry, platform_index

    served = registry.manifest(index.repo, index.tag)

    assert served.digest == index.digest
    assert served.media_type == "application/vnd.oci.image.index.v1+json"
    assert set(index.manifests) == {index.native, index.foreign} and index.native != index.foreign
    configs = {}
    for platform, digest in index.manifests.items():
        configs[platform] = registry.manifest(index.repo, digest).json["config"]["digest"]
        config = json.loads(registry.blob(index.repo, configs[platform]))
        assert f"{config['os']}/{config['architecture']}" == platform
    raw = registry.skopeo_inspect(index.repo_tag, "--raw")
    assert {m["digest"] for m in raw["manifests"]} == set(index.manifests.values())
    # docker picks this host's platform from the index
    try:
        registry.pull(index.repo_tag)
        assert image_id_of(f"{registry.host}/{index.repo_tag}") == configs[index.native]
    finally:
        docker("rmi", "-f", configs[index.native], check=False)


# -- what the fixtures below need on a provisioned machine ------------------------------------

def test_fixture_tools_are_installed():
    """tests/provision.sh installs them; without one, the proxy and login fixtures would fail
    later and less clearly."""
    from proxy import NCSA_AUTH

    missing = [tool for tool in ("squid", "docker-registry", "htpasswd", "skopeo", "podman", "getent")
               if not shutil.which(tool)]
    assert not missing and os.access(NCSA_AUTH, os.X_OK), (missing, NCSA_AUTH)


# -- squid (tests/proxy.py) ---------------------------------------------------------------------

def tunnel(proxy_port, host, ca, headers=None):
    """GET /v2/ on HOST (NAME:PORT) through a CONNECT tunnel of the proxy, TLS verified against
    the name -> the HTTP status; OSError("Tunnel connection failed: 407 ...") when refused."""
    name, port = host.rsplit(":", 1)
    connection = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=60, context=ca.client_context())
    connection.set_tunnel(name, int(port), headers=headers)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status
    finally:
        connection.close()


def proxy_authorization(user, password):
    return {"Proxy-Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def skopeo(*args, env):
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env, timeout=120)


def test_test_names_resolve_only_through_the_proxy(shared_squid, registry_named_tls):
    from proxy import REGISTRY_NAME

    proxy, registry = shared_squid, registry_named_tls
    proxy.forget()

    assert subprocess.run(["getent", "hosts", REGISTRY_NAME], capture_output=True).returncode == 2  # not found
    with pytest.raises(socket.gaierror):
        socket.create_connection((REGISTRY_NAME, registry.port), timeout=10)
    assert proxy.requests(settle=0) == []

    assert tunnel(proxy.port, registry.host_named(), registry.ca) == 401  # the registry's Basic challenge

    (connect,) = proxy.requests()
    assert (connect.method, connect.host, connect.port, connect.status) == ("CONNECT", REGISTRY_NAME, registry.port,
                                                                            200)
    assert connect.server == f"127.0.0.1:{registry.port}" and connect.user is None
    assert proxy.reached() == {registry.host_named()}
    proxy.forget()
    assert proxy.requests() == []


def test_proxy_authentication(squid_proxy, registry_named_tls):
    user, password = "proxy-user", "pa:ss@w/rd%"
    proxy = squid_proxy(users={user: password})
    registry = registry_named_tls

    for headers in (None, proxy_authorization(user, "wrong")):
        with pytest.raises(OSError, match="407"):
            tunnel(proxy.port, registry.host_named(), registry.ca, headers)
    assert tunnel(proxy.port, registry.host_named(), registry.ca, proxy_authorization(user, password)) == 401
    assert [(r.method, r.status, r.user) for r in proxy.requests()] == [
        ("CONNECT", 407, None), ("CONNECT", 407, user), ("CONNECT", 200, user)]

    # a real client takes the credentials from the proxy URL (percent-encoded there)
    assert urllib.parse.urlsplit(proxy.authenticated_url).password == urllib.parse.quote(password, safe="")
    target = ["inspect", "--raw", *registry.skopeo_flags(), f"docker://{registry.host_named()}/none/such:1"]
    denied = skopeo(*target, env=proxy.env())
    assert denied.returncode and "Proxy Authentication Required" in denied.stderr, denied.stderr
    proxy.forget()
    through = skopeo(*target, env=proxy.env(proxy.authenticated_url))
    assert "manifest unknown" in through.stderr, through.stderr  # the registry answered
    assert {(r.status, r.user) for r in proxy.requests()} == {(200, user)}
    assert password not in through.stderr + denied.stderr


def test_refusing_proxy(squid_proxy, registry_named_tls):
    proxy = squid_proxy(refuse=True)
    registry = registry_named_tls

    with pytest.raises(OSError, match="403"):
        tunnel(proxy.port, registry.host_named(), registry.ca)
    refused = skopeo("inspect", "--raw", *registry.skopeo_flags(), f"docker://{registry.host_named()}/any/thing:1",
                     env=proxy.env())
    assert refused.returncode and "Forbidden" in refused.stderr, refused.stderr
    assert {(r.method, r.status, r.result) for r in proxy.requests()} == {("CONNECT", 403, "TCP_DENIED/HIER_NONE")}
    assert proxy.reached() == set()


def test_dead_and_silent_proxies():
    from proxy import proxy_env, refused_proxy, silent_proxy

    with refused_proxy() as url:
        port = urllib.parse.urlsplit(url).port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)
        failed = skopeo("inspect", "--raw", "docker://reg.proxytest:1/any/thing:1",
                        env=proxy_env(HTTPS_PROXY=url))
        assert failed.returncode and "connection refused" in failed.stderr, failed.stderr
    with silent_proxy() as url, socket.create_connection(("127.0.0.1", urllib.parse.urlsplit(url).port),
                                                          timeout=10) as sock:
        sock.sendall(b"CONNECT reg.proxytest:443 HTTP/1.1\r\nHost: reg.proxytest:443\r\n\r\n")
        sock.settimeout(1)
        with pytest.raises(socket.timeout):
            sock.recv(1)  # connected, and no answer ever comes


def test_squid_stops_cleanly_and_fails_loudly(monkeypatch):
    import proxy as proxy_module
    from procs import alive

    with proxy_module.SquidProxy() as proxy:
        pid, directory, port = proxy.pid, proxy.dir, proxy.port
        assert alive(pid) and directory.is_dir()
        assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("proxy").pw_uid  # it dropped root
    assert not alive(pid) and not directory.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)
    proxy.stop()  # twice is fine

    class Bungled(proxy_module.SquidProxy):
        def _write_config(self):
            super()._write_config()
            with open(self.dir / "squid.conf", "a") as conf:
                conf.write("http_access allow no_such_acl\n")

    with pytest.raises(RuntimeError, match="(?s)squid exited.*no_such_acl"):
        Bungled().start()
    monkeypatch.setattr(proxy_module.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match="squid is not installed .Debian package squid"):
        proxy_module.SquidProxy().start()


# -- registries by name, through the proxy ------------------------------------------------------

def test_skopeo_reaches_the_token_registry_and_its_realm_only_through_the_proxy(shared_squid, registry_named_token,
                                                                                 fresh_image, tmp_path):
    from proxy import AUTH_NAME, REGISTRY_NAME, proxy_env

    registry, proxy = registry_named_token, shared_squid
    proxy.forget()
    realm = registry.token_server.url
    assert realm == f"https://{AUTH_NAME}:{registry.token_server.port}/token"
    challenge = registry.request("GET", "/v2/", authorize=False).headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{realm}"')
    for host in (registry.host_named(), f"{AUTH_NAME}:{registry.token_server.port}"):
        for base in ("/etc/docker/certs.d", "/etc/containers/certs.d"):
            assert (Path(base) / host / "ca.crt").read_bytes() == registry.ca_cert.read_bytes()
    ref = f"fixture/named:{uuid.uuid4().hex[:8]}"
    fresh_image(ref)
    repo = unique("smoke/named")
    source = f"docker://{registry.host_named()}/{repo}:1"

    registry.skopeo_copy(f"docker-daemon:{ref}", source, env=proxy.env())  # a push through the proxy

    stored = registry.manifest(repo, "1")
    assert stored is not None
    assert proxy.reached() == {registry.host_named(), f"{AUTH_NAME}:{registry.token_server.port}"}
    # no --cert-dir: the CA comes from certs.d, as for any client under test
    credentials = ["--creds", ":".join(registry.credentials)]
    for env in (proxy.env(), proxy_env(https_proxy=proxy.url)):
        proxy.forget()
        inspected = skopeo("inspect", *credentials, source, env=env)
        assert inspected.returncode == 0, inspected.stderr
        assert json.loads(inspected.stdout)["Digest"] == stored.digest
        assert {r.method for r in proxy.requests()} == {"CONNECT"}
        assert proxy.reached() == {registry.host_named(), f"{AUTH_NAME}:{registry.token_server.port}"}
    copied = skopeo("copy", "-q", "--src-creds", ":".join(registry.credentials), source, f"dir:{tmp_path / 'copy'}",
                    env=proxy.env())
    assert copied.returncode == 0 and (tmp_path / "copy" / "manifest.json").read_bytes() == stored.raw, copied.stderr
    assert registry.token_server.requests[-1].user == registry.username

    proxy.forget()
    bypassed = skopeo("inspect", *credentials, source, env=proxy.env(no_proxy=REGISTRY_NAME))
    assert bypassed.returncode and f"lookup {REGISTRY_NAME}" in bypassed.stderr, bypassed.stderr
    assert "no such host" in bypassed.stderr and proxy.requests() == []


def test_plain_http_registry_through_the_proxy(shared_squid, registry_named_anon, fresh_image):
    from proxy import proxy_env

    registry, proxy = registry_named_anon, shared_squid
    repo = unique("smoke/named-http")
    registry.push(fresh_image(f"fixture/named-http:{uuid.uuid4().hex[:8]}"), f"{repo}:1")
    inspect = ["inspect", "--raw", "--tls-verify=false", f"docker://{registry.host_named()}/{repo}:1"]
    proxy.forget()

    assert skopeo(*inspect, env=proxy_env(HTTP_PROXY=proxy.url)).returncode == 0

    asked = proxy.requests()
    assert [(r.method, r.url, r.status) for r in asked][-1] == (
        "GET", f"http://{registry.host_named()}/v2/{repo}/manifests/1", 200)
    assert {r.method for r in asked} == {"GET"} and proxy.reached() == {registry.host_named()}
    # Go's proxy settings have no ALL_PROXY: skopeo goes direct and cannot resolve the name
    proxy.forget()
    direct = skopeo(*inspect, env=proxy_env(ALL_PROXY=proxy.url))
    assert direct.returncode and "no such host" in direct.stderr and proxy.requests() == []


def test_blob_proxy_by_name_behind_squid(shared_squid, registry_named_tls, blob_proxy, fresh_image, tmp_path):
    from proxy import REGISTRY_NAME, STORAGE_NAME

    registry, squid = registry_named_tls, shared_squid
    squid.forget()
    repo = unique("smoke/named-blobs")
    registry.push(fresh_image(f"fixture/named-blobs:{uuid.uuid4().hex[:8]}"), f"{repo}:1")
    front = blob_proxy(registry, name=REGISTRY_NAME, storage_name=STORAGE_NAME)
    assert front.host.startswith(f"{REGISTRY_NAME}:") and front.storage_host.startswith(f"{STORAGE_NAME}:")

    copied = skopeo("copy", "-q", "--src-creds", ":".join(registry.credentials), f"docker://{front.host}/{repo}:1",
                    f"dir:{tmp_path / 'copy'}", env=squid.env())

    assert copied.returncode == 0, copied.stderr
    assert squid.reached() == {front.host, front.storage_host}
    assert front.storage_requests and all(r.status == 200 for r in front.storage_requests)
    # what the registry side received, checked without keeping secrets in the log
    assert front.received(registry.password) and not front.received("not-the-password")
    assert "basic <redacted>" in {r.headers.get("authorization", "").lower() for r in front.requests}
    trusted = [Path(base) / host for base in ("/etc/docker/certs.d", "/etc/containers/certs.d")
               for host in (front.host, front.storage_host)]
    assert all((directory / "ca.crt").exists() for directory in trusted)
    front.stop()
    assert not any(directory.exists() for directory in trusted)


# -- identity tokens (OAuth2 on the token server) -------------------------------------------------

def oauth(server, form, content_type="application/x-www-form-urlencoded"):
    """POST the form to the realm -> (status, JSON answer)."""
    parts = urllib.parse.urlsplit(server.direct_url)
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, timeout=60,
                                             context=server.ca.client_context())
    connection.request("POST", parts.path, body=urllib.parse.urlencode(form),
                       headers={"Content-Type": content_type})
    response = connection.getresponse()
    body = response.read()
    return response.status, json.loads(body) if body.startswith(b"{") else body


def claims_of(jwt):
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_oauth_password_and_refresh_token_grants(registry_identity):
    server = registry_identity.token_server
    user, password = registry_identity.credentials
    base = {"service": "docker-dir-test-registry", "client_id": "docker-dir-fixture-test"}
    start = len(server.requests)

    status, answer = oauth(server, {**base, "grant_type": "password", "username": user, "password": password,
                                    "access_type": "offline", "scope": "repository:alice/a:pull,push"})

    assert status == 200 and "token" not in answer  # OAuth2 answers name it access_token only
    refresh = answer["refresh_token"]
    assert answer["scope"] == "repository:alice/a:pull,push" and answer["expires_in"] >= 60
    assert claims_of(answer["access_token"])["access"] == [{"type": "repository", "name": "alice/a",
                                                            "actions": ["pull", "push"]}]
    assert refresh in server.issued_refresh_tokens

    status, answer = oauth(server, {**base, "grant_type": "refresh_token", "refresh_token": refresh,
                                    "scope": "repository:bob/b:pull,push repository:alice/a:push"})
    assert status == 200 and answer["refresh_token"] == refresh  # the spec: the same one, not a new one
    assert claims_of(answer["access_token"])["sub"] == user
    assert claims_of(answer["access_token"])["access"] == [
        {"type": "repository", "name": "bob/b", "actions": ["pull"]},
        {"type": "repository", "name": "alice/a", "actions": ["push"]}]
    assert answer["scope"] == "repository:bob/b:pull repository:alice/a:push"

    refused = [
        ({**base, "grant_type": "password", "username": user, "password": "wrong"}, "invalid_grant"),
        ({**base, "grant_type": "refresh_token", "refresh_token": "no-such-token"}, "invalid_grant"),
        ({**base, "grant_type": "refresh_token", "refresh_token": refresh, "service": "other"}, "invalid_request"),
        ({**base, "grant_type": "refresh_token"}, "invalid_request"),
        ({"service": base["service"], "grant_type": "refresh_token", "refresh_token": refresh}, "invalid_request"),
        ({**base, "grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
    ]
    for form, error in refused:
        assert oauth(server, form)[1]["error"] == error, form
    assert oauth(server, {**base, "grant_type": "refresh_token", "refresh_token": refresh},
                 content_type="application/json")[1]["error"] == "invalid_request"

    server.revoke_refresh_token(refresh)
    assert oauth(server, {**base, "grant_type": "refresh_token", "refresh_token": refresh}) == (
        400, {"error": "invalid_grant", "error_description": "unknown or revoked refresh token"})

    records = server.requests[start:]
    assert [(r.method, r.grant_type, r.user, r.status, r.error) for r in records[:3]] == [
        ("POST", "password", user, 200, None), ("POST", "refresh_token", user, 200, None),
        ("POST", "password", user, 400, "invalid_grant")]
    assert records[0].offline and records[0].issued == records[1].presented == server.fingerprint(refresh)
    assert records[1].scopes == ["repository:bob/b:pull,push", "repository:alice/a:push"]
    assert records[-1].presented == server.fingerprint(refresh) and records[-1].error == "invalid_grant"
    assert refresh not in repr(server.requests) and password not in repr(server.requests)


def test_oauth_rotation_and_servers_without_oauth(registry_identity, registry_token):
    server = registry_identity.token_server
    base = {"service": "docker-dir-test-registry", "client_id": "docker-dir-fixture-test",
            "grant_type": "refresh_token"}
    first = server.identity_token("alice")
    server.rotate_refresh_tokens = True
    try:
        status, answer = oauth(server, {**base, "refresh_token": first})
        assert status == 200 and answer["refresh_token"] != first
        assert oauth(server, {**base, "refresh_token": first})[1]["error"] == "invalid_grant"
        assert oauth(server, {**base, "refresh_token": answer["refresh_token"]})[0] == 200
    finally:
        server.rotate_refresh_tokens = False
    server.oauth = False
    try:
        assert oauth(server, {**base, "refresh_token": answer["refresh_token"]})[0] == 404
    finally:
        server.oauth = True
    # GET: a refresh token only for an authenticated offline request
    offline = f"{server.direct_url}?service=docker-dir-test-registry&offline_token=true"
    anonymous = get(registry_identity, offline)
    assert anonymous[0] == 200 and "refresh_token" not in json.loads(anonymous[2])
    assert "refresh_token" in json.loads(get(registry_identity, offline, basic(registry_identity.credentials))[2])

    # by default no refresh token is handed out; one made by identity_token() still works
    default = registry_token.token_server
    offline = f"{default.direct_url}?service=docker-dir-test-registry&offline_token=true"
    assert "refresh_token" not in json.loads(get(registry_token, offline, basic(registry_token.credentials))[2])
    user, password = registry_token.credentials
    status, answer = oauth(default, {**base, "grant_type": "password", "username": user, "password": password,
                                     "access_type": "offline"})
    assert status == 200 and "refresh_token" not in answer
    assert oauth(default, {**base, "refresh_token": default.identity_token(user)})[0] == 200


def test_docker_login_stores_an_identity_token_that_docker_pull_exchanges(registry_identity, registry_token,
                                                                          blob_proxy, fresh_image, tmp_path):
    registry, server = registry_identity, registry_identity.token_server
    image = fresh_image(f"fixture/identity:{uuid.uuid4().hex[:8]}")
    repo = unique("smoke/identity")
    registry.push(image, f"{repo}:1")
    front = blob_proxy(registry)  # sees every request docker sends the registry
    env = dict(os.environ, DOCKER_CONFIG=str(tmp_path))
    start = len(server.requests)

    docker("login", "-u", registry.username, "--password-stdin", front.host, input=registry.password, env=env)

    entry = json.loads((tmp_path / "config.json").read_text())["auths"][front.host]
    token = entry["identitytoken"]
    assert entry == {"auth": base64.b64encode(f"{registry.username}:".encode()).decode(), "identitytoken": token}
    assert token in server.issued_refresh_tokens and registry.password not in json.dumps(entry)
    (login,) = server.requests[start:]
    assert (login.method, login.user, login.offline, login.client_id, login.issued) == (
        "GET", registry.username, True, "docker", server.fingerprint(token))
    assert registry_module.auth_entry(registry_module.IdentityToken(registry.username, token)) == entry

    docker("rmi", "-f", image)
    start = len(server.requests)
    docker("pull", f"{front.host}/{repo}:1", env=env)

    assert image_id_of(f"{front.host}/{repo}:1") == image
    exchanges = [r for r in server.requests[start:] if r.grant_type == "refresh_token"]
    assert exchanges and all(r.method == "POST" and r.user == registry.username and r.status == 200 and
                             r.presented == server.fingerprint(token) and r.client_id == "docker"
                             for r in exchanges), server.requests[start:]
    assert [r for r in server.requests[start:] if r.grant_type != "refresh_token"] == []
    assert any(r.headers.get("authorization") == "Bearer <redacted>" for r in front.requests)
    assert not front.received(token) and not front.received(registry.password)

    # the default token server gives none: docker login keeps the password
    docker("login", "-u", registry_token.username, "--password-stdin", registry_token.host,
           input=registry_token.password, env=env)
    assert json.loads((tmp_path / "config.json").read_text())["auths"][registry_token.host] == \
        registry_module.auth_entry(registry_token.credentials)


def test_skopeo_exchanges_an_identity_token_from_auth_json(registry_token, fresh_image, tmp_path):
    registry, server = registry_token, registry_token.token_server
    repo = unique("smoke/identity-skopeo")
    registry.push(fresh_image(f"fixture/identity-skopeo:{uuid.uuid4().hex[:8]}"), f"{repo}:1")
    token = server.identity_token("alice")
    auth = registry.auth_file(tmp_path / "auth.json",
                              entries={registry.host: registry_module.IdentityToken("alice", token)})
    inspect = ["inspect", "--raw", "--authfile", str(auth), "--cert-dir", str(registry.cert_dir),
               f"docker://{registry.host}/{repo}:1"]
    start = len(server.requests)

    assert skopeo(*inspect, env=None).returncode == 0

    (exchange,) = server.requests[start:]
    assert (exchange.method, exchange.grant_type, exchange.user, exchange.status, exchange.client_id,
            exchange.presented) == ("POST", "refresh_token", "alice", 200, "containers/image",
                                    server.fingerprint(token))
    server.revoke_refresh_token(token)
    start = len(server.requests)
    revoked = skopeo(*inspect, env=None)
    assert revoked.returncode and "400" in revoked.stderr
    assert {(r.status, r.error) for r in server.requests[start:]} == {(400, "invalid_grant")}


# -- two accounts on one registry: repository-path keys ----------------------------------------

def test_path_keyed_auth_json_two_accounts(registry_token, fresh_image, tmp_path):
    from engines import podman_env

    """Measured with skopeo 1.9.3 and podman 4.3.1: an auth.json key HOST/NAMESPACE applies to
    the repositories under it, the longest matching key wins whatever the order of the keys,
    and HOST alone is the fallback. Each team's user can reach only its team's repositories, so a client
    that picks the wrong key is refused ("denied: requested access to the resource is
    denied")."""
    registry, server = registry_token, registry_token.token_server
    teams = registry.team_accounts("team-a", "team-b")
    nobody_name = unique("nobody")
    nobody = (nobody_name, server.add_user(nobody_name))  # no grants: anonymous rights only
    ref = f"fixture/teams:{uuid.uuid4().hex[:8]}"
    fresh_image(ref)
    host = registry.host
    repos = {"team-a": unique("team-a/app"), "team-b": unique("team-b/app")}
    nested = f"{repos['team-a']}/deep"
    for repo in (*repos.values(), nested):
        registry.skopeo_copy(f"docker-daemon:{ref}", f"docker://{host}/{repo}:1")

    def users_asked(entries, repo):
        auth = registry.auth_file(tmp_path / f"{uuid.uuid4().hex}.json", entries=entries)
        start = len(server.requests)
        inspected = skopeo("inspect", "--raw", "--authfile", str(auth), "--cert-dir", str(registry.cert_dir),
                           f"docker://{host}/{repo}:1", env=None)
        assert inspected.returncode == 0 or "denied: requested access" in inspected.stderr, inspected.stderr
        return inspected.returncode == 0, {r.user for r in server.requests[start:]}

    path_keyed = {f"{host}/team-a": teams["team-a"], f"{host}/team-b": teams["team-b"], host: nobody}
    assert users_asked(path_keyed, repos["team-a"]) == (True, {teams["team-a"][0]})
    assert users_asked(path_keyed, repos["team-b"]) == (True, {teams["team-b"][0]})
    assert users_asked(path_keyed, nested) == (True, {teams["team-a"][0]})
    swapped = {f"{host}/team-a": teams["team-b"], f"{host}/team-b": teams["team-a"]}
    assert users_asked(swapped, repos["team-a"]) == (False, {teams["team-b"][0]})
    assert users_asked(swapped, repos["team-b"]) == (False, {teams["team-a"][0]})
    assert users_asked({host: nobody}, repos["team-a"]) == (False, {nobody[0]})
    # the longest prefix wins, in either order of the keys
    for order in (1, -1):
        longest = dict(list({host: nobody, f"{host}/team-a": teams["team-b"],
                             f"{host}/{repos['team-a']}": teams["team-a"]}.items())[::order])
        assert users_asked(longest, nested) == (True, {teams["team-a"][0]})
        assert users_asked(longest, repos["team-a"]) == (True, {teams["team-a"][0]})
    # podman (same containers/image library) chooses the same way
    env = podman_env(tmp_path / "podman")
    auth = registry.auth_file(tmp_path / "podman.json", entries=longest)
    for repo, team in ((repos["team-a"], "team-a"), (repos["team-b"], "team-b")):
        start = len(server.requests)
        pulled = subprocess.run(["podman", "pull", "-q", "--authfile", str(auth), "--cert-dir", str(registry.cert_dir),
                                 f"{host}/{repo}:1"], env=env, capture_output=True, text=True)
        if pulled.returncode == 0:
            subprocess.run(["podman", "rmi", "-f", pulled.stdout.strip()], env=env, capture_output=True)
        expected = teams["team-a"][0] if team == "team-a" else nobody[0]  # `longest` has no team-b key
        assert {r.user for r in server.requests[start:]} == {expected}, pulled.stderr
        assert (pulled.returncode == 0) == (team == "team-a"), pulled.stderr
