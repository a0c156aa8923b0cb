"""Images an engine holds, saved by streaming its export: extracted safely as it arrives
into the build directory (no temporary tar), its files then moved into blobs/ (no
layer is copied). One export carries every engine image of a save."""
import errno
import os
import shutil
import tarfile

from ..errors import BadImageDir, CantWrite, DockerDirError, EngineFailed, Interrupted, UsageError
from ..format.canonical import Entry, kept_manifest, layer_media_type, stored_compression
from ..format.compression import NONE
from ..format.extract import extract_stream
from ..format.imagedir import ImageDir
from ..format.names import hex_of_digest
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
            extract_stream(CountingReader(stream.stdout, progress), staging)
        except BaseException as err:
            stream.abort()
            raise _stream_error(err, engine.save_failed(stream, doing), engine, build.target) from None
        status, _, stderr = stream.finish()
        if status:
            raise engine.error(stderr, doing)
        images = _whole_images(ImageDir(staging), engine, staging, build.target)
        placed = {}
        entries = [_adopted(image, build.blobs, placed) for image in images]
        shutil.rmtree(staging)
        return entries


def _adopted(image, blobs, placed):
    """An Entry for an exported image whose files move into blobs/. `placed` maps the
    real paths already moved to (hex, size, media type): engines link a repeated layer
    (and a config saved under two names) to one file."""
    image_dir = image.image_dir

    def real_path(relpath):
        return os.path.realpath(image_dir.resolve(relpath))

    diff_ids = image.diff_ids() or []  # before the config moves away
    config = real_path(image.config_path)
    if config not in placed:
        placed[config] = (image.config_digest(), os.stat(config).st_size, None)
        blobs.adopt(config, image.config_digest())
    layers = []
    for i, layer in enumerate(image.layers):
        real = real_path(layer.path)
        if real not in placed:
            placed[real] = _adopt_layer(real, layer, diff_ids[i] if i < len(diff_ids) else None, blobs)
        layers.append(placed[real])
    manifest, notes = kept_manifest(image)
    return Entry(placed[config][0], placed[config][1], layers, repo_tags=image.repo_tags, manifest=manifest,
                 notes=notes)


def _adopt_layer(real, layer, diff_id, blobs):
    """(hex, size, media type) of a layer file moved into blobs/. Docker's legacy layer
    files are named by no digest: an uncompressed one's is the config's diff_id."""
    compression = stored_compression(real, layer.media_type)
    hexd = layer.digest[7:] if layer.digest else None
    if hexd is None and compression == NONE:
        hexd = hex_of_digest(diff_id)
    if hexd is None:  # compressed, and named by no digest: hashed once
        hexd = sha256_file(real)
    size = os.stat(real).st_size
    blobs.adopt(real, hexd)
    return hexd, size, layer_media_type(compression, layer.media_type)


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
