"""An image directory, read through the reader of its layout, as neutral images.

Pure file reading: no subprocess, no engine. A reader (one module per layout, listed
in format/__init__.py) turns what the directory holds into `Image`s: config digest
and path, layers (path, digest as stored, media type), repo tags, manifest digest.
Everything above this layer (verification, load streams, engines) sees only those.

Every path taken from a manifest is checked before it is opened, and symlinks are
followed only while their target stays inside the enclosing git work tree (git-annex
keeps content in .git/annex/objects, or in a submodule's gitdir/annex/objects) or,
outside git, inside the image directory.
"""
import os
import stat

from ..errors import BadImageDir, ContentMissing, SelectionError
from ..fastjson import TooLarge, loads_json, read_bounded
from .names import check_relpath, digest_from_name, normalize_repo_tag, one_line, short, shown

GET_CONTENT_HINT = "run 'datalad get {d}' or 'git annex get {d}'"
_CHUNK = 1 << 20


def open_regular(path):
    """open(path, "rb") for a regular file only: a FIFO would block forever and a
    device never end. Other kinds raise BadImageDir; OS errors pass through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadImageDir(f"{path}: not a regular file; the image directory is damaged")
    return os.fdopen(fd, "rb")


def sha256_stream(stream):
    import hashlib  # only --verify hashes: the ID itself comes from names

    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = stream.readinto(buf)
        if not n:
            break
        digest.update(view[:n])
    return digest.hexdigest()


def sha256_file(path):
    try:
        stream = open_regular(path)
    except OSError as err:
        raise BadImageDir(f"{path}: cannot read ({err.strerror})") from None
    with stream:
        return sha256_stream(stream)


_ANNEX_OBJECTS = "annex/objects/"
_POINTER_MAX = 1024


def content_state(path):
    """"present"; "annexed" when git-annex would provide the content (a dangling link into
    an annex, or an unlocked file's pointer); else what is wrong: "missing", "a dangling
    symlink", "a symlink loop"."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        target = path
        for _ in range(40):  # the kernel's own limit on a chain of links
            try:
                target = os.path.join(os.path.dirname(target), os.readlink(target))
            except OSError:
                break
            if _ANNEX_OBJECTS in target:
                return "annexed"
        return "a dangling symlink" if os.path.islink(path) else "missing"
    except OSError as err:
        import errno

        return "a symlink loop" if err.errno == errno.ELOOP else f"unreadable ({err.strerror})"
    if stat.S_ISREG(st.st_mode) and st.st_size < _POINTER_MAX:
        try:
            with open_regular(path) as stream:
                if stream.read(_POINTER_MAX).startswith(b"/" + _ANNEX_OBJECTS.encode()):
                    return "annexed"
        except OSError:
            pass
    return "present"


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


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


class Layer:
    """One layer as stored: its file in DIR, and what the layout says about it."""

    __slots__ = ("path", "digest", "media_type")

    def __init__(self, path, digest=None, media_type=None):
        self.path = path              # relative to DIR, checked
        self.digest = digest          # "sha256:<hex>" of the file as stored, when the layout names it
        self.media_type = media_type  # as the layout declares it, when it does


class Image:
    """One image of an image directory, whatever its layout.

    layers is None when the layout's manifest is not present (git-annex dropped it)
    and the image is known only by its config's name: enough for its ID and for an
    engine that already holds it, not for anything that reads the layers.
    """

    def __init__(self, image_dir, where, config_path, layers, repo_tags, config_hex=None, manifest_digests=(),
                 platform=None, ref_names=(), json_blobs=()):
        self.image_dir = image_dir
        self.where = where                    # e.g. "DIR/manifest.json: entry 0", for messages
        self.config_path = config_path        # relative to DIR, checked
        self._layers = layers                 # [Layer], in order, base first; None: manifest not present
        self.repo_tags = repo_tags            # ["name:tag", ...] as the layout records them
        self.ref_names = list(ref_names)      # OCI ref names that are a bare tag ("latest")
        self.config_hex = config_hex or digest_from_name(config_path)  # from a descriptor or the file name
        self._manifest_digests = manifest_digests  # digests, or a function finding them when asked
        self.platform = platform              # a format.platform.Platform when an index names it
        self.json_blobs = list(json_blobs)    # [(relpath, hex)]: manifests and indexes named by digest

    @property
    def layers(self):
        if self._layers is None:
            manifest = self.where.split(":")[0]
            raise ContentMissing(f"{manifest} is not present, so the layers of {self.label()} are unknown; "
                                 + GET_CONTENT_HINT.format(d=self.image_dir.path))
        return self._layers

    # -- identity -----------------------------------------------------------
    def label(self):
        name = ", ".join(self.repo_tags + self.ref_names) or "<untagged>"
        where = f", {self.platform}" if self.platform else ""
        return shown(f"{name} ({short(self.config_hex or self.config_path)}{where})")

    def config_digest(self):
        """Hex sha256 of the config. Engines name the file after that digest (or a
        descriptor states it), so no read is needed, and it still answers when
        git-annex dropped the content; only a config named otherwise is hashed.
        --verify checks the name."""
        if self.config_hex:
            return self.config_hex
        path = self.image_dir.resolve(self.config_path)
        if not os.path.exists(path):
            raise ContentMissing(
                f"{self.image_dir.path}: config {self.config_path} is not present and its name holds no "
                "digest; " + GET_CONTENT_HINT.format(d=self.image_dir.path))
        return sha256_file(path)

    def image_id(self):
        return "sha256:" + self.config_digest()

    def manifest_digests(self):
        """Digests of the manifest, and of the indexes above it, that describe this image
        in the layout, outermost first (an engine that imported the layout names the image
        by one of them)."""
        if callable(self._manifest_digests):
            self._manifest_digests = self._manifest_digests(self)
        return list(self._manifest_digests)

    def manifest_digest(self):
        """The digest index.json (or the layout's one manifest) names this image by, if any."""
        return next(iter(self.manifest_digests()), None)

    def candidate_digests(self):
        """Digests an engine may know this image by: the config digest (classic stores,
        podman) and manifest digests (containerd's image store)."""
        return ["sha256:" + self.config_digest(), *self.manifest_digests()]

    def platform_of_config(self):
        """The platform the config states (os, architecture, variant), or None."""
        from .platform import Platform

        return Platform.of(self.config_json())

    def matches_config(self, prefix):
        prefix = prefix[7:] if prefix.startswith("sha256:") else prefix
        if self.config_hex and self.config_hex.startswith(prefix.lower()):
            return True
        return bool(prefix) and self.config_path.startswith(prefix)

    def matches_tag(self, tag):
        wanted = normalize_repo_tag(tag)
        if any(normalize_repo_tag(t) == wanted for t in self.repo_tags):
            return True
        # an OCI ref name that is only a tag matches that tag of any name
        return tag in self.ref_names or wanted.rsplit(":", 1)[-1] in self.ref_names and ":" in tag

    # -- content --------------------------------------------------------------
    def config_json(self):
        """The config, or None when its content is not present (a dangling annex link)."""
        if not os.path.exists(self.image_dir.resolve(self.config_path)):
            return None
        return self.image_dir.read_json(self.config_path, f"{self.image_dir.join(self.config_path)}: missing")

    def diff_ids(self):
        config = self.config_json()
        if not isinstance(config, dict):
            return None
        rootfs = config.get("rootfs")
        ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return ids

    def referenced_files(self):
        """Paths of the config and layers, each once, config first, layers in order."""
        return list(dict.fromkeys([self.config_path] + [layer.path for layer in self.layers]))

    def missing_files(self):
        return [p for p in self.referenced_files() if not os.path.exists(self.image_dir.resolve(p))]

    def require_content(self):
        """Every file is here; else ContentMissing if git-annex would provide the missing
        ones (dropped content), BadImageDir if the directory itself is broken."""
        annexed = []
        for relpath in self.referenced_files():
            path = self.image_dir.resolve(relpath)
            state = content_state(path)
            if state == "annexed":
                annexed.append(relpath)
            elif state != "present":
                raise BadImageDir(f"{path}: {state}; the image directory is damaged or incompletely copied, "
                                  "save the image again")
        if annexed:
            total = len(self.referenced_files())
            raise ContentMissing(
                f"{self.image_dir.path}: {len(annexed)} of {total} image files are not present "
                f"(first: {annexed[0]}); " + GET_CONTENT_HINT.format(d=self.image_dir.path))

    def layer_digests(self):
        """Digest of each layer: as stored where the layout names it, else the config's diff_id."""
        diff_ids = self.diff_ids() or []
        return [layer.digest or (diff_ids[i] if i < len(diff_ids) else None) for i, layer in enumerate(self.layers)]

    def layer_compressions(self):
        """"none", "gzip" or "zstd" (None: unknown) for each layer: from the file's first
        bytes (skopeo's dir: layout calls uncompressed layers tar.gzip), else from the
        media type the layout states."""
        from .compression import media_type_compression, sniff_compression

        kinds = []
        for layer in self.layers:
            try:
                with open_regular(self.image_dir.resolve(layer.path)) as stream:
                    kind = sniff_compression(stream.read(512))
            except OSError:
                kind = None
            kinds.append(kind or (media_type_compression(layer.media_type) if layer.media_type else None))
        return kinds

    def present_layer_size(self):
        return self.size_of(layer.path for layer in self.layers)

    def size_of(self, relpaths):
        """Bytes of the distinct files among `relpaths` that are present."""
        total = 0
        for relpath in dict.fromkeys(relpaths):
            try:
                total += os.stat(self.image_dir.resolve(relpath)).st_size
            except OSError:  # absent, a link loop, a file where a directory belongs: nothing present
                pass
        return total

    def verify(self):
        """Re-hash everything the image is made of; raise on missing or mismatching content."""
        from .verify import verify

        verify(self)

    def summary(self):
        return {
            "id": self.image_id(),
            "repo_tags": self.repo_tags + self.ref_names,
            "config": self.config_path,
            "layers": self.layer_digests(),
            "size": self.present_layer_size(),
            "manifest_digest": self.manifest_digest(),
            "platform": str(self.platform) if self.platform else None,
            "layout": self.image_dir.reader.NAME,
        }


class ImageDir:
    """A directory holding one or more saved images, in any layout a reader knows."""

    def __init__(self, path):
        self.path = path
        if not os.path.lexists(path):
            raise BadImageDir(f"{path}: no such directory; save an image there with docker-dir-save")
        if not os.path.isdir(path):
            from .refusals import not_a_directory

            raise not_a_directory(path)
        self.real = os.path.realpath(path)
        self._roots = None
        self._images = None
        self._reader = None

    def join(self, relpath):
        return os.path.join(self.path, relpath)

    @property
    def roots(self):
        if self._roots is None:
            self._roots = _enclosing_roots(self.real)
        return self._roots

    @property
    def reader(self):
        if self._reader is None:
            from . import reader_for

            self._reader = reader_for(self)
        return self._reader

    def images(self):
        if self._images is None:
            self._images = self.reader.images(self)
        return self._images

    def resolve(self, relpath, where=None):
        """Absolute path of a path the layout names, refusing anything that leaves the directory."""
        check_relpath(relpath, where or self.path)
        path = os.path.join(self.real, relpath)
        target = os.path.realpath(path)
        if not _inside(target, self.real) and not any(_inside(target, r) for r in self.roots):
            raise BadImageDir(f"{os.path.join(self.path, relpath)}: symlink leads outside the image directory "
                              f"(to {shown(target)}); refusing to follow it")
        return path

    def parse_json(self, data, relpath):
        try:
            return loads_json(data)
        except (ValueError, RecursionError) as err:
            raise BadImageDir(f"{os.path.join(self.path, relpath)}: malformed JSON ({one_line(err)}); "
                              "save the image again") from None

    def read_json(self, relpath, missing_message):
        return self.parse_json(self.read_bytes(relpath, missing_message), relpath)

    def read_bytes(self, relpath, missing_message):
        """The content of a small file the layout names (a manifest, an index, a config)."""
        path = self.resolve(relpath)
        try:
            with open_regular(path) as stream:
                data = read_bounded(stream)
        except FileNotFoundError:
            state = content_state(path)
            if state == "annexed":
                raise ContentMissing(f"{path} is not present; " + GET_CONTENT_HINT.format(d=self.path)) from None
            if os.path.lexists(path):
                raise BadImageDir(f"{path}: {state}; the image directory is damaged, save the image again") from None
            raise BadImageDir(missing_message) from None
        except TooLarge as err:
            raise BadImageDir(f"{path}: {err}; refusing it") from None
        except OSError as err:
            raise BadImageDir(f"{path}: cannot read ({err.strerror})") from None
        return data

    def select(self, repo_tag=None, config=None, platform=None):
        """The one image the selectors leave. Several images differing only in platform
        (a multi-platform index) leave the one of `platform` (a string os/arch[/variant]),
        by default this host's."""
        images = self.images()
        chosen = images
        if repo_tag is not None:
            if any(i._layers is None for i in chosen):
                raise ContentMissing(f"{self.path}: the manifest is not present, so --repo-tag cannot be "
                                     "matched; " + GET_CONTENT_HINT.format(d=self.path) + ", or use --config")
            chosen = [i for i in chosen if i.matches_tag(repo_tag)]
        if config is not None:
            chosen = [i for i in chosen if i.matches_config(config)]
        if platform is not None or len(chosen) > 1 and all(i.platform for i in chosen):
            chosen = self._of_platform(chosen, platform)
        if len(chosen) == 1:
            return chosen[0]
        candidates = "; ".join(i.label() for i in images)
        if not chosen:
            wanted = " and ".join(shown(s) for s in (repo_tag and f"--repo-tag {repo_tag}",
                                                     config and f"--config {config}") if s)
            raise SelectionError(f"{self.path}: no image matches {wanted}; it holds: {candidates}")
        if any(i._layers is None for i in chosen):
            raise SelectionError(f"{self.path}: the manifest is not present and {len(chosen)} configs are: "
                                 f"{'; '.join(i.label() for i in chosen)}; choose one with --config, or "
                                 + GET_CONTENT_HINT.format(d=self.path))
        raise SelectionError(f"{self.path}: holds {len(chosen)} images, choose one with --repo-tag or "
                             f"--config: {'; '.join(i.label() for i in chosen)}")

    def _of_platform(self, images, wanted):
        from .platform import Platform

        request = Platform.parse(wanted) if wanted is not None else Platform.host()
        offered = [(image, image.platform or image.platform_of_config()) for image in images]
        matching = [image for image, offer in offered if offer and request.matches(offer)]
        if not matching and images:
            have = ", ".join(sorted({str(offer) for _, offer in offered if offer})) or "no platform named"
            how = "" if wanted else " (this host's); choose one with --platform"
            raise SelectionError(f"{self.path}: no image for platform {request}{how}; it holds: {have}")
        return matching

    def unrecognized(self):
        """The error for a directory no reader claims."""
        from .refusals import unreadable_directory

        return unreadable_directory(self.path)


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_consistently(path, work, attempts=10):
    """work(ImageDir(path)), seeing one image although `docker-dir-save --force` may
    replace DIR meanwhile (an atomic swap): when DIR is another directory after the work
    than before it, the work starts again on the new one (a failure seen meanwhile, such
    as a file of the old image gone, is not reported)."""
    from ..errors import DockerDirError, Interrupted

    failure = None
    for _ in range(attempts):
        before = _identity(path)
        try:
            result = work(ImageDir(path))
        except (DockerDirError, OSError) as err:
            if isinstance(err, Interrupted) or _identity(path) == before:
                raise
            failure = err
            continue
        if _identity(path) == before:
            return result
    if failure is not None:
        raise failure
    raise BadImageDir(f"{path}: replaced {attempts} times while it was read; try again")


def image_id(path, repo_tag=None, config=None, platform=None):
    """The config digest (`sha256:<hex>`) of the image saved in directory `path`."""
    return read_consistently(path, lambda image_dir: image_dir.select(repo_tag, config, platform).image_id())
