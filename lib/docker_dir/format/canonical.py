"""The one layout docker-dir writes: an OCI image layout that is also a docker-archive.

    DIR/
      oci-layout            {"imageLayoutVersion": "1.0.0"}
      index.json            one descriptor per image and tag: an OCI manifest, the tag as
                            io.containerd.image.name (the full name) and
                            org.opencontainers.image.ref.name (the tag alone); where the
                            manifest was written anew, io.docker-dir.source-digest names the
                            one the source had (names.py), and after a pull
                            io.docker-dir.repo-digest the registry's HOST/NAME@DIGEST
      manifest.json         what `docker load` reads: Config, RepoTags, Layers, paths into blobs/
      repositories          where tags exist, as `docker save` writes it
      blobs/sha256/<hex>    configs with their original bytes, the OCI manifests, and the
                            layers as the source had them (uncompressed, gzip or zstd)

Docker >= 25 writes this shape; docker-dir writes it with OCI media types everywhere
(skopeo 1.9 and umoci 0.4 do not read a Docker v2s2 manifest listed in index.json).
A multi-platform image kept whole (an index) has index.json naming the index and no
manifest.json: `docker load` takes one platform.

Written into an empty build directory (the caller renames it into place), the same
input giving the same bytes: JSON is compact with keys in a fixed order, images are
sorted by config digest and tags by name.
"""
import hashlib
import json
import os

from ..errors import BadImageDir
from ..fs import NEW_FILE
from .compression import GZIP, NONE, ZSTD, media_type_compression, sniff_compression
from .names import NAME_ANNOTATION, REF_ANNOTATION, SOURCE_DIGEST_ANNOTATION, hex_of_digest, qualified_name, short
from .streams import CHUNK, HashingReader

