#!/usr/bin/env python3
"""Issue 4: `docker-dir-exec DIR sh -c true` against raw docker and the adapter's `run`.

- hot: the engine has the image; vs `docker run --rm ID sh -c true`, and (to split
  Python start-up from the cost of docker-dir's run flags) vs `docker run` with the
  flags docker-dir passes, taken from docker-dir's own engine module;
- cold: the image is removed from the engine (by ID: every tag, docker-dir's private
  `localhost/docker-dir:<hex>` too) before each run; vs `tar -c -C DIR . | docker
  load && docker run --rm ID sh -c true`;
- parallel: 8 cold execs started at once; wall time until the last one exits, and
  how many `docker load`s the engine saw;
- rebuilt: the image with one more 1 MiB layer while the engine holds the old one,
  against `tar -c DIR | docker load && docker run`; and (issue 19, where fixed costs
  show) a small image so rebuilt against `docker load -i IMAGE.tar && docker run
  --rm --init`, the way a user who keeps `docker save -o` archives does it.
"""
import os
import subprocess
import sys
import time

from benchlib import (CHECKOUT, SMALL_BASE_LAYERS, adapter, bench_image, docker_dir, has_image, interleaved, median,
                      quick_mode, raw_load_file_and_run, raw_save, rebuilt_image, remove_image, row, run_timed,
                      save_tar, workdir, write_results)

PARALLEL = 8
COMMAND = ["sh", "-c", "true"]


def count_loads(image_id, since, until):
    """`docker load`s of this image that the engine reported between two time.time() values."""
    out = subprocess.run(["docker", "events", "--since", str(int(since) - 1), "--until", str(int(until) + 1),
                          "--filter", "type=image", "--filter", "event=load", "--format", "{{.TimeNano}} {{.ID}}"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    hex_id = image_id.split(":")[-1]
    return sum(1 for line in out.splitlines()
               if hex_id in line and since * 1e9 <= int(line.split()[0]) <= until * 1e9)


def run_parallel(argv, cwd, n=PARALLEL):
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(n)]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    failed = [(p.returncode, e.decode(errors="replace")[-300:]) for p, e in zip(procs, errors) if p.returncode]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} parallel runs of {argv} failed: {failed[0]}")
    return elapsed


def same_flags_argv(image_id, cwd):
    """`docker run` exactly as docker-dir-exec builds it (from its engine module), with stdin not a terminal."""
    sys.path.insert(0, os.path.join(CHECKOUT, "lib"))
    from docker_dir.engine.base import Mount, RunRequest
    from docker_dir.engine.docker import DockerEngine

    request = RunRequest(image_id, COMMAND, cwd, [Mount(cwd, cwd)])
    return ["docker", *DockerEngine().run_command(request).argv[1:]]


def rebuilt_small(work, runs):
    """Issue 19's measure: a small base held by the engine, rebuilt with a 1 MiB layer;
    docker-dir-exec DIR against `docker load -i IMAGE.tar && docker run --rm --init`
    (IMAGE.tar made once by `docker save -o`, not timed). The base is small so what
    both sides pay whatever the size (start-up, engine requests) is most of the time."""
    with bench_image(SMALL_BASE_LAYERS) as (ref, base_id, _), rebuilt_image(ref, 1) as (new_ref, new_id):
        new_dir, tar = os.path.join(work, "small-rebuilt"), os.path.join(work, "small-rebuilt.tar")
        raw_save(new_ref, new_dir)
        save_tar(new_ref, tar)
        size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", new_id], check=True,
                                  stdout=subprocess.PIPE, text=True).stdout)

        def only_new_is_missing(name):
            remove_image(new_id)
            if not has_image(base_id):
                raise RuntimeError(f"the base image {base_id} went away; the run would not be what is timed")
            if has_image(new_id):
                raise RuntimeError(f"{new_id} still in the engine; the cold run would be warm")

        cpu = {}
        samples = interleaved({"docker-dir": lambda: run_timed(docker_dir("exec", new_dir, *COMMAND), cwd=work),
                               "raw docker": lambda: run_timed(raw_load_file_and_run(tar, new_id, COMMAND))},
                              runs, before_each=only_new_is_missing, cpu=cpu)
        remove_image(new_id)
    med = {n: median(v) for n, v in samples.items()}
    print("  rebuilt small image medians: " + ", ".join(f"{n} {v * 1000:.0f} ms" for n, v in med.items()), flush=True)
    return row(f"exec cold, {size / 1e6:.0f} MB image rebuilt with a 1 MiB top layer, vs docker load -i + run", "s",
               med["docker-dir"], med["raw docker"], None, goal=1.10, baseline="docker load -i + run",
               note=f"{runs} runs, median; the base (busybox + 1 MiB) in the engine; raw: docker load -i IMAGE.tar && "
                    "docker run --rm --init ID sh -c true (IMAGE.tar by docker save -o, not timed); fastest run: "
                    + ", ".join(f"{n} {min(v) * 1000:.0f} ms" for n, v in samples.items())
                    + "; median client CPU time (user+sys): "
                    + ", ".join(f"{n} {median(v) * 1000:.0f} ms" for n, v in cpu.items())), \
        {"size": size, "samples": samples, "cpu": cpu}


