"""Apply an image's layers, in order, into a directory: the tree an engine's
overlay2 driver shows a container, made by and for an unprivileged user (what
Charliecloud's `ch-run` runs a command in).

    written = apply_layers(layer_streams, dest_dir, on_bytes=None)
    remove_tree(path)

apply_layers:
- `layer_streams`: readable binary file objects, bottom layer first, each a tar,
  gzip or zstd blob (sniffed: compression.py). Each is read to its end and not
  closed; its `name` attribute, when a string, names it in errors.
- `dest_dir`: an existing empty directory (else CantWrite). The layers' own
  root entry (`./`) is not applied: dest_dir keeps its mode.
- `on_bytes(n)`: called with the number of raw (as stored, still compressed)
  bytes each time some are read, so the calls add up to the blobs' sizes: a
  progress line compares that sum with the total size of the layer files.
- Returns the number of bytes of regular-file content written.

The tree:
- Whiteouts: `.wh.NAME` removes NAME (a whole tree for a directory).
  `.wh..wh..opq` in D removes everything earlier layers put in D and below it,
  but nothing the same layer adds there, whether the tar lists that before or
  after the marker; at the layer's root it changes nothing (overlayfs never
  hides the lower roots). Other `.wh..wh.*` entries (AUFS metadata) hide
  nothing, and members below a `.wh.*` directory are ignored: no `.wh.` name is
  ever created. Within one layer a
  later member wins over an earlier one at the same path, a whiteout included.
- A member replaces what is at its path, unless both are directories: then they
  merge and the directory takes the member's mode and mtime. A member (whiteouts
  included) whose parent path is missing, or holds a symlink or any other
  non-directory, gets a directory there (mode 0755): what overlayfs shows, as the
  engine creates the parents in the layer's own directory and that hides a lower
  non-directory. An existing directory that a layer only passes through keeps its
  mode and mtime, as containerd does; Docker 20.10's overlay2 shows 0755 there
  instead (layers that Docker builds always list the parents, so both agree on them).
- Symlinks are created verbatim, absolute targets included (they resolve inside
  the tree once it is a container's root), and never followed: every path is
  walked from dest_dir with openat and O_NOFOLLOW, one real directory at a time,
  and files are created with O_EXCL after removing what held the name.
- Hardlinks point at a regular file or symlink of this layer or an earlier one,
  reached through real directories; the link itself is never followed. (Docker
  20.10 refuses to load a layer linking to an earlier layer's file, "link /f /g:
  no such file or directory"; its builds copy the file up into the layer.)
- Device nodes and fifos are not created (an unprivileged user cannot), but
  still replace what held their path; hardlinks to them are skipped too.
- Everything belongs to the calling user. Modes are kept, sticky bit included,
  but setuid and setgid are dropped. mtimes are kept (directories created only
  as parents get the time of extraction). Ownership and xattrs from the tar,
  file capabilities included, are not applied.
- Directories stay 0700 while layers are applied and get their own modes at the
  end, so a 0555 directory still receives later layers' files. remove_tree()
  deletes such trees: it makes each directory writable before emptying it.

Refused with UnsafeLayer (a BadImageDir, one-line message): absolute names, `..`,
NUL, names more than MAX_DEPTH components deep (one descriptor is held per
level), symlinks with an empty target, hardlinks whose target is absolute, has
`..`, is missing, is a directory or lies behind a symlink, whiteouts of `.` or
`..`, unknown member types. Damaged input raises BadLayerData. OSError from the
filesystem (disk full, permissions) passes through. After any error dest_dir
holds a partial tree whose directories are 0700: remove it with remove_tree().
"""
import errno
import os
import stat
import tarfile

from ..errors import BadImageDir, CantWrite
from ..fs import NEW_FILE, OPEN_DIR
from .compression import BadLayerData, open_decompressed
from .names import member_parts
from .streams import CHUNK, CountingReader

MAX_DEPTH = 256

_MODE_BITS = 0o1777  # all but setuid and setgid
_IMPLICIT_DIR = (0o755, None)
_WHITEOUT = ".wh."
_META = ".wh..wh."
_OPAQUE = ".wh..wh..opq"


class UnsafeLayer(BadImageDir):
    """A layer member that would reach outside the tree, or that names nothing sensible."""


