"""HTTP for the registry client, on urllib3: one pool of kept-alive connections shared by
every thread of a Transport, proxies as the environment names them (proxy.py), TLS as
docker sets it up (the system's CAs plus /etc/docker/certs.d), and redirects followed
here, so that the registry's Authorization never goes to another host.

urllib3 is asked for exactly one exchange per request (no retries, no redirects, no
content decoding, the body left unread): retries are the client's (retry.py), and the
client streams, resumes and bounds every body itself.

Failures without an HTTP answer raise TransportFailure, whose `kind` tells what happened
and `retryable` whether trying again may help; the client turns it into docker-dir's
errors, since only it knows which registry and operation were meant. A failure while
connecting is told apart from one once the request is under way by the connection
classes below: nothing was sent to the server then.
"""
import http.client
import os
import socket
import ssl
import threading
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (HTTPError, NameResolutionError, NewConnectionError, ProtocolError, ReadTimeoutError,
                                SSLError)

from .. import __version__
from .messages import cut
from .proxy import proxy_for

CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
TIMEOUT = 60  # seconds without a byte before a connection counts as dead
CONNECT_TIMEOUT = 10  # seconds to set up a connection (and its proxy tunnel, and TLS)
MAX_REDIRECTS = 10
POOL_SIZE = 8  # connections kept per host: the transfers a pull or push runs at once, and then some
_SEND_BLOCK = 1 << 18
_DRAIN_LIMIT = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)
_USER_AGENT = f"docker-dir/{__version__}"

# TransportFailure kinds
CONNECT = "connect"  # nothing listens, the host is unknown, or it did not answer in time
PROXY = "proxy"  # the proxy cannot be reached, or it refused to take us to the host
NO_TLS = "no-tls"  # the server answered the TLS handshake with something else (plain HTTP)
CERTIFICATE = "certificate"  # its TLS certificate was refused
TLS_REFUSED = "tls-refused"  # it refused our TLS session (an alert: e.g. it wants a client certificate)
DROPPED = "dropped"  # the connection broke or timed out once the request was under way
PROTOCOL = "protocol"  # the answer breaks HTTP, or our bounds on it (headers, redirects)


class TransportFailure(Exception):
    def __init__(self, message, kind, where, retryable=False):
        super().__init__(message)
        self.kind = kind
        self.where = where  # the host[:port] that failed (maybe not the registry: blob storage, the proxy)
        self.retryable = retryable


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

    def __init__(self, raw, url):
        self._raw = raw
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
        except (HTTPError, OSError, http.client.HTTPException, ValueError) as err:
            self._raw.close()
            raise TransportFailure(f"the transfer from {host_port(self.url)} broke: {_describe(err)}",
                                   DROPPED, host_port(self.url), retryable=True) from None

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
        """Done with this answer. Its connection goes back to the pool if the rest of the body
        is short (an empty 201, an error text); a long or unknown rest closes it."""
        raw = self._raw
        if not raw.isclosed():
            left = raw.length_remaining
            if left is None or left > _DRAIN_LIMIT:
                raw.close()
            else:
                try:
                    self._kept = raw.read()
                except (HTTPError, OSError, http.client.HTTPException, ValueError):
                    raw.close()
        raw.release_conn()


