"""What every command does around its work: one-line errors and exit codes, closed
standard streams, signals. What they tell the user as they go is reporting.py's.

No argparse here: docker-dir-id parses its common command lines without it. signal is
imported only when traps are set: with enum, it would be a large share of docker-dir-id's
start-up (bench/RESULTS.md).
"""
import os
import sys

from ..errors import CantWrite, DockerDirError, Interrupted


def _raise_interrupted(signum, frame):
    import signal

    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def trap_signals():
    """SIGTERM and SIGHUP unwind like SIGINT, so temp files and child engines are cleaned up."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)


def exit_now(code):
    """End the process with `code` once stdout and stderr are flushed, without Python's
    teardown of every module imported (20-55 ms at the end of each command, bench/README.md):
    no command leaves work to atexit handlers or finalizers; what it writes is closed or
    flushed by then (print_output flushes, and says when stdout fails)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or None: said already, or nowhere to say
            pass
    os._exit(code)


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
