"""Registries on the networks users are on (issue 26): proxies, every login docker and
podman accept, one retry policy, one transfer scheduler.

The proxy is a real squid (tests/proxy.py) whose own hosts file is the only place the
registry's names (reg.proxytest, auth.proxytest) resolve: a client that bypasses it cannot
even find the registry. The registries are Debian's docker-registry with a token service
that speaks distribution's OAuth2 form too (refresh tokens, as `docker login` stores them
in config.json as identitytoken), filled through the proxy by skopeo. The servers that
misbehave on purpose (a slow blob, an upload that is refused, answers to retry) are small
ones written here: no real registry does that on demand.
"""
import base64
import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from conftest import cli, docker, one_line_error
from proxy import REGISTRY_NAME, proxy_env, refused_proxy, silent_proxy
from registry import IdentityToken

from docker_dir.errors import EXIT_ENGINE_UNAVAILABLE, EXIT_NO_PERMISSION, EXIT_SELECTION, EXIT_USAGE
from docker_dir.registry import retry
from docker_dir.registry.proxy import proxy_for

MiB = 1 << 20


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def isolated_env(tmp_path, **more):
    """No engine on PATH, no login but what the test writes, no proxy but what it sets."""
    home = tmp_path / "home"
    for sub in (".docker", ".config", "run", ".cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = proxy_env({"PATH": "/nonexistent", "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
                     "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(home / "run"),
                     "XDG_CACHE_HOME": str(home / ".cache")})
    env.update(more)
    return env


def saved_id(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def host_port(url):
    return urlsplit(url).netloc


def secrets_absent(secrets, *procs):
    for proc in procs:
        for secret in secrets:
            assert secret not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def image(docker_engine, rootfs, tmp_path_factory):
    """A small two-layer engine image (its ID is what every pull must give)."""
    context = tmp_path_factory.mktemp("network-image")
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    (context / "data.bin").write_bytes(os.urandom(MiB))
    ref = f"{unique('docker-dir-network/app')}:1"
    (context / "Dockerfile").write_text('FROM scratch\nCOPY rootfs/ /\nCOPY data.bin /data.bin\nCMD ["sh"]\n')
    docker("build", "-q", "-t", ref, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    image_id = docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    yield SimpleNamespace(ref=ref, id=image_id)
    docker("rmi", "-f", ref, check=False)


@pytest.fixture(scope="module")
def behind_proxy(registry_named_token, image, tmp_path_factory):
    """The image in the named token registry, put there through the proxy (its token realm
    too is a name only squid resolves): a public repository and a private one."""
    from proxy import SquidProxy

    registry = registry_named_token
    with SquidProxy(label="squid (filling)") as squid:
        repos = {}
        for kind in ("public", "private"):
            repo = unique(f"{kind}/net")
            registry.skopeo_copy(f"docker-daemon:{image.ref}", f"docker://{registry.host_named()}/{repo}:1",
                                 env=squid.env())
            repos[kind] = repo
    return SimpleNamespace(registry=registry, host=registry.host_named(), public=repos["public"],
                           private=repos["private"])


# -- 1. proxies ---------------------------------------------------------------------------

@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_pull_through_a_proxy(variable, behind_proxy, image, shared_squid, tmp_path):
    """The registry and its token service by names only squid resolves: the pull goes
    through the proxy (CONNECT to both), and gets the image docker has."""
    shared_squid.forget()
    env = isolated_env(tmp_path, **{variable: shared_squid.url})
    proc = cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1", tmp_path / "img", env=env)
    assert saved_id(proc) == image.id
    assert saved_id(cli("docker-dir-id", "--verify", tmp_path / "img")) == image.id
    reached = shared_squid.reached()
    assert behind_proxy.host in reached
    assert any(host.startswith("auth.proxytest:") for host in reached), reached


@pytest.mark.parametrize("no_proxy", [REGISTRY_NAME, ".proxytest", f"{REGISTRY_NAME}:PORT", "*",
                                      f"other.example, {REGISTRY_NAME}"])
def test_no_proxy_goes_direct_and_so_fails_here(no_proxy, behind_proxy, shared_squid, tmp_path):
    """NO_PROXY naming the registry sends the pull direct, where its name resolves nowhere:
    69, the name in the message, nothing written."""
    no_proxy = no_proxy.replace("PORT", behind_proxy.host.rsplit(":", 1)[1])
    env = isolated_env(tmp_path, HTTPS_PROXY=shared_squid.url, NO_PROXY=no_proxy)
    (tmp_path / "out").mkdir()
    proc = cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1", tmp_path / "out" / "img",
               env=env)
    line = one_line_error(proc, EXIT_ENGINE_UNAVAILABLE)
    assert f"cannot connect to {behind_proxy.host}: Name or service not known" in line, line
    assert "the proxy" not in line, line
    assert os.listdir(tmp_path / "out") == []


def test_no_proxy_for_another_port_still_proxies(behind_proxy, shared_squid, tmp_path):
    env = isolated_env(tmp_path, HTTPS_PROXY=shared_squid.url, NO_PROXY=f"{REGISTRY_NAME}:1")
    proc = cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1", tmp_path / "img", env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("url, no_proxy, proxied", [
    ("https://reg.example/v2/", "", True),
    ("https://reg.example/v2/", "reg.example", False),
    ("https://sub.reg.example/v2/", "reg.example", False),  # a name covers its subdomains
    ("https://reg.example/v2/", ".reg.example", True),  # .domain: subdomains only (Go's rule)
    ("https://sub.reg.example/v2/", ".reg.example", False),
    ("https://notreg.example/v2/", "reg.example", True),
    ("https://reg.example:5000/v2/", "reg.example:5000", False),
    ("https://reg.example/v2/", "reg.example:5000", True),
    ("https://10.1.2.3/v2/", "10.0.0.0/8", False),
    ("https://11.1.2.3/v2/", "10.0.0.0/8", True),
    ("https://[fd00::1]:443/v2/", "fd00::/8", False),
    ("https://192.0.2.7/v2/", "192.0.2.7", False),
    ("https://reg.example/v2/", "*", False),
    ("https://REG.Example./v2/", "reg.example", False),
    ("https://127.0.0.1:5000/v2/", "", False),  # loopback: never through a proxy
    ("https://localhost:5000/v2/", "", False),
    ("https://[::1]:5000/v2/", "", False),
])
def test_no_proxy_rules(url, no_proxy, proxied):
    env = {"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": no_proxy}
    assert (proxy_for(url, env) is not None) == proxied


