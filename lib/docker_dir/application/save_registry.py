"""Images in a registry, a source of a save: pulled into the build directory (pull.py).
The registry client (its HTTP library, ssl and the rest) is imported only once a
docker:// source is pulled: an engine's save does not pay for it (bench/RESULTS.md)."""
from ..errors import CantWrite


class RegistryImage:
    """An image in a registry: docker://[HOST[:PORT]/]NAME[:TAG|@sha256:DIGEST]; a source of a save."""

    def __init__(self, text):
        from ..registry.reference import Reference

        self.reference = Reference.parse(text)

    def __str__(self):
        return f"docker://{self.reference}"

    def check(self):
        """Nothing to ask before the build: the registry is asked as the image is pulled."""

    def add_to(self, build):
        from .pull import pull

        try:
            pulled = pull(self, build.blobs, build.selectors, build.reporter, build.insecure, build.replaced)
        except CantWrite as err:  # it names a file of the build directory, which is gone
            why = ("no space left on the device; nothing was written, free space and save again"
                   if "No space" in str(err) else f"{err}; nothing was written")
            raise CantWrite(f"{build.target}: {why}") from None
        build.entries += pulled.entries
        if pulled.index:
            build.index = (pulled.index, pulled.repo_tags)
        build.received += pulled.nbytes
        build.layer_urls.update(pulled.layer_urls)
