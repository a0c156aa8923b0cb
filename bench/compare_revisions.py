#!/usr/bin/env python3
"""Before/after in one run: the hot paths of two revisions, timed interleaved.

usage: compare_revisions.py OLD_REV [NEW_REV]      (NEW_REV: the working tree)

Times `docker-dir-id DIR` and `docker-dir-exec DIR sh -c true` (image present, no
option, as in a Makefile) of each revision, run by run, with `python -c pass` and raw
`docker run --rm ID sh -c true` beside them. Prints medians and ratios; the figures
name both commits. Each revision runs from its own temporary git worktree.
"""
import contextlib
import os
import shutil
import sys
import tempfile

from plumbum import local

from benchlib import (CHECKOUT, PY, bench_image, interleaved, median, measured_at, quick_mode, raw_save, run_timed,
                      workdir)

git = local["git"]["-C", CHECKOUT]


@contextlib.contextmanager
def checkout(rev):
    """bin/ of `rev` in a temporary worktree; the working tree itself when rev is None."""
    if rev is None:
        local[PY]["-m", "compileall", "-q", os.path.join(CHECKOUT, "lib")]()
        yield os.path.join(CHECKOUT, "bin"), measured_at()["commit"]
        return
    path = tempfile.mkdtemp(prefix="docker-dir-rev-")
    try:
        git("worktree", "add", "-q", "--detach", path, rev)
        local[PY]["-m", "compileall", "-q", os.path.join(path, "lib")]()
        yield os.path.join(path, "bin"), git("rev-parse", "--short", rev).strip()
    finally:
        git("worktree", "remove", "--force", path, retcode=None)
        shutil.rmtree(path, ignore_errors=True)


def main():
    old_rev = sys.argv[1]
    new_rev = sys.argv[2] if len(sys.argv) > 2 else None
    runs = 10 if quick_mode() else 60
    with bench_image([1]) as (ref, image_id, _), workdir("revisions") as work, \
            checkout(old_rev) as (old_bin, old_name), checkout(new_rev) as (new_bin, new_name):
        image_dir = os.path.join(work, "img")
        raw_save(ref, image_dir)
        for bin_dir in (old_bin, new_bin):  # the private tag, so both time the hot path
            run_timed([PY, os.path.join(bin_dir, "docker-dir-exec"), "--load-only", image_dir])

        def timed(argv):
            return lambda: run_timed(argv, cwd=work)

        contenders = {"python -c pass": timed([PY, "-c", "pass"]),
                      "docker run --rm ID sh -c true": timed(["docker", "run", "--rm", image_id, "sh", "-c", "true"])}
        for name, bin_dir in ((old_name, old_bin), (new_name, new_bin)):
            contenders[f"{name} id"] = timed([PY, os.path.join(bin_dir, "docker-dir-id"), image_dir])
            contenders[f"{name} exec hot"] = timed([PY, os.path.join(bin_dir, "docker-dir-exec"), image_dir,
                                                    "sh", "-c", "true"])
        print(f"compare_revisions: {old_name} vs {new_name}, {runs} interleaved runs each, {PY}", flush=True)
        samples = interleaved(contenders, runs, warmup=2)
    med = {name: median(values) for name, values in samples.items()}
    at = measured_at()
    print(f"measured {at['utc']} UTC, load average {at['load']}")
    for what, baseline in (("id", "python -c pass"), ("exec hot", "docker run --rm ID sh -c true")):
        old, new = med[f"{old_name} {what}"], med[f"{new_name} {what}"]
        print(f"  {what}: {old_name} {old * 1000:.1f} ms ({old / med[baseline]:.2f}x {baseline}), "
              f"{new_name} {new * 1000:.1f} ms ({new / med[baseline]:.2f}x); {new_name}/{old_name} {new / old:.2f}x")


if __name__ == "__main__":
    main()
