"""The node-local cache of images unpacked for Charliecloud:

    $DOCKER_DIR_CACHE, default /var/tmp/docker-dir-UID   (the caller's, mode 0700: nodelocal.private_dir)
        <config hex>/                    one entry per image, renamed into place complete
            root/                        the image's tree (charliecloud_tree.py says what is added)
            run.json                     Entrypoint, Cmd and WorkingDir of the config
        .<config hex>.unpacking-XXXXXX/  an entry being built; its builder holds a flock on it.
                                         One nobody holds was interrupted: never used, and
                                         removed by the next unpack or prune
        .<config hex>.pruning-XXXXXX/    an entry being removed

application/load.py serializes the unpacks of one image on a node (its lock). An entry's
mtime is when an exec last used it (touched at most hourly): prune() removes the entries
older than N days. Readers (the hot path) are standard library only; json, which costs
the hot path milliseconds (re, enum), is imported by the writer of run.json only.
"""
import errno
import os
import stat
import time

from ..errors import EngineFailed
from ..fastjson import loads_json
from ..nodelocal import BuildDir, lock_dir, private_dir, remove_abandoned

CACHE_ENV = "DOCKER_DIR_CACHE"
ROOT = "root"
RUN_FILE = "run.json"
UNPACKING = ".unpacking-"
PRUNING = ".pruning-"
TOUCH_EVERY = 3600


def cache_dir():
    """The cache directory, made if missing, refused if it is not the caller's alone."""
    return private_dir(os.environ.get(CACHE_ENV) or f"/var/tmp/docker-dir-{os.geteuid()}", "cache directory",
                       f"set {CACHE_ENV} to a directory of your own")


def has_entry(cache, name):
    return os.path.isfile(os.path.join(cache, name, RUN_FILE))


def read_entry(cache, name):
    """(root, run settings, last used) of a complete entry."""
    entry = os.path.join(cache, name)
    try:
        with open(os.path.join(entry, RUN_FILE), "rb") as stream:
            run = loads_json(stream.read())
        used = os.stat(entry).st_mtime
    except (OSError, ValueError):
        raise EngineFailed(f"the unpacked image {entry} went away or is damaged (pruned meanwhile?); "
                           "run again to unpack it") from None
    return os.path.join(entry, ROOT), run, used


def mark_used(cache, name, used):
    """Move the entry's mtime to now, unless it moved within the hour (one stat per exec, not one write)."""
    if used < time.time() - TOUCH_EVERY:
        os.utime(os.path.join(cache, name))


def build_entry(cache, name, fill, remove_tree):
    """Make entry `name`: fill(tmp) writes it in a locked temporary directory, which is
    then renamed into place (what an interrupted build leaves is removed later)."""
    remove_stale(cache, remove_tree)
    with BuildDir(cache, f".{name}{UNPACKING}", remove_tree) as tmp:
        fill(tmp)
        _put_in_place(tmp, os.path.join(cache, name), cache, remove_tree)


def write_run_file(entry, settings):
    """run.json: what `docker run` takes from the config (Entrypoint, Cmd, WorkingDir)
    plus the Env entries that ch/environment cannot hold."""
    import json

    with open(os.path.join(entry, RUN_FILE), "w", encoding="utf-8") as out:
        json.dump(settings, out)


def prune(cache, days, remove_tree):
    """Remove the entries not used for `days` days, and what interrupted unpacks left:
    (entries removed, bytes freed)."""
    remove_stale(cache, remove_tree)
    cutoff = time.time() - days * 86400
    removed = freed = 0
    for name in os.listdir(cache):
        path = os.path.join(cache, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if name.startswith(".") or not stat.S_ISDIR(st.st_mode) or st.st_mtime >= cutoff:
            continue
        # Out of the way first: an exec arriving now unpacks afresh instead of using a half-removed tree.
        doomed, lock_fd = _move_aside(cache, name)
        if doomed is None:
            continue
        try:
            freed += _allocated(doomed)
            remove_tree(doomed)
            removed += 1
        finally:
            os.close(lock_fd)
    return removed, freed


def remove_stale(cache, remove_tree):
    """Remove the temporary entries of unpacks and prunes that were killed (nobody holds
    their flock); a live one is left alone."""
    remove_abandoned(cache, lambda name: name.startswith(".") and (UNPACKING in name or PRUNING in name),
                     remove_tree)


def _put_in_place(tmp, entry, cache, remove_tree):
    """Rename the finished entry into place. An incomplete one found there (a removal by
    hand that stopped half-way) goes first; a complete one (another node sharing the
    cache made it meanwhile) is kept and ours dropped."""
    if os.path.isdir(entry) and not os.path.isfile(os.path.join(entry, RUN_FILE)):
        broken, lock_fd = _move_aside(cache, os.path.basename(entry))
        if broken:
            try:
                remove_tree(broken)
            finally:
                os.close(lock_fd)
    try:
        os.rename(tmp, entry)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        remove_tree(tmp)


def _move_aside(cache, name):
    """(path, locked descriptor) of entry `name` renamed to a temporary name, or (None, None)."""
    path = os.path.join(cache, f".{name}{PRUNING}{os.urandom(6).hex()}")
    try:
        os.rename(os.path.join(cache, name), path)
    except FileNotFoundError:
        return None, None
    fd = lock_dir(path)
    return (path, fd) if fd is not None else (None, None)


def _allocated(path):
    """Bytes allocated below path, as du counts them (hardlinked files once)."""
    seen, total = set(), 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total
