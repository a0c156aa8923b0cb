"""Layer blob compression: tell it from the first bytes or the media type, and
read the tar inside as a stream.

- `sniff_compression(head)`: "gzip", "zstd", "none" (a tar) or None.
- `media_type_compression(media_type)`: the same answer from an OCI or Docker
  layer media type; None for types that are not plain layers (encrypted ones too).
- `open_decompressed(raw)`: a readable binary stream of the uncompressed tar.
  gzip is read with zlib, member after member (zero padding between members is
  skipped, as gzip(1) does); zstd with the standard library's `compression.zstd`
  (Python >= 3.14) or else the `zstandard` package, across frames. Damaged data
  raises BadLayerData; a zstd layer without either module raises ZstdUnavailable.

Pure: no subprocess, standard library plus the optional `zstandard`.
"""
import io
import sys
import zlib

from ..errors import EXIT_ENGINE_UNAVAILABLE, BadImageDir, DockerDirError
from .streams import CHUNK

NONE, GZIP, ZSTD = "none", "gzip", "zstd"

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK = 512
# Formats a layer is never legitimately in, named so the error says what it saw.
_OTHER_MAGICS = ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x04\x22\x4d\x18", "lz4"))

_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": ZSTD,
    "application/vnd.docker.image.rootfs.foreign.diff.tar": NONE,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": GZIP,
}


class BadLayerData(BadImageDir):
    """A layer blob that is not a tar, gzip or zstd stream, or whose compressed data is damaged."""


class ZstdUnavailable(DockerDirError):
    """A zstd layer, and neither compression.zstd (Python >= 3.14) nor zstandard is importable."""

    exit_code = EXIT_ENGINE_UNAVAILABLE  # a missing support program, as sysexits' EX_UNAVAILABLE


def media_type_compression(media_type):
    """"none", "gzip" or "zstd" for a layer media type (parameters and case ignored); None if unknown."""
    return _MEDIA_TYPES.get(media_type.split(";", 1)[0].strip().lower())


def _looks_like_tar(head):
    if len(head) >= 262 and head[257:262] == b"ustar":
        return True
    if len(head) < _BLOCK:
        return False
    block = head[:_BLOCK]
    if not any(block):
        return True  # an empty archive: only the end-of-archive blocks
    # pre-POSIX (v7) headers have no magic: their checksum field has to match
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"x", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:])


def sniff_compression(head):
    """"gzip", "zstd" or "none" (an uncompressed tar) from a blob's first bytes (512
    are enough for a tar, 4 for the others); None when it is none of these."""
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head.startswith(_ZSTD_MAGIC):
        return ZSTD
    if _looks_like_tar(head):
        return NONE
    return None


def open_decompressed(raw, name="layer"):
    """A readable binary stream of the tar in `raw` (a binary file object, read
    from its current position; not closed here). `name` appears in errors."""
    head = _read_head(raw, _BLOCK)
    kind = sniff_compression(head)
    source = _Prefixed(head, raw)
    if kind == NONE:
        return source
    if kind == GZIP:
        return _GzipReader(source, name)
    if kind == ZSTD:
        return _zstd_reader(source, name)
    if not head:
        raise BadLayerData(f"{name}: empty file, not a layer")
    for magic, what in _OTHER_MAGICS:
        if head.startswith(magic):
            raise BadLayerData(f"{name}: {what}-compressed; layers are tar, gzip or zstd")
    raise BadLayerData(f"{name}: not a tar, gzip or zstd stream")


def _read_head(raw, size):
    """Up to `size` bytes: pipes and sockets may return fewer per read."""
    parts = []
    while size:
        data = raw.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


class _Reader(io.RawIOBase):
    """read() is the primitive here; readinto() serves io's other users."""

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


class _Prefixed(_Reader):
    """The sniffed head, then the rest of the raw stream."""

    def __init__(self, head, raw):
        self._head = head
        self._raw = raw

    def read(self, size=-1):
        if not self._head:
            return self._raw.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._raw.read(), b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data


class _GzipReader(_Reader):
    def __init__(self, raw, name):
        self._raw = raw
        self._name = name
        self._inflate = None
        self._pending = b""
        self._between_members = True

    def read(self, size=-1):
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""  # zlib takes max_length=0 as "unlimited"
        while True:
            if not self._pending:
                self._pending = self._raw.read(CHUNK)
                if not self._pending:
                    if self._between_members:
                        return b""
                    raise BadLayerData(f"{self._name}: gzip data ends early (truncated file?)")
            if self._between_members:
                self._pending = self._pending.lstrip(b"\0")
                if not self._pending:
                    continue
                self._inflate = zlib.decompressobj(31)
                self._between_members = False
            try:
                data = self._inflate.decompress(self._pending, size)
            except zlib.error as err:
                raise BadLayerData(f"{self._name}: damaged gzip data ({err})") from None
            if self._inflate.eof:
                self._pending = self._inflate.unused_data
                self._between_members = True
            else:
                self._pending = self._inflate.unconsumed_tail
            if data:
                return data


class _Translating(_Reader):
    """A decompressor's reader whose errors become BadLayerData."""

    def __init__(self, reader, errors, name):
        self._reader = reader
        self._errors = errors
        self._name = name

    def read(self, size=-1):
        try:
            return self._reader.read(size)
        except self._errors as err:
            raise BadLayerData(f"{self._name}: damaged zstd data ({err})") from None


def _zstd_reader(raw, name):
    try:
        from compression import zstd  # Python >= 3.14
    except ImportError:
        try:
            import zstandard
        except ImportError:
            python = "%d.%d" % sys.version_info[:2]
            raise ZstdUnavailable(f"{name} is zstd-compressed and Python {python} cannot read zstd: "
                                  "pip install zstandard") from None
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, read_across_frames=True,
                                                            closefd=False)
        return _Translating(reader, zstandard.ZstdError, name)
    return _Translating(zstd.ZstdFile(raw), (zstd.ZstdError, EOFError), name)