class Transport:
    """Connections shared by every thread, per origin (and per proxy and TLS setup)."""

    def __init__(self, timeout=TIMEOUT, environ=None):
        self.timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout)
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._managers = {}  # (proxy URL, certs.d host or None) -> PoolManager
        self._tls = {}  # host[:port] -> (its SSLContext, whether certs.d had files for it)

    def request(self, method, url, headers=None, body=None, authorization=None, chunked=False):
        """Send one request and return its Response, following redirects of GET and HEAD.
        `authorization` (a Secret) goes only to the origin of `url`. `body` is None, bytes,
        or a readable or iterable stream, sent once; `chunked` sends one of unknown length."""
        auth_origin = origin(url)
        seen = {url}
        while True:
            sent = dict(headers or {})
            if authorization is not None and origin(url) == auth_origin:
                sent["Authorization"] = authorization
            response = self._send(method, url, sent, body, chunked)
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

    def _send(self, method, url, headers, body, chunked):
        sent = {"User-Agent": _USER_AGENT}
        sent.update((name, value.reveal() if hasattr(value, "reveal") else value) for name, value in headers.items())
        manager, proxy = self._manager(url)
        try:
            raw = manager.urlopen(method, url, body=body, headers=sent, chunked=chunked, retries=False,
                                  redirect=False, preload_content=False, decode_content=False,
                                  timeout=self.timeout)
        except TransportFailure as failure:
            if failure.kind != PROXY:
                failure.where = host_port(url)  # as the URL writes it: certs.d is named so
            else:  # the connection knows the proxy's URL; say which variable named it
                failure.args = (str(failure).replace(f"the proxy {proxy.url}", f"the proxy {proxy.shown}", 1),)
            raise
        except (HTTPError, OSError, http.client.HTTPException, ValueError) as err:
            raise _request_failure(err, url, proxy) from None
        return Response(raw, url)

    def _manager(self, url):
        """(the PoolManager for `url`'s proxy and TLS setup, the Proxy or None)."""
        proxy = proxy_for(url, self._environ)
        where = host_port(url)
        context, own = self._tls_context(where) if url.startswith("https:") else (None, False)
        key = (proxy.url if proxy else None, where if own else None)
        with self._lock:
            manager = self._managers.get(key)
            if manager is None:
                options = dict(num_pools=16, maxsize=POOL_SIZE, block=False, ssl_context=context,
                               blocksize=_SEND_BLOCK)
                if proxy:
                    manager = urllib3.ProxyManager(proxy.url, proxy_headers=proxy.headers, **options)
                else:
                    manager = urllib3.PoolManager(**options)
                manager.pool_classes_by_scheme = _POOLS
                self._managers[key] = manager
        return manager, proxy

    def _tls_context(self, where):
        """System CAs, plus docker's and podman's per-registry certs.d: `*.crt` CAs,
        `NAME.cert` + `NAME.key` a client certificate. (context, whether certs.d had any)."""
        with self._lock:
            found = self._tls.get(where)
            if found is None:
                found = self._tls[where] = tls_context(where)
            return found

    def close(self):
        with self._lock:
            for manager in self._managers.values():
                manager.clear()
            self._managers.clear()


def tls_context(where):
    """(SSLContext for host[:port] `where`, whether certs.d named files for it)."""
    context = _system_context()
    own = False
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
                    own = True
                elif name.endswith(".cert"):
                    context.load_cert_chain(path, path[:-len(".cert")] + ".key")
                    own = True
            except (OSError, ssl.SSLError) as err:
                raise TransportFailure(f"cannot use {path}: {_describe(err)}; fix or remove it",
                                       CERTIFICATE, where) from None
    return context, own


def _system_context():
    """ssl's default context, trusting the system's CAs. Where they are also a hashed
    directory (c_rehash's links, as Debian and Ubuntu keep /etc/ssl/certs), OpenSSL looks a
    CA up there when a certificate needs it: loading the whole bundle took 60-90 ms of every
    registry command (bench/README.md). $SSL_CERT_FILE and $SSL_CERT_DIR are honoured."""
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env) or not _hashed(paths.capath):
        return ssl.create_default_context()
    return ssl.create_default_context(capath=paths.capath)


def _hashed(directory):
    """Whether `directory` holds CAs by their subject hash (NNNNNNNN.0), as OpenSSL looks them up."""
    try:
        with os.scandir(directory) as entries:
            return any(len(entry.name) == 10 and entry.name[8:] == ".0" for entry in entries)
    except (OSError, TypeError):  # none, or no such directory
        return False


class _Connecting:
    """A connection whose failures while connecting (to the proxy, through its tunnel,
    the TLS handshake) raise TransportFailure at once, named for what failed."""

    # Ours: http.client's _tunnel closes the connection on failure, which resets urllib3's state.
    proxy_reached = tunnel_open = False
    tunnel_target = None

    def connect(self):
        try:
            super().connect()
        except (HTTPError, OSError, http.client.HTTPException, ValueError) as err:
            raise _connect_failure(err, self) from None

    def _tunnel(self):
        self.proxy_reached = True
        self.tunnel_target = f"{self._tunnel_host}:{self._tunnel_port}"
        super()._tunnel()
        self.tunnel_open = True


class _HTTPConnection(_Connecting, HTTPConnection):
    pass


