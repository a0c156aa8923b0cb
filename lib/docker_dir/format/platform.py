"""Platforms as OCI indexes name them (os, architecture, variant), and this host's."""
import os

from ..errors import UsageError

# uname machine -> (GOARCH, variant), the names images use
_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", None), "i386": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}
# variants an architecture has when an index names none
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


class Platform:
    __slots__ = ("os", "arch", "variant")

    def __init__(self, os_name, arch, variant=None):
        self.os, self.arch, self.variant = os_name, arch, variant or None

    @classmethod
    def parse(cls, text):
        """From the --platform syntax os/arch[/variant]."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"--platform {text!r}: expected os/arch or os/arch/variant, e.g. linux/arm64")
        return cls(*parts)

    @classmethod
    def of(cls, obj):
        """From an OCI platform object or an image config (os, architecture, variant); None if absent."""
        if not isinstance(obj, dict):
            return None
        os_name, arch, variant = obj.get("os"), obj.get("architecture"), obj.get("variant")
        if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
            return None
        return cls(os_name, arch, variant if isinstance(variant, str) else None)

    @classmethod
    def host(cls):
        machine = os.uname().machine
        arch, variant = _MACHINES.get(machine, (machine, None))
        return cls("linux", arch, variant)

    def matches(self, other):
        """`other` (what an index offers) satisfies this request."""
        if (self.os, self.arch) != (other.os, other.arch):
            return False
        want = self.variant or _DEFAULT_VARIANT.get(self.arch)
        have = other.variant or _DEFAULT_VARIANT.get(other.arch)
        return self.variant is None and other.variant is None or want == have

    def __str__(self):
        return "/".join(p for p in (self.os, self.arch, self.variant) if p)
