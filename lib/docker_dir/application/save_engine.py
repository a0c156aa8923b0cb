"""Images an engine holds, saved by streaming its export: extracted safely as it arrives
into the build directory (no temporary tar), every file hashed as it streams, then moved
into blobs/ (no layer is copied) once its digest is checked. With a blob store, a layer it
already holds is read against the store's copy instead of written, and linked. One export
carries every engine image of a save."""
import errno
import os
import shutil
import tarfile

from ..errors import BadImageDir, CantWrite, DockerDirError, EngineFailed, Interrupted, UsageError
from ..format.canonical import Entry, kept_manifest, layer_media_type, stored_compression
from ..format.compression import NONE
from ..format.extract import extract_stream
from ..format.imagedir import ImageDir
from ..format.names import hex_of_digest, short
from ..format.streams import CountingReader, sha256_file

# Inside the build directory: the engine's export, before its files move to blobs/.
_STAGING = ".staging-engine"


class EngineImage:
    """An image the engine holds: `ref` as the engine names it."""

    def __init__(self, ref):
        self.ref = ref

    def __str__(self):
        return self.ref


def engine_export(engine, refs):
    """The source that saves the images `refs` from `engine`, in one export."""
    return _EngineExport(engine, refs)


class _EngineExport:
    def __init__(self, engine, refs):
        self.engine, self.refs = engine, refs
        self.total = None  # about how many bytes the export streams

    def check(self):
        """Refuse before anything is made: an engine that cannot save, an image it lacks."""
        engine = self.engine
        if not engine.can_save:
            raise UsageError(f"{engine.name} keeps no images to save {' '.join(self.refs)} from: it runs image "
                             "directories; save with another engine (--engine)")
        for ref in self.refs:
            if engine.inspect_id(ref) is None:
                raise EngineFailed(f"image {ref} not found in {engine.name}; list images with '{engine.name} images'")
        self.total = engine.image_size(self.refs)

    def add_to(self, build):
        progress = build.reporter.transfer(f"saving {' '.join(self.refs)}", total=self.total,
                                           waiting="the engine is preparing the export")
        try:
            build.entries += self._export(build, progress)
        except BaseException:
            progress.cancel()
            raise
        progress.close()
        build.received += progress.done

    def _export(self, build, progress):
        """Entries for the exported images, their files moved into blobs/."""
        engine = self.engine
        staging = os.path.join(build.tmp, _STAGING)
        os.mkdir(staging, 0o700)
        doing = f"saving {' '.join(self.refs)}"
        stream = engine.save(self.refs)
        try:
            digests = extract_stream(CountingReader(stream.stdout, progress), staging,
                                     _in_store(build.blobs.store))
        except BaseException as err:
            stream.abort()
            raise _stream_error(err, engine.save_failed(stream, doing), engine, build.target) from None
        status, _, stderr = stream.finish()
        if status:
            raise engine.error(stderr, doing)
        images = _whole_images(ImageDir(staging), engine, staging, build.target)
        adopted = _Adopted(build.blobs, engine, {os.path.realpath(os.path.join(staging, name)): hexd
                                                 for name, hexd in digests.items()})
        entries = [adopted.entry(image) for image in images]
        shutil.rmtree(staging)
        return entries


def _in_store(store):
    """extract_stream's same_content: the store's blobs that may hold a member (the one its
    name says, blobs/sha256/HEX, or else those of its size), or None."""
    if store is None:
        return None
    sizes = []  # the store's {size: [paths]}, listed at the first member that needs it

    def candidates(name, size):
        hexd = name.rsplit("/", 1)[-1]
        if name.startswith("blobs/sha256/") and hex_of_digest("sha256:" + hexd):
            path = store.path(hexd)
            return [path] if _size_of(path) == size else None
        if not sizes:
            sizes.append(store.by_size())
        return sizes[0].get(size)
    return candidates


def _size_of(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


class _Adopted:
    """The exported files moved into blobs/, each once its digest (from the hashes taken as
    it streamed) matched the name the image gives it; `placed` maps the real paths moved to
    (hex, size, media type): engines link a repeated layer (and a config saved under two
    names) to one file."""

    def __init__(self, blobs, engine, digests):
        self.blobs, self.engine, self.digests = blobs, engine, digests  # real path -> hex
        self.placed = {}

    def entry(self, image):
        """The Entry of an exported image, its config and layers in blobs/."""
        image_dir = image.image_dir

        def real_path(relpath):
            return os.path.realpath(image_dir.resolve(relpath))

        diff_ids = image.diff_ids() or []  # before the config moves away
        config = real_path(image.config_path)
        if config not in self.placed:
            size = os.stat(config).st_size
            self.placed[config] = (self._adopt(config, image.config_digest(), image.config_path), size, None)
        layers = []
        for i, layer in enumerate(image.layers):
            real = real_path(layer.path)
            if real not in self.placed:
                self.placed[real] = self._layer(real, layer, diff_ids[i] if i < len(diff_ids) else None)
            layers.append(self.placed[real])
        manifest, notes = kept_manifest(image)
        return Entry(self.placed[config][0], self.placed[config][1], layers, repo_tags=image.repo_tags,
                     manifest=manifest, notes=notes)

    def _layer(self, real, layer, diff_id):
        """(hex, size, media type) of a layer file moved into blobs/. Docker's legacy layer
        files are named by no digest: an uncompressed one's is the config's diff_id."""
        compression = stored_compression(real, layer.media_type)
        hexd = layer.digest[7:] if layer.digest else None
        if hexd is None and compression == NONE:
            hexd = hex_of_digest(diff_id)
        size = os.stat(real).st_size
        return self._adopt(real, hexd, layer.path), size, layer_media_type(compression, layer.media_type)

    def _adopt(self, real, hexd, relpath):
        """Move the file at `real` to blob `hexd` (None: named by what it hashed to), once
        its content proved to be that, and give it to the store."""
        actual = self.digests.get(real) or sha256_file(real)
        if hexd is not None and actual != hexd:
            raise EngineFailed(f"{self.engine.name} sent {relpath} with content sha256:{short(actual)}, not "
                               f"sha256:{short(hexd)} as the image names it; nothing was written")
        self.blobs.adopt(real, actual)
        self.blobs.checked(actual)
        return actual


def _whole_images(exported, engine, staging, path):
    """The exported images, once the archive proved to hold every file its manifest names
    (an engine can end a stream early between two files and still exit 0)."""
    try:
        images = exported.images()
        missing = [relpath for image in images for relpath in image.missing_files()]
    except BadImageDir as err:
        reason = str(err).split(";")[0].replace(staging, path)
        raise EngineFailed(f"{engine.name} sent an archive that is not an image ({reason}); "
                           "nothing was written") from None
    if missing:
        raise EngineFailed(f"{engine.name} sent an incomplete archive ({missing[0]} is missing); "
                           "nothing was written")
    return images


def _stream_error(err, engine_error, engine, path):
    """The error to report when extraction stopped early; `engine_error` is the engine's
    own complaint, if it made one."""
    if isinstance(err, (KeyboardInterrupt, Interrupted)):
        return err
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CantWrite(f"{path}: no space left on the device; nothing was written, free space and save again")
    if isinstance(err, DockerDirError):
        return err  # an unsafe archive stays unsafe whatever the engine printed on stderr
    if engine_error is not None:
        return engine_error
    if isinstance(err, (tarfile.TarError, EOFError)):
        return EngineFailed(f"{engine.name} sent a malformed archive ({err}); nothing was written")
    if isinstance(err, OSError):
        return CantWrite(f"{path}: {err.strerror or err}; nothing was written")
    return err
