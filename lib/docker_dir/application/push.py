"""Publish an image directory to a registry (docker-dir-push DIR docker://REF), no engine.

The image is read as every command reads it (consistently, content present). Each blob
is made present in the registry by one transfer (transfers.py: a few at a time, the first
failure or a signal stopping the rest): HEAD first; if the registry lacks it, a
cross-repository mount from a repository of that registry known to hold it (the one the
image was pulled from, or one it was pushed to before: push_cache.py), else an upload
(registry/client.py: resumed or restarted when dropped). The manifest goes last, so an
interrupted push never leaves a tag naming missing blobs.

Reproducible: the config goes up with its original bytes (the image ID stays what
docker-dir-id prints), layers stored compressed go up as they are, and uncompressed ones
are compressed (gzip by default, zstd, or none) the same way every time
(format/compress.py), streamed into the upload as they are made. DIR's own manifest (and,
with --all-platforms, its index) goes up byte for byte when it describes exactly the blobs
pushed, so an image pulled from a registry keeps its digest. What a layer compressed to
is remembered (push_cache.py), so a re-push asks the registry for the compressed digest
first and compresses only what it lacks.
"""
import hashlib
import json
import os
import threading

from ..errors import BadImageDir, ContentMissing, UsageError
from ..format.canonical import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, encode, layer_media_type, oci_index
from ..format.compress import CompressedLayer
from ..format.compression import GZIP, NONE, ZSTD, sniff_compression
from ..format.consistent import read_consistently
from ..format.names import hex_of_digest
from ..format.streams import sha256_file
from ..fs import open_regular
from ..registry.client import Registry
from ..registry.reference import Reference, blob_url
from . import QUIET
from .push_cache import Remembered, cache_dir
from .transfers import Transfers

COMPRESSIONS = (GZIP, ZSTD, NONE)
# Blobs handled at once: compression keeps the cores busy while uploads wait on the network.
PARALLEL = max(3, os.cpu_count() or 1)


class Pushed:
    """What a push did: the pinned reference, its digest, bytes uploaded, and how many
    blobs were uploaded, found present, or mounted from another repository."""

    def __init__(self, pinned, digest, nbytes, counts, layer_urls):
        self.pinned, self.digest, self.nbytes = pinned, digest, nbytes
        self.uploaded, self.present, self.mounted = counts["uploaded"], counts["present"], counts["mounted"]
        self.layer_urls = layer_urls  # {path in DIR: docker-blob:// URL} of the layers that went up as stored


def push(path, target, repo_tag=None, config=None, platform=None, all_platforms=False, compress=GZIP,
         insecure=(), reporter=QUIET):
    """Push the selected image of DIR `path` (or, with all_platforms, its whole index) to
    `target` (HOST[:PORT]/NAME[:TAG]); returns Pushed."""
    if compress not in COMPRESSIONS:
        raise UsageError(f"--compress {compress}: choose one of {', '.join(COMPRESSIONS)}")
    ref = Reference.parse(target)
    if ref.digest:
        raise UsageError(f"docker://{target}: push to a tag (NAME[:TAG]); the digest is what the push prints")
    images = read_consistently(path, lambda image_dir: _chosen(image_dir, repo_tag, config, platform, all_platforms))
    for image in images:
        image.require_content()
    remembered = Remembered(cache_dir())
    with Registry(ref.registry, insecure=insecure) as registry:
        registry.log_in(ref.repository)
        pusher = _Pusher(registry, ref.repository, compress, remembered, _pulled_from(images, ref.registry))
        label = f"pushing {path} to docker://{ref.registry}/{ref.repository}"
        with Transfers(reporter, label, parallel=PARALLEL) as transfers:
            manifests = pusher.run(images, transfers)
        if len(images) == 1:
            digest = registry.put_manifest(ref.repository, ref.tag, manifests[0], OCI_MANIFEST)
        else:
            for data in manifests:
                registry.put_manifest(ref.repository, "sha256:" + hashlib.sha256(data).hexdigest(), data, OCI_MANIFEST)
            index = _own_index(images, manifests) or _index_over(images, manifests)
            digest = registry.put_manifest(ref.repository, ref.tag, index, OCI_INDEX)
    remembered.pushed(ref.registry, ref.repository, pusher.digests)
    urls = {layer.path: blob_url(ref.registry, ref.repository, "sha256:" + pusher.stored[path])
            for image in images for layer in image.layers
            for path in [image.image_dir.resolve(layer.path)] if path in pusher.stored}
    return Pushed(ref.with_digest(digest), digest, transfers.done, pusher.counts, urls)


