"""What docker-dir asks of a container engine: the interface every engine module implements.

An engine module defines `ENGINE`, a subclass of `Engine`, and is listed in
engine/__init__.py ENGINES. It implements:

- `name`, `program` (the executable looked up on PATH), `start_hint` (how to make
  an unreachable engine answer, for messages);
- `has_image(ref) -> bool`: on the hot path, so standard library only (hot.py);
- `stored_digest(digests) -> digest | None`: which of these digests (an image's
  config digest, its manifest digest) names an image in this engine's store;
- `tag(source, ref)`: give a stored image the private reference;
- `held_layers(image) -> int`: how many of the image's first layers the engine
  already holds and need not be sent (0 where it cannot take a short load);
- `load(image, ref, on_bytes, held)`: put a format.Image into the store under `ref`,
  sending only the layers after the first `held`;
- `inspect_id(ref) -> ID | None`: the engine's ID of an image reference (docker-dir-save
  asks it of every IMAGE first), None when it has no such image;
- `save_command(refs)`: the plumbum command whose stdout is a docker-archive tar;
  `image_size(refs)`: about how many bytes that stream carries (for the progress line);
- `run_argv(request) -> argv`: the command line that runs a `RunRequest` (execv'd);
- `unsupported(request) -> message | None`: why this engine cannot run the request as
  asked (checked before anything is loaded; the default accepts everything);
- `prune_cache(days) -> (entries, bytes, where)`: remove what the engine keeps for
  docker-dir and did not use for `days` days (only engines that keep such a cache);
- `error(stderr, doing) -> DockerDirError`: an engine complaint, classified.

`CliEngine` implements all of it for engines with a docker-like CLI (`image inspect`,
`tag`, `load`, `save`, `run`); docker and podman only add what differs. Streams and
short commands off the hot path go through plumbum (process.py).
"""
import os

from ..errors import EngineFailed, EngineUnavailable, UsageError
from .hot import find_program, quick_run

PRIVATE_REPO = "localhost/docker-dir"
# Below this, asking an engine which layers it holds (podman: ~0.5 s with 100 images)
# costs more than sending them.
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


class Engine:
    """One container engine. See the module docstring for what a subclass implements."""

    name = None
    program = None
    start_hint = None

    def __init__(self, binary=None):
        self.binary = binary or find_program(self.program)
        if not self.binary:
            raise EngineUnavailable(f"{self.program} is not installed (not found on PATH); install it, "
                                    "or choose another engine with --engine or DOCKER_DIR_ENGINE")

    def image_ref(self, config_hex):
        """The reference docker-dir runs the image of this config digest by."""
        return private_ref(config_hex)

    def has_image(self, ref):
        raise NotImplementedError

    def stored_digest(self, digests):
        raise NotImplementedError

    def tag(self, source, ref):
        raise NotImplementedError

    def held_layers(self, image):
        return 0

    def load(self, image, ref, on_bytes=None, held=0):
        raise NotImplementedError

    def inspect_id(self, ref):
        raise NotImplementedError

    def save_command(self, refs):
        raise NotImplementedError

    def run_argv(self, request):
        raise NotImplementedError

    def unsupported(self, request):
        return None

    def prune_cache(self, days):
        raise UsageError(f"{self.name} keeps no cache of its own for docker-dir; --prune-cache is for "
                         "--engine charliecloud")

    def error(self, stderr, doing):
        raise NotImplementedError


