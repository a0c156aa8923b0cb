#!/usr/bin/env python3
"""Issues 22 and 26: `docker-dir-push DIR docker://REG/NAME:TAG` (DIR saved first with
docker-dir-save) against `skopeo copy --dest-compress dir:… docker://…` (the same image as
skopeo's dir: layout, gzip like docker-dir) and, on the bench image, against `docker push`
(which gzips too), to a loopback TLS registry (Debian's docker-registry, a throwaway CA
that docker-dir and skopeo both find in /etc/docker/certs.d: registrylib.py). Two image
shapes: the 547 MB bench image (5 layers) and 150 MiB of one layer on busybox. Then, on
the bench image, a re-push after a 1 MiB new top layer, counting the bytes each client
sends (plain HTTP, so the count is HTTP's alone).

Every cold run pushes into a registry started for it (untimed), so no client can mount or
skip a blob a run before left there, and nothing in it is cached by anyone: docker-dir gets
an empty XDG_CACHE_HOME (it compresses every layer), skopeo's blob-info cache
(/var/lib/containers/cache/blob-info-cache-v1.boltdb) is removed, docker push finds a
registry it never saw. "Caches warm" pushes the unchanged image to a new repository of a
registry the client already pushed it to, caches kept: all of them then mount.

usage: bench_push.py [--shape 5-layer|1-layer ...]   (default: both; results/push.json holds
the 5-layer rows, results/push-1layer.json the 1-layer ones)
"""
import os
import shutil
import subprocess
import tempfile

from benchlib import (bench_image, docker_dir, interleaved, load_note, median, quick_mode, rebuilt_image,
                     row, run_timed, write_results)
from registrylib import CountingRelay, LoopbackRegistry, client_env, forget_skopeo_cache, main_over_shapes



def run_quiet(argv, **kwargs):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          **kwargs)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")


class Contenders:
    """The ways to push one image (docker-dir's DIR, skopeo's dir:, the engine's ref)."""

    def __init__(self, ref, image_dir, skopeo_dir):
        self.ref, self.image_dir, self.skopeo_dir = ref, image_dir, skopeo_dir

    def argv(self, name, registry, repo_tag, cache):
        target = f"docker://{registry.host}/{repo_tag}"
        if name == "docker-dir":
            return docker_dir("push", "-q", self.image_dir, target), {"env": client_env(XDG_CACHE_HOME=cache)}
        if name == "skopeo":
            # TLS verified with the CA in certs.d, as docker-dir does; plain HTTP needs the flag
            tls = [] if registry.ca else ["--dest-tls-verify=false"]
            return ["skopeo", "copy", "-q", "--dest-compress", *tls, f"dir:{self.skopeo_dir}", target], \
                {"env": client_env()}
        return ["docker", "push", f"{registry.host}/{repo_tag}"], {}

    def push(self, name, registry, repo_tag, cache, timed=True):
        """Wall time of one push (docker push: tagged first, untagged after, both untimed)."""
        if name == "docker push":
            run_quiet(["docker", "tag", self.ref, f"{registry.host}/{repo_tag}"])
        argv, kwargs = self.argv(name, registry, repo_tag, cache)
        try:
            return run_timed(argv, **kwargs) if timed else run_quiet(argv, **kwargs)
        finally:
            if name == "docker push":
                run_quiet(["docker", "rmi", f"{registry.host}/{repo_tag}"])


class _Relayed:
    """A registry as seen through a CountingRelay (what Contenders.push needs of it)."""

    def __init__(self, relay, registry):
        self.host, self.ca = relay.host, registry.ca


def main():
    main_over_shapes("push", __doc__.split("\n\n")[0], measure_shape)