def _chosen(image_dir, repo_tag, config, platform, all_platforms):
    """One image as the selectors leave it, or every image of a multi-platform index."""
    if not all_platforms:
        return [image_dir.select(repo_tag=repo_tag, config=config, platform=platform)]
    images = image_dir.images()
    if len(images) < 2 or not all(image.platform for image in images):
        raise UsageError(f"{image_dir.path}: --all-platforms pushes a multi-platform index, and DIR holds "
                         f"{'one image' if len(images) < 2 else 'images that are not one index'}")
    return images


def _pulled_from(images, registry):
    """Repositories of `registry` the images were pulled from (their repo digests): they
    hold every blob, so the registry can mount from them."""
    found = []
    for image in images:
        for repo_digest in image.repo_digests:
            name = repo_digest.rpartition("@")[0]
            host, _, repository = name.partition("/")
            if host == registry and repository not in found:
                found.append(repository)
    return found


def _own_index(images, manifests):
    """The bytes of DIR's OCI index over the images if it lists exactly the pushed manifests,
    in order and nothing else (a pulled index goes back with the digest it came with)."""
    parents = {image.json_blobs[-2][1] if len(image.json_blobs) >= 2 else None for image in images}
    if len(parents) != 1 or None in parents:
        return None
    document, data = _own_document(images[0].image_dir, parents.pop())
    if document is None or document.get("mediaType", OCI_INDEX) != OCI_INDEX or "subject" in document:
        return None
    listed = [(d.get("mediaType"), d.get("digest"), d.get("size")) if isinstance(d, dict) else None
              for d in document.get("manifests") or []]
    if listed != [(OCI_MANIFEST, "sha256:" + hashlib.sha256(m).hexdigest(), len(m)) for m in manifests]:
        return None
    return data


def _index_over(images, manifests):
    """An OCI index over the pushed manifests, one per platform, in DIR's order."""
    return oci_index([(data, image.platform) for image, data in zip(images, manifests)])


