"""OCI descriptors, manifests and indexes, as the OCI layout and containers' `dir:` hold them.

A walk from a descriptor down to image manifests, refusing (one line, exit 65) what
no writer produces: digests that are not sha256:<64 hex>, media types that disagree
with the content, loops, manifests naming themselves, indexes too deep or too wide.
Docker's v2s2 manifest and manifest list are read like their OCI twins.
"""
from ..errors import BadImageDir
from .imagedir import Layer
from .names import NAME_ANNOTATION, REF_ANNOTATION, hex_of_digest, shown
from .platform import Platform

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = {OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"}
INDEX_TYPES = {OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"}
CONFIG_TYPES = {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}
# Far beyond what any tool writes (a multi-platform index has tens of entries, nesting 2 deep).
MAX_DEPTH = 4
MAX_MANIFESTS = 1024


class Leaf:
    """An image manifest reached by a walk: what an Image is made of."""

    def __init__(self, config_hex, layers, digests, blobs, platform):
        self.config_hex = config_hex
        self.layers = layers      # [Layer]
        self.digests = digests    # manifest digests, outermost index first, this manifest last
        self.blobs = blobs        # [(relpath, hex)] of those indexes and the manifest, for --verify
        self.platform = platform


def descriptors(index, where):
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
        raise BadImageDir(f"{where}: no list of manifest descriptors; the layout is damaged, save the image again")
    return manifests


def descriptor_hex(desc, where):
    digest = desc.get("digest") if isinstance(desc, dict) else None
    hexd = hex_of_digest(digest)
    if hexd is None:
        raise BadImageDir(f"{where}: digest {shown(repr(digest))} is not sha256:<64 hex digits>; "
                          "the layout is damaged or not one docker-dir reads")
    media_type = desc.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        raise BadImageDir(f"{where}: malformed mediaType; the layout is damaged, save the image again")
    return hexd


def tags_of(desc):
    """(repo tags, bare ref names) a top-level descriptor's annotations give."""
    notes = desc.get("annotations")
    if not isinstance(notes, dict):
        return [], []
    name, ref = notes.get(NAME_ANNOTATION), notes.get(REF_ANNOTATION)
    tags = [name] if isinstance(name, str) and name.isprintable() and name else []
    if isinstance(ref, str) and ref.isprintable() and ref:
        if ":" in ref or "/" in ref:
            tags.append(ref)
        elif not tags:  # with a full name beside it, the bare ref name is only its tag
            return tags, [ref]
    return list(dict.fromkeys(tags)), []


def _is_attestation(desc):
    notes = desc.get("annotations")
    platform = desc.get("platform")
    return (isinstance(notes, dict) and notes.get("vnd.docker.reference.type") == "attestation-manifest"
            or isinstance(platform, dict) and platform.get("os") == "unknown")


class Walker:
    """Walks the descriptors of one image directory's layout: `read_blob(hex) ->
    (relpath, object)` reads a manifest or index blob, `blob_path(hex)` names a config
    or layer blob (paths relative to the directory)."""

    def __init__(self, image_dir, read_blob, blob_path):
        self.image_dir = image_dir
        self.read_blob = read_blob
        self.blob_path = blob_path
        self.count = 0

    def leaves(self, desc, where, chain=(), platform=None, depth=0, blobs=()):
        """The image manifests under descriptor `desc` (an index or a manifest)."""
        hexd = descriptor_hex(desc, where)
        if hexd in chain:
            raise BadImageDir(f"{where}: sha256:{hexd[:12]} contains itself (a loop); the layout is damaged")
        if depth > MAX_DEPTH:
            raise BadImageDir(f"{where}: indexes nested deeper than {MAX_DEPTH}; refusing the layout")
        self.count += 1
        if self.count > MAX_MANIFESTS:
            raise BadImageDir(f"{where}: more than {MAX_MANIFESTS} manifests; refusing the layout")
        if _is_attestation(desc):
            return []
        declared = desc.get("mediaType")
        if declared is not None and declared not in MANIFEST_TYPES | INDEX_TYPES:
            return []  # an artifact (signature, SBOM...), not an image
        relpath, blob = self.read_blob(hexd)
        shown_path = self.image_dir.join(relpath)
        if not isinstance(blob, dict):
            raise BadImageDir(f"{shown_path}: not a manifest or index object; the layout is damaged")
        own = blob.get("mediaType")
        if own is not None and not isinstance(own, str):
            raise BadImageDir(f"{shown_path}: malformed mediaType; the layout is damaged, save the image again")
        is_index = isinstance(blob.get("manifests"), list)
        actual = "index" if is_index else "manifest" if "config" in blob else None
        for named in (declared, own):
            if named in INDEX_TYPES and actual != "index" or named in MANIFEST_TYPES and actual != "manifest":
                raise BadImageDir(f"{shown_path}: its media type says {shown(named)} but it holds "
                                  f"{ {'index': 'an index', 'manifest': 'a manifest'}.get(actual, 'neither a manifest nor an index')}; "
                                  "the layout is damaged")
        if actual is None:
            raise BadImageDir(f"{shown_path}: neither a manifest nor an index; the layout is damaged")
        platform = Platform.of(desc.get("platform")) or platform
        chain = (*chain, hexd)
        blobs = (*blobs, (relpath, hexd))
        if actual == "index":
            found = []
            for i, child in enumerate(descriptors(blob, shown_path)):
                found += self.leaves(child, f"{shown_path}: manifests[{i}]", chain, platform, depth + 1, blobs)
            return found
        return self._manifest(blob, shown_path, chain, platform, blobs)

    def _manifest(self, manifest, relpath, chain, platform, blobs):
        config = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(config, dict) or not isinstance(layers, list) or not all(isinstance(d, dict)
                                                                                    for d in layers):
            raise BadImageDir(f"{relpath}: a manifest without config or layers; the layout is damaged")
        config_hex = descriptor_hex(config, f"{relpath}: config")
        config_type = config.get("mediaType")
        if config_type is not None and config_type not in CONFIG_TYPES:
            return []  # an artifact's manifest, not an image's
        result = []
        for i, desc in enumerate(layers):
            hexd = descriptor_hex(desc, f"{relpath}: layers[{i}]")
            media_type = desc.get("mediaType")
            if media_type is not None and media_type not in LAYER_TYPES:
                raise BadImageDir(f"{relpath}: layers[{i}] has media type {shown(media_type)}, not a layer "
                                  "docker-dir can load")
            size = desc.get("size")
            result.append(Layer(self.blob_path(hexd), "sha256:" + hexd, media_type,
                                size if isinstance(size, int) and not isinstance(size, bool) else None))
        if chain[-1] in {config_hex, *(layer.digest[7:] for layer in result)}:
            raise BadImageDir(f"{relpath}: the manifest names itself as its config or a layer; the layout is damaged")
        return [Leaf(config_hex, result, list(chain), list(blobs), platform)]
