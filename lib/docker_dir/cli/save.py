"""docker-dir-save: images from an engine, or from another image directory or archive,
into a directory, atomically and safely."""
import argparse
import os
import re
import sys

from ..application.save import DirectoryImages, EngineImage, RegistryImage, Selectors, save
from ..engine import get_engine
from ..errors import UsageError
from .common import exit_now, print_output, require_stdout, run, trap_signals
from .parser import Parser, add_engine_option, add_insecure_registry, add_selectors
from .reporting import TerminalReporter, human, report_annexed

PROG = "docker-dir-save"
_ID_REF = re.compile(r"(sha256:)?[0-9a-f]{64}|[0-9a-f]{12,63}")
# skopeo's transport names, the convention users know; oci-archive: is an OCI layout in a tar.
DIRECTORY_TRANSPORTS = ("oci", "dir", "docker-archive", "oci-archive")


def parse(argv):
    parser = Parser(PROG, "Save images into DIR, in the layout docker-dir writes (an OCI image layout that "
                          "docker load also reads): streamed, checked, moved into place only when complete. "
                          "Prints the config digest of each saved image.\n"
                          "SOURCE is an image the engine holds (name[:tag], name@digest, image ID), an "
                          "image in a registry, pulled with no engine: docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST], "
                          "or another image directory or archive: oci:PATH[:TAG], dir:PATH, "
                          "docker-archive:PATH (a directory or a tar file), oci-archive:PATH[:TAG].",
                    usage=f"{PROG} [options] SOURCE [SOURCE...] DIR")
    add_engine_option(parser)
    add_selectors(parser, of="of directory sources")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace a non-empty DIR (its old content stays until the new is complete)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no messages on stderr but errors")
    parser.add_argument("--gitattributes", action="store_true",
                        help="write DIR/.gitattributes: layers to the git-annex annex, JSON files to git")
    parser.add_argument("--all-platforms", action="store_true",
                        help="keep a registry image's whole multi-platform index (one docker:// SOURCE); "
                             "docker-dir-id and docker-dir-exec then choose with --platform")
    parser.add_argument("--annex-urls", action="store_true",
                        help="DIR is in a git-annex repository: annex it (implies --gitattributes) and record each "
                             "layer pulled from a registry as available there (git-annex-remote-docker-dir)")
    add_insecure_registry(parser)
    parser.add_argument("sources", metavar="SOURCE", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("dir", metavar="DIR")
    args = parser.parse_args(argv)
    args.dir = os.path.normpath(args.dir)  # as messages show it: no trailing slash
    args.sources = [parse_source(text) for text in args.sources]
    return args


def parse_source(text):
    """What one SOURCE argument names."""
    if text.startswith("docker://"):
        return RegistryImage(text[len("docker://"):])
    transport, colon, rest = text.partition(":")
    if colon and transport in DIRECTORY_TRANSPORTS:
        path, _, tag = rest.partition(":")
        if not path:
            raise UsageError(f"{text}: no path after '{transport}:' (see '{PROG} --help')")
        return DirectoryImages(transport, os.path.normpath(path), tag or None)
    return EngineImage(normalize_ref(text))


def normalize_ref(ref):
    """`name` means `name:latest` (else old engines save every tag of `name`);
    IDs, digests and tagged names (registry ports included) pass unchanged."""
    if _ID_REF.fullmatch(ref) or "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return ref + ":latest"


def main(args):
    require_stdout()  # before the work, not after it
    trap_signals()
    engine_needed = any(isinstance(source, EngineImage) for source in args.sources)
    engine = get_engine(args.engine) if engine_needed else None
    selectors = Selectors(args.repo_tag, args.config, args.platform, args.all_platforms)
    saved = save(args.sources, args.dir, engine, args.force, TerminalReporter(PROG, args.quiet),
                 args.gitattributes or args.annex_urls, selectors, args.insecure_registry)
    if not args.quiet:
        what = " ".join(str(source) for source in args.sources)
        reused = f"; {human(saved.from_store)} from the blob store" if saved.from_store else ""
        print(f"{PROG}: saved {what} to {args.dir} ({human(saved.nbytes)} in {saved.seconds:.1f} s{reused})",
              file=sys.stderr)
    if args.annex_urls:
        report_annexed(PROG, args.dir, saved.layer_urls, args.quiet)
    print_output("".join(image_id + "\n" for image_id in saved.ids))


def entry_point():
    exit_now(run(PROG, parse, main))