OCI_LAYOUT = b'{"imageLayoutVersion": "1.0.0"}'
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_PREFIX = "application/vnd.oci.image.layer."
_LAYER_TYPES = {NONE: "application/vnd.oci.image.layer.v1.tar", GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
                ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd"}
_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"


def encode(obj):
    """Compact JSON, as the engines write it; key order as built."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def layer_media_type(compression, declared=None):
    """The OCI media type of a layer stored with `compression`; a non-distributable
    layer (Docker's "foreign" ones too) stays one."""
    nondistributable = declared is not None and ("nondistributable" in declared or "foreign" in declared)
    if nondistributable:
        return _NONDISTRIBUTABLE + {NONE: "", GZIP: "+gzip", ZSTD: "+zstd"}[compression]
    return _LAYER_TYPES[compression]


def blob_path(hexd):
    return f"blobs/sha256/{hexd}"


class Blobs:
    """DIR/blobs/sha256 of the layout being written. A blob arrives by rename (a file
    already in the same build directory: an engine's export), by a copy checked while it
    is made (another directory's file), from the blob store (store.py: a hard link, checked),
    or as bytes; a blob present already is kept. With a `store`, every blob whose digest was
    checked here is added to it, and a blob it holds is taken from it, not copied or fetched."""

    def __init__(self, dest, store=None):
        self.dir = os.path.join(dest, "blobs", "sha256")
        os.makedirs(self.dir, exist_ok=True)
        self.store = store
        self.from_store = {"linked": 0, "copied": 0}  # bytes taken from the store, by how

    def take_from_store(self, hexd, size=None):
        """Blob `hexd` placed from the store (checked there), if it holds it whole."""
        if self.has(hexd):
            return True
        if self.store is None:
            return False
        how = self.store.place(hexd, self.path(hexd), size)
        if how:
            self.from_store[how] += os.stat(self.path(hexd)).st_size
        return how is not None

    def checked(self, hexd):
        """Blob `hexd`, its content checked against its digest by the caller, goes to the store too."""
        if self.store is not None:
            self.store.adopt(self.path(hexd), hexd)

    def path(self, hexd):
        return os.path.join(self.dir, hexd)

    def has(self, hexd):
        return os.path.exists(self.path(hexd))

    def adopt(self, path, hexd):
        """Move the regular file at `path` (in the build directory) to blob `hexd`."""
        if self.has(hexd):
            os.unlink(path)
        else:
            os.rename(path, self.path(hexd))

    def link(self, path, hexd):
        """Blob `hexd` as a hard link of `path` (a file of the directory being replaced, already checked);
        OSError where links cannot be made (another file system)."""
        if not self.has(hexd):
            os.link(path, self.path(hexd))

    def copy(self, source, hexd, size, shown):
        """Copy the readable `source` to blob `hexd` and return `hexd`, refusing
        (BadImageDir, nothing kept) content whose sha256 or size differs from what names
        it; `size` None is unknown; `hexd` None names the blob by what the copy hashed."""
        if hexd is not None and self.take_from_store(hexd, size):
            return hexd
        partial = self.path(f".{hexd or os.urandom(8).hex()}.partial")
        hashing = HashingReader(source)
        try:
            fd = os.open(partial, NEW_FILE, 0o644)
            with os.fdopen(fd, "wb") as out:
                while True:
                    data = hashing.read(CHUNK)
                    if not data:
                        break
                    out.write(data)
                    if size is not None and hashing.size > size:
                        break
            actual = hashing.hash.hexdigest()
            if size is not None and hashing.size != size:
                raise BadImageDir(f"{shown}: {hashing.size if hashing.size <= size else 'more than ' + str(size)} "
                                  f"bytes where its descriptor says {size}; refusing the image")
            if hexd is not None and actual != hexd:
                raise BadImageDir(f"{shown}: content sha256:{short(actual)} does not match its digest "
                                  f"sha256:{short(hexd)}; refusing the image")
            os.rename(partial, self.path(actual))
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        self.checked(actual)
        return actual

    def put(self, data):
        """Blob holding `data` (a JSON document); returns its hex digest."""
        hexd = hashlib.sha256(data).hexdigest()
        if not self.has(hexd):
            with open(self.path(hexd), "wb") as out:
                out.write(data)
        return hexd


class Entry:
    """One image to write: its config and layers (already blobs), tags, and, when it came
    with one that fits (OCI media types, this config and these layers), the manifest's
    own bytes, kept so its digest stays the source's."""

    def __init__(self, config_hex, config_size, layers, repo_tags=(), ref_names=(), manifest=None, notes=None):
        self.config_hex, self.config_size = config_hex, config_size
        self.notes = dict(notes or {})  # annotations for every index.json descriptor of the image (provenance)
        self.layers = list(layers)  # [(hex, size, media type)], base first
        self.repo_tags = sorted(set(repo_tags))
        self.ref_names = sorted(set(ref_names))  # OCI ref names that are a bare tag ("1"): no name to go with
        self.manifest = manifest if manifest is not None else encode({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + config_hex, "size": config_size},
            "layers": [{"mediaType": media_type, "digest": "sha256:" + hexd, "size": size}
                       for hexd, size, media_type in self.layers]})


def merge(entries):
    """One entry per image (the same config and layers under several tags is one image),
    sorted by config digest: engines list images in an order that changes from save to save."""
    merged = {}
    for entry in entries:
        key = (entry.config_hex, tuple(entry.layers), entry.manifest, tuple(sorted(entry.notes.items())))
        if key in merged:
            merged[key].repo_tags = sorted(set(merged[key].repo_tags) | set(entry.repo_tags))
            merged[key].ref_names = sorted(set(merged[key].ref_names) | set(entry.ref_names))
        else:
            merged[key] = entry
    return sorted(merged.values(), key=lambda e: (e.config_hex, e.repo_tags))


def write_layout(dest, blobs, entries):
    """Write the documents of the layout for `entries` (their blobs are in place)."""
    entries = merge(entries)
    descriptors, archive, repositories = [], [], {}
    for entry in entries:
        manifest_hex = blobs.put(entry.manifest)
        descriptor = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + manifest_hex, "size": len(entry.manifest)}
        annotations = [_tag_annotations(tag) for tag in entry.repo_tags]
        annotations += [{REF_ANNOTATION: ref} for ref in entry.ref_names]
        annotations = [dict(notes, **entry.notes) for notes in annotations or [{}]]
        descriptors += [dict(descriptor, annotations=notes) if notes else descriptor for notes in annotations]
        layer_paths = [blob_path(hexd) for hexd, _, _ in entry.layers]
        archive.append({"Config": blob_path(entry.config_hex), "RepoTags": entry.repo_tags or None,
                        "Layers": layer_paths})
        for tag in entry.repo_tags:
            name, _, version = tag.rpartition(":")
            if entry.layers:
                repositories.setdefault(name, {})[version] = entry.layers[-1][0]
    _write(dest, "index.json", encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}))
    _write(dest, "manifest.json", encode(archive))
    if repositories:
        _write(dest, "repositories", encode({name: dict(sorted(tags.items()))
                                             for name, tags in sorted(repositories.items())}))
    _write(dest, "oci-layout", OCI_LAYOUT)


