#!/usr/bin/env python3
"""Issues 21 and 26: `docker-dir-save docker://HOST/NAME:TAG DIR` (a pull with no engine)
against `skopeo copy docker://… dir:DIR` and, on the bench image, against `docker pull` +
`docker save | tar -x`, from a loopback TLS registry (Debian's docker-registry, a throwaway
CA that docker-dir and skopeo both find in /etc/docker/certs.d: registrylib.py), on two
image shapes pushed there by `docker push` (gzip layers): the 547 MB bench image (5 layers)
and 150 MiB of one layer on busybox.

Before every run each contender starts from nothing: a fresh DIR; skopeo's blob-info cache
removed (with it, skopeo would skip or mount blobs it saw before: BRIEF §8); the image
removed from the engine by ID before each `docker pull`, so every pull downloads and
registers every layer.

Re-pull (bench image): DIR holds the image, a new version with one more 1 MiB layer is
pushed under another tag, and `docker-dir-save --force` pulls it into DIR through
tests/registry.py's BlobProxy (on that module's plain HTTP registry), which counts the
bytes the registry and its blob storage send: those against the new layer's size.

usage: bench_pull.py [--shape 5-layer|1-layer ...]   (default: both; results/pull.json holds
the 5-layer rows, results/pull-1layer.json the 1-layer ones)
"""
import contextlib
import os
import shutil
import subprocess
import sys
import time

from benchlib import (CHECKOUT, bench_image, docker_dir, interleaved, load_note, median, quick_mode, rebuilt_image,
                      remove_image, row, run_timed, write_results)
from registrylib import LoopbackRegistry, client_env, docker_push, forget_skopeo_cache, main_over_shapes

sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
from registry import BlobProxy, RegistryServer  # noqa: E402  (the tests' registry fixtures)

REPO = "bench/pull"


def main():
    main_over_shapes("pull", __doc__.split("\n\n")[0], measure_shape)


def measure_shape(shape, layers, work, ca):
    quick = quick_mode()
    bench_shape = shape == "5-layer"  # the bench image: docker pull and the re-pull there too
    names = ("docker-dir", "skopeo", "docker pull + save") if bench_shape else ("docker-dir", "skopeo")
    runs = 2 if quick else (6 if bench_shape else 7)
    with contextlib.ExitStack() as stack:
        ref, image_id, image_size = stack.enter_context(bench_image(layers))
        registry = stack.enter_context(LoopbackRegistry(work, ca))
        docker_push(ref, registry, f"{REPO}:1")
        if bench_shape:  # the re-pull's registry, made while the engine still has the image to build on
            new_ref, new_id = stack.enter_context(rebuilt_image(ref, 1))
            plain = stack.enter_context(RegistryServer("anonymous", label="bench registry"))
            plain.push(ref, f"{REPO}:1")
            plain.push(new_ref, f"{REPO}:2")
            remove_image(new_id)
        source = f"{registry.host}/{REPO}:1"
        manifest = registry.manifest(REPO, "1")
        transfer = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        target = os.path.join(work, "img")
        commands = {
            "docker-dir": docker_dir("save", "-q", f"docker://{source}", target),
            "skopeo": ["skopeo", "copy", "-q", "--src-no-creds", f"docker://{source}", f"dir:{target}"],
            "docker pull + save": ["sh", "-c", 'docker pull -q "$1" >/dev/null && mkdir "$2" && '
                                   'docker save "$1" | tar -x -C "$2"', "sh", source, target],
        }

        def before(name):
            shutil.rmtree(target, ignore_errors=True)
            if name == "skopeo":
                forget_skopeo_cache()
            if name == "docker pull + save":
                remove_image(image_id)

        label = (f"{len(manifest['layers'])} gzip layers" if bench_shape else
                 f"one gzip layer of {layers[0]} MiB on busybox")
        print(f"bench_pull [{shape}]: image {image_size / 1e6:.0f} MB in the engine, {transfer / 1e6:.0f} MB to "
              f"transfer ({label}); {runs} interleaved runs each after 1 warm-up", flush=True)
        remove_image(image_id)  # every pull below is a real download
        cpu, loads = {}, []
        times = interleaved({name: (lambda n=name: run_timed(commands[n], env=client_env())) for name in names},
                            runs, before_each=before, cpu=cpu, loads=loads)
        shutil.rmtree(target, ignore_errors=True)
        remove_image(image_id)
        repull = measure_repull(plain, new_id, work) if bench_shape else None

    med = {name: median(times[name]) for name in names}
    size_note = f"{transfer / 1e6:.0f} MB of gzip layers, " + \
        (f"{len(manifest['layers'])} layers" if bench_shape else f"one {layers[0]} MiB layer on busybox") + \
        ", TLS registry"
    rows = [
        row(f"pull wall time ({size_note})", "s", med["docker-dir"], med["skopeo"], None, goal=1.0,
            baseline="skopeo copy",
            note=f"{runs} runs, median; both verify the registry's certificate with the CA in /etc/docker/certs.d; "
                 "fastest run: " + ", ".join(f"{n} {min(times[n]):.2f} s" for n in names)
                 + "; median client CPU time (user+sys of the tool and its children): "
                 + ", ".join(f"{n} {median(cpu[n]):.2f} s" for n in names) + f"; {load_note(loads)}"),
    ]
    if bench_shape:
        rows += [
            row(f"pull wall time ({size_note}), against docker", "s", med["docker-dir"], med["docker pull + save"],
                None, baseline="docker pull + save | tar -x",
                note="docker registers (decompresses) every layer before its save streams them back"),
            row("re-pull after a 1 MiB new top layer: bytes transferred", "bytes", repull["bytes"], repull["new"],
                None, goal=1.1, baseline="the new layer + config",
                note=f"{repull['bytes']} bytes through a plain HTTP registry and its blob storage for a new layer of "
                     f"{repull['layer']} bytes and a config of {repull['config']} bytes; re-pull took "
                     f"{repull['seconds']:.2f} s"),
        ]
    write_results("pull" if bench_shape else "pull-1layer", rows,
                  {"shape": shape, "runs": runs, "layers_mib": layers, "image_size": image_size,
                   "transfer": transfer, "times": times, "cpu": cpu, "loads": loads, "repull": repull})


def measure_repull(registry, new_id, work):
    """Bytes a --force re-pull of the new version (a 1 MiB layer more) into a DIR holding
    the old one costs, through the tests' BlobProxy."""
    target = os.path.join(work, "repull")
    with BlobProxy(registry) as proxy:
        run_timed(docker_dir("save", "-q", f"docker://{proxy.host}/{REPO}:1", target), env=client_env())
        proxy.forget()
        start = time.perf_counter()
        run_timed(docker_dir("save", "-q", "--force", f"docker://{proxy.host}/{REPO}:2", target), env=client_env())
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
