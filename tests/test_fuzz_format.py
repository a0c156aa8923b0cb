"""Fuzz the format layer with hypothesis: hostile image directories fail cleanly, never read outside DIR.

No engine is involved: image directories are synthesized in Python with correct
digests, in both forms `docker save` writes (legacy docker-archive, and the
Docker >= 25 OCI layout with manifest.json pointing into blobs/sha256), the pure
OCI layout (index.json and blobs only, as skopeo, podman, umoci write it) and the
containers `dir:` layout (skopeo `dir:`, one image, a manifest or a list), then
mutated: wrong JSON types, NaN/Infinity, deep nesting, BOMs, invalid UTF-8,
duplicate keys, hostile paths (.., absolute, NUL, backslashes, very long),
symlinks leaving DIR (absolute and relative), symlink loops, directories or
FIFOs where files belong, index.json descriptor cycles, a forged `.git` file.

Properties:
- every failure of the API (ImageDir.select/image_id/summary/verify,
  docker_dir.image_id) is a DockerDirError whose message is one printable line;
  docker-dir-id prints exactly one line on stderr with a documented exit code;
- nothing outside DIR is ever opened (builtins.open/os.open/os.listdir are
  wrapped and every path checked), except, when DIR sits in a git repository,
  that repository; when DIR itself holds a `.git` file (a submodule), only the
  `annex/objects` of the gitdir it names; a canary file outside DIR, which the
  mutations point at, never shows up in any output, nor does its digest.

Set DOCKER_DIR_FUZZ_PROFILE=ci for a derandomized run (fixed examples).
"""
import builtins
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from conftest import REPO, cli

import docker_dir
from docker_dir.cli.common import run
from docker_dir.cli.id import PROG, main as id_main, parse as id_parse
from docker_dir.errors import (EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_SELECTION, EXIT_VERIFY, BadImageDir,
                               DockerDirError)
from docker_dir.format.imagedir import ImageDir

TOKEN = "CANARY-4f1c9b-outside-dir"
CLI_EXIT_CODES = {0, EXIT_VERIFY, EXIT_BAD_DIR, EXIT_CONTENT_MISSING, EXIT_SELECTION}
HANG_GUARD_SECONDS = 20

settings.register_profile("fuzz", max_examples=250, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                          database=DirectoryBasedExampleDatabase(str(REPO / ".pytest_cache" / "hypothesis")))
settings.register_profile("ci", parent=settings.get_profile("fuzz"), derandomize=True, database=None)
PROFILE = settings.get_profile(os.environ.get("DOCKER_DIR_FUZZ_PROFILE", "fuzz"))


def sha(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- JSON writing with hostile shapes

class Raw:
    """JSON text written verbatim (deep nesting, huge numbers)."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:30]!r}... {len(self.text)} chars)"


class Pairs:
    """An object written with its keys in this order, duplicates allowed."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __repr__(self):
        return f"Pairs({self.pairs!r})"


def encode(value):
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, (dict, Pairs)):
        pairs = value.pairs if isinstance(value, Pairs) else value.items()
        return "{" + ", ".join(json.dumps(k) + ": " + encode(v) for k, v in pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    return json.dumps(value)  # NaN, Infinity, lone surrogates (as \\ud800 escapes) included


def encode_bytes(value):
    return encode(value).encode()


# ---------------------------------------------------------------- base layouts, as docker save writes them

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"


class Layout:
    """An image directory in memory: JSON documents by role, raw files, symlinks."""

    def __init__(self, form):
        self.form = form
        self.docs = {}      # role -> [relpath, object]
        self.raw = {}       # relpath -> bytes
        self.links = {}     # relpath -> symlink target
        self.tags = []
        self.config_hex = []

    def add_doc(self, role, relpath, obj):
        self.docs[role] = [relpath, obj]
        return encode_bytes(obj)

    def blob_names(self):
        return sorted(p for p in self.paths() if p.startswith("blobs/sha256/") or re.fullmatch("[0-9a-f]{64}", p))

    def paths(self):
        return sorted({p for p, _ in self.docs.values()} | set(self.raw) | set(self.links))


def make_config(diff_ids, n):
    return {"architecture": "amd64", "os": "linux", "created": f"2024-01-0{n + 1}T00:00:00Z",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"n": str(n)}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))]}


