"""git-annex-remote-docker-dir and --annex-urls with real git-annex, DataLad and the real
registries of tests/registry.py: layers git-annex drops and gets back from a registry.

git-annex starts the special remote by name, so every command runs with the checkout's
bin/ first on PATH (tool_env, as test_datalad.py does), and with a private $DOCKER_CONFIG
(no login of root's reaches a registry unless a test writes one).
"""
import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import count_events, docker, manifest, one_line_error, private_ref
from test_buildsystems import tool_env
from test_datalad import IDENTITY

from docker_dir.errors import EXIT_NO_PERMISSION
from docker_dir.registry.reference import blob_url

REMOTE = "docker-dir"
READ_ONLY = "docker-dir's registry remote is read-only"
ANNEXED = re.compile(r"^(docker-dir-save|docker-dir-push): (\S+) annexed: (\d+) layer\(s\) linked to their registry "
                     r"\(git annex can drop and get them\), (\d+) kept only in the annex$", re.M)


# -- running things ----------------------------------------------------------------------

class Shell:
    """Commands with docker-dir's scripts first on PATH, a git identity and `env` on top."""

    def __init__(self, tmp_path, **env):
        logins = tmp_path / "no-logins"
        logins.mkdir(exist_ok=True)
        self.env = tool_env(**IDENTITY, DOCKER_CONFIG=str(logins), **env)

    def run(self, *args, cwd, input=None, **env):
        return subprocess.run([str(a) for a in args], cwd=cwd, env={**self.env, **env}, input=input,
                              capture_output=True, text=True, timeout=300)

    def ok(self, *args, cwd, input=None, **env):
        proc = self.run(*args, cwd=cwd, input=input, **env)
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
        return proc

    def fails(self, *args, cwd, input=None, **env):
        proc = self.run(*args, cwd=cwd, input=input, **env)
        assert proc.returncode != 0, f"{args} succeeded: {proc.stdout}{proc.stderr}"
        return proc


@pytest.fixture
def shell(tmp_path):
    return Shell(tmp_path)


def annexed_report(proc):
    """(prog, DIR, linked, kept) of the one --annex-urls line on stderr."""
    found = ANNEXED.findall(proc.stderr)
    assert len(found) == 1, proc.stderr
    prog, directory, linked, kept = found[0]
    return prog, directory, int(linked), int(kept)


# -- images and repositories ---------------------------------------------------------------

@pytest.fixture
def two_layer_image(docker_engine, rootfs, tmp_path):
    """Factory: an image docker built in two layers, busybox then a file unique to it
    (/marker), so its top layer's blob is in no other test's way; removed after the test."""
    made = []

    def build():
        context = tmp_path / f"context-{uuid.uuid4().hex[:8]}"
        shutil.copytree(rootfs, context / "rootfs", symlinks=True)
        marker = uuid.uuid4().hex
        (context / "marker").write_text(marker + "\n")
        (context / "Dockerfile").write_text('FROM scratch\nCOPY rootfs/ /\nCOPY marker /marker\n'
                                            'ENV PATH=/bin\nCMD ["sh"]\n')
        image = docker("build", "-q", str(context)).stdout.strip()
        made.append(image)
        return SimpleNamespace(id=image, marker=marker)

    yield build
    for image in made:
        docker("rmi", "-f", private_ref(image), check=False)
        docker("rmi", "-f", image, check=False)


def publish(registry, image, host=None):
    """docker push `image` to a new repository; its layers' digests as the registry lists them.
    `host`: the address docker-dir is given (a BlobProxy's), which the URLs will name."""
    repo = f"annex-{uuid.uuid4().hex[:8]}/app"
    registry.push(image.id, f"{repo}:1")
    layers = [layer["digest"] for layer in registry.manifest(repo, "1").json["layers"]]
    assert len(layers) == 2, layers
    host = host or registry.host
    return SimpleNamespace(repo=repo, host=host, ref=f"docker://{host}/{repo}:1", layers=layers,
                           urls=[blob_url(host, repo, digest) for digest in layers])


def git_annex_repo(path, shell):
    shell.ok("git", "init", "-q", path, cwd=path.parent)
    shell.ok("git", "annex", "init", "-q", cwd=path)
    (path / "images").mkdir()
    return path


