"""A real forward proxy for tests: Debian's squid (5.7), run by the tests on a free loopback
port, with names of its own that resolve nowhere else.

    from proxy import SquidProxy, TEST_NAMES, proxy_env, refused_proxy, silent_proxy

SquidProxy(hosts=TEST_NAMES, users=None, refuse=False, label=None)
    `squid -N -f CONF` (root starts it; it runs as user `proxy`, which owns its temp dir),
    `http_port 127.0.0.1:PORT`, `cache deny all`, its pid file, cache.log and access.log in
    the temp dir, `shutdown_lifetime 0 seconds`, `strip_query_terms off` (whole URLs logged).
    - hosts: names squid's own `hosts_file` maps to 127.0.0.1. Nothing else knows them
      (`getent hosts reg.proxytest` fails): a client that bypasses the proxy cannot resolve
      them. TEST_NAMES = (REGISTRY_NAME "reg.proxytest", AUTH_NAME "auth.proxytest",
      STORAGE_NAME "storage.proxytest"): the names RegistryServer(names=..., realm_name=...)
      and BlobProxy(name=..., storage_name=...) of tests/registry.py put in certificates.
    - users: {"name": "password"} -> `proxy_auth REQUIRED` with basic_ncsa_auth and a bcrypt
      htpasswd file: no or wrong Proxy-Authorization gets 407 (for CONNECT too).
    - refuse=True: `http_access deny all`: every request, CONNECT included, gets 403.
    - start(timeout=30) -> self; RuntimeError (never a skip) when squid or its auth helper is
      missing, or squid does not start: the message carries cache.log's last lines.
    - stop(): SIGTERM by PID (SIGKILL after 15 s), waits for it (squid's own shutdown takes
      about 2 s), removes the temp dir; safe twice. Also a context manager.
    - port, host "127.0.0.1:PORT", url "http://127.0.0.1:PORT", pid, dir, cache_log,
      access_log; credentials (the first user's (name, password), or None);
      url_with(user, password): "http://USER:PASSWORD@127.0.0.1:PORT", both percent-encoded;
      authenticated_url: url_with(*credentials).
    - env(url=None, no_proxy=None, base=None) -> proxy_env(base, HTTPS_PROXY=url or self.url
      [, NO_PROXY=no_proxy]): the environment for a client under test.
    - requests(settle=10) -> [ProxiedRequest] from access.log, oldest first, after forget().
      Squid logs a request when it ends (a CONNECT tunnel when it closes): requests() first
      waits, up to `settle` s, until no client connection to squid is open and the log
      stops growing. A client that keeps connections open past that is not in the list yet.
    - forget(): requests() from now on lists only later requests.
    - reached() -> {"host:port"} of the servers squid connected to (CONNECT tunnels and
      plain requests that got a server's answer).

ProxiedRequest(time, client, method, url, host, port, status, user, result, server)
    method "CONNECT"|"GET"|...; url as squid logged it ("reg.proxytest:PORT" for CONNECT,
    the whole URL otherwise); host, port parsed from it; status the HTTP status squid sent
    the client (200 for an opened tunnel, 403 refused, 407 proxy auth, 502/503 when it
    could not resolve or reach the server); user the proxy user ("-" -> None; also shown on
    a 407 for a wrong password); result squid's code ("TCP_TUNNEL/HIER_DIRECT",
    "TCP_DENIED/HIER_NONE", ...); server "IP:PORT" it connected to, or None.

proxy_env(base=None, **variables) -> base (default os.environ) with every proxy variable
    (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY, upper and lower case) removed, then
    `variables` set as given (names as spelled: https_proxy=..., NO_PROXY=...).

refused_proxy() -> context manager yielding "http://127.0.0.1:PORT" of a port held bound
    with nothing listening: every connection is refused at once (a proxy that is down).
silent_proxy() -> context manager yielding the URL of a socket that listens and never
    accepts nor answers (the kernel completes the TCP handshake; then nothing): a client
    without its own timeout waits forever.

Measured here (squid 5.7, skopeo 1.9.3): skopeo goes through the proxy with HTTPS_PROXY
or https_proxy (CONNECT NAME:PORT for the registry and for the token realm), authenticates
to it from user:password in the proxy URL, and with NO_PROXY=reg.proxytest connects
directly and fails: "lookup reg.proxytest ... no such host". A plain-HTTP registry goes
through HTTP_PROXY (squid logs each GET's whole URL); ALL_PROXY means nothing to Go
clients (skopeo goes direct), while Python's urllib.request.getproxies() reads it.
"""
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engines import log_tail
from procs import terminate

