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

# Short engine commands (inspect, image exists, tag) answer in well under a second;
# this bounds a stuck daemon. process.py uses the same bound.
SHORT_TIMEOUT = 60


def find_program(name):
    """shutil.which, without the import of shutil (and bz2, lzma)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def run_check(argv, timeout=SHORT_TIMEOUT):
    """(exit status, stdout, stderr) of a short presence check, as text, or None when
    it did not answer within `timeout` seconds."""
    import subprocess

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
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
