"""The standard-library carve-out: what docker-dir-exec does when the engine already
has the image (presence check, then execv of the engine's `run`).

Every other engine command goes through plumbum (engine/process.py). Not these:
`import plumbum` costs 130-190 ms on these machines (55 ms of imports plus a
`uname -p` child it runs at import), where the whole hot path of docker-dir-exec
takes ~12 ms before it execs the engine (bench/RESULTS.md), and docker-dir-id, which
never touches an engine, ~10 ms. So the hot path imports none of plumbum,
subprocess, socket.py, json or argparse: presence is asked over the daemon's unix
socket (docker) or, where there is none, by one `subprocess.run` of the engine CLI
imported only then; the run is an `os.execv`, so the engine's client gets our
stdin/stdout/stderr, signals and exit status without a process in between.
"""
import os

def find_program(name):
    """shutil.which, without the import of shutil (and bz2, lzma)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def quick_run(argv, timeout):
    """(exit status, stdout bytes, stderr bytes) of a short engine command, or None when
    it did not answer within `timeout` seconds."""
    import subprocess

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return proc.returncode, proc.stdout, proc.stderr


def unix_get(sock_path, path, timeout=10):
    """(status, body) of an HTTP GET over a unix socket, or None if it cannot be asked.
    A bare HTTP/1.0 request (the server closes after answering): engine CLIs take tens
    of milliseconds to answer the same question."""
    try:
        # The C module under socket.py, which costs the hot path 5 ms (enum, selectors).
        from _socket import AF_UNIX, SOCK_STREAM, socket
    except ImportError:  # not CPython
        from socket import AF_UNIX, SOCK_STREAM, socket

    chunks = []
    conn = socket(AF_UNIX, SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(sock_path)
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        conn.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1]), body


def replace_process(argv):
    """Become `argv` (os.execv): no child, nothing of ours left in between."""
    import sys

    sys.stdout.flush()
    os.execv(argv[0], argv)