def test_proxy_variables_by_scheme_and_case():
    assert proxy_for("https://r/", {"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:1"}).url == "http://a:1"
    assert proxy_for("https://r/", {"HTTP_PROXY": "http://a:1"}) is None  # not for https
    assert proxy_for("http://r/", {"HTTP_PROXY": "http://a:1"}).url == "http://a:1"
    assert proxy_for("http://r/", {"ALL_PROXY": "b:3128"}).url == "http://b:3128"  # no scheme: http
    assert proxy_for("https://r/", {"https_proxy": "", "ALL_PROXY": "http://c:1"}).url == "http://c:1"
    assert proxy_for("https://r/", {"https_proxy": "http://a:1", "no_proxy": "r", "NO_PROXY": ""}) is None


def test_pull_through_a_proxy_with_credentials(behind_proxy, squid_proxy, image, tmp_path):
    """user:password@ in the proxy URL authenticates to the proxy, and is printed nowhere,
    not even in a --debug traceback; a wrong password is one line, 69, naming the proxy
    without the password."""
    password = "pr0xy-" + uuid.uuid4().hex
    squid = squid_proxy(users={"carol": password})
    source = f"docker://{behind_proxy.host}/{behind_proxy.public}:1"
    good = cli("docker-dir-save", source, tmp_path / "img",
               env=isolated_env(tmp_path, HTTPS_PROXY=squid.url_with("carol", password)))
    assert saved_id(good) == image.id
    assert {request.user for request in squid.requests() if request.method == "CONNECT"} == {"carol"}
    wrong = isolated_env(tmp_path, HTTPS_PROXY=squid.url_with("carol", "not-" + password))
    refused = cli("docker-dir-save", source, tmp_path / "img2", env=wrong)
    line = one_line_error(refused, EXIT_ENGINE_UNAVAILABLE)
    assert f"the proxy {squid.url} (HTTPS_PROXY) asks for credentials (HTTP 407" in line, line
    debug = cli("docker-dir-save", "--debug", source, tmp_path / "img2", env=wrong)
    assert "Traceback" in debug.stderr
    secrets_absent([password, "not-" + password], good, refused, debug)
    assert not (tmp_path / "img2").exists()


def test_proxy_that_is_down(behind_proxy, tmp_path):
    with refused_proxy() as url:
        env = isolated_env(tmp_path, HTTPS_PROXY=url)
        line = one_line_error(cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1",
                                  tmp_path / "img", env=env), EXIT_ENGINE_UNAVAILABLE)
    assert f"cannot connect to the proxy {url}" in line and "Connection refused" in line, line
    assert "HTTPS_PROXY" in line and "NO_PROXY" in line, line


def test_proxy_that_never_answers(behind_proxy, tmp_path):
    """Connected, then silence: one wait of the connect timeout (no retry, no 60 s read timeout)."""
    with silent_proxy() as url:
        env = isolated_env(tmp_path, HTTPS_PROXY=url)
        line = one_line_error(cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1",
                                  tmp_path / "img", env=env, timeout=60), EXIT_ENGINE_UNAVAILABLE)
    assert f"the proxy {url} (HTTPS_PROXY) did not open a tunnel to {behind_proxy.host}" in line, line


def test_proxy_that_refuses(behind_proxy, squid_proxy, tmp_path):
    squid = squid_proxy(refuse=True)
    env = isolated_env(tmp_path, https_proxy=squid.url)
    line = one_line_error(cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1",
                              tmp_path / "img", env=env), EXIT_ENGINE_UNAVAILABLE)
    assert f"the proxy {squid.url} (https_proxy) refused to connect to {behind_proxy.host} (HTTP 403" in line, line


