"""Layers compressed the same way every time (docker-dir-push), made as they are read.

gzip goes through ISA-L's deflate (the isal package): ten times zlib's speed on
incompressible layers (bench/RESULTS.md), at level 2, with no name and mtime 0 in its
header (as gzip -n). zstd goes through the zstandard package at zstd(1)'s default level.
Always these, never a fallback: another compressor gives other bytes, so another
manifest digest; `compressor_id` names the library, its version and the level, so bytes
remembered from one are never expected of another.

A CompressedLayer is read as a stream (no work file: the upload overlaps the
compression, made by a thread of its own), and read again from any offset (compression
cannot seek: the bytes before it are made again, and dropped). The uncompressed layer is
hashed as it is read and, at its end, checked against the digests that name it: the
registry sees only the compressed bytes, and would take a damaged layer for a new one.
"""
import hashlib
import queue
import threading

from ..errors import VerifyError
from ..fs import open_regular
from .compression import GZIP, ZSTD
from .names import short
from .streams import CHUNK
from .verify import CORRUPT

GZIP_LEVEL = 2
ZSTD_LEVEL = 3
_GZIP_WBITS = 31  # a gzip wrapper; ISA-L writes mtime 0 and no name
_AHEAD = 64  # compressed pieces (up to CHUNK each) made ahead of the reads


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
    """The compressed bytes, made by a thread of their own a few MiB ahead of the reads: the
    reading thread sends them (TLS, the network) while the next ones are compressed and
    hashed (ISA-L, zstd and hashlib let go of the GIL)."""

    def __init__(self, layer, skip):
        self._queue = queue.Queue(maxsize=_AHEAD)
        self._stop = threading.Event()
        self._buffer = bytearray()
        self._ended = False
        self.size = 0
        self.digest = None  # hex, once the end was read
        self._thread = threading.Thread(target=self._produce, args=(layer, skip), name="compress", daemon=True)
        self._thread.start()

    def read(self, size=-1):
        while not self._ended and (size < 0 or len(self._buffer) < size):
            item = self._queue.get()
            if isinstance(item, bytes):
                self._buffer += item
            elif isinstance(item, BaseException):
                self._ended = True
                raise item
            else:
                self._ended = True
                self.digest, self.size = item
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]  # cheap at a bytearray's start
        return data

    def close(self):
        self._stop.set()
        while self._thread.is_alive():  # a producer blocked on a full queue: make room until it sees the stop
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _produce(self, layer, skip):
        try:
            source_hash, made_hash, size = hashlib.sha256(), hashlib.sha256(), 0
            compressor = _compressor(layer.method)
            with open_regular(layer.path) as source:
                while True:
                    data = source.read(CHUNK)
                    made = compressor.compress(data) if data else compressor.flush()
                    source_hash.update(data)
                    made_hash.update(made)
                    size += len(made)
                    if skip:
                        dropped = min(skip, len(made))
                        made, skip = made[dropped:], skip - dropped
                    if made and not self._put(made):
                        return
                    if not data:
                        break
            actual = source_hash.hexdigest()
            wrong = sorted(layer.expected - {actual})
            if wrong:
                raise VerifyError(f"{layer.path}: content sha256:{short(actual)} does not match its digest "
                                  f"sha256:{short(wrong[0])}; {CORRUPT}")
            self._put((made_hash.hexdigest(), size))
        except BaseException as err:  # the reader raises it
            self._put(err)

    def _put(self, item):
        """Queue `item` for the reader; False once the reader closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False
