"""docker-dir-mirror docker://NAME PARENT: tags of a registry repository, each into PARENT/TAG
(issue 28, item 6: a Docker Hub organization backed up before its retention rules remove
images, as datalad-container's containers-add-dhub does).

Images on one base are built and pushed by docker to the real registry (tests/registry.py);
docker-dir-mirror pulls them through BlobProxy, which counts every request and byte, pages
the tag list and holds requests. distribution 2.8.2 sends the whole tag list whatever the
client asks (it ignores n and last: measured), so the pages of the OCI distribution spec
(distribution 3, Harbor, Quay, GHCR, Docker Hub) come from BlobProxy.page_tags, which pages
the registry's own list. Tag lists no registry sends come from test_pull's HostileRegistry.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

import registry as registry_module
from conftest import BIN, REPO, cli, cli_on_tty, docker, image_id_of, import_image, one_line_error, private_ref
from test_annex_remote import Shell, datalad_dataset, present_here
from test_pull import host_of, hostile_registry, isolated_env, trusted  # noqa: F401 (a fixture)
from test_store import other_file_system, store_files  # noqa: F401 (other_file_system: a fixture)

from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CANT_WRITE, EXIT_ENGINE_UNAVAILABLE, EXIT_PARTIAL, EXIT_SELECTION,
                               EXIT_USAGE)
from docker_dir.registry.client import Registry

MiB = 1 << 20
NO_ENGINE = {"PATH": "/nonexistent"}
TAGS = ["1.0", "1.1", "2.0", "latest"]  # sorted: the order they are saved in
COUNTS = re.compile(r"^docker-dir-mirror: \S+ into \S+: (\d+) tag\(s\) saved, (\d+) skipped(?: \([^)]*\))?, "
                    r"(\d+) failed; ", re.M)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mirror(*args, env=None, store=None):
    env = dict(NO_ENGINE if env is None else env)
    if store is not None:
        env["DOCKER_DIR_STORE"] = str(store)
    return cli("docker-dir-mirror", *args, env=env)


def counts(proc):
    """(saved, skipped, failed) of the summary line, which must be there once."""
    found = COUNTS.findall(proc.stderr)
    assert len(found) == 1, proc.stderr
    return tuple(int(n) for n in found[0])


def dir_id(directory):
    proc = cli("docker-dir-id", directory)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def verified(directory):
    proc = cli("docker-dir-id", "--verify", directory)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def tree_digest(directory):
    import hashlib

    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def blob_gets(proxy):
    """The digests of the blobs fetched through the proxy, each as many times as it was."""
    return Counter(r.path.rsplit("/", 1)[1] for r in proxy.storage_requests if r.method == "GET")


def manifests_asked(proxy):
    return [r.path.rsplit("/", 1)[1] for r in proxy.requests if "/manifests/" in r.path]


# -- the repository: four tags on one base ------------------------------------------------------

@pytest.fixture(scope="module")
def tagged(docker_engine, rootfs, tmp_path_factory, registry_anon):
    """A repository of registry_anon with tags 1.0, 1.1, 2.0 and latest (the image of 2.0):
    images on one base (busybox and 2 MiB), each with a layer of its own."""
    work = tmp_path_factory.mktemp("tagged")
    build_env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    base = f"{unique('docker-dir-mirror/base')}:1"
    (work / "base").mkdir()
    shutil.copytree(rootfs, work / "base" / "rootfs", symlinks=True)
    (work / "base" / "big.bin").write_bytes(os.urandom(2 * MiB))
    (work / "base" / "Dockerfile").write_text('FROM scratch\nCOPY rootfs/ /\nCOPY big.bin /big.bin\nCMD ["sh"]\n')
    docker("build", "-q", "-t", base, str(work / "base"), env=build_env)
    repo = unique("mirror/app")
    refs = {}
    try:
        for tag in TAGS[:3]:
            context = work / tag
            context.mkdir()
            (context / "own.bin").write_bytes(os.urandom(200_000))
            (context / "Dockerfile").write_text(f"FROM {base}\nCOPY own.bin /{tag}.bin\n")
            refs[tag] = f"{unique('docker-dir-mirror/app')}:{tag}"
            docker("build", "-q", "-t", refs[tag], str(context), env=build_env)
            registry_anon.push(refs[tag], f"{repo}:{tag}")
        refs["latest"] = refs["2.0"]
        registry_anon.push(refs["latest"], f"{repo}:latest")
        tags = {}
        for tag in TAGS:
            manifest = registry_anon.manifest(repo, tag)
            layers = [layer["digest"] for layer in manifest.json["layers"]]
            tags[tag] = SimpleNamespace(id=image_id_of(refs[tag]), manifest=manifest, layers=layers, own=layers[-1],
                                        blobs=[manifest.json["config"]["digest"], *layers])
        yield SimpleNamespace(registry=registry_anon, repo=repo, tags=tags, base_layers=tags["1.0"].layers[:-1],
                              blobs={blob for image in tags.values() for blob in image.blobs},
                              sizes={d["digest"]: d["size"] for image in tags.values()
                                     for d in [image.manifest.json["config"], *image.manifest.json["layers"]]})
    finally:
        for ref in [*refs.values(), base]:
            docker("rmi", "-f", ref, check=False)


@pytest.fixture
def copied(tagged):
    """A repository of its own with tagged's tags, for a test to damage: its blobs mounted from
    tagged's repository, its manifests put anew (the registry's own API)."""
    registry, repo = tagged.registry, unique("mirror/copy")
    for blob in tagged.blobs:
        mounted = registry.request("POST", f"/v2/{repo}/blobs/uploads/?mount={blob}&from={tagged.repo}", data=b"")
        assert mounted.status == 201, mounted.body
    for tag, image in tagged.tags.items():
        put = registry.request("PUT", f"/v2/{repo}/manifests/{tag}", data=image.manifest.raw,
                               headers={"Content-Type": image.manifest.media_type})
        assert put.status == 201, put.body
    return SimpleNamespace(registry=registry, repo=repo)


# -- 1. every tag, each shared layer fetched once -------------------------------------------------

@pytest.mark.parametrize("store", ["on", "none", "elsewhere"])
def test_every_tag_into_its_own_directory_each_shared_layer_fetched_once(store, tagged, blob_proxy, blob_store,
                                                                         request, tmp_path):
    """The blob store on PARENT's file system; switched off; on another file system (the last
    two: a temporary store in PARENT, removed at the end, the directories keeping their links)."""
    proxy = blob_proxy(tagged.registry)
    parent = tmp_path / "mirror"
    chosen = {"on": None, "none": "none"}[store] if store != "elsewhere" else \
        request.getfixturevalue("other_file_system") / "store"
    proc = mirror(f"docker://{proxy.host}/{tagged.repo}", parent, store=chosen)
    assert proc.returncode == 0, proc.stderr
    assert counts(proc) == (4, 0, 0)
    assert sorted(os.listdir(parent)) == TAGS  # nothing else: no temporary store, no temp dir
    for tag, image in tagged.tags.items():
        assert verified(parent / tag) == image.id
    fetched = blob_gets(proxy)
    assert set(fetched) == tagged.blobs and set(fetched.values()) == {1}, fetched
    sent = sum(r.bytes_out for r in proxy.storage_requests)
    assert sent == sum(tagged.sizes.values())  # each blob's bytes went over the wire once
    for hexd in (digest[7:] for digest in tagged.base_layers):  # one file in every directory
        assert len({os.stat(parent / tag / "blobs" / "sha256" / hexd).st_ino for tag in TAGS}) == 1
    if store == "on":
        assert {digest[7:] for digest in tagged.blobs} <= set(store_files(blob_store))
        assert "from the blob store" in proc.stderr
    else:
        assert store_files(blob_store) == {} and "shared between the tags" in proc.stderr
    elsewhere = [line for line in proc.stderr.splitlines() if "on another file system" in line]
    if store == "elsewhere":
        assert len(elsewhere) == 1 and str(chosen) in elsewhere[0] and store_files(chosen) == {}
    else:
        assert elsewhere == []


@pytest.mark.parametrize("options, expected", [
    (["--tag", "1.0", "--tag", "latest"], ["1.0", "latest"]),
    (["--tags-matching", "1.*"], ["1.0", "1.1"]),
    (["--tags-matching", "[2l]*", "--tag", "1.1"], ["1.1", "2.0", "latest"]),
])
def test_a_list_of_tags_and_a_pattern(options, expected, tagged, tmp_path):
    parent = tmp_path / "mirror"
    proc = mirror(*options, f"docker://{tagged.registry.host}/{tagged.repo}", parent)
    assert proc.returncode == 0, proc.stderr
    assert counts(proc) == (len(expected), 0, 0)
    assert sorted(os.listdir(parent)) == expected
    assert {tag: dir_id(parent / tag) for tag in expected} == {tag: tagged.tags[tag].id for tag in expected}


def test_a_tag_list_in_pages(tagged, blob_proxy, tmp_path):
    proxy = blob_proxy(tagged.registry)
    proxy.page_tags(1)
    proc = mirror(f"docker://{proxy.host}/{tagged.repo}", tmp_path / "mirror")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "mirror")) == TAGS
    asked = [r.query for r in proxy.requests if r.path.endswith("/tags/list")]
    assert asked == ["", "last=1.0&n=1", "last=1.1&n=1", "last=2.0&n=1"]


@pytest.mark.parametrize("size", [2, 3, 4, 100])
def test_list_tags_follows_the_pages(size, tagged, blob_proxy):
    proxy = blob_proxy(tagged.registry)
    proxy.page_tags(size)
    with Registry(proxy.host) as client:
        client.log_in(tagged.repo)
        assert client.list_tags(tagged.repo) == TAGS
    assert len([r for r in proxy.requests if r.path.endswith("/tags/list")]) == -(-len(TAGS) // size)


# -- 2. a tag that fails, and refusals ------------------------------------------------------------

def test_a_tag_that_fails_is_said_and_the_others_land(tagged, copied, blob_proxy, tmp_path):
    """Tag 1.1's own layer is gone from the repository (deleted, as retention rules do)."""
    lost = tagged.tags["1.1"].own
    copied.registry.delete_blob(copied.repo, lost)
    proxy = blob_proxy(tagged.registry)
    parent = tmp_path / "mirror"
    proc = mirror(f"docker://{proxy.host}/{copied.repo}", parent)
    assert proc.returncode == EXIT_PARTIAL, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("docker-dir-mirror: 1.1: ")]
    assert len(said) == 1 and lost in said[0] and "HTTP 404" in said[0], proc.stderr
    assert counts(proc) == (3, 0, 1) and "Traceback" not in proc.stderr
    assert sorted(os.listdir(parent)) == ["1.0", "2.0", "latest"]
    for tag in ("1.0", "2.0", "latest"):
        assert verified(parent / tag) == tagged.tags[tag].id

    proxy.forget()
    again = mirror("-q", f"docker://{proxy.host}/{copied.repo}", parent)
    assert again.returncode == EXIT_PARTIAL
    assert again.stderr.splitlines() == said  # -q: the failure still, and nothing else
    assert manifests_asked(proxy) == ["1.1"]  # the tags saved are not asked for again