class _HTTPSConnection(_Connecting, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


def _connect_failure(err, connection):
    """The TransportFailure of a connection that could not be set up."""
    target = connection.tunnel_target or f"{connection.host}:{connection.port}"
    target = target[:-len(":443")] if target.endswith(":443") else target
    timeout = isinstance(_cause(err), (socket.timeout, TimeoutError, urllib3.exceptions.TimeoutError))
    if connection.proxy is not None and not connection.tunnel_open:
        proxy = f"the proxy {connection.proxy.scheme}://{connection.proxy.netloc}"
        if not connection.proxy_reached:
            return TransportFailure(f"cannot connect to {proxy}: {_describe(err)}", PROXY, connection.proxy.netloc,
                                    retryable=not (timeout or isinstance(err, NameResolutionError)))
        refused = _tunnel_refusal(err)
        if refused:
            status, text = refused
            if status == 407:
                return TransportFailure(f"{proxy} asks for credentials (HTTP 407 {text}) to reach {target}", PROXY,
                                        connection.proxy.netloc)
            if status >= 500:
                return TransportFailure(f"{proxy} could not reach {target} (HTTP {status} {text})", PROXY,
                                        connection.proxy.netloc, retryable=True)
            return TransportFailure(f"{proxy} refused to connect to {target} (HTTP {status} {text})", PROXY,
                                    connection.proxy.netloc)
        return TransportFailure(f"{proxy} did not open a tunnel to {target}: {_describe(err)}", PROXY,
                                connection.proxy.netloc, retryable=not timeout)
    cause = _cause(err)
    if isinstance(err, NameResolutionError):
        return TransportFailure(f"cannot connect to {target}: {_describe(err)}", CONNECT, target)
    if isinstance(err, NewConnectionError):  # refused, unreachable
        return TransportFailure(f"cannot connect to {target}: {_describe(err)}", CONNECT, target, retryable=True)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TransportFailure(f"the TLS certificate of {target} was refused: "
                                f"{cause.verify_message or cause.reason}", CERTIFICATE, target)
    if _alert(cause):  # TLS 1.3 servers refuse a client certificate after the handshake
        return _tls_refused(cause, target)
    if isinstance(cause, (ssl.SSLError, ConnectionResetError, ConnectionAbortedError)):
        # What a plain HTTP server makes of a TLS handshake: an HTTP answer, or a hang-up.
        return TransportFailure(f"{target} does not speak TLS ({_describe(cause)})", NO_TLS, target)
    # No answer in time is not tried again: a host that drops packets (a firewall) would
    # make every try wait CONNECT_TIMEOUT.
    return TransportFailure(f"cannot connect to {target}: {_describe(cause)}", CONNECT, target,
                            retryable=isinstance(cause, OSError) and not timeout)


def _request_failure(err, url, proxy):
    """The TransportFailure of a request that broke once its connection was up."""
    where = host_port(url)
    cause = _cause(err)
    if isinstance(cause, ssl.SSLError) and _alert(cause):
        return _tls_refused(cause, where)
    if isinstance(cause, http.client.HTTPException) and not isinstance(cause, http.client.RemoteDisconnected):
        # a bad status line, too long or too many headers
        return TransportFailure(f"{where} sent an answer that breaks HTTP or exceeds its limits: "
                                f"{_describe(cause)}", PROTOCOL, where)
    if isinstance(err, (ProtocolError, ReadTimeoutError, SSLError, OSError)):
        through = f" (through {proxy.shown})" if proxy else ""
        return TransportFailure(f"connection to {where}{through} failed: {_describe(cause)}", DROPPED, where,
                                retryable=True)
    return TransportFailure(f"{where}: {_describe(err)}", PROTOCOL, where)


def _cause(err):
    """The exception under urllib3's wrappers (ProtocolError('Connection aborted.', e), SSLError(e))."""
    seen = set()
    while isinstance(err, HTTPError) and id(err) not in seen:
        seen.add(id(err))
        inner = next((arg for arg in err.args if isinstance(arg, BaseException)), None) or err.__cause__ \
            or err.__context__
        if inner is None:
            break
        err = inner
    return err


def _tunnel_refusal(err):
    """(status, reason) of a proxy's refusal of CONNECT, or None."""
    text = str(_cause(err))
    marker = "Tunnel connection failed: "
    if marker not in text:
        return None
    status, _, reason = text.split(marker, 1)[1].partition(" ")
    return (int(status), cut(reason, 60)) if status.isdigit() else None


def _alert(err):
    """Whether the peer refused our TLS session with an alert (so it does speak TLS)."""
    return "ALERT" in (getattr(err, "reason", None) or "")


def _tls_refused(err, where):
    alert = err.reason.lower().replace("_", " ")
    return TransportFailure(f"{where} refused the TLS session ({alert})", TLS_REFUSED, where)


def _describe(err):
    err = _cause(err)
    if isinstance(err, (socket.timeout, TimeoutError, urllib3.exceptions.TimeoutError)):
        return "no answer within the time limit"
    if isinstance(err, socket.gaierror):
        return err.strerror or str(err)
    if isinstance(err, ssl.SSLError) and err.reason:
        return err.reason.lower().replace("_", " ")
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return cut(text, 120)
