#!/usr/bin/env python3
"""Issue 22: `docker-dir-push DIR docker://REG/NAME:TAG` of the bench image (saved first with
docker-dir-save) against `skopeo copy --dest-compress dir:… docker://…` (the same image as
skopeo's dir: layout, gzip like docker-dir) and against `docker push` (which gzips too), to a
loopback registry (Debian's docker-registry, plain HTTP); then a re-push after a 1 MiB new
top layer, counting the bytes each client sends.

Every timed run pushes into a registry started for it (untimed), so no client can mount or
skip a blob a run before left there, and nothing in it is cached by anyone: docker-dir gets
an empty XDG_CACHE_HOME (it compresses every layer), skopeo's blob-info cache
(/var/lib/containers/cache/blob-info-cache-v1.boltdb) is removed, docker push finds a
registry it never saw. A second figure, labelled "caches warm", pushes the unchanged image
to a new repository of a registry the client already pushed it to: all three then mount.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

from benchlib import (bench_image, docker_dir, interleaved, median, quick_mode, rebuilt_image, row, run_timed,
                      workdir, write_results)

SKOPEO_CACHE = "/var/lib/containers/cache/blob-info-cache-v1.boltdb"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackRegistry:
    """`docker-registry serve` on a free 127.0.0.1 port with its own storage (plain HTTP:
    docker, and docker-dir, speak it to loopback hosts without configuration)."""

    def __init__(self, root):
        self.dir = tempfile.mkdtemp(prefix="registry-", dir=root)
        self.process = None
        self.port = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        for _attempt in range(5):
            self.port = free_port()
            config = {"version": 0.1, "log": {"level": "error"},
                      "storage": {"filesystem": {"rootdirectory": os.path.join(self.dir, "storage")},
                                  "delete": {"enabled": True}},
                      "http": {"addr": self.host, "secret": os.urandom(16).hex()}}
            path = os.path.join(self.dir, "config.yml")
            with open(path, "w") as out:
                json.dump(config, out)  # JSON is YAML
            log = open(os.path.join(self.dir, "log"), "ab")
            self.process = subprocess.Popen(["docker-registry", "serve", path], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            log.close()
            if self._ready():
                return self
        raise RuntimeError(f"docker-registry did not start: see {self.dir}/log")

    def _ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # its port was taken meanwhile: another one
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry on {self.host} did not answer within 30 s")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class CountingRelay:
    """A TCP relay on a free loopback port in front of a registry, counting the bytes clients
    send through it (HTTP headers included): what a push costs on the wire."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.sent = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source, sink, counted):
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if counted:
                    with self.lock:
                        self.sent += len(data)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


def forget_skopeo_cache():
    try:
        os.unlink(SKOPEO_CACHE)
    except FileNotFoundError:
        pass


def run_quiet(argv, **kwargs):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          **kwargs)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")


class Contenders:
    """The three ways to push one image (docker-dir's DIR, skopeo's dir:, the engine's ref)."""

    NAMES = ("docker-dir", "skopeo", "docker push")

    def __init__(self, work, ref, image_dir, skopeo_dir):
        self.work, self.ref, self.image_dir, self.skopeo_dir = work, ref, image_dir, skopeo_dir

    def argv(self, name, host, repo_tag, cache):
        if name == "docker-dir":
            return docker_dir("push", "-q", self.image_dir, f"docker://{host}/{repo_tag}"), \
                {"env": {**os.environ, "XDG_CACHE_HOME": cache}}
        if name == "skopeo":
            return ["skopeo", "copy", "-q", "--dest-compress", "--dest-tls-verify=false", f"dir:{self.skopeo_dir}",
                    f"docker://{host}/{repo_tag}"], {}
        return ["docker", "push", f"{host}/{repo_tag}"], {}

    def push(self, name, host, repo_tag, cache, timed=True):
        """Wall time of one push (docker push: tagged first, untagged after, both untimed)."""
        if name == "docker push":
            run_quiet(["docker", "tag", self.ref, f"{host}/{repo_tag}"])
        argv, kwargs = self.argv(name, host, repo_tag, cache)
        try:
            return run_timed(argv, **kwargs) if timed else run_quiet(argv, **kwargs)
        finally:
            if name == "docker push":
                run_quiet(["docker", "rmi", f"{host}/{repo_tag}"])


