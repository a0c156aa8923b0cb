"""Run docker-dir-push in this process with its time accounted for (profile_push.py's probe).

usage: push_probe.py OUT LIB [docker-dir-push ARGS...]

Writes OUT/probe.json and OUT/THREAD.prof (one cProfile per thread, pstats' format).
The JSON holds: `start`, the probe's first instant, and `imported`, `ran`, the ends of the
import of docker_dir.cli.push and of its run (time.monotonic(), the clock the parent reads
too, so the interpreter's start-up is the time before `start`), `written`, when the
profiles were written (after that only the interpreter's exit); `requests`, every HTTP
request made (thread, method, host, target, status, bytes sent, start, end of sending,
when the answer's headers came, time inside sendall); `connects` (TCP connect and TLS
handshake, each timed); `threads` (name -> its profile file, first and last instant);
`missing`, the patch targets not found.

Everything is hooked at points both transports of docker-dir have in common (http.client
under its own code and under urllib3, the ssl and socket modules), never at docker-dir's
own private functions, so the probe measures the code of any revision alike:
- http.client.HTTPConnection.putrequest / getresponse: a request's start and its answer
  (urllib3's connection classes call them through super());
- ssl.SSLSocket.sendall, socket.socket.sendall: bytes sent and the time spent sending;
- socket.socket.connect, ssl.SSLSocket.do_handshake: connection set-up;
- threading.Thread.run: each thread runs under its own cProfile.Profile (cProfile only sees
  the thread that enabled it), so the C calls (compression, hashing, file and socket I/O)
  of every thread are timed. The hooks cost a few microseconds per call.
"""
import time

START = time.monotonic()

import _socket  # noqa: E402
import cProfile  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

OUT, LIB = sys.argv[1:3]
sys.argv = ["docker-dir-push"] + sys.argv[3:]
sys.path.insert(0, LIB)

requests = []
connects = []
threads = {}
missing = []
_local = threading.local()
_lock = threading.Lock()


def _thread_name():
    return threading.current_thread().name


def patch(owner, name, make):
    real = getattr(owner, name, None)
    if real is None:
        missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
        return
    setattr(owner, name, make(real))


def _putrequest(real):
    def putrequest(self, method, url, *args, **kwargs):
        record = {"thread": _thread_name(), "method": method, "host": f"{self.host}:{self.port}", "target": url,
                  "start": time.monotonic(), "sent": 0, "send_time": 0.0, "sent_end": None, "answer": None,
                  "status": None}
        _local.request = record
        with _lock:
            requests.append(record)
        return real(self, method, url, *args, **kwargs)
    return putrequest


def _getresponse(real):
    def getresponse(self, *args, **kwargs):
        record = getattr(_local, "request", None)
        if record is not None:
            record["sent_end"] = time.monotonic()
        try:
            response = real(self, *args, **kwargs)
        finally:
            if record is not None:
                record["answer"] = time.monotonic()
                _local.request = None
        if record is not None:
            record["status"] = response.status
        return response
    return getresponse


def _sendall(real, skip_tls=False):
    def sendall(self, data, *args, **kwargs):
        if skip_tls and isinstance(self, ssl.SSLSocket):
            return real(self, data, *args, **kwargs)  # counted by SSLSocket.sendall
        began = time.monotonic()
        try:
            return real(self, data, *args, **kwargs)
        finally:
            record = getattr(_local, "request", None)
            if record is not None:
                record["sent"] += len(memoryview(data).cast("B"))
                record["send_time"] += time.monotonic() - began
    return sendall


def _timed_setup(kind):
    def make(real):
        def setup(self, *args, **kwargs):
            began = time.monotonic()
            try:
                return real(self, *args, **kwargs)
            finally:
                with _lock:
                    connects.append({"thread": _thread_name(), "kind": kind, "start": began, "end": time.monotonic()})
        return setup
    return make


def _run(real):
    def run(self):
        profile = cProfile.Profile()
        first = time.monotonic()
        profile.enable()
        try:
            return real(self)
        finally:
            profile.disable()
            _keep(self.name, profile, first)
    return run


def _keep(name, profile, first):
    with _lock:
        file = f"thread-{len(threads)}.prof"
        key, n = name, 2
        while key in threads:  # push runs one "compress" thread per layer
            key, n = f"{name} ({n})", n + 1
        threads[key] = {"profile": file, "first": first, "last": time.monotonic()}
    profile.dump_stats(os.path.join(OUT, file))


patch(http.client.HTTPConnection, "putrequest", _putrequest)
patch(http.client.HTTPConnection, "getresponse", _getresponse)
patch(ssl.SSLSocket, "sendall", _sendall)
# socket.socket inherits these from _socket.socket: a Python-level override on the subclass
socket.socket.sendall = _sendall(_socket.socket.sendall, skip_tls=True)
socket.socket.connect = _timed_setup("TCP connect")(_socket.socket.connect)
patch(ssl.SSLSocket, "do_handshake", _timed_setup("TLS handshake"))
patch(threading.Thread, "run", _run)


def _exit_later(code):
    raise SystemExit(code)


def main():
    import docker_dir.cli.push as cli

    # A revision whose commands end with os._exit: the profiles are written first, then it ends as it would.
    real_exit = getattr(cli, "exit_now", None)
    if real_exit:
        cli.exit_now = _exit_later
    entry_point = cli.entry_point
    imported = time.monotonic()
    profile = cProfile.Profile()
    profile.enable()
    code = 0
    try:
        code = entry_point()
    except SystemExit as stop:
        code = stop.code
    finally:
        profile.disable()
        ran = time.monotonic()
        _keep("MainThread", profile, imported)
        with open(os.path.join(OUT, "probe.json"), "w") as out:
            json.dump({"start": START, "imported": imported, "ran": ran, "written": time.monotonic(),
                       "requests": requests, "connects": connects, "threads": threads, "missing": missing,
                       "exit": code}, out)
    if real_exit:
        real_exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
