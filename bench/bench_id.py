#!/usr/bin/env python3
"""Issue 2: start-up cost of `docker-dir-id DIR` against a bare `python -c pass`
(same interpreter) and against the adapter's `get_image(DIR)`."""
import os

from benchlib import PY, bench_image, docker_dir, interleaved, median, quick_mode, raw_save, row, workdir, \
    write_results


def main():
    runs = 20 if quick_mode() else 100
    with bench_image([1]) as (ref, image_id, size), workdir("id") as work:
        image_dir = os.path.join(work, "img")
        raw_save(ref, image_dir)
        contenders = {
            "docker-dir": docker_dir("id", image_dir),
            "python -c pass": [PY, "-c", "pass"],
            "adapter": [PY, "-c", "import sys; from datalad_container.adapters.docker import get_image; "
                                  "print(get_image(sys.argv[1]))", image_dir],
        }
        print(f"bench_id: {runs} interleaved runs each, interpreter {PY}", flush=True)
        cpu = {}
        samples = interleaved(contenders, runs, warmup=3, cpu=cpu)
    med = {name: median(values) for name, values in samples.items()}
    med_cpu = {name: median(values) for name, values in cpu.items()}
    write_results("id", [row("docker-dir-id DIR (start-up)", "s", med["docker-dir"], med["python -c pass"],
                             med["adapter"], goal=1.5, baseline="python -c pass",
                             note=f"{runs} runs, median wall time; median CPU time (user+sys, not inflated by a busy "
                                  f"machine): docker-dir {med_cpu['docker-dir'] * 1000:.1f} ms, python -c pass "
                                  f"{med_cpu['python -c pass'] * 1000:.1f} ms "
                                  f"({med_cpu['docker-dir'] / med_cpu['python -c pass']:.2f}x), adapter "
                                  f"{med_cpu['adapter'] * 1000:.1f} ms")],
                  {"runs": runs, "python": PY, "samples": samples, "cpu": cpu})


if __name__ == "__main__":
    main()