def datalad_dataset(path, shell):
    shell.ok("datalad", "create", path, cwd=path.parent)
    (path / "images").mkdir()
    return path


def layer_paths(directory, layers):
    """Where the layers of digests `layers` are in DIR (the canonical layout: blobs/sha256/HEX)."""
    return [Path(directory) / "blobs" / "sha256" / digest.split(":", 1)[1] for digest in layers]


def rel(repo, paths):
    return [str(Path(p).relative_to(repo)) for p in paths]


def staged_modes(shell, repo, directory):
    """{path: git's mode} of what git tracks under `directory`: 120000 an annexed file's link,
    100644 a file in git."""
    listing = shell.ok("git", "ls-files", "-s", directory, cwd=repo).stdout
    return {line.split("\t")[1]: line.split()[0] for line in listing.splitlines()}


def whereis(shell, repo, *paths):
    """{file: {"here" or a remote's name: [its urls]}} from git annex whereis --json."""
    proc = shell.run("git", "annex", "whereis", "--json", *paths, cwd=repo)
    found = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        found[record["file"]] = {"here" if where.get("here") else where["description"].strip("[]"):
                                 where.get("urls", []) for where in record["whereis"]}
    return found


def remote_log_entries(shell, repo):
    """The git-annex branch's special remotes named docker-dir (one line per initremote)."""
    log = shell.ok("git", "show", "git-annex:remote.log", cwd=repo).stdout
    return [line for line in log.splitlines() if f" name={REMOTE} " in f" {line} "]


def present_here(shell, repo, directory):
    return shell.ok("git", "annex", "find", "--in", "here", directory, cwd=repo).stdout.split()


def annex_leftovers(shell, repo, files):
    """The annex objects of `files` (paths in the repository), and anything at all in the
    annex's tmp dir (a partial download there is what a later get would go on from)."""
    keys = {shell.ok("git", "annex", "lookupkey", path, cwd=repo).stdout.strip() for path in files}
    annex = repo / ".git" / "annex"
    objects = [p for p in (annex / "objects").rglob("*") if p.is_file() and p.name in keys]
    return objects + list((annex / "tmp").rglob("*"))


