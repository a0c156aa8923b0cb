"""The argparse parser the three commands share (help text, exit-code table, one-line errors)."""
import argparse
import os
import sys
import textwrap

from .. import __version__
from ..engine import ENGINES
from ..errors import EXIT_CODES, UsageError


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        # With no width, argparse imports shutil (and bz2, lzma) on every run: a share
        # of docker-dir-id's budget, spent only to size a help text rarely shown.
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            width = 80
        super().__init__(prog, width=max(width, 40) - 2)


def exit_codes_help(width=79):
    lines = ["exit status:"]
    for code, meaning in EXIT_CODES:
        lines += textwrap.wrap(meaning, width, initial_indent=f"  {code:<7}", subsequent_indent=" " * 9)
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and the exit-code table in --help."""

    def __init__(self, prog, description, **kwargs):
        super().__init__(prog=prog, description=description, epilog=exit_codes_help(),
                         formatter_class=_Formatter, **kwargs)
        self.add_argument("--debug", action="store_true", help="show a traceback on errors")
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the version and exit")

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def add_selectors(parser, of="in DIR"):
    parser.add_argument("--repo-tag", metavar="NAME:TAG", help=f"pick the image {of} saved with this tag")
    parser.add_argument("--config", metavar="PREFIX",
                        help=f"pick the image {of} whose config digest starts with PREFIX (sha256: optional)")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help=f"pick the image {of} of this platform from a multi-platform index "
                             "(default: this host's)")


def add_insecure_registry(parser):
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                        help="allow plain HTTP to this registry (loopback registries need not be named)")


def add_engine_option(parser):
    parser.add_argument("--engine", choices=ENGINES,
                        help="container engine (default: $DOCKER_DIR_ENGINE, else the first of "
                             f"{', '.join(ENGINES)} that is installed)")