def main():
    quick = quick_mode()
    layers = [8] * 4 if quick else [130] * 4
    hot_runs, cold_runs, parallel_trials = (5, 2, 1) if quick else (30, 8, 3)
    with bench_image(layers) as (ref, image_id, image_size), workdir("exec") as work:
        image_dir = os.path.join(work, "img")
        raw_save(ref, image_dir)
        cwd = os.path.join(work, "cwd")
        os.mkdir(cwd)
        commands = {
            # No option: the command line of Makefiles and shebangs, and the quickest to parse.
            "docker-dir": docker_dir("exec", image_dir, *COMMAND),
            "raw docker": ["docker", "run", "--rm", image_id, *COMMAND],
            "adapter": adapter("run", image_dir, *COMMAND),
        }
        cold_raw = ["sh", "-c", 'tar -c -C "$1" . | docker load -q >/dev/null && docker run --rm "$2" sh -c true',
                    "sh", image_dir, image_id]
        size = f"{image_size / 1e6:.0f} MB image, {len(layers) + 1} layers"
        print(f"bench_exec: {size}; hot {hot_runs} runs, cold {cold_runs} runs, {parallel_trials} trial(s) of "
              f"{PARALLEL} parallel cold execs", flush=True)

        def timed(argv):
            return lambda: run_timed(argv, cwd=cwd)

        hot_cpu = {}
        hot = interleaved({**{n: timed(a) for n, a in commands.items()},
                           "docker run, docker-dir's flags": timed(same_flags_argv(image_id, cwd))},
                          hot_runs, cpu=hot_cpu)
        med_hot = {n: median(v) for n, v in hot.items()}

        def make_cold(name):
            remove_image(image_id)
            if has_image(image_id):
                raise RuntimeError(f"{image_id} still in the engine; the cold run would be warm")

        cold_cpu = {}
        cold = interleaved({"docker-dir": timed(commands["docker-dir"]), "raw docker": timed(cold_raw),
                            "adapter": timed(commands["adapter"])}, cold_runs, before_each=make_cold, cpu=cold_cpu)
        med_cold = {n: median(v) for n, v in cold.items()}
        print("  cold medians: " + ", ".join(f"{n} {v:.2f} s" for n, v in med_cold.items()), flush=True)

        parallel, loads = {}, {}
        for _ in range(parallel_trials):
            for name, argv in (("docker-dir", commands["docker-dir"]), ("raw docker", cold_raw),
                               ("adapter", commands["adapter"])):
                make_cold(name)
                since = time.time()
                parallel.setdefault(name, []).append(run_parallel(argv, cwd))
                until = time.time()
                time.sleep(1.1)  # --until is second-grained: let the second end
                loads.setdefault(name, []).append(count_loads(image_id, since, until))
                print(f"  {PARALLEL} parallel cold, {name}: {parallel[name][-1]:.2f} s, {loads[name][-1]} load(s)",
                      flush=True)
        med_par = {n: median(v) for n, v in parallel.items()}
        # The same 8 at once with the image present: what starting 8 containers costs the engine.
        parallel_hot = {}
        for _ in range(parallel_trials + 1):
            for name, argv in (("docker-dir", commands["docker-dir"]), ("raw docker", commands["raw docker"]),
                               ("adapter", commands["adapter"])):
                parallel_hot.setdefault(name, []).append(run_parallel(argv, cwd))
        med_par_hot = {n: median(v) for n, v in parallel_hot.items()}

        # A new version of the image: one more 1 MiB layer, while the engine holds the old one.
        with rebuilt_image(ref, 1) as (new_ref, new_id):
            new_dir = os.path.join(work, "rebuilt")
            raw_save(new_ref, new_dir)
            rebuilt_cmds = {
                "docker-dir": docker_dir("exec", new_dir, *COMMAND),
                "raw docker": ["sh", "-c", 'tar -c -C "$1" . | docker load -q >/dev/null && '
                               'docker run --rm "$2" sh -c true', "sh", new_dir, new_id],
                "adapter": adapter("run", new_dir, *COMMAND),
            }

            def only_new_is_missing(name):
                remove_image(new_id)
                if not has_image(image_id):
                    raise RuntimeError(f"the old image {image_id} went away; the run would not be what is timed")
                if has_image(new_id):
                    raise RuntimeError(f"{new_id} still in the engine; the cold run would be warm")

            rebuilt_cpu = {}
            rebuilt = interleaved({n: timed(a) for n, a in rebuilt_cmds.items()}, cold_runs,
                                  before_each=only_new_is_missing, cpu=rebuilt_cpu)
            med_rebuilt = {n: median(v) for n, v in rebuilt.items()}
        remove_image(image_id)
        small_row, small_info = rebuilt_small(work, 3 if quick else 15)

    cold_limit = 1.3 * med_cold["docker-dir"]
    rows = [
        row("exec hot: sh -c true, image present", "s", med_hot["docker-dir"], med_hot["raw docker"],
            med_hot["adapter"], goal=1.10,
            note=f"{hot_runs} runs, median; raw: docker run --rm ID sh -c true; median client CPU time (user+sys): "
                 + ", ".join(f"{n} {median(v) * 1000:.0f} ms" for n, v in hot_cpu.items())),
        row("exec hot vs docker run with docker-dir's flags", "s", med_hot["docker-dir"],
            med_hot["docker run, docker-dir's flags"], None, baseline="docker run + same flags",
            note=f"{' '.join(same_flags_argv('ID', 'CWD')[2:-4])}: shows docker-dir's own cost"),
        row(f"exec cold: load + run ({size})", "s", med_cold["docker-dir"], med_cold["raw docker"],
            med_cold["adapter"], goal=1.05,
            note=f"{cold_runs} runs, median; raw: tar -c DIR | docker load && docker run; fastest run: "
                 + ", ".join(f"{n} {min(v):.2f} s" for n, v in cold.items()) + "; median client CPU time: "
                 + ", ".join(f"{n} {median(v):.2f} s" for n, v in cold_cpu.items())),
        row(f"{PARALLEL} parallel cold execs (wall)", "s", med_par["docker-dir"], med_par["raw docker"],
            med_par["adapter"], limit=cold_limit,
            goal_text=f"<= 1.3x one docker-dir cold exec ({cold_limit:.1f} s), 1 load",
            note=f"{parallel_trials} trial(s), median; loads per trial: " +
                 ", ".join(f"{n} {max(v)}" for n, v in loads.items())),
    ]
    rows.append(row("exec cold, image rebuilt with a 1 MiB top layer, old one in the engine", "s",
                    med_rebuilt["docker-dir"], med_rebuilt["raw docker"], med_rebuilt["adapter"], goal=0.25,
                    note=f"{cold_runs} runs, median; raw: tar -c DIR | docker load && docker run; docker-dir sends "
                         "the new layer only; median client CPU time: "
                         + ", ".join(f"{n} {median(v):.2f} s" for n, v in rebuilt_cpu.items())))
    rows.append(small_row)
    rows.append(row(f"{PARALLEL} parallel hot execs (wall)", "s", med_par_hot["docker-dir"], med_par_hot["raw docker"],
                    med_par_hot["adapter"], note=f"{parallel_trials + 1} trials, median; image present: the engine's "
                                                 f"cost of starting {PARALLEL} containers at once, part of every "
                                                 "parallel cold figure"))
    if max(loads["docker-dir"]) > 1:  # the goal says 1 load
        next(r for r in rows if r["metric"].startswith(f"{PARALLEL} parallel cold"))["met"] = False
    write_results("exec", rows, {"image_size": image_size, "layers_mib": layers, "hot": hot, "hot_cpu": hot_cpu, "cold": cold, "cold_cpu": cold_cpu,
                                 "parallel": parallel, "loads": loads, "parallel_hot": parallel_hot,
                                 "rebuilt": rebuilt, "rebuilt_cpu": rebuilt_cpu, "rebuilt_small": small_info})


if __name__ == "__main__":
    main()
