"""Shared test fixtures: a real Docker engine, fixture images built offline, CLI runners.

Images are built from busybox (Debian busybox-static) with no registry, once
per session, and removed at the end with every private tag docker-dir added.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from plumbum import local

from engines import Target, Unavailable, podman_env, side_dockerd_or_skip

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "bin"
sys.path.insert(0, str(REPO / "lib"))

PRIVATE_REPO = "localhost/docker-dir"


STORE_ENV = "DOCKER_DIR_STORE"


def with_test_store(env):
    """`env` (None: ours) with this test's blob store, unless it names one itself: a test
    never finds blobs that another left in a store (see blob_store)."""
    if env is None or STORE_ENV in env or STORE_ENV not in os.environ:
        return env
    return {**env, STORE_ENV: os.environ[STORE_ENV]}


def cli(name, *args, env=None, cwd=None, input=None, timeout=300):
    """Run one of bin/ from the checkout with this interpreter; never raises on exit status."""
    return subprocess.run([sys.executable, str(BIN / name), *map(str, args)], capture_output=True, text=True,
                          env=with_test_store(env), cwd=cwd, input=input, timeout=timeout)


def one_line_error(proc, code):
    """Assert a failure the way users see it: exit `code`, nothing on stdout, one line
    on stderr and no traceback. Returns that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def cli_on_tty(name, *args, cwd=None, env=None):
    """Run one of bin/ with a terminal as stdin, stdout and stderr; returns (status, output)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        if cwd:
            os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, str(BIN / name), *map(str, args)], with_test_store(env) or os.environ)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def seeded_rng():
    """A random.Random whose seed is printed (pytest shows it with a failure) and can be
    set again with DOCKER_DIR_TEST_SEED to replay a failing run. Returns (rng, seed)."""
    import random

    seed = int(os.environ.get("DOCKER_DIR_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"random seed {seed} (replay: DOCKER_DIR_TEST_SEED={seed})")
    return random.Random(seed), seed


def sh(*args, check=True, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    proc = subprocess.run([str(a) for a in args], **kwargs)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def docker(*args, check=True, **kwargs):
    return sh("docker", *args, check=check, **kwargs)


def image_id_of(ref):
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def private_ref(config_id):
    return f"{PRIVATE_REPO}:{config_id.split(':')[-1]}"


def raw_save(refs, directory):
    """`docker save | tar -x`, independent of docker-dir-save."""
    os.makedirs(directory, exist_ok=True)
    refs = [refs] if isinstance(refs, str) else list(refs)
    (local["docker"]["save", *refs] | local["tar"]["-x", "-C", str(directory)])()
    return Path(directory)


def count_events(action, since, image=None, until=None):
    """How many image events of `action` (e.g. load) the daemon reported in [since, until],
    for one image ID when given, so suites running side by side don't interfere."""
    # dockerd 20.10 reports a load under the image ID only: a name filter would match
    # nothing and make every "== 0" check pass.
    assert image is None or image.startswith("sha256:"), f"count_events needs an image ID, not {image!r}"
    until = until or time.time() + 1
    filters = ["--filter", "type=image", "--filter", f"event={action}"]
    if image:
        filters += ["--filter", f"image={image}"]
    proc = docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", *filters,
                  "--format", "{{.Action}}")
    return len([line for line in proc.stdout.splitlines() if line.strip()])


