#!/usr/bin/env python3
"""Issue 28 (item 5): the blob store, against skopeo and against the code before the store
("today": main's last commit before lib/docker_dir/format/store.py was added, run from a
temporary worktree with its own lib/), in one run.

1. Two images on one ~400 MB base (busybox and layers of 105, 100, 95, 90 MiB of random bytes), each
   with its own small layers (3 and 2 MiB), pushed by `docker push` (gzip) to a loopback TLS
   registry (registrylib.py). Per round, each contender pulls image 1 into a DIR, then image 2
   into another; both pulls are timed, image 2's is the figure:
   - docker-dir (this checkout, a fresh empty store per round: $DOCKER_DIR_STORE);
   - docker-dir, DOCKER_DIR_STORE=none (this checkout, store off);
   - docker-dir today (no store);
   - skopeo copy docker://… dir:… (its blob-info cache removed before image 1's copy, kept
     for image 2's: like docker-dir's store, it has seen image 1).
   Then, untimed, image 2's pull once more after image 1's, through a TCP relay counting the
   bytes the client receives (TLS records and HTTP headers included), against image 2's own
   layers + config + manifest; this checkout's pull runs there with BlobStore.place wrapped,
   to time the check of every blob taken from the store (read whole, sha256).
2. A single engine save (`docker-dir-save IMG DIR`) of image 1, store empty: this checkout
   (store on, store off) against today, interleaved.
3. Ten images on the same base, each with one own layer of 2 MiB, saved one after another
   with `docker-dir-save IMG DIRk`, store on (one fresh store) and off, interleaved round by
   round: `du -sc --block-size=1` over the ten DIRs (one invocation counts a hard-linked file
   once) against the distinct layers' sizes (one base + ten own layers), and the time of the
   ten saves.

usage: bench_store.py [--today REV]   (results/store.json)
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager

from benchlib import (CHECKOUT, MiB, PY, bench_image, check_saved, load_note, median, quick_mode,
                      remove_image, row, run_timed, sh, workdir, write_results)
from compare_revisions import checkout
from registrylib import CountingRelay, LoopbackRegistry, ThrowawayCA, client_env, docker_push, forget_skopeo_cache

STORE_MODULE = "lib/docker_dir/format/store.py"
REPOS = ("bench/store-one", "bench/store-two")
HEAD_BIN = os.path.join(CHECKOUT, "bin")
# The base's layers differ in size: an engine save (dockerd 20.10's legacy export names no
# digests) finds a layer in the store by its size, one blob per size (save_engine._in_store).
FULL = {"base": [105, 100, 95, 90], "own": [3, 2], "ten_own": 2, "pull_runs": 6, "save_runs": 7, "ten_rounds": 3,
        "counted": 3}
QUICK = {"base": [9, 8], "own": [1, 1], "ten_own": 1, "pull_runs": 2, "save_runs": 2, "ten_rounds": 1,
         "counted": 1}
# docker-dir-save of this checkout with the store's check of a reused blob (BlobStore.place:
# link, read whole, sha256) timed; each call appends "hex size start end" to $BENCH_STORE_CHECKS.
CHECKS_PROBE = """
import os, sys, time
sys.path.insert(0, {lib!r})
from docker_dir.format import store
place = store.BlobStore.place
def timed_place(self, hexd, dest, size=None):
    start = time.monotonic()
    try:
        return place(self, hexd, dest, size)
    finally:
        with open(os.environ["BENCH_STORE_CHECKS"], "a") as log:
            log.write(f"{{hexd}} {{size}} {{start}} {{time.monotonic()}}\\n")
store.BlobStore.place = timed_place
from docker_dir.cli.save import entry_point
sys.exit(entry_point())
"""


def pre_store_revision():
    """main's commit before the one that added the blob store."""
    added = sh("git", "-C", CHECKOUT, "log", "--diff-filter=A", "--format=%H", "HEAD", "--", STORE_MODULE).split()
    if not added:
        raise SystemExit(f"no commit adds {STORE_MODULE} here: give --today REV")
    return sh("git", "-C", CHECKOUT, "rev-parse", "--short", added[-1] + "^")


