"""What docker-dir asks of a container engine: the contract every engine module implements.

An engine module defines `ENGINE`, a subclass of `Engine`, and is listed in
engine/__init__.py ENGINES. `Engine` declares every method the application layer
calls; the abstract ones must be implemented, the others have a default that fits an
engine without that feature. Capabilities are declared, never found by an exception:
`can_save`, the engine keeps images that docker-dir-save can export (then `inspect_id`,
`image_size` and `save` are implemented); `can_tag`, it keeps images in a store where one
may already be under another name (then `stored_digest` and `tag` are implemented).
tests/test_engine_contract.py checks every engine in ENGINES against this class.

`CliEngine` implements all of it for engines with a docker-like CLI (`image inspect`,
`tag`, `load`, `save`, `run`); docker and podman only add what differs. Short commands
and streams off the hot path go through process.py (plumbum); `has_image` is on the hot
path, so it uses direct.py. This module is imported on the hot path: process (plumbum) and
format.loadstream (tarfile) are imported by the methods that run or stream.
"""
import abc
import os

from ..direct import find_program, run_check
from ..errors import DockerDirError, EngineFailed, EngineUnavailable, Interrupted, UsageError, first_line
from ..fastjson import loads_json
from ..format.names import chain_ids

PRIVATE_REPO = "localhost/docker-dir"
# Below this, asking an engine which layers it holds (podman answers slowly with many
# images: bench/bench_inventory.py) costs more than sending them.
SKIP_WORTH = 1 << 20


def private_ref(config_hex):
    """A tag only docker-dir sets: keeps the image from being dangling (pruned) and
    names it by content, so no user tag is ever re-pointed."""
    return f"{PRIVATE_REPO}:{config_hex}"


class Mount:
    """A bind mount: host `source` at `target` in the container."""

    __slots__ = ("source", "target", "options")

    def __init__(self, source, target, options=""):
        self.source, self.target, self.options = source, target, options

    @classmethod
    def parse(cls, spec):
        """From the -v syntax SRC:DST[:OPTS]; a bare DST is an anonymous volume."""
        parts = spec.split(":", 2)
        if len(parts) == 1:
            return cls("", parts[0])
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def spec(self):
        return ":".join(p for p in (self.source, self.target, self.options) if p) if self.source else self.target


class RunRequest:
    """What to run, independent of any engine's flags.

    user: None runs as the caller (each engine knows how to make files created in a
    mounted directory belong to the caller); otherwise "UID[:GID]" or a name, as given.
    """

    __slots__ = ("image", "command", "workdir", "mounts", "env", "user", "tty", "interactive", "init",
                 "network", "entrypoint", "extra_args")

    def __init__(self, image, command, workdir, mounts=(), env=(), user=None, tty=False, interactive=True,
                 init=True, network=None, entrypoint=None, extra_args=()):
        self.image, self.command, self.workdir = image, list(command), workdir
        self.mounts, self.env, self.extra_args = list(mounts), list(env), list(extra_args)
        self.user, self.tty, self.interactive, self.init = user, tty, interactive, init
        self.network, self.entrypoint = network, entrypoint


class RunCommand:
    """The process that runs a request: `argv`, and `env`, the environment to exec it
    with (None: the caller's own)."""

    __slots__ = ("argv", "env")

    def __init__(self, argv, env=None):
        self.argv, self.env = argv, env


