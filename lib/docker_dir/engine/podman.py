"""The podman CLI (daemonless)."""
from .base import Engine


class PodmanEngine(Engine):
    name = "podman"
    start_hint = "check 'podman info'; podman needs no daemon, but its storage must be usable"
    unreachable_markers = ("cannot connect to podman", "unable to connect to podman", "connection refused")
    not_found_markers = ("image not known", "no such image", "not found")

    def has_image(self, ref):
        proc = self._cli("image", "exists", ref)
        if proc.returncode in (0, 1) and not proc.stderr.strip():
            return proc.returncode == 0
        raise self.error(proc.stderr, f"looking for {ref}")

    def save_command(self, refs):
        from plumbum import local

        multi = ["--multi-image-archive"] if len(refs) > 1 else []
        return local[self.binary]["save", "--format", "docker-archive", *multi, "--", *refs]
