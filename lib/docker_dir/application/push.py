"""Publish an image directory to a registry (docker-dir-push DIR docker://REF), no engine.

The image is read as every command reads it (consistently, content present). Each blob
is made present in the registry by one task, a few tasks at a time: HEAD first; if the
registry lacks it, a cross-repository mount from a repository of that registry known to
hold it (the one the image was pulled from, or one it was pushed to before), else an
upload (chunked, resumed or restarted when dropped: registry/client.py). The manifest
goes last, so an interrupted push never leaves a tag naming missing blobs; once the push
fails or is interrupted, blobs not started are not, and those under way stop at their next read.

Reproducible: the config goes up with its original bytes (the image ID stays what
docker-dir-id prints), layers stored compressed go up as they are, and uncompressed ones
are compressed (gzip by default, zstd, or none) deterministically: the same bytes on
every push with the same zlib or zstd library, hence the same manifest digest. DIR's own
manifest (and, with --all-platforms, its index) goes up byte for byte when it describes
exactly the blobs pushed, so an image pulled from a registry keeps its digest. What a
layer compressed to is remembered in the cache directory (layer-digests.json), so a
re-push asks the registry for the compressed digest first and compresses only what it
lacks. hashlib and the compressors are imported here freely: push is no hot path.
"""
import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import isal
from isal import isal_zlib

from ..errors import BadImageDir, ContentMissing, UsageError, VerifyError
from ..format.canonical import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, encode, layer_media_type, oci_index
from ..format.compression import GZIP, NONE, ZSTD, sniff_compression
from ..format.consistent import read_consistently
from ..format.names import hex_of_digest, short
from ..format.streams import CHUNK, HashingReader, sha256_file
from ..format.verify import CORRUPT
from ..fs import open_regular, write_if_changed
from ..nodelocal import BuildDir, private_dir, remove_abandoned
from ..registry.client import Registry
from ..registry.reference import Reference, blob_url
from . import QUIET

COMPRESSIONS = (GZIP, ZSTD, NONE)
# Blobs handled at once: compression keeps the cores busy while uploads wait on the network.
PARALLEL = max(3, os.cpu_count() or 1)
# ISA-L's deflate (the isal package): gzip any tool reads, made ten times as fast as zlib's
# on incompressible data (bench/RESULTS.md), at its default level. Always it, never zlib
# as a fallback: another compressor would give other bytes, so another manifest digest.
GZIP_LEVEL = 2
ZSTD_LEVEL = 3  # zstd(1)'s default
_WORK = ".push-"


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
    cache = _cache_dir()
    remove_abandoned(cache, lambda name: name.startswith(_WORK), _remove_tree)
    remembered = _Remembered(cache)
    with BuildDir(cache, _WORK, _remove_tree) as work, Registry(ref.registry, insecure=insecure) as registry:
        pusher = _Pusher(registry, ref.repository, work, compress, remembered, _pulled_from(images, ref.registry))
        manifests = pusher.run(images, reporter, f"pushing {path} to docker://{ref.registry}/{ref.repository}")
        if len(images) == 1:
            digest = registry.put_manifest(ref.repository, ref.tag, manifests[0], OCI_MANIFEST)
        else:
            for data in manifests:
                registry.put_manifest(ref.repository, "sha256:" + hashlib.sha256(data).hexdigest(), data, OCI_MANIFEST)
            index = _own_index(images, manifests) or _index_over(images, manifests)
            digest = registry.put_manifest(ref.repository, ref.tag, index, OCI_INDEX)
        _remove_tree(work)  # the compressed layers are in the registry now; BuildDir removes it only on failure
    remembered.pushed(ref.registry, ref.repository, pusher.digests)
    urls = {layer.path: blob_url(ref.registry, ref.repository, "sha256:" + pusher.stored[path])
            for image in images for layer in image.layers
            for path in [image.image_dir.resolve(layer.path)] if path in pusher.stored}
    return Pushed(ref.with_digest(digest), digest, pusher.uploaded_bytes, pusher.counts, urls)


def _remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


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


