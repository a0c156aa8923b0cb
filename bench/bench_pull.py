#!/usr/bin/env python3
"""Issue 21: `docker-dir-save docker://HOST/NAME:TAG DIR` (a pull with no engine) against
`skopeo copy docker://… dir:DIR` and against `docker pull` + `docker save | tar -x`, from a
loopback registry (Debian's docker-registry, anonymous HTTP, started as tests/registry.py
does), on the bench image pushed there by `docker push` (gzip layers).

Before every run each contender starts from nothing: a fresh DIR; skopeo's blob-info cache
removed (with it, skopeo would skip or mount blobs it saw before: BRIEF §8); the image
removed from the engine by ID before each `docker pull`, so every pull downloads and
registers every layer.

Re-pull: DIR holds the image, a new version with one more 1 MiB layer is pushed under
another tag, and `docker-dir-save --force` pulls it into DIR through tests/registry.py's
BlobProxy, which counts the bytes the registry and its blob storage send: those against
the new layer's size.
"""
import os
import shutil
import subprocess
import sys
import time

from benchlib import (CHECKOUT, bench_image, docker_dir, interleaved, median, quick_mode, rebuilt_image, remove_image,
                      row, run_timed, workdir, write_results)

sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
from registry import BlobProxy, RegistryServer  # noqa: E402  (the tests' registry fixtures)

SKOPEO_CACHE = "/var/lib/containers/cache/blob-info-cache-v1.boltdb"
NAMES = ("docker-dir", "skopeo", "docker pull + save")
REPO = "bench/pull"


def image_id_of(ref):
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def main():
    quick = quick_mode()
    layers = [8] * 4 if quick else [130] * 4
    runs = 2 if quick else 6
    with bench_image(layers) as (ref, image_id, image_size), rebuilt_image(ref, 1) as (new_ref, new_id), \
            workdir("pull") as work, RegistryServer("anonymous", label="bench registry") as registry:
        registry.push(ref, f"{REPO}:1")
        registry.push(new_ref, f"{REPO}:2")
        remove_image(new_id)
        remove_image(image_id)  # every pull below is a real download
        source = f"{registry.host}/{REPO}:1"
        manifest = registry.manifest(REPO, "1").json
        transfer = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        target = os.path.join(work, "img")
        commands = {
            "docker-dir": docker_dir("save", "-q", f"docker://{source}", target),
            "skopeo": ["skopeo", "copy", "-q", "--src-tls-verify=false", "--src-no-creds", f"docker://{source}",
                       f"dir:{target}"],
            "docker pull + save": ["sh", "-c", 'docker pull -q "$1" >/dev/null && mkdir "$2" && '
                                   'docker save "$1" | tar -x -C "$2"', "sh", source, target],
        }

        def before(name):
            shutil.rmtree(target, ignore_errors=True)
            if name == "skopeo" and os.path.exists(SKOPEO_CACHE):
                os.unlink(SKOPEO_CACHE)
            if name == "docker pull + save":
                remove_image(image_id)

        print(f"bench_pull: image {image_size / 1e6:.0f} MB in the engine, {transfer / 1e6:.0f} MB to transfer "
              f"({len(manifest['layers'])} gzip layers); {runs} interleaved runs each after 1 warm-up", flush=True)
        cpu = {}
        times = interleaved({name: (lambda n=name: run_timed(commands[n])) for name in NAMES}, runs,
                            before_each=before, cpu=cpu)
        shutil.rmtree(target, ignore_errors=True)
        remove_image(image_id)
        repull = measure_repull(registry, work, new_id)

    med = {name: median(times[name]) for name in NAMES}
    cpu_note = "; median client CPU time (user+sys of the tool and its children): " + \
        ", ".join(f"{n} {median(cpu[n]):.2f} s" for n in NAMES)
    size_note = f"{transfer / 1e6:.0f} MB of gzip layers, {len(manifest['layers'])} layers"
    rows = [
        row(f"pull wall time ({size_note})", "s", med["docker-dir"], med["skopeo"], None, goal=1.0,
            baseline="skopeo copy",
            note=f"{runs} runs, median; fastest run: " + ", ".join(f"{n} {min(times[n]):.2f} s" for n in NAMES)
            + cpu_note),
        row(f"pull wall time ({size_note}), against docker", "s", med["docker-dir"], med["docker pull + save"], None,
            baseline="docker pull + save | tar -x",
            note="docker registers (decompresses) every layer before its save streams them back"),
        row("re-pull after a 1 MiB new top layer: bytes transferred", "bytes", repull["bytes"], repull["new"], None,
            goal=1.1, baseline="the new layer + config",
            note=f"{repull['bytes']} bytes through the registry and its blob storage for a new layer of "
                 f"{repull['layer']} bytes and a config of {repull['config']} bytes; re-pull took "
                 f"{repull['seconds']:.2f} s"),
    ]
    write_results("pull", rows, {"runs": runs, "layers_mib": layers, "image_size": image_size,
                                 "transfer": transfer, "times": times, "cpu": cpu, "repull": repull})


def measure_repull(registry, work, new_id):
    """Bytes a --force re-pull of the new version into a DIR holding the old one costs."""
    target = os.path.join(work, "repull")
    with BlobProxy(registry) as proxy:
        run_timed(docker_dir("save", "-q", f"docker://{proxy.host}/{REPO}:1", target))
        proxy.forget()
        start = time.perf_counter()
        run_timed(docker_dir("save", "-q", "--force", f"docker://{proxy.host}/{REPO}:2", target))
        seconds = time.perf_counter() - start
        transferred = proxy.bytes_downloaded()
    got = subprocess.run(docker_dir("id", target), capture_output=True, text=True).stdout.strip()
    if got != new_id:
        raise RuntimeError(f"the re-pull gave {got}, not the new image {new_id}")
    manifest = registry.manifest(REPO, "2").json
    layer, config = manifest["layers"][-1]["size"], manifest["config"]["size"]
    shutil.rmtree(target, ignore_errors=True)
    return {"bytes": transferred, "new": layer + config, "layer": layer, "config": config, "seconds": seconds}


if __name__ == "__main__":
    main()
