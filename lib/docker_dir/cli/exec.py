"""docker-dir-exec: load the image of DIR if the engine lacks it (once), then run CMD in it.

The hot path (image present) reads the manifest, asks the engine, and execs
`<engine> run`: no plumbum, no child left behind, so stdin/stdout/stderr,
signals and the exit status are the engine client's own.
"""
import os
import sys

from ..engine import get_engine
from ..errors import EngineUnavailable, NotLoaded, UsageError
from ..format.layout import ImageDir
from .common import run

PROG = "docker-dir-exec"
IMAGE_ENV = "DOCKER_DIR_IMAGE"


class _NoOptions:
    """What argparse would return for a command line without options."""

    engine = repo_tag = config = workdir = user = network = entrypoint = None
    no_load = load_only = quiet = debug = False

    def __init__(self, words):
        self.volume, self.env, self.engine_arg = [], [], []
        self.words = words


def _parse_options(argv):
    import argparse

    from .parser import Parser, add_engine_option, add_selectors

    parser = Parser(
        PROG,
        "Make sure the engine has the image saved in DIR (loading it once, even under make -j), then run "
        "CMD in it with the current directory mounted at the same path and used as the workdir.\n"
        f"With ${IMAGE_ENV} set, DIR comes from it and every argument is CMD (for shebang lines).\n"
        "Values that start with '-' are given as --engine-arg=--flag.",
        usage=f"{PROG} [options] DIR [--] CMD [ARGS...]",
    )
    add_engine_option(parser)
    add_selectors(parser)
    parser.add_argument("--no-load", action="store_true",
                        help="fail (exit 71) instead of loading when the engine lacks the image")
    parser.add_argument("--load-only", action="store_true", help="load the image if needed, run nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages on stderr but errors")
    parser.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:OPTS]")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]")
    parser.add_argument("-w", "--workdir", metavar="PATH", help="working directory (default: the current one)")
    parser.add_argument("--user", metavar="UID[:GID]", help="user to run as (default: the caller's UID:GID)")
    parser.add_argument("--network", metavar="NET")
    parser.add_argument("--entrypoint", metavar="CMD")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="ARG",
                        help="passed to '<engine> run' verbatim (repeatable)")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="DIR [--] CMD [ARGS...]",
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse(argv):
    # Makefiles and shebang lines rarely pass options: then everything is DIR and
    # CMD, as for argparse's REMAINDER, without argparse's 5 ms on the hot path.
    args = _NoOptions(argv) if argv and not argv[0].startswith("-") else _parse_options(argv)
    words = args.words
    env_dir = os.environ.get(IMAGE_ENV)
    if env_dir:
        args.dir = env_dir
    elif words:
        args.dir, words = words[0], words[1:]
    else:
        raise UsageError(f"missing DIR (or set ${IMAGE_ENV}) (see '{PROG} --help')")
    args.command = words[1:] if words[:1] == ["--"] else words
    return args


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


def run_options(args):
    """Options for `<engine> run`: like a local command, the caller's directory and user."""
    cwd = os.getcwd()
    # Never pull: if the image went away since the check (another process removed it),
    # the engine would ask a registry at localhost for our private name and might run
    # whatever it serves there; "No such image" is the truthful answer.
    options = ["--rm", "--interactive", "--init", "--pull", "never"]
    if sys.stdin.isatty() and sys.stdout.isatty():
        options.append("--tty")
    user = args.user or (f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None)
    if user:
        options += ["--user", user]
    options += ["--volume", f"{cwd}:{cwd}", "--workdir", args.workdir or cwd]
    script = shebang_script(args.command)
    if script and not script.startswith(cwd.rstrip("/") + "/"):
        options += ["--volume", f"{script}:{script}:ro"]
    for volume in args.volume:
        options += ["--volume", volume]
    for env in args.env:
        options += ["--env", env]
    if args.network:
        options += ["--network", args.network]
    if args.entrypoint is not None:
        options += ["--entrypoint", args.entrypoint]
    return options + args.engine_arg


def main(argv):
    args = parse(argv)
    entry = ImageDir(args.dir).select(repo_tag=args.repo_tag, config=args.config)
    engine = get_engine(args.engine)
    ref = engine.private_ref(entry.config_digest())
    if not engine.has_image(ref):
        if args.no_load:
            raise NotLoaded(f"{engine.name} does not have the image of {args.dir} and --no-load was given; "
                            f"load it with '{PROG} --load-only {args.dir}'")
        from .load import ensure_loaded

        ensure_loaded(engine, entry, ref, quiet=args.quiet)
    if args.load_only:
        return 0
    argv = engine.run_argv(ref, run_options(args), args.command)
    sys.stdout.flush()
    try:
        os.execv(engine.binary, argv)
    except OSError as err:
        raise EngineUnavailable(f"cannot run {engine.binary}: {err.strerror}") from None


def entry_point():
    return run(PROG, main)
