"""The docker CLI and daemon (classic and containerd image stores alike)."""
import os
import socket

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
        sock = _local_socket()
        if sock and _PLAIN_REF.issuperset(ref):
            status = _api_status(sock, f"/images/{ref}/json")
            if status in (200, 404):
                return status == 200
        return self.inspect_id(ref) is not None

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
            import json  # only where a client config exists

            context = json.load(stream).get("currentContext")
    except (OSError, ValueError, AttributeError):
        context = None
    if context not in (None, "", "default"):
        return None
    return "/var/run/docker.sock"


def _api_status(sock_path, path):
    """HTTP status of a GET on the engine API, or None if it cannot be asked.
    A bare request over the socket: the presence check is on the hot path, and
    the docker CLI takes tens of milliseconds to answer the same question."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(sock_path)
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            head = conn.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])