def remote_lines(proc, needle):
    """The lines of git-annex's output (stdout and stderr) that carry the remote's message
    `needle`; each must be the whole message on one line, with no traceback anywhere."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    lines = [line.strip() for line in output.splitlines() if needle in line]
    assert lines, f"{needle!r} not in:\n{output}"
    return lines


@pytest.fixture
def trusted_ca():
    """trusted_ca(registry, base): the registry's CA as BASE/HOST:PORT/ca.crt for the registry
    and its token server (base: /etc/docker/certs.d or /etc/containers/certs.d), removed after
    the test, so other tests of the session still see an untrusted registry."""
    made = []

    def trust(registry, base):
        hosts = [registry.host] + ([f"127.0.0.1:{registry.token_server.server.port}"]
                                   if registry.token_server else [])
        for host in hosts:
            directory = Path(base) / host
            directory.mkdir(parents=True)
            made.append(directory)
            shutil.copy(registry.ca_cert, directory / "ca.crt")

    yield trust
    for directory in made:
        shutil.rmtree(directory, ignore_errors=True)


# -- 2, 4: --annex-urls ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["datalad", "git-annex"])
def test_save_annex_urls_links_the_layers_and_keeps_the_json_in_git(kind, registry_anon, two_layer_image, shell,
                                                                   tmp_path):
    image = two_layer_image()
    published = publish(registry_anon, image)
    repo = (datalad_dataset if kind == "datalad" else git_annex_repo)(tmp_path / "repo", shell)

    proc = shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=repo)
    assert proc.stdout == image.id + "\n"
    assert annexed_report(proc) == ("docker-dir-save", "images/app", 2, 0)

    # Only the layers are annexed (DataLad would annex everything): the manifest, the
    # config and the layout's JSON are plain files in git.
    layers = rel(repo, layer_paths(repo / "images/app", published.layers))
    modes = staged_modes(shell, repo, "images/app")
    assert sorted(path for path, mode in modes.items() if mode == "120000") == sorted(layers)
    for small in ("manifest.json", "index.json", "oci-layout", ".gitattributes", f"blobs/sha256/{image.id[7:]}"):
        assert modes[f"images/app/{small}"] == "100644", small
    assert sorted(shell.ok("git", "annex", "find", "images/app", cwd=repo).stdout.split()) == sorted(layers)

    # Each layer: here, and at its URL in the registry, which git-annex gave the docker-dir remote.
    where = whereis(shell, repo, "images/app")
    assert set(where) == set(layers)
    for layer, url in zip(layers, published.urls):
        assert where[layer] == {REMOTE: [url], "here": []}, where[layer]
    [entry] = remote_log_entries(shell, repo)
    for setting in ("type=external", f"externaltype={REMOTE}", "encryption=none", "autoenable=true"):
        assert setting in entry.split(), entry

    # A second save into the same repository uses the remote set up by the first.
    proc = shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/again", cwd=repo)
    assert annexed_report(proc) == ("docker-dir-save", "images/again", 2, 0)
    assert remote_log_entries(shell, repo) == [entry]

    # 4: with every layer dropped (the registry is the one other copy), the ID is still there.
    shell.ok("git", "annex", "drop", "images/app", "images/again", cwd=repo)
    assert present_here(shell, repo, "images") == []
    assert shell.ok("docker-dir-id", "images/app", cwd=repo).stdout == image.id + "\n"


def test_push_annex_urls_links_the_layers_that_went_up_as_stored(registry_anon, two_layer_image, shell, tmp_path):
    image = two_layer_image()
    repo = git_annex_repo(tmp_path / "repo", shell)
    shell.ok("docker-dir-save", image.id, "images/app", cwd=repo)  # from the engine: layers uncompressed
    stored = ["sha256:" + Path(layer).name for layer in manifest(repo / "images/app")[0]["Layers"]]
    assert len(stored) == 2, stored

    # Gzipped on the way: the registry holds other bytes, so the layers stay in the annex, with no URL.
    gzipped = f"annex-{uuid.uuid4().hex[:8]}/gzipped"
    proc = shell.ok("docker-dir-push", "--annex-urls", "images/app", f"docker://{registry_anon.host}/{gzipped}:1",
                    cwd=repo)
    assert annexed_report(proc) == ("docker-dir-push", "images/app", 0, 2)
    layer_files = rel(repo, layer_paths(repo / "images/app", stored))
    assert sorted(shell.ok("git", "annex", "find", "images/app", cwd=repo).stdout.split()) == sorted(layer_files)
    assert all(where == {"here": []} for where in whereis(shell, repo, "images/app").values())
    shell.ok("git", "commit", "-q", "-m", "image", cwd=repo)
    drop = shell.fails("git", "annex", "drop", "images/app", cwd=repo)
    assert "unsafe" in drop.stdout, drop.stdout
    assert sorted(present_here(shell, repo, "images/app")) == sorted(layer_files)

    # --compress none sends them as they are stored: now linked (the same DIR, its layers annexed by then).
    plain = f"annex-{uuid.uuid4().hex[:8]}/plain"
    proc = shell.ok("docker-dir-push", "--annex-urls", "--compress", "none", "images/app",
                    f"docker://{registry_anon.host}/{plain}:1", cwd=repo)
    assert annexed_report(proc) == ("docker-dir-push", "images/app", 2, 0)
    where = whereis(shell, repo, "images/app")
    for layer, digest in zip(layer_files, stored):
        assert where[layer] == {"here": [], REMOTE: [blob_url(registry_anon.host, plain, digest)]}, where[layer]
    shell.ok("git", "annex", "drop", "images/app", cwd=repo)
    shell.ok("git", "annex", "get", "images/app", cwd=repo)
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=repo).stdout == image.id + "\n"

    # A DIR pulled from a registry goes up as it is: every layer linked to where it went.
    shell.ok("docker-dir-save", f"docker://{registry_anon.host}/{gzipped}:1", "images/pulled", cwd=repo)
    copied = f"annex-{uuid.uuid4().hex[:8]}/copied"
    proc = shell.ok("docker-dir-push", "--annex-urls", "images/pulled", f"docker://{registry_anon.host}/{copied}:1",
                    cwd=repo)
    assert annexed_report(proc) == ("docker-dir-push", "images/pulled", 2, 0)
    gzipped_layers = [layer["digest"] for layer in registry_anon.manifest(gzipped, "1").json["layers"]]
    pulled_files = rel(repo, layer_paths(repo / "images/pulled", gzipped_layers))
    where = whereis(shell, repo, "images/pulled")
    assert set(where) == set(pulled_files)
    for layer, digest in zip(pulled_files, gzipped_layers):
        assert where[layer] == {"here": [], REMOTE: [blob_url(registry_anon.host, copied, digest)]}, where[layer]
    modes = staged_modes(shell, repo, "images/pulled")  # saved without --gitattributes: push wrote it
    assert sorted(path for path, mode in modes.items() if mode == "120000") == sorted(pulled_files), modes
    assert modes["images/pulled/manifest.json"] == modes["images/pulled/.gitattributes"] == "100644", modes


# -- 1: the protocol -------------------------------------------------------------------------

def test_remote_claims_only_its_url_form_and_never_writes(registry_anon, two_layer_image, shell, tmp_path):
    image = two_layer_image()
    published = publish(registry_anon, image)
    repo = git_annex_repo(tmp_path / "repo", shell)
    shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=repo)
    (repo / "data.txt").write_text("not in any registry\n")
    shell.ok("git", "annex", "add", "data.txt", cwd=repo)
    shell.ok("git", "commit", "-q", "-m", "image and data", cwd=repo)
    layer, top = rel(repo, layer_paths(repo / "images/app", published.layers))
    data_key = shell.ok("git", "annex", "lookupkey", "data.txt", cwd=repo).stdout.strip()
    top_key = shell.ok("git", "annex", "lookupkey", top, cwd=repo).stdout.strip()

    # URLs of other forms, or of this form but malformed, are the web remote's; the documented
    # form (the same blob named in another repository) is docker-dir's.
    digest, host, repo_name = published.layers[1], registry_anon.host, published.repo
    elsewhere = blob_url(host, f"annex-{uuid.uuid4().hex[:8]}/mirror", digest)
    not_ours = [f"https://{host}/v2/{repo_name}/blobs/{digest}",
                f"docker://{host}/{repo_name}@{digest}",
                f"docker-blob://{host}/{repo_name}@sha256:{digest[7:20]}",
                f"docker-blob://{host}/{repo_name}:1",
                f"docker-blob://{host}/{repo_name.upper()}@{digest}",
                f"docker-blob://{host}@{digest}",
                f"docker-blob://{host}/{repo_name}@md5:{'0' * 32}"]
    shell.ok("git", "annex", "registerurl", "--batch", cwd=repo,
             input="".join(f"{data_key} {url}\n" for url in not_ours) + f"{top_key} {elsewhere}\n")
    where = whereis(shell, repo, "data.txt", top)
    assert where["data.txt"] == {"here": [], "web": sorted(not_ours)}, where["data.txt"]
    assert where[top] == {"here": [], REMOTE: sorted([published.urls[1], elsewhere])}, where[top]

    # CLAIMURL and CHECKURL: addurl of a blob's URL fetches it through the remote.
    shell.ok("git", "annex", "addurl", "--file", "fetched", published.urls[0], cwd=repo)
    assert (repo / "fetched").read_bytes() == registry_anon.blob(repo_name, published.layers[0])
    assert whereis(shell, repo, "fetched")["fetched"] == {"here": [], REMOTE: [published.urls[0]]}

    # Read-only: nothing goes up, nothing is removed, and git-annex says why.
    proc = shell.fails("git", "annex", "copy", "--to", REMOTE, "data.txt", cwd=repo)
    assert remote_lines(proc, READ_ONLY) == [f"{READ_ONLY}: put images in a registry with docker-dir-push, "
                                             "which records the URLs (--annex-urls)"]
    assert REMOTE not in whereis(shell, repo, "data.txt")["data.txt"]
    proc = shell.fails("git", "annex", "drop", "--from", REMOTE, layer, cwd=repo)
    assert set(remote_lines(proc, READ_ONLY)) == {f"{READ_ONLY}: it never deletes a registry's blobs"}
    assert registry_anon.blob(repo_name, published.layers[0]) is not None
    assert REMOTE in whereis(shell, repo, layer)[layer]


@pytest.mark.parametrize("kind, certs_d", [("basic-tls", "/etc/docker/certs.d"), ("token", "/etc/containers/certs.d")])
def test_credentials_and_certificates_reach_the_remote_through_git_annex(kind, certs_d, request, two_layer_image,
                                                                         trusted_ca, shell, tmp_path):
    """git-annex starts the remote as its child: $DOCKER_CONFIG and the certs.d CA must reach
    it as they reach docker-dir-save, and a refusal must reach the user as 77's message."""
    registry = request.getfixturevalue({"basic-tls": "registry_tls", "token": "registry_token"}[kind])
    trusted_ca(registry, certs_d)
    image = two_layer_image()
    published = publish(registry, image)
    good = str(registry.docker_config(tmp_path / "good"))
    wrong = str(registry.docker_config(tmp_path / "wrong", credentials=(registry.username, "not-the-password")))
    repo = git_annex_repo(tmp_path / "repo", shell)
    proc = shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=repo, DOCKER_CONFIG=good)
    assert annexed_report(proc)[2:] == (2, 0)
    shell.ok("git", "commit", "-q", "-m", "image", cwd=repo)
    layers = rel(repo, layer_paths(repo / "images/app", published.layers))

    # Without credentials the remote cannot check the registry: drop keeps everything, and says why.
    proc = shell.fails("git", "annex", "drop", "images/app", cwd=repo)
    for line in remote_lines(proc, f"docker login {registry.host}"):
        assert f"{registry.host} requires credentials for repository {published.repo} (HTTP 401" in line, line
    assert sorted(present_here(shell, repo, "images/app")) == sorted(layers)
    shell.ok("git", "annex", "drop", "images/app", cwd=repo, DOCKER_CONFIG=good)
    assert present_here(shell, repo, "images/app") == []

    # Refusals: git-annex shows the line docker-dir-save exits 77 with, and keeps nothing.
    for config, what in ((wrong, "wrong credentials"), (shell.env["DOCKER_CONFIG"], "no credentials")):
        save = shell.run("docker-dir-save", published.ref, tmp_path / "refused", cwd=repo, DOCKER_CONFIG=config)
        message = one_line_error(save, EXIT_NO_PERMISSION).split(": ", 1)[1]
        proc = shell.fails("git", "annex", "get", "images/app", cwd=repo, DOCKER_CONFIG=config)
        assert set(remote_lines(proc, f"docker login {registry.host}")) == {message}, what
        assert registry.password not in proc.stdout + proc.stderr
        assert annex_leftovers(shell, repo, layers) == [], what

    shell.ok("git", "annex", "get", "images/app", cwd=repo, DOCKER_CONFIG=good)
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=repo).stdout == image.id + "\n"