def build_legacy(n_layers, n_images, tags, repeat_link):
    lay = Layout("legacy")
    blobs = [f"layer {i} of a fuzzed image\n".encode() * (i + 1) for i in range(n_layers)]
    diff_ids = ["sha256:" + sha(b) for b in blobs]
    entries = []
    for n in range(n_images):
        config = make_config(diff_ids, n)
        hexd = sha(encode_bytes(config))
        lay.config_hex.append(hexd)
        lay.add_doc("config" if n == 0 else f"config{n}", f"{hexd}.json", config)
        layers = []
        for i, blob in enumerate(blobs):
            v1 = sha(f"{hexd} {i}".encode())
            if repeat_link and n > 0:
                # Docker writes a layer it already wrote as a relative link to the first copy.
                lay.links[f"{v1}/layer.tar"] = "../" + entries[0]["Layers"][i]
            else:
                lay.raw[f"{v1}/layer.tar"] = blob
            lay.raw[f"{v1}/VERSION"] = b"1.0"
            lay.add_doc(f"v1json{n}.{i}", f"{v1}/json", {"id": v1, "created": "2024-01-01T00:00:00Z"})
            layers.append(f"{v1}/layer.tar")
        image_tags = [t for k, t in enumerate(tags) if k % n_images == n]
        entries.append({"Config": f"{hexd}.json", "RepoTags": image_tags or None, "Layers": layers})
    lay.tags = list(tags)
    lay.add_doc("manifest", "manifest.json", entries)
    if tags:
        repos = {}
        for entry in entries:
            for tag in entry["RepoTags"] or []:
                name, _, version = tag.rpartition(":")
                repos.setdefault(name, {})[version] = entry["Layers"][-1].split("/")[0] if entry["Layers"] else ""
        lay.add_doc("repositories", "repositories", repos)
    return lay


def build_oci(n_layers, n_images, tags, nested_index):
    """The Docker >= 25 form: OCI layout plus manifest.json whose paths point into blobs/sha256."""
    lay = Layout("oci")
    blobs = [f"layer {i} of a fuzzed image\n".encode() * (i + 1) for i in range(n_layers)]
    for blob in blobs:
        lay.raw[f"blobs/sha256/{sha(blob)}"] = blob
    layer_descs = [{"mediaType": LAYER_MEDIA, "digest": "sha256:" + sha(b), "size": len(b)} for b in blobs]
    entries, index_descs = [], []
    for n in range(n_images):
        config = make_config(["sha256:" + sha(b) for b in blobs], n)
        config_bytes = lay.add_doc("config" if n == 0 else f"config{n}", "", config)
        hexd = sha(config_bytes)
        lay.docs["config" if n == 0 else f"config{n}"][0] = f"blobs/sha256/{hexd}"
        lay.config_hex.append(hexd)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": "sha256:" + hexd, "size": len(config_bytes)},
                    "layers": layer_descs}
        manifest_hex = sha(encode_bytes(manifest))
        lay.add_doc("oci_manifest" if n == 0 else f"oci_manifest{n}", f"blobs/sha256/{manifest_hex}", manifest)
        desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + manifest_hex,
                "size": len(encode_bytes(manifest))}
        image_tags = [t for k, t in enumerate(tags) if k % n_images == n]
        if nested_index:
            # Multi-platform shape: index.json -> image index blob -> manifest.
            inner = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                     "manifests": [dict(desc, platform={"architecture": "amd64", "os": "linux"})]}
            inner_hex = sha(encode_bytes(inner))
            lay.add_doc("oci_index" if n == 0 else f"oci_index{n}", f"blobs/sha256/{inner_hex}", inner)
            desc = {"mediaType": inner["mediaType"], "digest": "sha256:" + inner_hex,
                    "size": len(encode_bytes(inner))}
        for tag in image_tags or [None]:
            annotated = dict(desc)
            if tag:
                annotated["annotations"] = {"io.containerd.image.name": "docker.io/library/" + tag,
                                            "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}
            index_descs.append(annotated)
        entries.append({"Config": f"blobs/sha256/{hexd}", "RepoTags": image_tags or None,
                        "Layers": [f"blobs/sha256/{sha(b)}" for b in blobs]})
    lay.tags = list(tags)
    lay.add_doc("index", "index.json", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                        "manifests": index_descs})
    lay.add_doc("oci-layout", "oci-layout", {"imageLayoutVersion": "1.0.0"})
    lay.add_doc("manifest", "manifest.json", entries)
    if tags:
        lay.add_doc("repositories", "repositories",
                    {t.rpartition(":")[0]: {t.rpartition(":")[2]: lay.config_hex[0]} for t in tags})
    return lay


def build_containers_dir(n_layers, index):
    """The containers `dir:` layout (skopeo `dir:`, podman --format docker-dir): one
    manifest.json (Docker v2s2; with `index`, a manifest list whose instance is
    <hex>.manifest.json, as `skopeo copy --all` writes), blobs named by their hex digest,
    and the `version` file. It holds one image and no tags."""
    lay = Layout("dir")
    blobs = [f"layer {i} of a fuzzed image\n".encode() * (i + 1) for i in range(n_layers)]
    for blob in blobs:
        lay.raw[sha(blob)] = blob
    config = make_config(["sha256:" + sha(b) for b in blobs], 0)
    config_bytes = encode_bytes(config)
    lay.config_hex.append(sha(config_bytes))
    lay.add_doc("config", lay.config_hex[0], config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": "sha256:" + lay.config_hex[0], "size": len(config_bytes)},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": "sha256:" + sha(b),
                            "size": len(b)} for b in blobs]}
    if index:
        manifest_bytes = encode_bytes(manifest)
        lay.add_doc("oci_manifest", f"{sha(manifest_bytes)}.manifest.json", manifest)
        lay.add_doc("manifest", "manifest.json", {
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [{"mediaType": manifest["mediaType"], "digest": "sha256:" + sha(manifest_bytes),
                           "size": len(manifest_bytes), "platform": {"architecture": "amd64", "os": "linux"}}]})
    else:
        lay.add_doc("manifest", "manifest.json", manifest)
    lay.raw["version"] = b"Directory Transport Version: 1.1\n"
    return lay