def _cache_dir():
    """$XDG_CACHE_HOME/docker-dir (~/.cache/docker-dir): compressed layers' digests, and the
    work directories of pushes in progress (one a killed push left is removed by the next)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass  # private_dir says what is wrong with it
    return private_dir(os.path.join(base, "docker-dir"), "cache directory",
                       "set XDG_CACHE_HOME to a directory of your own")


class _Pusher:
    """The blobs of the images made present in the registry, each by one task (a blob
    shared by several images once), and the manifests to push over them."""

    def __init__(self, registry, repository, work, compress, remembered, mount_from):
        self.registry, self.repository, self.work = registry, repository, work
        self.compress, self.remembered, self.mount_from = compress, remembered, mount_from
        self.counts = {"uploaded": 0, "present": 0, "mounted": 0}
        self.uploaded_bytes = 0
        self.digests = []  # every blob the registry holds for the image once the push is done
        self.stored = {}  # path in DIR -> hex of the layers that went up as they are stored
        self._lock = threading.Lock()
        self._tasks = {}  # a blob's path in DIR -> its Future: (hex, size, media type) as pushed
        self._stopping = threading.Event()  # set when the push fails or is interrupted

    def run(self, images, reporter, label):
        progress = reporter.transfer(label, total=None)

        def counted(nbytes):
            with self._lock:
                progress(nbytes)

        try:
            with ThreadPoolExecutor(PARALLEL) as pool:
                try:
                    planned = [self._plan(pool, image, counted) for image in images]
                    manifests = [self._manifest(image, config.result(), [layer.result() for layer in layers])
                                 for image, (config, layers) in zip(images, planned)]
                except BaseException:
                    # Ctrl-C or a failed blob: the blobs not started are not, those under way stop at
                    # their next read, instead of all of them going up before the error shows
                    self._stopping.set()
                    pool.shutdown(cancel_futures=True)
                    raise
        except BaseException:
            progress.cancel()
            raise
        progress.close()
        self.uploaded_bytes = progress.done
        return manifests

    def _plan(self, pool, image, counted):
        """(config task, layer tasks) of an image."""
        image_dir = image.image_dir
        config_path = image_dir.resolve(image.config_path)
        config = self._task(pool, config_path, self._config, config_path, image.config_digest(), counted)
        diff_ids = image.diff_ids() or []
        layers = []
        for i, layer in enumerate(image.layers):
            path = image_dir.resolve(layer.path)
            diff_hex = hex_of_digest(diff_ids[i]) if i < len(diff_ids) else None
            layers.append(self._task(pool, path, self._layer, path, hex_of_digest(layer.digest), diff_hex,
                                     layer.media_type, counted))
        return config, layers

    def _task(self, pool, path, work, *args):
        """The task making the blob at `path` present: one per blob, however many images share it."""
        if path not in self._tasks:
            self._tasks[path] = pool.submit(work, *args)
        return self._tasks[path]

    def _config(self, path, hexd, counted):
        return self._present(hexd, os.stat(path).st_size, lambda: path, counted) + (OCI_CONFIG,)

    def _layer(self, path, stored_hex, diff_hex, declared, counted):
        """Make one layer of DIR present in the registry, compressed first if it must be:
        (hex, size, media type) as the registry holds it. An uncompressed layer is checked
        against its digests as it is compressed: the registry sees only the compressed
        bytes, and would take a damaged layer for a new one."""
        with open_regular(path) as stream:
            stored = sniff_compression(stream.read(512))
        if stored is None:
            raise BadImageDir(f"{path}: not a tar, gzip or zstd layer; save the image again")
        if stored != NONE or self.compress == NONE:
            hexd = stored_hex or sha256_file(path)
            found = self._present(hexd, os.stat(path).st_size, lambda: path, counted)
            with self._lock:
                self.stored[path] = hexd
            return found + (layer_media_type(stored, declared),)
        expected = {name for name in (stored_hex, diff_hex) if name}
        diff_hex = diff_hex or stored_hex or sha256_file(path)
        known = self.remembered.compressed(diff_hex, self.compress)
        made = {}

        def compressed():
            hexd, size, made_path, source_hex = _compress_file(path, self.work, self.compress, self._stopping)
            wrong = sorted(expected - {source_hex})
            if wrong:
                raise VerifyError(f"{path}: content sha256:{short(source_hex)} does not match its digest "
                                  f"sha256:{short(wrong[0])}; {CORRUPT}")
            if known and (hexd, size) != known:
                raise UsageError(f"{path}: compressed now to sha256:{hexd[:12]}, earlier to sha256:{known[0][:12]} "
                                 f"(another zlib or zstd library?); remove {self.remembered.path} and push again")
            made.update(hexd=hexd, size=size)
            return made_path

        if known is None:
            made_path = compressed()
            self.remembered.remember(diff_hex, self.compress, made["hexd"], made["size"])
            found = self._present(made["hexd"], made["size"], lambda: made_path, counted)
        else:
            found = self._present(known[0], known[1], compressed, counted)
        return found + (layer_media_type(self.compress),)

    def _present(self, hexd, size, source, counted):
        """(hex, size) of a blob once the registry holds it: found (HEAD), mounted from a
        repository known to hold it, or uploaded from source() (a path, made on demand)."""
        digest = "sha256:" + hexd
        self._check_going_on()
        if self.registry.blob_size(self.repository, digest) is not None:
            outcome = "present"
        elif any(self.registry.mount_blob(self.repository, digest, other)
                 for other in self.mount_from + self.remembered.repositories(self.registry.host, hexd)
                 if other != self.repository):
            outcome = "mounted"
        else:
            path = source()
            self._check_going_on()
            self.registry.upload_blob(self.repository, digest, size,
                                      lambda offset: _Stoppable(_opened_at(path, offset), self._stopping), counted)
            outcome = "uploaded"
        with self._lock:
            self.counts[outcome] += 1
            self.digests.append(hexd)
        return hexd, size

    def _check_going_on(self):
        if self._stopping.is_set():
            raise _Stopped()

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


def _opened_at(path, offset):
    stream = open(path, "rb")
    stream.seek(offset)
    return stream


def _compress_file(path, work, method, stopping):
    """(hex, size, path, hex of the source) of `path` compressed into the work directory,
    deterministically: gzip with no name and mtime 0 (as gzip -n; ISA-L), or zstd at its default level."""
    out_path = os.path.join(work, os.urandom(8).hex())
    with open_regular(path) as opened, open(out_path, "wb") as raw:
        src = HashingReader(_Stoppable(opened, stopping))
        hashing = _HashingWriter(raw)
        if method == GZIP:
            compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # 31: a gzip wrapper, mtime 0
            for data in iter(lambda: src.read(CHUNK), b""):
                hashing.write(compressor.compress(data))
            hashing.write(compressor.flush())
        else:
            import zstandard  # a dependency below Python 3.14; only zstd pushes need it

            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=False)
            with compressor.stream_writer(hashing, closefd=False) as out:
                shutil.copyfileobj(src, out, CHUNK)
    return hashing.hash.hexdigest(), hashing.size, out_path, src.hash.hexdigest()


class _Stopped(Exception):
    """A blob's task ends early: the push failed or was interrupted (the main thread says why)."""