@pytest.mark.parametrize("value, said", [("socks5://127.0.0.1:1080", "socks5:// proxies are not supported"),
                                         ("http://:3128", "not a proxy URL"),
                                         ("http://proxy:port", "not a proxy URL")])
def test_proxy_url_docker_dir_cannot_use(value, said, behind_proxy, tmp_path):
    env = isolated_env(tmp_path, HTTPS_PROXY=value)
    line = one_line_error(cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1",
                              tmp_path / "img", env=env), EXIT_USAGE)
    assert line.startswith("docker-dir-save: HTTPS_PROXY: ") and said in line, line


def test_push_through_a_proxy(behind_proxy, shared_squid, image, tmp_path):
    """Push (with the admin's login) through the proxy; the pushed image pulls back the same."""
    registry = behind_proxy.registry
    env = isolated_env(tmp_path, HTTPS_PROXY=shared_squid.url)
    registry.docker_config(env["DOCKER_CONFIG"], registry.admin, host=behind_proxy.host)
    pulled = tmp_path / "pulled"
    assert saved_id(cli("docker-dir-save", f"docker://{behind_proxy.host}/{behind_proxy.public}:1", pulled,
                        env=env)) == image.id
    shared_squid.forget()
    target = f"{behind_proxy.host}/{unique('pushed/net')}:1"
    proc = cli("docker-dir-push", pulled, f"docker://{target}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert behind_proxy.host in shared_squid.reached()
    assert saved_id(cli("docker-dir-save", f"docker://{target}", tmp_path / "again", env=env)) == image.id


def test_plain_http_registry_through_http_proxy(registry_named_anon, shared_squid, image, tmp_path):
    """A plain-HTTP registry by a name (--insecure-registry) goes through HTTP_PROXY: squid
    forwards each request whole."""
    registry = registry_named_anon
    host = registry.host_named()
    repo = unique("plain/net")
    registry.skopeo_copy(f"docker-daemon:{image.ref}", f"docker://{host}/{repo}:1", env=shared_squid.env(
        url=shared_squid.url) | {"HTTP_PROXY": shared_squid.url})
    shared_squid.forget()
    env = isolated_env(tmp_path, HTTP_PROXY=shared_squid.url)
    proc = cli("docker-dir-save", "--insecure-registry", host, f"docker://{host}/{repo}:1", tmp_path / "img", env=env)
    assert saved_id(proc) == image.id
    urls = [request.url for request in shared_squid.requests() if request.method == "GET"]
    assert any(url.startswith(f"http://{host}/v2/{repo}/manifests/") for url in urls), urls


# -- 4. logins: identity tokens, repository-path keys, credential helpers ----------------

@contextlib.contextmanager
def trusting(registry):
    """Its CA in certs.d for the registry and its token service by 127.0.0.1:PORT, where
    dockerd (to push the fixtures) and docker-dir look."""
    hosts = [registry.host] + ([host_port(registry.token_server.direct_url)] if registry.token_server else [])
    made = [directory for host in hosts for directory in registry.trust(host)]
    try:
        yield registry
    finally:
        registry.untrust(made)


@pytest.fixture(scope="module")
def identity_registry(registry_identity):
    with trusting(registry_identity) as registry:
        yield registry


@pytest.fixture(scope="module")
def identity_image(identity_registry, image):
    repo = unique("private/identity")
    identity_registry.push(image.ref, f"{repo}:1", credentials=identity_registry.admin)
    return f"{repo}:1"


def docker_login(registry, credentials, config_dir):
    proc = subprocess.run(["docker", "login", registry.host, "-u", credentials[0], "--password-stdin"],
                          input=credentials[1] + "\n", env=dict(os.environ, DOCKER_CONFIG=str(config_dir)),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_identity_token_from_docker_login(identity_registry, identity_image, image, blob_proxy, tmp_path):
    """`docker login` against a token service that hands out refresh tokens stores one as
    identitytoken (no password); docker-dir exchanges it (POST grant_type=refresh_token) for
    access tokens, as docker does. The refresh token goes to the token service only."""
    registry = identity_registry
    env = isolated_env(tmp_path)
    docker_login(registry, registry.admin, env["DOCKER_CONFIG"])
    stored = json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())["auths"][registry.host]
    assert stored.get("identitytoken") and base64.b64decode(stored["auth"]).decode().endswith(":")
    front = blob_proxy(registry)
    trusted = registry.trust(front.host) + registry.trust(front.storage_host)
    env["DOCKER_CONFIG"] = str(registry.docker_config(tmp_path / "front", entries={front.host: IdentityToken(
        registry.admin[0], stored["identitytoken"])}))
    start = len(registry.token_server.requests)
    proc = cli("docker-dir-save", f"docker://{front.host}/{identity_image}", tmp_path / "img", env=env)
    assert saved_id(proc) == image.id
    asked = registry.token_server.requests[start:]
    assert asked and all(r.method == "POST" and r.grant_type == "refresh_token" and r.status == 200 for r in asked)
    assert {r.user for r in asked} == {registry.admin[0]}
    assert not front.received(stored["identitytoken"])
    secrets_absent([stored["identitytoken"]], proc)
    registry.untrust(trusted)


def test_revoked_identity_token(identity_registry, identity_image, tmp_path):
    registry = identity_registry
    token = registry.token_server.identity_token(registry.admin[0])
    registry.token_server.revoke_refresh_token(token)
    env = isolated_env(tmp_path)
    registry.docker_config(env["DOCKER_CONFIG"], entries={registry.host: IdentityToken(registry.admin[0], token)})
    proc = cli("docker-dir-save", f"docker://{registry.host}/{identity_image}", tmp_path / "img", env=env)
    line = one_line_error(proc, EXIT_NO_PERMISSION)
    assert "refused the identity token" in line and f"docker login {registry.host}" in line, line
    secrets_absent([token], proc)
    assert not (tmp_path / "img").exists()


def write_helper(directory, name, answer):
    """docker-credential-NAME answering `get` with `answer` (JSON), and logging its thread
    of origin is impossible: it logs that it ran, and for which server."""
    directory.mkdir(parents=True, exist_ok=True)
    helper = directory / f"docker-credential-{name}"
    helper.write_text(f"#!/bin/sh\nread server\necho \"$server\" >> {directory}/asked\n"
                      f"cat <<'EOF'\n{json.dumps(answer)}\nEOF\n")
    helper.chmod(0o755)
    return directory


def test_identity_token_from_a_credential_helper(identity_registry, identity_image, image, tmp_path):
    """A helper answering the user <token> gives an identity token (docker's convention)."""
    registry = identity_registry
    token = registry.token_server.identity_token(registry.admin[0])
    env = isolated_env(tmp_path)
    helpers = write_helper(tmp_path / "helpers", "ddtoken", {"ServerURL": registry.host, "Username": "<token>",
                                                             "Secret": token})
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"credHelpers": {registry.host: "ddtoken"}}))
    env["PATH"] = f"{helpers}:/usr/bin:/bin"
    start = len(registry.token_server.requests)
    proc = cli("docker-dir-save", f"docker://{registry.host}/{identity_image}", tmp_path / "img", env=env)
    assert saved_id(proc) == image.id
    assert {r.grant_type for r in registry.token_server.requests[start:]} == {"refresh_token"}
    assert (helpers / "asked").read_text().split() == [registry.host]
    secrets_absent([token], proc)