# ---------------------------------------------------------------- strategies

TAGS = ["fuzz/a:1", "fuzz/b:latest", "docker.io/library/fuzz-c:2", "localhost/fuzz/d"]
KEYS = ["Config", "RepoTags", "Layers", "rootfs", "diff_ids", "manifests", "digest", "config", "mediaType",
        "schemaVersion", "layers", "annotations", "type", ""]
DOC_ROLES = ["manifest", "manifest", "manifest", "config", "config", "index", "index", "oci_manifest",
             "oci_index", "repositories", "oci-layout", "config1", "v1json0.0"]
LONG = "x" * 300
HOSTILE_STRINGS = [
    "", ".", "..", "/", "./", "../x", "a/../../x", "blobs/sha256/../../x", "@CANARY_ABS@", "@CANARY_REL@",
    "@FAKEGIT@/config", "x\x00y", "a\\..\\..\\x", "..\\x", LONG, "d/" * 2100 + "x", "a\nb", "\r", "\u2028",
    "\x1b[2J", "\u202e", "\ud800", "\udcff", "\ufeff", "é", "sha256:", "sha256:" + "0" * 64, "SHA256:" + "A" * 64,
    "0" * 64 + ".json", "blobs/sha256/" + "0" * 64, "manifest.json", "index.json", "./manifest.json", "blobs",
    "blobs/sha256", ".git/annex/objects/x", "sha256:" + "0" * 63 + "g", "latest", ":", "@",
]
placeholder = st.one_of(
    st.integers(0, 40).map(lambda n: f"@FILE:{n}@"),
    st.integers(0, 40).map(lambda n: f"sha256:@HEX:{n}@"),
    st.integers(0, 40).map(lambda n: f"@HEX:{n}@"),
)
hostile_string = st.one_of(st.sampled_from(HOSTILE_STRINGS), placeholder, st.text(max_size=12))
deep = st.one_of(
    st.sampled_from([50, 1000, 5000, 100_000]).map(lambda n: Raw("[" * n + "]" * n)),
    st.sampled_from([1000, 100_000]).map(lambda n: Raw('{"a": ' * n + "1" + "}" * n)),
    st.just(Raw("1" * 5000)),
    st.just(Raw("1e999999")),
    st.just(Raw("-Infinity")),
)
hostile_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_string)
hostile_value = st.one_of(
    st.recursive(hostile_scalar,
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4),
                 max_leaves=10),
    deep,
)
selector_path = st.lists(st.integers(0, 7), max_size=5)
FS_OPS = ["abs_canary", "rel_canary", "fakegit_config", "fakegit_object", "loop_self", "loop_pair",
          "dangling_abs", "dangling_annex", "dir", "dir_with_file", "fifo", "delete", "empty", "parent_is_file",
          "long_target", "abs_canary_dir_parent"]
GIT_FILES = [b"gitdir: @FAKEGIT@\n", b"gitdir: ../fakegit\n", b"gitdir: @CANARY_DIR@\n", b"gitdir: /\n",
             b"gitdir: \xff\xfe\n", b"gitdir: a\x00b\n", b"", b"\xef\xbb\xbfgitdir: ../fakegit\n",
             b"gitdir: " + b"x" * 5000 + b"\n", b"gitdir:\n", b"@LINK@@FAKEGIT@", b"@LINK@@CANARY_DIR@"]
FIELDS = ["Config", "Layers[]", "RepoTags[]", "Layers", "RepoTags", "rootfs", "diff_ids[]", "diff_ids",
          "manifests[].digest", "manifests"]
