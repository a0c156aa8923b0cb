"""Naming what a path holds when it is not an image directory docker-dir reads.

A user who gives the wrong thing should learn what it is and what to do, never be
told that a good file is damaged.
"""
import os

from ..errors import BadImageDir

SAVE_HINT = "save an image there with docker-dir-save"


def _head(path, size=512):
    try:
        with open(path, "rb") as stream:
            return stream.read(size)
    except OSError:
        return b""


def not_a_directory(path):
    head = _head(path)
    extract = f"extract it first (mkdir DIR && tar -xf {path} -C DIR) and give DIR"
    if len(head) >= 262 and head[257:262] == b"ustar":
        what = f"a tar archive (as 'docker save -o', 'podman save' or an oci-archive write), not a directory; {extract}"
    elif head[:2] == b"\x1f\x8b":
        what = f"a gzip-compressed file (a compressed image archive?), not a directory; {extract.replace('-xf', '-xzf')}"
    elif head[:4] == b"\x28\xb5\x2f\xfd":
        what = "a zstd-compressed file, not a directory; decompress and extract it, then give the directory"
    elif b"SIF_MAGIC" in head[:64]:
        what = ("a Singularity/Apptainer SIF image, which docker-dir does not read; build a Docker image and "
                "save it with docker-dir-save")
    elif head[:4] == b"hsqs":
        what = "a squashfs file system image, not a saved image directory"
    elif head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON file (a manifest?), not a directory; give the directory that holds it and its blobs"
    else:
        what = "not a directory; give the directory docker-dir-save wrote"
    return BadImageDir(f"{path}: {what}")


def unreadable_directory(path):
    """The error for a directory no reader claims."""
    try:
        names = set(os.listdir(path))
    except OSError as err:
        return BadImageDir(f"{path}: cannot list ({err.strerror})")
    if not names:
        return BadImageDir(f"{path}: empty directory; {SAVE_HINT}")
    if ".singularity.d" in names:
        return BadImageDir(f"{path}: a Singularity/Apptainer sandbox (an unpacked root file system), not a saved "
                           f"image; {SAVE_HINT}")
    if {"bin", "etc", "usr"} <= names or {"bin", "etc", "lib"} <= names:
        return BadImageDir(f"{path}: an unpacked root file system (as 'docker export' writes), not a saved image; "
                           f"{SAVE_HINT}")
    if "repositories" in names:
        return BadImageDir(f"{path}: a 'docker save' archive of Docker < 1.10 (no manifest.json), which no "
                           "engine here reads any more; save the image again with docker-dir-save")
    archives = sorted(n for n in names if n.endswith((".tar", ".tar.gz", ".tgz", ".sif", ".oci")))
    if len(names) == 1 and archives:
        return BadImageDir(f"{path}: holds only {archives[0]}, an archive; extract it and give the directory "
                           "it extracts to")
    return BadImageDir(f"{path}: no manifest.json or index.json, not an image directory; {SAVE_HINT}")
