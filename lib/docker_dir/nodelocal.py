"""Node-local directories docker-dir keeps for itself, safe on a machine shared by users.

Never inside the image directory: it may be read-only, shared between nodes, or a
git-annex tree. A directory here is used only if it is a real directory (not a link),
owned by the caller and closed to everyone else; one in /tmp that another user made
first (to hold our lock, or to plant links) is refused, never waited on.
Used by the application layer (load locks) and the engines that keep files (caches).
The charliecloud engine's hot path imports this module: signal (with enum) and tempfile
are imported only where a build starts.
"""
import fcntl
import os
import stat

from .errors import CantWrite
from .fs import OPEN_DIR


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

def lock_dir(path):
    """A descriptor of the directory at `path` holding its flock, or None when the
    directory went away before that (a cleaner took it)."""
    try:
        fd = os.open(path, OPEN_DIR)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    if os.fstat(fd).st_nlink:  # a removed directory has no links left
        return fd
    os.close(fd)
    return None


class BuildDir:
    """A new empty directory in `parent`, locked while the `with` block runs and
    removed (by `remove_tree`) if the block raises: a signal cannot strike between its
    making and the cleanup taking charge of it. A cleaner can strike between its making
    and the flock: then another is made. Failing to make it is CantWrite, ending with `hint`.

        with BuildDir(parent, prefix, remove_tree) as path: ...
    """

    def __init__(self, parent, prefix, remove_tree, hint=""):
        self.parent, self.prefix, self.remove_tree, self.hint = parent, prefix, remove_tree, hint
        self.path = self._fd = None

    def __enter__(self):
        import signal
        import tempfile

        catchable = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        signal.pthread_sigmask(signal.SIG_BLOCK, catchable)
        try:
            while self._fd is None:
                self.path = tempfile.mkdtemp(prefix=self.prefix, dir=self.parent)
                self._fd = lock_dir(self.path)
        except OSError as err:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, catchable)
            raise CantWrite(f"{self.parent}: cannot create a temporary directory there ({err.strerror})"
                            f"{self.hint}") from None
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, catchable)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, catchable)  # a pending signal raises here
        except BaseException as err:
            self.__exit__(type(err), err, None)  # removes it, lets go of it
            raise
        return self.path

    def __exit__(self, kind, value, traceback):
        try:
            if kind is not None:
                self.remove_tree(self.path)
        finally:
            os.close(self._fd)


def remove_abandoned(parent, is_temp, remove):
    """Remove the temporary directories in `parent` (names `is_temp` accepts) whose
    builder was killed; a live one is left alone. `remove(path)` deletes a tree."""
    for name in os.listdir(parent):
        if not is_temp(name):
            continue
        try:
            fd = os.open(os.path.join(parent, name), OPEN_DIR)
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