mutation = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(FIELDS), st.integers(0, 3),
              st.one_of(hostile_string, hostile_string, hostile_value)),
    st.tuples(st.just("json"), st.sampled_from(DOC_ROLES), selector_path, hostile_value),
    st.tuples(st.just("setkey"), st.sampled_from(DOC_ROLES), selector_path, st.sampled_from(KEYS), hostile_value),
    st.tuples(st.just("dupkey"), st.sampled_from(DOC_ROLES), selector_path, hostile_value, st.booleans()),
    st.tuples(st.just("bytes"), st.sampled_from(DOC_ROLES),
              st.sampled_from(["bom", "bom_twice", "utf16", "badutf8", "truncate", "nul", "crlf", "flip"]),
              st.integers(0, 1 << 16)),
    st.tuples(st.just("fs"), st.integers(0, 60), st.sampled_from(FS_OPS)),
    st.tuples(st.just("gitfile"), st.sampled_from(GIT_FILES)),
    st.tuples(st.just("cycle"), st.integers(1, 4), st.booleans()),
)
base = st.fixed_dictionaries({
    "form": st.sampled_from(["legacy", "oci", "oci-pure", "dir"]),
    "n_layers": st.integers(0, 3),
    "n_images": st.integers(1, 2),
    "tags": st.lists(st.sampled_from(TAGS), max_size=3, unique=True),
    "variant": st.booleans(),       # legacy: repeated layers as links; oci: nested image index
    "in_git": st.booleans(),        # DIR inside a git-annex repository
    "dropped": st.booleans(),       # in git: layer content dropped (dangling annex links)
})
# Integers pick one of the layout's own tags or configs, so most selections can match.
selection = st.one_of(st.none(), st.tuples(st.sampled_from(["tag", "config"]), st.integers(0, 3)),
                      st.tuples(st.sampled_from(["tag", "config"]), hostile_string))


# ---------------------------------------------------------------- materializing a mutated layout

class Scene:
    """A temporary tree: canary/ (outside DIR), fakegit/ (a gitdir a forged .git may name), DIR."""

    def __init__(self, root, in_git, dropped=False):
        self.root = Path(root)
        self.dropped = dropped
        self.canary_dir = self.root / "canary"
        self.canary_dir.mkdir()
        self.canary = self.canary_dir / "secret.json"
        # Shaped like a manifest and a config, so reading it by mistake would surface in an output.
        self.canary.write_text(json.dumps([{"Config": TOKEN + ".json", "RepoTags": [TOKEN + ":1"],
                                            "Layers": [], "rootfs": {"diff_ids": ["sha256:" + TOKEN]}}]))
        self.fakegit = self.root / "fakegit"
        (self.fakegit / "annex" / "objects").mkdir(parents=True)
        (self.fakegit / "config").write_text(self.canary.read_text())
        (self.fakegit / "annex" / "objects" / "object").write_bytes(b"an annexed object\n")
        self.repo = self.root / "repo" if in_git else None
        if in_git:
            (self.repo / ".git" / "annex" / "objects").mkdir(parents=True)
            self.dir = self.repo / "img"
        else:
            self.dir = self.root / "img"
        self.dir.mkdir()
        self.secrets = {TOKEN, sha(self.canary.read_bytes()), sha(self.canary.read_bytes())[:12]}

    def substitute(self, text, lay):
        files = lay.paths()
        hexes = [p.rsplit("/", 1)[-1] for p in lay.blob_names()] + lay.config_hex or ["0" * 64]
        text = text.replace("@CANARY_ABS@", str(self.canary)).replace("@CANARY_DIR@", str(self.canary_dir))
        text = text.replace("@CANARY_REL@", os.path.relpath(self.canary, self.dir))
        text = text.replace("@FAKEGIT@", str(self.fakegit))
        text = re.sub(r"@FILE:(\d+)@", lambda m: files[int(m.group(1)) % len(files)], text)
        return re.sub(r"@HEX:(\d+)@", lambda m: hexes[int(m.group(1)) % len(hexes)], text)

    def deep_substitute(self, value, lay):
        if isinstance(value, str):
            return self.substitute(value, lay)
        if isinstance(value, list):
            return [self.deep_substitute(v, lay) for v in value]
        if isinstance(value, dict):
            return {self.substitute(k, lay): self.deep_substitute(v, lay) for k, v in value.items()}
        if isinstance(value, Pairs):
            return Pairs([(self.substitute(k, lay), self.deep_substitute(v, lay)) for k, v in value.pairs])
        return value

    def allowed_roots(self):
        """Where reads may go: DIR; its git repository; for a `.git` file in DIR, the gitdir's annex objects."""
        roots = [os.path.realpath(self.dir)]
        dotgit = self.dir / ".git"
        if dotgit.is_symlink():
            roots.append(os.path.join(os.path.realpath(dotgit), "annex", "objects"))
        elif dotgit.is_file():
            line = dotgit.read_bytes().split(b"\n")[0].strip()
            if line.startswith(b"gitdir:") and b"\0" not in line:
                gitdir = os.path.join(os.fsencode(self.dir), line[7:].strip())
                roots.append(os.path.join(os.path.realpath(os.fsdecode(gitdir)), "annex", "objects"))
        elif self.repo is not None and not dotgit.exists():
            roots.append(os.path.realpath(self.repo))
        return roots


def descend(value, path):
    """The container reached by following `path` (indices taken modulo the number of children)."""
    for step in path:
        children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        containers = [c for c in children if isinstance(c, (dict, list))]
        if not containers:
            break
        value = containers[step % len(containers)]
    return value


