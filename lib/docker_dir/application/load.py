"""Give an engine an image once, whoever else is trying at the same moment."""
import fcntl
import os

from ..errors import EngineFailed
from ..nodelocal import runtime_dir
from . import QUIET


def _lock(config_hex, reporter):
    """An exclusive lock per image, node-local: parallel execs wait for one load."""
    directory = runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, f"load-{config_hex}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        reporter.waiting("waiting for another process loading this image")
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def ensure_loaded(engine, image, ref, reporter=QUIET):
    """Make `engine` hold `image` (a format.Image) under the private reference `ref`."""
    config_hex = image.config_digest()
    lock_fd = _lock(config_hex, reporter)
    try:
        if engine.has_image(ref):
            return  # another process loaded it while we waited
        # An image saved from this engine may still be there and only need the private tag.
        present = engine.stored_digest(image.candidate_digests())
        if present:
            engine.tag(present, ref)
        else:
            image.require_content()  # before the engine sees a byte; not needed to tag
            _load(engine, image, ref, reporter)
        if not engine.has_image(ref):
            raise EngineFailed(f"{engine.name} loaded {image.image_dir.path} but does not list {ref} afterwards: "
                               "another process removed it meanwhile, or the engine rejected it; run again")
    finally:
        os.close(lock_fd)


def _load(engine, image, ref, reporter):
    """Send the layers the engine lacks; if it refuses the short archive (the base went
    away since it was asked, or it does not reuse layers after all), the whole image."""
    held = engine.held_layers(image)
    where = image.image_dir.path
    label = f"loading {where}" + (f" ({held} of {len(image.layers)} layers already in {engine.name})" if held else "")
    progress = reporter.transfer(label)
    try:
        try:
            engine.load(image, ref, on_bytes=progress, held=held)
        except EngineFailed:
            if not held:
                raise
            engine.load(image, ref, on_bytes=progress)
    finally:
        progress.close()
