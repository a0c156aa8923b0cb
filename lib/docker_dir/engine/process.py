"""Engine commands through plumbum, off the hot path (see hot.py for the one exception).

Commands are plumbum command values (`local[binary][args]`); short ones run with an
expected `retcode`, streams through `popen`. A failure arrives as plumbum's
ProcessExecutionError (or ProcessTimedOut) and is turned into docker-dir's error
classes in one place, `failed`, by the engine's own reading of its stderr.
Every child dies with us (PR_SET_PDEATHSIG): a `docker save` or `load` left behind
by a killed docker-dir would keep the daemon exporting or importing for nobody.
"""
import os
import subprocess
import tempfile

from plumbum import local
from plumbum.commands.processes import ProcessExecutionError, ProcessTimedOut

from ..errors import EngineUnavailable

_PR_SET_PDEATHSIG = 1
_SIGKILL = 9


def command(binary, *args):
    return local[binary][args]


def _die_with_parent(parent_pid):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec():
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def failed(engine, err, doing):
    """The docker-dir error for a plumbum failure of one of `engine`'s commands."""
    if isinstance(err, ProcessTimedOut):
        return EngineUnavailable(f"{engine.name} did not answer while {doing}; {engine.start_hint}")
    stderr = err.stderr if isinstance(err.stderr, str) else (err.stderr or b"").decode(errors="replace")
    return engine.error(stderr, doing)


def run(engine, cmd, doing, retcode=0, timeout=60):
    """(exit status, stdout, stderr) of a short engine command; an unexpected status
    raises the engine's error."""
    try:
        return cmd.run(retcode=retcode, timeout=timeout, stdin=subprocess.DEVNULL,
                       preexec_fn=_die_with_parent(os.getpid()))
    except (ProcessExecutionError, ProcessTimedOut) as err:
        raise failed(engine, err, doing) from None
    except OSError as err:
        raise EngineUnavailable(f"cannot start {cmd}: {err.strerror}") from None


class Stream:
    """A running engine command streaming an archive: its stdout is read by the caller
    (save), or its stdin fed (load). stderr (and a load's stdout) go to anonymous
    temporary files, so no pipe fills while the caller works the other one."""

    def __init__(self, engine, cmd, doing, feed):
        self.engine = engine
        self.doing = doing
        self._outputs = [tempfile.TemporaryFile() for _ in range(2 if feed else 1)]
        try:
            self.proc = cmd.popen(stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                                  stdout=self._outputs[1] if feed else subprocess.PIPE, stderr=self._outputs[0],
                                  preexec_fn=_die_with_parent(os.getpid()))
        except OSError as err:
            self._close_outputs()
            raise EngineUnavailable(f"cannot start {engine.binary}: {err.strerror}") from None

    @property
    def stdin(self):
        return self.proc.stdin

    @property
    def stdout(self):
        return self.proc.stdout

    def _read(self, which):
        if which >= len(self._outputs):
            return b""
        stream = self._outputs[which]
        stream.seek(0)
        return stream.read()

    def _close_outputs(self):
        for stream in self._outputs:
            stream.close()

    def finish(self):
        """Wait for the engine; return its stdout (load) or raise its error."""
        self._close_pipes()
        try:
            self.proc.wait()
        except BaseException:
            self.abort()  # interrupted (signal): the engine's process must not outlive us
            raise
        stdout, stderr = self._read(1), self._read(0)
        self._close_outputs()
        try:
            self.proc.verify(0, None, stdout, stderr)
        except ProcessExecutionError as err:
            raise failed(self.engine, err, self.doing) from None
        return stdout.decode(errors="replace")

    def abort(self):
        """Stop the engine without waiting for it to finish its work."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._close_pipes()
        self.proc.wait()

    def _close_pipes(self):
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                try:
                    pipe.close()
                except OSError:  # BrokenPipeError: the engine stopped reading; its status says why
                    pass

    def failure(self):
        """After an abort: the engine's own complaint, if it made one."""
        stderr = self._read(0).decode(errors="replace")
        return self.engine.error(stderr, self.doing) if stderr.strip() else None