def oci_index(manifests):
    """The bytes of an OCI index over `manifests`, [(manifest bytes, Platform or None)], in order."""
    descriptors = []
    for data, platform in manifests:
        descriptor = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                      "size": len(data)}
        if platform:
            descriptor["platform"] = {key: value for key, value in (("architecture", platform.arch),
                                                                     ("os", platform.os),
                                                                     ("variant", platform.variant)) if value}
        descriptors.append(descriptor)
    return encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})


def write_index_layout(dest, blobs, index, repo_tags=()):
    """Write the documents of a layout holding a whole multi-platform image: `index` is
    the OCI index's bytes (its manifests and their blobs are in place)."""
    index_hex = blobs.put(index)
    descriptor = {"mediaType": OCI_INDEX, "digest": "sha256:" + index_hex, "size": len(index)}
    descriptors = [dict(descriptor, annotations=_tag_annotations(tag)) for tag in sorted(set(repo_tags))]
    _write(dest, "index.json", encode({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                       "manifests": descriptors or [descriptor]}))
    _write(dest, "oci-layout", OCI_LAYOUT)


def _tag_annotations(tag):
    return {NAME_ANNOTATION: qualified_name(tag), REF_ANNOTATION: tag.rpartition(":")[2]}


def _write(dest, name, data):
    with open(os.path.join(dest, name), "wb") as out:
        out.write(data)


def stored_compression(path, declared=None):
    """NONE, GZIP or ZSTD of a layer file, from its first bytes, else from its declared
    media type; a file that is none of these is refused."""
    with open(path, "rb") as stream:
        kind = sniff_compression(stream.read(512))
    kind = kind or (media_type_compression(declared) if declared else None)
    if kind is None:
        raise BadImageDir(f"{path}: not a tar, gzip or zstd layer; refusing the image")
    return kind


def kept_manifest(image):
    """(the bytes of a source image's own manifest when it is an OCI one, checked against
    its digest, or None: docker-dir writes one; annotations recording the manifest the
    source had when it is not kept: an engine that holds the image knows it by that digest)."""
    if image.json_blobs:  # the OCI walk's blobs: the image's own manifest last
        relpath, hexd = image.json_blobs[-1]
    else:  # a docker-archive's index.json names the manifest; the dir: layout's is manifest.json
        hexd = hex_of_digest(image.manifest_digest())
        relpath = blob_path(hexd) if hexd else None
    if hexd is None:
        return None, {}
    if relpath is None or not os.path.exists(image.image_dir.join(relpath)):
        return None, {SOURCE_DIGEST_ANNOTATION: "sha256:" + hexd}
    data = image.image_dir.read_bytes(relpath, f"{image.image_dir.join(relpath)}: missing")
    if hashlib.sha256(data).hexdigest() != hexd:
        raise BadImageDir(f"{image.image_dir.join(relpath)}: content does not match its digest sha256:{hexd[:12]}; "
                          "refusing the image")
    if _is_oci_manifest(image.image_dir.parse_json(data, relpath)):
        return data, {}
    return None, {SOURCE_DIGEST_ANNOTATION: "sha256:" + hexd}


def _is_oci_manifest(manifest):
    """An OCI image manifest: OCI media types for itself, its config and its layers."""
    config = manifest.get("config") if isinstance(manifest, dict) else None
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    return (manifest.get("mediaType") in (OCI_MANIFEST, None) and isinstance(config, dict)
            and config.get("mediaType") == OCI_CONFIG and isinstance(layers, list)
            and all(isinstance(d, dict) and str(d.get("mediaType")).startswith(OCI_LAYER_PREFIX) for d in layers))
