"""Node-local directories docker-dir keeps for itself, safe on a machine shared by users.

Never inside the image directory: it may be read-only, shared between nodes, or a
git-annex tree. A directory here is used only if it is a real directory (not a link),
owned by the caller and closed to everyone else; one in /tmp that another user made
first (to hold our lock, or to plant links) is refused, never waited on.
Used by the application layer (load locks) and the engines that keep files (caches).
"""
import os
import stat

from .errors import CantWrite


def runtime_dir():
    """Where load locks live: $XDG_RUNTIME_DIR/docker-dir, else /run/docker-dir for
    root, else /tmp/docker-dir-UID."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        return os.path.join(base, "docker-dir")
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/docker-dir"
    return os.path.join("/tmp", f"docker-dir-{os.geteuid()}")


def private_dir(path, what="lock directory", hint="set XDG_RUNTIME_DIR to a directory of your own"):
    """`path`, made if missing; refused unless it is a directory of the caller's own that
    nobody else may enter (a looser mode on the caller's own directory is tightened).
    `hint` ends the refusals: how to choose another directory."""
    uid = os.geteuid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise CantWrite(f"{path}: cannot create the {what} ({err.strerror}); {hint}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise CantWrite(f"{path}: the {what} is a symlink or not a directory; someone else may have put it "
                        f"there: remove it, or {hint}")
    if st.st_uid != uid:
        raise CantWrite(f"{path}: the {what} belongs to uid {st.st_uid}, not to you ({uid}); another user "
                        f"made it first: have it removed, or {hint}")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


# Temporary directories of a build (a save, an unpack): their builder holds a flock on
# the directory, so remove_abandoned() removes only those whose builder was killed.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def lock_dir(path):
    """A descriptor of the directory at `path` holding its flock, or None when the
    directory went away before that (a cleaner took it)."""
    import fcntl

    try:
        fd = os.open(path, _DIR)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.fstat(fd).st_nlink:  # a removed directory has no links left
        return fd
    os.close(fd)
    return None


def locked_temp_dir(parent, prefix):
    """(path, locked descriptor) of a new empty directory in `parent`. A cleaner can
    strike between its making and the flock: then another is made."""
    import tempfile

    while True:
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        fd = lock_dir(path)
        if fd is not None:
            return path, fd


def remove_abandoned(parent, is_temp, remove):
    """Remove the temporary directories in `parent` (names `is_temp` accepts) whose
    builder was killed; a live one is left alone. `remove(path)` deletes a tree."""
    import fcntl

    for name in os.listdir(parent):
        if not is_temp(name):
            continue
        try:
            fd = os.open(os.path.join(parent, name), _DIR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if os.fstat(fd).st_nlink:  # not removed meanwhile by another cleaner
                remove(os.path.join(parent, name))
        finally:
            os.close(fd)


def open_lock(directory, name):
    """A lock file in a private directory, opened without following a link and owned by
    the caller (a file planted while the directory was open is refused)."""
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:  # ELOOP: a symlink
        raise CantWrite(f"{path}: cannot open the lock file ({err.strerror}); remove it") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise CantWrite(f"{path}: not a lock file of yours; remove it")
    return fd
