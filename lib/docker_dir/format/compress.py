"""Layers compressed the same way every time (docker-dir-push), made as they are read.

gzip goes through ISA-L's deflate (the isal package): ten times zlib's speed on
incompressible layers (bench/RESULTS.md), at level 2, with no name and mtime 0 in its
header (as gzip -n). zstd goes through the zstandard package at zstd(1)'s default level.
Always these, never a fallback: another compressor gives other bytes, so another
manifest digest; `compressor_id` names the library, its version and the level, so bytes
remembered from one are never expected of another.

A CompressedLayer is read as a stream (no work file: the upload overlaps the
compression), and read again from any offset (compression cannot seek: the bytes before
it are made again, and dropped). The uncompressed layer is hashed as it is read and,
at its end, checked against the digests that name it: the registry sees only the
compressed bytes, and would take a damaged layer for a new one.
"""
import hashlib

from ..errors import VerifyError
from ..fs import open_regular
from .compression import GZIP, ZSTD
from .names import short
from .streams import CHUNK
from .verify import CORRUPT

GZIP_LEVEL = 2
ZSTD_LEVEL = 3
_GZIP_WBITS = 31  # a gzip wrapper; ISA-L writes mtime 0 and no name


def compressor_id(method):
    """What makes `method`'s bytes what they are: the library, its version, the level."""
    if method == GZIP:
        import isal

        return f"gzip:isal-{isal.__version__}:{GZIP_LEVEL}"
    import zstandard  # a dependency below Python 3.14; only zstd pushes need it

    return f"zstd:zstandard-{zstandard.__version__}:{ZSTD_LEVEL}"


class CompressedLayer:
    """The layer file at `path` compressed with `method` (GZIP or ZSTD); `expected` holds
    the hex digests the uncompressed content may have (empty: unchecked)."""

    def __init__(self, path, method, expected=()):
        if method not in (GZIP, ZSTD):
            raise ValueError(f"no deterministic compressor for {method!r}")
        self.path, self.method, self.expected = path, method, frozenset(expected)

    def open(self, offset=0):
        """A reader of the compressed bytes from `offset` on; read to its end, its
        `digest` (hex) and `size` are those of the whole compressed blob."""
        return _Reader(self, offset)


def _compressor(method):
    if method == GZIP:
        from isal import isal_zlib

        return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, _GZIP_WBITS)
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=False).compressobj()


class _Reader:
    def __init__(self, layer, skip):
        self._layer = layer
        self._source = open_regular(layer.path)
        self._source_hash = hashlib.sha256()
        self._hash = hashlib.sha256()
        self._compressor = _compressor(layer.method)
        self._skip = skip  # compressed bytes still to drop before the first one returned
        self._buffer = bytearray()
        self._ended = False
        self.size = 0
        self.digest = None  # hex, once the end was read

    def read(self, size=-1):
        while not self._ended and (size < 0 or len(self._buffer) < size):
            self._fill()
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]  # cheap at a bytearray's start
        return data

    def _fill(self):
        data = self._source.read(CHUNK)
        if data:
            self._source_hash.update(data)
            self._add(self._compressor.compress(data))
            return
        self._add(self._compressor.flush())
        self._ended = True
        self.digest = self._hash.hexdigest()
        actual = self._source_hash.hexdigest()
        wrong = sorted(self._layer.expected - {actual})
        if wrong:
            raise VerifyError(f"{self._layer.path}: content sha256:{short(actual)} does not match its digest "
                              f"sha256:{short(wrong[0])}; {CORRUPT}")

    def _add(self, made):
        if not made:
            return
        self._hash.update(made)
        self.size += len(made)
        if self._skip:
            dropped = min(self._skip, len(made))
            made, self._skip = made[dropped:], self._skip - dropped
        self._buffer += made

    def close(self):
        self._source.close()
