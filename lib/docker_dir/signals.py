"""Signals that must not be lost while something is committed (a save's final swap).

The cli makes SIGINT, SIGTERM and SIGHUP raise (KeyboardInterrupt, errors.Interrupted),
so work unwinds and cleans up. But Python prints and drops an exception raised inside a
weakref callback or __del__ (an import's module-lock callback does that), and the work
would go on as if no signal had come. SignalLatch remembers every such signal, so the
work can stop before its commit.
"""
import signal
import sys

from .errors import Interrupted

CATCHABLE = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalLatch:
    """While the `with` block runs, catchable signals are remembered (their handlers
    still run) and a dropped Interrupted is not printed: it is reported once, by
    check(). Handlers and sys.unraisablehook are as before after the block."""

    def __init__(self):
        self.received = []
        self._handlers = {}
        self._hook = None

    def __enter__(self):
        for signum in CATCHABLE:
            handler = signal.getsignal(signum)
            if callable(handler):
                self._handlers[signum] = handler
                signal.signal(signum, self._remember)
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._quiet_about_signals
        return self

    def __exit__(self, *exc):
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._hook

    def _remember(self, signum, frame):
        self.received.append(signum)
        self._handlers[signum](signum, frame)

    def _quiet_about_signals(self, unraisable):
        if not isinstance(unraisable.exc_value, (Interrupted, KeyboardInterrupt)):
            self._hook(unraisable)

    def check(self):
        """Raise Interrupted if a signal came (its own exception may have been dropped)."""
        if self.received:
            signum = self.received[0]
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)
