"""docker-dir-mirror: tags of a registry repository, each into PARENT/TAG, with no engine."""
import os
import sys

from ..application.mirror import mirror
from ..application.save import Selectors
from ..errors import EXIT_PARTIAL, UsageError
from .common import exit_now, run, trap_signals
from .parser import Parser, add_insecure_registry
from .reporting import TerminalReporter, human

PROG = "docker-dir-mirror"


def parse(argv):
    parser = Parser(PROG, "Save tags of a registry repository, each into a directory of its own, PARENT/TAG, as "
                          "docker-dir-save docker://NAME:TAG PARENT/TAG does (checked, moved into place only when "
                          "complete), with no engine; a layer the tags share is fetched and stored once. The tags: "
                          "those --tag names and those --tags-matching matches, or else every tag in the registry's "
                          "tag list. A tag whose directory exists is skipped (--force replaces it), so running it "
                          "again adds only the new tags. A tag that fails is said on a line of its own and the others "
                          "are saved: exit 75 then.",
                    usage=f"{PROG} [options] docker://[HOST[:PORT]/]NAME PARENT")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG", help="save this tag (repeatable)")
    parser.add_argument("--tags-matching", action="append", default=[], metavar="PATTERN",
                        help="save the tags this shell pattern matches, e.g. 'v1.*' (quote it; repeatable)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace tag directories that exist (each keeps its old content until the new is "
                             "complete; blobs it holds are not fetched again)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages on stderr but errors")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="from a multi-platform tag, save the image of this platform (default: this host's)")
    parser.add_argument("--all-platforms", action="store_true",
                        help="keep each tag's whole multi-platform index")
    add_insecure_registry(parser)
    parser.add_argument("--gitattributes", action="store_true",
                        help="write PARENT/TAG/.gitattributes: layers to the git-annex annex, JSON files to git")
    parser.add_argument("--annex-urls", action="store_true",
                        help="PARENT is in a git-annex repository: annex each tag directory (implies "
                             "--gitattributes) and record each layer as available from the registry "
                             "(git-annex-remote-docker-dir)")
    parser.add_argument("source", metavar="docker://[HOST[:PORT]/]NAME")
    parser.add_argument("parent", metavar="PARENT")
    args = parser.parse_args(argv)
    if not args.source.startswith("docker://"):
        raise UsageError(f"{args.source}: the source is docker://[HOST[:PORT]/]NAME (see '{PROG} --help')")
    if args.platform and args.all_platforms:
        raise UsageError(f"--platform and --all-platforms exclude each other (see '{PROG} --help')")
    args.source = args.source[len("docker://"):]
    args.parent = os.path.normpath(args.parent)  # as messages show it: no trailing slash
    return args


def main(args):
    trap_signals()
    mirrored = mirror(args.source, args.parent, tags=args.tag, patterns=args.tags_matching, force=args.force,
                      reporter=TerminalReporter(PROG, args.quiet),
                      selectors=Selectors(platform=args.platform, all_platforms=args.all_platforms),
                      insecure=args.insecure_registry, write_gitattributes=args.gitattributes or args.annex_urls,
                      annex_urls=args.annex_urls)
    if not args.quiet:
        print(f"{PROG}: {summary(mirrored, args.parent, args.annex_urls)}", file=sys.stderr)
    return EXIT_PARTIAL if mirrored.failed else 0


def summary(mirrored, parent, annex_urls):
    skipped = len(mirrored.skipped)
    shared = "shared between the tags" if mirrored.temporary_store else "from the blob store"
    line = (f"{mirrored.source} into {parent}: {len(mirrored.saved)} tag(s) saved, {skipped} skipped"
            f"{' (already there; --force replaces them)' if skipped else ''}, {len(mirrored.failed)} failed; "
            f"{human(mirrored.fetched)} fetched, {human(mirrored.from_store)} {shared}, {mirrored.seconds:.1f} s")
    if annex_urls:
        line += (f"; annexed: {mirrored.linked} layer(s) linked to their registry, {mirrored.kept} kept only in "
                 "the annex")
    return line


def entry_point():
    exit_now(run(PROG, parse, main))