def apply_field_mutation(lay, field, index, value):
    """Set one field engines and docker-dir care about: manifest entries, config rootfs, index descriptors."""
    name, _, sub = field.partition("[]")
    role = {"rootfs": "config", "diff_ids": "config", "manifests": "index"}.get(name, "manifest")
    doc = lay.docs.get(role, [None, None])[1]
    if role == "manifest":
        targets = [e for e in doc if isinstance(e, dict)] if isinstance(doc, list) else []
        target = targets[index % len(targets)] if targets else None
    elif name == "diff_ids":
        target = doc.get("rootfs") if isinstance(doc, dict) else None
    else:
        target = doc
    if not isinstance(target, dict):
        event(f"field {field}: no place for it")
        return
    if not sub and field == name:
        target[name] = value
        return
    items = target.get(name)
    if not isinstance(items, list) or not items:
        target[name] = [value]
    elif sub == ".digest" and isinstance(items[index % len(items)], dict):
        items[index % len(items)]["digest"] = value
    else:
        items[index % len(items)] = value


def apply_doc_mutation(lay, mut):
    kind, role = mut[0], mut[1]
    if role not in lay.docs:
        # Keep the mutation: aim it at a document this form has.
        roles = sorted(lay.docs)
        role = roles[sum(map(ord, role)) % len(roles)]
    relpath, obj = lay.docs[role]
    if kind == "json":
        path, value = mut[2], mut[3]
        if not path:
            lay.docs[role][1] = value
            return
        parent = descend(obj, path[:-1])
        if isinstance(parent, dict) and parent:
            parent[list(parent)[path[-1] % len(parent)]] = value
        elif isinstance(parent, list) and parent:
            parent[path[-1] % len(parent)] = value
        else:
            lay.docs[role][1] = value
    elif kind == "setkey":
        target = descend(obj, mut[2])
        if isinstance(target, dict):
            target[mut[3]] = mut[4]
        elif isinstance(target, list):
            target.append({mut[3]: mut[4]})
    elif kind == "dupkey":
        target = descend(obj, mut[2])
        if isinstance(target, dict) and target:
            key = next(iter(target))
            pairs = list(target.items())
            pairs.insert(0 if mut[4] else len(pairs), (key, mut[3]))
            replacement = Pairs(pairs)
            if target is obj:
                lay.docs[role][1] = replacement
            else:
                replace_in(obj, target, replacement)


def replace_in(tree, old, new):
    children = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, child in list(children):
        if child is old:
            tree[key] = new
            return True
        if replace_in(child, old, new):
            return True
    return False


def mutate_bytes(data, op, pos):
    pos = pos % (len(data) + 1)
    if op == "bom":
        return b"\xef\xbb\xbf" + data
    if op == "bom_twice":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + data
    if op == "utf16":
        return data.decode("utf-8", "surrogateescape").encode("utf-16", "surrogatepass")
    if op == "badutf8":
        return data[:pos] + b"\xff\xc3\x28\xed\xa0\x80" + data[pos:]
    if op == "truncate":
        return data[:pos]
    if op == "nul":
        return data[:pos] + b"\0" + data[pos:]
    if op == "crlf":
        return data.replace(b", ", b",\r\n")
    data = bytearray(data)
    if data:
        data[pos % len(data)] ^= 0x20
    return bytes(data)


def fs_mutation(scene, lay, index, op):
    """Damage one path of DIR (a file, or the parent directory of one)."""
    paths = lay.paths() + [".git/annex/objects"]
    rel = paths[index % len(paths)]
    path = scene.dir / rel
    parent = path.parent
    if op == "parent_is_file" or op == "abs_canary_dir_parent":
        if parent == scene.dir:
            event("fs: parent is DIR, skipped")
            return
        remove(parent)
        if op == "parent_is_file":
            parent.write_bytes(b"not a directory")
        else:
            parent.symlink_to(scene.canary_dir)
        return
    parent.mkdir(parents=True, exist_ok=True)
    remove(path)
    target = {
        "abs_canary": str(scene.canary),
        "rel_canary": os.path.relpath(scene.canary, parent),
        "fakegit_config": str(scene.fakegit / "config"),
        "fakegit_object": os.path.relpath(scene.fakegit / "annex" / "objects" / "object", parent),
        "loop_self": path.name,
        "dangling_abs": "/nonexistent/.git/annex/objects/XX/YY/KEY/KEY",
        "dangling_annex": os.path.relpath(scene.dir / ".git" / "annex" / "objects" / "XX" / "KEY", parent),
        "long_target": "y" * 300,
    }.get(op)
    if target is not None:
        path.symlink_to(target)
    elif op == "loop_pair":
        path.symlink_to(path.name + ".loop")
        (parent / (path.name + ".loop")).symlink_to(path.name)
    elif op == "dir":
        path.mkdir()
    elif op == "dir_with_file":
        path.mkdir()
        (path / "layer.tar").write_bytes(b"x")
    elif op == "fifo":
        os.mkfifo(path)
    elif op == "empty":
        path.write_bytes(b"")


