"""Tags of one registry repository, each saved into a directory of its own, PARENT/TAG
(docker-dir-mirror): the registry's tag list, the tags chosen from it, then one save per
tag (save.py: checked, moved into place only when complete).

The saves share one blob store on PARENT's file system, so a layer the tags share is
fetched once: the environment's store when it is there, else a temporary one inside
PARENT, removed at the end (the directories keep their links to its files). Tags are
saved one after the other, so the second finds what the first stored. A tag that fails
is reported and the others go on; a tag whose directory holds something is left alone
(unless forced), so a mirror run again adds only the new tags.
"""
import fnmatch
import os
import shutil
import signal
import time
from contextlib import contextmanager

from ..errors import CantWrite, DockerDirError, Interrupted, SelectionError, UsageError
from ..format.names import shown
from ..format.store import ENV as STORE_ENV
from ..format.store import BlobStore
from ..nodelocal import BuildDir, remove_abandoned
from ..registry.client import Registry
from ..registry.reference import Reference, check_tag
from . import QUIET, Reporter
from .save import FROM_ENVIRONMENT, RegistryImage, Selectors, save
from .store import blob_store

TEMP_STORE_MARK = ".docker-dir-mirror-"


class Mirrored:
    """What a mirror did: `saved` ({tag: Saved}), `skipped` (tags whose directory held
    something), `failed` ({tag: error}), `seconds`; `temporary_store` when the blob store
    the tags shared was one of its own; with --annex-urls, the layers `linked` to the
    registry and those `kept` only in the annex."""

    def __init__(self, source, skipped):
        self.source, self.skipped = source, skipped
        self.saved, self.failed = {}, {}
        self.temporary_store = False
        self.linked = self.kept = 0
        self.seconds = 0.0

    @property
    def fetched(self):
        return sum(saved.nbytes for saved in self.saved.values())

    @property
    def from_store(self):
        return sum(saved.from_store for saved in self.saved.values())


def repository_of(text):
    """The Reference of [HOST[:PORT]/]NAME (docker://'s rest): a repository, no tag, no digest."""
    ref = Reference.parse(text)
    name = text.partition("@")[0]
    if "@" in text or name.rfind(":") > name.rfind("/"):
        raise UsageError(f"docker://{shown(text)}: name a repository, without tag or digest: "
                         "docker://[HOST[:PORT]/]NAME (--tag and --tags-matching choose the tags)")
    return ref


def mirror(text, parent, tags=(), patterns=(), force=False, reporter=QUIET, selectors=Selectors(), insecure=(),
           write_gitattributes=False, annex_urls=False, store=FROM_ENVIRONMENT):
    """Save the tags of repository `text` ([HOST[:PORT]/]NAME) into PARENT/TAG: those named
    in `tags`, those matching a shell pattern of `patterns`, or (neither) all it lists.
    Nothing is written before the registry listed its tags and every tag asked for is
    there. `store` as save() takes it."""
    started = time.monotonic()
    ref = repository_of(text)
    source = f"docker://{ref.registry}/{ref.repository}"
    for tag in tags:
        check_tag(tag)
    _check_parent(parent)
    if annex_urls:
        from .annex import annex_root

        annex_root(parent if os.path.isdir(parent) else os.path.dirname(os.path.abspath(parent)))
    with Registry(ref.registry, insecure=insecure) as registry:
        registry.log_in(ref.repository)
        listed = registry.list_tags(ref.repository)
    chosen = choose(source, listed, tags, patterns)
    try:
        os.mkdir(parent)
    except FileExistsError:
        pass
    except OSError as err:
        raise CantWrite(f"{parent}: cannot create it ({err.strerror})") from None
    wanted = [tag for tag in chosen if force or not _holds_something(os.path.join(parent, tag))]
    mirrored = Mirrored(source, [tag for tag in chosen if tag not in wanted])
    if store is FROM_ENVIRONMENT:
        store = blob_store()
    if wanted:
        with _shared_store(parent, store, reporter) as (shared, temporary):
            mirrored.temporary_store = temporary
            save_options = dict(force=force, selectors=selectors, insecure=insecure,
                                write_gitattributes=write_gitattributes, store=shared)
            _save_each(ref, wanted, parent, mirrored, reporter, save_options, annex_urls)
    mirrored.seconds = time.monotonic() - started
    return mirrored


def choose(source, listed, tags, patterns):
    """The tags to mirror, sorted: those named in `tags` (each must be listed) and those
    matching one of `patterns` (each must match one); every listed tag when neither is given."""
    if not listed:
        raise SelectionError(f"{source} lists no tags; nothing to mirror")
    present = set(listed)
    missing = [tag for tag in tags if tag not in present]
    if missing:
        raise SelectionError(f"{source} has no tag {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; "
                             f"its {len(listed)} tags: {_examples(listed)}")
    chosen = set(tags)
    for pattern in patterns:
        matching = [tag for tag in listed if fnmatch.fnmatchcase(tag, pattern)]
        if not matching:
            raise SelectionError(f"no tag of {source} matches '{shown(pattern)}'; its {len(listed)} tags: "
                                 f"{_examples(listed)}")
        chosen.update(matching)
    return sorted(chosen if tags or patterns else present)