# -- 3: the round trip -------------------------------------------------------------------------

def test_datalad_round_trip_through_the_registry(registry_anon, blob_proxy, two_layer_image, shell, tmp_path):
    image = two_layer_image()
    proxy = blob_proxy(registry_anon)  # its logs show what git-annex fetched
    published = publish(registry_anon, image, host=proxy.host)
    origin = datalad_dataset(tmp_path / "origin", shell)
    shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=origin)
    shell.ok("datalad", "containers-add", "app", "-i", "images/app", "--call-fmt", "docker-dir-exec {img} {cmd}",
             cwd=origin)
    shell.ok("datalad", "save", "-m", "the app image, its layers in the registry", cwd=origin)
    layers = rel(origin, layer_paths(origin / "images/app", published.layers))

    # No other copy anywhere, numcopies 1 (git-annex's default, set to be sure): the registry
    # is the copy drop counts.
    shell.ok("git", "annex", "numcopies", "1", cwd=origin)
    shell.ok("datalad", "drop", "images/app", cwd=origin)
    assert present_here(shell, origin, "images/app") == []

    # A clone enables the remote by itself (autoenable) and gets the layers from the registry.
    clone = tmp_path / "clone"
    shell.ok("datalad", "clone", origin, clone, cwd=tmp_path)
    enabled = shell.run("git", "config", f"remote.{REMOTE}.annex-externaltype", cwd=clone).stdout.strip()
    assert enabled == REMOTE
    # 4: nothing fetched, and the ID is there (the config and manifests came with git).
    assert present_here(shell, clone, "images/app") == []
    assert shell.ok("docker-dir-id", "images/app", cwd=clone).stdout == image.id + "\n"
    proxy.forget()
    shell.ok("datalad", "get", "images/app", cwd=clone)
    assert sorted(present_here(shell, clone, "images/app")) == sorted(layers)
    fetched = {r.path.rsplit("/", 1)[1] for r in proxy.storage_requests if r.method == "GET" and r.status == 200}
    assert fetched == set(published.layers), proxy.storage_requests
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=clone).stdout == image.id + "\n"

    # The image runs from what came back, on an engine that no longer has it.
    docker("rmi", "-f", image.id)
    since = time.time()
    assert shell.ok("docker-dir-exec", "images/app", "cat", "/marker", cwd=clone).stdout == image.marker + "\n"
    assert count_events("load", since, image=image.id) == 1
    shell.ok("datalad", "containers-run", "-n", "app", "--output", "marker.txt", "sh -c 'cat /marker > marker.txt'",
             cwd=clone)
    assert (clone / "marker.txt").read_text() == image.marker + "\n"

    # fsck --from the remote downloads and checks each blob the registry holds.
    proxy.forget()
    proc = shell.ok("git", "annex", "fsck", "--json", "--from", REMOTE, "images/app", cwd=clone)
    checked = {record["file"]: record["success"] for record in map(json.loads, proc.stdout.splitlines())}
    assert checked == {layer: True for layer in layers}, proc.stdout
    assert {r.path.rsplit("/", 1)[1] for r in proxy.storage_requests} == set(published.layers)

    # The registry loses a blob: the clone's copy is then the only one, and drop keeps it
    # (the other layer, still in the registry, goes, and comes back).
    registry_anon.delete_blob(published.repo, published.layers[1])
    proc = shell.fails("datalad", "drop", "images/app", cwd=clone)
    assert "unsafe" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert present_here(shell, clone, "images/app") == [layers[1]]
    shell.ok("datalad", "get", "images/app", cwd=clone)
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=clone).stdout == image.id + "\n"


