"""Processes as /proc shows them, for tests that signal, kill and count processes.

    stat_of(pid) -> (state, ppid) or None once gone; state is "R", "S", "T", "Z"...
    state_of(pid) -> the state alone, or None once gone
    argv_of(pid) -> its command line as a list ([] once gone)
    children(pid) -> PIDs of its direct children (of its main thread)
    wchan(pid) -> the kernel function its main thread sleeps in ("" if unknown)
    alive(pid) -> True unless gone or a zombie
    wait_gone(pids, timeout) -> the PIDs still alive after waiting up to `timeout` s
"""
import os
import time
from pathlib import Path


def stat_of(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


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


def wchan(pid):
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


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
