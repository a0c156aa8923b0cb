"""Save images into a directory: streamed, extracted safely, moved into place only when complete."""
import ctypes
import errno
import os
import shutil
import signal
import sys
import tarfile
import time

from ..errors import BadImageDir, CantWrite, DockerDirError, EngineFailed, Interrupted
from ..format.imagedir import ImageDir
from ..format.tarstream import counting_reader, extract_stream
from ..nodelocal import locked_temp_dir, remove_abandoned
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


def remove_stale_temps(parent, name):
    """Remove hidden temp dirs of earlier saves to the same DIR that were killed.
    A running save holds a lock on its temp dir, so it is left alone."""
    prefix = f".{name}{TEMP_MARK}"
    remove_abandoned(parent, lambda entry: entry.startswith(prefix),
                     lambda path: shutil.rmtree(path, ignore_errors=True))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a, b):
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def move_into_place(tmp, path):
    """Make `tmp` appear at `path`; an existing non-empty `path` is swapped out whole."""
    try:
        os.rename(tmp, path)  # works when path is absent or an empty directory
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not exchange(tmp, path):
        # No atomic swap here: move the old one aside first, so it is never half-deleted.
        aside = tmp + "-old"
        os.rename(path, aside)
        os.rename(tmp, path)
        tmp = aside
    shutil.rmtree(tmp, ignore_errors=True)


def canonical_order(directory):
    """Put the images of a multi-image save in one order: engines list them in an order
    that changes from save to save, and a DataLad user would see a change that is none."""
    import json

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
    parent = check_target(path, force)
    name = os.path.basename(os.path.abspath(path))
    for ref in refs:
        if engine.inspect_id(ref) is None:
            raise EngineFailed(f"image {ref} not found in {engine.name}; list images with '{engine.name} images'")
    remove_stale_temps(parent, name)
    received = _remember_signals()
    # A signal between mkdtemp and the `try` below would leave the temp dir behind.
    signal.pthread_sigmask(signal.SIG_BLOCK, _CATCHABLE)
    try:
        tmp, lock_fd = _locked_temp(parent, name, path)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CATCHABLE)
        raise
    progress = reporter.transfer(f"saving {' '.join(refs)}", total=engine.image_size(refs),
                                 waiting="the engine is preparing the export")
    started = time.monotonic()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CATCHABLE)  # a pending signal raises here
        stream = engine.save(refs)
        try:
            extract_stream(counting_reader(stream.stdout, progress), tmp)
        except BaseException as err:
            stream.abort()
            raise _stream_error(err, stream, path) from None
        stream.finish()
        progress.close()
        os.chmod(tmp, 0o755)
        _whole_image_ids(ImageDir(tmp), engine, tmp, path)  # checks the manifest before it is rewritten
        canonical_order(tmp)
        saved = ImageDir(tmp)
        ids = _whole_image_ids(saved, engine, tmp, path)
        if write_gitattributes:
            with open(os.path.join(tmp, ".gitattributes"), "w", encoding="utf-8") as out:
                out.write(gitattributes(saved))
        if received:  # the signal's exception was dropped (see _remember_signals): stop before the commit
            raise Interrupted(f"interrupted by {signal.Signals(received[0]).name}", received[0])
        move_into_place(tmp, path)
    except BaseException:
        progress.cancel()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)
    return Saved(ids, progress.done, time.monotonic() - started)


def _locked_temp(parent, name, path):
    """A hidden temp dir beside DIR and a lock on it, so other saves' cleanup leaves it alone."""
    try:
        return locked_temp_dir(parent, f".{name}{TEMP_MARK}")
    except OSError as err:
        raise CantWrite(f"{path}: cannot create a temporary directory in {parent} ({err.strerror})") from None


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


_CATCHABLE = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _remember_signals():
    """Record every catchable signal; return the list they are added to.
    Their handlers raise an exception, but Python prints and drops one raised inside a
    weakref callback or __del__ (an import's module-lock callback, seen here), and the
    save would go on as if no signal had come."""
    received = []
    for signum in _CATCHABLE:
        handler = signal.getsignal(signum)
        if callable(handler):
            def remember(num, frame, handler=handler):
                received.append(num)
                handler(num, frame)

            signal.signal(signum, remember)
    sys.unraisablehook = _quiet_about_signals
    return received


def _quiet_about_signals(unraisable, default=sys.unraisablehook):
    """The dropped exception is reported once, as the save's one-line error."""
    if not isinstance(unraisable.exc_value, (Interrupted, KeyboardInterrupt)):
        default(unraisable)


def _stream_error(err, stream, path):
    """The error to report when extraction stopped early."""
    if isinstance(err, (KeyboardInterrupt, Interrupted)):
        return err
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CantWrite(f"{path}: no space left on the device; nothing was written, free space and save again")
    if isinstance(err, DockerDirError):
        return err  # an unsafe archive stays unsafe whatever the engine printed on stderr
    engine_error = stream.failure()
    if engine_error is not None:
        return engine_error
    if isinstance(err, (tarfile.TarError, EOFError)):
        return EngineFailed(f"{stream.engine.name} sent a malformed archive ({err}); nothing was written")
    if isinstance(err, OSError):
        return CantWrite(f"{path}: {err.strerror or err}; nothing was written")
    return err
