"""docker-dir-id: print the image ID stored in a directory; no daemon, no layer content needed."""
import json
import os

from ..errors import CantWrite
from ..format.layout import ImageDir
from .common import Parser, add_selectors, run

PROG = "docker-dir-id"


def parse(argv):
    parser = Parser(PROG, "Print the config digest (sha256:<hex>) of the image saved in DIR. Needs no "
                          "daemon and no layer content, so it works on git-annex trees with content dropped.")
    add_selectors(parser)
    # Accepted so one set of options works for all three commands; the ID needs no engine.
    parser.add_argument("--engine", choices=("docker", "podman"),
                        help="accepted like in save and exec, and ignored: reading the ID needs no engine")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash the config and every layer, and fail on a mismatch or missing content")
    parser.add_argument("--json", action="store_true",
                        help="print id, repo_tags, config, layers, size (of layers present), manifest_digest")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE, only if its content differs (its mtime is kept otherwise)")
    parser.add_argument("dir", metavar="DIR")
    return parser.parse_args(argv)


def write_if_changed(path, text):
    """Atomically replace `path` with `text` unless it already holds exactly that."""
    data = text.encode()
    try:
        with open(path, "rb") as stream:
            if stream.read(len(data) + 1) == data:
                return False
    except FileNotFoundError:
        pass
    except OSError as err:
        raise CantWrite(f"{path}: cannot read ({err.strerror})") from None
    import tempfile

    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise CantWrite(f"{path}: cannot create ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        os.unlink(tmp)
        raise CantWrite(f"{path}: cannot write ({err.strerror})") from None
    return True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv):
    args = parse(argv)
    entry = ImageDir(args.dir).select(repo_tag=args.repo_tag, config=args.config)
    if args.verify:
        entry.verify()
    if args.json:
        text = json.dumps(entry.summary(), indent=2) + "\n"
    else:
        text = entry.image_id() + "\n"
    if args.output:
        write_if_changed(args.output, text)
    else:
        print(text, end="")


def entry_point():
    return run(PROG, main)
