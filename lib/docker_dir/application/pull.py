"""Images from a registry into the build directory of a save (docker-dir-save docker://REF).

The manifest (or index) is walked by the format layer's OCI walk, which refuses what
breaks the rules (media types that lie, loops, nesting, artifacts in place of images);
the platform is chosen (this host's, --platform's, or all with --all-platforms); then the
config and the layers are fetched a few at a time, each checked against its digest and
size as it streams (registry/client.py resumes a dropped transfer). Blobs the directory
being replaced already holds are reused (checked), not downloaded. Layers stay as the
registry serves them, so their digests stay the registry's; an OCI manifest is kept
byte for byte, another (Docker's v2s2) is written anew in OCI media types with the
registry's digest recorded beside it.
"""
import hashlib
import os

from ..errors import BadImageDir, BadRegistryData, SelectionError
from ..fastjson import loads_json
from ..format.canonical import OCI_INDEX, OCI_MANIFEST, Entry, layer_media_type, oci_index
from ..format.compression import media_type_compression
from ..format.imagedir import ImageDir
from ..format.names import REPO_DIGEST_ANNOTATION, SOURCE_DIGEST_ANNOTATION, hex_of_digest, shown
from ..format.oci import Walker
from ..format.selection import matching_platform
from ..format.streams import sha256_file
from ..registry.client import Registry
from ..registry.reference import DOCKER_HUB, blob_url
from .transfers import Transfers

# What a pull accepts, most wanted first (as docker and podman ask).
ACCEPT = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json", OCI_MANIFEST,
          "application/vnd.docker.distribution.manifest.v2+json")
# Layers fetched at once: enough to fill a link, few enough not to starve each other.
PARALLEL = 4


class Pulled:
    """What a pull put in the build directory: entries for write_layout, or (all
    platforms) the OCI index's bytes with its tag, and the bytes fetched."""

    def __init__(self, entries=(), index=None, repo_tags=(), nbytes=0, layer_urls=None):
        self.entries, self.index, self.repo_tags, self.nbytes = list(entries), index, list(repo_tags), nbytes
        self.layer_urls = layer_urls or {}  # {path in DIR: docker-blob:// URL} of every layer pulled


def pull(source, blobs, selectors, reporter, insecure=(), reuse_dir=None):
    """The images of `source` (a RegistryImage) with their blobs in `blobs`."""
    ref = source.reference
    with Registry(ref.registry, insecure=insecure) as registry:
        registry.log_in(ref.repository)
        top, media_type, digest = registry.get_manifest(ref.repository, ref.manifest_reference, ACCEPT)
        # Manifests and indexes are held here; only those the layout keeps become blobs.
        documents = {hex_of_digest(digest): top}
        walker = Walker(_Shown(source), _manifest_reader(registry, ref.repository, documents), _blob_path)
        leaves = walker.leaves({"digest": digest, "mediaType": media_type}, str(source))
        if not leaves:
            raise BadRegistryData(f"{source}: names no image (only artifacts); nothing to save")
        chosen = leaves if selectors.all_platforms else [_of_platform(source, leaves, selectors.platform)]
        manifests = [_manifest_document(documents, leaf, source) for leaf in chosen]
        fetch = _Fetcher(registry, ref.repository, blobs, reuse_dir)
        for manifest in manifests:
            fetch.plan(manifest["config"]["digest"], manifest["config"].get("size"))
            for layer in manifest["layers"]:
                fetch.plan(layer["digest"], layer.get("size"))
        fetch.run(reporter, f"pulling {source}")
    tag = _familiar(ref) + ":" + ref.tag if ref.tag else None
    repo_digest = f"{_familiar(ref)}@{digest}"
    entries = [_entry(blobs, documents[leaf.digests[-1]], manifest, tag, repo_digest)
               for leaf, manifest in zip(chosen, manifests)]
    urls = {_blob_path(layer["digest"][7:]): blob_url(ref.registry, ref.repository, layer["digest"])
            for manifest in manifests for layer in manifest["layers"]}
    if not selectors.all_platforms:
        return Pulled(entries, nbytes=fetch.fetched, layer_urls=urls)
    return Pulled(index=_oci_index(blobs, top, media_type, leaves, entries), repo_tags=[tag] if tag else [],
                  nbytes=fetch.fetched, layer_urls=urls)


class _Shown:
    """What the OCI walk's messages name a document by: its place in the registry."""

    def __init__(self, source):
        self.source = source

    def join(self, relpath):
        return f"{self.source} (sha256:{relpath.rsplit('/', 1)[-1][:12]})"


def _blob_path(hexd):
    return f"blobs/sha256/{hexd}"


def _manifest_reader(registry, repository, documents):
    """read_blob for the OCI walk: a manifest or index, fetched by digest (checked) unless
    `documents` ({hex: bytes}) holds it already."""
    def read(hexd):
        if hexd not in documents:
            documents[hexd] = registry.get_manifest(repository, "sha256:" + hexd, ACCEPT)[0]
        data = documents[hexd]
        try:
            return _blob_path(hexd), loads_json(data)
        except (ValueError, RecursionError) as err:
            raise BadRegistryData(f"manifest sha256:{hexd[:12]} of {registry.host}/{repository} is not valid "
                                  f"JSON ({err}); the registry's content is damaged") from None
    return read


