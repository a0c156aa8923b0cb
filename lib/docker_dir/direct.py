"""The standard-library carve-out: the process calls of the hot paths.

The hot paths are docker-dir-id (no engine at all) and docker-dir-exec when the engine
already has the image: a presence check, then an execv of the engine's `run`. Every
other command runs programs through plumbum (process.py). Not these: `import plumbum`
costs more than either whole run (bench/RESULTS.md has the figures: the import, with
the `uname -p` child it spawns, against docker-dir-id's and the hot exec's own time).
So nothing here imports plumbum, or subprocess but for a CLI presence check (docker's
is a request on its socket instead: engine/docker_api.py); the run is an `os.execv`, so
the engine's client gets our stdin/stdout/stderr, signals and exit status with no
process in between. Imports inside functions below are that same saving.
"""
import os

# Short commands (inspect, image exists, tag, a credential helper) answer in well under
# a second; this only bounds a stuck daemon or program. process.py uses it too.
SHORT_TIMEOUT = 60

_PR_SET_PDEATHSIG = 1
_SIGKILL = 9


def find_program(name):
    """shutil.which, without the import of shutil (and bz2, lzma)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def die_with_parent(parent_pid):
    """A preexec_fn: the child gets SIGKILL when its parent dies (PR_SET_PDEATHSIG), so no
    engine command outlives a killed docker-dir. ctypes is imported here, by the callers
    that start a child."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec():
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def run_check(argv, timeout=SHORT_TIMEOUT):
    """(exit status, stdout, stderr) of a short presence check, as text, or None when
    it did not answer within `timeout` seconds. The check dies with us."""
    import subprocess

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              preexec_fn=die_with_parent(os.getpid()))
    except subprocess.TimeoutExpired:
        return None
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def replace_process(argv, env=None):
    """Become `argv` (os.execv, or execve with `env`): no child, nothing of ours left in between."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    if env is None:
        os.execv(argv[0], argv)
    os.execve(argv[0], argv, env)
