"""Charliecloud (ch-run 0.31): no daemon, no image store; images unpacked into a
node-local cache (charliecloud_cache.py) and run unprivileged, as the caller.

"Loading" an image is unpacking its layers (format/unpack.py) into a cache entry and
preparing the tree for ch-run (charliecloud_tree.py). Running it: prepare_run() adds the
mount points the binds and the workdir need and marks the entry used; run_command()
builds the ch-run argv, changing nothing. ch-run execs the command in its own process
(no PID namespace, no init): status and signals pass through, stdin, stdout and stderr
are the caller's.

The hot path (has_image, prepare_run, run_command) is standard library only (direct.py
says why); format.unpack and pwd are imported by the functions that need them.
"""
import os

from ..direct import find_program
from ..errors import BadImageDir, CantWrite, EngineFailed, EngineUnavailable, UsageError, first_line
from ..fs import OPEN_DIR, open_regular
from . import charliecloud_cache as cache_entries
from .base import Engine, RunCommand
from .charliecloud_tree import MOUNTED_BY_CH_RUN, below, container_path, make_path, prepare_tree, run_settings

INSTALL_HINT = ("install Charliecloud >= 0.31 (Debian, Ubuntu: apt-get install charliecloud-runtime), "
                "or choose another engine with --engine or DOCKER_DIR_ENGINE")


class CharliecloudEngine(Engine):
    name = "charliecloud"
    program = "ch-run"
    start_hint = "ch-run needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0)"
    can_save = False  # no store to export from: it runs image directories
    can_tag = False  # nor one an image could already be in under another name

    def __init__(self, binary=None):
        binary = binary or find_program(self.program)
        if not binary:
            raise EngineUnavailable(f"ch-run is not installed (not found on PATH): {INSTALL_HINT}")
        super().__init__(binary)
        self._cache = None

    def cache(self):
        if self._cache is None:
            self._cache = cache_entries.cache_dir()
        return self._cache

    def image_ref(self, config_hex):
        return config_hex

    def has_image(self, ref):
        return cache_entries.has_entry(self.cache(), ref)

    # -- unpacking -------------------------------------------------------------
    def load(self, image, ref, on_bytes=None, held=0):
        from ..format.unpack import apply_layers, remove_tree

        def fill(entry):
            root = os.path.join(entry, cache_entries.ROOT)
            os.mkdir(root, 0o755)
            apply_layers(_layer_streams(image), root, on_bytes)
            config = image.config_json()
            settings = config.get("config") if isinstance(config, dict) else None
            prepare_tree(root, settings.get("Env") if isinstance(settings, dict) else None, remove_tree)
            cache_entries.write_run_file(entry, run_settings(config))

        cache = self.cache()
        try:
            cache_entries.build_entry(cache, ref, fill, remove_tree)
        except OSError as err:
            raise CantWrite(f"{cache}: cannot unpack {image.image_dir.path} there ({err.strerror}); free "
                            f"space, or set {cache_entries.CACHE_ENV} to another directory") from None

    def prune_cache(self, days):
        from ..format.unpack import remove_tree

        cache = self.cache()
        return (*cache_entries.prune(cache, days, remove_tree), cache)

    # -- running ---------------------------------------------------------------
    def check_request(self, request):
        if request.network not in (None, "host"):
            raise UsageError(f"--network {request.network}: charliecloud has no network isolation, commands use "
                             "the host's network; leave --network out (or use --network host)")
        if request.user is not None and not all(p.isdigit() for p in request.user.split(":", 1)):
            raise UsageError(f"--user {request.user}: charliecloud takes a numeric UID[:GID]")
        for env in request.env:
            if env.startswith("="):
                raise UsageError(f"-e {env}: no variable name")
        named = {os.path.abspath(arg) for arg in request.command}
        for mount in request.mounts:
            _check_mount(mount, named)
        for arg in request.extra_args:
            if arg in ("-w", "--write"):
                raise UsageError(f"--engine-arg={arg}: would make the unpacked image writable, and every later "
                                 "exec reuses it")

    def prepare_run(self, request):
        """Mark the entry used; make the binds' destinations and the workdir in the tree,
        where ch-run needs them (dockerd makes a missing workdir too)."""
        root, run, used = cache_entries.read_entry(self.cache(), request.image)
        cache_entries.mark_used(self.cache(), request.image, used)
        root_fd = os.open(root, OPEN_DIR)
        try:
            for source, target, in_tree in _bind_plan(request.mounts):
                if in_tree:
                    make_path(root_fd, target, directory=os.path.isdir(source))
            workdir = _workdir(request, run)
            if _workdir_in_tree(workdir, request.mounts):
                make_path(root_fd, workdir)
        finally:
            os.close(root_fd)

    def run_command(self, request):
        root, run, _ = cache_entries.read_entry(self.cache(), request.image)
        argv = [self.binary, "--unset-env=*", "--env-no-expand"]
        if request.tty and os.environ.get("TERM"):
            argv.append(_set_env("TERM", os.environ["TERM"]))  # dockerd sets one for a terminal too
        argv.append("--set-env")  # the image's Env, from root/ch/environment
        argv += [_set_env(*line.split("=", 1)) for line in run.get("Env") or ()]
        for env in request.env:
            name, value = env.split("=", 1) if "=" in env else (env, os.environ.get(env))
            # NAME alone takes the caller's value, and unsets the variable where the caller has none.
            argv.append(_set_env(name, value) if value is not None else f"--unset-env={_glob_escape(name)}")
        # Private and thrown away, as a container's /tmp is (a tmpfs; the image's read-only root has no other place).
        argv.append("--private-tmp")
        if request.user is not None:
            uid, _, gid = request.user.partition(":")
            argv += ["--uid", uid] + (["--gid", gid] if gid else [])
        root_fd = os.open(root, OPEN_DIR)
        try:
            for source, target, in_tree in _bind_plan(request.mounts):
                # in ch-run's own mounts, ch-run makes the destination (or says why not)
                dest = container_path(root_fd, target, directory=os.path.isdir(source)) if in_tree else target
                argv += ["--bind", f"{source}:{dest}"]
        finally:
            os.close(root_fd)
        argv += ["--cd", _workdir(request, run)]
        return RunCommand(argv + request.extra_args + [root, "--", *_command(request, run)], _environment())

    def error(self, stderr, doing):
        return EngineFailed(f"charliecloud failed while {doing}: {first_line(stderr) or 'no message'}")


