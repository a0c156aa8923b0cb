"""Which proxy a request goes through, read from the environment as docker, podman and
skopeo read it (Go's rules), with curl's ALL_PROXY as the last fallback:

- https:// URLs: https_proxy, HTTPS_PROXY, then all_proxy, ALL_PROXY; http:// URLs:
  http_proxy, HTTP_PROXY, then the same fallbacks. Lower case first; empty means unset.
- no_proxy / NO_PROXY: a list separated by commas or spaces of host names (which match
  themselves and their subdomains), `.domain` (subdomains only), IP addresses, CIDR ranges,
  any of those with `:PORT` (that port only), or `*` (no proxy at all).
- Loopback hosts (localhost, 127.0.0.0/8, ::1) never go through a proxy.

A proxy URL is http://[USER:PASSWORD@]HOST[:PORT] (https:// for TLS to the proxy; no
scheme means http://). Its credentials go only into the Proxy-Authorization header:
`shown` names the proxy without them, for messages.
"""
import ipaddress
import os
from urllib.parse import unquote, urlsplit

from ..errors import UsageError

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Proxy:
    """A proxy: its URL for urllib3 (no credentials), the headers that authenticate us to
    it, and how messages name it."""

    def __init__(self, url, headers, shown):
        self.url, self.headers, self.shown = url, headers, shown

    def __repr__(self):
        return f"Proxy({self.shown!r})"


def proxy_for(url, environ=None):
    """The Proxy that requests to `url` go through, or None for a direct connection."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    if _is_loopback(host) or _bypassed(host, port, _first(environ, "no_proxy", "NO_PROXY")):
        return None
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"):
        value = environ.get(name, "").strip()
        if value:
            return _parse(value, name)
    return None


def _first(environ, *names):
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return ""


def _parse(value, variable):
    """The Proxy a variable's value names; UsageError when it names none docker-dir can use."""
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme not in _DEFAULT_PORTS:
        raise UsageError(f"{variable}: {parts.scheme}:// proxies are not supported; docker-dir takes "
                         "http://[USER:PASSWORD@]HOST:PORT (or https://)")
    try:
        valid = bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is no number
        valid = False
    if not valid:
        raise UsageError(f"{variable}: not a proxy URL; docker-dir takes http://[USER:PASSWORD@]HOST:PORT")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    where = f"{host}:{parts.port or _DEFAULT_PORTS[parts.scheme]}"  # as urllib3 names it, port and all
    headers = {}
    if parts.username is not None:
        from urllib3.util import make_headers

        headers = make_headers(proxy_basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}")
    return Proxy(f"{parts.scheme}://{where}", headers, f"{parts.scheme}://{where} ({variable})")


def _bypassed(host, port, no_proxy):
    """Whether NO_PROXY sends `host`:`port` direct."""
    address = _address(host)
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.lower()
        if entry == "*":
            return True
        pattern, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in pattern:
            try:
                network = ipaddress.ip_network(pattern.strip("[]"), strict=False)
            except ValueError:
                continue
            if address is not None and address in network:
                return True
            continue
        pattern_address = _address(pattern.strip("[]"))
        if pattern_address is not None:
            if address == pattern_address:
                return True
            continue
        pattern = pattern.rstrip(".")
        if pattern.startswith("."):
            if host.endswith(pattern):
                return True
        elif pattern.startswith("*."):  # as Go and curl take it: the domain and its subdomains
            if host == pattern[2:] or host.endswith(pattern[1:]):
                return True
        elif pattern and (host == pattern or host.endswith("." + pattern)):
            return True
    return False


def _split_port(entry):
    """(host part, port or None) of a NO_PROXY entry: `host:80`, `[::1]:80`, `10.0.0.0/8`."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _address(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback(host):
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _address(host)
    return address is not None and address.is_loopback