class Engine(abc.ABC):
    """One container engine: every method the application layer calls."""

    name = None        # as --engine and messages name it
    program = None     # the executable looked up on PATH
    start_hint = None  # how to make an unreachable engine answer, for messages
    can_save = False   # keeps images docker-dir-save can export: inspect_id, image_size, save
    can_tag = False    # may hold an image under another name, and names it anew: stored_digest, tag

    def __init__(self, binary=None):
        self.binary = binary or find_program(self.program)
        if not self.binary:
            raise EngineUnavailable(f"{self.program} is not installed (not found on PATH); install it, "
                                    "or choose another engine with --engine or DOCKER_DIR_ENGINE")

    # -- presence and loading ------------------------------------------------
    def image_ref(self, config_hex):
        """The reference docker-dir runs the image of this config digest by."""
        return private_ref(config_hex)

    @abc.abstractmethod
    def has_image(self, ref):
        """Whether the engine holds `ref`; on the hot path, so standard library only (direct.py)."""

    def stored_digest(self, digests):
        """Which of these digests (config digest, manifest digests) names an image in the store, or None."""
        raise NotImplementedError(f"{self.name} declares can_tag = False")

    def tag(self, source, ref):
        """Give the stored image `source` the private reference `ref`."""
        raise NotImplementedError(f"{self.name} declares can_tag = False")

    def held_layers(self, image):
        """How many of the image's first layers the engine holds and need not be sent (0: send all)."""
        return 0

    @abc.abstractmethod
    def load(self, image, ref, on_bytes=None, held=0):
        """Put a format.Image into the store under `ref`, sending only the layers after the first `held`."""

    # -- saving (engines with can_save) ----------------------------------------
    def inspect_id(self, ref):
        """The engine's ID of image `ref` ("sha256:<hex>"), None when it has no such image."""
        raise NotImplementedError(f"{self.name} declares can_save = False")

    def image_size(self, refs):
        """About how many bytes a save of `refs` streams (for the progress line), or None."""
        raise NotImplementedError(f"{self.name} declares can_save = False")

    def save(self, refs):
        """A started export of `refs` as a docker-archive tar: a stream shaped like process.Stream
        (stdout to read, finish() -> (status, stdout, stderr), abort(), stderr())."""
        raise NotImplementedError(f"{self.name} declares can_save = False")

    def save_failed(self, stream, doing):
        """The error of an export that ended badly (its stderr classified), or None if it said nothing."""
        stderr = stream.stderr()
        return self.error(stderr, doing) if stderr.strip() else None

    # -- running ---------------------------------------------------------------
    def check_request(self, request):
        """Raise UsageError if this engine cannot run the request as asked (before anything is loaded)."""

    def prepare_run(self, request):
        """Make what running the request needs beside the image (none for a daemon-backed engine)."""

    @abc.abstractmethod
    def run_command(self, request):
        """The RunCommand that runs a RunRequest (execv'd); builds, changes nothing."""

    def prune_cache(self, days):
        """Remove what the engine keeps for docker-dir that no exec used for `days` days: (entries, bytes, where)."""
        raise UsageError(f"{self.name} keeps no cache of its own for docker-dir; --prune-cache is for "
                         "--engine charliecloud")

    # -- errors ----------------------------------------------------------------
    @abc.abstractmethod
    def error(self, stderr, doing):
        """An engine's complaint (its stderr) while `doing` something, as a classified docker-dir error."""


