"""docker-dir-exec: load the image of DIR if the engine lacks it (once), then run CMD in it.

The hot path (image present) reads the manifest, asks the engine, and execs
`<engine> run` (engine/hot.py says why it uses the standard library only).
"""
import os
import sys

from ..engine import get_engine
from ..engine.base import Mount, RunRequest
from ..engine.hot import replace_process
from ..errors import EngineUnavailable, NotLoaded, UsageError
from ..format.imagedir import read_consistently
from .common import run

PROG = "docker-dir-exec"
IMAGE_ENV = "DOCKER_DIR_IMAGE"


class _NoOptions:
    """What argparse would return for a command line without options."""

    engine = repo_tag = config = platform = workdir = user = network = entrypoint = prune_cache = None
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
    parser.add_argument("--prune-cache", type=_days, metavar="DAYS",
                        help="remove the images unpacked for charliecloud that no exec used for DAYS days, "
                             "then exit (no DIR)")
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="DIR [--] CMD [ARGS...]",
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _days(text):
    try:
        days = float(text)
    except ValueError:
        days = -1
    if not days >= 0:
        raise UsageError(f"--prune-cache {text}: give a number of days >= 0")
    return days


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
    elif args.prune_cache is not None:
        args.dir = None
    else:
        raise UsageError(f"missing DIR (or set ${IMAGE_ENV}) (see '{PROG} --help')")
    if args.dir is not None:
        args.dir = os.path.normpath(args.dir)  # as messages show it: no trailing slash
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


def present_image(image_dir, args):
    """The engine, and the request to run the selected image, which it holds once this returns."""
    image = image_dir.select(repo_tag=args.repo_tag, config=args.config, platform=args.platform)
    engine = get_engine(args.engine)  # after the directory: its errors come first
    ref = engine.image_ref(image.config_digest())
    request = run_request(args, ref)
    problem = engine.unsupported(request)  # before anything is loaded
    if problem:
        raise UsageError(problem)
    if not engine.has_image(ref):
        if args.no_load:
            raise NotLoaded(f"{engine.name} does not have the image of {args.dir} and --no-load was given; "
                            f"load it with '{PROG} --load-only {args.dir}'")
        from ..application.load import ensure_loaded
        from .common import TerminalReporter, trap_signals

        trap_signals()
        ensure_loaded(engine, image, ref, TerminalReporter(PROG, args.quiet))
    return engine, request


def run_request(args, ref):
    """What to run: like a local command, in the caller's directory, as the caller."""
    cwd = os.getcwd()
    mounts = [Mount(cwd, cwd)]
    script = shebang_script(args.command)
    if script and not script.startswith(cwd.rstrip("/") + "/"):
        mounts.append(Mount(script, script, "ro"))
    mounts += [Mount.parse(spec) for spec in args.volume]
    return RunRequest(ref, args.command, args.workdir or cwd, mounts, args.env, user=args.user,
                      tty=sys.stdin.isatty() and sys.stdout.isatty(), network=args.network,
                      entrypoint=args.entrypoint, extra_args=args.engine_arg)


def prune(args):
    from .common import human

    removed, freed, where = get_engine(args.engine).prune_cache(args.prune_cache)
    if not args.quiet:
        print(f"{PROG}: removed {removed} unpacked image(s), {human(freed)}, unused for {args.prune_cache:g} days, "
              f"from {where}", file=sys.stderr)
    return 0


def main(argv):
    args = parse(argv)
    if args.prune_cache is not None:
        return prune(args)
    engine, request = read_consistently(args.dir, lambda image_dir: present_image(image_dir, args))
    if args.load_only:
        return 0
    argv = engine.run_argv(request)
    try:
        replace_process(argv)
    except OSError as err:
        raise EngineUnavailable(f"cannot run {argv[0]}: {err.strerror}") from None


def entry_point():
    return run(PROG, main)
