"""The Docker engine's HTTP API over its unix socket, standard library only.

docker-dir asks the daemon directly where the docker CLI would ask it for us: presence
and IDs (`get`, on the hot path: one request instead of a CLI process), and the save and
load streams (`Download`, `Upload`), so a save or a cold exec starts neither plumbum
nor a docker CLI process (bench/RESULTS.md has what each costs). Where the daemon is not
a local unix socket (DOCKER_HOST=tcp://, ssh://) or the socket cannot be opened, the
engine uses the CLI instead. `get` imports only the C module under socket.py (socket.py
itself costs the hot path milliseconds); the streams, off the hot path, use socket.py.
"""
import io
import os

from ..errors import first_line
from ..fastjson import loads_json

# What the daemon sends back besides a stream (JSON messages, errors) is small: bounded.
_MAX_REPLY = 1 << 20


def get(sock_path, path, timeout=10):
    """(status, body) of an HTTP GET over a unix socket, or None if it cannot be asked.
    A bare HTTP/1.0 request (the server closes after answering)."""
    try:
        from _socket import AF_UNIX, SOCK_STREAM, socket
    except ImportError:  # not CPython
        from socket import AF_UNIX, SOCK_STREAM, socket

    chunks = []
    conn = socket(AF_UNIX, SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(sock_path)
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        conn.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = _status(head)
    return None if status is None else (status, body)


def get_json(sock_path, path):
    """The decoded answer of a GET answered 200, else None."""
    answer = get(sock_path, path)
    if not answer or answer[0] != 200:
        return None
    try:
        return loads_json(answer[1])
    except ValueError:
        return None


def post(sock_path, path, timeout=60):
    """(status, body) of a bodiless POST, or None if it cannot be asked."""
    try:
        conn = _connect(sock_path, timeout)
    except OSError:
        return None
    try:
        conn.sendall(f"POST {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode())
        reply = _Reply(conn.makefile("rb"))
        return reply.status, reply.read_all()
    except OSError:
        return None
    finally:
        conn.close()


def error_message(body):
    """The daemon's own words in an error reply ({"message": ...}), one line."""
    try:
        found = loads_json(body)
    except ValueError:
        found = None
    message = found.get("message") if isinstance(found, dict) else None
    return first_line(message if isinstance(message, str) else body)


class Download:
    """A streamed GET whose body the caller reads from `stdout` (docker save), shaped like
    process.Stream: finish() and abort(), stderr() the daemon's complaint. Raises OSError
    when the socket cannot be opened."""

    def __init__(self, sock_path, path):
        self._conn = _connect(sock_path, None)  # a big export takes long to start: no timeout
        # HTTP/1.0: the daemon sends the body as it is, ending it by closing.
        self._conn.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        self._reply = _Reply(self._conn.makefile("rb"))
        self._complaint = "" if self._reply.status == 200 else error_message(self._reply.read_all())
        self.stdout = self._reply.body if self._reply.status == 200 else io.BytesIO()

    def stderr(self):
        return self._complaint

    def finish(self):
        self.abort()
        return (0 if not self._complaint else 1), "", self._complaint

    def abort(self):
        self._conn.close()


class ConnectionLost(OSError):
    """The daemon closed the connection before it answered a load (it died or restarted);
    `log`: the file it writes its log to, when one could be seen, else None."""

    def __init__(self, log):
        super().__init__("the daemon closed the connection")
        self.log = log


class Upload:
    """A streamed POST whose body the caller writes to `stdin` (docker load), sent in
    chunks, shaped like process.Stream: finish() reads the daemon's JSON messages and
    returns (status, messages, complaint), or raises ConnectionLost when no answer came.
    Raises OSError when the socket cannot be opened."""

    def __init__(self, sock_path, path):
        self._conn = _connect(sock_path, None)  # loading a big image takes long: no timeout
        self._log = _daemon_log(self._conn)  # now: a daemon that dies takes its /proc entry along
        self._conn.sendall(f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n"
                           "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        self.stdin = io.BufferedWriter(_ChunkWriter(self._conn), 1 << 16)
        self._complaint = ""

    def stderr(self):
        return self._complaint

    def finish(self):
        try:
            self.stdin.flush()
            self._conn.sendall(b"0\r\n\r\n")
        except ConnectionError:
            pass  # the daemon stopped reading: its reply says why
        try:
            reply = _Reply(self._conn.makefile("rb"))
            body = reply.read_all()
        except OSError:  # no reply, or half of one: the daemon went away meanwhile
            raise ConnectionLost(self._log) from None
        finally:
            self._conn.close()
        if reply.status != 200:
            self._complaint = error_message(body) or f"HTTP {reply.status}"
            return 1, "", self._complaint
        messages = []
        for line in body.decode(errors="replace").splitlines():
            try:
                message = loads_json(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("error"):
                self._complaint = first_line(str(message["error"]))
                return 1, "", self._complaint
            if isinstance(message, dict) and isinstance(message.get("stream"), str):
                messages.append(message["stream"])
        return 0, "".join(messages), ""

    def abort(self):
        self._conn.close()


def _connect(sock_path, timeout):
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(sock_path)
    except BaseException:
        conn.close()
        raise
    return conn


def _daemon_log(conn):
    """The file the daemon at the other end of `conn` writes its log to (its stderr),
    when that is a file whose name we may read (root, or the owner of a rootless daemon);
    else None (a journal, a terminal, another user's process)."""
    import socket
    import struct

    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        target = os.readlink(f"/proc/{struct.unpack('3i', creds)[0]}/fd/2")
    except (OSError, AttributeError, struct.error):
        return None
    return target if target.startswith("/") and not target.startswith(("/dev/", "/proc/")) else None


def _status(head):
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1][:3].isdigit():
        return None
    return int(parts[1][:3])


class _ChunkWriter(io.RawIOBase):
    """Each write one chunk of HTTP/1.1 chunked transfer encoding."""

    def __init__(self, conn):
        self._conn = conn

    def writable(self):
        return True

    def write(self, data):
        size = len(data)
        if size:
            self._conn.sendall(b"%x\r\n" % size)
            self._conn.sendall(data)
            self._conn.sendall(b"\r\n")
        return size


class _Reply:
    """An HTTP reply read from a binary socket file: status, headers, then `body`, a
    reader of the body (chunked transfer encoding decoded)."""

    def __init__(self, stream):
        self.status = _status(stream.readline(8192))
        if self.status is None:
            raise OSError("the daemon's reply is not HTTP")
        chunked = False
        for _ in range(100):
            line = stream.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        self.body = _Chunked(stream) if chunked else stream

    def read_all(self):
        """The body, up to _MAX_REPLY bytes."""
        parts, size = [], 0
        while size < _MAX_REPLY:
            data = self.body.read(_MAX_REPLY - size)
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)


class _Chunked(io.RawIOBase):
    """The body of a reply in chunked transfer encoding."""

    def __init__(self, stream):
        self._stream = stream
        self._left = 0
        self._done = False

    def readable(self):
        return True

    def readinto(self, buf):
        if self._done:
            return 0
        if not self._left:
            size_line = self._stream.readline(1024).split(b";", 1)[0].strip()
            try:
                self._left = int(size_line, 16)
            except ValueError:
                raise OSError("the daemon's reply ended early or is garbled") from None
            if not self._left:
                self._done = True
                return 0
        data = self._stream.read(min(len(buf), self._left))
        if not data:
            raise OSError("the daemon's reply ended early")
        buf[:len(data)] = data
        self._left -= len(data)
        if not self._left:
            self._stream.readline(16)  # the CRLF after a chunk
        return len(data)
