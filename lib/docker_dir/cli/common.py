"""What the three commands share: one-line errors, signals, progress.

No argparse here: docker-dir-id parses its common command lines without it.
"""
import os
import sys
import time

from ..errors import DockerDirError, Interrupted


def _raise_interrupted(signum, frame):
    import signal

    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def trap_signals():
    """SIGTERM and SIGHUP unwind like SIGINT, so temp files and child engines are cleaned up."""
    import signal  # here, not at the top: it imports enum, 4 ms of docker-dir-id's budget

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)


def run(prog, main, argv=None):
    """Run main(argv); turn our errors into one line on stderr and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return main(argv) or 0
    except DockerDirError as err:
        if debug:
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


class Progress:
    """A live 'bytes, rate, elapsed' line on a TTY stderr; silent otherwise."""

    def __init__(self, label, enabled=True):
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._shown = 0.0

    def __call__(self, nbytes):
        self.done += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown >= 0.2:
            self._shown = now
            self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self.start, 1e-6)
        sys.stderr.write(f"\r{self.label}: {human(self.done)}, {human(self.done / elapsed)}/s, "
                         f"{elapsed:.1f} s\033[K")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def cancel(self):
        self.enabled = False


class TerminalReporter:
    """The application layer's reports (application.Reporter), on stderr unless quiet."""

    def __init__(self, prog, quiet=False):
        self.prog = prog
        self.quiet = quiet

    def waiting(self, message):
        if not self.quiet:
            print(f"{self.prog}: {message}", file=sys.stderr)

    def transfer(self, label, total=None):
        return Progress(label, enabled=not self.quiet)


def human(nbytes):
    if nbytes < 1000:
        return f"{nbytes:.0f} B"
    for unit in ("kB", "MB"):
        nbytes /= 1000
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1000:.1f} GB"
