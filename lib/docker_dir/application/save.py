"""Save images into a directory: streamed, extracted safely, moved into place only when complete."""
import errno
import json
import os
import shutil
import tarfile
import time

from ..errors import BadImageDir, CantWrite, DockerDirError, EngineFailed, Interrupted, UsageError
from ..format.extract import extract_stream
from ..format.imagedir import ImageDir
from ..format.streams import CountingReader
from ..fs import move_into_place
from ..nodelocal import BuildDir, remove_abandoned
from ..signals import SignalLatch
from . import QUIET

TEMP_MARK = ".docker-dir-save-"


def check_target(path, force):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CantWrite(f"{path}: parent directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CantWrite(f"{path}: parent directory {parent} is not writable")
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise CantWrite(f"{path}: exists and is not a directory; remove it or choose another DIR")
        if os.listdir(path) and not force:
            raise CantWrite(f"{path}: exists and is not empty; use --force to replace it")
    return parent


def _remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(parent, name):
    """Remove hidden temp dirs of earlier saves to the same DIR that were killed.
    A running save holds a lock on its temp dir, so it is left alone."""
    prefix = f".{name}{TEMP_MARK}"
    remove_abandoned(parent, lambda entry: entry.startswith(prefix), _remove_tree)


def canonical_order(directory):
    """Put the images of a multi-image save in one order: engines list them in an order
    that changes from save to save, and a DataLad user would see a change that is none."""
    for name, key in (("manifest.json", None), ("index.json", "manifests")):
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, "rb") as stream:
            data = json.loads(stream.read())
        entries = data if key is None else data.get(key) if isinstance(data, dict) else None
        if not isinstance(entries, list) or len(entries) < 2:
            continue
        entries.sort(key=lambda entry: json.dumps(entry, sort_keys=True))
        with open(path, "w", encoding="utf-8") as out:  # the engines' compact Go encoding
            out.write(json.dumps(data, separators=(",", ":"), ensure_ascii=False))


def gitattributes(image_dir):
    """Layers go to the annex; the small JSON files (manifest, config, index) stay in git."""
    lines = ["* annex.largefiles=nothing"]
    for image in image_dir.images():
        for layer in image.layers:
            lines.append(f"/{layer.path} annex.largefiles=anything")
    return "\n".join(dict.fromkeys(lines)) + "\n"


class Saved:
    """What a save wrote: the images' IDs, bytes received, seconds taken."""

    def __init__(self, ids, nbytes, seconds):
        self.ids, self.nbytes, self.seconds = ids, nbytes, seconds


def save(engine, refs, path, force=False, reporter=QUIET, write_gitattributes=False):
    """Save `refs` (as the engine names them) into directory `path`."""
    if not engine.can_save:
        raise UsageError(f"{engine.name} keeps no images to save {' '.join(refs)} from: it runs image "
                         "directories; save with another engine (--engine)")
    parent = check_target(path, force)
    name = os.path.basename(os.path.abspath(path))
    for ref in refs:
        if engine.inspect_id(ref) is None:
            raise EngineFailed(f"image {ref} not found in {engine.name}; list images with '{engine.name} images'")
    total = engine.image_size(refs)
    remove_stale_temps(parent, name)
    started = time.monotonic()
    with SignalLatch() as latch, BuildDir(parent, f".{name}{TEMP_MARK}", _remove_tree) as tmp:
        progress = reporter.transfer(f"saving {' '.join(refs)}", total=total,
                                     waiting="the engine is preparing the export")
        try:
            _extract(engine, refs, tmp, path, progress)
            progress.close()
            os.chmod(tmp, 0o755)
            _whole_image_ids(ImageDir(tmp), engine, tmp, path)  # checks the manifest before it is rewritten
            canonical_order(tmp)
            saved = ImageDir(tmp)
            ids = _whole_image_ids(saved, engine, tmp, path)
            if write_gitattributes:
                with open(os.path.join(tmp, ".gitattributes"), "w", encoding="utf-8") as out:
                    out.write(gitattributes(saved))
            latch.check()  # a signal whose exception was dropped stops us before the commit
            move_into_place(tmp, path, _remove_tree)
        except BaseException:
            progress.cancel()
            raise
    return Saved(ids, progress.done, time.monotonic() - started)


def _extract(engine, refs, tmp, path, progress):
    """The engine's export, extracted into tmp as it streams."""
    doing = f"saving {' '.join(refs)}"
    stream = engine.save(refs)
    try:
        extract_stream(CountingReader(stream.stdout, progress), tmp)
    except BaseException as err:
        stream.abort()
        raise _stream_error(err, engine.save_failed(stream, doing), engine, path) from None
    status, _, stderr = stream.finish()
    if status:
        raise engine.error(stderr, doing)


def _whole_image_ids(saved, engine, tmp, path):
    """The saved images' IDs, once the archive proved to hold every file its manifest names
    (an engine can end a stream early between two files and still exit 0)."""
    try:
        images = saved.images()
        missing = [relpath for image in images for relpath in image.missing_files()]
        ids = None if missing else list(dict.fromkeys(image.image_id() for image in images))
    except BadImageDir as err:
        reason = str(err).split(";")[0].replace(tmp, path)
        raise EngineFailed(f"{engine.name} sent an archive that is not an image ({reason}); "
                           "nothing was written") from None
    if missing:
        raise EngineFailed(f"{engine.name} sent an incomplete archive ({missing[0]} is missing); "
                           "nothing was written")
    return ids


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
