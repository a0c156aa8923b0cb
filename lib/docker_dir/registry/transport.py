"""HTTP for the registry client: kept-alive connections per thread, TLS as docker sets it
up, redirects that never carry the registry's Authorization to another host.

Failures without an HTTP answer raise TransportFailure, whose `kind` tells the client
whether to retry, fall back to plain HTTP, or give up; the client turns it into
docker-dir's errors, since only it knows which registry and operation were meant.
"""
import http.client
import os
import select
import socket
import ssl
import threading
from urllib.parse import urljoin, urlsplit

from .messages import cut

CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
TIMEOUT = 60  # seconds without a byte before a connection counts as dead
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
_SEND_BLOCK = 1 << 16
_DRAIN_LIMIT = 1 << 16

# TransportFailure kinds
CONNECT = "connect"  # nothing listens, or the host is unknown: retrying soon rarely helps
NO_TLS = "no-tls"  # the server answered the TLS handshake with something else (plain HTTP)
CERTIFICATE = "certificate"  # its TLS certificate was refused
TLS_REFUSED = "tls-refused"  # it refused our TLS session (an alert: e.g. it wants a client certificate)
DROPPED = "dropped"  # the connection broke or timed out once the request was under way
PROTOCOL = "protocol"  # the answer breaks HTTP, or our bounds on it (headers, redirects)


class TransportFailure(Exception):
    def __init__(self, message, kind, where):
        super().__init__(message)
        self.kind = kind
        self.where = where  # the host[:port] that failed (maybe not the registry: blob storage)


def origin(url):
    """(scheme, host, port): the unit the Authorization header is bound to."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def host_port(url):
    """host[:port] as written in the URL (certs.d directories are named so)."""
    return urlsplit(url).netloc.rpartition("@")[2]


class Response:
    """An answer being read. Read it to the end, or close it: only then can its connection
    serve the next request."""

    def __init__(self, raw, connection, url):
        self._raw = raw
        self._connection = connection
        self.url = url
        self.status = raw.status
        self.headers = raw.headers
        self._kept = b""  # a short rest read by close(), still there for an error message

    def header(self, name):
        return self.headers.get(name)

    def read(self, size):
        """Up to `size` bytes; b"" at the end. A broken transfer raises TransportFailure."""
        if self._kept:
            data, self._kept = self._kept[:size], self._kept[size:]
            return data
        try:
            return self._raw.read(size)
        except (http.client.HTTPException, OSError, ValueError) as err:
            self._connection.close()
            raise TransportFailure(f"the transfer from {host_port(self.url)} broke: {_describe(err)}",
                                   DROPPED, host_port(self.url)) from None

    def read_prefix(self, limit):
        """At most the first `limit` bytes of the body (an error text to show), then close."""
        data = b""
        while len(data) < limit:
            chunk = self.read(limit - len(data))
            if not chunk:
                break
            data += chunk
        self.close()
        return data

    def read_limited(self, limit):
        """The body if it has at most `limit` bytes, else None (and the connection is dropped)."""
        data = b""
        while len(data) <= limit:
            chunk = self.read(min(limit + 1 - len(data), _SEND_BLOCK))
            if not chunk:
                self.close()
                return data
            data += chunk
        self.close()
        return None

    def close(self):
        """Done with this answer. Its connection stays open if the rest of the body is short
        (an empty 201, an error text); a long unread rest closes it."""
        raw = self._raw
        if not raw.isclosed():
            if raw.chunked or raw.length is None or raw.length > _DRAIN_LIMIT:
                self._connection.close()
            else:
                try:
                    self._kept = raw.read()
                except (http.client.HTTPException, OSError, ValueError):
                    self._connection.close()
        raw.close()


class Transport:
    """Connections per (thread, origin), reused while the server keeps them open."""

    def __init__(self, timeout=TIMEOUT):
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections = []  # every thread's, so close() can reach them
        self._tls = {}

    def request(self, method, url, headers=None, body=None, authorization=None):
        """Send one request and return its Response, following redirects of GET and HEAD.
        `authorization` (a Secret) goes only to the origin of `url`. A `body` that is a
        stream is sent once; bytes are sent again if a kept-alive connection had closed."""
        auth_origin = origin(url)
        seen = {url}
        while True:
            sent = dict(headers or {})
            if authorization is not None and origin(url) == auth_origin:
                sent["Authorization"] = authorization
            response = self._send(method, url, sent, body)
            if response.status not in _REDIRECTS or method not in ("GET", "HEAD"):
                return response
            location = response.header("Location")
            response.close()
            if not location:
                raise TransportFailure(f"{host_port(url)} redirected (HTTP {response.status}) "
                                       "without saying where", PROTOCOL, host_port(url))
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise TransportFailure(f"{host_port(response.url)} redirected to a non-HTTP address "
                                       f"'{cut(url, 80)}'", PROTOCOL, host_port(response.url))
            if url in seen:
                raise TransportFailure(f"{host_port(url)} redirects in a loop", PROTOCOL, host_port(url))
            if len(seen) > MAX_REDIRECTS:
                raise TransportFailure(f"more than {MAX_REDIRECTS} redirects, the last to "
                                       f"{host_port(url)}", PROTOCOL, host_port(url))
            seen.add(url)

    def _send(self, method, url, headers, body):
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection, reused = self._connection(url)
        replayable = body is None or isinstance(body, bytes)
        while True:
            if connection.sock is None:
                _connect(connection, url)
            try:
                connection.putrequest(method, target, skip_accept_encoding=True)
                for name, value in headers.items():
                    connection.putheader(name, value.reveal() if hasattr(value, "reveal") else value)
                if isinstance(body, bytes) and "Content-Length" not in headers:
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
                return Response(connection.getresponse(), connection, url)
            except http.client.RemoteDisconnected as err:
                failure = err
            except ssl.SSLError as err:
                connection.close()
                if _alert(err):  # TLS 1.3 servers refuse a client certificate after the handshake
                    raise _tls_refused(err, url) from None
                failure = err
            except http.client.HTTPException as err:  # a bad status line, too long or too many headers
                connection.close()
                raise TransportFailure(f"{host_port(url)} sent an answer that breaks HTTP or exceeds "
                                       f"its limits: {_describe(err)}", PROTOCOL, host_port(url)) from None
            except OSError as err:  # reset, broken pipe, timeout
                failure = err
            except BaseException:  # the body's own error, or a signal: the request is half sent
                connection.close()
                raise
            connection.close()
            # A kept-alive connection the server closed just before we wrote: a new one will do.
            if reused and replayable and not isinstance(failure, socket.timeout):
                reused = False
                continue
            raise TransportFailure(f"connection to {host_port(url)} failed: {_describe(failure)}", DROPPED,
                                   host_port(url)) from None

    def _connection(self, url):
        """(this thread's connection to url's origin, whether it served a request before)."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        key = origin(url)
        connection = pool.get(key)
        if connection is not None and connection.sock is not None and not _stale(connection.sock):
            return connection, True
        if connection is not None:
            connection.close()
            return connection, False
        scheme, host, port = key
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=self.timeout, blocksize=_SEND_BLOCK,
                                                     context=self._tls_context(host_port(url)))
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout, blocksize=_SEND_BLOCK)
        pool[key] = connection
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _tls_context(self, where):
        """System CAs, plus docker's and podman's per-registry certs.d: `*.crt` CAs,
        `NAME.cert` + `NAME.key` a client certificate."""
        with self._lock:
            context = self._tls.get(where)
            if context is None:
                context = self._tls[where] = tls_context(where)
            return context

    def close(self):
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()