REGISTRY_NAME = "reg.proxytest"
AUTH_NAME = "auth.proxytest"
STORAGE_NAME = "storage.proxytest"
TEST_NAMES = (REGISTRY_NAME, AUTH_NAME, STORAGE_NAME)
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"  # Debian's squid package puts its helpers there
SQUID_USER = "proxy"  # Debian's squid drops root for this user (cache_effective_user)
LOG_FORMAT = "%ts.%03tu %>a %rm %ru %>Hs %un %Ss/%Sh %<a:%<p"
# Client sockets squid still holds open (/proc/net/tcp states): ESTABLISHED, CLOSE_WAIT.
OPEN_STATES = {"01", "08"}


@dataclass
class ProxiedRequest:
    time: float
    client: str
    method: str
    url: str
    host: str
    port: Optional[int]
    status: int
    user: Optional[str]
    result: str
    server: Optional[str]


def _parse(line):
    stamp, client, method, url, status, user, result, server = line.split(" ")
    if method == "CONNECT":
        host, _, port = url.rpartition(":")
    else:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return ProxiedRequest(float(stamp), client, method, url, host, int(port) if port else None,
                          int(status) if status.isdigit() else 0,
                          None if user == "-" else urllib.parse.unquote(user), result,
                          None if server.startswith("-") else server)


