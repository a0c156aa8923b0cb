"""File-system primitives the layers share: safe opens, the atomic swap of a directory,
and the atomic rewrite of a small file. Below every layer; standard library only.

docker-dir-id imports this module: ctypes and tempfile, which it never needs, are
imported by the functions that use them (bench/RESULTS.md has what start-up costs).
"""
import errno
import os
import stat

from .errors import BadImageDir, CantWrite

# A directory, never through a symlink: every walk of a tree docker-dir writes or reads uses these.
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def open_regular(path):
    """open(path, "rb") for a regular file only: a FIFO would block forever and a
    device never end. Other kinds raise BadImageDir; OS errors pass through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadImageDir(f"{path}: not a regular file; the image directory is damaged")
    return os.fdopen(fd, "rb")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a, b):
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def move_into_place(tmp, path, remove_tree):
    """Make directory `tmp` appear at `path`; an existing non-empty `path` is swapped
    out whole (readers see the old or the new, never a mix), then removed with `remove_tree`."""
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
    remove_tree(tmp)


def write_if_changed(path, text):
    """Atomically replace file `path` with `text` unless it already holds exactly that
    (its mtime then stays: Make's restat and Snakemake see no change). True if written."""
    data = text.encode()
    try:
        with open(path, "rb") as stream:
            if stream.read(len(data) + 1) == data:
                return False
    except FileNotFoundError:
        pass
    except OSError as err:
        raise CantWrite(f"{path}: cannot read ({err.strerror})") from None
    import tempfile

    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise CantWrite(f"{path}: cannot create ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        os.unlink(tmp)
        raise CantWrite(f"{path}: cannot write ({err.strerror})") from None
    return True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
