"""The registry fixtures of tests/registry.py work with real clients (docker, skopeo, podman,
urllib), so a later registry test that fails fails because of its subject, not its fixture."""
import base64
import hashlib
import http.client
import json
import os
import subprocess
import urllib.parse
import uuid

import pytest

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