def _examples(tags, most=8):
    shown_tags = sorted(tags)[:most]
    return ", ".join(shown_tags) + (", …" if len(tags) > most else "")


def _check_parent(parent):
    """PARENT is a directory we may write, or one we may make."""
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise CantWrite(f"{parent}: exists and is not a directory; choose another PARENT")
    where = parent if os.path.isdir(parent) else os.path.dirname(os.path.abspath(parent))
    if not os.path.isdir(where):
        raise CantWrite(f"{parent}: its parent directory {where} does not exist; create it first")
    if not os.access(where, os.W_OK | os.X_OK):
        raise CantWrite(f"{where}: not writable")


def _holds_something(path):
    """A tag directory already there: a save without --force would refuse it (a file, a link
    or an empty directory goes to the save, which says what is wrong or fills it)."""
    return os.path.isdir(path) and not os.path.islink(path) and bool(os.listdir(path))


def _save_each(ref, tags, parent, mirrored, reporter, save_options, annex_urls):
    """One save per tag, one progress line for all of them; a tag's failure is reported and
    the next goes on; a signal stops them all (the tags saved stay, none is half-written)."""
    if annex_urls:
        from .annex import record_urls  # git, through plumbum: only with --annex-urls
    progress = reporter.transfer(f"mirroring {mirrored.source}")
    folded = _Folded(reporter, progress)
    current = f"{tags[0]} (1 of {len(tags)})"
    try:
        for number, tag in enumerate(tags, 1):
            current = f"{tag} ({number} of {len(tags)})"
            progress.relabel(f"mirroring {mirrored.source}, tag {number} of {len(tags)} ({tag})")
            target = os.path.join(parent, tag)
            saved = None
            try:
                saved = save([RegistryImage(f"{ref.registry}/{ref.repository}:{tag}")], target, reporter=folded,
                             **save_options)
                linked, kept = record_urls(target, saved.layer_urls) if annex_urls else (0, 0)
            except Interrupted:
                raise
            except DockerDirError as err:
                mirrored.failed[tag] = err
                reporter.failed(f"{tag}: saved in {target}, but {err}" if saved else f"{tag}: {err}")
                continue
            mirrored.saved[tag] = saved
            mirrored.linked += linked
            mirrored.kept += kept
    except (Interrupted, KeyboardInterrupt) as err:
        progress.cancel()
        signum = err.exit_code - 128 if isinstance(err, Interrupted) else signal.SIGINT
        said = str(err) if isinstance(err, Interrupted) else "interrupted by SIGINT"
        raise Interrupted(f"{said} while saving tag {current}; the {len(mirrored.saved)} tag(s) saved before stay: "
                          "run it again to add the rest", signum) from None
    except BaseException:
        progress.cancel()
        raise
    progress.close()


@contextmanager
def _shared_store(parent, store, reporter):
    """(the blob store the saves share, whether it is a temporary one): `store` when it is
    on PARENT's file system; else a hidden one in PARENT, removed at the end (the one a
    killed mirror left is removed by the next)."""
    if store is not None and store.same_file_system(parent):
        yield store, False
        return
    if store is not None:
        reporter.notice(f"the blob store {store.root} is on another file system than {parent}: the tags share their "
                        f"blobs through a temporary store in {parent} instead; set {STORE_ENV} to a directory on "
                        "that file system to share them with other directories too")
    remove_abandoned(parent, lambda name: name.startswith(TEMP_STORE_MARK), _remove_tree)
    with BuildDir(parent, TEMP_STORE_MARK, _remove_tree) as root:
        try:
            yield BlobStore(root), True
        finally:
            _remove_tree(root)


def _remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


class _Folded(Reporter):
    """What each save of a mirror reports, folded into the mirror's: their byte streams
    count on its one progress line."""

    def __init__(self, reporter, progress):
        self._reporter, self._progress = reporter, progress

    def waiting(self, message):
        self._reporter.waiting(message)

    def notice(self, message):
        self._reporter.notice(message)

    def failed(self, message):
        self._reporter.failed(message)

    def transfer(self, label, total=None, waiting=None):
        return _Share(self._progress)


class _Share:
    """One save's byte stream, counted on the mirror's progress line, which it never ends."""

    def __init__(self, whole):
        self._whole = whole
        self.done = 0

    def __call__(self, nbytes):
        self.done += nbytes
        self._whole(nbytes)

    def reset(self, total):
        self._whole(-self.done)
        self.done = 0

    def relabel(self, label):
        """The mirror's line keeps the mirror's label."""

    def close(self):
        """The mirror's line goes on."""

    def cancel(self):
        """The mirror's line goes on: the next tag counts on it."""