def apply_layers(layer_streams, dest_dir, on_bytes=None):
    """Apply the layers in order into the empty directory dest_dir; return the bytes of file content written."""
    dest_fd = os.open(dest_dir, OPEN_DIR)
    try:
        if os.listdir(dest_fd):
            raise CantWrite(f"{dest_dir}: not empty; layers are applied into an empty directory")
        tree = _Tree(dest_fd)
        try:
            written = 0
            for index, raw in enumerate(layer_streams, 1):
                name = getattr(raw, "name", None)
                name = name if isinstance(name, str) else f"layer {index}"
                source = CountingReader(raw, on_bytes) if on_bytes else raw
                written += tree.apply(open_decompressed(source, name), name)
            tree.finish()
        finally:
            tree.close()
    finally:
        os.close(dest_fd)
    return written


def remove_tree(path):
    """Delete path and everything below it, whatever the modes of its directories;
    symlinks are removed, never followed. A missing path is no error."""
    parent, name = os.path.split(os.path.abspath(path))
    if not name:
        raise ValueError(f"remove_tree({path!r}): refusing to remove the root directory")
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_entry(parent_fd, name)
    finally:
        os.close(parent_fd)


def _remove_entry(parent_fd, name, path=None, dirs=None):
    """Delete name (a whole tree if a directory) in parent_fd; `dirs` forgets the
    directories removed, by path, when given."""
    try:
        os.unlink(name, dir_fd=parent_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    try:
        fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    except PermissionError:  # no read permission (0000): the caller's own, to open it
        os.chmod(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, OPEN_DIR, dir_fd=parent_fd)
    try:
        os.fchmod(fd, 0o700)  # write permission to empty it (0555)
        for child in os.listdir(fd):
            _remove_entry(fd, child, dirs is not None and f"{path}/{child}", dirs)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
    if dirs is not None:
        dirs.pop(path, None)


class _Tree:
    def __init__(self, root_fd):
        self.root = root_fd
        # Open directories from the root down to the last parent walked: tars list
        # members directory by directory, so most walks reuse all of it.
        self.chain = []
        self.dirs = {}  # path -> (mode, mtime or None): applied by finish()
        self.added = set()  # paths this layer put in the tree (opaque markers keep them)
        self.marked = 0  # how many leading chain entries are in `added` already
        self.specials = set()  # paths of devices and fifos not created, for hardlinks to them
        self.layer = None

    def close(self):
        self._truncate(0)

    def apply(self, stream, layer):
        self.layer = layer
        self.added = set()
        self.marked = 0
        written = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    written += self._add(tar, member)
                    tar.members.clear()  # stream mode keeps every header otherwise
            while stream.read(CHUNK):  # to the end: gzip checks its trailer, on_bytes sees every byte
                pass
        except tarfile.TarError as err:
            raise BadLayerData(f"{layer}: not a valid tar ({err})") from None
        return written

    def finish(self):
        """Directories get their modes and mtimes, deepest first (a path sorts before
        its extensions), so nothing is created below a 0555 one any more."""
        for path in sorted(self.dirs, reverse=True):
            mode, mtime = self.dirs[path]
            parts = path.split("/")
            fd = os.open(parts[-1], OPEN_DIR, dir_fd=self._walk(parts[:-1], create=False))
            try:
                os.fchmod(fd, mode)
                if mtime is not None:
                    os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
        self._truncate(0)

    def _unsafe(self, member, why):
        return UnsafeLayer(f"{self.layer}: member {member.name!r} {why}; refusing the image")

    def _parts(self, name, member):
        try:
            return member_parts(name, MAX_DEPTH)
        except ValueError as why:
            raise self._unsafe(member, str(why)) from None

    def _truncate(self, depth):
        while len(self.chain) > depth:
            os.close(self.chain.pop()[1])
        self.marked = min(self.marked, depth)

    def _walk(self, dirparts, create):
        """A descriptor (owned by the chain) of the directory dirparts. With `create`,
        missing directories are made and non-directories replaced by directories."""
        chain = self.chain
        depth = 0
        common = min(len(chain), len(dirparts))
        while depth < common and chain[depth][0] == dirparts[depth]:
            depth += 1
        self._truncate(depth)
        fd = chain[-1][1] if chain else self.root
        for i in range(depth, len(dirparts)):
            fd = self._enter(fd, dirparts, i, create)
            chain.append((dirparts[i], fd))
        if create and self.marked < len(dirparts):
            for i in range(self.marked, len(dirparts)):
                self.added.add("/".join(dirparts[:i + 1]))
            self.marked = len(dirparts)
        return fd

    def _enter(self, fd, dirparts, i, create):
        name = dirparts[i]
        try:
            return os.open(name, OPEN_DIR, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as err:  # ELOOP: a symlink; ENOTDIR: another non-directory
            if not create or err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(name, dir_fd=fd)
        os.mkdir(name, 0o700, dir_fd=fd)
        self.dirs["/".join(dirparts[:i + 1])] = _IMPLICIT_DIR
        return os.open(name, OPEN_DIR, dir_fd=fd)

    def _remove(self, parent, name, path):
        _remove_entry(parent, name, path, self.dirs)

    def _replace(self, parent, name, path, create):
        """create(), after removing what holds the name when there is something."""
        try:
            return create()
        except FileExistsError:
            self._remove(parent, name, path)
            return create()

    def _add(self, tar, member):
        parts = self._parts(member.name, member)
        if not parts or any(p.startswith(_WHITEOUT) for p in parts[:-1]):
            return 0
        name = parts[-1]
        if name.startswith(_WHITEOUT):
            self._whiteout(parts, member)
            return 0
        parent = self._walk(parts[:-1], create=True)
        path = "/".join(parts)
        self.added.add(path)
        if member.isdir():
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=parent)
                    os.mkdir(name, 0o700, dir_fd=parent)
            self.dirs[path] = (member.mode & _MODE_BITS, member.mtime)
        elif member.isreg():
            return self._write(tar, member, parent, name, path)
        elif member.issym():
            if not member.linkname:
                raise self._unsafe(member, "is a symlink with an empty target")
            self._replace(parent, name, path, lambda: os.symlink(member.linkname, name, dir_fd=parent))
            os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        elif member.islnk():
            self._link(member, parent, name, path)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._remove(parent, name, path)
            self.specials.add(path)
        else:
            raise self._unsafe(member, f"has the unknown type {member.type!r}")
        return 0

    def _write(self, tar, member, parent, name, path):
        fd = self._replace(parent, name, path, lambda: os.open(name, NEW_FILE, 0o600, dir_fd=parent))
        try:
            src = tar.extractfile(member)
            written = 0
            while True:
                data = src.read(CHUNK)
                if not data:
                    break
                written += len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, member.mode & _MODE_BITS)  # not the umask's choice
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        return written

    def _link(self, member, parent, name, path):
        target = self._parts(member.linkname, member)
        if not target:
            raise self._unsafe(member, "is a hardlink to the root directory")
        try:
            target_parent = self._open_existing(target[:-1])
        except OSError:
            raise self._unsafe(member, f"is a hardlink to {member.linkname!r}, whose directory is missing or "
                                       "is reached through a symlink or a non-directory") from None
        try:
            self._replace(parent, name, path, lambda: os.link(
                target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False))
        except FileNotFoundError:
            if "/".join(target) not in self.specials:
                raise self._unsafe(member, f"is a hardlink to {member.linkname!r}, which does not exist") from None
            self._remove(parent, name, path)  # a link to a device or fifo that was not created
        except PermissionError:  # EPERM: link(2) refuses directories
            if not stat.S_ISDIR(os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False).st_mode):
                raise
            raise self._unsafe(member, f"is a hardlink to the directory {member.linkname!r}") from None
        finally:
            os.close(target_parent)

    def _open_existing(self, dirparts):
        """A new descriptor of an existing directory, reached through directories only."""
        fd = os.dup(self.root)
        try:
            for name in dirparts:
                child = os.open(name, OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _whiteout(self, parts, member):
        name = parts[-1]
        parent = self._walk(parts[:-1], create=True)
        if name == _OPAQUE:
            if len(parts) > 1:  # an opaque root hides nothing: overlayfs merges the roots whatever
                self._opaque(parent, "/".join(parts[:-1]))
        elif not name.startswith(_META):  # other `.wh..wh.` names: AUFS metadata
            hidden = name[len(_WHITEOUT):]
            if hidden in ("", ".", ".."):
                raise self._unsafe(member, "is a whiteout of no entry, '.' or '..'")
            self._remove(parent, hidden, "/".join(parts[:-1] + [hidden]))

    def _opaque(self, fd, path):
        """Remove below fd what this layer did not add."""
        for entry in list(os.scandir(fd)):
            child = f"{path}/{entry.name}" if path else entry.name
            if child not in self.added:
                self._remove(fd, entry.name, child)
            elif entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, OPEN_DIR, dir_fd=fd)
                try:
                    self._opaque(sub, child)
                finally:
                    os.close(sub)
