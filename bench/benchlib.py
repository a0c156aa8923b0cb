"""Shared bits of the bench scripts: the three contenders' command lines, offline
test images, timing loops, disk sampling and the results files.

Every bench script runs under one interpreter (bench/.venv-peer, made by
bench/run-all): that interpreter starts docker-dir's bin/ scripts, the
datalad-container adapter and the `python -c pass` baseline, so interpreter
start-up is the same for all of them.
"""
import atexit
import contextlib
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from plumbum import local

BENCH = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")  # per-script JSON, gitignored; report.py merges them
PY = os.path.abspath(sys.executable)
MiB = 1024 * 1024
# The save row where fixed costs show: about 150 MB of image, 4 random layers on busybox.
SAVE_150_LAYERS = [35] * 4
# The registry benches' two image shapes (issue 26): the bench image, and one large layer on
# busybox, as a typical application image is (150 MiB of random bytes: ~157 MB gzipped).
REGISTRY_SHAPES = {"5-layer": [130] * 4, "1-layer": [150]}
REGISTRY_SHAPES_QUICK = {"5-layer": [8] * 4, "1-layer": [8]}
# The cold exec row where fixed costs show: a base of busybox + 1 MiB, rebuilt with 1 MiB more.
SMALL_BASE_LAYERS = [1]

# docker-dir's blob store (issue 28): the benches' own, never the user's ~/.cache one; and
# every timed docker-dir run gets an empty one (run_timed), so a save or pull is as cold as
# its peers' (docker's, skopeo's caches cleared). bench_store.py sets its own.
if "DOCKER_DIR_STORE" not in os.environ:
    os.environ["DOCKER_DIR_STORE"] = tempfile.mkdtemp(prefix="docker-dir-bench-store-")
    atexit.register(shutil.rmtree, os.environ["DOCKER_DIR_STORE"], True)
BENCH_STORE = os.environ["DOCKER_DIR_STORE"]


def docker_dir(tool, *args):
    """argv for a docker-dir script from this checkout, started by this interpreter (not a shim)."""
    return [PY, os.path.join(CHECKOUT, "bin", f"docker-dir-{tool}"), *args]


def adapter(*args):
    return [PY, "-m", "datalad_container.adapters.docker", *args]


def quick_mode():
    return os.environ.get("BENCH_QUICK") == "1"


def registry_shapes(chosen=None):
    """{shape name: layer sizes in MiB} of the registry benches, all or those chosen."""
    shapes = REGISTRY_SHAPES_QUICK if quick_mode() else REGISTRY_SHAPES
    return {name: shapes[name] for name in (chosen or shapes)}


# -- images ------------------------------------------------------------------

def sh(*argv):
    return local[argv[0]][argv[1:]]().strip()


def _busybox_rootfs(path):
    os.makedirs(os.path.join(path, "bin"))
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, os.path.join(path, "bin", "busybox"))
    for applet in sh(busybox, "--list").split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(path, "bin", applet))