# -- 5: faults ---------------------------------------------------------------------------------

def datalad_errors(proc):
    """{file: the lines git-annex gave DataLad for it} of the files `datalad -f json` failed on."""
    return {record["path"]: record["error_message"].splitlines()
            for record in map(json.loads, proc.stdout.splitlines())
            if record.get("type") == "file" and record.get("status") == "error"}


def test_registry_down_during_datalad_get(registry_anon, blob_proxy, two_layer_image, shell, tmp_path):
    image = two_layer_image()
    proxy = blob_proxy(registry_anon)
    published = publish(registry_anon, image, host=proxy.host)
    dataset = datalad_dataset(tmp_path / "ds", shell)
    shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=dataset)
    shell.ok("datalad", "save", "-m", "image", cwd=dataset)
    shell.ok("datalad", "drop", "images/app", cwd=dataset)
    layers = rel(dataset, layer_paths(dataset / "images/app", published.layers))

    # DataLad has git-annex retry a failed get 3 times, waiting 1 s, then 2 s: not here (git-annex
    # 10.20230126 reads annex.retrydelay, not the annex.retry-delay its manual names).
    shell.ok("git", "config", "annex.retrydelay", "0", cwd=dataset)
    proxy.stop()  # the address the URLs name no longer answers
    proc = shell.fails("datalad", "-f", "json", "get", "images/app", cwd=dataset)
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = datalad_errors(proc)
    assert sorted(errors) == sorted(str(dataset / layer) for layer in layers)
    down = (f"cannot connect to {published.host}: Connection refused; check the registry's address and that it "
            "is running")
    assert all(lines and set(lines) == {down} for lines in errors.values()), errors
    assert present_here(shell, dataset, "images/app") == []
    assert annex_leftovers(shell, dataset, layers) == []

    # The same blobs also pushed elsewhere (a second URL each): get and drop use the one that answers.
    keys = [shell.ok("git", "annex", "lookupkey", layer, cwd=dataset).stdout.strip() for layer in layers]
    shell.ok("git", "annex", "registerurl", "--batch", cwd=dataset,
             input="".join(f"{key} {blob_url(registry_anon.host, published.repo, digest)}\n"
                           for key, digest in zip(keys, published.layers)))
    shell.ok("datalad", "get", "images/app", cwd=dataset)
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=dataset).stdout == image.id + "\n"
    assert len(annex_leftovers(shell, dataset, layers)) == 2  # the look that found nothing above sees them
    shell.ok("datalad", "drop", "images/app", cwd=dataset)
    assert present_here(shell, dataset, "images/app") == []