ENGINE = CharliecloudEngine


def _layer_streams(image):
    """The layer files, opened one at a time as apply_layers reaches them."""
    for layer in image.layers:
        shown = image.image_dir.join(layer.path)
        try:
            stream = open_regular(image.image_dir.resolve(layer.path))
        except OSError as err:
            raise BadImageDir(f"{shown}: cannot read the layer ({err.strerror})") from None
        stream.raw.name = shown  # names it in apply_layers' errors
        with stream:
            yield stream


def _environment():
    """ch-run refuses to start without USER: the caller's environment plus USER where it is missing."""
    if "USER" in os.environ:
        return None
    import pwd

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return dict(os.environ, USER=user)


def _check_mount(mount, named):
    spec = mount.spec()
    if not mount.source:
        raise UsageError(f"-v {spec}: anonymous volumes need a daemon; bind a directory: -v SRC:DST")
    if not mount.source.startswith(("/", ".")):
        raise UsageError(f"-v {spec}: named volumes need a daemon; bind a directory: -v /path/to/dir:DST")
    if ":" in mount.source or ":" in mount.target:
        raise UsageError(f"{mount.source}: ch-run cannot bind a path with ':' in it")
    if not mount.target.startswith("/") or os.path.normpath(mount.target) == "/":
        raise UsageError(f"-v {spec}: the destination must be an absolute path other than /")
    for option in filter(None, mount.options.split(",")):
        # ch-run 0.31 binds read-write only; a script named on the command line (the shebang
        # case) is only read by its interpreter, so its bind may well be writable.
        if option != "rw" and not (option == "ro" and os.path.abspath(mount.source) in named):
            raise UsageError(f"-v {spec}: ch-run 0.31 binds read-write only, so '{option}' cannot be honoured")
    if not os.path.exists(mount.source):
        raise UsageError(f"-v {spec}: {mount.source} does not exist (ch-run binds what exists)")


def _bind_plan(mounts):
    """(source, target, in_tree) of each bind, parents first (a bind below another is
    made after it, as dockerd orders them); in_tree: its destination must exist in the
    tree, as it is not below one of ch-run's own mounts or an earlier bind."""
    plan, done = [], list(MOUNTED_BY_CH_RUN)
    for mount in sorted(mounts, key=lambda m: os.path.normpath(m.target).count("/")):
        target = os.path.normpath(mount.target)
        plan.append((os.path.abspath(mount.source), target, not below(target, done)))
        done.append(target)
    return plan


def _workdir(request, run):
    return request.workdir or run.get("WorkingDir") or "/"


def _workdir_in_tree(workdir, mounts):
    return not below(os.path.normpath(workdir), list(MOUNTED_BY_CH_RUN) + [os.path.normpath(m.target)
                                                                          for m in mounts])


def _set_env(name, value):
    return f"--set-env={name}='{value}'"


def _glob_escape(name):
    return "".join("\\" + c if c in "*?[]\\!+@()|" else c for c in name)


def _command(request, run):
    """Entrypoint and Cmd as `docker run` combines them: CMD replaces Cmd; --entrypoint
    replaces Entrypoint ('' removes it) and drops Cmd."""
    entrypoint, cmd = run.get("Entrypoint") or [], run.get("Cmd") or []
    if request.entrypoint is not None:
        entrypoint, cmd = [request.entrypoint] if request.entrypoint else [], []
    command = entrypoint + (request.command or cmd)
    if not command:
        raise UsageError("no command: give CMD (the image has neither Entrypoint nor Cmd)")
    return command