class _Stoppable:
    """A binary reader whose reads raise _Stopped once `stopping` is set."""

    def __init__(self, raw, stopping):
        self.raw, self.stopping = raw, stopping

    def read(self, size=-1):
        if self.stopping.is_set():
            raise _Stopped()
        return self.raw.read(size)

    def close(self):
        self.raw.close()


class _HashingWriter:
    """A binary writer that hashes what passes through it."""

    def __init__(self, raw):
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self):
        self.raw.flush()


def compressor_id(method):
    """What makes `method`'s bytes what they are: the library, its version, the level."""
    if method == GZIP:
        return f"gzip:isal-{isal.__version__}:{GZIP_LEVEL}"
    import zstandard  # as in _compress_file: only zstd pushes need it

    return f"zstd:zstandard-{zstandard.__version__}:{ZSTD_LEVEL}"


class _Remembered:
    """layer-digests.json in the cache directory: {"compressed": {diff hex: {compressor:
    [hex, size]}}, "pushed": {registry: {hex: [repositories]}}}: what a layer compressed to,
    and where blobs were pushed (repositories a mount may take them from). A compressor is
    named with its library's version and level (compressor_id): another one's output is
    never taken for its own."""

    def __init__(self, cache):
        self.path = os.path.join(cache, "layer-digests.json")
        self._lock = threading.Lock()
        try:
            with open(self.path, "rb") as stream:
                self.data = json.loads(stream.read())
        except (OSError, ValueError):
            self.data = {}
        if not isinstance(self.data, dict):
            self.data = {}

    def compressed(self, diff_hex, method):
        found = _dict(_dict(self.data.get("compressed")).get(diff_hex)).get(compressor_id(method))
        if isinstance(found, list) and len(found) == 2 and hex_of_digest("sha256:" + str(found[0])) \
                and isinstance(found[1], int):
            return found[0], found[1]
        return None

    def remember(self, diff_hex, method, hexd, size):
        with self._lock:
            compressed = self.data.setdefault("compressed", {})
            compressed.setdefault(diff_hex, {})[compressor_id(method)] = [hexd, size]
            self._save()

    def repositories(self, registry, hexd):
        found = _dict(_dict(self.data.get("pushed")).get(registry)).get(hexd)
        return [r for r in found if isinstance(r, str)] if isinstance(found, list) else []

    def pushed(self, registry, repository, digests):
        with self._lock:
            held = self.data.setdefault("pushed", {}).setdefault(registry, {})
            for hexd in digests:
                repositories = held.setdefault(hexd, [])
                if repository not in repositories:
                    repositories.append(repository)
            self._save()

    def _save(self):
        write_if_changed(self.path, json.dumps(self.data, sort_keys=True))


def _dict(value):
    return value if isinstance(value, dict) else {}
