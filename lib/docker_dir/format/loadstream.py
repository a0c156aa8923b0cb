"""The docker-archive stream an engine's `load` takes, written on the fly from an image
of any layout: a manifest.json naming only docker-dir's private tag, the config and the
layers (those the engine holds left out or sent empty). No temporary file.
"""
import io
import json
import os
import tarfile

from ..fs import open_regular
from .streams import CountingReader


def load_stream_members(image, held=0, placeholders=False):
    """(member name, path in DIR) of the config and each distinct layer, in the order
    a docker-archive lists them: config first. Files named by digest get docker's own
    names (`<hex>.json`, `<hex>.tar`), whatever the layout called them.

    The first `held` layers are ones the engine already has: their files are left out,
    or with `placeholders` sent as empty files (path None), unless a later layer uses
    the same file."""
    members = {(f"{image.config_hex}.json" if image.config_hex else image.config_path): image.config_path}
    needed = {_layer_member(layer) for layer in image.layers[held:]}
    for i, layer in enumerate(image.layers):
        name = _layer_member(layer)
        if name in members:
            continue
        if i >= held or name in needed:
            members[name] = layer.path
        elif placeholders:
            members[name] = None
    return list(members.items())


def bytes_to_send(image, held=0, placeholders=False):
    """The size of the files a load stream of `image` carries (without tar headers)."""
    return image.size_of(relpath for _, relpath in load_stream_members(image, held, placeholders) if relpath)


def _layer_member(layer):
    return f"{layer.digest[7:]}.tar" if layer.digest else layer.path


def write_load_stream(image, out, repo_tags, on_bytes=None, held=0, placeholders=False):
    """Write the docker-archive tar every engine's `load` takes for one image, whatever
    layout it came from: a manifest.json naming only `repo_tags`, and the files
    (see load_stream_members for `held` and `placeholders`)."""
    image_dir = image.image_dir
    members = load_stream_members(image, held, placeholders)
    manifest = json.dumps([{"Config": members[0][0], "RepoTags": list(repo_tags) or None,
                            "Layers": [_layer_member(layer) for layer in image.layers]}]).encode()
    sink = _Sink(out)
    tar = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)
    try:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for name, relpath in members:
            if relpath is None:
                info = tarfile.TarInfo(name)
                info.mode = 0o644
                tar.addfile(info)
                continue
            with open_regular(image_dir.resolve(relpath)) as src:
                info = tarfile.TarInfo(name)
                info.size = os.fstat(src.fileno()).st_size
                info.mode = 0o644
                tar.addfile(info, CountingReader(src, on_bytes) if on_bytes else src)
    except BaseException:
        sink.stop()
        raise
    tar.close()


class _Sink:
    """The engine's stdin, until an error: then tarfile's closing flush (also run when
    it is garbage-collected) writes nothing, as a stalled engine would block it forever
    and leave a signal unanswered."""

    def __init__(self, out):
        self.out = out

    def write(self, data):
        if self.out is not None:
            self.out.write(data)

    def stop(self):
        self.out = None
