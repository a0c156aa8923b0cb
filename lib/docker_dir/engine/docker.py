"""The docker CLI and daemon (classic and containerd image stores alike).

Presence and image IDs are asked over the daemon's unix socket when the CLI would
use it: the CLI takes tens of milliseconds to answer the same question.
"""
import os

from ..errors import EngineFailed
from ..fastjson import loads_json
from .base import CliEngine
from .hot import unix_get

# The first Docker release that loads zstd-compressed layers (20.10 fails: "archive/tar: invalid tar header").
ZSTD_SINCE = 23
# Characters of an image reference that need no escaping in an API path.
_PLAIN_REF = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")


class DockerEngine(CliEngine):
    name = program = "docker"
    start_hint = ("start the daemon (e.g. 'sudo systemctl start docker', or run 'dockerd' as root) "
                  "or point DOCKER_HOST at a running one")
    unreachable_markers = ("cannot connect to the docker daemon", "is the docker daemon running",
                           "error during connect", "permission denied while trying to connect")
    not_found_markers = ("no such image", "reference does not exist", "not found")

    def has_image(self, ref):
        answer = _api_image(ref)
        if answer:
            return answer[0] == 200
        return super().has_image(ref)

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

    def load(self, image, ref, on_bytes=None, held=0):
        if "zstd" in image.layer_compressions():
            version = self.server_version()
            if _major(version) < ZSTD_SINCE:
                raise EngineFailed(f"dockerd {version} cannot load the zstd-compressed layers of "
                                   f"{image.image_dir.path} (Docker >= {ZSTD_SINCE} and podman can); "
                                   "recompress them, e.g. 'skopeo copy --dest-compress-format gzip oci:DIR oci:NEWDIR'")
        super().load(image, ref, on_bytes, held)

    def server_version(self):
        version = self._api_json("/version")
        if isinstance(version, dict) and isinstance(version.get("Version"), str):
            return version["Version"]
        from .process import command, run

        return run(self, command(self.binary, "version", "--format", "{{.Server.Version}}"),
                   "asking its version")[1].strip()

    @property
    def short_archive(self):
        """The classic store never opens the file of a layer it holds; the containerd
        store fails without it, and records a wrong manifest with an empty file."""
        return None if self.containerd_store() else "omit"

    def containerd_store(self):
        info = self._api_json("/info")
        if info is None:
            from .process import command, run

            text = run(self, command(self.binary, "info", "--format", "{{json .DriverStatus}}"),
                       "asking its image store")[1]
            return "io.containerd.snapshotter" in text
        status = info.get("DriverStatus") if isinstance(info, dict) else None
        return any(isinstance(pair, list) and len(pair) == 2 and pair[0] == "driver-type"
                   and str(pair[1]).startswith("io.containerd.snapshotter") for pair in status or ())

    def image_layers(self):
        """Over the API: one request for the list, one per image (the CLI makes the same
        requests, plus two processes)."""
        listed = self._api_json("/images/json?all=1")
        if not isinstance(listed, list):
            return super().image_layers()
        layers = []
        for entry in listed:
            image_id = entry.get("Id") if isinstance(entry, dict) else None
            if not isinstance(image_id, str) or not _PLAIN_REF.issuperset(image_id):
                continue
            found = self._api_json(f"/images/{image_id}/json")
            rootfs = found.get("RootFS") if isinstance(found, dict) else None
            diff_ids = rootfs.get("Layers") if isinstance(rootfs, dict) else None
            if isinstance(diff_ids, list):
                layers.append([d for d in diff_ids if isinstance(d, str)])
        return layers

    def _api_json(self, path):
        """The decoded answer of a GET on the daemon's API, or None where only the CLI can ask."""
        sock = _local_socket()
        answer = unix_get(sock, path) if sock else None
        if not answer or answer[0] != 200:
            return None
        try:
            return loads_json(answer[1])
        except ValueError:
            return None

    def save_command(self, refs):
        from .process import command

        return command(self.binary, "save", "--", *refs)


ENGINE = DockerEngine


def _major(version):
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


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
    answer = unix_get(sock, f"/images/{ref}/json")
    return answer if answer and answer[0] in (200, 404) else None
