"""Images of another image directory or archive (oci:, dir:, docker-archive:,
oci-archive:), of any layout docker-dir reads, copied into the build directory with
every blob checked against its digest and size as it is copied (or, from an archive
extracted into the build directory, as it is moved)."""
import os
import shutil
import tarfile
import tempfile

from ..errors import BadImageDir, SelectionError, UsageError
from ..format.canonical import Entry, kept_manifest, layer_media_type, stored_compression
from ..format.compression import NONE
from ..format.extract import extract_stream
from ..format.imagedir import ImageDir
from ..format.names import hex_of_digest, shown
from ..format.selection import select_among
from ..fs import open_regular

# Inside the build directory: an archive extracted, before its blobs move to blobs/.
_STAGING = ".staging-"


class DirectoryImages:
    """The images of another image directory or archive: `transport` is how it was named
    (oci, dir, docker-archive, oci-archive), `tag` an optional OCI ref name or repo tag
    choosing among them."""

    def __init__(self, transport, path, tag=None):
        self.transport, self.path, self.tag = transport, path, tag

    def __str__(self):
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")

    def check(self):
        """Nothing to ask before the build: the directory is read as it is copied."""

    def add_to(self, build):
        if os.path.isfile(self.path):
            staging = tempfile.mkdtemp(prefix=_STAGING, dir=build.tmp)
            try:
                with open_regular(self.path) as stream:
                    extract_stream(stream, staging)
            except (tarfile.TarError, EOFError) as err:
                raise BadImageDir(f"{self.path}: not a tar archive of an image ({err}); give the archive "
                                  "'docker save -o', 'podman save' or an oci-archive wrote, or its directory") from None
            image_dir, in_build_dir = ImageDir(staging), True
        else:
            image_dir, in_build_dir = ImageDir(self.path), False
        build.entries += [_checked_copy(image, build.blobs, in_build_dir)
                          for image in self._chosen(image_dir, build.selectors)]
        if in_build_dir:
            shutil.rmtree(image_dir.path)

    def _chosen(self, image_dir, selectors):
        """The images the selectors leave: all of them, but one platform of a
        multi-platform index (this host's, or --platform's)."""
        if selectors.all_platforms:
            raise UsageError(f"{self}: --all-platforms keeps a registry's whole index (docker:// sources); "
                             "from a directory, choose a platform with --platform")
        images = image_dir.images()
        chosen = [i for i in images if self.tag is None or i.matches_reference(self.tag)]
        if self.tag is not None and not chosen:
            raise SelectionError(f"{self}: no image tagged {shown(self.tag)}; it holds: "
                                 + "; ".join(i.label() for i in images))
        if selectors.repo_tag is not None or selectors.config is not None or selectors.platform is not None or (
                len(chosen) > 1 and all(i.platform for i in chosen)):
            return [select_among(image_dir, chosen, selectors)]
        return chosen


def _checked_copy(image, blobs, in_build_dir):
    """An Entry for an image of another directory: its config and layers copied (or
    moved, from an extracted archive) into blobs/, each refused (65) when its content
    does not match the digest or size that names it; its manifest's bytes kept when
    they are an OCI manifest (the digest stays the source's)."""
    image_dir = image.image_dir
    image.require_content()
    diff_ids = image.diff_ids() or []

    def place(relpath, hexd, size):
        path = image_dir.resolve(relpath)
        shown_path = image_dir.join(relpath)
        with open_regular(path) as stream:
            found = blobs.copy(stream, hexd, size, shown_path)
        if in_build_dir:
            os.unlink(path)
        return found, os.stat(blobs.path(found)).st_size

    config_hex, config_size = place(image.config_path, image.config_digest(), None)
    layers = []
    for i, layer in enumerate(image.layers):
        compression = stored_compression(image_dir.resolve(layer.path), layer.media_type)
        expected = layer.digest[7:] if layer.digest else None
        if expected is None and compression == NONE and i < len(diff_ids):
            expected = hex_of_digest(diff_ids[i])
        hexd, size = place(layer.path, expected, layer.size)
        layers.append((hexd, size, layer_media_type(compression, layer.media_type)))
    manifest, notes = kept_manifest(image)
    return Entry(config_hex, config_size, layers, repo_tags=image.repo_tags, ref_names=image.ref_names,
                 manifest=manifest, notes=notes)