class CliEngine(Engine):
    """An engine driven through a docker-like CLI."""

    can_save = True
    can_tag = True
    # Lower-case fragments of the CLI's stderr: the engine cannot be reached / has no such image.
    unreachable_markers = ()
    not_found_markers = ()
    # What a load of only the missing layers sends for the layers the engine holds:
    # "omit" (nothing) or "placeholder" (empty files); None: always the whole image.
    short_archive = None

    # -- commands --------------------------------------------------------------
    def _run(self, *args, doing, accept=(0,)):
        """(status, stdout, stderr) of a short engine command; a status not in `accept`
        raises the engine's error."""
        from .. import process

        try:
            status, stdout, stderr = process.run([self.binary, *args])
        except process.NoAnswer:
            raise EngineUnavailable(f"{self.name} did not answer while {doing}; {self.start_hint}") from None
        except OSError as err:
            raise EngineUnavailable(f"cannot start {self.binary}: {err.strerror}") from None
        if status not in accept:
            raise self.error(stderr, doing)
        return status, stdout, stderr

    def _stream(self, *args, doing, feed):
        from .. import process

        try:
            return process.Stream([self.binary, *args], feed=feed)
        except OSError as err:
            raise EngineUnavailable(f"cannot start {self.binary} while {doing}: {err.strerror}") from None

    def _finish(self, stream, doing):
        """Wait for a stream's command; its failure raises the engine's error. Returns its stdout."""
        status, stdout, stderr = stream.finish()
        if status:
            raise self.error(stderr, doing)
        return stdout

    # -- presence ------------------------------------------------------------
    def has_image(self, ref):
        answer = run_check([self.binary, "image", "inspect", "--format", "{{.Id}}", ref])
        if answer is None:
            raise EngineUnavailable(f"{self.name} did not answer while looking for {ref}; {self.start_hint}")
        status, _, stderr = answer
        if status and not self.is_not_found(stderr):
            raise self.error(stderr, f"looking for {ref}")
        return status == 0

    def inspect_id(self, ref):
        status, stdout, stderr = self._run("image", "inspect", "--format", "{{.Id}}", ref,
                                           doing=f"inspecting {ref}", accept=range(256))
        if status == 0:
            return stdout.strip() or None
        if self.is_not_found(stderr):
            return None
        raise self.error(stderr, f"inspecting {ref}")

    def image_size(self, refs):
        out = self._run("image", "inspect", "--format", "{{.Size}}", *refs, doing="asking image sizes",
                        accept=range(256))[1]
        return sum(int(word) for word in out.split() if word.isdigit()) or None

    def stored_digest(self, digests):
        """Classic stores and podman know an image by its config digest, the containerd
        store by its manifest digest: whichever the engine reports as the image's ID."""
        return next((d for d in digests if self.inspect_id(d) == d), None)

    def tag(self, source, ref):
        self._run("tag", source, ref, doing=f"tagging {source}")

    # -- streams ---------------------------------------------------------------
    def save_args(self, refs):
        """The CLI arguments of a docker-archive export of `refs`."""
        return ["save", "--", *refs]

    def save(self, refs):
        return self._stream(*self.save_args(refs), doing=f"saving {' '.join(refs)}", feed=False)

    def load_stream(self, doing):
        """A started import of a docker-archive: a stream shaped like process.Stream whose stdin takes the tar."""
        return self._stream("load", doing=doing, feed=True)

    def held_layers(self, image):
        """The length of the longest prefix of the image's layers whose chain the engine
        holds, from the layer lists of the images it has."""
        if (not self.short_archive or len(image.layers) < 2
                or image.size_of(layer.path for layer in image.layers[:-1]) < SKIP_WORTH):
            return 0
        diff_ids = image.diff_ids()
        if not diff_ids or len(diff_ids) != len(image.layers):
            return 0
        held = {chain for layers in self.image_layers() for chain in chain_ids(layers)}
        chains = chain_ids(diff_ids)
        return next((n for n in range(len(chains), 0, -1) if chains[n - 1] in held), 0)

    def image_layers(self):
        """The diff IDs of each image the engine holds (intermediate ones included)."""
        ids = self._run("images", "-a", "-q", "--no-trunc", doing="listing images")[1].split()
        if not ids:
            return []
        out = self._run("image", "inspect", "--format", "{{json .RootFS.Layers}}", *dict.fromkeys(ids),
                        doing="listing image layers", accept=range(256))[1]
        layers = []
        for line in out.splitlines():
            try:
                found = loads_json(line)
            except ValueError:
                continue  # an image removed meanwhile: its line is missing or an error
            if isinstance(found, list):
                layers.append([d for d in found if isinstance(d, str)])
        return layers

    def load(self, image, ref, on_bytes=None, held=0):
        """Stream the image into `load` as a docker-archive naming only `ref`."""
        from ..format.loadstream import write_load_stream

        doing = f"loading {image.image_dir.path}"
        stream = self.load_stream(doing)
        try:
            write_load_stream(image, stream.stdin, [ref], on_bytes=on_bytes, held=held,
                              placeholders=self.short_archive == "placeholder")
        except ConnectionError:
            pass  # the engine stopped reading (a broken pipe, a reset socket): _finish() says why
        except BaseException as err:
            stream.abort()
            if isinstance(err, (KeyboardInterrupt, Interrupted, DockerDirError)):
                raise
            raise EngineFailed(f"{doing} failed: {first_line(str(err))}") from None
        self._finish(stream, doing)

    # -- run -------------------------------------------------------------------
    def user_args(self, user):
        """Flags that run the container as `user`, or as the caller when None."""
        return ["--user", user or f"{os.getuid()}:{os.getgid()}"]

    def run_command(self, request):
        # Never pull: if the image went away since the check (another process removed it),
        # the engine would ask a registry at localhost for our private name and might run
        # whatever it serves there; "No such image" is the truthful answer.
        argv = [self.binary, "run", "--rm", "--pull", "never"]
        argv += ["--interactive"] * request.interactive + ["--tty"] * request.tty + ["--init"] * request.init
        argv += self.user_args(request.user)
        for mount in request.mounts:
            argv += ["--volume", mount.spec()]
        argv += ["--workdir", request.workdir]
        for env in request.env:
            argv += ["--env", env]
        if request.network:
            argv += ["--network", request.network]
        if request.entrypoint is not None:
            argv += ["--entrypoint", request.entrypoint]
        return RunCommand(argv + request.extra_args + [request.image, *request.command])

    # -- errors ----------------------------------------------------------------
    def is_not_found(self, stderr):
        text = stderr.lower()
        if any(m in text for m in self.unreachable_markers):
            return False
        return any(m in text for m in self.not_found_markers)

    def error(self, stderr, doing):
        """One line, classified: unreachable (69) or refused (70)."""
        text = first_line(stderr)
        if any(m in stderr.lower() for m in self.unreachable_markers):
            return EngineUnavailable(f"{self.name} engine not reachable while {doing}: {text} ({self.start_hint})")
        return EngineFailed(f"{self.name} failed while {doing}: {text or 'no message'}")
