"""Processes as /proc shows them, for tests that signal, kill and count processes.

    stat_of(pid) -> (state, ppid) or None once gone; state is "R", "S", "T", "Z"...
    state_of(pid) -> the state alone, or None once gone
    argv_of(pid) -> its command line as a list ([] once gone)
    children(pid) -> PIDs of its direct children (of its main thread)
    all_children(pid) -> PIDs of the children of all its threads (a Go daemon forks from any)
    wchan(pid) -> the kernel function its main thread sleeps in ("" if unknown)
    kernel_stack(pid) -> the kernel functions its main thread is in, innermost first ([] if unreadable)
    asleep_in(pid, functions) -> True while its main thread sleeps in one of `functions`
        (PIPE_WRITE, PIPE_READ, CHILD_WAIT, SOCKET_SEND, SOCKET_RECV)
    freeze(pid) -> SIGSTOP it and wait until every thread of it is stopped (or it is gone)
    thaw(pid) -> SIGCONT it (nothing if it is gone)
    alive(pid) -> True unless gone or a zombie
    wait_gone(pids, timeout) -> the PIDs still alive after waiting up to `timeout` s
"""
import os
import signal
import subprocess
import time
from pathlib import Path


def _stat(path):
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def stat_of(pid):
    return _stat(f"/proc/{pid}/stat")


def state_of(pid):
    stat = stat_of(pid)
    return stat and stat[0]


def argv_of(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def all_children(pid):
    found = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{thread}/children").read_text().split()]
        except OSError:
            pass
    return found


def wchan(pid):
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def kernel_stack(pid):
    try:
        lines = Path(f"/proc/{pid}/stack").read_text().splitlines()
    except OSError:  # not root, or a kernel without CONFIG_STACKTRACE: wchan alone
        return []
    return [line.split()[1].split("+")[0] for line in lines if len(line.split()) > 1]


# Where a task sleeps while it moves data, as the kernel names it. The wchan differs
# between kernels (helpers get inlined or renamed: pipe_write became anon_pipe_write);
# the stack holds the file or socket operation itself, called through a pointer and so
# never inlined (unix_stream_sendmsg / unix_stream_recvmsg).
PIPE_WRITE = ("pipe_write", "anon_pipe_write")
PIPE_READ = ("pipe_read", "anon_pipe_read", "pipe_wait", "pipe_wait_readable")
CHILD_WAIT = ("do_wait",)
SOCKET_SEND = ("unix_stream_sendmsg", "sock_alloc_send_pskb", "sock_wait_for_wmem")
SOCKET_RECV = ("unix_stream_recvmsg", "unix_stream_read_generic", "unix_stream_data_wait")


def asleep_in(pid, functions):
    if state_of(pid) != "S":
        return False
    return wchan(pid) in functions or any(name in functions for name in kernel_stack(pid))


def _threads_stopped(pid):
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return all((_stat(f"/proc/{pid}/task/{thread}/stat") or "X")[0] in "TtZX" for thread in threads)


def freeze(pid):
    """SIGSTOP reaches every thread, but not at once: wait until all of them stopped."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    while not _threads_stopped(pid):
        time.sleep(0.0002)


def thaw(pid):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = stat_of(pid)
    return state is not None and state[0] != "Z"


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    pids = list(pids)
    while True:
        pids = [pid for pid in pids if alive(pid)]
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def terminate(process, grace):
    """Stop a subprocess.Popen: SIGTERM, SIGKILL after `grace` seconds, reaped either way."""
    if alive(process.pid):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
