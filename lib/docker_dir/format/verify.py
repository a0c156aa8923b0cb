"""--verify: re-hash every file an image is made of, against every digest that names it.

Manifests and indexes against their descriptors; the config against its digest;
each layer as stored against the digest the layout names it by (compressed, for
OCI and dir: layouts) and, uncompressed, against the config's diff_id, in one read.
"""
import hashlib

from ..errors import BadImageDir, VerifyError
from ..fs import open_regular
from .compression import GZIP, ZSTD, BadLayerData, open_decompressed, sniff_compression
from .names import one_line, short
from .streams import CHUNK, HashingReader, sha256_file

CORRUPT = "the file is corrupt, save the image again"


def layer_digests(path, name):
    """(sha256 of the file as stored, sha256 of its uncompressed tar or the error that
    kept it from being decompressed), from one read."""
    try:
        raw = open_regular(path)
    except OSError as err:
        raise BadImageDir(f"{path}: cannot read ({err.strerror})") from None
    with raw:
        stored = HashingReader(raw)
        if sniff_compression(raw.peek(4)[:4]) not in (GZIP, ZSTD):
            digest = stored.drain()  # not compressed: the diff_id is the file's own digest
            return digest, digest
        uncompressed = hashlib.sha256()
        try:
            tar = open_decompressed(stored, name)
            while True:
                data = tar.read(CHUNK)
                if not data:
                    break
                uncompressed.update(data)
        except BadLayerData as err:
            return stored.drain(), err
        return stored.drain(), uncompressed.hexdigest()


def verify(image):
    image_dir = image.image_dir
    image.require_content()
    for relpath, hexd in image.json_blobs:
        _expect(image_dir.resolve(relpath), sha256_file(image_dir.resolve(relpath)), hexd, "its digest")
    config_path = image_dir.resolve(image.config_path)
    if image.config_hex:
        _expect(config_path, sha256_file(config_path), image.config_hex, "its digest")
    diff_ids = image.diff_ids()
    if diff_ids is not None and len(diff_ids) != len(image.layers):
        raise BadImageDir(f"{config_path}: lists {len(diff_ids)} diff_ids for {len(image.layers)} layers; "
                          "the image is damaged, save it again")
    for i, layer in enumerate(image.layers):
        path = image_dir.resolve(layer.path)
        diff_id = diff_ids[i] if diff_ids else None
        if layer.digest is None and diff_id is None:
            raise VerifyError(f"{image_dir.path}: no digest to check layer {layer.path} against; "
                              "the config lacks rootfs.diff_ids, save the image again")
        stored, uncompressed = layer_digests(path, path)
        if layer.digest:
            _expect(path, stored, layer.digest[7:], "its digest")
        if isinstance(uncompressed, BadLayerData):
            raise VerifyError(f"{one_line(uncompressed)}; {CORRUPT}")
        if diff_id is not None:
            _expect(path, uncompressed, diff_id[7:] if diff_id.startswith("sha256:") else diff_id,
                    "the config's diff_id" + (" (uncompressed)" if stored != uncompressed else ""))


def _expect(path, actual, expected, what):
    if actual != expected:
        raise VerifyError(f"{path}: content sha256:{short(actual)} does not match {what} "
                          f"sha256:{short(expected)}; {CORRUPT}")
