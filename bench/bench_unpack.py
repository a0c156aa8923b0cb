#!/usr/bin/env python3
"""Unpacking a saved image into a directory (format/unpack.py, for a Charliecloud
engine) against `docker load` of the same image, on a multi-layer image of random
data (>= 500 MB). Run it with `bench/run-all unpack`.

docker-dir: apply_layers of the saved layer files into a new empty directory, in
a child process of the bench interpreter. Raw docker: `docker load -i` of the
`docker save` archive, after removing the image (every layer) from the engine.
Both read their input from the page cache; neither syncs.

On an ext4 without a journal (this machine's root filesystem), creating files
right after deleting tens of thousands is slow for minutes: every inode
allocation skips recently deleted ones. The trees here hold a few files, and
each is removed only after the other contender has run.
"""
import os
import shutil
import subprocess

from benchlib import (CHECKOUT, PY, bench_image, interleaved, median, quick_mode, raw_save, row, sh, workdir,
                      write_results)

APPLY = """import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "lib"))
from docker_dir.format.unpack import apply_layers
saved, dest = sys.argv[2], sys.argv[3]
manifest = json.load(open(os.path.join(saved, "manifest.json")))
layers = [open(os.path.join(saved, name), "rb") for name in manifest[0]["Layers"]]
os.mkdir(dest)
apply_layers(layers, dest)
"""


def main():
    quick = quick_mode()
    layers = [8] * 5 if quick else [104] * 5
    runs = 2 if quick else 8
    with bench_image(layers) as (ref, image_id, image_size), workdir("unpack") as work:
        saved = os.path.join(work, "saved")
        raw_save(ref, saved)
        archive = os.path.join(work, "image.tar")
        with open(archive, "wb") as out:
            subprocess.run(["docker", "save", ref], stdout=out, check=True)
        tree = os.path.join(work, "tree")

        def before_each(name):
            if name == "docker-dir":
                shutil.rmtree(tree, ignore_errors=True)  # as root: the modes do not matter
            else:
                subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True)

        contenders = {
            "docker-dir": [PY, "-c", APPLY, CHECKOUT, saved, tree],
            "raw docker": ["docker", "load", "-q", "-i", archive],
        }
        print(f"bench_unpack: image {image_size / 1e6:.0f} MB ({len(layers)} random layers of {layers[0]} MiB "
              f"on busybox), {runs} interleaved runs each after 1 warm-up", flush=True)
        cpu = {}
        times = interleaved(contenders, runs, before_each=before_each, cpu=cpu)
        tree_files = int(sh("sh", "-c", f"find {tree} | wc -l"))
    names = ("docker-dir", "raw docker")
    rows = [row(f"unpack wall time (image {image_size / 1e6:.0f} MB, {len(layers) + 1} layers)", "s",
                median(times["docker-dir"]), median(times["raw docker"]), None, goal=1.0,
                note=f"{runs} runs, median; docker-dir = apply_layers into a directory, raw = docker load of the "
                     f"saved archive; fastest run: " + ", ".join(f"{n} {min(times[n]):.2f} s" for n in names) +
                     "; median CPU time of the child (docker: the CLI only): " +
                     ", ".join(f"{n} {median(cpu[n]):.2f} s" for n in names) + f"; {tree_files} entries in the tree")]
    write_results("unpack", rows, {"runs": runs, "layers_mib": layers, "image_size": image_size, "times": times,
                                   "cpu": cpu})


if __name__ == "__main__":
    main()
