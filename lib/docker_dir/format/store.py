"""One copy of each blob per machine: a content-addressed directory that the blobs of every
image directory docker-dir writes are hard links into.

    STORE/blobs/sha256/<hex>    one file per blob, named by its sha256

Where: $DOCKER_DIR_STORE (a directory; "none" switches the store off), else
$XDG_CACHE_HOME/docker-dir/store (~/.cache/docker-dir/store).

A store is private (its directories the owner's alone, its files read-only: 0444), or
shared by a group: one whose top directory is group-writable (made by `mkdir -m 2775` and
`chgrp GROUP`). Then its directories stay group-writable and set-group-ID, and its files
are the store's group's, readable and writable by it (0664): Linux lets a user hard-link
only a file they may write (fs.protected_hardlinks), so read-only files would be linked
by their owner alone.

The guarantees (each function states its own):
- a blob enters the store only by a hard link to a file whose digest the caller checked
  (`adopt`): never a partial file, and never a copy (a store on another file system takes
  nothing; a kill -9 leaves nothing half-written);
- a blob leaves it into a new directory only after it was read whole and its sha256 was
  checked (`place`): a store file damaged afterwards (a write through a link, a bad disk)
  is never linked again; it is removed, and the blob counts as absent;
- a blob that only the store links to (link count 1) may be removed (`prune`): deleting a
  blob, or the whole store, never breaks a directory (its links keep the content).
"""
import errno
import os
import shutil
import stat

from ..errors import CantWrite
from .streams import CHUNK, HashingReader

ENV = "DOCKER_DIR_STORE"
OFF = ("none", "off")
_BLOBS = os.path.join("blobs", "sha256")


class BlobStore:
    """The blob store at `root`, made if missing."""

    def __init__(self, root):
        self.root = root
        self.dir = os.path.join(root, _BLOBS)
        try:
            os.makedirs(root, exist_ok=True)
            top = os.stat(root)
            self.shared = bool(top.st_mode & stat.S_IWGRP)
            self.group = top.st_gid
            dir_mode = 0o2775 if self.shared else 0o755
            for path in (os.path.join(root, "blobs"), self.dir):
                try:
                    os.mkdir(path)
                    os.chmod(path, dir_mode)  # exactly: the umask may take the group's bits
                except FileExistsError:
                    pass
        except OSError as err:
            raise CantWrite(f"cannot use the blob store {root}: {err.strerror}; set {ENV} to a directory you "
                            f"may write, or {ENV}=none to save without it") from None
        self.file_mode = 0o664 if self.shared else 0o444
        self.device = os.stat(self.dir).st_dev

    @classmethod
    def from_environment(cls, environ=None):
        """The store the environment names ($DOCKER_DIR_STORE, else the user's cache), or None
        when it is switched off."""
        environ = os.environ if environ is None else environ
        chosen = environ.get(ENV, "").strip()
        if chosen.lower() in OFF:
            return None
        if not chosen:
            base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            chosen = os.path.join(base, "docker-dir", "store")
        return cls(chosen)

    def path(self, hexd):
        return os.path.join(self.dir, hexd)

    def same_file_system(self, directory):
        """Whether files in `directory` can be hard links of the store's."""
        return os.stat(directory).st_dev == self.device

    def place(self, hexd, dest, size=None):
        """Make `dest` (absent) hold blob `hexd` if the store has it whole: a hard link of the
        store's file, else (another file system, or a file the user may not link) a copy of
        it. What `dest` holds is then read whole and its sha256 checked: a store file that
        fails (or whose size is not `size`) is removed from the store and `dest` is not
        made. Returns "linked", "copied" or None (absent, or damaged)."""
        source = self.path(hexd)
        try:
            if size is not None and os.stat(source).st_size != size:
                raise _Damaged()
            try:
                os.link(source, dest)
                how = "linked"
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                how = "copied"
                with open(source, "rb") as stream, open(dest, "xb") as out:  # 0644, as any saved blob
                    shutil.copyfileobj(stream, out, CHUNK)
            with open(dest, "rb") as placed:
                damaged = HashingReader(placed).drain() != hexd
            if damaged:
                os.unlink(dest)
                raise _Damaged()
        except FileNotFoundError:
            return None
        except (_Damaged, PermissionError):  # damaged, or another user's file we may not read
            self._forget(source)
            return None
        return how

    def adopt(self, path, hexd):
        """Add the file at `path`, whose content the caller checked against `hexd`, as blob
        `hexd`, by a hard link (so the two are one file, made read-only, or group-writable
        in a shared store). Nothing happens when the store has the blob already, is on
        another file system, or refuses the link. True when the store holds `path`'s file."""
        target = self.path(hexd)
        try:
            os.link(path, target)
        except FileExistsError:
            return os.path.samefile(path, target)
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.EROFS):
                return False
            raise
        if self.shared:  # a link keeps the file's group; set-group-ID gives it only to new files
            os.chown(target, -1, self.group)
        os.chmod(target, self.file_mode)  # the one file: DIR's too
        return True

    def by_size(self, most=4):
        """{size: [paths]} of the blobs, at most `most` of each size: the files a file of
        that size may be."""
        sizes = {}
        for path, st in self._entries():
            same = sizes.setdefault(st.st_size, [])
            if len(same) < most:
                same.append(path)
        return sizes

    def usage(self):
        """(blobs, bytes, of which (blobs, bytes) no directory links to any more)."""
        blobs = size = lone = lone_size = 0
        for _, st in self._entries():
            blobs += 1
            size += st.st_size
            if st.st_nlink == 1:
                lone += 1
                lone_size += st.st_size
        return blobs, size, lone, lone_size

    def prune(self):
        """Remove the blobs no directory links to (link count 1): (blobs, bytes) removed."""
        removed = freed = 0
        for path, st in self._entries():
            if st.st_nlink == 1:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue  # another prune was first
                removed += 1
                freed += st.st_size
        return removed, freed

    def _entries(self):
        """(path, stat) of each blob file (regular files only; one removed meanwhile is skipped)."""
        for name in os.listdir(self.dir):
            path = self.path(name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield path, st

    @staticmethod
    def _forget(path):
        try:
            os.unlink(path)
        except OSError:
            pass  # another user's file in a store we may not write: left, and never linked


class _Damaged(Exception):
    """A store file whose size or digest is not its name's."""