class _Pusher:
    """The blobs of the images made present in the registry, each by one transfer (a blob
    shared by several images once), and the manifests to push over them."""

    def __init__(self, registry, repository, compress, remembered, mount_from):
        self.registry, self.repository = registry, repository
        self.compress, self.remembered, self.mount_from = compress, remembered, mount_from
        self.counts = {"uploaded": 0, "present": 0, "mounted": 0}
        self.digests = []  # every blob the registry holds for the image once the push is done
        self.stored = {}  # path in DIR -> hex of the layers that went up as they are stored
        self._tasks = {}  # a blob's path in DIR -> its Future: (hex, size, media type) as pushed
        self._lock = threading.Lock()

    def run(self, images, transfers):
        """The manifests of `images`, once every blob they name is in the registry."""
        self.transfers = transfers
        planned = [self._plan(image) for image in images]
        transfers.results(list(self._tasks.values()))
        return [self._manifest(image, config.result(), [layer.result() for layer in layers])
                for image, (config, layers) in zip(images, planned)]

    def _plan(self, image):
        """(config task, layer tasks) of an image."""
        image_dir = image.image_dir
        config_path = image_dir.resolve(image.config_path)
        config = self._task(config_path, self._config, config_path, image.config_digest())
        diff_ids = image.diff_ids() or []
        layers = []
        for i, layer in enumerate(image.layers):
            path = image_dir.resolve(layer.path)
            diff_hex = hex_of_digest(diff_ids[i]) if i < len(diff_ids) else None
            layers.append(self._task(path, self._layer, path, hex_of_digest(layer.digest), diff_hex,
                                     layer.media_type))
        return config, layers

    def _task(self, path, work, *args):
        """The transfer making the blob at `path` present: one per blob, however many images share it."""
        if path not in self._tasks:
            self._tasks[path] = self.transfers.submit(work, *args)
        return self._tasks[path]

    def _config(self, path, hexd):
        return self._present(hexd, os.stat(path).st_size, _FileBlob(path, self.transfers).open) + (OCI_CONFIG,)

    def _layer(self, path, stored_hex, diff_hex, declared):
        """Make one layer of DIR present in the registry, compressed first if it must be:
        (hex, size, media type) as the registry holds it."""
        with open_regular(path) as stream:
            stored = sniff_compression(stream.read(512))
        if stored is None:
            raise BadImageDir(f"{path}: not a tar, gzip or zstd layer; save the image again")
        if stored != NONE or self.compress == NONE:
            hexd = stored_hex or sha256_file(path)
            found = self._present(hexd, os.stat(path).st_size, _FileBlob(path, self.transfers).open)
            with self._lock:
                self.stored[path] = hexd
            return found + (layer_media_type(stored, declared),)
        expected = {name for name in (stored_hex, diff_hex) if name}
        diff_hex = diff_hex or stored_hex or sha256_file(path)
        layer = CompressedLayer(path, self.compress, expected)
        known = self.remembered.compressed(diff_hex, self.compress)
        if known is not None:
            found = self._present(known[0], known[1], layer.open)
        else:  # what it compresses to is known once it is up: streamed into one upload
            self.transfers.check()
            digest, size = self.registry.upload_blob(self.repository, layer.open, self.transfers.counted)
            found = self._held(hex_of_digest(digest), size, "uploaded")
            self.remembered.remember(diff_hex, self.compress, *found)
        return found + (layer_media_type(self.compress),)

    def _present(self, hexd, size, open_stream):
        """(hex, size) of a blob once the registry holds it: found (HEAD), mounted from a
        repository known to hold it, or uploaded from open_stream(offset)."""
        digest = "sha256:" + hexd
        self.transfers.check()
        if self.registry.blob_size(self.repository, digest) is not None:
            return self._held(hexd, size, "present")
        if any(self.registry.mount_blob(self.repository, digest, other)
               for other in self.mount_from + self.remembered.repositories(self.registry.host, hexd)
               if other != self.repository):
            return self._held(hexd, size, "mounted")
        self.transfers.check()
        self.registry.upload_blob(self.repository, open_stream, self.transfers.counted, digest, size)
        return self._held(hexd, size, "uploaded")

    def _held(self, hexd, size, outcome):
        with self._lock:
            self.counts[outcome] += 1
            self.digests.append(hexd)
        return hexd, size

    def _manifest(self, image, config, layers):
        """DIR's own manifest when it names exactly the pushed blobs (the digest DIR
        records stays), else an OCI manifest over them."""
        own = _own_manifest(image, config, layers)
        if own is not None:
            return own
        config_hex, config_size, config_type = config
        return encode({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": config_type, "digest": "sha256:" + config_hex, "size": config_size},
                       "layers": [{"mediaType": media_type, "digest": "sha256:" + hexd, "size": size}
                                  for hexd, size, media_type in layers]})


def _own_manifest(image, config, layers):
    """The bytes of DIR's OCI manifest of `image` if it describes exactly these blobs."""
    digest = image.json_blobs[-1][1] if image.json_blobs else hex_of_digest(image.manifest_digest())
    if digest is None:
        return None
    manifest, data = _own_document(image.image_dir, digest)
    if manifest is None:
        return None
    described = [(d.get("digest"), d.get("size"), d.get("mediaType"))
                 for d in manifest.get("layers", []) if isinstance(d, dict)]
    # mediaType is optional in an OCI manifest (podman and buildah leave it out)
    if (manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST or not isinstance(manifest.get("config"), dict)
            or manifest["config"].get("digest") != "sha256:" + config[0]
            or described != [("sha256:" + hexd, size, media_type) for hexd, size, media_type in layers]):
        return None
    return data


def _own_document(image_dir, hexd):
    """(parsed, bytes) of the JSON blob `hexd` of DIR when it is there whole, else (None, None)."""
    try:
        data = image_dir.read_bytes(f"blobs/sha256/{hexd}", "absent")
    except (BadImageDir, ContentMissing):  # a layout without manifests in blobs/ (containers dir:)
        return None, None
    if hashlib.sha256(data).hexdigest() != hexd:
        return None, None
    try:
        document = json.loads(data)
    except ValueError:
        return None, None
    return (document, data) if isinstance(document, dict) else (None, None)


class _FileBlob:
    """A blob stored as it goes up (a config, a compressed layer), read from any offset;
    reads stop when the push does."""

    def __init__(self, path, transfers):
        self.path, self.transfers = path, transfers

    def open(self, offset=0):
        stream = open_regular(self.path)
        stream.seek(offset)
        return self.transfers.reader(stream)