def remove(path):
    if path.is_symlink() or path.is_file() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if child.is_symlink() or not child.is_dir() else child.rmdir()
        path.rmdir()


def add_cycle(lay, width, via_index):
    """Two image-index blobs naming each other (a descriptor cycle), fanned out `width` times."""
    first, second = sha(b"cycle-a"), sha(b"cycle-b")
    for me, other in ((first, second), (second, first)):
        lay.add_doc(f"cycle-{me[:6]}", f"blobs/sha256/{me}",
                    {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + other, "size": 1}] * width
                     + [{"digest": "sha256:" + me}]})
    if "index" in lay.docs and isinstance(lay.docs["index"][1], dict):
        descs = lay.docs["index"][1].setdefault("manifests", [])
        if isinstance(descs, list):
            descs[0 if via_index else len(descs):0] = [{"digest": "sha256:" + first}] * width


def materialize(scene, lay, mutations):
    for mut in mutations:
        if mut[0] in ("json", "setkey", "dupkey"):
            apply_doc_mutation(lay, mut)
        elif mut[0] == "field":
            apply_field_mutation(lay, mut[1], mut[2], mut[3])
        elif mut[0] == "cycle":
            add_cycle(lay, mut[1], mut[2])
    contents = dict(lay.raw)
    for relpath, obj in lay.docs.values():
        contents[relpath] = encode(scene.deep_substitute(obj, lay)).encode("utf-8", "surrogatepass")
    for mut in mutations:
        if mut[0] == "bytes" and mut[1] in lay.docs:
            relpath = lay.docs[mut[1]][0]
            contents[relpath] = mutate_bytes(contents[relpath], mut[2], mut[3])
    for relpath, data in contents.items():
        path = scene.dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for relpath, target in lay.links.items():
        (scene.dir / relpath).symlink_to(target)
    if scene.repo is not None:
        annexify(scene, lay, scene.repo / ".git" / "annex" / "objects")
    for mut in mutations:
        if mut[0] == "fs":
            try:
                fs_mutation(scene, lay, mut[1], mut[2])
            except OSError:
                event(f"fs {mut[2]}: impossible after earlier damage")
        elif mut[0] == "gitfile":
            remove(scene.dir / ".git")
            text = scene.substitute(mut[1].decode("latin-1"), lay)
            if text.startswith("@LINK@"):
                (scene.dir / ".git").symlink_to(text[6:])
            else:
                (scene.dir / ".git").write_bytes(text.encode("latin-1"))


def annexify(scene, lay, objects):
    """Move configs and layers into `objects`, leaving relative links (as git-annex does)."""
    for relpath in lay.paths():
        path = scene.dir / relpath
        if relpath in ("manifest.json", "index.json", "oci-layout", "repositories") or path.is_symlink():
            continue
        data = path.read_bytes()
        key = f"SHA256E-s{len(data)}--{sha(data)}"
        obj = objects / key[-6:-3] / key / key
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        path.unlink()
        path.symlink_to(os.path.relpath(obj, path.parent))
        if scene.dropped and (relpath.endswith("/layer.tar") or relpath in lay.raw and relpath.startswith("blobs/")):
            obj.unlink()  # `git annex drop`: the link dangles


# ---------------------------------------------------------------- watching reads

class Hang(AssertionError):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"an operation blocked for {HANG_GUARD_SECONDS} s (FIFO or device opened?)")


@contextlib.contextmanager
def watch_reads(allowed):
    """Record every path opened (builtins.open, os.open, os.listdir) that resolves outside `allowed`."""
    escapes = []
    real_open, real_os_open, real_listdir = builtins.open, os.open, os.listdir

    def check(path):
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return  # a descriptor, or a path the real call refuses anyway
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in allowed):
            escapes.append(real)

    def watched_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def watched_os_open(path, *args, **kwargs):
        check(path)
        return real_os_open(path, *args, **kwargs)

    def watched_listdir(path="."):
        check(path)
        return real_listdir(path)

    builtins.open, io.open, os.open, os.listdir = watched_open, watched_open, watched_os_open, watched_listdir
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD_SECONDS)
    # docker-dir-id does not import json on its fast path; the test must not hide what
    # the C scanner does then (it needs json.decoder to raise errors).
    json_modules = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "json"}
    try:
        yield escapes
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "json"]:
            del sys.modules[name]
        sys.modules.update(json_modules)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        builtins.open, io.open, os.open, os.listdir = real_open, real_open, real_os_open, real_listdir


# ---------------------------------------------------------------- properties

