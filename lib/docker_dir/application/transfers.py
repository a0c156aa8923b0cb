"""Blob transfers of a pull or a push: a few at a time, one progress line, and one way to
end. The first failure, or a signal, ends them all: transfers not started are cancelled,
those under way stop at their next read or progress report (they raise Stopped), and the
failure is raised at once, not after the transfers started before it finish.

Signals are the main thread's alone: the workers block those the commands trap, so the
kernel delivers them to the main thread, whose wait they interrupt (one delivered to a
worker would wait, unhandled, until every transfer had ended)."""
import signal
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

_MAIN_THREAD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """A transfer ends early: another failed, or the command was interrupted (the main
    thread says why)."""


class Transfers:
    """`with Transfers(...) as transfers:` submit tasks, then ask for their results."""

    def __init__(self, reporter, label, total=None, parallel=4):
        self._progress = reporter.transfer(label, total=total)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(parallel, initializer=signal.pthread_sigmask,
                                        initargs=(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS))

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None:
            self._stopping.set()
        # On failure, the tasks under way stop at their next read; waiting for them keeps
        # their files and connections from outliving the command's own cleanup.
        self._pool.shutdown(cancel_futures=kind is not None)
        if kind is None:
            self._progress.close()
        else:
            self._progress.cancel()

    @property
    def done(self):
        """Bytes transferred so far (net of bytes sent again)."""
        return self._progress.done

    def submit(self, work, *args):
        """A Future of work(*args), run by the pool."""
        def task():
            self.check()
            return work(*args)
        return self._pool.submit(task)

    def results(self, futures):
        """The futures' results in order, once all are done; the first failure is raised
        as soon as it happens."""
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # raises its failure, if it failed
        return [future.result() for future in futures]

    def counted(self, nbytes):
        """Report `nbytes` transferred (negative: taken back), from any thread; a transfer
        of a whole that is stopping stops here."""
        self.check()
        with self._lock:
            self._progress(nbytes)

    def check(self):
        """Raise Stopped once the whole is stopping."""
        if self._stopping.is_set():
            raise Stopped()

    def reader(self, raw):
        """The binary reader `raw`, whose reads stop once the whole is stopping."""
        return _Stoppable(raw, self)


class _Stoppable:
    def __init__(self, raw, transfers):
        self._raw, self._transfers = raw, transfers

    def read(self, size=-1):
        self._transfers.check()
        return self._raw.read(size)

    def close(self):
        self._raw.close()
