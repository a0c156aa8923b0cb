"""The docker CLI and daemon (classic and containerd image stores alike).

Presence, image IDs, tags and the save and load streams go over the daemon's unix
socket when the CLI would use it (docker_api.py): the CLI takes tens of milliseconds to
answer the same question, and plumbum, which runs it, costs more (direct.py). The CLI,
through plumbum, is for daemons elsewhere (tcp://, ssh://) and sockets that refuse us.
"""
import os

from ..direct import find_program
from ..errors import EngineFailed
from ..fastjson import loads_json
from . import docker_api
from .base import CliEngine

# The first Docker release that loads zstd-compressed layers (20.10 fails: "archive/tar: invalid tar header").
ZSTD_SINCE = 23
# Characters of an image reference that need no escaping in an API path.
_PLAIN_REF = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")


class DockerEngine(CliEngine):
    name = program = "docker"
    _containerd_store = None
    unreachable_markers = ("cannot connect to the docker daemon", "is the docker daemon running",
                           "error during connect", "permission denied while trying to connect")
    not_found_markers = ("no such image", "reference does not exist", "not found")

    @property
    def start_hint(self):
        """What to do about an engine that does not answer, for the situation at hand."""
        sock, rootless = _local_socket(), _rootless_socket()
        podman = " or use podman, which is installed: --engine podman" if find_program("podman") else ""
        if sock and os.path.exists(sock) and not os.access(sock, os.R_OK | os.W_OK):
            own = f", use your rootless daemon (export DOCKER_HOST=unix://{rootless})," if rootless else ""
            return f"you may not use {sock}: ask to be put in the docker group{own}{podman}"
        if rootless and sock != rootless:
            return f"a rootless Docker daemon listens at {rootless}: export DOCKER_HOST=unix://{rootless}"
        return ("start the daemon (e.g. 'sudo systemctl start docker', or run 'dockerd' as root), point "
                "DOCKER_HOST at a running one," + (podman or " or choose another engine with --engine"))

    def rootless(self):
        """A rootless daemon (rootlesskit) runs as the user, whose socket it owns; the
        rootful one's belongs to root. One stat, so the hot path can afford it."""
        sock = _local_socket()
        try:
            return sock is not None and os.stat(sock).st_uid != 0
        except OSError:
            return False

    def user_args(self, user):
        # A rootless daemon maps container root to the caller: files it writes are the
        # caller's, and --user UID:GID would be a subordinate ID (or fail above the range).
        if user is None and self.rootless():
            return []
        return super().user_args(user)

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
        try:
            super().load(image, ref, on_bytes, held)
        except docker_api.ConnectionLost as lost:
            raise EngineFailed(f"the docker daemon closed the connection while loading {image.image_dir.path} "
                               f"(it stopped or restarted); check {self._log_hint(lost.log)}") from None

    def _log_hint(self, log):
        """Where the daemon's log is, for a message: its file, else its journal."""
        if log:
            return f"its log, {log}"
        if os.path.isdir("/run/systemd/system"):
            return "'journalctl --user -u docker'" if self.rootless() else "'journalctl -u docker'"
        return "its log (where dockerd's output goes)"

    def server_version(self):
        version = self._api_json("/version")
        if isinstance(version, dict) and isinstance(version.get("Version"), str):
            return version["Version"]
        return self._run("version", "--format", "{{.Server.Version}}", doing="asking its version")[1].strip()

    @property
    def short_archive(self):
        """The classic store never opens the file of a layer it holds; the containerd
        store fails without it, and records a wrong manifest with an empty file."""
        return None if self.containerd_store() else "omit"

    def containerd_store(self):
        if self._containerd_store is None:  # asked by held_layers and by load
            self._containerd_store = self._ask_containerd_store()
        return self._containerd_store

    def _ask_containerd_store(self):
        info = self._api_json("/info")
        if info is None:
            text = self._run("info", "--format", "{{json .DriverStatus}}", doing="asking its image store")[1]
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
        return docker_api.get_json(sock, path) if sock else None

    def tag(self, source, ref):
        sock = _local_socket()
        repo, _, tag = ref.rpartition(":")
        plain = _PLAIN_REF.issuperset(source + ref)
        answer = docker_api.post(sock, f"/images/{source}/tag?repo={repo}&tag={tag}") if sock and plain else None
        if answer is None:
            return super().tag(source, ref)
        if answer[0] != 201:
            raise self.error(docker_api.error_message(answer[1]), f"tagging {source}")

    def save(self, refs):
        """Over the API when the daemon listens on a local socket: no CLI process."""
        sock = _local_socket()
        if sock and all(_PLAIN_REF.issuperset(ref) for ref in refs):
            try:
                return docker_api.Download(sock, "/images/get?" + "&".join(f"names={ref}" for ref in refs))
            except OSError:
                pass  # the CLI says what keeps the daemon from answering
        return super().save(refs)

    def load_stream(self, doing):
        """Over the API when the daemon listens on a local socket: no CLI process."""
        sock = _local_socket()
        if sock:
            try:
                return docker_api.Upload(sock, "/images/load?quiet=1")
            except OSError:
                pass
        return super().load_stream(doing)

    def image_size(self, refs):
        sizes = []
        for ref in refs:
            answer = _api_image(ref)
            try:
                sizes.append(int(loads_json(answer[1])["Size"]))
            except (TypeError, ValueError, KeyError):
                return super().image_size(refs)  # no socket, or an answer we don't understand
        return sum(sizes) or None


ENGINE = DockerEngine


def _major(version):
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


DEFAULT_SOCKET = "/var/run/docker.sock"


_found = {}


def _local_socket():
    """The daemon's unix socket as the CLI would choose it (DOCKER_HOST, DOCKER_CONTEXT,
    the current context of the client config, else the default); None when that is not
    a unix socket (then the CLI answers, so tcp:// and ssh:// keep working)."""
    key = tuple(os.environ.get(name) for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "HOME"))
    if key not in _found:
        _found[key] = _find_socket()
    return _found[key]


def _find_socket():
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host[7:] if host.startswith("unix://") else None
    config_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    context = os.environ.get("DOCKER_CONTEXT")
    if not context:
        try:
            with open(os.path.join(config_dir, "config.json"), "rb") as stream:
                context = loads_json(stream.read()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            context = None
    if context in (None, "", "default"):
        return DEFAULT_SOCKET
    host = _context_host(config_dir, context)
    return host[7:] if host and host.startswith("unix://") else None


def _context_host(config_dir, name):
    """The docker endpoint of a CLI context (`docker context create`; rootless Docker's
    setup tool makes one named "rootless"), from its metadata file."""
    import hashlib  # only docker context users pay for its import

    meta = os.path.join(config_dir, "contexts", "meta", hashlib.sha256(name.encode()).hexdigest(), "meta.json")
    try:
        with open(meta, "rb") as stream:
            host = loads_json(stream.read())["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return host if isinstance(host, str) else None


def _rootless_socket():
    """Where a rootless Docker daemon of this user listens, if one does."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(runtime, "docker.sock") if runtime else None
    return path if path and os.path.exists(path) else None


def _api_image(ref):
    """(status, body) of the engine API's image inspect, or None where the CLI must
    answer (no local socket, an unusual reference, an unexpected reply)."""
    sock = _local_socket()
    if not sock or not _PLAIN_REF.issuperset(ref):
        return None
    answer = docker_api.get(sock, f"/images/{ref}/json")
    return answer if answer and answer[0] in (200, 404) else None
