"""Running programs, off the hot path: one function for short commands, one class for streams.

Both go through plumbum's public API (`local[program][args]`, `.run`, `.popen`, `<<`
for input). The hot path (direct.py) is the one place that does not: it says why.
Callers classify a failure themselves (an engine by its stderr, the registry client by
a credential helper's answer), so nothing here raises docker-dir's errors: a program
that cannot start raises OSError, one that does not finish in time NoAnswer.

Every child dies with us (PR_SET_PDEATHSIG): a `docker save` or `load` left behind
by a killed docker-dir would keep the daemon exporting or importing for nobody.
"""
import errno
import os
import subprocess
import tempfile

from plumbum import local
from plumbum.commands.processes import CommandNotFound, ProcessTimedOut

from .direct import SHORT_TIMEOUT, die_with_parent


class NoAnswer(Exception):
    """A short command did not finish within its timeout."""


def _command(argv):
    """plumbum's command value for argv; a program not on PATH is OSError, like a path that is not there."""
    try:
        return local[argv[0]][tuple(argv[1:])]
    except CommandNotFound:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0]) from None


def run(argv, timeout=SHORT_TIMEOUT, input=None, env=None):
    """(exit status, stdout, stderr) of a short command, as text; `input` (text) is its
    stdin, else /dev/null; `env` its whole environment, else ours. Any exit status
    returns: the caller knows which are failures."""
    cmd = _command(argv)
    kwargs = {"preexec_fn": die_with_parent(os.getpid())}
    if env is not None:
        kwargs["env"] = env
    if input is None:
        kwargs["stdin"] = subprocess.DEVNULL
    else:
        cmd = cmd << input
    try:
        return cmd.run(retcode=None, timeout=timeout, **kwargs)
    except ProcessTimedOut:
        raise NoAnswer(f"{argv[0]} did not answer within {timeout} s") from None


class Stream:
    """A running command whose stdout the caller reads (a save), or whose stdin it
    feeds (a load). stderr (and a fed command's stdout) go to anonymous temporary
    files, so no pipe fills while the caller works the other one."""

    def __init__(self, argv, feed):
        self._outputs = [tempfile.TemporaryFile() for _ in range(2 if feed else 1)]
        try:
            self.proc = _command(argv).popen(
                stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                stdout=self._outputs[1] if feed else subprocess.PIPE, stderr=self._outputs[0],
                preexec_fn=die_with_parent(os.getpid()))
        except OSError:
            self._close_outputs()
            raise

    @property
    def stdin(self):
        return self.proc.stdin

    @property
    def stdout(self):
        return self.proc.stdout

    def stderr(self):
        return self._read(0)

    def _read(self, which):
        if which >= len(self._outputs) or self._outputs[which].closed:
            return ""
        stream = self._outputs[which]
        stream.seek(0)
        return stream.read().decode(errors="replace")

    def _close_outputs(self):
        for stream in self._outputs:
            stream.close()

    def finish(self):
        """Wait for the command to end: (exit status, stdout, stderr), as text."""
        self._close_pipes()
        try:
            self.proc.wait()
        except BaseException:
            self.abort()  # interrupted (signal): the command must not outlive us
            raise
        result = self.proc.returncode, self._read(1), self._read(0)
        self._close_outputs()
        return result

    def abort(self):
        """Stop the command without waiting for it to finish its work; its stderr stays readable."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._close_pipes()
        self.proc.wait()

    def _close_pipes(self):
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                try:
                    pipe.close()
                except OSError:  # BrokenPipeError: the command stopped reading; its status says why
                    pass
