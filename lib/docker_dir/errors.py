"""Exceptions that carry their exit code; the cli layer prints them as one line.

The codes are shared by all the commands and documented in each --help and
in the README, so scripts can tell "fix your input" from "start the daemon".
"""

EXIT_VERIFY = 1
EXIT_USAGE = 2
EXIT_BAD_DIR = 65
EXIT_CONTENT_MISSING = 66
EXIT_SELECTION = 67
EXIT_ENGINE_UNAVAILABLE = 69
EXIT_ENGINE_FAILED = 70
EXIT_NOT_LOADED = 71
EXIT_CANT_WRITE = 73
EXIT_PARTIAL = 75  # sysexits' EX_TEMPFAIL, "the user is invited to retry": a re-run retries only what failed
EXIT_NO_PERMISSION = 77

# (code, meaning): every --help and the README's table say exactly this (a test compares them).
EXIT_CODES = (
    ("0", "success (docker-dir-exec: the command's own status)"),
    ("1", "content does not match its digest: a file --verify checked, or a blob downloaded from a registry"),
    ("2", "usage error (unknown option, missing argument)"),
    ("65", "not an image directory: missing, empty, of a layout docker-dir does not read, or a damaged "
           "manifest, or a path that leaves the directory; or a registry sent a manifest or tag list that "
           "breaks the rules"),
    ("66", "image content not present (git-annex dropped it): run 'datalad get DIR' or 'git annex get DIR'"),
    ("67", "no image matches --repo-tag/--config/--platform, or several do and none was chosen; or the "
           "registry has no such repository, tag or platform"),
    ("69", "a service docker-dir needs is unavailable: container engine not installed or its daemon not "
           "reachable, registry or proxy not reachable (or refusing), a TLS certificate refused, a Python module "
           "missing (zstd)"),
    ("70", "the engine refused an operation (image not found, save or load failed)"),
    ("71", "image not loaded in the engine and --no-load was given"),
    ("73", "cannot write the output (DIR not empty, parent missing or not writable, disk full)"),
    ("75", "docker-dir-mirror: some tags failed (each said why on a line of its own) and the others were saved; "
           "running it again tries only the tags still missing"),
    ("77", "permission denied: a registry refused the credentials, or they do not cover the repository"),
    ("128+N", "interrupted by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP)"),
)


# An engine's or a registry's message is shown cut to this many characters.
MESSAGE_LIMIT = 300


def first_line(text, limit=MESSAGE_LIMIT):
    """The first meaningful line of a program's or a server's message: warnings skipped
    when something else was said, non-printable characters escaped, cut to `limit`."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if not _is_warning(line)] or lines
    line = said[0] if said else ""
    if not line.isprintable():
        line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _is_warning(line):
    lowered = line.lower()
    return lowered.startswith(("warning", "warn[")) or " level=warning " in lowered


class DockerDirError(Exception):
    """Base class: str(err) is the one line the user sees."""

    exit_code = 1


class VerifyError(DockerDirError):
    exit_code = EXIT_VERIFY


class UsageError(DockerDirError):
    exit_code = EXIT_USAGE


class BadImageDir(DockerDirError):
    exit_code = EXIT_BAD_DIR


class ContentMissing(DockerDirError):
    exit_code = EXIT_CONTENT_MISSING


class SelectionError(DockerDirError):
    exit_code = EXIT_SELECTION


class EngineUnavailable(DockerDirError):
    exit_code = EXIT_ENGINE_UNAVAILABLE


class EngineFailed(DockerDirError):
    exit_code = EXIT_ENGINE_FAILED


class NotLoaded(DockerDirError):
    exit_code = EXIT_NOT_LOADED


class CantWrite(DockerDirError):
    exit_code = EXIT_CANT_WRITE


class RegistryUnavailable(DockerDirError):
    """A registry that cannot be reached, speaks no TLS we accept, or keeps failing (5xx)."""

    exit_code = EXIT_ENGINE_UNAVAILABLE


class AuthRefused(DockerDirError):
    """A registry refused the credentials, or the token does not cover what was asked."""

    exit_code = EXIT_NO_PERMISSION


class BadRegistryData(BadImageDir):
    """A registry sent, or refused, a document that breaks the rules: bad JSON, too large,
    a media type that contradicts the content, a digest that is not sha256:<64 hex>."""


class DigestMismatch(VerifyError):
    """Content whose sha256 differs from the digest that names it."""


class Interrupted(DockerDirError):
    """A signal stopped the command; exits 128 + the signal number, as shells do."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum
