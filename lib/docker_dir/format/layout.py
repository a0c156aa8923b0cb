"""Read an image directory written by `docker save` (legacy or OCI + manifest.json).

Pure file reading: no subprocess, no engine. Every path taken from a manifest
is checked before it is opened, and symlinks are followed only while their
target stays inside the enclosing git work tree (git-annex keeps content in
.git/annex/objects, or in a submodule's gitdir/annex/objects) or, outside git,
inside the image directory.
"""
import os
import stat

from ..errors import BadImageDir, ContentMissing, SelectionError, VerifyError

_HEX_DIGITS = frozenset("0123456789abcdef")
GET_CONTENT_HINT = "run 'datalad get {d}' or 'git annex get {d}'"
_CHUNK = 1 << 20


def short(digest_hex):
    return digest_hex[:12]


def is_hex64(text):
    return len(text) == 64 and _HEX_DIGITS.issuperset(text)


def digest_from_name(relpath):
    """The sha256 hex a file is named after (`<hex>.json`, `blobs/sha256/<hex>`), or None."""
    name = relpath.rsplit("/", 1)[-1]
    if name.endswith(".json"):
        name = name[:-5]
    if name.startswith("sha256:"):
        name = name[7:]
    return name if is_hex64(name) else None


def open_regular(path):
    """open(path, "rb") for a regular file only: a FIFO would block forever and a
    device never end. Other kinds raise BadImageDir; OS errors pass through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadImageDir(f"{path}: not a regular file; the image directory is damaged")
    return os.fdopen(fd, "rb")


def sha256_file(path):
    import hashlib  # only --verify hashes: the ID itself comes from file names

    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        stream = open_regular(path)
    except OSError as err:
        raise BadImageDir(f"{path}: cannot read ({err.strerror})") from None
    with stream:
        while True:
            n = stream.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def normalize_repo_tag(ref):
    """Compare tags the way engines print them: drop default registry prefixes, add :latest."""
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref


def _enclosing_roots(real_dir):
    """Directories a symlink in the image dir may point into: the enclosing work tree and,
    when its gitdir lies elsewhere, only that gitdir's annexed objects (a .git file in a
    copied directory could name any directory, even /)."""
    probe = real_dir
    while True:
        dotgit = os.path.join(probe, ".git")
        if os.path.islink(dotgit):
            # git-annex turns a submodule's .git file into a link to its gitdir.
            return (probe, os.path.join(os.path.realpath(dotgit), "annex", "objects"))
        if os.path.isdir(dotgit):
            return (probe,)
        if os.path.isfile(dotgit):
            # A submodule keeps its annexed objects under the gitdir it names.
            try:
                with open(dotgit, encoding="utf-8") as stream:
                    line = stream.readline().strip()
            except (OSError, ValueError):  # ValueError: not UTF-8
                line = ""
            if line.startswith("gitdir:") and "\0" not in line:
                gitdir = os.path.realpath(os.path.join(probe, line[7:].strip()))
                return (probe, os.path.join(gitdir, "annex", "objects"))
            return (probe,)
        parent = os.path.dirname(probe)
        if parent == probe:
            return (real_dir,)
        probe = parent


def _descriptors(index):
    """The descriptor objects of an OCI index; none when "manifests" is not a list."""
    manifests = index.get("manifests")
    return [d for d in manifests if isinstance(d, dict)] if isinstance(manifests, list) else []


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


class Entry:
    """One image of manifest.json."""

    def __init__(self, image_dir, index, raw):
        self.image_dir = image_dir
        self.index = index
        self.raw = raw
        where = f"{image_dir.manifest_path}: entry {index}"
        if not isinstance(raw, dict):
            raise BadImageDir(f"{where} is not an object; the manifest is damaged, save the image again")
        config = raw.get("Config")
        if not isinstance(config, str) or not config:
            raise BadImageDir(f"{where} has no Config; the manifest is damaged, save the image again")
        tags = raw.get("RepoTags")
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadImageDir(f"{where} has a malformed RepoTags; the manifest is damaged, save the image again")
        layers = raw.get("Layers")
        if layers is None:
            layers = []
        if not isinstance(layers, list) or not all(isinstance(p, str) and p for p in layers):
            raise BadImageDir(f"{where} has a malformed Layers list; the manifest is damaged, save the image again")
        self.config = config
        self.repo_tags = tags
        self.layers = layers
        self.named_digest = digest_from_name(config)

    def label(self):
        name = ", ".join(self.repo_tags) or "<untagged>"
        return _shown(f"{name} ({short(self.named_digest or self.config)})")

    def config_bytes(self):
        """The config's content, or None when it is not present (dangling annex link)."""
        path = self.image_dir.resolve(self.config)
        try:
            with open_regular(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise BadImageDir(f"{path}: cannot read the config ({err.strerror})") from None

    def config_json(self):
        data = self.config_bytes()
        if data is None:
            return None
        return self.image_dir.parse_json(data, self.config)

    def config_digest(self):
        """Hex sha256 of the config. Docker names the file after that digest, so the
        name answers without reading it (and still does when git-annex dropped the
        content); only a config named otherwise is hashed. --verify checks the name."""
        path = self.image_dir.resolve(self.config)  # refuses ../ and absolute paths even unread
        if self.named_digest:
            return self.named_digest
        if not os.path.exists(path):
            raise ContentMissing(
                f"{self.image_dir.path}: config {self.config} is not present and its name holds no digest; "
                + GET_CONTENT_HINT.format(d=self.image_dir.path)
            )
        return sha256_file(path)

    def image_id(self):
        return "sha256:" + self.config_digest()

    def matches_config(self, prefix):
        prefix = prefix[7:] if prefix.startswith("sha256:") else prefix
        if self.named_digest and self.named_digest.startswith(prefix.lower()):
            return True
        return bool(prefix) and self.config.startswith(prefix)

    def matches_tag(self, tag):
        wanted = normalize_repo_tag(tag)
        return any(normalize_repo_tag(t) == wanted for t in self.repo_tags)

    def referenced_files(self):
        """Manifest paths of the config and layers, each once, in manifest order."""
        return list(dict.fromkeys([self.config] + self.layers))

    def missing_files(self):
        return [p for p in self.referenced_files() if not os.path.exists(self.image_dir.resolve(p))]

    def require_content(self):
        missing = self.missing_files()
        if missing:
            total = len(self.referenced_files())
            raise ContentMissing(
                f"{self.image_dir.path}: {len(missing)} of {total} image files are not present "
                f"(first: {missing[0]}); " + GET_CONTENT_HINT.format(d=self.image_dir.path)
            )

    def diff_ids(self, config=None):
        config = self.config_json() if config is None else config
        if not isinstance(config, dict):
            return None
        rootfs = config.get("rootfs")
        ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return ids

    def layer_digests(self):
        """Digest of each layer: the blob name (OCI), else the config's diff_id (legacy)."""
        diff_ids = self.diff_ids() or []
        result = []
        for i, layer in enumerate(self.layers):
            named = digest_from_name(layer) if layer.startswith("blobs/") else None
            if named:
                result.append("sha256:" + named)
            else:
                result.append(diff_ids[i] if i < len(diff_ids) else None)
        return result

    def present_layer_size(self):
        total = 0
        for layer in dict.fromkeys(self.layers):
            try:
                total += os.stat(self.image_dir.resolve(layer)).st_size
            except OSError:  # absent, a link loop, a file where a directory belongs: nothing present
                pass
        return total

    def verify(self):
        """Re-hash the config and every layer; raise on missing or mismatching content."""
        self.require_content()
        where = self.image_dir.path
        config_path = self.image_dir.resolve(self.config)
        actual = sha256_file(config_path)
        if self.named_digest and actual != self.named_digest:
            raise VerifyError(f"{config_path}: content sha256:{short(actual)} does not match its name; "
                              "the file is corrupt, save the image again")
        diff_ids = self.diff_ids() or []
        for i, layer in enumerate(self.layers):
            path = self.image_dir.resolve(layer)
            named = digest_from_name(layer) if layer.startswith("blobs/") else None
            expected = named or (diff_ids[i][7:] if i < len(diff_ids) and diff_ids[i].startswith("sha256:") else None)
            if expected is None:
                raise VerifyError(f"{where}: no digest to check layer {layer} against; "
                                  "the config lacks rootfs.diff_ids, save the image again")
            actual = sha256_file(path)
            if actual != expected:
                raise VerifyError(f"{path}: content sha256:{short(actual)} does not match "
                                  f"expected sha256:{short(expected)}; the file is corrupt, save the image again")

    def manifest_digest(self):
        """Digest of the OCI manifest (or index) in index.json that describes this image, if any."""
        index = self.image_dir.oci_index()
        if not index:
            return None
        want = self.config_digest()
        # Each blob is read once: descriptors naming each other, fanned out, would
        # otherwise cost width**depth reads.
        seen = set()
        for desc in _descriptors(index):
            if self._describes(desc, want, 0, seen):
                return desc.get("digest")
        return None

    def _describes(self, desc, config_hex, depth, seen):
        digest = desc.get("digest")
        if depth > 3 or not isinstance(digest, str) or not digest.startswith("sha256:"):
            return False
        blob_hex = digest[7:]
        if not is_hex64(blob_hex) or blob_hex in seen:
            return False
        seen.add(blob_hex)
        rel = "blobs/sha256/" + blob_hex
        try:
            with open_regular(self.image_dir.resolve(rel)) as stream:
                blob = self.image_dir.parse_json(stream.read(), rel)
        except (OSError, BadImageDir):
            return False
        if not isinstance(blob, dict):
            return False
        config = blob.get("config")
        if isinstance(config, dict) and config.get("digest") == "sha256:" + config_hex:
            return True
        return any(self._describes(child, config_hex, depth + 1, seen) for child in _descriptors(blob))

    def summary(self):
        return {
            "id": self.image_id(),
            "repo_tags": self.repo_tags,
            "config": self.config,
            "layers": self.layer_digests(),
            "size": self.present_layer_size(),
            "manifest_digest": self.manifest_digest(),
        }


class ImageDir:
    """An image directory: manifest.json and the files it names."""

    def __init__(self, path):
        self.path = path
        if not os.path.lexists(path):
            raise BadImageDir(f"{path}: no such directory; save an image there with docker-dir-save")
        if not os.path.isdir(path):
            raise BadImageDir(f"{path}: not a directory; give the directory docker-dir-save wrote")
        self.manifest_path = os.path.join(path, "manifest.json")
        self.real = os.path.realpath(path)
        self._roots = None
        self._entries = None

    @property
    def roots(self):
        if self._roots is None:
            self._roots = _enclosing_roots(self.real)
        return self._roots

    def resolve(self, relpath):
        """Absolute path of a manifest path, refusing anything that leaves the directory."""
        # No engine writes control characters or lone surrogates (which cannot even be encoded) in a name.
        if not isinstance(relpath, str) or not relpath or not relpath.isprintable():
            raise BadImageDir(f"{self.manifest_path}: invalid path {relpath!r}; the manifest is damaged")
        if relpath.startswith("/") or ".." in relpath.split("/"):
            raise BadImageDir(f"{self.manifest_path}: path {relpath!r} leaves the image directory; refusing it")
        path = os.path.join(self.real, relpath)
        target = os.path.realpath(path)
        if not _inside(target, self.real) and not any(_inside(target, r) for r in self.roots):
            raise BadImageDir(f"{os.path.join(self.path, relpath)}: symlink leads outside the image directory "
                              f"(to {_shown(target)}); refusing to follow it")
        return path

    def parse_json(self, data, relpath):
        try:
            return loads_json(data)
        except (ValueError, RecursionError) as err:
            raise BadImageDir(f"{os.path.join(self.path, relpath)}: malformed JSON ({_one_line(err)}); "
                              "save the image again") from None

    def read_json(self, relpath, missing_message):
        path = self.resolve(relpath)
        try:
            with open_regular(path) as stream:
                data = stream.read()
        except FileNotFoundError:
            if os.path.lexists(path):
                raise ContentMissing(f"{path} is not present; " + GET_CONTENT_HINT.format(d=self.path)) from None
            raise BadImageDir(missing_message) from None
        except OSError as err:
            raise BadImageDir(f"{path}: cannot read ({err.strerror})") from None
        return self.parse_json(data, relpath)

    def entries(self):
        if self._entries is None:
            if not os.path.lexists(self.manifest_path):
                self._raise_no_manifest()
            manifest = self.read_json("manifest.json", f"{self.manifest_path}: missing")
            if not isinstance(manifest, list):
                raise BadImageDir(f"{self.manifest_path}: not a list of images; "
                                  "the manifest is damaged, save the image again")
            if not manifest:
                raise BadImageDir(f"{self.manifest_path}: lists no image; save the image again")
            self._entries = [Entry(self, i, raw) for i, raw in enumerate(manifest)]
        return self._entries

    def _raise_no_manifest(self):
        try:
            empty = not os.listdir(self.path)
        except OSError as err:
            raise BadImageDir(f"{self.path}: cannot list ({err.strerror})") from None
        if empty:
            raise BadImageDir(f"{self.path}: empty directory; save an image there with docker-dir-save")
        if os.path.exists(os.path.join(self.path, "oci-layout")):
            raise BadImageDir(f"{self.path}: OCI layout without manifest.json; save it with docker-dir-save "
                              "or 'podman save --format docker-archive'")
        raise BadImageDir(f"{self.path}: no manifest.json, not an image directory; "
                          "save an image there with docker-dir-save")

    def oci_index(self):
        if not os.path.exists(os.path.join(self.real, "index.json")):
            return None
        index = self.read_json("index.json", "index.json missing")
        return index if isinstance(index, dict) else None

    def select(self, repo_tag=None, config=None):
        entries = self.entries()
        chosen = entries
        if repo_tag is not None:
            chosen = [e for e in chosen if e.matches_tag(repo_tag)]
        if config is not None:
            chosen = [e for e in chosen if e.matches_config(config)]
        if len(chosen) == 1:
            return chosen[0]
        candidates = "; ".join(e.label() for e in entries)
        if not chosen:
            wanted = " and ".join(_shown(s) for s in (repo_tag and f"--repo-tag {repo_tag}",
                                                      config and f"--config {config}") if s)
            raise SelectionError(f"{self.path}: no image matches {wanted}; it holds: {candidates}")
        raise SelectionError(f"{self.path}: holds {len(chosen)} images, choose one with --repo-tag or "
                             f"--config: {'; '.join(e.label() for e in chosen)}")


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _make_scanner():
    """The C scanner behind json.loads, without importing json (and with it re and
    enum: 5 ms, as long as docker-dir-id's whole budget). Same grammar as json.loads
    but for NaN/Infinity, which no engine writes; json.loads where _json is missing."""
    try:
        import _json
    except ImportError:
        return None

    class Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = staticmethod(_reject_constant)

    return _json.make_scanner(Context())


_scan = _make_scanner()
_JSON_SPACE = " \t\n\r"


def loads_json(data):
    """json.loads for the UTF-8 files engines write; raises ValueError on bad input."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a value at character {stop.value}") from None
    except SystemError:
        # The scanner raises most syntax errors as json.decoder.JSONDecodeError and,
        # when that module was never imported, fails with SystemError instead:
        # let json.loads report the error (bad input only pays for the import).
        import json

        return json.loads(text)
    if text[end:].strip(_JSON_SPACE):
        raise ValueError(f"extra data at character {end}")
    return value


def _shown(text):
    """Text from a manifest, a link or the command line, escaped where needed so an error stays one line."""
    return text if text.isprintable() else repr(text)[1:-1]


def _one_line(err):
    return " ".join(str(err).split())


def image_id(path, repo_tag=None, config=None):
    """The config digest (`sha256:<hex>`) of the image saved in directory `path`."""
    return ImageDir(path).select(repo_tag=repo_tag, config=config).image_id()
