"""Reader: the OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`).

Written by skopeo and podman (`oci:`, `--format oci-dir`, an extracted oci-archive),
umoci, buildah and BuildKit (`--output type=oci,tar=false`). Tags come from the
annotations of index.json's descriptors; a multi-platform index gives one image per
platform. Docker >= 25 saves also hold this layout, but are read through their
manifest.json (docker_archive), which carries the tags as docker knows them.
"""
from ..errors import BadImageDir
from .imagedir import Image
from .names import provenance
from .oci import Walker, descriptors, tags_of

NAME = "OCI image layout"


def blob_path(hexd):
    return f"blobs/sha256/{hexd}"


def images(image_dir):
    index = image_dir.read_json("index.json", f"{image_dir.join('index.json')}: missing")
    where = image_dir.join("index.json")

    def read_blob(hexd):
        relpath = blob_path(hexd)
        return relpath, image_dir.read_json(relpath, f"{image_dir.join(relpath)}: missing; "
                                                     "the layout is incomplete, save it again")

    walker = Walker(image_dir, read_blob, blob_path)
    found = {}  # leaf manifest digest -> Image: one image reachable under several tags is one image
    for i, desc in enumerate(descriptors(index, where)):
        tags, ref_names = tags_of(desc)
        sources, repo_digests = provenance(desc)
        for leaf in walker.leaves(desc, f"{where}: manifests[{i}]"):
            key = leaf.digests[-1]
            if key in found:
                found[key].add_names(tags, ref_names, repo_digests)
                continue
            found[key] = Image(image_dir, f"{where}: manifests[{i}]", blob_path(leaf.config_hex), leaf.layers,
                               list(tags), config_hex=leaf.config_hex,
                               manifest_digests=["sha256:" + d for d in leaf.digests] + sources,
                               platform=leaf.platform, ref_names=ref_names, json_blobs=leaf.blobs,
                               repo_digests=repo_digests)
    if not found:
        raise BadImageDir(f"{where}: names no image (only artifacts or nothing); save the image again")
    return list(found.values())
