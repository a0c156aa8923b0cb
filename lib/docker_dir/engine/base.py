"""What docker-dir needs from a container engine, and the parts docker and podman share.

Presence checks and `run` argv use only the standard library: they sit on
docker-dir-exec's hot path, where importing plumbum would cost more than the
check itself. Streams (save, load) import plumbum when they start.
"""
import os

from ..errors import EngineFailed, EngineUnavailable

PRIVATE_REPO = "localhost/docker-dir"


def find_program(name):
    """shutil.which, without the import of shutil (and bz2, lzma) on exec's hot path."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


class Engine:
    """One container engine CLI. Subclasses set `name` and the hints below."""

    name = None
    start_hint = None

    def __init__(self, binary=None):
        self.binary = binary or find_program(self.name)
        if not self.binary:
            raise EngineUnavailable(f"{self.name} is not installed (not found on PATH); install it, "
                                    "or choose another engine with --engine or DOCKER_DIR_ENGINE")

    # -- references -------------------------------------------------------
    @staticmethod
    def private_ref(config_hex):
        """A tag only docker-dir sets: keeps the image from being dangling (pruned)
        and names it by content, so no user tag is ever re-pointed."""
        return f"{PRIVATE_REPO}:{config_hex}"

    # -- hot path (standard library only) ---------------------------------
    def _cli(self, *args, timeout=60):
        import subprocess  # not on the hot path when the engine's API answers directly

        try:
            return subprocess.run([self.binary, *args], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EngineUnavailable(f"{self.name} did not answer within {timeout} s; {self.start_hint}") from None

    def has_image(self, ref):
        raise NotImplementedError

    def inspect_id(self, ref):
        """The engine's ID for `ref`, or None when it has no such image."""
        proc = self._cli("image", "inspect", "--format", "{{.Id}}", ref)
        if proc.returncode == 0:
            return proc.stdout.decode().strip() or None
        if self.is_not_found(proc.stderr):
            return None
        raise self.error(proc.stderr, f"inspecting {ref}")

    def tag(self, source, target):
        proc = self._cli("tag", source, target)
        if proc.returncode:
            raise self.error(proc.stderr, f"tagging {source}")

    def run_argv(self, ref, options, command):
        return [self.binary, "run", *options, ref, *command]

    # -- errors -----------------------------------------------------------
    unreachable_markers = ()
    not_found_markers = ()

    def is_not_found(self, stderr):
        text = stderr.decode(errors="replace").lower()
        if any(m in text for m in self.unreachable_markers):
            return False
        return any(m in text for m in self.not_found_markers)

    def error(self, stderr, doing):
        """Turn an engine's stderr into one line, classified."""
        text = " ".join(stderr.decode(errors="replace").split())
        lowered = text.lower()
        if any(m in lowered for m in self.unreachable_markers):
            return EngineUnavailable(f"{self.name} engine not reachable while {doing}: {text} ({self.start_hint})")
        return EngineFailed(f"{self.name} failed while {doing}: {text or 'no message'}")

    # -- streams (plumbum) ------------------------------------------------
    def save_command(self, refs):
        raise NotImplementedError

    def load_command(self):
        from plumbum import local

        return local[self.binary]["load"]

    def save(self, refs):
        """A running `save` whose stdout is the archive stream."""
        return _Stream(self, self.save_command(refs), f"saving {' '.join(refs)}", want_stdin=False)

    def load(self, source):
        """A running `load` reading an archive (of `source`, for messages) on its stdin."""
        return _Stream(self, self.load_command(), f"loading {source}", want_stdin=True)


class _Stream:
    """A child process streaming an archive; collects stderr (and stdout) in threads
    so neither pipe fills while the caller works the other one."""

    def __init__(self, engine, command, doing, want_stdin):
        import subprocess
        import threading

        self.engine = engine
        self.doing = doing
        pipe = subprocess.PIPE
        try:
            self.proc = command.popen(stdin=pipe if want_stdin else subprocess.DEVNULL, stdout=pipe, stderr=pipe)
        except OSError as err:
            raise EngineUnavailable(f"cannot start {engine.binary}: {err.strerror}") from None
        self._out = {}
        readers = [("stderr", self.proc.stderr)] + ([("stdout", self.proc.stdout)] if want_stdin else [])
        self._threads = [threading.Thread(target=self._drain, args=(k, f), daemon=True) for k, f in readers]
        try:
            for thread in self._threads:
                thread.start()
        except BaseException:
            self.proc.kill()  # interrupted (signal) while starting: the engine must not outlive us
            self.proc.wait()
            raise

    def _drain(self, key, stream):
        self._out[key] = stream.read()

    @property
    def stdin(self):
        return self.proc.stdin

    @property
    def stdout(self):
        return self.proc.stdout

    def finish(self):
        """Wait for the engine; return its stdout (load) or raise its error."""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            code = self.proc.wait()
        except BaseException:
            self.abort()  # interrupted (signal): the engine's process must not outlive us
            raise
        for thread in self._threads:
            thread.join()
        if code:
            raise self.engine.error(self._out.get("stderr", b""), self.doing)
        return self._out.get("stdout", b"").decode(errors="replace")

    def abort(self):
        """Stop the engine without waiting for it to finish its work."""
        if self.proc.poll() is None:
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass
        self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def failure(self):
        """After an abort: the engine's own complaint, if it made one."""
        stderr = self._out.get("stderr", b"")
        return self.engine.error(stderr, self.doing) if stderr.strip() else None


def runtime_dir():
    """A node-local directory for locks (never the image dir: it may be shared or read-only)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        return os.path.join(base, "docker-dir")
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/docker-dir"
    return os.path.join("/tmp", f"docker-dir-{os.geteuid()}")
