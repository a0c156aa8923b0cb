#!/usr/bin/env python3
"""Issue 3: `docker-dir-save IMG DIR` against `docker save IMG | tar -x -C DIR` and
the adapter's `save IMG DIR`, on a multi-layer image of random data (>= 500 MB).

Per run: wall time, peak disk (allocated bytes under the run's own scratch dir,
which holds DIR and the TMPDIR given to the tool, sampled every 50 ms) and what
is left in TMPDIR afterwards. The engine's own temp space (dockerd 20.10 stages
`docker save` under /var/lib/docker/tmp) is the same for all three and is
sampled separately, for information.
"""
import os
import shutil
import subprocess
import time

from benchlib import (PeakSampler, adapter, bench_image, disk_usage, docker_dir, interleaved, median,
                      quick_mode, row, workdir, write_results)

ENGINE_TMP = "/var/lib/docker/tmp"
WARMUP = 1


def main():
    quick = quick_mode()
    layers = [8] * 4 if quick else [130] * 4
    runs = 2 if quick else 8
    with bench_image(layers) as (ref, image_id, image_size), workdir("save") as work:
        peaks = {}
        leftovers = {}
        engine_peaks = []
        saved_size = []

        def command(name, target):
            if name == "docker-dir":
                return docker_dir("save", "-q", ref, target)
            if name == "raw docker":
                return ["sh", "-c", 'mkdir "$2" && docker save "$1" | tar -x -C "$2"', "sh", ref, target]
            return adapter("save", ref, target)

        def one_run(name):
            run_dir = os.path.join(work, name.replace(" ", "-"))
            tmp = os.path.join(run_dir, "tmp")
            target = os.path.join(run_dir, "out", "img")
            os.makedirs(tmp)
            os.makedirs(os.path.dirname(target))
            # the scratch dirs themselves are not the tool's doing
            empty, empty_tmp = disk_usage(run_dir), disk_usage(tmp)
            try:
                with PeakSampler([run_dir]) as sampler, PeakSampler([ENGINE_TMP]) as engine:
                    start = time.perf_counter()
                    proc = subprocess.run(command(name, target), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          env={**os.environ, "TMPDIR": tmp})
                    elapsed = time.perf_counter() - start
                if proc.returncode:
                    raise RuntimeError(f"{name} save failed: {proc.stderr.decode(errors='replace')[-800:]}")
                peaks.setdefault(name, []).append(sampler.peak - empty)
                leftovers.setdefault(name, []).append(disk_usage(tmp) - empty_tmp)
                engine_peaks.append(engine.peak)
                if name == "raw docker":
                    saved_size.append(disk_usage(target))
                return elapsed
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)

        names = ("docker-dir", "raw docker", "adapter")
        print(f"bench_save: image {image_size / 1e6:.0f} MB ({len(layers)} random layers of {layers[0]} MiB "
              f"on busybox), {runs} interleaved runs each after 1 warm-up", flush=True)
        cpu = {}
        times = interleaved({name: (lambda n=name: one_run(n)) for name in names}, runs, cpu=cpu, warmup=WARMUP)
        # interleaved drops the warm-up runs from times and cpu; drop them here too
        for samples in (peaks, leftovers):
            for name in names:
                del samples[name][:WARMUP]
        del engine_peaks[:WARMUP * len(names)]
        del saved_size[:WARMUP]

    med_t = {n: median(times[n]) for n in names}
    med_peak = {n: median(peaks[n]) for n in names}
    med_left = {n: median(leftovers[n]) for n in names}
    dir_size = median(saved_size)
    size_note = f"image {image_size / 1e6:.0f} MB, saved DIR {dir_size / 1e6:.0f} MB, {len(layers) + 1} layers"
    rows = [
        row(f"save wall time ({size_note})", "s", med_t["docker-dir"], med_t["raw docker"], med_t["adapter"],
            goal=1.05, note=f"{runs} runs, median; fastest run: " +
            ", ".join(f"{n} {min(times[n]):.2f} s" for n in names) + "; median client CPU time (user+sys of "
            "the tool and its children, docker CLI included): " +
            ", ".join(f"{n} {median(cpu[n]):.2f} s" for n in names)),
        row("save peak disk (DIR + TMPDIR)", "bytes", med_peak["docker-dir"], med_peak["raw docker"],
            med_peak["adapter"], limit=dir_size, goal_text=f"<= saved DIR size ({dir_size / 1e6:.0f} MB)",
            note=f"sampled every 50 ms; engine temp (same for all) peaked at {max(engine_peaks) / 1e6:.0f} MB"),
        row("TMPDIR left after save", "bytes", med_left["docker-dir"], med_left["raw docker"], med_left["adapter"],
            limit=0, goal_text="0"),
    ]
    write_results("save", rows, {"runs": runs, "layers_mib": layers, "image_size": image_size,
                                 "saved_dir_size": dir_size, "times": times, "cpu": cpu, "peaks": peaks,
                                 "leftovers": leftovers, "engine_tmp_peak": max(engine_peaks)})


if __name__ == "__main__":
    main()
