"""What the commands share: one-line errors, closed standard streams, signals, progress.

No argparse here: docker-dir-id parses its common command lines without it. signal is
imported only when traps are set: with enum, it would be a large share of docker-dir-id's
start-up (bench/RESULTS.md); the annex recording, only with --annex-urls.
"""
import os
import sys
import time

from ..errors import CantWrite, DockerDirError, Interrupted


def _raise_interrupted(signum, frame):
    import signal

    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def trap_signals():
    """SIGTERM and SIGHUP unwind like SIGINT, so temp files and child engines are cleaned up."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)


def run(prog, parse, main, argv=None):
    """main(parse(argv)); our errors become one line on stderr and an exit code, with a
    traceback only when the parsed options asked for it (--debug before any CMD: a
    command's own --debug is the command's)."""
    argv = sys.argv[1:] if argv is None else argv
    reopen_closed_std_streams()
    args = None
    try:
        args = parse(argv)
        return main(args) or 0
    except DockerDirError as err:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# Standard streams closed when we were started (cron, some schedulers, `cmd <&- >&-`):
# Python then sets sys.stdin/stdout/stderr to None.
_CLOSED_AT_START = set()


def reopen_closed_std_streams():
    """Put /dev/null on the standard descriptors that were closed, before anything else
    opens a file: a lock file or a socket would otherwise become the engine's stdin or
    stdout. Messages to a closed stderr are dropped; output to a closed stdout is an
    error (print_output), as a result written nowhere is no success."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        _CLOSED_AT_START.add(name)
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if name == "stderr":
            sys.stderr = open(fd, "w", closefd=False)


def require_stdout():
    """A command whose result goes to stdout refuses to start without one (CantWrite, 73)."""
    if "stdout" in _CLOSED_AT_START:
        raise CantWrite("standard output is closed: nowhere to write the result; redirect it (> FILE)")


def print_output(text):
    """Write a command's result to stdout; a closed or failing stdout is CantWrite (73)."""
    require_stdout()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as err:
        raise CantWrite(f"cannot write to standard output ({err.strerror})") from None


def report_annexed(prog, directory, layer_urls, quiet):
    """--annex-urls: annex DIR, register the layers' registry URLs, say how many."""
    from ..application.annex import record_urls

    linked, kept = record_urls(directory, layer_urls)
    if not quiet:
        print(f"{prog}: {directory} annexed: {linked} layer(s) linked to their registry (git annex can drop and "
              f"get them), {kept} kept only in the annex", file=sys.stderr)


class Progress:
    """A live line on a TTY stderr ("label: 106 MB of 547 MB (19%), 25.7 MB/s, 4.1 s, 17 s
    left"), kept as one final line when done; silent when stderr is not a terminal.
    `waiting` says what the first byte waits for until it comes."""

    def __init__(self, label, total=None, waiting=None, enabled=True):
        self.label = label
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._shown = 0.0
        if self.enabled and waiting:
            self._write(f"{waiting}" + (f" ({human(total)})" if total else ""))

    def __call__(self, nbytes):
        self.done += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown >= 0.2:
            self._shown = now
            self._draw(now)

    def _write(self, text):
        sys.stderr.write(f"\r{self.label}: {text}\033[K")
        sys.stderr.flush()

    def _draw(self, now, final=False):
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        if not self.total:
            self._write(f"{human(self.done)}, {human(rate)}/s, {elapsed:.1f} s")
            return
        share = min(self.done / self.total, 1.0)
        text = f"{human(self.done)} of {human(self.total)} ({share:.0%}), {human(rate)}/s, {elapsed:.1f} s"
        if not final and elapsed >= 1 and self.done:  # earlier, a rate says little
            left = (self.total - self.done) / rate if self.done < self.total else 0.0
            text += f", {left:.0f} s left"
        self._write(text)

    def reset(self, total):
        """Count again from zero, towards another total (the whole image after a short one)."""
        self.done, self.total = 0, total

    def close(self):
        if self.enabled:
            self._draw(time.monotonic(), final=True)
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

    def transfer(self, label, total=None, waiting=None):
        return Progress(label, total, waiting, enabled=not self.quiet)


def human(nbytes):
    if nbytes < 1000:
        return f"{nbytes:.0f} B"
    for unit in ("kB", "MB"):
        nbytes /= 1000
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1000:.1f} GB"