def proxy_env(base=None, **variables):
    env = dict(os.environ if base is None else base)
    for name in PROXY_VARIABLES:
        env.pop(name, None)
        env.pop(name.lower(), None)
    env.update(variables)
    return env


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SquidProxy:
    """squid on loopback; see the module docstring."""

    def __init__(self, hosts=TEST_NAMES, users=None, refuse=False, label=None):
        self.hosts = tuple(hosts)
        self.users = dict(users or {})
        self.refuse = refuse
        self.label = label or "squid" + (" (auth)" if self.users else "") + (" (refusing)" if refuse else "")
        self.dir = None
        self.process = None
        self.port = None
        self._forgotten = 0

    # -- where it is
    host = property(lambda self: f"127.0.0.1:{self.port}")
    url = property(lambda self: f"http://{self.host}")
    pid = property(lambda self: self.process.pid if self.process else None)
    cache_log = property(lambda self: self.dir / "cache.log")
    access_log = property(lambda self: self.dir / "access.log")

    @property
    def credentials(self):
        return next(iter(self.users.items()), None)

    def url_with(self, user, password):
        quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
        return f"http://{quote(user)}:{quote(password)}@{self.host}"

    @property
    def authenticated_url(self):
        if not self.users:
            raise ValueError(f"{self.label} has no users")
        return self.url_with(*self.credentials)

    def env(self, url=None, no_proxy=None, base=None):
        variables = {"HTTPS_PROXY": url or self.url}
        if no_proxy is not None:
            variables["NO_PROXY"] = no_proxy
        return proxy_env(base, **variables)

    # -- life
    def start(self, timeout=30):
        squid = shutil.which("squid") or shutil.which("squid", path="/usr/sbin")
        if not squid:
            raise RuntimeError(f"{self.label}: squid is not installed (Debian package squid; tests/provision.sh "
                               "installs it)")
        if self.users and not os.access(NCSA_AUTH, os.X_OK):
            raise RuntimeError(f"{self.label}: {NCSA_AUTH} is missing (Debian package squid)")
        self.dir = Path(tempfile.mkdtemp(prefix="squid-"))
        try:
            self._prepare()
            for _attempt in range(5):
                self.port = _free_port()
                self._write_config()
                if self._launch(squid, timeout):
                    return self
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"{self.label}: no free port found in 5 attempts")

    def _prepare(self):
        (self.dir / "hosts").write_text("".join(f"127.0.0.1 {name}\n" for name in self.hosts))
        if self.users:
            lines = [subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True,
                                    check=True).stdout.strip() for user, password in self.users.items()]
            (self.dir / "passwd").write_text("\n".join(lines) + "\n")

    def _write_config(self):
        directory = self.dir
        if self.refuse:
            access = ["http_access deny all"]
        elif self.users:
            access = [f"auth_param basic program {NCSA_AUTH} {directory / 'passwd'}",
                      "auth_param basic realm docker-dir test proxy",
                      "acl authenticated proxy_auth REQUIRED",
                      "http_access allow localhost authenticated", "http_access deny all"]
        else:
            access = ["http_access allow localhost", "http_access deny all"]
        (directory / "squid.conf").write_text("\n".join([
            f"http_port 127.0.0.1:{self.port}",
            "visible_hostname docker-dir-test-proxy",
            f"pid_filename {directory / 'squid.pid'}",
            f"cache_log {directory / 'cache.log'}",
            f"logformat dockerdir {LOG_FORMAT}",
            f"access_log stdio:{directory / 'access.log'} dockerdir",
            "strip_query_terms off",
            "cache deny all",
            "cache_mem 8 MB",
            f"coredump_dir {directory}",
            f"hosts_file {directory / 'hosts'}",
            "netdb_filename none",
            "pinger_enable off",
            "shutdown_lifetime 0 seconds",
            *access, ""]))
        if os.geteuid() == 0:  # squid drops root: its files must be the proxy user's
            account = pwd.getpwnam(SQUID_USER)
            for path in [directory, *directory.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)

    def _launch(self, squid, timeout):
        """Start it and wait until it accepts connections; False when its port was taken meanwhile."""
        for stale in ("cache.log", "access.log"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        with open(self.dir / "stderr", "wb") as stderr:
            self.process = subprocess.Popen([squid, "-N", "-f", str(self.dir / "squid.conf")],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                log = self.cache_log.read_text(errors="replace") if self.cache_log.exists() else ""
                if "Address already in use" in log:
                    return False
                stderr = "\n".join((self.dir / "stderr").read_text(errors="replace").splitlines()[-10:])
                raise RuntimeError(f"{self.label}: squid exited:\n{log_tail(self.cache_log, lines=15)}\n{stderr}")
            # its own announcement, not a probe connection (which the access log would show)
            if self.cache_log.exists() and f"local=127.0.0.1:{self.port} " in self.cache_log.read_text(
                    errors="replace"):
                return True
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: squid did not accept connections within {timeout} s:\n"
                                   f"{log_tail(self.cache_log, lines=15)}")
            time.sleep(0.05)

    def stop(self):
        if self.process is not None:
            terminate(self.process, grace=15)
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start() if self.dir is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- what went through it
    def _open_client_connections(self):
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == self.port and fields[3] in OPEN_STATES:
                        count += 1
        return count

    def _entries(self):
        try:
            return [line for line in self.access_log.read_text(errors="replace").splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def requests(self, settle=10):
        deadline = time.monotonic() + settle
        previous = None
        while time.monotonic() < deadline:
            size = self.access_log.stat().st_size if self.access_log.exists() else 0
            if not self._open_client_connections() and size == previous:
                break
            previous = size
            time.sleep(0.1)
        return [_parse(line) for line in self._entries()[self._forgotten:]]

    def forget(self):
        self._forgotten = len(self._entries())

    def reached(self, settle=10):
        return {f"{r.host}:{r.port}" for r in self.requests(settle) if r.server}


def _held_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def refused_proxy():
    with _held_port() as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def silent_proxy():
    with _held_port() as sock:
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