@pytest.fixture(scope="module")
def two_teams(registry_token, image):
    """Two accounts on one registry, each allowed only its own team's repositories, and an
    image in each team's repository."""
    with trusting(registry_token) as registry:
        accounts = registry.team_accounts(unique("team-a"), unique("team-b"))
        repos = {}
        for team in accounts:
            repos[team] = f"{team}/tool"
            registry.push(image.ref, f"{repos[team]}:1", credentials=registry.admin)
        yield SimpleNamespace(registry=registry, accounts=accounts, repos=repos)


@pytest.mark.parametrize("where", ["REGISTRY_AUTH_FILE", "podman auth.json", "docker config.json"])
def test_repository_path_logins_pick_the_account(where, two_teams, image, tmp_path):
    """auth.json keys HOST/team-a and HOST/team-b, each with its own account (podman and
    skopeo match the longest prefix first): each repository is pulled with its own login;
    a key for another path never answers. A host key stays the fallback."""
    registry, (team_a, team_b) = two_teams.registry, list(two_teams.accounts)
    entries = {f"{registry.host}/{team_a}": two_teams.accounts[team_a],
               f"{registry.host}/{team_b}": two_teams.accounts[team_b]}
    env = isolated_env(tmp_path)
    if where == "REGISTRY_AUTH_FILE":
        env["REGISTRY_AUTH_FILE"] = str(registry.auth_file(tmp_path / "auth.json", entries=entries))
    elif where == "podman auth.json":
        registry.auth_file(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json", entries=entries)
    else:
        registry.docker_config(env["DOCKER_CONFIG"], entries=entries)
    for number, team in enumerate((team_a, team_b)):
        start = len(registry.token_server.requests)
        proc = cli("docker-dir-save", f"docker://{registry.host}/{two_teams.repos[team]}:1", tmp_path / f"img{number}",
                   env=env)
        assert saved_id(proc) == image.id
        users = {r.user for r in registry.token_server.requests[start:] if r.scopes}
        assert users == {two_teams.accounts[team][0]}, (team, users)


def test_repository_path_login_that_does_not_cover_the_repository(two_teams, tmp_path):
    """Only team-a's key: team-b's repository gets no login at all (not team-a's account):
    77, as for an anonymous pull of a private repository."""
    registry, (team_a, team_b) = two_teams.registry, list(two_teams.accounts)
    env = isolated_env(tmp_path)
    env["REGISTRY_AUTH_FILE"] = str(registry.auth_file(tmp_path / "auth.json", entries={
        f"{registry.host}/{team_a}": two_teams.accounts[team_a]}))
    start = len(registry.token_server.requests)
    proc = cli("docker-dir-save", f"docker://{registry.host}/{two_teams.repos[team_b]}:1", tmp_path / "img", env=env)
    one_line_error(proc, EXIT_NO_PERMISSION)
    assert {r.user for r in registry.token_server.requests[start:]} == {None}


def test_push_with_a_repository_path_login(two_teams, image, tmp_path):
    registry, (team_a, team_b) = two_teams.registry, list(two_teams.accounts)
    env = isolated_env(tmp_path)
    env["REGISTRY_AUTH_FILE"] = str(registry.auth_file(tmp_path / "auth.json", entries={
        f"{registry.host}/{team_a}": two_teams.accounts[team_a], f"{registry.host}/{team_b}": two_teams.accounts[team_b],
        registry.host: registry.admin}))
    saved_id(cli("docker-dir-save", f"docker://{registry.host}/{two_teams.repos[team_a]}:1", tmp_path / "img",
                 env=env))
    start = len(registry.token_server.requests)
    proc = cli("docker-dir-push", tmp_path / "img", f"docker://{registry.host}/{team_b}/pushed:1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert {r.user for r in registry.token_server.requests[start:] if r.scopes} == {two_teams.accounts[team_b][0]}


HELPER_THREADS = """
import sys, threading
sys.path.insert(0, {lib!r})
from docker_dir import process
from docker_dir.application.push import push

threads = []
real_run = process.run


def recording_run(argv, *args, **kwargs):
    threads.append(threading.current_thread() is threading.main_thread())
    return real_run(argv, *args, **kwargs)


process.run = recording_run
pushed = push({dir!r}, {target!r})
print(threads)
"""


@pytest.fixture(scope="module")
def tls_registry(registry_tls):
    with trusting(registry_tls) as registry:
        yield registry


def test_credential_helpers_run_on_the_main_thread_only(tls_registry, image, tmp_path):
    """A push's blobs go up from worker threads; the helper is asked before they start, from
    the main thread (a fork from a worker can deadlock, and a helper's PDEATHSIG would
    follow that worker)."""
    registry = tls_registry
    env = isolated_env(tmp_path)
    user, password = registry.credentials
    helpers = write_helper(tmp_path / "helpers", "ddthreads", {"ServerURL": registry.host, "Username": user,
                                                               "Secret": password})
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps({"credHelpers": {registry.host: "ddthreads"}}))
    env["PATH"] = f"{helpers}:/usr/bin:/bin"
    saved = tmp_path / "img"
    docker_dir_env = dict(env, PATH=os.environ["PATH"])
    assert cli("docker-dir-save", image.ref, saved, env=docker_dir_env).returncode == 0
    from conftest import REPO

    script = HELPER_THREADS.format(lib=str(REPO / "lib"), dir=str(saved),
                                   target=f"{registry.host}/{unique('helper/pushed')}:1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[True]"
    assert (helpers / "asked").read_text().split() == [registry.host]


def test_a_helper_is_never_started_from_a_worker_thread(tmp_path, monkeypatch):
    from docker_dir.registry.credentials import credentials_for

    helpers = write_helper(tmp_path / "helpers", "ddworker", {"Username": "u", "Secret": "s"})
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "ddworker"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PATH", f"{helpers}:{os.environ['PATH']}")
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    failures = []
    worker = threading.Thread(target=lambda: failures.append(pytest.raises(RuntimeError, credentials_for, "r.example")))
    worker.start()
    worker.join()
    assert failures and "worker thread" in str(failures[0].value)
    assert not (helpers / "asked").exists()
    assert credentials_for("r.example").username == "u"  # the main thread may


# -- 3. one retry policy ------------------------------------------------------------------

class Clock:
    """A fake clock the retry policy sleeps on."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def tries(clock, jitter=0.5, **kwargs):
    return retry.Tries(clock=clock.monotonic, sleep=clock.sleep, jitter=lambda: jitter, **kwargs)


def test_backoff_grows_exponentially_with_jitter_and_is_bounded():
    clock = Clock()
    policy = tries(clock)
    while policy.again():
        pass
    assert clock.slept == [retry.FIRST_WAIT * 2 ** n for n in range(retry.ATTEMPTS - 1)]
    assert policy.made == retry.ATTEMPTS
    for jitter, factor in ((0.0, 0.5), (0.999, 1.499)):
        clock = Clock()
        assert tries(clock, jitter).again() and clock.slept == [pytest.approx(retry.FIRST_WAIT * factor)]


def test_retry_after_in_seconds_and_as_a_date():
    clock = Clock()
    assert tries(clock).again("3") and clock.slept == [3.0]
    clock = Clock()
    assert tries(clock).again("86400") and clock.slept == [retry.MAX_WAIT]  # bounded
    clock = Clock()
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert tries(clock).again(when) and 3.5 < clock.slept[0] <= 5.0
    clock = Clock()
    assert tries(clock).again("soon") and clock.slept == [retry.FIRST_WAIT]  # unreadable: the backoff


def test_no_try_starts_past_the_deadline():
    clock = Clock()
    policy = tries(clock, attempts=100, deadline=2.0)
    while policy.again():
        clock.now += 0.5  # each try takes half a second
    assert clock.now - 1000.0 <= 2.0 + retry.MAX_WAIT and policy.made < 100


class LoopbackServer(http.server.ThreadingHTTPServer):
    """A server of this module on a free loopback port, serving in a thread of its own."""

    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self):
        return f"127.0.0.1:{self.server_port}"

    def stop(self):
        self.shutdown()
        self.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Scripted(LoopbackServer):
    """A registry API that answers each request from a script: a list per path of
    (status, headers, body) or "drop" (the connection closed with no answer)."""

    def __init__(self, script):
        self.script = script
        self.hits = []
        super().__init__(_ScriptedHandler)


class _ScriptedHandler(Handler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        self.server.hits.append((self.command, path, time.monotonic()))
        steps = self.server.script.get(path, [(404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')])
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status, headers, body = step
        self.answer(status, body, headers.items())

    do_HEAD = do_GET


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "0" * 64, "size": 2}, "layers": []}).encode()
OK = (200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, MANIFEST)


@pytest.mark.parametrize("first", ["drop", (503, {}, b"busy"), (429, {"Retry-After": "1"}, b"slow down"),
                                   (502, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")])
def test_requests_are_tried_again(first):
    """No answer, 5xx and 429 are tried again (Retry-After honoured, a past date meaning now)."""
    from docker_dir.registry.client import Registry

    server = Scripted({"/v2/": [(200, {}, b"{}")], "/v2/x/manifests/1": [first, OK]})
    try:
        with Registry(server.host) as registry:
            data, _, _ = registry.get_manifest("x", "1", ["application/vnd.oci.image.manifest.v1+json"])
    finally:
        server.stop()
    assert data == MANIFEST
    hits = [hit for hit in server.hits if hit[1] == "/v2/x/manifests/1"]
    assert len(hits) == 2
    if first[0] == 429:
        assert hits[1][2] - hits[0][2] >= 1.0  # it waited what it was asked


@pytest.mark.parametrize("status, code", [(400, 65), (403, 77), (404, 67)])
def test_other_client_errors_are_not_tried_again(status, code):
    from docker_dir.errors import DockerDirError
    from docker_dir.registry.client import Registry

    server = Scripted({"/v2/": [(200, {}, b"{}")], "/v2/x/manifests/1": [(status, {}, b"")]})
    try:
        with Registry(server.host) as registry, pytest.raises(DockerDirError) as err:
            registry.get_manifest("x", "1", ["application/vnd.oci.image.manifest.v1+json"])
    finally:
        server.stop()
    assert err.value.exit_code == code
    assert len([hit for hit in server.hits if hit[1] == "/v2/x/manifests/1"]) == 1


def test_token_service_answers_are_tried_again():
    from docker_dir.registry.client import Registry

    challenge = {"WWW-Authenticate": 'Bearer realm="http://HOST/token",service="s"'}
    server = Scripted({})
    challenge["WWW-Authenticate"] = challenge["WWW-Authenticate"].replace("HOST", server.host)
    server.script.update({"/v2/": [(401, challenge, b"")], "/token": ["drop", (503, {}, b""),
                                                                       (200, {}, b'{"token":"t"}')],
                          "/v2/x/manifests/1": [OK]})
    try:
        with Registry(server.host) as registry:
            registry.get_manifest("x", "1", ["application/vnd.oci.image.manifest.v1+json"])
    finally:
        server.stop()
    assert len([hit for hit in server.hits if hit[1] == "/token"]) == 3


# -- 3. one transfer scheduler: the first failure stops the rest -------------------------

class SlowBlobs(LoopbackServer):
    """A registry holding one image whose blobs are served as scripted: "slow" trickles
    (64 kB every 20 ms, counting what went out), "missing" is a 404, others at once.
    Records which blobs were asked for, and uploads started (POST) and bytes received."""

    def __init__(self, blobs):
        self.blobs = blobs  # digest -> (bytes, how)
        self.asked = []
        self.sent = {}
        self.received = {}
        self.streaming = threading.Event()  # a layer's upload is under way
        super().__init__(_SlowHandler)


class _SlowHandler(Handler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/v2/":
            return self.answer(200, b"{}")
        if "/manifests/" in path:
            return self.answer(200, self.server.manifest, [("Content-Type", self.server.manifest_type)])
        digest = path.rsplit("/", 1)[1]
        self.server.asked.append(digest)
        content, how = self.server.blobs[digest]
        if how == "missing":
            return self.answer(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        step = 64 << 10 if how == "slow" else len(content)
        try:
            for start in range(0, len(content), step):
                self.wfile.write(content[start:start + step])
                self.wfile.flush()
                self.server.sent[digest] = start + step
                if how == "slow":
                    time.sleep(0.02)
        except OSError:
            self.close_connection = True

    def do_HEAD(self):
        self.answer(404)

    def do_POST(self):
        self.server.asked.append("POST")
        self.answer(202, headers=[("Location", f"/v2/x/blobs/uploads/{uuid.uuid4().hex}"), ("Range", "0-0")])

    def do_PUT(self):
        if "/manifests/" in self.path:
            return self.answer(201)
        self.server.streaming.wait(30)  # refused while a layer streams up, so that it has to stop
        # The body is read first, as a registry does: left unread, it would be taken for the
        # next request on this kept-alive connection (a 400 to another thread's POST).
        if "Content-Length" in self.headers:
            self.rfile.read(int(self.headers["Content-Length"]))
        else:
            self.close_connection = True
        self.answer(403, b'{"errors":[{"code":"DENIED","message":"not for you"}]}',
                    [] if "Content-Length" in self.headers else [("Connection", "close")])

    def do_PATCH(self):
        key = self.path.split("?", 1)[0]
        self.server.received.setdefault(key, 0)
        try:
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                while size:
                    piece = self.rfile.read(min(size, 16 << 10))
                    if not piece:
                        raise OSError("cut")
                    size -= len(piece)
                    self.server.received[key] += len(piece)
                    self.server.streaming.set()
                    time.sleep(0.005)  # a slow link: 3 MB/s
                self.rfile.readline()
        except (OSError, ValueError):
            self.close_connection = True
            return
        self.answer(202, headers=[("Location", key), ("Range", f"0-{self.server.received[key] - 1}")])


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_pull_a_failed_blob_stops_the_others(tmp_path):
    """The first blob that fails (here: missing) ends the pull at once: the large blob
    trickling in is dropped at its next read, the blobs not started never are; 67, nothing
    written."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    slow, missing = os.urandom(16 * MiB), os.urandom(5000)  # downloads start largest first
    later = [os.urandom(1000 + n) for n in range(6)]
    layers = [(slow, "slow"), (missing, "missing")] + [(blob, "fast") for blob in later]
    server = SlowBlobs({sha(content): (content, how) for content, how in [(config, "fast")] + layers})
    server.manifest_type = "application/vnd.oci.image.manifest.v1+json"
    server.manifest = json.dumps({
        "schemaVersion": 2, "mediaType": server.manifest_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(content), "size": len(content)}
                   for content, _ in layers]}).encode()
    (tmp_path / "out").mkdir()
    try:
        proc = cli("docker-dir-save", f"docker://{server.host}/x:1", tmp_path / "out" / "img",
                   env=isolated_env(tmp_path), timeout=120)
    finally:
        server.stop()
    line = one_line_error(proc, EXIT_SELECTION)
    assert sha(missing) in line, line
    assert server.sent.get(sha(slow), 0) < len(slow)  # stopped, not finished
    assert len([d for d in server.asked if d in {sha(blob) for blob in later}]) < len(later)  # some never began
    assert os.listdir(tmp_path / "out") == []


