#!/usr/bin/env python3
"""Issue 12: what finding the layers an engine holds costs a cold exec, on an engine
holding 100 images: engine calls (API requests or processes) and milliseconds, for a
side dockerd 20.10 (the main daemon's image count is whatever it is) and podman with a
private storage. Prints medians; writes results/inventory.json (not a table row: this
is a part of the cold path, which bench_exec times whole)."""
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from plumbum import local

from benchlib import CHECKOUT, RESULTS, measured_at, quick_mode

sys.path.insert(0, os.path.join(CHECKOUT, "lib"))
sys.path.insert(0, os.path.join(CHECKOUT, "tests"))
from engines import podman_env, side_dockerd  # noqa: E402

from docker_dir.engine import docker_api  # noqa: E402
from docker_dir import process  # noqa: E402
from docker_dir.engine.docker import DockerEngine  # noqa: E402
from docker_dir.engine.podman import PodmanEngine  # noqa: E402
from docker_dir.format.names import chain_ids  # noqa: E402

IMAGES = 20 if quick_mode() else 100
RUNS = 5 if quick_mode() else 15


def fill(import_one):
    work = tempfile.mkdtemp(prefix="docker-dir-bench-inventory-")
    try:
        for n in range(IMAGES):
            path = os.path.join(work, f"f{n}")
            with open(path, "w") as out:
                out.write(f"image {n}\n")
            import_one(local["tar"]["-C", work, "-c", f"f{n}"], f"docker-dir-bench/inventory:{n}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed(engine, calls):
    samples = []
    for _ in range(RUNS):
        calls.clear()
        start = time.perf_counter()
        # what held_layers asks the engine, and the chain IDs it makes of the answer
        held = {chain for layers in engine.image_layers() for chain in chain_ids(layers)}
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), len(calls), len(held)


def main():
    results = {}
    daemon = side_dockerd("20.10", "inventory bench")
    try:
        with local.env(DOCKER_HOST=daemon.host):
            os.environ["DOCKER_HOST"] = daemon.host
            fill(lambda tar, ref: (tar | local["docker"]["import", "-", ref])())
            requests = []
            real = docker_api.get
            docker_api.get = lambda sock, path, **kw: requests.append(path) or real(sock, path, **kw)
            results["dockerd 20.10"] = timed(DockerEngine(), requests)
            docker_api.get = real
            del os.environ["DOCKER_HOST"]
    finally:
        daemon.stop()
    storage = tempfile.mkdtemp(prefix="docker-dir-bench-podman-")
    env = podman_env(storage)
    conf = os.path.join(storage, "storage.conf")
    with open(conf, "w") as out:
        out.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{storage}/root"\nrunroot = "{storage}/run"\n')
    env["CONTAINERS_STORAGE_CONF"] = conf
    try:
        with local.env(**env):
            os.environ.update(env)
            fill(lambda tar, ref: (tar | local["podman"]["import", "-q", "-", ref])())
            processes = []
            engine = PodmanEngine()
            original = process.run  # podman's calls are processes: count them there
            process.run = lambda argv, *a, **k: processes.append(argv) or original(argv, *a, **k)
            try:
                results["podman 4.3"] = timed(engine, processes)
            finally:
                process.run = original
                local["podman"]["rmi", "-a", "-f"](retcode=None)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    for name, (seconds, calls, chains) in results.items():
        print(f"  {name}: {IMAGES} images, {calls} engine calls, {seconds * 1000:.1f} ms (median of {RUNS}), "
              f"{chains} chain IDs", flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "inventory.json"), "w") as out:  # no table row: "rows" is empty
        json.dump({"bench": "inventory", "quick": quick_mode(), "rows": [],
                   "info": {"images": IMAGES, "runs": RUNS, "measured": measured_at(),
                            "results": {n: {"ms": s * 1000, "calls": c, "chains": h}
                                        for n, (s, c, h) in results.items()}}}, out, indent=1)


if __name__ == "__main__":
    main()
