"""docker-dir-id: print the image ID stored in a directory; no daemon, no layer content needed.

Its usual command lines are parsed without argparse (quick_parse): the parser module and
the engine list are imported only for the others, whose parsing would double the run.
"""
import os

from ..application.id import describe
from .common import exit_now, print_output, run

PROG = "docker-dir-id"
_FLAGS = {"--verify": "verify", "--json": "json", "--debug": "debug"}
_VALUED = {"--repo-tag": "repo_tag", "--config": "config", "-o": "output", "--output": "output",
           "--engine": "engine", "--platform": "platform"}


class _Args:
    def __init__(self):
        self.repo_tag = self.config = self.output = self.engine = self.platform = None
        self.verify = self.json = self.debug = False


def quick_parse(argv):
    """Parse the usual well-formed command lines without argparse, whose import (with
    re and enum) would double docker-dir-id's run time. Anything else (help, errors,
    abbreviations, bundled short options) returns None and goes to argparse."""
    args = _Args()
    positional = []
    words = iter(argv)
    for word in words:
        if word == "--":
            if positional:
                return None  # argparse refuses a '--' after DIR
            positional.extend(words)
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, has_value, value = word.partition("=")
        if name in _FLAGS and not has_value:
            setattr(args, _FLAGS[name], True)
        elif name in _VALUED and (has_value and name.startswith("--") or not has_value):
            if not has_value:
                value = next(words, None)
                if value is None or value.startswith("-"):
                    return None
            if name == "--engine":
                from ..engine import ENGINES  # only when --engine is given

                if value not in ENGINES:
                    return None  # argparse names the choices
            setattr(args, _VALUED[name], value)
        else:
            return None
    if len(positional) != 1:
        return None
    args.dir = os.path.normpath(positional[0])
    return args


def parse(argv):
    args = quick_parse(argv)
    if args is None:
        args = full_parse(argv)
        args.dir = os.path.normpath(args.dir)  # as messages show it: no trailing slash
    return args


def full_parse(argv):
    from .parser import Parser, add_selectors

    parser = Parser(PROG, "Print the config digest (sha256:<hex>) of the image saved in DIR. Needs no "
                          "daemon and no layer content, so it works on git-annex trees with content dropped.")
    add_selectors(parser)
    # Accepted so one set of options works for all three commands; the ID needs no engine.
    from ..engine import ENGINES

    parser.add_argument("--engine", choices=ENGINES,
                        help="accepted like in save and exec, and ignored: reading the ID needs no engine")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash the config and every layer, and fail on a mismatch or missing content")
    parser.add_argument("--json", action="store_true",
                        help="print id, repo_tags, config, layers, size (of layers present), manifest_digest")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE, only if its content differs (its mtime is kept otherwise)")
    parser.add_argument("dir", metavar="DIR")
    return parser.parse_args(argv)


def main(args):
    text = describe(args.dir, repo_tag=args.repo_tag, config=args.config, platform=args.platform,
                    verify=args.verify, as_json=args.json, output=args.output)
    if args.output is None:
        print_output(text)


def entry_point():
    exit_now(run(PROG, parse, main))