@contextmanager
def derived_image(base_ref, layers_mib):
    """An image FROM `base_ref` with one more layer of random bytes per entry of `layers_mib`,
    built offline; removed (by ID: every tag) on exit. Yields (ref, image_id)."""
    work = tempfile.mkdtemp(prefix="docker-dir-bench-derived-")
    ref = base_ref.rsplit(":", 1)[0] + ":own-" + uuid.uuid4().hex[:8]
    image_id = None
    try:
        steps = [f"FROM {base_ref}"] + [f"RUN head -c {mib * MiB} /dev/urandom > /own-{n}"
                                        for n, mib in enumerate(layers_mib)]
        with open(os.path.join(work, "Dockerfile"), "w") as out:
            out.write("\n".join(steps) + "\n")
        # --no-cache: each image its own random bytes (the same RUN line on the same base is cached)
        subprocess.run(["docker", "build", "-q", "--no-cache", "-t", ref, work], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        image_id = sh("docker", "image", "inspect", "--format", "{{.Id}}", ref)
        yield ref, image_id
    finally:
        if image_id:
            remove_image(image_id)
        shutil.rmtree(work, ignore_errors=True)


def measured(argv, env=None):
    """(wall s, user+sys s of the process and its children) of one run that must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run_timed(argv, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class DockerDir:
    """docker-dir-save of one tree (bin/), with the store on (a fresh one each time), off, or
    absent (code before the store)."""

    def __init__(self, bin_dir, store):
        self.bin_dir, self.store = bin_dir, store  # store: "fresh", "none" or None

    def argv(self, *args):
        return [PY, os.path.join(self.bin_dir, "docker-dir-save"), "-q", *args]

    def env(self, scratch):
        env = client_env()
        env.pop("DOCKER_DIR_STORE", None)
        if self.store == "fresh":
            env["DOCKER_DIR_STORE"] = os.path.join(scratch, "store")
        elif self.store == "none":
            env["DOCKER_DIR_STORE"] = "none"
        return env


def target_in(scratch, name):
    """A DIR alone in its parent (check_saved fails on anything left beside it)."""
    parent = os.path.join(scratch, name)
    os.makedirs(parent)
    return os.path.join(parent, "img")


# -- 1. two pulls on one base ------------------------------------------------------------

class Pulls:
    def __init__(self, work, registry, sources, ids, contenders):
        self.work, self.registry, self.sources, self.ids = work, registry, sources, ids
        self.contenders = contenders  # name -> DockerDir, or None for skopeo

    def pair(self, name):
        """Image 1 then image 2 into fresh DIRs: ((wall, cpu) of the first, of the second)."""
        scratch = tempfile.mkdtemp(prefix="pulls-", dir=self.work)
        try:
            client = self.contenders[name]
            if client is None:
                forget_skopeo_cache()
                return tuple(measured(["skopeo", "copy", "-q", "--src-no-creds", f"docker://{source}",
                                       f"dir:{os.path.join(scratch, str(n))}"], env=client_env())
                             for n, source in enumerate(self.sources))
            env = client.env(scratch)
            targets = [target_in(scratch, str(n)) for n in range(2)]
            times = tuple(measured(client.argv(f"docker://{source}", target), env)
                          for source, target in zip(self.sources, targets))
            for target, image_id in zip(targets, self.ids):
                check_saved(target, image_id)
            if client.store == "fresh":
                check_linked(targets[1], shared_blobs(targets), 3, "the second pull")
            return times
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def counted(self, name, lib=None):
        """Image 1 pulled, then image 2 through a relay counting what the client receives.
        For this checkout (`lib`), the store's checks are timed: {bytes, wall, checks}."""
        client = self.contenders[name]
        scratch = tempfile.mkdtemp(prefix="counted-", dir=self.work)
        try:
            second = f"{self.registry.host}/{REPOS[1]}:1"
            if client is None:
                forget_skopeo_cache()
                run_timed(["skopeo", "copy", "-q", "--src-no-creds", f"docker://{self.sources[0]}",
                           f"dir:{os.path.join(scratch, '0')}"], env=client_env())
            else:
                env = client.env(scratch)
                first = target_in(scratch, "0")
                run_timed(client.argv(f"docker://{self.sources[0]}", first), env=env)
            log = os.path.join(scratch, "checks")
            with CountingRelay(self.registry.port, self.registry.ca) as relay:
                source = f"docker://{relay.host}/{REPOS[1]}:1"
                if client is None:
                    start = time.perf_counter()
                    run_timed(["skopeo", "copy", "-q", "--src-no-creds", source, f"dir:{os.path.join(scratch, '1')}"],
                              env=client_env())
                else:
                    target = target_in(scratch, "1")
                    argv = client.argv(source, target)
                    if lib:
                        argv = [PY, "-c", CHECKS_PROBE.format(lib=lib)] + argv[2:]
                    start = time.perf_counter()
                    run_timed(argv, env={**env, "BENCH_STORE_CHECKS": log})
                wall = time.perf_counter() - start
                time.sleep(0.2)  # the relay's threads see the last bytes and the closes
                received = relay.received
            if client is not None:
                check_saved(target, self.ids[1])
            checks = []
            if lib:
                with open(log) as lines:
                    checks = [(int(size), float(begin), float(end))
                              for _hex, size, begin, end in (line.split() for line in lines)]
                if not checks:
                    raise RuntimeError(f"{second}: the pull took nothing from the store")
            return {"bytes": received, "wall": wall, "checks": checks, "second": second}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def shared_blobs(targets):
    """Names of the blobs every DIR in `targets` holds (the base's)."""
    sets = [set(os.listdir(os.path.join(target, "blobs", "sha256"))) for target in targets]
    return set.intersection(*sets)


def check_linked(target, blobs, links, what):
    """The store did its work: each shared blob of `target` is one file with at least `links` names."""
    if not blobs:
        raise RuntimeError(f"{what}: no blob in common with the other DIRs")
    for name in blobs:
        count = os.stat(os.path.join(target, "blobs", "sha256", name)).st_nlink
        if count < links:
            raise RuntimeError(f"{what}: blob {name[:12]} has {count} link(s), not {links} or more: "
                               "the store was not used")


def measure_pulls(work, ca, base_ref, sizes, today_bin, today_name):
    with ExitStack() as stack:
        images = [stack.enter_context(derived_image(base_ref, sizes["own"])) for _ in REPOS]
        registry = stack.enter_context(LoopbackRegistry(work, ca))
        for (ref, _), repo in zip(images, REPOS):
            docker_push(ref, registry, f"{repo}:1")
        manifests = [manifest_of(registry, repo) for repo in REPOS]
        base_layers = [layer["digest"] for layer in manifests[0][0]["layers"][:len(sizes["base"]) + 1]]
        own = [layer for layer in manifests[1][0]["layers"] if layer["digest"] not in
               {other["digest"] for other in manifests[0][0]["layers"]}]
        if [layer["digest"] for layer in manifests[1][0]["layers"][:len(base_layers)]] != base_layers or \
                len(own) != len(sizes["own"]):
            raise RuntimeError("the two pushed images do not share the base's layers, or have no own layers")
        own_bytes = sum(layer["size"] for layer in own)
        documents = manifests[1][0]["config"]["size"] + manifests[1][1]
        base_bytes = sum(layer["size"] for layer in manifests[0][0]["layers"][:len(base_layers)])
        contenders = {"docker-dir": DockerDir(HEAD_BIN, "fresh"), "docker-dir, store off": DockerDir(HEAD_BIN, "none"),
                      f"docker-dir {today_name} (today)": DockerDir(today_bin, None), "skopeo": None}
        pulls = Pulls(work, registry, [f"{registry.host}/{repo}:1" for repo in REPOS],
                      [image_id for _, image_id in images], contenders)
        runs = sizes["pull_runs"]
        print(f"bench_store [pulls]: base {base_bytes / 1e6:.0f} MB gzipped ({len(base_layers)} layers), image 2's "
              f"own layers {own_bytes / 1e6:.1f} MB; {runs} interleaved rounds of {', '.join(contenders)} "
              "after one warm-up, two pulls each", flush=True)
        first, second, cpu = ({name: [] for name in contenders} for _ in range(3))
        loads = []
        for round_ in range(runs + 1):
            if round_:
                loads.append(round(os.getloadavg()[0], 2))
            for name in contenders:
                one, two = pulls.pair(name)
                if round_:
                    first[name].append(one[0])
                    second[name].append(two[0])
                    cpu[name].append(two[1])
        today = f"docker-dir {today_name} (today)"
        counted = {"docker-dir": [pulls.counted("docker-dir", os.path.join(CHECKOUT, "lib"))
                                  for _ in range(sizes["counted"])],
                   today: [pulls.counted(today)], "skopeo": [pulls.counted("skopeo")]}
    return {"first": first, "second": second, "cpu": cpu, "loads": loads, "counted": counted,
            "own_bytes": own_bytes, "documents": documents, "base_bytes": base_bytes,
            "own_layers": len(own), "today": today}


def manifest_of(registry, repo):
    """(manifest, its size in bytes as the registry serves it)."""
    status, _, body = registry.request("GET", f"/v2/{repo}/manifests/1", {
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"})
    if status != 200:
        raise RuntimeError(f"{registry.host}/{repo}:1: no manifest (HTTP {status})")
    return json.loads(body), len(body)


# -- 2. one engine save, store empty -------------------------------------------------------

def measure_single_save(work, ref, image_id, sizes, today_bin, today_name):
    contenders = {"docker-dir": DockerDir(HEAD_BIN, "fresh"), "docker-dir, store off": DockerDir(HEAD_BIN, "none"),
                  f"docker-dir {today_name} (today)": DockerDir(today_bin, None)}
    runs = sizes["save_runs"]
    print(f"bench_store [single save]: {runs} interleaved rounds of {', '.join(contenders)} after one warm-up",
          flush=True)
    times, cpu, loads = {name: [] for name in contenders}, {name: [] for name in contenders}, []
    for round_ in range(runs + 1):
        if round_:
            loads.append(round(os.getloadavg()[0], 2))
        for name, client in contenders.items():
            scratch = tempfile.mkdtemp(prefix="save-", dir=work)
            try:
                target = target_in(scratch, "dir")
                wall, used = measured(client.argv(ref, target), client.env(scratch))
                check_saved(target, image_id)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            if round_:
                times[name].append(wall)
                cpu[name].append(used)
    return {"times": times, "cpu": cpu, "loads": loads}


# -- 3. ten saves on one base ----------------------------------------------------------------

def measure_ten_saves(work, base_ref, sizes):
    modes = {"store on": DockerDir(HEAD_BIN, "fresh"), "store off": DockerDir(HEAD_BIN, "none")}
    with ExitStack() as stack:
        images = [stack.enter_context(derived_image(base_ref, [sizes["ten_own"]])) for _ in range(10)]
        rounds = sizes["ten_rounds"]
        print(f"bench_store [ten saves]: 10 images on the base, {rounds} round(s) of both modes, interleaved",
              flush=True)
        found = {mode: {"saves": [], "du": [], "distinct": None} for mode in modes}
        loads = []
        for _ in range(rounds):
            loads.append(round(os.getloadavg()[0], 2))
            for mode, client in modes.items():
                scratch = tempfile.mkdtemp(prefix="ten-", dir=work)
                try:
                    env = client.env(scratch)
                    targets = [target_in(scratch, str(k)) for k in range(len(images))]
                    walls = [run_timed(client.argv(ref, target), env=env)
                             for (ref, _), target in zip(images, targets)]
                    for (_, image_id), target in zip(images, targets):
                        check_saved(target, image_id)
                    if client.store == "fresh":
                        check_linked(targets[-1], shared_blobs(targets), len(targets) + 1, "the tenth save")
                    found[mode]["saves"].append(walls)
                    found[mode]["du"].append(du_total(targets))
                    found[mode]["distinct"] = distinct_layers(targets)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
    return {"modes": found, "loads": loads}


def du_total(targets):
    """Bytes allocated under all `targets`, a hard-linked file counted once (one du invocation)."""
    out = subprocess.run(["du", "-sc", "--block-size=1", *targets], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def distinct_layers(targets):
    """Total size of the layer blobs the DIRs name, each distinct one once: one base plus
    every image's own layers."""
    sizes = {}
    for target in targets:
        with open(os.path.join(target, "manifest.json")) as stream:
            for image in json.load(stream):
                for layer in image["Layers"]:
                    path = os.path.realpath(os.path.join(target, layer))
                    sizes[os.path.basename(path)] = os.path.getsize(path)
    return sum(sizes.values())


# -- the rows --------------------------------------------------------------------------------

def rows_of(pulls, single, ten, today_name, sizes):
    today = pulls["today"]
    second = {name: median(values) for name, values in pulls["second"].items()}
    first = {name: median(values) for name, values in pulls["first"].items()}
    runs = len(pulls["second"]["docker-dir"])
    # metrics named by the sizes asked for (stable from run to run: report.py --merge matches them)
    base = f"a base of {len(sizes['base'])} random layers, {sum(sizes['base'])} MiB, on busybox"
    own = " and ".join(map(str, sizes["own"])) + " MiB"
    shape = f"two images on {base}, each + {own}"
    checks = [summarise_checks(found) for found in pulls["counted"]["docker-dir"]]
    check_note = ("the store's checks of the reused blobs (BlobStore.place: link, read whole, sha256; in the "
                  "transfer threads, beside the own layers' downloads), in "
                  f"{len(checks)} counted run(s) through the relay: "
                  + "; ".join(f"{c['blobs']} blobs, {c['bytes'] / 1e6:.0f} MB, {c['sum'] * 1000:.0f} ms summed over "
                              f"the calls, {c['span'] * 1000:.0f} ms from the first call's start to the last's end, "
                              f"of a {c['wall'] * 1000:.0f} ms pull ({c['bytes'] / c['sum'] / 1e9:.2f} GB/s)"
                              for c in checks)
                  + "; the blobs were in the page cache (the first pull had just written them)")
    loads = load_note(pulls["loads"])
    pulls_note = (f"{runs} interleaved rounds after a warm-up; each round every contender pulls image 1 then image 2 "
                  "into fresh DIRs from a loopback TLS registry (CA in /etc/docker/certs.d); docker-dir with a fresh "
                  "empty DOCKER_DIR_STORE each round, skopeo with its blob-info cache removed before image 1's copy "
                  "(kept for image 2's); medians of image 2's pull: "
                  + ", ".join(f"{name} {fmt_s(value)}" for name, value in second.items())
                  + "; client CPU (user+sys): "
                  + ", ".join(f"{name} {fmt_s(median(values))}" for name, values in pulls["cpu"].items())
                  + f"; {loads}")
    counted = pulls["counted"]
    own_total = pulls["own_bytes"] + pulls["documents"]
    dd_bytes = median([c["bytes"] for c in counted["docker-dir"]])
    ten_modes = ten["modes"]
    du_on, du_off = median(ten_modes["store on"]["du"]), median(ten_modes["store off"]["du"])
    distinct = ten_modes["store on"]["distinct"]
    ten_on = [sum(walls) for walls in ten_modes["store on"]["saves"]]
    ten_off = [sum(walls) for walls in ten_modes["store off"]["saves"]]
    later_on = median([wall for walls in ten_modes["store on"]["saves"] for wall in walls[1:]])
    later_off = median([wall for walls in ten_modes["store off"]["saves"] for wall in walls[1:]])
    single_med = {name: median(values) for name, values in single["times"].items()}
    today_single = f"docker-dir {today_name} (today)"
    baseline_today = f"docker-dir {today_name}, before the store"
    return [
        row(f"second pull of {shape}: the store holds the first", "s", second["docker-dir"], second["skopeo"], None,
            goal=0.3, baseline="skopeo copy, after image 1", note=pulls_note),
        row(f"second pull of {shape}, against today", "s", second["docker-dir"], second[today], None,
            baseline=baseline_today, note=f"the same runs; DOCKER_DIR_STORE=none at this commit: "
                                          f"{fmt_s(second['docker-dir, store off'])}; " + check_note),
        row("second pull: bytes received", "bytes", dd_bytes, own_total, None, goal=1.05,
            baseline="its own layers + config + manifest",
            note=f"bytes from the registry to the client through a counting TCP relay (TLS records and HTTP headers "
                 f"included), image 2 pulled right after image 1, median of {len(counted['docker-dir'])}: docker-dir "
                 + ", ".join(str(c["bytes"]) for c in counted["docker-dir"])
                 + f" B; image 2's own {pulls['own_layers']} layers {pulls['own_bytes']} B (gzip) + config and "
                 f"manifest {pulls['documents']} B; {today} {counted[today][0]['bytes']} B, skopeo "
                 f"{counted['skopeo'][0]['bytes']} B (the base is {pulls['base_bytes']} B gzipped)"),
        row(f"first pull, store empty ({base} + {own})", "s", first["docker-dir"],
            first[today], None, goal=1.05, baseline=baseline_today,
            note="the same rounds as the second pull's (the first of each pair); medians: "
                 + ", ".join(f"{name} {fmt_s(value)}" for name, value in first.items()) + f"; {loads}"),
        row(f"single engine save, store empty ({base} + {own})", "s",
            single_med["docker-dir"], single_med[today_single], None, goal=1.05, baseline=baseline_today,
            note=f"docker-dir-save IMG DIR, {len(single['times']['docker-dir'])} interleaved rounds after a warm-up, "
                 "a fresh empty store each run; medians: "
                 + ", ".join(f"{name} {fmt_s(value)}" for name, value in single_med.items())
                 + "; client CPU (user+sys): "
                 + ", ".join(f"{name} {fmt_s(median(values))}" for name, values in single["cpu"].items())
                 + f"; {load_note(single['loads'])}"),
        row(f"ten engine saves of images on one base ({sum(sizes['base'])} MiB), each + {sizes['ten_own']} MiB: "
            "disk (du over the ten DIRs)", "bytes", du_on, distinct, None, goal=1.1,
            baseline="one base + the ten own layers",
            note=f"docker-dir-save IMGk DIRk for 10 images on the base, each adding one own layer of "
                 f"{sizes['ten_own']} MiB, one after another, "
                 f"one fresh store; du -sc --block-size=1 over the ten DIRs (the store outside them): {du_on} B; the "
                 f"distinct layer blobs they name: {distinct} B; DOCKER_DIR_STORE=none: {du_off} B "
                 f"({du_off / distinct:.2f}x)"),
        row("ten engine saves on one base: disk with DOCKER_DIR_STORE=none", "bytes", du_off, distinct, None,
            baseline="one base + the ten own layers", note="the same saves with the store off: each DIR its own copy"),
        row("ten engine saves on one base: wall time of the ten", "s", median(ten_on), median(ten_off), None,
            baseline="docker-dir, DOCKER_DIR_STORE=none",
            note=f"{len(ten_on)} round(s), store on and off interleaved; the first save of a round (store empty): "
                 f"{fmt_s(median([w[0] for w in ten_modes['store on']['saves']]))} on, "
                 f"{fmt_s(median([w[0] for w in ten_modes['store off']['saves']]))} off; each later save (median): "
                 f"{fmt_s(later_on)} on (the base read against the store and linked), {fmt_s(later_off)} off; "
                 f"{load_note(ten['loads'])}"),
    ]


def summarise_checks(found):
    checks = found["checks"]
    return {"blobs": len(checks), "bytes": sum(size for size, _, _ in checks),
            "sum": sum(end - begin for _, begin, end in checks),
            "span": max(end for _, _, end in checks) - min(begin for _, begin, _ in checks), "wall": found["wall"]}


def fmt_s(seconds):
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--today", help="the revision before the store (default: the parent of the commit that "
                                        f"added {STORE_MODULE})")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "openssl", "du"):
        if not shutil.which(tool):
            raise SystemExit(f"bench_store needs {tool} (the Debian package of that name)")
    sizes = QUICK if quick_mode() else FULL
    today_rev = args.today or pre_store_revision()
    with checkout(today_rev) as (today_bin, today_name), workdir("store") as work, \
            bench_image(sizes["base"]) as (base_ref, _base_id, base_size):
        print(f"bench_store: base image {base_size / 1e6:.0f} MB; today = {today_name}", flush=True)
        ca = ThrowawayCA(os.path.join(work, "ca"))
        pulls = measure_pulls(work, ca, base_ref, sizes, today_bin, today_name)
        with derived_image(base_ref, sizes["own"]) as (ref, image_id):
            single = measure_single_save(work, ref, image_id, sizes, today_bin, today_name)
        ten = measure_ten_saves(work, base_ref, sizes)
    rows = rows_of(pulls, single, ten, today_name, sizes)
    write_results("store", rows, {"today": today_name, "sizes": sizes, "base_size": base_size, "pulls": pulls,
                                  "single_save": single, "ten_saves": ten})


if __name__ == "__main__":
    sys.exit(main())