def build(scene_root, spec, mutations):
    scene = Scene(scene_root, spec["in_git"], spec["dropped"])
    if spec["form"] == "legacy":
        lay = build_legacy(spec["n_layers"], spec["n_images"], spec["tags"], spec["variant"])
    elif spec["form"] == "dir":
        lay = build_containers_dir(spec["n_layers"], spec["variant"])
    else:
        lay = build_oci(spec["n_layers"], spec["n_images"], spec["tags"], spec["variant"])
    if spec["form"] == "oci-pure":
        # As skopeo, podman, umoci and BuildKit write it: no manifest.json, tags in annotations.
        del lay.docs["manifest"]
        lay.docs.pop("repositories", None)
        lay.form = "oci-pure"
    materialize(scene, lay, mutations)
    return scene, lay


def selectors(lay, choice):
    if choice is None:
        return {}
    kind, value = choice
    if kind == "config" and isinstance(value, int):
        value = lay.config_hex[value % len(lay.config_hex)][:12 + value]
    elif isinstance(value, int):
        value = (lay.tags or TAGS)[value % len(lay.tags or TAGS)]
    return {"repo_tag" if kind == "tag" else "config": value}


def assert_clean(err):
    message = str(err)
    assert message and message.isprintable(), f"error message is not one printable line: {message!r}"
    return message


def exercise_api(directory, select_kwargs):
    """Every entry point of the format layer; returns what a user would see. Raises on unclean failures."""
    shown = []

    def attempt(fn):
        try:
            result = fn()
        except DockerDirError as err:
            shown.append(assert_clean(err))
            event(f"api: {type(err).__name__}")
            return None
        shown.append(repr(result))
        return result

    attempt(lambda: docker_dir.image_id(directory, **select_kwargs))
    entry = attempt(lambda: ImageDir(directory).select(**select_kwargs))
    event("selected an image" if entry is not None else "no image selected")
    attempt(lambda: ImageDir(directory).select())
    if entry is not None:
        attempt(entry.label)
        attempt(entry.image_id)
        summary = attempt(entry.summary)
        if summary is not None:
            shown.append(json.dumps(summary, allow_nan=False))
        attempt(entry.verify)
    return shown