@contextlib.contextmanager
def bench_image(layers_mib):
    """A unique busybox image with one extra layer of random bytes per entry of
    `layers_mib`, built offline; removed (with every tag, docker-dir's private
    one included) on exit. Yields (ref, image_id, size_bytes)."""
    tag = f"docker-dir-bench/{uuid.uuid4().hex[:12]}"
    work = tempfile.mkdtemp(prefix="docker-dir-bench-build-")
    base_ref, ref = f"{tag}:base", f"{tag}:big"
    image_id = None
    try:
        rootfs = os.path.join(work, "rootfs")
        _busybox_rootfs(rootfs)
        (local["tar"]["-C", rootfs, "-c", "."] | local["docker"]["import", "-c", "ENV PATH=/bin", "-", base_ref])()
        steps = [f"FROM {base_ref}"]
        steps += [f"RUN head -c {mib * MiB} /dev/urandom > /random-{n}" for n, mib in enumerate(layers_mib)]
        with open(os.path.join(work, "Dockerfile"), "w") as out:
            out.write("\n".join(steps) + "\n")
        # The legacy builder needs no buildx plugin and no registry.
        subprocess.run(["docker", "build", "-q", "-t", ref, work], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        image_id = sh("docker", "image", "inspect", "--format", "{{.Id}}", ref)
        size = int(sh("docker", "image", "inspect", "--format", "{{.Size}}", ref))
        yield ref, image_id, size
    finally:
        if image_id:
            remove_image(image_id)
        subprocess.run(["docker", "rmi", "-f", ref, base_ref], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def rebuilt_image(ref, top_mib):
    """`ref` rebuilt with one more layer of `top_mib` MiB of random bytes, as a new
    version of an image is; removed on exit. Yields (ref, image_id)."""
    work = tempfile.mkdtemp(prefix="docker-dir-bench-rebuild-")
    new_ref = ref.rsplit(":", 1)[0] + ":rebuilt"
    image_id = None
    try:
        with open(os.path.join(work, "Dockerfile"), "w") as out:
            out.write(f"FROM {ref}\nRUN head -c {top_mib * MiB} /dev/urandom > /top.bin\n")
        subprocess.run(["docker", "build", "-q", "-t", new_ref, work], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        image_id = sh("docker", "image", "inspect", "--format", "{{.Id}}", new_ref)
        yield new_ref, image_id
    finally:
        if image_id:
            remove_image(image_id)
        shutil.rmtree(work, ignore_errors=True)


def remove_image(image_id):
    """Forget the image entirely (all its tags), so the next exec is cold."""
    subprocess.run(["docker", "rmi", "-f", image_id], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def has_image(image_id):
    return subprocess.run(["docker", "image", "inspect", image_id], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


@contextlib.contextmanager
def workdir(prefix):
    """Scratch space on the same filesystem as TMPDIR, removed on exit."""
    path = tempfile.mkdtemp(prefix=f"docker-dir-bench-{prefix}-", dir=os.environ.get("BENCH_WORKDIR"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- measuring ---------------------------------------------------------------

def run_timed(argv, **kwargs):
    """Wall time of one run; a failing run is an error, not a fast sample. A docker-dir
    command left with the benches' store gets an empty store of its own (made and removed
    outside the time)."""
    env = kwargs.get("env") or os.environ
    fresh = None
    if env.get("DOCKER_DIR_STORE") == BENCH_STORE and any("docker-dir-" in str(arg) for arg in argv[:2]):
        fresh = tempfile.mkdtemp(prefix="docker-dir-bench-store-")
        kwargs["env"] = dict(env, DOCKER_DIR_STORE=fresh)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          **kwargs)
    elapsed = time.perf_counter() - start
    if fresh:
        shutil.rmtree(fresh, ignore_errors=True)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}")
    return elapsed


def interleaved(contenders, runs, before_each=None, warmup=1, cpu=None, loads=None):
    """Time each contender `runs` times, round-robin, so drift on a shared engine
    hits all of them alike. contenders: {name: argv or callable}. Returns {name: [s]}.
    With a dict `cpu`, also fills {name: [user+sys s of the child processes]}: a figure
    that waiting for a busy CPU does not inflate. With a list `loads`, appends the 1-minute
    load average at the start of each round."""
    def once(name, what):
        if before_each:
            before_each(name)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        elapsed = what() if callable(what) else run_timed(what)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    for _ in range(warmup):
        for name, what in contenders.items():
            once(name, what)
    samples = {name: [] for name in contenders}
    for _ in range(runs):
        if loads is not None:
            loads.append(round(os.getloadavg()[0], 2))
        for name, what in contenders.items():
            elapsed, cpu_time = once(name, what)
            samples[name].append(elapsed)
            if cpu is not None:
                cpu.setdefault(name, []).append(cpu_time)
    return samples


def load_note(loads):
    """The 1-minute load average over a measurement, for its note."""
    return f"load average {min(loads):.1f}-{max(loads):.1f} during the runs" if loads else ""


def median(values):
    return statistics.median(values) if values else None


def disk_usage(path):
    """Bytes allocated for `path` and everything under it (like du), tolerant of files vanishing mid-walk."""
    try:
        total = os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class PeakSampler:
    """Samples the allocated size of some paths every `interval` s in a thread; keeps the peak."""

    def __init__(self, paths, interval=0.05):
        self.paths = paths
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            self.peak = max(self.peak, sum(disk_usage(p) for p in self.paths))
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, sum(disk_usage(p) for p in self.paths))


# -- results -----------------------------------------------------------------

def row(metric, unit, docker_dir_value, raw_value, adapter_value, goal=None, limit=None, goal_text=None,
        baseline="raw docker", note=""):
    """One line of the results table. The goal is either `goal`, the highest acceptable
    docker-dir/baseline ratio, or `limit`, the highest acceptable docker-dir value."""
    if goal_text is None and goal is not None:
        goal_text = f"<= {goal:g}x {baseline}"
    met = None
    if goal is not None and docker_dir_value is not None and raw_value:
        met = docker_dir_value / raw_value <= goal
    elif limit is not None and docker_dir_value is not None:
        met = docker_dir_value <= limit
    return {"metric": metric, "unit": unit, "docker_dir": docker_dir_value, "raw": raw_value,
            "adapter": adapter_value, "goal": goal, "limit": limit, "goal_text": goal_text, "met": met,
            "baseline": baseline, "note": note}


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 1e6:.0f} MB"
    return f"{value:g} {unit}"


def measured_at():
    """Which code (the commit that last changed lib/, bin/ or pyproject.toml), when, and how
    busy the machine was: recorded with every row, since the table merges rows of runs
    made at different times."""
    git = local["git"]["-C", CHECKOUT]
    code = ("lib", "bin", "pyproject.toml")
    # the code measured: the last commit that changed it (a bench-only commit after it changes nothing)
    commit = git("log", "-1", "--format=%h", "HEAD", "--", *code).strip()
    if git("status", "--porcelain", "--", *code).strip():
        commit += "+uncommitted"
    return {"commit": commit, "head": git("rev-parse", "--short", "HEAD").strip(), "utc": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
            "load": [round(x, 1) for x in os.getloadavg()]}


def write_results(name, rows, info):
    os.makedirs(RESULTS, exist_ok=True)
    measured = measured_at()
    for r in rows:
        r["measured"] = measured
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as out:
        json.dump({"bench": name, "quick": quick_mode(), "info": info, "rows": rows}, out, indent=1)
    print_rows(rows)


def print_rows(rows):
    for r in rows:
        dd_raw, dd_ad = ratio(r["docker_dir"], r["raw"]), ratio(r["docker_dir"], r["adapter"])
        goal = f" [goal {r['goal_text']}: {'met' if r['met'] else 'MISSED'}]" if r["goal_text"] else ""
        ratios = (f"; docker-dir/{r['baseline']} {dd_raw:.2f}x" if dd_raw else "") + \
                 (f", docker-dir/adapter {dd_ad:.2f}x" if dd_ad else "") + goal
        print(f"  {r['metric']}: docker-dir {fmt(r['docker_dir'], r['unit'])}, {r['baseline']} "
              f"{fmt(r['raw'], r['unit'])}, adapter {fmt(r['adapter'], r['unit'])}{ratios}", flush=True)


def raw_save(ref, directory):
    """The plain way: `docker save IMG | tar -x -C DIR`."""
    os.makedirs(directory, exist_ok=True)
    (local["docker"]["save", ref] | local["tar"]["-x", "-C", directory])()


def raw_save_argv(ref, target):
    """`docker save IMG | tar -x -C DIR` as one timed command (DIR made by it, as docker-dir-save makes its DIR)."""
    return ["sh", "-c", 'mkdir "$2" && docker save "$1" | tar -x -C "$2"', "sh", ref, target]


def save_tar(ref, path):
    """`docker save -o`: the archive a user would keep and `docker load -i` (not timed)."""
    subprocess.run(["docker", "save", "-o", path, ref], check=True, stdout=subprocess.DEVNULL)


def raw_load_file_and_run(tar, image_id, command):
    """The raw way issue 19 measured a rebuilt image's cold exec:
    `docker load -i IMAGE.tar && docker run --rm --init ID CMD`."""
    script = 'tar=$1 id=$2; shift 2; docker load -q -i "$tar" >/dev/null && docker run --rm --init "$id" "$@"'
    return ["sh", "-c", script, "sh", tar, image_id, *command]


def check_saved(target, image_id):
    """A save that timed well must also have written the image: docker-dir-id reads DIR
    back as `image_id`, and no build directory is left beside it."""
    found = subprocess.run(docker_dir("id", target), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if found.returncode or found.stdout.split() != [image_id]:
        raise RuntimeError(f"{target}: docker-dir-id says {found.stdout.strip() or found.stderr.strip()!r}, "
                           f"not {image_id}: the save did not write the image")
    beside = sorted(set(os.listdir(os.path.dirname(target))) - {os.path.basename(target)})
    if beside:
        raise RuntimeError(f"the save left {beside} beside {target}")
