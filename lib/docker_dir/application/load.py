"""Give an engine an image once, whoever else is trying at the same moment."""
import fcntl
import os

from ..errors import EngineFailed
from ..format.loadstream import bytes_to_send
from ..nodelocal import open_lock, private_dir, runtime_dir
from . import QUIET


def _lock(config_hex, reporter):
    """An exclusive lock per image, node-local: parallel execs wait for one load.
    The holder removes the file before it lets go (so lock files do not pile up, one
    per image ever loaded); a waiter that then finds its file gone takes the new one."""
    directory = private_dir(runtime_dir())
    name = f"load-{config_hex}.lock"
    waited = False
    while True:
        fd = open_lock(directory, name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                reporter.waiting("waiting for another process loading this image")
                waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(os.path.join(directory, name), follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, os.path.join(directory, name)
        os.close(fd)  # its holder removed it: lock the file that is there now


def _unlock(lock):
    fd, path = lock
    os.unlink(path)
    os.close(fd)


def ensure_loaded(engine, image, ref, reporter=QUIET):
    """Make `engine` hold `image` (a format.Image) under the private reference `ref`."""
    config_hex = image.config_digest()
    lock = _lock(config_hex, reporter)
    try:
        if engine.has_image(ref):
            return  # another process loaded it while we waited
        # An image saved from this engine may still be there and only need the private tag.
        present = engine.stored_digest(image.candidate_digests()) if engine.can_tag else None
        if present:
            engine.tag(present, ref)
        else:
            image.require_content()  # before the engine sees a byte; not needed to tag
            _load(engine, image, ref, reporter)
        if not engine.has_image(ref):
            raise EngineFailed(f"{engine.name} loaded {image.image_dir.path} but does not list {ref} afterwards: "
                               "another process removed it meanwhile, or the engine rejected it; run again")
    finally:
        _unlock(lock)


def _load(engine, image, ref, reporter):
    """Send the layers the engine lacks; if it refuses the short archive (the base went
    away since it was asked, or it does not reuse layers after all), the whole image."""
    held = engine.held_layers(image)
    where = image.image_dir.path
    label = f"loading {where}" + (f" ({held} of {len(image.layers)} layers already in {engine.name})" if held else "")
    progress = reporter.transfer(label, total=bytes_to_send(image, held))
    try:
        try:
            engine.load(image, ref, on_bytes=progress, held=held)
        except EngineFailed:
            if not held:
                raise
            progress.reset(bytes_to_send(image))
            engine.load(image, ref, on_bytes=progress)
    finally:
        progress.close()
