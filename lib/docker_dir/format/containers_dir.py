"""Reader: the containers/image `dir:` layout (skopeo `dir:`, `podman save --format docker-dir`).

One manifest object in manifest.json (Docker v2s2 or OCI; with `--all`, an index whose
instances are `<hex>.manifest.json`), blobs named by their hex digest, and a `version`
file ("Directory Transport Version: 1.1"). It records no tags.
"""
from ..errors import BadImageDir
from .imagedir import Image
from .oci import Walker

NAME = "containers dir: layout"


def blob_path(hexd):
    return hexd


def images(image_dir):
    import hashlib  # the layout names its top manifest by no digest: hash it

    where = image_dir.join("manifest.json")
    data = image_dir.read_bytes("manifest.json", f"{where}: missing")
    top_hex = hashlib.sha256(data).hexdigest()

    def read_blob(hexd):
        if hexd == top_hex:
            return "manifest.json", image_dir.parse_json(data, "manifest.json")
        relpath = f"{hexd}.manifest.json"
        return relpath, image_dir.read_json(relpath, f"{image_dir.join(relpath)}: missing; "
                                                     "the layout is incomplete, save it again")

    walker = Walker(image_dir, read_blob, blob_path)
    leaves = walker.leaves({"digest": "sha256:" + top_hex}, where)
    if not leaves:
        raise BadImageDir(f"{where}: names no image (only artifacts); save the image again")
    return [Image(image_dir, where, blob_path(leaf.config_hex), leaf.layers, [], config_hex=leaf.config_hex,
                  manifest_digests=["sha256:" + d for d in leaf.digests], platform=leaf.platform,
                  json_blobs=[(path, hexd) for path, hexd in leaf.blobs if hexd != top_hex])
            for leaf in leaves]