def measure_shape(shape, layers, work, ca):
    quick = quick_mode()
    bench_shape = shape == "5-layer"  # the bench image: docker push and the re-push there too
    names = ("docker-dir", "skopeo", "docker push") if bench_shape else ("docker-dir", "skopeo")
    runs = 2 if quick else (5 if bench_shape else 7)
    with bench_image(layers) as (ref, image_id, image_size):
        image_dir = os.path.join(work, f"image-{shape}")
        run_quiet(docker_dir("save", "-q", ref, image_dir))
        skopeo_dir = os.path.join(work, f"skopeo-dir-{shape}")
        # skopeo's own layout of the same image: the engine's config, layers uncompressed
        run_quiet(["skopeo", "copy", "-q", "--format", "v2s2", f"docker-daemon:{ref}", f"dir:{skopeo_dir}"])
        contenders = Contenders(ref, image_dir, skopeo_dir)
        label = (f"{image_size / 1e6:.0f} MB image, {len(layers) + 1} layers" if bench_shape else
                 f"{image_size / 1e6:.0f} MB image, one {layers[0]} MiB layer on busybox")
        print(f"bench_push [{shape}]: {label} (random bytes), {runs} interleaved runs each after 1 warm-up, "
              "a new TLS registry per cold run", flush=True)

        # 1. cold: a new registry per run, no client cache
        registry = {}

        def before_cold(name):
            if registry:
                registry.pop("current").stop()
            registry["current"] = LoopbackRegistry(work, ca).start()
            if name == "skopeo":
                forget_skopeo_cache()

        def cold(name):
            cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=work)
            try:
                return contenders.push(name, registry["current"], "bench/image:1", cache)
            finally:
                shutil.rmtree(cache, ignore_errors=True)

        cpu, loads = {}, []
        try:
            times = interleaved({name: (lambda n=name: cold(n)) for name in names}, runs, before_each=before_cold,
                                cpu=cpu, loads=loads)
        finally:
            if registry:
                registry.pop("current").stop()

        # 2. caches warm: the same image to a new repository of a registry each client pushed it to
        warm_cpu, warm_loads = {}, []
        with LoopbackRegistry(work, ca) as warm_registry:
            warm_cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=work)
            forget_skopeo_cache()
            for name in names:
                contenders.push(name, warm_registry, "bench/first:1", warm_cache, timed=False)
            counter = {"n": 0}

            def warm(name):
                counter["n"] += 1
                return contenders.push(name, warm_registry, f"bench/warm-{counter['n']}:1", warm_cache)

            warm_times = interleaved({name: (lambda n=name: warm(n)) for name in names}, runs, cpu=warm_cpu,
                                     loads=warm_loads)
            shutil.rmtree(warm_cache, ignore_errors=True)

        # 3. a re-push after a 1 MiB new top layer, through a byte-counting relay
        repush_bytes, new_layer = ({}, None) if not bench_shape else measure_repush(contenders, ref, work, names)

    med = {n: median(times[n]) for n in names}
    warm_med = {n: median(warm_times[n]) for n in names}
    size_note = f"{label}, gzip, TLS registry"
    cold_note = (f"{runs} runs, median; each run into a registry started for it; docker-dir with an empty "
                 "XDG_CACHE_HOME every run (its cache of compressed digests would spare it the compression of "
                 "layers a registry already has), skopeo's blob-info cache removed before each run, skopeo "
                 "reading its own dir: copy of the image (uncompressed layers); both verify the registry's "
                 "certificate with the CA in /etc/docker/certs.d; fastest run: "
                 + ", ".join(f"{n} {min(times[n]):.2f} s" for n in names)
                 + "; median client CPU (user+sys" + ("; docker push's work is in dockerd, not counted" if
                                                      bench_shape else "") + "): "
                 + ", ".join(f"{n} {median(cpu[n]):.2f} s" for n in names) + f"; {load_note(loads)}")
    rows = [row(f"push wall time, cold ({size_note})", "s", med["docker-dir"], med["skopeo"], None, goal=1.0,
                baseline="skopeo copy --dest-compress", note=cold_note)]
    if bench_shape:
        rows.append(row(f"push wall time, cold, vs docker push ({size_note})", "s", med["docker-dir"],
                        med["docker push"], None, baseline="docker push", note="the same runs as the row above"))
    rows.append(row(f"push wall time, caches warm: the unchanged image to a new repository ({label})", "s",
                    warm_med["docker-dir"], warm_med["skopeo"], None, goal=1.0, baseline="skopeo copy (cache kept)",
                    note=f"{runs} runs, median, one TLS registry each client already pushed the image to: docker-dir "
                         "(its cache kept), skopeo (its blob-info cache kept)"
                         + (" and docker push" if bench_shape else "") + " mount every blob instead of sending it"
                         + (f"; docker push {warm_med['docker push']:.2f} s" if bench_shape else "")
                         + "; median client CPU: " + ", ".join(f"{n} {median(warm_cpu[n]) * 1000:.0f} ms"
                                                                for n in names)
                         + f"; {load_note(warm_loads)}"))
    if bench_shape:
        rows.append(row("re-push after a 1 MiB new top layer: bytes sent", "bytes", repush_bytes["docker-dir"],
                        new_layer, None, goal=1.1, baseline="the new layer, gzipped",
                        note=f"request bytes through a counting TCP relay to a plain HTTP registry, HTTP headers "
                             f"included, each client re-pushing to the repository it pushed the old image to: "
                             f"docker-dir {repush_bytes['docker-dir']} B, skopeo {repush_bytes['skopeo']} B (its "
                             f"blob-info cache kept from the first push), docker push "
                             f"{repush_bytes['docker push']} B; the new layer is {new_layer} B gzipped"))
    write_results("push" if bench_shape else "push-1layer", rows,
                  {"shape": shape, "runs": runs, "layers_mib": layers, "image_size": image_size, "times": times,
                   "cpu": cpu, "loads": loads, "warm_times": warm_times, "warm_cpu": warm_cpu,
                   "warm_loads": warm_loads, "repush_bytes": repush_bytes, "new_layer": new_layer})


def measure_repush(contenders, ref, work, names):
    """Bytes each client sends re-pushing the image rebuilt with a 1 MiB top layer to the
    repository it pushed the old one to: ({name: bytes}, the new layer's gzipped size)."""
    repush_bytes, new_layer = {}, None
    with rebuilt_image(ref, 1) as (new_ref, _new_id):
        new_dir = os.path.join(work, "rebuilt")
        run_quiet(docker_dir("save", "-q", new_ref, new_dir))
        new_skopeo_dir = os.path.join(work, "rebuilt-skopeo-dir")
        run_quiet(["skopeo", "copy", "-q", "--format", "v2s2", f"docker-daemon:{new_ref}", f"dir:{new_skopeo_dir}"])
        rebuilt = Contenders(new_ref, new_dir, new_skopeo_dir)
        for name in names:
            with LoopbackRegistry(work) as target:
                relay = CountingRelay(target.port)
                relayed = _Relayed(relay, target)
                cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=work)
                forget_skopeo_cache()
                try:
                    contenders.push(name, relayed, "bench/app:1", cache, timed=False)
                    before = relay.sent
                    rebuilt.push(name, relayed, "bench/app:1", cache, timed=False)
                    repush_bytes[name] = relay.sent - before
                    if name == "docker-dir":
                        new_layer = target.manifest("bench/app", "1")["layers"][-1]["size"]
                finally:
                    relay.close()
                    shutil.rmtree(cache, ignore_errors=True)
    return repush_bytes, new_layer


if __name__ == "__main__":
    main()
