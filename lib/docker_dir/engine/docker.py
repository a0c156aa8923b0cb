"""The docker CLI and daemon (classic and containerd image stores alike)."""
import os

try:
    # The C module under socket.py, which costs exec's hot path 5 ms (enum, selectors).
    from _socket import AF_UNIX, SOCK_STREAM, socket as _socket
except ImportError:  # not CPython
    from socket import AF_UNIX, SOCK_STREAM, socket as _socket

from ..format.layout import loads_json  # json.loads without importing json (5 ms on the hot path)
from .base import Engine

# Characters of an image reference that need no escaping in an API path.
_PLAIN_REF = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")


class DockerEngine(Engine):
    name = "docker"
    start_hint = ("start the daemon (e.g. 'sudo systemctl start docker', or run 'dockerd' as root) "
                  "or point DOCKER_HOST at a running one")
    unreachable_markers = ("cannot connect to the docker daemon", "is the docker daemon running",
                           "error during connect", "permission denied while trying to connect")
    not_found_markers = ("no such image", "reference does not exist", "not found")

    def has_image(self, ref):
        answer = _api_image(ref)
        if answer:
            return answer[0] == 200
        return super().inspect_id(ref) is not None

    def inspect_id(self, ref):
        answer = _api_image(ref)
        if answer:
            if answer[0] == 404:
                return None
            try:
                return loads_json(answer[1])["Id"]
            except (ValueError, KeyError, TypeError):
                pass  # an answer we don't understand: ask the CLI
        return super().inspect_id(ref)

    def save_command(self, refs):
        from plumbum import local

        return local[self.binary]["save", "--", *refs]


def _local_socket():
    """The daemon's unix socket when the CLI would use it without a context; else None
    (then the CLI answers, so DOCKER_HOST=tcp://, ssh:// and contexts keep working)."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host[7:] if host.startswith("unix://") else None
    if os.environ.get("DOCKER_CONTEXT"):
        return None
    config_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        with open(os.path.join(config_dir, "config.json"), "rb") as stream:
            context = loads_json(stream.read()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        context = None
    if context not in (None, "", "default"):
        return None
    return "/var/run/docker.sock"


def _api_image(ref):
    """(status, body) of the engine API's image inspect, or None where the CLI must
    answer (no local socket, an unusual reference, an unexpected reply)."""
    sock = _local_socket()
    if not sock or not _PLAIN_REF.issuperset(ref):
        return None
    answer = _api_get(sock, f"/images/{ref}/json")
    return answer if answer and answer[0] in (200, 404) else None


def _api_get(sock_path, path):
    """(status, body) of a GET on the engine API, or None if it cannot be asked.
    A bare HTTP/1.0 request over the socket (the daemon closes after answering):
    the presence check is on the hot path, and the docker CLI takes tens of
    milliseconds to answer the same question."""
    chunks = []
    conn = _socket(AF_UNIX, SOCK_STREAM)
    try:
        conn.settimeout(10)
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
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1]), body