def test_push_a_failed_blob_stops_the_others(tmp_path, images):
    """A refused upload (the config's: 77) ends the push at once: the layers streaming up a
    slow link stop at their next read, those not started never start; no manifest."""
    saved = tmp_path / "img"
    assert cli("docker-dir-save", images.multi, saved).returncode == 0
    layer_sizes = [path.stat().st_size for path in (saved / "blobs" / "sha256").iterdir()]
    server = SlowBlobs({})
    try:
        proc = cli("docker-dir-push", saved, f"docker://{server.host}/x:1", env=isolated_env(tmp_path), timeout=120)
    finally:
        server.stop()
    one_line_error(proc, EXIT_NO_PERMISSION)
    assert server.received and max(server.received.values()) < max(layer_sizes)
    assert server.asked.count("POST") <= 4  # the config's and the first transfers', no more


# -- 1. the git-annex remote behind a proxy ----------------------------------------------

def test_annex_remote_gets_layers_through_a_proxy(behind_proxy, shared_squid, tmp_path):
    """git-annex starts git-annex-remote-docker-dir with its own environment: HTTPS_PROXY
    set there brings the dropped layers back through the proxy; NO_PROXY naming the
    registry makes the get fail (the name resolves only in the proxy)."""
    from test_annex_remote import Shell, git_annex_repo, present_here

    shell = Shell(tmp_path)
    shell.env = proxy_env(shell.env)
    repo = git_annex_repo(tmp_path / "repo", shell)
    source = f"docker://{behind_proxy.host}/{behind_proxy.public}:1"
    shell.ok("docker-dir-save", "--annex-urls", source, "images/app", cwd=repo, HTTPS_PROXY=shared_squid.url)
    shell.ok("git", "annex", "drop", "images/app", cwd=repo, HTTPS_PROXY=shared_squid.url)  # asks the registry
    assert present_here(shell, repo, "images") == []
    failed = shell.fails("git", "annex", "get", "images/app", cwd=repo, HTTPS_PROXY=shared_squid.url,
                         NO_PROXY=REGISTRY_NAME)
    assert f"cannot connect to {behind_proxy.host}" in failed.stdout + failed.stderr
    shared_squid.forget()
    shell.ok("git", "annex", "get", "images/app", cwd=repo, HTTPS_PROXY=shared_squid.url)
    assert len(present_here(shell, repo, "images")) == 2
    assert behind_proxy.host in shared_squid.reached()
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=repo).returncode == 0


