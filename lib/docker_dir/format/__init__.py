"""Format layer: reading image directories. Pure file reading, no subprocess.

One reader module per layout; READERS lists them in the order they are asked
whether they claim a directory (by what it holds). A reader module defines
NAME (for messages), `claims(image_dir) -> bool` (cheap: a few stats) and
`images(image_dir) -> [Image]` (see imagedir.Image for what an image carries). Adding a layout is one module plus
one line here.
"""

READERS = (
    "containers_dir",  # manifest.json object + version: skopeo dir:, podman --format docker-dir
    "docker_archive",  # manifest.json list: docker save (all versions), podman, skopeo docker-archive:
    "oci_layout",      # index.json + blobs/sha256: skopeo/podman oci:, umoci, buildah, BuildKit
)


def reader_for(image_dir):
    """The reader module of the first layout that claims `image_dir`."""
    for name in READERS:
        module = __import__(f"{__name__}.{name}", fromlist=["images"])
        if module.claims(image_dir):
            return module
    raise image_dir.unrecognized()