def test_dropped_download_resumes_and_a_stale_partial_is_not_trusted(registry_anon, blob_proxy, two_layer_image,
                                                                     shell, tmp_path):
    image = two_layer_image()
    proxy = blob_proxy(registry_anon)
    published = publish(registry_anon, image, host=proxy.host)
    repo = git_annex_repo(tmp_path / "repo", shell)
    shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=repo)
    shell.ok("git", "commit", "-q", "-m", "image", cwd=repo)
    shell.ok("git", "annex", "drop", "images/app", cwd=repo)
    digest = published.layers[0]  # busybox's: about a megabyte
    [layer] = rel(repo, layer_paths(repo / "images/app", [digest]))
    cut_at = 64 << 10

    # The storage server hangs up after 64 KiB: the download goes on from there (Range).
    proxy.forget()
    fault = proxy.cut(cut_at, match=digest)
    shell.ok("git", "annex", "get", layer, cwd=repo)
    assert fault.fired == 1
    # the resumed GET is redirected to the storage host like the first, which answers 206 from there
    resumed = [r for r in proxy.storage_requests if digest in r.path and r.headers.get("range")]
    assert [(r.headers["range"], r.status) for r in resumed] == [(f"bytes={cut_at}-", 206)], proxy.storage_requests
    assert present_here(shell, repo, "images/app") == [layer]

    # What a killed transfer leaves in the annex's tmp (bytes of nothing here, as a stand-in
    # for a wrong prefix) is not resumed from: the remote starts over, the blob checks out.
    shell.ok("git", "annex", "drop", layer, cwd=repo)
    key = shell.ok("git", "annex", "lookupkey", layer, cwd=repo).stdout.strip()
    partial = repo / ".git/annex/tmp" / key
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(bytes(cut_at))
    shell.ok("git", "annex", "get", "images/app", cwd=repo)
    assert annex_leftovers(shell, repo, []) == []
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=repo).stdout == image.id + "\n"


