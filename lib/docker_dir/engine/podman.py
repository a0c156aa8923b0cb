"""The podman CLI (daemonless)."""
import os

from ..direct import run_check
from ..errors import EngineUnavailable
from .base import CliEngine


class PodmanEngine(CliEngine):
    name = program = "podman"
    start_hint = "check 'podman info'; podman needs no daemon, but its storage must be usable"
    unreachable_markers = ("cannot connect to podman", "unable to connect to podman", "connection refused")
    not_found_markers = ("image not known", "no such image", "not found")
    # podman needs every layer file a manifest names, but reuses layers it has by diff ID.
    short_archive = "placeholder"

    def user_args(self, user):
        # Rootless podman maps the caller to container root: --user UID:GID would be a
        # subordinate ID (files it writes are not the caller's; above the subuid range it
        # cannot even start). keep-id maps the caller to itself instead.
        if user is None and os.geteuid() != 0:
            return ["--userns=keep-id"]
        return super().user_args(user)

    def has_image(self, ref):
        answer = run_check([self.binary, "image", "exists", ref])
        if answer is None:
            raise EngineUnavailable(f"podman did not answer while looking for {ref}; {self.start_hint}")
        status, _, stderr = answer
        # Exit 1 is also how podman fails on a broken configuration, so the answer
        # counts only when stderr holds nothing but warnings (e.g. unknown config keys).
        if status in (0, 1) and not _without_warnings(stderr):
            return status == 0
        raise self.error(stderr, f"looking for {ref}")

    def inspect_id(self, ref):
        # podman's {{.Id}} is bare hex; the contract's IDs, and the digests stored_digest
        # compares them with, are "sha256:<hex>" (docker's own form).
        found = super().inspect_id(ref)
        return found if found is None or ":" in found else f"sha256:{found}"

    def save_args(self, refs):
        multi = ["--multi-image-archive"] if len(refs) > 1 else []
        return ["save", "--format", "docker-archive", *multi, "--", *refs]


ENGINE = PodmanEngine


def _without_warnings(stderr):
    """stderr minus podman's warning lines (logrus text or terminal format)."""
    lines = stderr.splitlines()
    return [line for line in lines if line.strip() and " level=warning " not in line
            and not line.startswith("WARN[")]
