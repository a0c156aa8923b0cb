#!/usr/bin/env python3
"""`docker-dir-exec` with the charliecloud engine (ch-run) against raw docker and bare
ch-run. Run it with `bench/run-all charliecloud` (needs ch-run: Debian
charliecloud-runtime).

- hot: the image is unpacked in the cache; `DOCKER_DIR_ENGINE=charliecloud
  docker-dir-exec DIR sh -c true` (the option-less path, as in a Makefile) vs
  `docker run --rm ID sh -c true` of the same image, vs bare `ch-run TREE -- sh -c true`
  on the very tree docker-dir unpacked, and vs ch-run with the flags docker-dir passes
  (taken from its engine module), to split docker-dir's own cost from theirs; the start
  of the same interpreter (`python -c pass`) is timed too: a floor under any Python
  front end, itself several times bare ch-run;
- cold: the cache entry is removed before each run (not timed), so every run unpacks
  the 547 MB image and runs `sh -c true`; vs `tar -c -C DIR . | docker load` of the same
  directory, after removing the image from the engine.

Runs as root (docker needs it; ch-run runs unprivileged all the same). The cache and
the working directory are under /var/tmp, where a cache is by default: a working
directory under /tmp would be bound through ch-run's private /tmp instead.
"""
import os
import shutil
import sys
import tempfile

from benchlib import (CHECKOUT, PY, bench_image, docker_dir, has_image, interleaved, median, quick_mode, raw_save,
                      remove_image, row, run_timed, write_results)

COMMAND = ["sh", "-c", "true"]


def same_flags_argv(cache, hex_id, cwd):
    """ch-run exactly as docker-dir-exec runs it (from its engine module)."""
    sys.path.insert(0, os.path.join(CHECKOUT, "lib"))
    os.environ["DOCKER_DIR_CACHE"] = cache
    from docker_dir.engine.base import Mount, RunRequest
    from docker_dir.engine.charliecloud import CharliecloudEngine

    return CharliecloudEngine().run_command(RunRequest(hex_id, COMMAND, cwd, [Mount(cwd, cwd)])).argv


def main():
    ch_run = shutil.which("ch-run")
    if not ch_run:
        sys.exit("bench_charliecloud: ch-run not found; install charliecloud-runtime")
    os.environ.setdefault("USER", "root")  # ch-run needs it
    quick = quick_mode()
    layers = [8] * 4 if quick else [130] * 4
    hot_runs, cold_runs = (5, 2) if quick else (30, 8)
    work = tempfile.mkdtemp(prefix="docker-dir-bench-ch-", dir="/var/tmp")
    try:
        with bench_image(layers) as (ref, image_id, image_size):
            image_dir = os.path.join(work, "img")
            raw_save(ref, image_dir)
            cache, cwd = os.path.join(work, "cache"), os.path.join(work, "cwd")
            os.mkdir(cwd)
            hex_id = image_id.split(":")[1]
            entry = os.path.join(cache, hex_id)
            env = dict(os.environ, DOCKER_DIR_ENGINE="charliecloud", DOCKER_DIR_CACHE=cache)
            ours = docker_dir("exec", image_dir, *COMMAND)
            run_timed(docker_dir("exec", "--load-only", image_dir), env=env)
            size = f"{image_size / 1e6:.0f} MB image, {len(layers) + 1} layers"
            print(f"bench_charliecloud: {size}; hot {hot_runs} runs, cold {cold_runs} runs", flush=True)

            hot_cpu = {}
            hot = interleaved({
                "docker-dir": lambda: run_timed(ours, cwd=cwd, env=env),
                "raw docker": lambda: run_timed(["docker", "run", "--rm", image_id, *COMMAND], cwd=cwd),
                "bare ch-run": lambda: run_timed([ch_run, os.path.join(entry, "root"), "--", *COMMAND], cwd=cwd),
                "ch-run, docker-dir's flags": lambda: run_timed(same_flags_argv(cache, hex_id, cwd), cwd=cwd),
                "python -c pass": lambda: run_timed([PY, "-c", "pass"], cwd=cwd),
            }, hot_runs, cpu=hot_cpu)
            med_hot = {n: median(v) for n, v in hot.items()}

            def make_cold(name):
                if name == "docker-dir":
                    shutil.rmtree(entry, ignore_errors=True)  # as root: read-only modes do not matter
                else:
                    remove_image(image_id)
                    if has_image(image_id):
                        raise RuntimeError(f"{image_id} still in the engine; the load would be warm")

            cold_cpu = {}
            cold = interleaved({
                "docker-dir": lambda: run_timed(ours, cwd=cwd, env=env),
                "raw docker": lambda: run_timed(["sh", "-c", 'tar -c -C "$1" . | docker load -q >/dev/null', "sh",
                                                 image_dir]),
            }, cold_runs, before_each=make_cold, cpu=cold_cpu)
            med_cold = {n: median(v) for n, v in cold.items()}
            argv = same_flags_argv(cache, hex_id, cwd)
            flags = " ".join(a for a in argv[1:argv.index("--") - 1] if a.startswith("-"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def cpu_note(cpu, unit="ms"):
        return ", ".join(f"{n} {median(v) * 1000:.0f} ms" if unit == "ms" else f"{n} {median(v):.2f} s"
                         for n, v in cpu.items())

    rows = [
        row("exec hot with charliecloud: sh -c true, image unpacked", "s", med_hot["docker-dir"],
            med_hot["raw docker"], None, goal=0.15,
            note=f"{hot_runs} runs, median; raw: docker run --rm ID sh -c true (same image); docker-dir: "
                 f"DOCKER_DIR_ENGINE=charliecloud docker-dir-exec DIR sh -c true; median client CPU time "
                 f"(user+sys): {cpu_note(hot_cpu)}"),
        row("exec hot with charliecloud vs bare ch-run on the same tree", "s", med_hot["docker-dir"],
            med_hot["bare ch-run"], None, goal=1.5, baseline="bare ch-run",
            note="bare: ch-run TREE -- sh -c true, TREE being the tree docker-dir unpacked"),
        row("exec hot with charliecloud vs ch-run with docker-dir's flags", "s", med_hot["docker-dir"],
            med_hot["ch-run, docker-dir's flags"], None, baseline="ch-run + same flags",
            note=f"{flags}: shows docker-dir's own cost"),
        row("python -c pass (the floor of a Python front end) vs bare ch-run", "s", med_hot["python -c pass"],
            med_hot["bare ch-run"], None, baseline="bare ch-run",
            note="the interpreter docker-dir runs under, starting and doing nothing; in the docker-dir column"),
        row(f"exec cold with charliecloud: unpack + run ({size})", "s", med_cold["docker-dir"],
            med_cold["raw docker"], None, goal=1.0, baseline="raw docker load",
            note=f"{cold_runs} runs, median; raw: tar -c DIR | docker load (no run); fastest run: "
                 + ", ".join(f"{n} {min(v):.2f} s" for n, v in cold.items())
                 + f"; median client CPU time: {cpu_note(cold_cpu, 's')}"),
    ]
    write_results("charliecloud", rows, {"image_size": image_size, "layers_mib": layers, "hot": hot,
                                         "hot_cpu": hot_cpu, "cold": cold, "cold_cpu": cold_cpu})


if __name__ == "__main__":
    main()