def test_blob_whose_bytes_do_not_match_is_refused(registry_anon, blob_proxy, two_layer_image, shell, tmp_path):
    image = two_layer_image()
    proxy = blob_proxy(registry_anon)
    published = publish(registry_anon, image, host=proxy.host)
    repo = git_annex_repo(tmp_path / "repo", shell)
    shell.ok("docker-dir-save", "--annex-urls", published.ref, "images/app", cwd=repo)
    shell.ok("git", "commit", "-q", "-m", "image", cwd=repo)
    shell.ok("git", "annex", "drop", "images/app", cwd=repo)
    digest = published.layers[1]  # the layer only this test's image has
    [layer] = rel(repo, layer_paths(repo / "images/app", [digest]))
    mismatch = f"blob {digest} of {proxy.host}/{published.repo} arrived with digest sha256:"

    # Flipped on the way (the storage server the registry redirects to).
    fault = proxy.corrupt(match=digest)
    proc = shell.fails("git", "annex", "get", "images/app", cwd=repo)
    assert fault.fired
    assert all(line.endswith("the registry sent other content: try again, or tell the registry's operator")
               for line in remote_lines(proc, mismatch))
    assert annex_leftovers(shell, repo, [layer]) == []
    proxy.clear_faults()

    # Damaged in the registry's own storage: served as it is, refused the same way.
    stored = registry_anon.blob_path(digest)
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        proc = shell.fails("git", "annex", "get", "images/app", cwd=repo)
        remote_lines(proc, mismatch)
        assert annex_leftovers(shell, repo, [layer]) == []
    finally:
        stored.write_bytes(original)
    shell.ok("git", "annex", "get", "images/app", cwd=repo)
    assert len(annex_leftovers(shell, repo, [layer])) == 1  # the look that found nothing above sees it
    assert shell.ok("docker-dir-id", "--verify", "images/app", cwd=repo).stdout == image.id + "\n"
