"""Save images into a directory, in the one layout docker-dir writes (format/canonical.py).

This module is the orchestration every source kind goes through: the target is checked,
each source is checked before anything is made, then every source adds its images to
one build directory (a hidden sibling of DIR), which is written out and moved into place
only when complete. The kinds are one module each: an engine's export (save_engine.py),
another image directory or archive (save_directory.py), a registry (pull.py, whose
client is imported only for docker:// sources: an engine's save does not pay for it).
"""
import os
import shutil
import time

from ..errors import CantWrite, UsageError
from ..format.canonical import Blobs, write_index_layout, write_layout
from ..format.imagedir import ImageDir
from ..format.store import ENV as STORE_ENV
from ..fs import move_into_place
from ..nodelocal import BuildDir, remove_abandoned
from ..signals import SignalLatch
from . import QUIET
from .save_registry import RegistryImage
from .save_directory import DirectoryImages
from .save_engine import EngineImage, engine_export
from .store import blob_store

__all__ = ["save", "Selectors", "EngineImage", "DirectoryImages", "RegistryImage", "Saved", "TEMP_MARK"]

TEMP_MARK = ".docker-dir-save-"
FROM_ENVIRONMENT = object()  # save()'s default store: the one $DOCKER_DIR_STORE or the cache names


class Selectors:
    """--repo-tag, --config, --platform, --all-platforms: which images of a source are saved."""

    def __init__(self, repo_tag=None, config=None, platform=None, all_platforms=False):
        self.repo_tag, self.config, self.platform, self.all_platforms = repo_tag, config, platform, all_platforms


class Build:
    """The build directory of one save, and what its sources added to it. A source's
    `add_to(build)` puts blobs in `blobs` (which takes them from the blob store when it
    holds them, and adds the others to it) and appends `entries` (or sets `index`, a whole
    multi-platform image), counting the bytes it received."""

    def __init__(self, tmp, target, reporter, selectors, insecure, store):
        self.tmp, self.target, self.reporter, self.selectors, self.insecure = tmp, target, reporter, selectors, insecure
        self.blobs = Blobs(tmp, store)
        self.entries = []
        self.index = None  # (OCI index bytes, repo tags)
        self.received = 0
        self.layer_urls = {}  # {path in DIR: docker-blob:// URL} of the layers pulled

    @property
    def replaced(self):
        """The directory this save replaces (--force), whose blobs a source may reuse; or None."""
        return self.target if os.path.isdir(self.target) else None


class Saved:
    """What a save wrote: the images' IDs, bytes received, seconds taken, the registry URLs
    of the layers pulled ({path in DIR: docker-blob:// URL}), and bytes taken from the
    blob store instead of received."""

    def __init__(self, ids, nbytes, seconds, layer_urls, from_store=0):
        self.ids, self.nbytes, self.seconds, self.layer_urls = ids, nbytes, seconds, layer_urls
        self.from_store = from_store


def save(sources, path, engine=None, force=False, reporter=QUIET, write_gitattributes=False,
         selectors=Selectors(), insecure=(), store=FROM_ENVIRONMENT):
    """Save the images `sources` name into directory `path`. `engine` exports the
    EngineImage sources (None when there are none); `insecure` registries may answer
    in plain HTTP; `store` is the BlobStore shared with other directories (None: none;
    by default the one the environment names)."""
    check_all_platforms(sources, selectors)
    parent = check_target(path, force)
    name = os.path.basename(os.path.abspath(path))
    planned = _planned(sources, engine)
    for source in planned:
        source.check()  # before anything is made: an engine that cannot save, an image it lacks
    if store is FROM_ENVIRONMENT:
        store = blob_store()
    remove_stale_temps(parent, name)
    started = time.monotonic()
    with SignalLatch() as latch, BuildDir(parent, f".{name}{TEMP_MARK}", _remove_tree) as tmp:
        build = Build(tmp, path, reporter, selectors, insecure, store)
        for source in planned:
            source.add_to(build)
        if build.index:
            write_index_layout(tmp, build.blobs, *build.index)
        else:
            write_layout(tmp, build.blobs, build.entries)
        os.chmod(tmp, 0o755)
        saved = ImageDir(tmp)
        ids = list(dict.fromkeys(image.image_id() for image in saved.images()))
        if write_gitattributes:
            with open(os.path.join(tmp, ".gitattributes"), "w", encoding="utf-8") as out:
                out.write(gitattributes(saved))
        latch.check()  # a signal whose exception was dropped stops us before the commit
        move_into_place(tmp, path, _remove_tree)
    if store is not None and not store.same_file_system(path):  # said on success only: an error is one line
        reporter.notice(f"the blob store {store.root} is on another file system than {path}: blobs are copied "
                        f"from it, not linked, and none is added to it; set {STORE_ENV} to a directory on the "
                        "same file system to share them")
    from_store = sum(build.blobs.from_store.values())
    return Saved(ids, build.received, time.monotonic() - started, build.layer_urls, from_store)


def _planned(sources, engine):
    """The sources in the order they are saved: the engine's images first, in one export."""
    refs = [source.ref for source in sources if isinstance(source, EngineImage)]
    others = [source for source in sources if not isinstance(source, EngineImage)]
    return ([engine_export(engine, refs)] if refs else []) + others


def check_all_platforms(sources, selectors):
    """--all-platforms keeps one registry index whole: it is the only source then."""
    if selectors.all_platforms and (len(sources) != 1 or not isinstance(sources[0], RegistryImage)):
        raise UsageError("--all-platforms keeps one registry image's whole index: give one docker:// SOURCE "
                         "(from a directory, choose a platform with --platform)")


def check_target(path, force):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CantWrite(f"{path}: parent directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CantWrite(f"{path}: parent directory {parent} is not writable")
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise CantWrite(f"{path}: exists and is not a directory; remove it or choose another DIR")
        if os.listdir(path) and not force:
            raise CantWrite(f"{path}: exists and is not empty; use --force to replace it")
    return parent


def _remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(parent, name):
    """Remove hidden temp dirs of earlier saves to the same DIR that were killed.
    A running save holds a lock on its temp dir, so it is left alone."""
    prefix = f".{name}{TEMP_MARK}"
    remove_abandoned(parent, lambda entry: entry.startswith(prefix), _remove_tree)


def gitattributes(image_dir):
    """Layers go to the annex; the small JSON files (manifest, config, index) stay in git."""
    lines = ["* annex.largefiles=nothing"]
    for image in image_dir.images():
        for layer in image.layers:
            lines.append(f"/{layer.path} annex.largefiles=anything")
    return "\n".join(dict.fromkeys(lines)) + "\n"