class CliEngine(Engine):
    """An engine driven through a docker-like CLI."""

    # Lower-case fragments of the CLI's stderr: the engine cannot be reached / has no such image.
    unreachable_markers = ()
    not_found_markers = ()
    # What a load of only the missing layers sends for the layers the engine holds:
    # "omit" (nothing) or "placeholder" (empty files); None: always the whole image.
    short_archive = None

    # -- presence ------------------------------------------------------------
    def _quick(self, *args, timeout=60):
        answer = quick_run([self.binary, *args], timeout)
        if answer is None:
            raise EngineUnavailable(f"{self.name} did not answer within {timeout} s; {self.start_hint}")
        return answer

    def has_image(self, ref):
        status, _, stderr = self._quick("image", "inspect", "--format", "{{.Id}}", ref)
        if status and not self.is_not_found(stderr.decode(errors="replace")):
            raise self.error(stderr.decode(errors="replace"), f"looking for {ref}")
        return status == 0

    def inspect_id(self, ref):
        """The engine's ID for `ref`, or None when it has no such image."""
        from .process import command, run

        status, stdout, stderr = run(self, command(self.binary, "image", "inspect", "--format", "{{.Id}}", ref),
                                     f"inspecting {ref}", retcode=None)
        if status == 0:
            return stdout.strip() or None
        if self.is_not_found(stderr):
            return None
        raise self.error(stderr, f"inspecting {ref}")

    def image_size(self, refs):
        """About how many bytes a save of `refs` streams (their sizes as the engine reports them)."""
        from .process import command, run

        out = run(self, command(self.binary, "image", "inspect", "--format", "{{.Size}}", *refs),
                  "asking image sizes", retcode=None)[1]
        return sum(int(word) for word in out.split() if word.isdigit()) or None

    def stored_digest(self, digests):
        """Classic stores and podman know an image by its config digest, the containerd
        store by its manifest digest: whichever the engine reports as the image's ID."""
        return next((d for d in digests if self.inspect_id(d) == d), None)

    def tag(self, source, ref):
        from .process import command, run

        run(self, command(self.binary, "tag", source, ref), f"tagging {source}")

    # -- streams ---------------------------------------------------------------
    def save(self, refs):
        """A running `save` whose stdout is the archive stream."""
        from .process import Stream

        return Stream(self, self.save_command(refs), f"saving {' '.join(refs)}", feed=False)

    def held_layers(self, image):
        """The length of the longest prefix of the image's layers whose chain the engine
        holds, from the layer lists of the images it has."""
        from ..format.names import chain_ids

        if (not self.short_archive or len(image.layers) < 2
                or image.size_of(layer.path for layer in image.layers[:-1]) < SKIP_WORTH):
            return 0
        diff_ids = image.diff_ids()
        if not diff_ids or len(diff_ids) != len(image.layers):
            return 0
        held = self.held_chains()
        chains = chain_ids(diff_ids)
        return next((n for n in range(len(chains), 0, -1) if chains[n - 1] in held), 0)

    def held_chains(self):
        """The chain IDs of every prefix of every image the engine holds."""
        from ..format.names import chain_ids

        return {chain for layers in self.image_layers() for chain in chain_ids(layers)}

    def image_layers(self):
        """The diff IDs of each image the engine holds (intermediate ones included)."""
        from .process import command, run

        ids = run(self, command(self.binary, "images", "-a", "-q", "--no-trunc"), "listing images")[1].split()
        if not ids:
            return []
        out = run(self, command(self.binary, "image", "inspect", "--format", "{{json .RootFS.Layers}}",
                                *dict.fromkeys(ids)), "listing image layers", retcode=None)[1]
        from ..fastjson import loads_json

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
        from ..errors import DockerDirError, Interrupted
        from ..format.tarstream import write_load_stream
        from .process import Stream, command

        where = image.image_dir.path
        stream = Stream(self, command(self.binary, "load"), f"loading {where}", feed=True)
        try:
            write_load_stream(image, stream.stdin, [ref], on_bytes=on_bytes, held=held,
                              placeholders=self.short_archive == "placeholder")
        except BrokenPipeError:
            pass  # the engine stopped reading: its own error follows from finish()
        except BaseException as err:
            stream.abort()
            if isinstance(err, (KeyboardInterrupt, Interrupted, DockerDirError)):
                raise
            raise EngineFailed(f"loading {where} failed: {err}") from None
        stream.finish()

    # -- run -------------------------------------------------------------------
    def user_args(self, user):
        """Flags that run the container as `user`, or as the caller when None."""
        return ["--user", user or f"{os.getuid()}:{os.getgid()}"]

    def run_argv(self, request):
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
        return argv + request.extra_args + [request.image, *request.command]

    # -- errors ----------------------------------------------------------------
    def is_not_found(self, stderr):
        text = stderr.lower()
        if any(m in text for m in self.unreachable_markers):
            return False
        return any(m in text for m in self.not_found_markers)

    def error(self, stderr, doing):
        """Turn an engine's stderr into one line, classified."""
        text = " ".join(stderr.split())
        lowered = text.lower()
        if any(m in lowered for m in self.unreachable_markers):
            return EngineUnavailable(f"{self.name} engine not reachable while {doing}: {text} ({self.start_hint})")
        return EngineFailed(f"{self.name} failed while {doing}: {text or 'no message'}")
