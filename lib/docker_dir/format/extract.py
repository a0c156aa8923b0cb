"""Extract a tar stream (an engine's export) safely into a directory, as it arrives:
no temporary file.

The extraction is our own, member by member, because tarfile's `data` filter (PEP 706)
can be bypassed before the June 2025 fixes of CVE-2025-4517, -4330 and -4138, and
Debian bookworm's Python (3.11.2) predates them. Once
the oldest supported Python is 3.9.23, 3.10.18, 3.11.13, 3.12.11 or 3.13.4 (or
newer), `extractall(filter="data")` could replace it. The rules:
- names are relative, without `..`, and never written through a symlink;
- symlink targets are relative and may only climb (`../`) as far as the
  link's own depth, then descend by plain names: legacy duplicate layers
  (`../<id>/layer.tar`) and podman's `layer.tar -> ../<sha>.tar` pass, while
  nothing built from such links can resolve outside the tree;
- hardlinks point at a regular file already extracted;
- no devices, fifos or other special members, no sparse files.

tarfile reads the headers (through _Source, forward only, as its own stream mode
does); each file's bytes are copied straight from the stream into the file through
one reused buffer of COPY_BUFFER bytes. Through tarfile's stream mode (64 KiB reads,
each piece copied three times) the extraction of a ~150 MB save took 1.2 s, against
0.4 s so (bench/RESULTS.md, "Save, issue 29").
"""
import hashlib
import os
import stat
import tarfile

from ..errors import BadImageDir
from ..fs import NEW_FILE, OPEN_DIR
from .names import member_parts


# Large reads cost fewer system calls and wake-ups; one buffer, allocated once.
COPY_BUFFER = 1 << 20


class UnsafeArchive(BadImageDir):
    """The engine's stream holds a member that could write outside the directory."""


def _member_parts(name, what="member"):
    try:
        return member_parts(name)
    except ValueError as why:
        raise UnsafeArchive(f"archive {what} {why}; refusing the archive") from None


def _check_symlink_target(parts, target):
    """Allow only leading `..` (no deeper than the link) followed by plain names."""
    if not target or target.startswith("/"):
        raise UnsafeArchive(f"archive symlink {'/'.join(parts)!r} -> {target!r} is absolute; refusing the archive")
    climbing = True
    ups = 0
    for comp in target.split("/"):
        if comp == "..":
            if not climbing:
                raise UnsafeArchive(f"archive symlink {'/'.join(parts)!r} -> {target!r} climbs after descending; "
                                    "refusing the archive")
            ups += 1
        elif comp in ("", "."):
            continue
        else:
            climbing = False
    if climbing or ups > len(parts) - 1:
        raise UnsafeArchive(f"archive symlink {'/'.join(parts)!r} -> {target!r} leaves the directory; "
                            "refusing the archive")


class _Source:
    """The archive as tarfile reads it in "r:" mode (read, tell, seek), forward only, as
    in its stream mode; `copy_to` moves a member's bytes into a file without them
    passing through tarfile."""

    def __init__(self, stream):
        self.stream = stream
        self.pos = 0
        self._buffer = memoryview(bytearray(COPY_BUFFER))

    def tell(self):
        return self.pos

    def read(self, size):
        """`size` bytes, fewer only at the end of the stream (tarfile reads headers so)."""
        parts = []
        left = size
        while left:
            data = self.stream.read(left)
            if not data:
                break
            parts.append(data)
            left -= len(data)
        self.pos += size - left
        return b"".join(parts)

    def seek(self, pos, whence=0):
        """Forward only (tarfile skips a member's padding, or bytes it does not use)."""
        if whence != 0 or pos < self.pos:
            raise tarfile.ReadError("the archive asks to be read backwards")
        while self.pos < pos:
            if not self._fill(pos - self.pos):
                break
        return self.pos

    def _fill(self, most):
        """Read up to `most` bytes into the buffer: how many (0 at the end)."""
        view = self._buffer[:min(most, COPY_BUFFER)]
        readinto = getattr(self.stream, "readinto", None)
        if readinto is not None:
            n = readinto(view)
        else:
            data = self.stream.read(len(view))
            n = len(data)
            view[:n] = data
        self.pos += n or 0
        return n or 0

    def copy_to(self, fd, size, digest):
        """Write the next `size` bytes of the archive to file `fd`, hashing them into
        `digest`; how many there were."""
        left = size
        while left:
            n = self._fill(left)
            if not n:
                break
            digest.update(self._buffer[:n])
            _write_all(fd, self._buffer[:n])
            left -= n
        return size - left

    def compare_to(self, candidates, size, digest, open_file):
        """Read the next `size` bytes of the archive, hashing them into `digest`, against
        the files `candidates` (nothing is written while one of them agrees). Returns
        (bytes read, the candidate that agreed throughout, None) or, when none did,
        (bytes read, None, fd of the file open_file() made holding them all: the agreeing
        start, as a candidate has it, then the archive's)."""
        opened = [open(path, "rb") for path in candidates]
        files = list(opened)  # those that agreed so far
        theirs = bytearray(COPY_BUFFER)
        view = memoryview(theirs)
        done = 0
        try:
            while done < size:
                n = self._fill(size - done)
                if not n:
                    return done, None, None
                digest.update(self._buffer[:n])
                ours = self._buffer.obj if n == COPY_BUFFER else self._buffer[:n].tobytes()
                agreeing = []
                for other in files:
                    got = other.readinto(view[:n])
                    # bytearray == bytearray is a memcmp; memoryviews compare byte by byte, ten times slower
                    if got == n and (theirs if n == COPY_BUFFER else view[:n].tobytes()) == ours:
                        agreeing.append(other)
                if not agreeing:
                    fd = open_file()
                    files[0].seek(0)
                    _write_all(fd, files[0].read(done))
                    _write_all(fd, self._buffer[:n])
                    return done + n + self.copy_to(fd, size - done - n, digest), None, fd
                files = agreeing
                done += n
            return done, files[0].name, None
        finally:
            for other in opened:
                other.close()


