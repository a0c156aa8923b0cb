"""docker-dir-save: stream `docker save` into a directory, atomically and safely."""
import os
import re
import sys

from ..application.save import save
from ..engine import get_engine
from .common import TerminalReporter, human, print_output, require_stdout, run, trap_signals
from .parser import Parser, add_engine_option

PROG = "docker-dir-save"
_ID_REF = re.compile(r"(sha256:)?[0-9a-f]{64}|[0-9a-f]{12,63}")


def parse(argv):
    parser = Parser(PROG, "Save one or more images from the engine into DIR, as the files 'docker save' "
                          "writes: streamed, extracted safely, moved into place only when complete. "
                          "Prints the config digest of each saved image.")
    add_engine_option(parser)
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace a non-empty DIR (its old content stays until the new is complete)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages on stderr but errors")
    parser.add_argument("--gitattributes", action="store_true",
                        help="write DIR/.gitattributes: layers to the git-annex annex, JSON files to git")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="name[:tag], name@digest, or image ID")
    parser.add_argument("dir", metavar="DIR")
    return parser.parse_args(argv)


def normalize_ref(ref):
    """`name` means `name:latest` (else old engines save every tag of `name`);
    IDs, digests and tagged names (registry ports included) pass unchanged."""
    if _ID_REF.fullmatch(ref) or "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return ref + ":latest"


def main(args):
    require_stdout()  # before the work, not after it
    args.dir = os.path.normpath(args.dir)  # as messages show it: no trailing slash
    trap_signals()
    engine = get_engine(args.engine)
    refs = [normalize_ref(ref) for ref in args.images]
    saved = save(engine, refs, args.dir, args.force, TerminalReporter(PROG, args.quiet), args.gitattributes)
    if not args.quiet:
        print(f"{PROG}: saved {' '.join(refs)} to {args.dir} ({human(saved.nbytes)} in {saved.seconds:.1f} s)",
              file=sys.stderr)
    print_output("".join(image_id + "\n" for image_id in saved.ids))


def entry_point():
    return run(PROG, parse, main)
