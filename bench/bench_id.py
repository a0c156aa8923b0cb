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
        samples = interleaved(contenders, runs, warmup=3)
    med = {name: median(values) for name, values in samples.items()}
    write_results("id", [row("docker-dir-id DIR (start-up)", "s", med["docker-dir"], med["python -c pass"],
                             med["adapter"], goal=1.5, baseline="python -c pass",
                             note=f"{runs} runs, median")],
                  {"runs": runs, "python": PY, "samples": samples})


if __name__ == "__main__":
    main()
