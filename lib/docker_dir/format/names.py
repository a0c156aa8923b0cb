"""Pure string rules for what image directories name: digests, paths, tags.

No file-system call here: docker-dir-id's quick path applies these to every path a
manifest names, so every command gives the same verdict on the same directory. hashlib is
imported where chain IDs are made: docker-dir-id never needs it.
"""
from ..errors import BadImageDir

_HEX_DIGITS = frozenset("0123456789abcdef")


def short(digest_hex):
    return digest_hex[:12]


def is_hex64(text):
    return len(text) == 64 and _HEX_DIGITS.issuperset(text)


def digest_from_name(relpath):
    """The sha256 hex a file is named after (`<hex>.json`, `blobs/sha256/<hex>`, `<hex>`), or None."""
    name = relpath.rsplit("/", 1)[-1]
    if name.endswith(".json"):
        name = name[:-5]
    if name.startswith("sha256:"):
        name = name[7:]
    return name if is_hex64(name) else None


def hex_of_digest(digest):
    """The hex of an `sha256:<64 hex>` digest, or None for anything else (other
    algorithms included: no engine here writes them)."""
    if isinstance(digest, str) and digest.startswith("sha256:") and is_hex64(digest[7:]):
        return digest[7:]
    return None


def chain_ids(diff_ids):
    """The chain ID of each prefix of a list of diff IDs: how engines name a stack of layers."""
    import hashlib

    chains = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else
                      "sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


def check_relpath(relpath, where):
    """Refuse a path a manifest names unless it is a plain relative path inside DIR."""
    # No engine writes control characters or lone surrogates (which cannot even be encoded) in a name.
    if not isinstance(relpath, str) or not relpath or not relpath.isprintable():
        raise BadImageDir(f"{where}: invalid path {shown(repr(relpath))}; the manifest is damaged")
    if relpath.startswith("/") or ".." in relpath.split("/"):
        raise BadImageDir(f"{where}: path {shown(repr(relpath))} leaves the image directory; refusing it")
    return relpath


def member_parts(name, max_depth=None):
    """The components of a tar member name (`.` and empty ones dropped); raises ValueError
    saying why for a name that could reach outside the directory it is extracted into:
    absolute, with `..`, with a NUL byte, or (with max_depth) too deep."""
    if name.startswith("/"):
        raise ValueError(f"is the absolute path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"has '..' in {name!r}")
    if "\0" in name:
        raise ValueError(f"has a NUL byte in {name!r}")
    if max_depth is not None and len(parts) > max_depth:
        raise ValueError(f"is more than {max_depth} directories deep")
    return parts


def normalize_repo_tag(ref):
    """Compare tags the way engines print them: drop default registry prefixes, add :latest."""
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref


def split_host(name):
    """(registry host or None, rest) of an image name, by docker's rule: the first part is
    a host when it has a "." or ":", is "localhost", or has capitals (a name never does)."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return None, name


def qualified_name(repo_tag):
    """A repo tag as containerd names it: with its registry (docker.io for Docker Hub,
    whose one-part names live under library/), e.g. busybox:1 -> docker.io/library/busybox:1."""
    host, rest = split_host(repo_tag)
    if host is not None:
        return repo_tag
    return "docker.io/" + (rest if "/" in rest else "library/" + rest)  # a tag has no "/"


NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
# docker-dir's own, on the index.json descriptors it writes: the digest of the manifest an
# image had where it came from (an engine's store, a registry) when docker-dir wrote the
# manifest anew in OCI media types, and the registry's name for it (a pull's RepoDigests).
SOURCE_DIGEST_ANNOTATION = "io.docker-dir.source-digest"
REPO_DIGEST_ANNOTATION = "io.docker-dir.repo-digest"


def provenance(desc):
    """(source manifest digests, repo digests) the annotations of an index.json descriptor
    record (docker-dir's own annotations); malformed values are ignored."""
    notes = desc.get("annotations") if isinstance(desc, dict) else None
    if not isinstance(notes, dict):
        return [], []
    source, repo = notes.get(SOURCE_DIGEST_ANNOTATION), notes.get(REPO_DIGEST_ANNOTATION)
    sources = [source] if hex_of_digest(source) else []
    repos = [repo] if isinstance(repo, str) and repo.isprintable() and hex_of_digest(repo.rpartition("@")[2]) else []
    return sources, repos


def shown(text):
    """Text from a manifest, a link or the command line, escaped where needed so an error stays one line."""
    return text if text.isprintable() else repr(text)[1:-1]


def one_line(err):
    return " ".join(str(err).split())
