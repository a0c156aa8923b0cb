"""The cold path of docker-dir-exec: load an image once, whoever else is trying."""
import fcntl
import os
import sys

from ..engine.base import runtime_dir
from ..errors import DockerDirError, EngineFailed, Interrupted
from ..format.tarstream import write_load_stream
from .common import Progress, trap_signals


def _lock(config_hex, quiet):
    """An exclusive lock per image, node-local: parallel execs wait for one load."""
    directory = runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, f"load-{config_hex}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not quiet:
            print("docker-dir-exec: waiting for another process loading this image", file=sys.stderr)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def ensure_loaded(engine, entry, ref, quiet=False):
    """Give the engine the image of `entry` under the private tag `ref`."""
    config_hex = entry.config_digest()
    trap_signals()
    lock_fd = _lock(config_hex, quiet)
    try:
        if engine.has_image(ref):
            return  # another process loaded it while we waited
        # An image saved from this engine is still there and only needs the private
        # tag. Classic store and podman name it by config digest, the containerd
        # store by manifest digest (in index.json of a Docker >= 25 save).
        present = next((digest for digest in ("sha256:" + config_hex, entry.manifest_digest())
                        if digest and engine.inspect_id(digest) == digest), None)
        if present:
            engine.tag(present, ref)
        else:
            entry.require_content()  # before the engine sees a byte; not needed to tag
            _load(engine, entry, ref, quiet)
        if not engine.has_image(ref):
            raise EngineFailed(f"{engine.name} loaded {entry.image_dir.path} but does not list {ref} afterwards: "
                               "another process removed it meanwhile, or the engine rejected it; run again")
    finally:
        os.close(lock_fd)


def _load(engine, entry, ref, quiet):
    where = entry.image_dir.path
    progress = Progress(f"loading {where}", enabled=not quiet)
    stream = engine.load(where)
    try:
        write_load_stream(entry, stream.stdin, [ref], on_bytes=progress)
    except BrokenPipeError:
        pass  # the engine stopped reading: its own error follows from finish()
    except BaseException as err:
        stream.abort()
        if isinstance(err, (KeyboardInterrupt, Interrupted, DockerDirError)):
            raise
        raise EngineFailed(f"loading {where} failed: {err}") from None
    try:
        stream.finish()
    finally:
        progress.close()
