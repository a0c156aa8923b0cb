"""Format layer: reading image directories. Pure file reading, no subprocess.

One reader module per layout; READERS lists them, each with the names a directory of
that layout holds, in the order they are tried: the first whose names are all there
reads the directory (only its module is imported: this is on the hot path). A reader
module defines NAME (for messages) and `images(image_dir) -> [Image]` (see
imagedir.Image for what an image carries). Adding a layout is one module plus one
line here.
"""

import os

READERS = (
    ("containers_dir", ("version", "manifest.json")),  # skopeo dir:, podman --format docker-dir
    ("docker_archive", ("manifest.json",)),  # docker save (all versions), podman, skopeo docker-archive:
    ("oci_layout", ("index.json",)),  # skopeo/podman oci:, umoci, buildah, BuildKit
)


def reader_for(image_dir):
    """The reader module of the first layout whose names `image_dir` holds (a link counts,
    dangling or not: git-annex may have dropped the file)."""
    for name, holds in READERS:
        if all(os.path.lexists(image_dir.join(held)) for held in holds):
            return __import__(f"{__name__}.{name}", fromlist=["images"])
    raise image_dir.unrecognized()
