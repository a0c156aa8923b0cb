"""docker-dir-exec: load the image of DIR if the engine lacks it (once), then run CMD in it.

The hot path (image present) reads the manifest, asks the engine, and execs
`<engine> run` (direct.py says why it uses the standard library only): options are
parsed without argparse when there are none.
"""
import os
import sys

from ..application.exec import ExecOptions, prune_cache, ready_to_run
from ..direct import replace_process
from ..errors import EngineUnavailable, UsageError
from .common import exit_now, run, trap_signals
from .reporting import TerminalReporter, human

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
    # CMD, as for argparse's REMAINDER, without argparse's import on the hot path.
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


def prune(args):
    removed, freed, where = prune_cache(args.engine, args.prune_cache)
    if not args.quiet:
        print(f"{PROG}: removed {removed} unpacked image(s), {human(freed)}, unused for {args.prune_cache:g} days, "
              f"from {where}", file=sys.stderr)
    return 0


def main(args):
    if args.prune_cache is not None:
        return prune(args)
    options = ExecOptions(args.dir, args.command, repo_tag=args.repo_tag, config=args.config,
                          platform=args.platform, engine=args.engine, volumes=args.volume, env=args.env,
                          workdir=args.workdir, user=args.user, network=args.network, entrypoint=args.entrypoint,
                          engine_args=args.engine_arg, load=not args.no_load, load_only=args.load_only)
    command = ready_to_run(options, TerminalReporter(PROG, args.quiet), before_load=trap_signals)
    if command is None:
        return 0
    try:
        replace_process(command.argv, command.env)
    except OSError as err:
        raise EngineUnavailable(f"cannot run {command.argv[0]}: {err.strerror}") from None


def entry_point():
    exit_now(run(PROG, parse, main))
