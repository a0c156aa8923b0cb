"""Image references as docker reads them: `[HOST[:PORT]/]NAME[:TAG][@sha256:HEX]`.

Docker's normalization: no host part means Docker Hub ("docker.io"), whose one-component
names live under "library/"; no tag and no digest means "latest". The first component is
a host when it has a "." or ":", is "localhost", or has capitals (a name never does).
"""
import re
from collections import namedtuple

from ..errors import UsageError
from ..format.names import hex_of_digest, is_hex64, shown, split_host

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = ("index.docker.io",)
_DOCKER_HUB_API = "registry-1.docker.io"
_MAX_NAME = 255  # docker's limit on HOST/NAME

_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?\Z")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_FORM = "[HOST[:PORT]/]NAME[:TAG][@sha256:HEX]"


class Reference(namedtuple("Reference", "registry repository tag digest")):
    """An image reference, parsed: `registry` as written ("docker.io" for Docker Hub),
    `repository` ("library/busybox", "team/app"), `tag` (None only when a digest names the
    image), `digest` ("sha256:<64 hex>" or None). A named tuple, not a dataclass:
    dataclasses (and the inspect it imports) took 15 ms of a push's 200 ms of imports."""

    __slots__ = ()

    @classmethod
    def parse(cls, text):
        """Parse a reference the way `docker pull` does; a malformed one raises UsageError."""

        def refuse(reason):
            return UsageError(f"invalid image reference '{shown(text)}': {reason}; expected {_FORM}")

        if not text:
            raise refuse("it is empty")
        if "://" in text:
            raise refuse("a reference has no URL scheme")
        if is_hex64(text):
            raise refuse("that is an image ID, not a name in a registry")
        name, at, digest = text.partition("@")
        if at and hex_of_digest(digest) is None:
            raise refuse("the digest must be sha256: and 64 lowercase hex digits")
        slash = name.rfind("/")
        colon = name.rfind(":")
        tag = None
        if colon > slash:
            name, tag = name[:colon], name[colon + 1:]
            if not _TAG.match(tag):
                raise refuse("a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
        registry, path = split_host(name)
        if registry is not None and not _HOST.match(registry):
            raise refuse(f"'{shown(registry)}' is not a valid registry host[:port]")
        registry = registry or DOCKER_HUB
        if registry in _DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in path:
            path = "library/" + path
        if path != path.lower():
            raise refuse("the repository name must be lowercase")
        for component in path.split("/"):
            if not _COMPONENT.match(component):
                raise refuse("each part of a repository name is lowercase letters and digits, "
                             "separated by '.', '_', '__' or dashes")
        if len(registry) + 1 + len(path) > _MAX_NAME:
            raise refuse(f"the name is longer than {_MAX_NAME} characters")
        return cls(registry, path, tag if tag or at else "latest", digest if at else None)

    @property
    def api_host(self):
        """The host[:port] that serves the registry API (Docker Hub's differs from its name)."""
        return api_host(self.registry)

    @property
    def manifest_reference(self):
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def with_digest(self, digest):
        """`HOST/NAME@sha256:…`: what a push prints, pinning the image it sent."""
        return f"{self.registry}/{self.repository}@{digest}"

    def __str__(self):
        return (f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def check_repository(name):
    """`name` if it is a repository path a registry accepts, else UsageError."""
    if not (isinstance(name, str) and len(name) <= _MAX_NAME
            and all(_COMPONENT.match(component) for component in name.split("/"))):
        raise UsageError(f"invalid repository name '{shown(str(name))}': lowercase letters and digits, "
                         "separated by '.', '_', '__', dashes or '/'")
    return name


def is_tag(text):
    """Whether `text` is a valid tag: also a safe file name (no '/', not '.' or '..')."""
    return isinstance(text, str) and _TAG.match(text) is not None


def check_tag(tag):
    """`tag` if it is a valid tag, else UsageError."""
    if not is_tag(tag):
        raise UsageError(f"invalid tag '{shown(str(tag))}': 1 to 128 letters, digits, '_', '.' or '-', "
                         "not starting with '.' or '-'")
    return tag


def api_host(registry):
    """The host[:port] that serves `registry`'s API: Docker Hub's differs from its name."""
    return _DOCKER_HUB_API if registry in (DOCKER_HUB,) + _DOCKER_HUB_ALIASES else registry


# The URLs of blobs in registries that git-annex records (application/annex.py) and the
# docker-dir special remote claims (application/annex_remote.py).
BLOB_URL_SCHEME = "docker-blob://"


def blob_url(registry, repository, digest):
    """docker-blob://HOST[:PORT]/NAME@sha256:HEX: blob `digest` of repository NAME."""
    return f"{BLOB_URL_SCHEME}{registry}/{repository}@{digest}"


def parse_blob_url(url):
    """(registry, repository, digest) of a URL of that form, else None (only the full
    form: HOST/NAME as a registry names it, a sha256 digest)."""
    if not url.startswith(BLOB_URL_SCHEME):
        return None
    name, at, digest = url[len(BLOB_URL_SCHEME):].partition("@")
    if not at or hex_of_digest(digest) is None or "/" not in name:
        return None
    try:
        ref = Reference.parse(f"{name}@{digest}")
    except UsageError:
        return None
    if f"{ref.registry}/{ref.repository}" != name:
        return None
    return ref.registry, ref.repository, digest
