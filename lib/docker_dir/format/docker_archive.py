"""Reader: the docker-archive layout, a `manifest.json` list of images.

Written by `docker save` (Docker <= 24: `<hex>.json` configs and `<v1id>/layer.tar`;
Docker >= 25 adds an OCI layout and points manifest.json into `blobs/sha256/`),
`podman save --format docker-archive` (layers as `<sha>.tar` links) and skopeo's
`docker-archive:`.
"""
import os

from ..errors import BadImageDir, ContentMissing
from .imagedir import Image, Layer
from .names import check_relpath, digest_from_name, hex_of_digest, is_hex64, provenance

NAME = "docker-archive"
DAMAGED = "the manifest is damaged, save the image again"


def images(image_dir):
    manifest_path = image_dir.join("manifest.json")
    try:
        manifest = image_dir.read_json("manifest.json", f"{manifest_path}: missing")
    except ContentMissing:
        # DataLad annexes manifest.json too, but the configs' names (<hex>.json, links
        # kept in git) still say which images the directory holds.
        found = _images_by_config_name(image_dir, manifest_path)
        if not found:
            raise
        return found
    if isinstance(manifest, dict) and "schemaVersion" in manifest:
        raise BadImageDir(f"{manifest_path}: one image manifest (as skopeo's and podman's dir: layout write), "
                          "but the layout's 'version' file is missing; restore it, or save the image again")
    if not isinstance(manifest, list):
        raise BadImageDir(f"{manifest_path}: not a list of images; {DAMAGED}")
    if not manifest:
        raise BadImageDir(f"{manifest_path}: lists no image; save the image again")
    return [_image(image_dir, f"{manifest_path}: entry {i}", raw) for i, raw in enumerate(manifest)]


def _image(image_dir, where, raw):
    if not isinstance(raw, dict):
        raise BadImageDir(f"{where} is not an object; {DAMAGED}")
    config = raw.get("Config")
    if not isinstance(config, str) or not config:
        raise BadImageDir(f"{where} has no Config; {DAMAGED}")
    tags = raw.get("RepoTags")
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadImageDir(f"{where} has a malformed RepoTags; {DAMAGED}")
    paths = raw.get("Layers")
    if paths is None:
        paths = []
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise BadImageDir(f"{where} has a malformed Layers list; {DAMAGED}")
    for path in (config, *paths):
        check_relpath(path, where)
    # Docker >= 25 names each layer file after its digest as stored (gzip on the containerd store).
    layers = [Layer(path, "sha256:" + digest_from_name(path) if path.startswith("blobs/") and digest_from_name(path)
                    else None) for path in paths]
    return Image(image_dir, where, config, layers, tags, manifest_digests=_manifest_digest_in_index)


def _images_by_config_name(image_dir, manifest_path):
    try:
        names = sorted(n for n in os.listdir(image_dir.path) if n.endswith(".json") and is_hex64(n[:-5]))
    except OSError:
        return []
    return [Image(image_dir, f"{manifest_path}: absent", name, None, []) for name in names]


def _manifest_digest_in_index(image):
    """(digests, repo digests) of the manifest (or index) in index.json that describes
    `image` (Docker >= 25, docker-dir), with what docker-dir's annotations there record."""
    image_dir = image.image_dir
    if not os.path.exists(os.path.join(image_dir.real, "index.json")):
        return [], []
    index = image_dir.read_json("index.json", "index.json missing")
    if not isinstance(index, dict):
        return [], []
    want = image.config_digest()
    # Each blob is read once: descriptors naming each other, fanned out, would
    # otherwise cost width**depth reads.
    seen = set()
    for desc in _descriptors(index):
        if _describes(image_dir, desc, want, 0, seen):
            sources, repo_digests = provenance(desc)
            return [desc.get("digest"), *sources], repo_digests
    return [], []


def _descriptors(index):
    """The descriptor objects of an OCI index; none when "manifests" is not a list."""
    manifests = index.get("manifests")
    return [d for d in manifests if isinstance(d, dict)] if isinstance(manifests, list) else []


def _describes(image_dir, desc, config_hex, depth, seen):
    blob_hex = hex_of_digest(desc.get("digest"))
    if depth > 3 or blob_hex is None or blob_hex in seen:
        return False
    seen.add(blob_hex)
    rel = "blobs/sha256/" + blob_hex
    try:
        blob = image_dir.read_json(rel, f"{rel} missing")
    except (BadImageDir, ContentMissing):  # a damaged or dropped blob describes nothing
        return False
    if not isinstance(blob, dict):
        return False
    config = blob.get("config")
    if isinstance(config, dict) and config.get("digest") == "sha256:" + config_hex:
        return True
    return any(_describes(image_dir, child, config_hex, depth + 1, seen) for child in _descriptors(blob))
