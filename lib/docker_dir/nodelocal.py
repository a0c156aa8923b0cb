"""Node-local directories docker-dir keeps for itself: the load locks.

Never inside the image directory: it may be read-only, shared between nodes, or a
git-annex tree. Used by the application layer (locks) and by tests.
"""
import os


def runtime_dir():
    """Where load locks live: $XDG_RUNTIME_DIR/docker-dir, else /run/docker-dir for
    root, else /tmp/docker-dir-UID."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        return os.path.join(base, "docker-dir")
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/docker-dir"
    return os.path.join("/tmp", f"docker-dir-{os.geteuid()}")