def exercise_cli_in_process(directory, select_kwargs):
    shown = []
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in select_kwargs.items()] + [directory]
    for extra in ([], ["--json"], ["--verify"], ["--verify", "--json"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(PROG, id_parse, id_main, extra + argv)
        check_cli_result(code, out.getvalue(), err.getvalue(), extra)
        event(f"cli {' '.join(extra) or 'plain'}: exit {code}")
        shown += [out.getvalue(), err.getvalue()]
    return shown


def check_cli_result(code, stdout, stderr, extra):
    assert code in CLI_EXIT_CODES, (code, stderr)
    assert "Traceback" not in stderr
    if code == 0:
        assert stderr == ""
        if "--json" in extra:
            json.loads(stdout)
        else:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", stdout), stdout
    else:
        assert stdout == ""
        lines = stderr.split("\n")
        assert len(lines) == 2 and lines[1] == "" and lines[0].isprintable(), f"not one line: {stderr!r}"
        assert lines[0].startswith(PROG + ": ")


def assert_no_secret(scene, shown):
    for text in shown:
        for secret in scene.secrets:
            assert secret not in text, f"content from outside DIR shows in an output: {text[:300]!r}"


@settings(PROFILE, max_examples=300)
@given(spec=base, mutations=st.lists(mutation, max_size=4), choice=selection)
@example(spec={"form": "oci", "n_layers": 1, "n_images": 1, "tags": [], "variant": False, "in_git": False,
               "dropped": False}, mutations=[("json", "index", [], {"manifests": 1})], choice=None)
@example(spec={"form": "legacy", "n_layers": 1, "n_images": 1, "tags": [], "variant": False, "in_git": False,
               "dropped": False}, mutations=[("fs", 4, "fifo")], choice=None)
@example(spec={"form": "legacy", "n_layers": 1, "n_images": 1, "tags": [], "variant": False, "in_git": False,
               "dropped": False}, mutations=[("gitfile", GIT_FILES[0]), ("fs", 4, "fakegit_config")], choice=None)
def test_hostile_directory_fails_cleanly_and_stays_inside(spec, mutations, choice):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root:
        scene, lay = build(root, spec, mutations)
        directory, kwargs = str(scene.dir), selectors(lay, choice)
        allowed = scene.allowed_roots()
        with watch_reads(allowed) as escapes:
            shown = exercise_api(directory, kwargs)
            shown += exercise_cli_in_process(directory, kwargs)
        assert not escapes, f"opened outside DIR: {escapes}"
        assert_no_secret(scene, shown)


@settings(PROFILE, max_examples=50)
@given(spec=base, mutations=st.lists(mutation, min_size=1, max_size=3), choice=selection,
       extra=st.sampled_from([[], ["--json"], ["--verify"], ["--verify", "--json"]]))
@example(spec={"form": "legacy", "n_layers": 0, "n_images": 1, "tags": [], "variant": False, "in_git": False,
               "dropped": False}, mutations=[("bytes", "manifest", "truncate", 2)], choice=None, extra=[])
def test_cli_prints_one_line_and_documented_code(spec, mutations, choice, extra):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root:
        scene, lay = build(root, spec, mutations)
        kwargs = selectors(lay, choice)
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
        if any("\0" in a or re.search("[\ud800-\udfff]", a) for a in argv):
            argv = []  # argv cannot carry NUL or lone surrogates
        proc = cli("docker-dir-id", *extra, *argv, scene.dir, timeout=60)
        event(f"exit {proc.returncode}")
        check_cli_result(proc.returncode, proc.stdout, proc.stderr, extra)
        assert_no_secret(scene, [proc.stdout, proc.stderr])


# ---------------------------------------------------------------- the base layouts are right (so mutations start valid)

@settings(PROFILE, max_examples=60)
@given(spec=base)
def test_unmutated_layouts_read_back(spec):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root:
        scene, lay = build(root, dict(spec, dropped=False), [])
        directory = str(scene.dir)
        for n, config_hex in enumerate(lay.config_hex):
            entry = ImageDir(directory).select(config=config_hex[:12])
            assert entry.image_id() == "sha256:" + config_hex
            entry.verify()
            summary = entry.summary()
            assert summary["id"] == "sha256:" + config_hex
            assert len(summary["layers"]) == spec["n_layers"]
            if spec["form"] != "legacy":
                assert summary["manifest_digest"] is not None
        if spec["n_images"] == 1:
            assert docker_dir.image_id(directory) == "sha256:" + lay.config_hex[0]


def test_descriptor_cycles_open_each_blob_a_bounded_number_of_times(tmp_path):
    """A fan-out of index blobs naming each other must not cost width**depth reads."""
    scene = Scene(tmp_path, in_git=False)
    lay = build_oci(1, 1, [], False)
    materialize(scene, lay, [("cycle", 12, True)])
    opened = []
    real_os_open, real_open = os.open, builtins.open
    os.open = lambda path, *a, **k: opened.append(path) or real_os_open(path, *a, **k)
    builtins.open = lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
    try:
        summary = ImageDir(str(scene.dir)).select().summary()
    finally:
        os.open, builtins.open = real_os_open, real_open
    assert summary["manifest_digest"] is not None
    blobs = [p for p in opened if "/blobs/" in str(p)]
    assert len(blobs) <= 4 * len(set(map(str, blobs))), f"{len(blobs)} blob reads for {len(set(blobs))} blobs"


def test_canary_is_refused_through_absolute_and_relative_links(tmp_path):
    spec = {"form": "oci", "n_layers": 1, "n_images": 1, "tags": [], "variant": False, "in_git": False,
            "dropped": False}
    lay = build_oci(1, 1, [], False)
    config_index = lay.paths().index(f"blobs/sha256/{lay.config_hex[0]}")
    for op in ("abs_canary", "rel_canary", "abs_canary_dir_parent"):
        (tmp_path / op).mkdir()
        scene, _ = build(tmp_path / op, spec, [("fs", config_index, op)])
        try:
            ImageDir(str(scene.dir)).select().verify()
        except BadImageDir as err:
            assert "outside" in str(err)
        else:
            raise AssertionError(f"{op}: a link out of DIR was followed")


def test_annexed_submodule_is_read_through_its_git_link(tmp_path):
    """git-annex turns a submodule's .git file into a link to superproject/.git/modules/NAME;
    annexed files point through it, and must be followed there (and no further)."""
    gitdir = tmp_path / "super" / ".git" / "modules" / "img"
    (gitdir / "annex" / "objects").mkdir(parents=True)
    scene = Scene(tmp_path, in_git=False)
    (scene.dir / ".git").symlink_to(os.path.relpath(gitdir, scene.dir))
    lay = build_oci(2, 1, ["fuzz/a:1"], False)
    materialize(scene, lay, [])
    annexify(scene, lay, scene.dir / ".git" / "annex" / "objects")
    assert os.readlink(scene.dir / lay.docs["config"][0]).startswith("../../.git/annex/objects/")
    with watch_reads(scene.allowed_roots()) as escapes:
        entry = ImageDir(str(scene.dir)).select()
        entry.verify()
        assert entry.image_id() == "sha256:" + lay.config_hex[0]
    assert not escapes
    (scene.dir / "manifest.json").unlink()
    (scene.dir / "manifest.json").symlink_to(gitdir / "config-copy")
    (gitdir / "config-copy").write_bytes(scene.canary.read_bytes())
    try:
        ImageDir(str(scene.dir)).select()
    except BadImageDir as err:
        assert "outside" in str(err)
    else:
        raise AssertionError("a link into the gitdir outside annex/objects was followed")