# -- 5. bugs: concurrent pushes, a config without size, several images for a platform ----

REMEMBER = """
import sys
sys.path.insert(0, {lib!r})
from docker_dir.application.push_cache import Remembered

remembered = Remembered({cache!r})
for n in range({count}):
    remembered.remember("{prefix}%060d" % n, "gzip", "{prefix}%060d" % n, n)
    remembered.pushed("r.example", "repo-{prefix}", ["{prefix}%060d" % n])
"""


def test_concurrent_pushes_keep_every_entry(tmp_path):
    """Four processes remembering at once, each from its own stale copy of the file: every
    entry of every one is there at the end (the file was rewritten whole, last writer winning)."""
    from conftest import REPO

    from docker_dir.application.push_cache import Remembered

    cache = tmp_path / "cache"
    cache.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", REMEMBER.format(lib=str(REPO / "lib"), cache=str(cache),
                                                                    count=60, prefix=prefix)])
             for prefix in ("aaaa", "bbbb", "cccc", "dddd")]
    assert [proc.wait(timeout=120) for proc in procs] == [0] * 4
    remembered = Remembered(str(cache))
    for prefix in ("aaaa", "bbbb", "cccc", "dddd"):
        for n in range(60):
            key = f"{prefix}{n:060d}"
            assert remembered.compressed(key, "gzip") == (key, n)
            assert remembered.repositories("r.example", key) == [f"repo-{prefix}"]