def tree_digest(directory):
    """Name -> sha256 of every file (links as their target), for determinism checks."""
    import hashlib

    result = {}
    for path in sorted(Path(directory).rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            result[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[rel] = "dir"
    return result


@pytest.fixture(scope="session", autouse=True)
def session_blob_store(tmp_path_factory):
    """The blob store of what session fixtures save (the user's own, ~/.cache, is never used)."""
    patch = pytest.MonkeyPatch()
    patch.setenv(STORE_ENV, str(tmp_path_factory.mktemp("store-session")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def blob_store(session_blob_store, tmp_path_factory, monkeypatch):
    """Each test saves into a blob store of its own (outside its tmp_path, which tests check
    for leftovers): docker-dir's default, a store, is what every test exercises, and no test
    finds blobs another left there (a pull would pass without downloading)."""
    path = tmp_path_factory.mktemp("store")
    monkeypatch.setenv(STORE_ENV, str(path))
    return path


@pytest.fixture(scope="session")
def docker_engine():
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.exit("no Docker engine answers 'docker info': run the suite through tests/run-all.sh", returncode=1)
    return "docker"


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory):
    """A busybox root filesystem with every applet linked, so sh, sleep, true... exist."""
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.exit("busybox is needed to build fixture images (Debian busybox-static)", returncode=1)
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "tmp").mkdir(mode=0o1777)
    return root


def import_image(rootfs, ref=None, label=None):
    """`docker import` of the rootfs: one layer; untagged when ref is None. Returns the ID."""
    changes = ["-c", "ENV PATH=/bin", "-c", 'CMD ["sh"]']
    extra = []
    if label:
        changes += ["-c", f"LABEL docker-dir-test={label}"]
        # A layer of its own: an engine skips layers it already has, and never reads their bytes.
        marker = Path(tempfile.mkdtemp())
        (marker / "docker-dir-test").write_text(label)
        extra = ["-C", str(marker), "docker-dir-test"]
    try:
        return (local["tar"]["-C", str(rootfs), "-c", ".", *extra]
                | local["docker"]["import", *changes, "-", *([ref] if ref else [])])().strip()
    finally:
        if extra:
            shutil.rmtree(extra[1])


@pytest.fixture(scope="session")
def images(docker_engine, rootfs, tmp_path_factory):
    """Fixture images: one layer, multi-layer FROM scratch (several MB), two tags, untagged."""
    session = uuid.uuid4().hex[:8]
    built = []

    # Tags are per session, so suites running side by side never move each other's tags.
    one_ref, multi_ref, two_refs = f"fixture/bb-{session}:1", f"fixture/multi-{session}:1", (
        f"fixture/two-{session}:a", f"fixture/two-{session}:b")
    one = import_image(rootfs, one_ref, label=f"one-{session}")
    built.append(one)

    context = tmp_path_factory.mktemp("multi")
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    for name in ("a", "b"):
        (context / f"data-{name}.bin").write_bytes(os.urandom(4 << 20))
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\nCOPY data-a.bin /data/a.bin\nCOPY data-b.bin /data/b.bin\n"
        f'LABEL docker-dir-test=multi-{session}\nENV PATH=/bin\nCMD ["sh"]\n')
    docker("build", "-q", "-t", multi_ref, str(context))
    multi = image_id_of(multi_ref)
    built.append(multi)

    two = import_image(rootfs, two_refs[0], label=f"two-{session}")
    docker("tag", *two_refs)
    built.append(two)

    untagged = import_image(rootfs, None, label=f"untagged-{session}")
    built.append(untagged)

    yield SimpleNamespace(one=one_ref, one_id=one, multi=multi_ref, multi_id=multi,
                          two=two_refs, two_id=two, untagged_id=untagged)
    for image in built:
        docker("rmi", "-f", private_ref(image), check=False)
        docker("rmi", "-f", image, check=False)


@pytest.fixture(scope="session")
def saved(images, tmp_path_factory):
    """The fixture images saved with plain `docker save | tar -x` (read-only use)."""
    base = tmp_path_factory.mktemp("saved")
    return SimpleNamespace(
        one=raw_save(images.one, base / "one"),
        multi=raw_save(images.multi, base / "multi"),
        two=raw_save(images.two, base / "two"),
        untagged=raw_save(images.untagged_id, base / "untagged"),
    )


@pytest.fixture
def fresh_image(rootfs):
    """Factory: a new image with a unique ID (tagged `ref`), removed after the test."""
    made = []

    def make(ref=None):
        image = import_image(rootfs, ref, label=uuid.uuid4().hex)
        made.append(image)
        return image

    yield make
    for image in made:
        docker("rmi", "-f", private_ref(image), check=False)
        docker("rmi", "-f", image, check=False)


@pytest.fixture
def cold_dir(fresh_image, tmp_path):
    """Factory: a directory holding an image the engine does not have at all."""

    def make(name="cold"):
        image = fresh_image(f"fixture/cold:{uuid.uuid4().hex[:8]}")
        directory = raw_save(image, tmp_path / name)
        docker("rmi", "-f", image)
        return directory, image

    return make


def manifest(directory):
    return json.loads((Path(directory) / "manifest.json").read_text())


# -- engines under test (tests/engines.py) ------------------------------------------

def _side_target(kind, label):
    """A side dockerd of `kind` as a test target, shared by the whole session, stopped at its end."""
    daemon = side_dockerd_or_skip(kind)
    yield Target(label, "docker", daemon.env(), daemon)
    daemon.stop()


@pytest.fixture(scope="session")
def side20():
    yield from _side_target("20.10", "dockerd 20.10 (side)")


@pytest.fixture(scope="session")
def docker26():
    yield from _side_target("26", "Docker 26 classic store")


@pytest.fixture(scope="session")
def docker26c():
    yield from _side_target("26-containerd", "Docker 26 containerd store")


@pytest.fixture(scope="session")
def podman(tmp_path_factory):
    try:
        env = podman_env(tmp_path_factory.mktemp("podman"))
    except Unavailable as why:
        pytest.skip(str(why))
    target = Target("podman", "podman", env)
    yield target
    target.remove(*target.created)


@pytest.fixture(scope="session")
def main_docker(docker_engine):
    """The daemon the rest of the suite uses (conftest's `docker`)."""
    target = Target("main docker daemon", "docker", dict(os.environ))
    yield target
    target.remove(*target.created)


# -- registries (tests/registry.py) ---------------------------------------------------

from registry import BlobProxy, RegistryServer, push_platform_index, registry_or_skip  # noqa: E402


def _registry(kind):
    server = registry_or_skip(kind)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_anon():
    """Plain HTTP, no auth."""
    yield from _registry("anonymous")


@pytest.fixture(scope="session")
def registry_tls():
    """HTTPS (registry_tls.ca_cert) + Basic auth (registry_tls.credentials)."""
    yield from _registry("basic-tls")


@pytest.fixture(scope="session")
def registry_token():
    """HTTPS + token auth; registry_token.token_server holds users and grants."""
    yield from _registry("token")


@pytest.fixture(scope="session")
def registry_identity():
    """HTTPS + token auth whose token server gives refresh tokens to offline requests, so
    `docker login` stores an identitytoken (see TokenServer in tests/registry.py)."""
    server = RegistryServer("token", label="registry (token, identity tokens)", identity_tokens=True)
    try:
        server.start()
    except Unavailable as why:
        pytest.fail(f"{why} (tests/provision.sh installs it)")
    yield server
    server.stop()


@pytest.fixture
def blob_proxy():
    """Factory: blob_proxy(registry, name=None, storage_name=None) -> a started BlobProxy in
    front of it, stopped after the test."""
    proxies = []

    def make(registry, **options):
        proxies.append(BlobProxy(registry, **options).start())
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.stop()


# -- a forward proxy and registries known by names only it resolves (tests/proxy.py) ----------

from proxy import AUTH_NAME, TEST_NAMES, SquidProxy  # noqa: E402


def _named_registry(kind, **options):
    """No skip: these exist for the proxy tests, which must not pass without them."""
    server = RegistryServer(kind, label=f"registry ({kind}, by name)", names=TEST_NAMES, **options)
    try:
        server.start()
    except Unavailable as why:
        pytest.fail(f"{why} (tests/provision.sh installs it)")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_named_anon():
    """Plain HTTP, no auth, by the names too (for HTTP_PROXY: squid sees whole requests)."""
    yield from _named_registry("anonymous")


@pytest.fixture(scope="session")
def registry_named_tls():
    """basic-tls, its certificate naming TEST_NAMES, its CA in certs.d for NAME:PORT."""
    yield from _named_registry("basic-tls")


@pytest.fixture(scope="session")
def registry_named_token():
    """token, as registry_named_tls, and its realm https://auth.proxytest:PORT/token: only a
    client going through the proxy reaches the token server (fill it through the proxy too:
    skopeo_copy(..., env=proxy.env()); docker cannot)."""
    yield from _named_registry("token", realm_name=AUTH_NAME)


@pytest.fixture(scope="session")
def shared_squid():
    """A plain SquidProxy for the whole session (squid takes 2 s to stop): call its forget()
    before the requests you look at."""
    with SquidProxy(label="squid (shared)") as proxy:
        yield proxy


@pytest.fixture
def squid_proxy():
    """Factory: squid_proxy(hosts=TEST_NAMES, users=None, refuse=False) -> a started
    SquidProxy, stopped after the test."""
    proxies = []

    def make(**options):
        proxies.append(SquidProxy(**options))
        return proxies[-1].start()

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def platform_index(registry_anon, rootfs, tmp_path_factory):
    """A two-platform index in registry_anon, pushed by podman (see push_platform_index)."""
    return push_platform_index(registry_anon, f"index-{uuid.uuid4().hex[:8]}/multi:1", rootfs,
                               tmp_path_factory.mktemp("platform-index"))