def _write_all(fd, data):
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


class _Extractor:
    def __init__(self, dest_fd, same_content=None):
        self.dest_fd = dest_fd
        self.same_content = same_content
        self.digests = {}  # member name -> hex sha256 of every regular file extracted

    def _parent_fd(self, parts, create):
        """An fd of the member's parent directory, walking real directories only."""
        fd = os.dup(self.dest_fd)
        try:
            for i, comp in enumerate(parts[:-1]):
                try:
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise UnsafeArchive(f"archive member {'/'.join(parts)!r} refers to a missing directory; "
                                            "refusing the archive") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafeArchive(f"archive member {'/'.join(parts)!r} passes through "
                                        f"{'/'.join(parts[:i + 1])!r}, which is not a directory; "
                                        "refusing the archive")
                child = os.open(comp, OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _clear(name, parent_fd):
        """Make room for a repeated member name (never following a link)."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"archive member {name!r} replaces a directory; refusing the archive")
        os.unlink(name, dir_fd=parent_fd)

    def add(self, source, member):
        parts = _member_parts(member.name)
        if not parts:
            return 0
        if member.isdir():
            parent = self._parent_fd(parts + ["_"], create=True)
            os.close(parent)
            return 0
        if not (member.isreg() or member.issym() or member.islnk()):
            raise UnsafeArchive(f"archive member {member.name!r} is a device, fifo or other special file; "
                                "refusing the archive")
        if member.issparse():  # no engine writes one; its bytes on the stream are not the file's
            raise UnsafeArchive(f"archive member {member.name!r} is a sparse file; refusing the archive")
        parent = self._parent_fd(parts, create=True)
        try:
            name = parts[-1]
            self._clear(name, parent)
            if member.issym():
                _check_symlink_target(parts, member.linkname)
                os.symlink(member.linkname, name, dir_fd=parent)
                return 0
            if member.islnk():
                target = _member_parts(member.linkname, "hardlink target")
                if not target:
                    raise UnsafeArchive(f"archive hardlink {member.name!r} has no target; refusing the archive")
                target_parent = self._parent_fd(target, create=False)
                try:
                    st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise UnsafeArchive(f"archive hardlink {member.name!r} -> {member.linkname!r} "
                                            "does not point at a regular file; refusing the archive")
                    os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent,
                            follow_symlinks=False)
                except FileNotFoundError:
                    raise UnsafeArchive(f"archive hardlink {member.name!r} -> {member.linkname!r} points at "
                                        "no earlier member; refusing the archive") from None
                finally:
                    os.close(target_parent)
                return 0
            return self._regular(source, member, name, parent)
        finally:
            os.close(parent)

    def _regular(self, source, member, name, parent):
        """Extract a regular file, hashing it; one whose content a file elsewhere may have
        (same_content) is read against it and, when they agree, is a hard link of it."""
        mode = 0o755 if member.mode & 0o111 else 0o644
        digest = hashlib.sha256()
        candidates = self.same_content(member.name, member.size) if self.same_content else None
        if candidates:
            read, agreed, fd = source.compare_to(candidates, member.size, digest,
                                                 lambda: os.open(name, NEW_FILE, mode, dir_fd=parent))
            if agreed is not None:
                os.link(agreed, name, dst_dir_fd=parent)
        else:
            fd = os.open(name, NEW_FILE, mode, dir_fd=parent)
            read = None
        if fd is not None:
            try:
                if read is None:
                    read = source.copy_to(fd, member.size, digest)
            finally:
                os.close(fd)
        if read != member.size:
            raise tarfile.ReadError(f"{member.name}: truncated")
        self.digests["/".join(_member_parts(member.name))] = digest.hexdigest()
        return read


def extract_stream(stream, dest, same_content=None):
    """Extract a tar stream into the existing empty directory `dest`. Returns {member
    name: hex sha256} of the regular files (hashed as they stream). `same_content(name,
    size)` may name files that may hold a member's content (a blob store's, of that size):
    the member is then read against them and, if one agrees, extracted as a hard link of
    it (nothing written); else written as any other."""
    dest_fd = os.open(dest, OPEN_DIR)
    try:
        extractor = _Extractor(dest_fd, same_content)
        source = _Source(stream)
        with tarfile.open(fileobj=source, mode="r:") as tar:
            for member in tar:
                extractor.add(source, member)
                tar.members.clear()  # tarfile keeps every header otherwise
    finally:
        os.close(dest_fd)
    return extractor.digests
