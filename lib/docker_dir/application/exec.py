"""What docker-dir-exec does before it becomes the engine's `run`: read the image
directory (consistently, then act on what was read), choose the engine, check the
request, and make the engine hold the image (loading it once if needed).

On the hot path (the engine has the image) this is a read of the manifest and one
question to the engine: nothing here imports plumbum; load.py (which may) is imported
only when a load is needed.
"""
import os
import sys

from ..engine import get_engine
from ..engine.base import Mount, RunRequest
from ..errors import DockerDirError, Interrupted, NotLoaded
from ..format.consistent import read_consistently
from ..format.imagedir import identity
from . import QUIET

PROG = "docker-dir-exec"


class ExecOptions:
    """What the command line asks of docker-dir-exec, as the cli parsed it."""

    __slots__ = ("dir", "command", "repo_tag", "config", "platform", "engine", "volumes", "env", "workdir",
                 "user", "network", "entrypoint", "engine_args", "load", "load_only")

    def __init__(self, dir, command, repo_tag=None, config=None, platform=None, engine=None, volumes=(), env=(),
                 workdir=None, user=None, network=None, entrypoint=None, engine_args=(), load=True, load_only=False):
        self.dir, self.command = dir, list(command)
        self.repo_tag, self.config, self.platform, self.engine = repo_tag, config, platform, engine
        self.volumes, self.env, self.engine_args = list(volumes), list(env), list(engine_args)
        self.workdir, self.user, self.network, self.entrypoint = workdir, user, network, entrypoint
        self.load, self.load_only = load, load_only


def ready_to_run(options, reporter=QUIET, before_load=None):
    """The engine's RunCommand for the options (None with load_only), the engine holding
    the image once this returns. `before_load()` is called before a load begins (the cli
    makes signals unwind from there)."""
    image = read_consistently(options.dir, lambda image_dir: image_dir.select(
        repo_tag=options.repo_tag, config=options.config, platform=options.platform))
    engine = get_engine(options.engine)  # after the directory: its errors come first
    request = run_request(options, engine.image_ref(image.config_digest()))
    engine.check_request(request)  # before anything is loaded
    if not engine.has_image(request.image):
        if not options.load:
            raise NotLoaded(f"{engine.name} does not have the image of {options.dir} and --no-load was given; "
                            f"load it with '{PROG} --load-only {options.dir}'")
        if before_load:
            before_load()
        _load(engine, image, request.image, reporter)
    if options.load_only:
        return None
    engine.prepare_run(request)
    return engine.run_command(request)


def _load(engine, image, ref, reporter):
    from .load import ensure_loaded

    try:
        ensure_loaded(engine, image, ref, reporter)
    except DockerDirError as err:
        path = image.image_dir.path
        if isinstance(err, Interrupted) or identity(path) == image.image_dir.identity:
            raise
        # Not retried: a load is no read to repeat. What failed is said, and why it may have.
        err.args = (f"{err}; {path} was replaced while it was loaded (by docker-dir-save --force?): run again",)
        raise


def run_request(options, ref):
    """What to run: like a local command, in the caller's directory, as the caller."""
    cwd = os.getcwd()
    mounts = [Mount(cwd, cwd)]
    script = shebang_script(options.command)
    if script and not script.startswith(cwd.rstrip("/") + "/"):
        mounts.append(Mount(script, script, "ro"))
    mounts += [Mount.parse(spec) for spec in options.volumes]
    return RunRequest(ref, options.command, options.workdir or cwd, mounts, options.env, user=options.user,
                      tty=_is_terminal(sys.stdin) and _is_terminal(sys.stdout), network=options.network,
                      entrypoint=options.entrypoint, extra_args=options.engine_args)


def _is_terminal(stream):
    return stream is not None and stream.isatty()


def shebang_script(command):
    """The script that invoked us through its #! line, if any: the kernel passes its
    path as an argument, and it lies outside the mounted directory more often than not."""
    for arg in command[1:]:
        if not os.path.isfile(arg):
            continue
        try:
            with open(arg, "rb") as stream:
                first_line = stream.readline(512)
        except OSError:
            continue
        if first_line.startswith(b"#!") and b"docker-dir-exec" in first_line:
            return os.path.abspath(arg)
    return None


def prune_cache(engine_name, days):
    """Remove what the engine keeps for docker-dir unused for `days` days: (entries, bytes, where)."""
    return get_engine(engine_name).prune_cache(days)
