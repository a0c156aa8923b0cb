"""docker-dir-store: what the blob store holds, and removing what no directory uses."""
from ..application.store import blob_store
from .common import exit_now, print_output, run
from .parser import Parser
from .reporting import human

PROG = "docker-dir-store"


def parse(argv):
    parser = Parser(PROG, "The blob store ($DOCKER_DIR_STORE, else ~/.cache/docker-dir/store) keeps one copy of each "
                          "blob of the image directories docker-dir saves on this machine; their blobs are hard links "
                          "to it. Prints where it is, what it holds, and how much of that no directory links to any "
                          "more. Deleting the store never breaks a directory.",
                    usage=f"{PROG} [--prune | --path]")
    parser.add_argument("--prune", action="store_true",
                        help="remove the blobs no directory links to any more (those the store alone holds)")
    parser.add_argument("--path", action="store_true", help="print the store's directory, nothing else")
    return parser.parse_args(argv)


def main(args):
    store = blob_store()
    if store is None:
        return print_output("the blob store is switched off (DOCKER_DIR_STORE=none)\n")
    if args.path:
        return print_output(store.root + "\n")
    if args.prune:
        removed, freed = store.prune()
        return print_output(f"{store.root}: removed {removed} blob(s) no directory linked to, {human(freed)}\n")
    blobs, size, lone, lone_size = store.usage()
    print_output(f"{store.root}: {blobs} blob(s), {human(size)}; {lone} of them ({human(lone_size)}) linked by no "
                 f"directory: '{PROG} --prune' removes them\n")


def entry_point():
    exit_now(run(PROG, parse, main))
