"""What the three commands share: parser set-up, one-line errors, signals, progress."""
import argparse
import os
import signal
import sys
import time

from ..errors import EXIT_CODES_HELP, DockerDirError, Interrupted, UsageError


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        # With no width, argparse imports shutil (and bz2, lzma) on every run: ~2 ms
        # of docker-dir-id's budget, spent only to size a help text rarely shown.
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            width = 80
        super().__init__(prog, width=max(width, 40) - 2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) and the exit-code table in --help."""

    def __init__(self, prog, description, **kwargs):
        super().__init__(prog=prog, description=description, epilog=EXIT_CODES_HELP,
                         formatter_class=_Formatter, **kwargs)
        self.add_argument("--debug", action="store_true", help="show a traceback on errors")

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def add_selectors(parser):
    parser.add_argument("--repo-tag", metavar="NAME:TAG", help="pick the image saved with this tag")
    parser.add_argument("--config", metavar="PREFIX",
                        help="pick the image whose config digest starts with PREFIX (sha256: optional)")


def add_engine_option(parser):
    parser.add_argument("--engine", choices=("docker", "podman"),
                        help="container engine (default: $DOCKER_DIR_ENGINE, else docker if installed, else podman)")


def _raise_interrupted(signum, frame):
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def trap_signals():
    """SIGTERM and SIGHUP unwind like SIGINT, so temp files and child engines are cleaned up."""
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
        return 128 + signal.SIGINT
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


def human(nbytes):
    if nbytes < 1000:
        return f"{nbytes:.0f} B"
    for unit in ("kB", "MB"):
        nbytes /= 1000
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1000:.1f} GB"
