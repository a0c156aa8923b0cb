"""Readers that watch what passes through them: counting (progress lines) and hashing
(verification), and the sha256 of a file. hashlib is imported when a hash begins:
docker-dir-id reads names, never hashes (bench/RESULTS.md has its start-up time).
"""
from ..errors import BadImageDir
from ..fs import open_regular

# Buffers above glibc's mmap threshold (128 kB) are mapped afresh on every read, and
# their page faults cost more than the copy: stay well below it.
CHUNK = 64 << 10


class CountingReader:
    """A binary reader that tells `on_bytes(n)` how many bytes each read returned."""

    def __init__(self, raw, on_bytes):
        self.raw = raw
        self.on_bytes = on_bytes

    def read(self, size=-1):
        data = self.raw.read(size)
        if data:
            self.on_bytes(len(data))
        return data

    def readinto(self, buf):
        n = self.raw.readinto(buf)
        if n:
            self.on_bytes(n)
        return n


class HashingReader:
    """A binary reader that hashes (sha256) what is read from it."""

    def __init__(self, raw):
        import hashlib

        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size=-1):
        data = self.raw.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf):
        n = self.raw.readinto(buf)
        if n:
            self.hash.update(memoryview(buf)[:n])
            self.size += n
        return n

    def drain(self):
        """Read to the end; the hex digest of everything read."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass
        return self.hash.hexdigest()


def sha256_file(path):
    try:
        stream = open_regular(path)
    except OSError as err:
        raise BadImageDir(f"{path}: cannot read ({err.strerror})") from None
    with stream:
        return HashingReader(stream).drain()
