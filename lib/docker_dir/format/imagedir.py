"""An image directory, read through the reader of its layout, as neutral images.

Pure file reading: no subprocess, no engine. A reader (one module per layout, listed
in format/__init__.py) turns what the directory holds into `Image`s: config digest
and path, layers (path, digest as stored, media type), repo tags, manifest digest.
Everything above this layer (verification, load streams, engines) sees only those.

Every path taken from a manifest is checked before it is opened (names.check_relpath),
and symlinks are followed only as far as containment.py allows. Choosing one image is
selection.py's; reading a directory that may be replaced meanwhile, consistent.py's.
Verification, compression and the naming of what is not an image directory are imported
on the paths that need them: docker-dir-id needs none of them (it starts as fast as
Python does, bench/RESULTS.md).
"""
import os

from ..errors import BadImageDir, ContentMissing
from ..fastjson import TooLarge, loads_json, read_bounded
from ..fs import open_regular
from . import reader_for
from .annex import GET_CONTENT_HINT, content_state
from .containment import enclosing_roots, inside
from .names import check_relpath, digest_from_name, normalize_repo_tag, one_line, short, shown
from .platform import Platform
from .selection import select
from .streams import sha256_file

class Layer:
    """One layer as stored: its file in DIR, and what the layout says about it."""

    __slots__ = ("path", "digest", "media_type", "size")

    def __init__(self, path, digest=None, media_type=None, size=None):
        self.path = path              # relative to DIR, checked
        self.digest = digest          # "sha256:<hex>" of the file as stored, when the layout names it
        self.media_type = media_type  # as the layout declares it, when it does
        self.size = size              # bytes, as a descriptor states it, when one does


class Image:
    """One image of an image directory, whatever its layout.

    layers is None when the layout's manifest is not present (git-annex dropped it)
    and the image is known only by its config's name: enough for its ID and for an
    engine that already holds it, not for anything that reads the layers.
    """

    def __init__(self, image_dir, where, config_path, layers, repo_tags, config_hex=None, manifest_digests=(),
                 platform=None, ref_names=(), json_blobs=(), repo_digests=()):
        self.image_dir = image_dir
        self.where = where                    # e.g. "DIR/manifest.json: entry 0", for messages
        self.config_path = config_path        # relative to DIR, checked
        self._layers = layers                 # [Layer], in order, base first; None: manifest not present
        self.repo_tags = repo_tags            # ["name:tag", ...] as the layout records them
        self.ref_names = list(ref_names)      # OCI ref names that are a bare tag ("latest")
        self.config_hex = config_hex or digest_from_name(config_path)  # from a descriptor or the file name
        # digests, or a function finding (digests, repo digests) in index.json when asked
        self._manifest_digests = manifest_digests
        self._repo_digests = list(repo_digests)  # ["host/name@sha256:..."]: what a registry named it by
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
        in the layout, outermost first, then that of the manifest it had at its source
        (recorded by docker-dir when it wrote an OCI one anew): an engine that imported
        the image names it by one of them."""
        if callable(self._manifest_digests):
            self._manifest_digests, found = self._manifest_digests(self)
            self._repo_digests += [r for r in found if r not in self._repo_digests]
        return list(self._manifest_digests)

    def add_names(self, repo_tags, ref_names, repo_digests):
        """More names of this image (another descriptor naming the same manifest)."""
        self.repo_tags += [t for t in repo_tags if t not in self.repo_tags]
        self.ref_names += [r for r in ref_names if r not in self.ref_names]
        self._repo_digests += [r for r in repo_digests if r not in self._repo_digests]

    @property
    def repo_digests(self):
        """["host/name@sha256:..."]: the registry's names of the image it was pulled from."""
        self.manifest_digests()
        return list(self._repo_digests)

    def manifest_digest(self):
        """The digest index.json (or the layout's one manifest) names this image by, if any."""
        return next(iter(self.manifest_digests()), None)

    def candidate_digests(self):
        """Digests an engine may know this image by: the config digest (classic stores,
        podman) and manifest digests (containerd's image store)."""
        return ["sha256:" + self.config_digest(), *self.manifest_digests()]

    def platform_of_config(self):
        """The platform the config states (os, architecture, variant), or None."""
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

    def matches_reference(self, reference):
        """As skopeo's `oci:DIR:REFERENCE` finds an image: an OCI ref name, which Docker
        and docker-dir make the tag alone ("1"), or a full name:tag."""
        if "/" not in reference and ":" not in reference:
            return reference in self.ref_names or any(t.rpartition(":")[2] == reference for t in self.repo_tags)
        return self.matches_tag(reference)

    # -- content --------------------------------------------------------------
    def has_manifest(self):
        """False when the layout's manifest was dropped by git-annex: layers unknown."""
        return self._layers is not None

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
            "repo_digests": self.repo_digests,
            "platform": _shown_platform(self.platform or self.platform_of_config()),
            "layout": self.image_dir.reader.NAME,
        }


def _shown_platform(platform):
    return str(platform) if platform else None


def identity(path):
    """(device, inode) of the directory at `path` now, None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
        self.identity = identity(path)  # which directory was read, when another replaces it
        self._roots = None
        self._images = None
        self._reader = None

    def join(self, relpath):
        return os.path.join(self.path, relpath)

    @property
    def roots(self):
        if self._roots is None:
            self._roots = enclosing_roots(self.real)
        return self._roots

    @property
    def reader(self):
        if self._reader is None:
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
        if not inside(target, self.real) and not any(inside(target, r) for r in self.roots):
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
        """The one image the selectors leave (selection.select)."""
        return select(self, repo_tag, config, platform)

    def unrecognized(self):
        """The error for a directory no reader claims."""
        from .refusals import unreadable_directory

        return unreadable_directory(self.path)