def _connect(connection, url):
    """Open the connection (and its TLS session); failures here mean nothing was sent."""
    try:
        connection.connect()
    except ssl.SSLCertVerificationError as err:
        connection.close()
        raise TransportFailure(f"the TLS certificate of {host_port(url)} was refused: "
                               f"{err.verify_message or err.reason}", CERTIFICATE, host_port(url)) from None
    except (ssl.SSLError, ConnectionResetError) as err:
        connection.close()
        if _alert(err):
            raise _tls_refused(err, url) from None
        # What a plain HTTP server makes of a TLS handshake: an HTTP answer, or a hang-up.
        raise TransportFailure(f"{host_port(url)} does not speak TLS ({_describe(err)})", NO_TLS,
                               host_port(url)) from None
    except OSError as err:  # refused, unknown host, unreachable, no answer in time
        connection.close()
        raise TransportFailure(f"cannot connect to {host_port(url)}: {_describe(err)}", CONNECT,
                               host_port(url)) from None


def _alert(err):
    """Whether the peer refused our TLS session with an alert (so it does speak TLS)."""
    return "ALERT" in (getattr(err, "reason", None) or "")


def _tls_refused(err, url):
    alert = err.reason.lower().replace("_", " ")
    return TransportFailure(f"{host_port(url)} refused the TLS session ({alert})", TLS_REFUSED, host_port(url))


def tls_context(where):
    context = ssl.create_default_context()
    for base in CERTS_DIRS:
        directory = os.path.join(base, where)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                if name.endswith(".crt"):
                    context.load_verify_locations(cafile=path)
                elif name.endswith(".cert"):
                    context.load_cert_chain(path, path[:-len(".cert")] + ".key")
            except (OSError, ssl.SSLError) as err:
                raise TransportFailure(f"cannot use {path}: {_describe(err)}; fix or remove it",
                                       CERTIFICATE, where) from None
    return context


def _stale(sock):
    """Whether an idle kept-alive socket was closed by the server (or has unexpected data)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1)
        return True  # end of stream, or bytes nobody asked for
    except (BlockingIOError, ssl.SSLWantReadError):
        return False  # only TLS housekeeping (session tickets) was waiting
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


def _describe(err):
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "no answer within the time limit"
    if isinstance(err, ssl.SSLError) and err.reason:
        return err.reason.lower().replace("_", " ")
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return cut(text, 120)