def main():
    quick = quick_mode()
    layers = [8] * 4 if quick else [130] * 4
    runs = 2 if quick else 5
    for tool in ("docker-registry", "skopeo"):
        if not shutil.which(tool):
            raise SystemExit(f"bench_push needs {tool} (the Debian package of that name)")
    with bench_image(layers) as (ref, image_id, image_size), workdir("push") as work:
        image_dir = os.path.join(work, "image")
        run_quiet(docker_dir("save", "-q", ref, image_dir))
        skopeo_dir = os.path.join(work, "skopeo-dir")
        # skopeo's own layout of the same image: the engine's config, layers uncompressed
        run_quiet(["skopeo", "copy", "-q", "--format", "v2s2", f"docker-daemon:{ref}", f"dir:{skopeo_dir}"])
        contenders = Contenders(work, ref, image_dir, skopeo_dir)
        names = Contenders.NAMES
        print(f"bench_push: image {image_size / 1e6:.0f} MB ({len(layers)} random layers of {layers[0]} MiB on "
              f"busybox), {runs} interleaved runs each after 1 warm-up, a new registry per run", flush=True)

        # 1. cold: a new registry per run, no client cache
        registry = {}

        def before_cold(name):
            if registry:
                registry.pop("current").stop()
            registry["current"] = LoopbackRegistry(work).start()
            if name == "skopeo":
                forget_skopeo_cache()

        def cold(name):
            cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=work)
            try:
                return contenders.push(name, registry["current"].host, "bench/image:1", cache)
            finally:
                shutil.rmtree(cache, ignore_errors=True)

        cpu = {}
        try:
            times = interleaved({name: (lambda n=name: cold(n)) for name in names}, runs, before_each=before_cold,
                                cpu=cpu)
        finally:
            if registry:
                registry.pop("current").stop()

        # 2. caches warm: the same image to a new repository of a registry each client pushed it to
        with LoopbackRegistry(work) as warm_registry:
            warm_cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=work)
            forget_skopeo_cache()
            for name in names:
                contenders.push(name, warm_registry.host, "bench/first:1", warm_cache, timed=False)
            counter = {"n": 0}

            def warm(name):
                counter["n"] += 1
                return contenders.push(name, warm_registry.host, f"bench/warm-{counter['n']}:1", warm_cache)

            warm_times = interleaved({name: (lambda n=name: warm(n)) for name in names}, runs)

        # 3. a re-push after a 1 MiB new top layer, through a byte-counting relay
        repush_bytes = {}
        with rebuilt_image(ref, 1) as (new_ref, _new_id):
            new_dir = os.path.join(work, "rebuilt")
            run_quiet(docker_dir("save", "-q", new_ref, new_dir))
            new_skopeo_dir = os.path.join(work, "rebuilt-skopeo-dir")
            run_quiet(["skopeo", "copy", "-q", "--format", "v2s2", f"docker-daemon:{new_ref}",
                       f"dir:{new_skopeo_dir}"])
            rebuilt = Contenders(work, new_ref, new_dir, new_skopeo_dir)
            new_layer = None
            for name in names:
                with LoopbackRegistry(work) as target:
                    relay = CountingRelay(target.port)
                    cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=work)
                    forget_skopeo_cache()
                    try:
                        contenders.push(name, relay.host, "bench/app:1", cache, timed=False)
                        before = relay.sent
                        rebuilt.push(name, relay.host, "bench/app:1", cache, timed=False)
                        repush_bytes[name] = relay.sent - before
                        if name == "docker-dir":
                            new_layer = top_layer_size(target.host, "bench/app", "1")
                    finally:
                        relay.close()
                        shutil.rmtree(cache, ignore_errors=True)

    med = {n: median(times[n]) for n in names}
    warm_med = {n: median(warm_times[n]) for n in names}
    cpu_note = ", ".join(f"{n} {median(cpu[n]):.2f} s" for n in names)
    size_note = f"{image_size / 1e6:.0f} MB image, {len(layers) + 1} layers, gzip"
    cold_note = (f"{runs} runs, median; each run into a registry started for it; docker-dir with an empty "
                 "XDG_CACHE_HOME every run (its cache of compressed digests would spare it the compression of "
                 "layers a registry already has), skopeo's blob-info cache removed before each run, skopeo "
                 "reading its own dir: copy of the image (uncompressed layers); fastest run: "
                 + ", ".join(f"{n} {min(times[n]):.2f} s" for n in names)
                 + f"; median client CPU (user+sys; docker push's work is in dockerd, not counted): {cpu_note}")
    rows = [
        row(f"push wall time, cold ({size_note})", "s", med["docker-dir"], med["skopeo"], None, goal=1.0,
            baseline="skopeo copy --dest-compress", note=cold_note),
        row(f"push wall time, cold, vs docker push ({size_note})", "s", med["docker-dir"], med["docker push"], None,
            baseline="docker push", note="the same runs as the row above"),
        row("push wall time, caches warm: the unchanged image to a new repository", "s", warm_med["docker-dir"],
            warm_med["skopeo"], None, baseline="skopeo copy (cache kept)",
            note=f"{runs} runs, median, one registry each client already pushed the image to: docker-dir "
                 "(its cache kept), skopeo (its blob-info cache kept) and docker push all mount every blob "
                 f"instead of sending it; docker push {warm_med['docker push']:.2f} s"),
        row("re-push after a 1 MiB new top layer: bytes sent", "bytes", repush_bytes["docker-dir"], new_layer, None,
            goal=1.1, baseline="the new layer, gzipped",
            note=f"request bytes through a counting TCP relay, HTTP headers included, each client re-pushing "
                 f"to the repository it pushed the old image to: docker-dir {repush_bytes['docker-dir']} B, "
                 f"skopeo {repush_bytes['skopeo']} B (its blob-info cache kept from the first push), docker push "
                 f"{repush_bytes['docker push']} B; the new layer is {new_layer} B gzipped"),
    ]
    write_results("push", rows, {"runs": runs, "layers_mib": layers, "image_size": image_size, "times": times,
                                 "cpu": cpu, "warm_times": warm_times, "repush_bytes": repush_bytes,
                                 "new_layer": new_layer})


def top_layer_size(host, repo, tag):
    request = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["layers"][-1]["size"]


if __name__ == "__main__":
    main()