@pytest.mark.parametrize("case, code, said", [
    ("unknown repository", EXIT_SELECTION, "has no repository"),
    ("every tag deleted", EXIT_SELECTION, "lists no tags; nothing to mirror"),
    ("unknown tag", EXIT_SELECTION, "has no tag 9.9"),
    ("pattern matching nothing", EXIT_SELECTION, "no tag of"),
    ("unreachable registry", EXIT_ENGINE_UNAVAILABLE, "cannot connect"),
    ("a tag in the source", EXIT_USAGE, "without tag or digest"),
    ("PARENT is a file", EXIT_CANT_WRITE, "is not a directory"),
    ("--annex-urls outside git-annex", EXIT_USAGE, "needs DIR inside a git-annex repository"),
])
def test_refusals_are_one_line_and_write_nothing(case, code, said, tagged, request, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    parent = out / "mirror"
    source = f"docker://{tagged.registry.host}/{tagged.repo}"
    env = None
    if case == "unknown repository":
        args = [f"docker://{tagged.registry.host}/{unique('no/such')}", parent]
    elif case == "every tag deleted":  # distribution then lists "tags": null
        copied = request.getfixturevalue("copied")
        for digest in {image.manifest.digest for image in tagged.tags.values()}:
            assert copied.registry.request("DELETE", f"/v2/{copied.repo}/manifests/{digest}").status == 202
        args = [f"docker://{copied.registry.host}/{copied.repo}", parent]
    elif case == "unknown tag":
        args = ["--tag", "1.0", "--tag", "9.9", source, parent]
    elif case == "pattern matching nothing":
        args = ["--tags-matching", "v*", source, parent]
    elif case == "unreachable registry":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # closed again: nothing listens there
        args = [f"docker://127.0.0.1:{port}/x/y", parent]
    elif case == "a tag in the source":
        args = [source + ":1.0", parent]
    elif case == "PARENT is a file":
        parent.write_text("")
        args = [source, parent]
    else:
        args, env = ["--annex-urls", source, parent], dict(os.environ)
    line = one_line_error(mirror(*args, env=env), code)
    assert said in line
    assert os.listdir(out) == (["mirror"] if case == "PARENT is a file" else [])


def nested(depth):
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("case, said", [
    ("huge", "larger than 16 MiB"),
    ("not JSON", "not valid JSON"),
    ("nested past any parser", "not valid JSON"),
    ("no list of tags", "without a list of tags"),
    ("a tag that is a path", "which is not a valid tag"),
    ("a page that adds no tag", "adds no tag but points to another page"),
    ("a next page elsewhere", "for its next page"),
])
def test_hostile_tag_lists(case, said, hostile_registry, tmp_path):
    path = "/v2/hostile/repo/tags/list"
    json_type = "application/json"
    page = {"name": "hostile/repo", "tags": ["1.0", "2.0"]}
    elsewhere = '<http://elsewhere.example/v2/x/tags/list?last=2.0>; rel="next"'
    routes = {
        "huge": {path: (json_type, b'{"tags":["a"' + b',"b"' * (5 * MiB) + b"]}")},
        "not JSON": {path: (json_type, b"<html>tags</html>")},
        "nested past any parser": {path: (json_type, b'{"tags":%s}' % nested(100000))},
        "no list of tags": {path: (json_type, b'{"tags":"1.0"}')},
        "a tag that is a path": {path: (json_type, json.dumps({"tags": ["1.0", "../../etc"]}).encode())},
        # the server ignores the query: the next page is this one again
        "a page that adds no tag": {path: (200, {"Content-Type": json_type,
                                                 "Link": f'<{path}?last=2.0&n=2>; rel="next"'},
                                           json.dumps(page).encode())},
        "a next page elsewhere": {path: (200, {"Content-Type": json_type, "Link": elsewhere},
                                         json.dumps(page).encode())},
    }[case]
    server = hostile_registry(routes)
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(mirror(f"docker://{server.host}/hostile/repo", out / "mirror"), EXIT_BAD_DIR)
    assert said in line and server.host in line
    assert os.listdir(out) == []


# -- 3. running it again ------------------------------------------------------------------------

def test_run_again_adds_only_the_new_tags_and_force_fetches_nothing_again(tagged, blob_proxy, tmp_path):
    proxy = blob_proxy(tagged.registry)
    source, parent = f"docker://{proxy.host}/{tagged.repo}", tmp_path / "mirror"
    first = mirror("--tag", "1.0", source, parent)
    assert first.returncode == 0 and counts(first) == (1, 0, 0), first.stderr
    kept = tree_digest(parent / "1.0"), os.stat(parent / "1.0").st_ino

    proxy.forget()
    second = mirror(source, parent)
    assert second.returncode == 0 and counts(second) == (3, 1, 0), second.stderr
    assert "1 skipped (already there; --force replaces them)" in second.stderr
    assert sorted(manifests_asked(proxy)) == ["1.1", "2.0", "latest"]
    assert (tree_digest(parent / "1.0"), os.stat(parent / "1.0").st_ino) == kept
    trees = {tag: tree_digest(parent / tag) for tag in TAGS}

    proxy.forget()
    forced = mirror("--force", source, parent)
    assert forced.returncode == 0 and counts(forced) == (4, 0, 0), forced.stderr
    assert blob_gets(proxy) == Counter()  # each blob taken from the directory it replaces, or the store
    assert {tag: tree_digest(parent / tag) for tag in TAGS} == trees
    assert sorted(os.listdir(parent)) == TAGS


# -- 4. signals -----------------------------------------------------------------------------------

@contextlib.contextmanager
def manifest_held(monkeypatch, tag):
    """The proxy holds the GET of tag `tag`'s manifest until the block ends: the mirror is
    then surely saving that tag (its build directory made, waiting in its main thread)."""
    original = registry_module._ProxyHandler.do_GET
    asked, release = threading.Event(), threading.Event()

    def held(handler):
        if handler.command == "GET" and handler.path.endswith(f"/manifests/{tag}"):
            asked.set()
            release.wait(120)
        return original(handler)

    monkeypatch.setattr(registry_module._ProxyHandler, "do_GET", held)
    try:
        yield asked
    finally:
        release.set()


def leftovers(parent):
    return sorted(name for name in os.listdir(parent) if name.startswith("."))


@pytest.mark.parametrize("store", ["on", "none"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_mid_mirror_keeps_the_tags_saved_and_no_half_tag(signum, store, tagged, blob_proxy, tmp_path,
                                                                  monkeypatch):
    proxy = blob_proxy(tagged.registry)
    source, parent = f"docker://{proxy.host}/{tagged.repo}", tmp_path / "mirror"
    env = dict(NO_ENGINE, DOCKER_DIR_STORE="none" if store == "none" else os.environ["DOCKER_DIR_STORE"])
    with manifest_held(monkeypatch, "1.1") as asked:
        proc = subprocess.Popen([sys.executable, str(BIN / "docker-dir-mirror"), source, str(parent)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert asked.wait(60), "the mirror never asked for tag 1.1"
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert leftovers(parent), "a killed mirror leaves its temp dirs: nothing could remove them"
    else:
        assert (proc.returncode, out) == (128 + signum, "")
        assert err.splitlines() == [f"docker-dir-mirror: interrupted by {signum.name} while saving tag 1.1 (2 of 4); "
                                    "the 1 tag(s) saved before stay: run it again to add the rest"], err
        assert leftovers(parent) == []
    assert sorted(name for name in os.listdir(parent) if not name.startswith(".")) == ["1.0"]
    assert verified(parent / "1.0") == tagged.tags["1.0"].id

    again = mirror(source, parent, env=env)
    assert again.returncode == 0 and counts(again) == (3, 1, 0), again.stderr
    assert sorted(os.listdir(parent)) == TAGS  # what the killed one left is gone


# -- 5. what the terminal shows -------------------------------------------------------------------

def test_one_progress_line_and_a_failure_on_a_line_of_its_own(tagged, copied, tmp_path):
    copied.registry.delete_blob(copied.repo, tagged.tags["1.1"].own)
    source = f"docker://{copied.registry.host}/{copied.repo}"
    status, output = cli_on_tty("docker-dir-mirror", source, tmp_path / "mirror", env=NO_ENGINE)
    text = output.decode()
    assert status == EXIT_PARTIAL, text
    assert "pulling" not in text  # the saves' own progress lines are folded into the mirror's
    # the failure clears the live line and takes it; the progress goes on below it
    failure = "\r\x1b[Kdocker-dir-mirror: 1.1: "
    assert text.count(failure) == 1, text
    before, after = text.split(failure)
    progress, summary, end = after.split("\r\n", 1)[1].split("\r\n")
    label = f"mirroring {source}, tag "
    updates = [u for u in (before + "\r" + progress).split("\r") if u]
    assert updates and all(u.startswith(label) and u.endswith("\x1b[K") for u in updates), updates
    assert updates[-1].startswith(f"{label}4 of 4 (latest): ")
    assert summary.startswith(f"docker-dir-mirror: {source} into ") and "3 tag(s) saved" in summary and end == ""


# -- 6. logins, DataLad ---------------------------------------------------------------------------

def test_a_login_that_may_only_pull_lists_the_tags(docker_engine, rootfs, registry_token, tmp_path):
    """distribution with token auth: the scope repository:NAME:pull covers the tag list."""
    repo = unique("mirror/private")
    ref = f"{unique('docker-dir-mirror/small')}:1"
    image = import_image(rootfs, ref, label=uuid.uuid4().hex)
    try:
        for tag in ("a", "b"):
            registry_token.push(ref, f"{repo}:{tag}")
    finally:
        docker("rmi", "-f", image, check=False)
    server = registry_token.token_server
    user = unique("reader")
    password = server.add_user(user)
    server.grant(user, repo, "pull")
    env = isolated_env(tmp_path)
    env["REGISTRY_AUTH_FILE"] = str(registry_token.auth_file(tmp_path / "auth.json", (user, password)))
    with trusted(registry_token.ca_cert, registry_token.host, host_of(server.url)):
        server.requests.clear()
        proc = mirror(f"docker://{registry_token.host}/{repo}", tmp_path / "mirror", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "mirror")) == ["a", "b"]
    assert dir_id(tmp_path / "mirror" / "a") == image
    asked = [r for r in server.requests if r.scopes]
    assert asked and all(r.user == user and r.status == 200 for r in asked)
    assert {scope for r in asked for scope in r.scopes} == {f"repository:{repo}:pull"}


def readme_backup_example(source):
    """The README's DataLad backup example, run in the dataset, on `source`."""
    text = (REPO / "README.md").read_text().split("Backing up a repository's images into a DataLad dataset", 1)[1]
    lines = text.split("```sh\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert lines[0] == "cd mydata" and lines[-1].startswith("datalad containers-run ")
    return "\n".join(lines[1:-1]).replace("docker://org/app", source)


def test_readme_backup_into_a_dataset_then_run_drop_and_get_back(tagged, tmp_path):
    """PARENT in a DataLad dataset, as the README shows it: each tag annexed with its layers
    linked to the registry and added as a container; one runs; `datalad drop` frees the layers
    and `datalad get` fetches them back from the registry."""
    shell = Shell(tmp_path)
    dataset = datalad_dataset(tmp_path / "ds", shell)
    proc = shell.ok("sh", "-euc", readme_backup_example(f"docker://{tagged.registry.host}/{tagged.repo}"),
                    cwd=dataset)
    assert counts(proc) == (4, 0, 0)
    layers = sum(len(image.layers) for image in tagged.tags.values())
    assert f"annexed: {layers} layer(s) linked to their registry, 0 kept only in the annex" in proc.stderr
    assert sorted(os.listdir(dataset / "images" / "app")) == TAGS
    listed = shell.ok("datalad", "containers-list", cwd=dataset).stdout
    assert all(f"app-{name} " in listed for name in ("1-0", "1-1", "2-0", "latest")), listed
    assert shell.ok("git", "status", "--porcelain", cwd=dataset).stdout == ""
    try:
        shell.ok("datalad", "containers-run", "-n", "app-1-1", "--output", "size.txt",
                 "sh -c 'wc -c < /1.1.bin > size.txt'", cwd=dataset)
    finally:
        docker("rmi", private_ref(tagged.tags["1.1"].id), check=False)
    assert (dataset / "size.txt").read_text().strip() == "200000"

    shell.ok("git", "annex", "drop", "images", cwd=dataset)
    assert present_here(shell, dataset, "images") == []
    shell.ok("datalad", "get", "images", cwd=dataset)
    for tag, image in tagged.tags.items():
        assert shell.ok("docker-dir-id", "--verify", f"images/app/{tag}", cwd=dataset).stdout.strip() == image.id