def _of_platform(source, leaves, wanted):
    """The leaf of this host's platform, or of `wanted`, by the rule a directory's images
    are chosen by (format/selection.py); one leaf is the image whatever it says."""
    if len(leaves) == 1 and (wanted is None or leaves[0].platform is None):
        return leaves[0]
    matching = matching_platform(source, leaves, wanted, lambda leaf: leaf.platform, verb="offers")
    if len(matching) > 1:
        name = f"docker://{source.reference.registry}/{source.reference.repository}"
        raise SelectionError(f"{source}: {len(matching)} images are for platform {matching[0].platform}: "
                             + ", ".join(f"sha256:{leaf.digests[-1][:12]}" for leaf in matching)
                             + f"; save one by its digest: {name}@sha256:…")
    return matching[0]


def _manifest_document(documents, leaf, source):
    """The leaf's manifest; layers the registry would have us fetch from elsewhere
    (`urls`) are refused: neither fetched nor checked. Every blob must say its size: a
    download is bounded by it."""
    document = loads_json(documents[leaf.digests[-1]])
    for what, descriptor in [("config", document["config"])] + [("layer", layer) for layer in document["layers"]]:
        named = f"{what} {shown(str(descriptor.get('digest')))}"
        if descriptor.get("urls") is not None:
            raise BadRegistryData(f"{source}: {named} is to be fetched from other URLs (a non-distributable "
                                  "layer); docker-dir fetches from the registry only")
        size = descriptor.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRegistryData(f"{source}: {named} has no valid size; the registry's manifest is damaged")
    return document


def _entry(blobs, data, document, tag, repo_digest):
    """The Entry of a pulled image (`data` its manifest's bytes, `document` them parsed):
    its own manifest kept when it is an OCI one."""
    config_hex = hex_of_digest(document["config"]["digest"])
    layers = []
    for layer in document["layers"]:
        hexd = hex_of_digest(layer["digest"])
        compression = media_type_compression(layer.get("mediaType") or "") or "none"
        layers.append((hexd, os.stat(blobs.path(hexd)).st_size, layer_media_type(compression, layer.get("mediaType"))))
    notes = {REPO_DIGEST_ANNOTATION: repo_digest}
    manifest = None
    if document.get("mediaType") in (OCI_MANIFEST, None):  # the OCI spec leaves it out of manifests (podman does)
        manifest = data
    else:
        notes[SOURCE_DIGEST_ANNOTATION] = "sha256:" + hashlib.sha256(data).hexdigest()
    return Entry(config_hex, os.stat(blobs.path(config_hex)).st_size, layers, repo_tags=[tag] if tag else [],
                 manifest=manifest, notes=notes)


def _oci_index(blobs, top, media_type, leaves, entries):
    """The OCI index of a whole multi-platform image: the registry's own bytes when it is
    one whose manifests were all kept, else one written anew over the OCI manifests."""
    for entry in entries:
        blobs.put(entry.manifest)
    kept = all(hashlib.sha256(entry.manifest).hexdigest() == leaf.digests[-1] and len(leaf.digests) == 2
               for leaf, entry in zip(leaves, entries))
    listed = loads_json(top).get("manifests") if media_type == OCI_INDEX else None
    if kept and isinstance(listed, list) and len(listed) == len(leaves):  # nothing left out (attestations)
        return top
    return oci_index([(entry.manifest, leaf.platform) for leaf, entry in zip(leaves, entries)])


def _familiar(ref):
    """The name as docker shows it: Docker Hub's without docker.io/ (and library/)."""
    if ref.registry != DOCKER_HUB:
        return f"{ref.registry}/{ref.repository}"
    return ref.repository[8:] if ref.repository.startswith("library/") else ref.repository


class _Fetcher:
    """Blobs to fetch, each once, a few at a time (transfers.py), with one progress line;
    those the directory being replaced holds, or the blob store (each checked against its
    digest), are taken from there instead; each fetched blob goes to the store too."""

    def __init__(self, registry, repository, blobs, reuse_dir):
        self.registry, self.repository, self.blobs, self.reuse_dir = registry, repository, blobs, reuse_dir
        self.wanted = {}  # hex -> size
        self.fetched = 0

    def plan(self, digest, size):
        hexd = hex_of_digest(digest)
        if hexd and not self.blobs.has(hexd) and hexd not in self.wanted:
            self.wanted[hexd] = size

    def run(self, reporter, label):
        missing = {hexd: size for hexd, size in self.wanted.items() if not self._reused(hexd)}
        with Transfers(reporter, label, total=sum(missing.values()) or None, parallel=PARALLEL) as transfers:
            def fetch(hexd):
                if self.blobs.take_from_store(hexd, missing[hexd]):  # read and checked: no download
                    transfers.counted(missing[hexd])
                    return 0
                partial = self.blobs.path(f".{hexd}.partial")
                self.registry.fetch_blob(self.repository, "sha256:" + hexd, missing[hexd], partial,
                                         transfers.counted)
                os.rename(partial, self.blobs.path(hexd))
                self.blobs.checked(hexd)
                return missing[hexd]

            self.fetched = sum(transfers.results([transfers.submit(fetch, hexd)
                                                  for hexd in sorted(missing, key=missing.get, reverse=True)]))

    def _reused(self, hexd):
        """Blob `hexd` taken from the directory being replaced, if it holds it whole."""
        if self.reuse_dir is None:
            return False
        try:
            path = ImageDir(self.reuse_dir).resolve(_blob_path(hexd))
            if not os.path.isfile(path) or sha256_file(path) != hexd:
                return False
            try:
                self.blobs.link(os.path.realpath(path), hexd)
            except OSError:  # another file system, or links refused: a copy, checked again as it is made
                with open(path, "rb") as stream:
                    self.blobs.copy(stream, hexd, None, path)
        except (BadImageDir, OSError):
            return False
        return True
