"""Application layer: what the commands do, between argument parsing (cli) and the
engines and registries it is handed.

save.py: one orchestration (build directory, atomic swap) over a module per source kind
(save_engine, save_directory, save_registry). pull.py and push.py: images from and to a
registry, their blobs through transfers.py; push_cache.py: what pushes remember.
mirror.py: tags of a registry repository, one save per tag.
exec.py: read the directory, choose and check the engine, make it hold the image.
load.py: give an engine an image once (node-local lock, presence check, tag or load).
id.py: describe an image directory, write the ID only when it changed. annex.py and
annex_remote.py: git-annex. None prints: they tell a `Reporter` (the cli passes one that
writes to the terminal), return what the cli shows, and raise docker-dir's errors.
"""


class Reporter:
    """What the application tells the user about; this one stays silent."""

    def waiting(self, message):
        """A wait on another process began (e.g. its load of the same image)."""

    def notice(self, message):
        """Something the user may want to know, said once (e.g. the blob store is elsewhere)."""

    def failed(self, message):
        """A part of the work failed and the rest goes on (a tag of a mirror): said even
        when the command is quiet, as errors are."""

    def transfer(self, label, total=None, waiting=None):
        """A byte stream of about `total` bytes begins, its first byte waiting for what
        `waiting` says; returns a callable taking byte counts, with reset(total),
        relabel(label), close() and cancel()."""
        return _Uncounted()


class _Uncounted:
    done = 0

    def __call__(self, nbytes):
        self.done += nbytes

    def reset(self, total):
        self.done = 0

    def relabel(self, label):
        """What the stream is called from now on (a mirror's tag k of n)."""

    def close(self):
        """The stream ended."""

    def cancel(self):
        """The stream failed: no final report."""


QUIET = Reporter()