def test_two_pushes_at_once_both_remembered(registry_anon, images, tmp_path):
    dirs = [tmp_path / "one", tmp_path / "two"]
    for ref, directory in zip((images.one, images.multi), dirs):
        assert cli("docker-dir-save", ref, directory).returncode == 0
    env = isolated_env(tmp_path, PATH=os.environ["PATH"])
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "bin" / "docker-dir-push"),
                               str(directory), f"docker://{registry_anon.host}/{unique('concurrent/push')}:1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for directory in dirs]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    remembered = json.loads((Path(env["XDG_CACHE_HOME"]) / "docker-dir" / "layer-digests.json").read_text())
    diff_ids = set()
    for directory in dirs:
        index = json.loads((directory / "index.json").read_text())
        manifest = json.loads((directory / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
        config = json.loads((directory / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
        diff_ids |= {diff_id[7:] for diff_id in config["rootfs"]["diff_ids"]}
    assert diff_ids and diff_ids <= set(remembered["compressed"])


def single_image_registry(manifest, extra=None):
    body = json.dumps(manifest).encode()
    routes = {"/v2/": [(200, {}, b"{}")],
              "/v2/x/manifests/1": [(200, {"Content-Type": manifest["mediaType"]}, body)]}
    routes.update(extra or {})
    return Scripted(routes)


def test_config_without_size_is_refused_in_one_line(tmp_path):
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64},
                "layers": []}
    server = single_image_registry(manifest)
    (tmp_path / "out").mkdir()
    try:
        proc = cli("docker-dir-save", f"docker://{server.host}/x:1", tmp_path / "out" / "img",
                   env=isolated_env(tmp_path))
    finally:
        server.stop()
    line = one_line_error(proc, 65)
    assert "config sha256:aaaaaaaaaaaa" in line and "no valid size" in line, line
    assert os.listdir(tmp_path / "out") == []


def test_several_images_for_the_platform_are_refused_as_in_a_directory(tmp_path):
    """Two manifests of an index for this host's platform: pull refuses as docker-dir-id does
    for a directory holding two (it used to take the first), and says how to choose."""
    from docker_dir.format.platform import Platform

    host = Platform.host()
    manifests = []
    routes = {}
    for n in range(2):
        document = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": "sha256:" + str(n) * 64, "size": 2}, "layers": []}
        body = json.dumps(document).encode()
        manifests.append({"mediaType": document["mediaType"], "digest": sha(body), "size": len(body),
                          "platform": {"os": host.os, "architecture": host.arch,
                                       **({"variant": host.variant} if host.variant else {})}})
        routes[f"/v2/x/manifests/{sha(body)}"] = [(200, {"Content-Type": document["mediaType"]}, body)]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    server = single_image_registry(index, routes)
    (tmp_path / "out").mkdir()
    try:
        proc = cli("docker-dir-save", f"docker://{server.host}/x:1", tmp_path / "out" / "img",
                   env=isolated_env(tmp_path))
    finally:
        server.stop()
    line = one_line_error(proc, EXIT_SELECTION)
    assert f"2 images are for platform {host}" in line and f"docker://{server.host}/x@sha256:" in line, line
    assert manifests[0]["digest"][7:19] in line and manifests[1]["digest"][7:19] in line
    assert os.listdir(tmp_path / "out") == []
