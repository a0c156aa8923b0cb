"""docker-dir-push: an image directory into a registry, no engine; prints the pinned reference."""
import os
import sys

from ..application.push import COMPRESSIONS, push
from ..errors import UsageError
from ..fs import write_if_changed
from .common import exit_now, print_output, require_stdout, run, trap_signals
from .parser import Parser, add_insecure_registry, add_selectors
from .reporting import TerminalReporter, human, report_annexed

PROG = "docker-dir-push"


def parse(argv):
    parser = Parser(PROG, "Upload the image saved in DIR to a registry, with no engine: the blobs the registry "
                          "lacks, then the manifest. Prints HOST/NAME@sha256:<manifest digest>, the reference a "
                          "workflow pins; pushing the same DIR again gives the same digest.",
                    usage=f"{PROG} [options] DIR docker://HOST[:PORT]/NAME[:TAG]")
    add_selectors(parser)
    parser.add_argument("--all-platforms", action="store_true",
                        help="push DIR's whole multi-platform index (every platform's image)")
    parser.add_argument("--compress", choices=COMPRESSIONS, default="gzip",
                        help="how layers stored uncompressed are sent (default gzip; compressed ones go as they are)")
    add_insecure_registry(parser)
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the pinned reference to FILE, only if it differs (its mtime is kept otherwise)")
    parser.add_argument("--annex-urls", action="store_true",
                        help="DIR is in a git-annex repository: annex it and record each layer that went up as it "
                             "is stored as available from the registry (git-annex-remote-docker-dir)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages on stderr but errors")
    parser.add_argument("dir", metavar="DIR")
    parser.add_argument("target", metavar="docker://REF")
    args = parser.parse_args(argv)
    args.dir = os.path.normpath(args.dir)  # as messages show it: no trailing slash
    if not args.target.startswith("docker://"):
        raise UsageError(f"{args.target}: the target is docker://HOST[:PORT]/NAME[:TAG] (see '{PROG} --help')")
    args.target = args.target[len("docker://"):]
    return args


def main(args):
    if args.output is None:
        require_stdout()  # before the work, not after it
    trap_signals()
    pushed = push(args.dir, args.target, repo_tag=args.repo_tag, config=args.config, platform=args.platform,
                  all_platforms=args.all_platforms, compress=args.compress, insecure=args.insecure_registry,
                  reporter=TerminalReporter(PROG, args.quiet))
    if not args.quiet:
        print(f"{PROG}: pushed {args.dir} ({pushed.uploaded} blobs uploaded, {human(pushed.nbytes)}; "
              f"{pushed.present} present, {pushed.mounted} mounted)", file=sys.stderr)
    if args.annex_urls:
        report_annexed(PROG, args.dir, pushed.layer_urls, args.quiet)
    if args.output is not None:
        write_if_changed(args.output, pushed.pinned + "\n")
    else:
        print_output(pushed.pinned + "\n")


def entry_point():
    exit_now(run(PROG, parse, main))
