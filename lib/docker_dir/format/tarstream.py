"""Stream tar archives in and out of an image directory, without temporary files.

Extraction is our own, member by member, because tarfile's `data` filter (PEP 706)
can be bypassed before the June 2025 fixes of CVE-2025-4517, -4330 and -4138, and
the Pythons here (3.11.2 in Debian bookworm, 3.11.7 from pyenv) predate them. Once
the oldest supported Python is 3.9.23, 3.10.18, 3.11.13, 3.12.11 or 3.13.4 (or
newer), `extractall(filter="data")` could replace it. The rules:
- names are relative, without `..`, and never written through a symlink;
- symlink targets are relative and may only climb (`../`) as far as the
  link's own depth, then descend by plain names: legacy duplicate layers
  (`../<id>/layer.tar`) and podman's `layer.tar -> ../<sha>.tar` pass, while
  nothing built from such links can resolve outside the tree;
- hardlinks point at a regular file already extracted;
- no devices, fifos or other special members.
"""
import io
import json
import os
import stat
import tarfile

from ..errors import BadImageDir
from .imagedir import open_regular

# Buffers above glibc's mmap threshold (128 kB) are mapped afresh on every read, and
# their page faults tripled a save's system time here: stay well below it.
_CHUNK = 64 << 10


class UnsafeArchive(BadImageDir):
    """The engine's stream holds a member that could write outside the directory."""


def _member_parts(name, what="member"):
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/"):
        raise UnsafeArchive(f"archive {what} {name!r} is an absolute path; refusing the archive")
    if ".." in parts:
        raise UnsafeArchive(f"archive {what} {name!r} contains '..'; refusing the archive")
    if any("\0" in p for p in parts):
        raise UnsafeArchive(f"archive {what} {name!r} contains a NUL byte; refusing the archive")
    return parts


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


class _Extractor:
    def __init__(self, dest_fd):
        self.dest_fd = dest_fd

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
                child = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
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

    def add(self, tar, member):
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
            mode = 0o755 if member.mode & 0o111 else 0o644
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=parent)
            with os.fdopen(fd, "wb") as out, tar.extractfile(member) as src:
                written = 0
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
            if written != member.size:
                raise tarfile.ReadError(f"{member.name}: truncated")
            return written
        finally:
            os.close(parent)


def extract_stream(stream, dest):
    """Extract a tar stream into the existing empty directory `dest`; return bytes written."""
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    total = 0
    try:
        extractor = _Extractor(dest_fd)
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
            for member in tar:
                total += extractor.add(tar, member)
                tar.members.clear()  # stream mode keeps every header otherwise
    finally:
        os.close(dest_fd)
    return total


def load_stream_members(image, held=0, placeholders=False):
    """(member name, path in DIR) of the config and each distinct layer, in the order
    a docker-archive lists them: config first. Files named by digest get docker's own
    names (`<hex>.json`, `<hex>.tar`), whatever the layout called them.

    The first `held` layers are ones the engine already has: their files are left out,
    or with `placeholders` sent as empty files (path None), unless a later layer uses
    the same file."""
    members = {(f"{image.config_hex}.json" if image.config_hex else image.config_path): image.config_path}
    needed = {_layer_member(layer) for layer in image.layers[held:]}
    for i, layer in enumerate(image.layers):
        name = _layer_member(layer)
        if name in members:
            continue
        if i >= held or name in needed:
            members[name] = layer.path
        elif placeholders:
            members[name] = None
    return list(members.items())


def bytes_to_send(image, held=0, placeholders=False):
    """The size of the files a load stream of `image` carries (without tar headers)."""
    return image.size_of(relpath for _, relpath in load_stream_members(image, held, placeholders) if relpath)


def _layer_member(layer):
    return f"{layer.digest[7:]}.tar" if layer.digest else layer.path


def write_load_stream(image, out, repo_tags, on_bytes=None, held=0, placeholders=False):
    """Write the docker-archive tar every engine's `load` takes for one image, whatever
    layout it came from: a manifest.json naming only `repo_tags`, and the files
    (see load_stream_members for `held` and `placeholders`)."""
    image_dir = image.image_dir
    members = load_stream_members(image, held, placeholders)
    manifest = json.dumps([{"Config": members[0][0], "RepoTags": list(repo_tags) or None,
                            "Layers": [_layer_member(layer) for layer in image.layers]}]).encode()
    sink = _Sink(out)
    tar = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)
    try:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for name, relpath in members:
            if relpath is None:
                info = tarfile.TarInfo(name)
                info.mode = 0o644
                tar.addfile(info)
                continue
            with open_regular(image_dir.resolve(relpath)) as src:
                info = tarfile.TarInfo(name)
                info.size = os.fstat(src.fileno()).st_size
                info.mode = 0o644
                tar.addfile(info, _Counting(src, on_bytes) if on_bytes else src)
    except BaseException:
        sink.stop()
        raise
    tar.close()


class _Sink:
    """The engine's stdin, until an error: then tarfile's closing flush (also run when
    it is garbage-collected) writes nothing, as a stalled engine would block it forever
    and leave a signal unanswered."""

    def __init__(self, out):
        self.out = out

    def write(self, data):
        if self.out is not None:
            self.out.write(data)

    def stop(self):
        self.out = None


class _Counting:
    """A file wrapper that reports how many bytes were read."""

    def __init__(self, raw, on_bytes):
        self.raw = raw
        self.on_bytes = on_bytes

    def read(self, size=-1):
        data = self.raw.read(size)
        self.on_bytes(len(data))
        return data

    def readinto(self, buf):
        n = self.raw.readinto(buf)
        self.on_bytes(n or 0)
        return n


def counting_reader(raw, on_bytes):
    return _Counting(raw, on_bytes)
