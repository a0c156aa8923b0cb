#!/usr/bin/env python3
"""Before/after in one run: two revisions, timed interleaved.

usage: compare_revisions.py [--cold] OLD_REV [NEW_REV]      (NEW_REV: the working tree)

Hot paths (default): `docker-dir-id DIR` and `docker-dir-exec DIR sh -c true` (image
present, no option, as in a Makefile) of each revision, with `python -c pass` and raw
`docker run --rm ID sh -c true` beside them.

--cold (issue 19's rows, where fixed costs show): `docker-dir-exec DIR sh -c true` of a
small image rebuilt with a 1 MiB layer while the engine holds its base, beside `docker
load -i IMAGE.tar && docker run --rm --init ID sh -c true`; and `docker-dir-save IMG DIR`
of a ~150 MB image, beside `docker save IMG | tar -x -C DIR`. All six in one loop.

Prints medians and ratios; the figures name both commits. Each revision runs from its
own temporary git worktree.
"""
import argparse
import contextlib
import os
import shutil
import tempfile

from plumbum import local

from benchlib import (CHECKOUT, PY, SAVE_150_LAYERS, SMALL_BASE_LAYERS, bench_image, check_saved, has_image,
                      interleaved, median, measured_at, quick_mode, raw_load_file_and_run, raw_save, raw_save_argv,
                      rebuilt_image, remove_image, run_timed, save_tar, workdir)

COMMAND = ["sh", "-c", "true"]

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


def hot(old_rev, new_rev):
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
                      "docker run --rm ID sh -c true": timed(["docker", "run", "--rm", image_id, *COMMAND])}
        for name, bin_dir in ((old_name, old_bin), (new_name, new_bin)):
            contenders[f"{name} id"] = timed([PY, os.path.join(bin_dir, "docker-dir-id"), image_dir])
            contenders[f"{name} exec hot"] = timed([PY, os.path.join(bin_dir, "docker-dir-exec"), image_dir, *COMMAND])
        print(f"compare_revisions: {old_name} vs {new_name}, {runs} interleaved runs each, {PY}", flush=True)
        samples = interleaved(contenders, runs, warmup=2)
    med = {name: median(values) for name, values in samples.items()}
    report(med, {}, old_name, new_name, (("id", "python -c pass"), ("exec hot", "docker run --rm ID sh -c true")))


def cold(old_rev, new_rev):
    runs = 3 if quick_mode() else 20
    save_layers = [4] * 4 if quick_mode() else SAVE_150_LAYERS
    with bench_image(SMALL_BASE_LAYERS) as (base_ref, base_id, _), rebuilt_image(base_ref, 1) as (new_ref, new_id), \
            bench_image(save_layers) as (save_ref, save_id, save_size), workdir("revisions-cold") as work, \
            checkout(old_rev) as (old_bin, old_name), checkout(new_rev) as (new_bin, new_name):
        image_dir, tar = os.path.join(work, "rebuilt"), os.path.join(work, "rebuilt.tar")
        raw_save(new_ref, image_dir)
        save_tar(new_ref, tar)
        save_parent = os.path.join(work, "save")
        target = os.path.join(save_parent, "img")

        def exec_cold(argv):
            def once():
                remove_image(new_id)
                if not has_image(base_id) or has_image(new_id):
                    raise RuntimeError("the engine must hold the base and not the rebuilt image before a cold run")
                return run_timed(argv, cwd=work)
            return once

        def save(argv, check):
            def once():
                shutil.rmtree(save_parent, ignore_errors=True)
                os.mkdir(save_parent)
                elapsed = run_timed(argv)
                if check:
                    check_saved(target, save_id)
                return elapsed
            return once

        raw_exec, raw_save_name = "docker load -i + run --init", "docker save | tar -x"
        contenders = {raw_exec: exec_cold(raw_load_file_and_run(tar, new_id, COMMAND)),
                      raw_save_name: save(raw_save_argv(save_ref, target), check=False)}
        for name, bin_dir in ((old_name, old_bin), (new_name, new_bin)):
            contenders[f"{name} exec cold"] = exec_cold([PY, os.path.join(bin_dir, "docker-dir-exec"), image_dir,
                                                         *COMMAND])
            contenders[f"{name} save"] = save([PY, os.path.join(bin_dir, "docker-dir-save"), "-q", save_ref, target],
                                              check=True)
        print(f"compare_revisions --cold: {old_name} vs {new_name}, {runs} interleaved runs each, {PY}; rebuilt "
              f"image on a busybox + 1 MiB base, save of {save_size / 1e6:.0f} MB", flush=True)
        cpu = {}
        samples = interleaved(contenders, runs, warmup=1, cpu=cpu)
        remove_image(new_id)
    med = {name: median(values) for name, values in samples.items()}
    report(med, {name: median(values) for name, values in cpu.items()}, old_name, new_name,
           (("exec cold", raw_exec), ("save", raw_save_name)))


def report(med, cpu, old_name, new_name, pairs):
    at = measured_at()
    print(f"measured {at['utc']} UTC, load average {at['load']}")
    for what, baseline in pairs:
        old, new = med[f"{old_name} {what}"], med[f"{new_name} {what}"]
        print(f"  {what}: {baseline} {med[baseline] * 1000:.1f} ms; {old_name} {old * 1000:.1f} ms "
              f"({old / med[baseline]:.2f}x {baseline}), {new_name} {new * 1000:.1f} ms ({new / med[baseline]:.2f}x); "
              f"{new_name}/{old_name} {new / old:.2f}x")
        if cpu:
            print(f"    median client CPU (user+sys): {baseline} {cpu[baseline] * 1000:.0f} ms, {old_name} "
                  f"{cpu[f'{old_name} {what}'] * 1000:.0f} ms, {new_name} {cpu[f'{new_name} {what}'] * 1000:.0f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="issue 19's cold exec and 150 MB save rows")
    parser.add_argument("old_rev")
    parser.add_argument("new_rev", nargs="?", help="default: the working tree")
    args = parser.parse_args()
    (cold if args.cold else hot)(args.old_rev, args.new_rev)


if __name__ == "__main__":
    main()
