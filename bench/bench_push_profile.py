#!/usr/bin/env python3
"""Issue 26: where one push's time goes. A diagnosis: printed, and written to
results/push_profile.json (no table row) and results/push_profile.txt.

`docker-dir-push DIR docker://127.0.0.1:PORT/bench/image:1` of 150 MiB in one layer on
busybox (random bytes, as bench_push.py's 1-layer shape), both caches cleared and a fresh
loopback TLS registry (registrylib.py) for every run, timed four ways, interleaved round by
round after one warm-up round:
- docker-dir as the bench runs it (bin/docker-dir-push, nothing added);
- docker-dir in push_probe.py: its HTTP requests, connections and the C calls of every
  thread (cProfile per thread: compression, hashing, file and socket I/O) timed at points
  every revision's transport shares (see push_probe.py), so this runs on old and new code;
- skopeo copy --dest-compress dir:… docker://… (its blob-info cache removed);
- the floor: curl's POST + one PUT of the layer already gzipped (the bytes docker-dir sends).
Beside them, once: `python -c pass`, the import of docker_dir.cli.push, and in this process
ISA-L's gzip of the layer (level 2, one thread) in memory and into a file, and its sha256.

The probed run with the median wall time is shown: the process (start-up, imports, run,
exit), each thread's time by activity, the requests (time in sendall, waiting for the
answer, and the rest: producing the body), the gaps between a thread's requests, and
cProfile's heaviest functions.

With --warm, the same for the warm push: the unchanged image to a new repository of one
registry both tools pushed it to before, caches kept (docker-dir, probed, skopeo; written
to results/push_profile_warm.*).

With --lib DIR (repeatable), the docker_dir package of another tree's lib/ instead of this
checkout's: `--lib OLD/lib --lib NEW/lib` interleaves both, a before/after in one run.

usage: bench_push_profile.py [--runs N] [--layer-mib MIB] [--requests] [--warm] [--lib DIR ...]
"""
import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (BENCH, CHECKOUT, MiB, PY, RESULTS, bench_image, docker_dir, measured_at, quick_mode,
                      run_timed, workdir)
from registrylib import LoopbackRegistry, ThrowawayCA, client_env, forget_skopeo_cache

PROBE = os.path.join(BENCH, "push_probe.py")
LIB = os.path.join(CHECKOUT, "lib")
# docker-dir-push from another tree's lib/ (--lib), started as bin/docker-dir-push starts it
PLAIN = "import sys; sys.path.insert(0, {lib!r}); from docker_dir.cli.push import entry_point; sys.exit(entry_point())"
TARGET = "bench/image:1"
PEERS = ("skopeo", "curl PUT (floor)")  # curl only when cold: a warm push sends no layer
# What a thread's time was spent in, by cProfile's names of C functions (first match wins).
ACTIVITIES = [
    ("compress", r"' of '(isal_zlib|zlib|zstd)\.|built-in method (isal\.)?(isal_zlib|zlib|zstd)\.|igzip"),
    ("hash", r"_hashlib|_sha256|_blake2"),
    ("file read", r"<method '(read|readinto|read1|readall)' of '_io\.(BufferedReader|FileIO|BufferedRandom)'"
                  r"|built-in method posix\.(read|pread|preadv)>"),
    ("file write", r"<method '(write|flush|close|__exit__)' of '_io\.(BufferedWriter|FileIO|_IOBase|BufferedRandom)'"
                   r"|built-in method posix\.(write|pwrite|fsync|ftruncate)>"),
    ("socket send", r"<method '(write|sendall|send|sendmsg)' of '_(ssl\._SSLSocket|socket\.socket)'"),
    ("socket receive", r"<method '(read|recv|recv_into)' of '_(ssl\._SSLSocket|socket\.socket)'"),
    ("connect + TLS handshake", r"<method '(connect|do_handshake)' of '_(ssl\._SSLSocket|socket\.socket)'"
                                r"|getaddrinfo"),
    ("TLS context (CAs loaded)", r"' of '_ssl\._SSLContext'"),
    ("waiting (locks, queues, select, sleep)", r"<method 'acquire' of '_thread\.|of '_queue\.|built-in method "
                                               r"select\.|of 'select\.|built-in method time\.sleep>"),
    ("file metadata (stat, open, rename)", r"built-in method (posix\.(stat|lstat|fstat|open|rename|replace|unlink|"
                                           r"mkdir|scandir|listdir|rmdir|utime|chmod|link)|io\.open)>"),
]


def ms(seconds):
    return f"{seconds * 1000:.0f}"


# -- the runs -------------------------------------------------------------------

class Runs:
    def __init__(self, libs, work, ca, image_dir, skopeo_dir, gzipped, gzipped_hex):
        """libs: {label: lib/ directory}, each pushed plainly and probed."""
        self.work, self.ca, self.image_dir, self.skopeo_dir = work, ca, image_dir, skopeo_dir
        self.gzipped, self.gzipped_hex = gzipped, gzipped_hex
        self.contenders = {}  # name -> (how, lib)
        for label, lib in libs.items():
            name = "docker-dir" + (f" {label}" if len(libs) > 1 else "")
            self.contenders[name] = ("plain", lib)
            self.contenders[f"{name}, probed"] = ("probed", lib)
        self.probes = {name: [] for name, (how, _) in self.contenders.items() if how == "probed"}
        self.warm = None  # (registry, {lib: its docker-dir cache}) once warmed()
        self.pushes = 0

    def once(self, name):
        """Wall time of one run of `name`: cold, into a fresh registry with caches cleared;
        or, once warmed(), to a new repository of the registry every client pushed to."""
        if self.warm:
            registry, caches = self.warm
            self.pushes += 1
            return self._run(name, registry, f"bench/warm-{self.pushes}:1", caches.get(self.contenders.get(name,
                                                                                                          (0, 0))[1]))
        cache = tempfile.mkdtemp(prefix="xdg-cache-", dir=self.work)
        try:
            with LoopbackRegistry(self.work, self.ca) as registry:
                if name == "skopeo":
                    forget_skopeo_cache()
                return self._run(name, registry, TARGET, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    @contextlib.contextmanager
    def warmed(self):
        """Runs from now on go to one registry both tools pushed the image to, caches kept
        (one per tree: their caches need not have one format)."""
        caches = {lib: tempfile.mkdtemp(prefix="xdg-cache-", dir=self.work)
                  for how, lib in self.contenders.values() if how == "plain"}
        try:
            with LoopbackRegistry(self.work, self.ca) as registry:
                forget_skopeo_cache()
                for index, (name, (how, lib)) in enumerate(self.contenders.items()):
                    if how == "plain":
                        self._run(name, registry, f"bench/first-{index}:1", caches[lib])
                self._run("skopeo", registry, "bench/first-skopeo:1", None)
                self.warm = (registry, caches)
                yield
        finally:
            self.warm = None
            for cache in caches.values():
                shutil.rmtree(cache, ignore_errors=True)

    def _run(self, name, registry, repo_tag, cache):
        target = f"docker://{registry.host}/{repo_tag}"
        env = client_env(**({"XDG_CACHE_HOME": cache} if cache else {}))
        how, lib = self.contenders.get(name, (None, None))
        if how == "plain":
            argv = docker_dir("push") if lib == LIB else [PY, "-c", PLAIN.format(lib=lib)]
            return run_timed(argv + ["-q", self.image_dir, target], env=env)
        if how == "probed":
            return self._probed(name, lib, target, env)
        if name == "skopeo":
            return run_timed(["skopeo", "copy", "-q", "--dest-compress", f"dir:{self.skopeo_dir}", target], env=env)
        return run_timed(["sh", "-c", CURL_PUT, "sh", registry.url, self.ca.cert, self.gzipped,
                          "sha256:" + self.gzipped_hex], env=env)

    def _probed(self, name, lib, target, env):
        out = tempfile.mkdtemp(prefix="probe-", dir=self.work)
        spawned = time.monotonic()
        proc = subprocess.run([PY, PROBE, out, lib, "-q", self.image_dir, target], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        exited = time.monotonic()
        if proc.returncode:
            raise RuntimeError(f"the probed push failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace')[-800:]}")
        self.probes[name].append(analyse(out, spawned, exited, lib))
        shutil.rmtree(out, ignore_errors=True)
        return exited - spawned


# Two requests, as a client that has the gzip bytes already would make them.
CURL_PUT = r'''
base=$1 ca=$2 file=$3 digest=$4
location=$(curl -sS --fail --cacert "$ca" -X POST -o /dev/null -D - "$base/v2/bench/image/blobs/uploads/" |
           tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
case $location in http*) ;; *) location=$base$location ;; esac
curl -sS --fail --cacert "$ca" -X PUT -o /dev/null -H 'Content-Type: application/octet-stream' -T "$file" \
     "$location&digest=$digest"
'''


# -- what a probed run says -----------------------------------------------------------

def kind_of(method, target):
    path, _, query = target.partition("?")
    path = re.sub(r"^https?://[^/]+", "", path)
    if path in ("/v2/", "/v2"):
        return "ping GET /v2/"
    if "/blobs/uploads/" in path:
        if method == "POST":
            return "mount POST" if "mount=" in query else "upload start POST"
        if method == "PATCH":
            return "upload PATCH"
        if method == "PUT":
            return "upload PUT"
        return f"upload {method}"
    if "/blobs/" in path:
        return f"blob {method}"
    if "/manifests/" in path:
        return f"manifest {method}"
    if "token" in path:
        return f"token {method}"
    return f"{method} {path[:30]}"


def analyse(out, spawned, exited, lib):
    import pstats

    with open(os.path.join(out, "probe.json")) as stream:
        probe = json.load(stream)
    t0 = spawned
    requests = []
    for r in probe["requests"]:
        sent_end = r["sent_end"] or r["start"]
        answer = r["answer"] or sent_end
        requests.append({"thread": r["thread"], "kind": kind_of(r["method"], r["target"]), "status": r["status"],
                         "start": r["start"] - t0, "end": answer - t0, "bytes": r["sent"], "send": r["send_time"],
                         "wait": answer - sent_end, "body": max(0.0, sent_end - r["start"] - r["send_time"])})
    threads = {}
    merged = None
    for name, info in probe["threads"].items():
        stats = pstats.Stats(os.path.join(out, info["profile"]))
        total = sum(entry[2] for entry in stats.stats.values())
        activities = {label: 0.0 for label, _ in ACTIVITIES}
        callers = {label: {} for label, _ in ACTIVITIES}  # activity -> {calling function: its share}
        for (_file, _line, func), entry in stats.stats.items():
            for label, pattern in ACTIVITIES:
                if re.search(pattern, func):
                    activities[label] += entry[2]
                    for caller, share in entry[4].items():
                        where = _where(caller, lib)
                        callers[label][where] = callers[label].get(where, 0.0) + share[2]
                    break
        # docker-dir's own functions and C calls: the thread and futures plumbing above them says nothing
        top = sorted(((entry[3], entry[2], entry[1], _where(key, lib)) for key, entry in stats.stats.items()
                      if key[0] == "~" or key[0].startswith(lib)), reverse=True)[:14]
        threads[name] = {"first": info["first"] - t0, "last": info["last"] - t0, "total": total,
                         "activities": activities, "top": top,
                         "callers": {label: sorted(((t, where) for where, t in found.items()), reverse=True)[:3]
                                     for label, found in callers.items() if activities[label] >= 0.02},
                         "sent": sum(r["bytes"] for r in requests if r["thread"] == name),
                         "requests": sum(1 for r in requests if r["thread"] == name)}
        merged = stats if merged is None else merged.add(stats)
    tottime = sorted(((entry[2], entry[1], _where(key, lib)) for key, entry in merged.stats.items()),
                     reverse=True)[:14]
    return {"wall": exited - spawned, "startup": probe["start"] - t0, "imports": probe["imported"] - probe["start"],
            "run": probe["ran"] - probe["imported"], "profiles": probe["written"] - probe["ran"],
            "exit": exited - probe["written"], "requests": requests,
            "connects": [{**c, "start": c["start"] - t0, "end": c["end"] - t0} for c in probe["connects"]],
            "threads": threads, "tottime": tottime, "missing": probe["missing"]}


def _where(key, lib):
    file, line, func = key
    if file == "~":
        return func
    rel = os.path.relpath(file, lib) if file.startswith(lib) else "/".join(file.split("/")[-2:])
    return f"{func} ({rel}:{line})"


# -- floors, once ------------------------------------------------------------------

def floors(layer_path, work):
    """In this process: sha256, ISA-L gzip (level 2, one thread) in memory and into a file."""
    from isal import isal_zlib

    def read_all(sink):
        with open(layer_path, "rb") as stream:
            for block in iter(lambda: stream.read(MiB), b""):
                sink(block)

    def timed(what, repeat=3):
        samples = []
        for _ in range(repeat):
            began = time.perf_counter()
            what()
            samples.append(time.perf_counter() - began)
        return statistics.median(samples)

    def gzip_to(out):
        compressor = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
        read_all(lambda block: out(compressor.compress(block)))
        out(compressor.flush())

    def gzip_file():
        with open(os.path.join(work, "floor.gz"), "wb") as out:
            gzip_to(out.write)
        os.unlink(os.path.join(work, "floor.gz"))

    return {"read the layer (page cache)": timed(lambda: read_all(lambda block: None)),
            "read + sha256 of the layer": timed(lambda: read_all(hashlib.sha256().update)),
            "read + ISA-L gzip level 2, one thread, in memory": timed(lambda: gzip_to(lambda data: None)),
            "read + ISA-L gzip level 2 into a file": timed(gzip_file)}


def startup_floors(lib):
    """Start-up costs, each in a new interpreter (medians of 7)."""
    code = f"import sys; sys.path.insert(0, {lib!r}); import docker_dir.cli.push"
    context = ("import ssl, time; began = time.perf_counter(); ssl.create_default_context(); "
               "print(time.perf_counter() - began)")
    samples = {"python -c pass": [], "python -c 'import docker_dir.cli.push'": [],
               "ssl.create_default_context() (the system's CAs loaded)": []}
    for _ in range(7):
        samples["python -c pass"].append(run_timed([PY, "-c", "pass"]))
        samples["python -c 'import docker_dir.cli.push'"].append(run_timed([PY, "-c", code]))
        samples["ssl.create_default_context() (the system's CAs loaded)"].append(
            float(subprocess.run([PY, "-c", context], check=True, capture_output=True, text=True).stdout))
    return {name: statistics.median(values) for name, values in samples.items()}


def gzip_layer(layer_path, out_path):
    """The layer gzipped as docker-dir gzips it (ISA-L, level 2, gzip wrapper, mtime 0): (hex, size)."""
    from isal import isal_zlib

    compressor = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    digest, size = hashlib.sha256(), 0
    with open(layer_path, "rb") as source, open(out_path, "wb") as out:
        for block in [*iter(lambda: source.read(MiB), b""), None]:
            data = compressor.compress(block) if block is not None else compressor.flush()
            digest.update(data)
            size += len(data)
            out.write(data)
    return digest.hexdigest(), size


def the_layer(image_dir):
    """Path of the image's largest layer in DIR (docker-dir-save's layout: blobs/sha256/HEX)."""
    blobs = os.path.join(image_dir, "blobs", "sha256")
    return max((os.path.join(blobs, name) for name in os.listdir(blobs)), key=os.path.getsize)


# -- the report --------------------------------------------------------------------

def report(measured, codes, layer_mib, image_size, walls, loads, probes, floor, startups, show_requests, warm):
    """The whole text: wall times, then one section per probed tree (probes: {name: analysis})."""
    med = {name: statistics.median(values) for name, values in walls.items()}
    how = ("caches warm: the unchanged image to a new repository of one registry both tools pushed it to, "
           "their caches kept" if warm else "caches cleared, a fresh registry per run")
    lines = [f"push profile: {image_size / 1e6:.0f} MB image, one {layer_mib} MiB layer (random bytes) on busybox, "
             f"TLS loopback registry, {how}; docker-dir: {'; '.join(codes)}, {measured['utc']} UTC, load average "
             f"{min(loads):.1f}-{max(loads):.1f} over the runs", "",
             f"wall time, median of {len(walls['skopeo'])} interleaved runs (fastest-slowest):"]
    width = max(len(name) for name in walls) + 2
    for name in walls:
        ratio = f"  {med[name] / med['skopeo']:.2f}x skopeo" if name != "skopeo" else ""
        lines.append(f"  {name:<{width}} {med[name]:6.2f} s  ({min(walls[name]):.2f}-{max(walls[name]):.2f}){ratio}")
    for name, probe in probes.items():
        lines += ["", f"== {name} =="] if len(probes) > 1 else [""]
        lines += probe_report(probe, floor, startups[name], show_requests)
    return "\n".join(lines)


def probe_report(probe, floor, startup, show_requests):
    lines = []
    say = lines.append
    say(f"the probed run shown: {probe['wall']:.2f} s (the median probed run)")
    say(f"  {'interpreter start-up':<44} {ms(probe['startup']):>6} ms")
    say(f"  {'import docker_dir.cli.push':<44} {ms(probe['imports']):>6} ms")
    say(f"  {'entry_point() (the push)':<44} {ms(probe['run']):>6} ms")
    say(f"  {'(the probe writing its profiles: not in a plain run)':<44} {ms(probe['profiles']):>6} ms")
    say(f"  {'exit (the interpreter ends)':<44} {ms(probe['exit']):>6} ms")
    say("  beside them: " + ", ".join(f"{name} {ms(value)} ms" for name, value in startup.items()))
    say("")
    say("each thread's time (ms; cProfile's own time of the C calls named; 'Python' is the rest, including time "
        "blocked in a `with lock:`, which cProfile charges to the function with the with statement):")
    labels = [label for label, _ in ACTIVITIES]
    short = {"compress": "compress", "hash": "hash", "file read": "f.read", "file write": "f.write",
             "socket send": "sock.send", "socket receive": "sock.recv", "connect + TLS handshake": "connect",
             "TLS context (CAs loaded)": "TLS ctx", "waiting (locks, queues, select, sleep)": "waiting",
             "file metadata (stat, open, rename)": "f.meta"}
    say("  " + f"{'thread':<26}{'from-to (ms)':>14}{'total':>7}" + "".join(f"{short[l]:>10}" for l in labels)
        + f"{'Python':>8}  requests, bytes sent")
    for name, t in sorted(probe["threads"].items(), key=lambda item: item[1]["first"]):
        python = t["total"] - sum(t["activities"].values())
        say("  " + f"{name[:25]:<26}{ms(t['first']) + '-' + ms(t['last']):>14}{ms(t['total']):>7}"
            + "".join(f"{ms(t['activities'][l]):>10}" for l in labels) + f"{ms(python):>8}"
            + f"  {t['requests']}, {t['sent'] / 1e6:.1f} MB")
    say("  who made those C calls (activities of 20 ms or more; ms by calling function):")
    for name, t in sorted(probe["threads"].items(), key=lambda item: item[1]["first"]):
        for label, found in t["callers"].items():
            if label.startswith("waiting"):
                continue
            say(f"    {name[:25]:<26}{short[label]:<10}" + "; ".join(f"{ms(time_)} {where}" for time_, where in found))
    say("")
    say("HTTP requests (ms from the process's spawn; send: inside sendall; answer: from the last byte sent to the "
        "answer's headers; body: the rest of the request's time, producing what it sends):")
    groups = {}
    for r in probe["requests"]:
        groups.setdefault((r["thread"], r["kind"]), []).append(r)
    say(f"  {'thread':<26}{'request':<20}{'n':>4}{'from-to':>13}{'MB sent':>9}{'total':>7}{'send':>7}{'answer':>7}"
        f"{'body':>7}  status")
    for (thread, kind), rs in sorted(groups.items(), key=lambda item: item[1][0]["start"]):
        say(f"  {thread[:25]:<26}{kind:<20}{len(rs):>4}{ms(rs[0]['start']) + '-' + ms(rs[-1]['end']):>13}"
            f"{sum(r['bytes'] for r in rs) / 1e6:>9.1f}{ms(sum(r['end'] - r['start'] for r in rs)):>7}"
            f"{ms(sum(r['send'] for r in rs)):>7}{ms(sum(r['wait'] for r in rs)):>7}"
            f"{ms(sum(r['body'] for r in rs)):>7}  {','.join(sorted({str(r['status']) for r in rs}))}")
    if show_requests:
        say("  one by one:")
        for r in probe["requests"]:
            say(f"    {r['thread'][:25]:<26}{r['kind']:<20}{ms(r['start']):>6}-{ms(r['end']):<6}"
                f"{r['bytes'] / 1e6:>8.2f} MB  send {ms(r['send'])}  answer {ms(r['wait'])}  body {ms(r['body'])}"
                f"  {r['status']}")
    for c in probe["connects"]:
        say(f"  {c['thread'][:25]:<26}{c['kind']:<20}{'':>4}{ms(c['start']) + '-' + ms(c['end']):>13}"
            f"{'':>9}{ms(c['end'] - c['start']):>7}")
    say("")
    say("gaps of 5 ms or more in a thread's requests (ms: what the thread did between two requests, or before its "
        "first one):")
    for name, t in sorted(probe["threads"].items(), key=lambda item: item[1]["first"]):
        mine = sorted((r for r in probe["requests"] if r["thread"] == name), key=lambda r: r["start"])
        previous_end, previous_kind = t["first"], "thread start"
        for r in mine:
            gap = r["start"] - previous_end
            if gap >= 0.005:
                say(f"  {name[:25]:<26}{ms(gap):>6} ms  after {previous_kind} (at {ms(previous_end)}), before "
                    f"{r['kind']}")
            previous_end, previous_kind = r["end"], r["kind"]
        if mine and t["last"] - previous_end >= 0.005:
            say(f"  {name[:25]:<26}{ms(t['last'] - previous_end):>6} ms  after {previous_kind} (at "
                f"{ms(previous_end)}), until the thread ended")
    say("")
    say("in this process, once (medians of 3): " + "; ".join(f"{name} {ms(value)} ms" for name, value in floor.items()))
    say("")
    say("cProfile, heaviest own time over all threads (ms, calls):")
    for tottime, calls, where in probe["tottime"]:
        say(f"  {ms(tottime):>6} {calls:>7}  {where}")
    for name, t in sorted(probe["threads"].items(), key=lambda item: -item[1]["total"]):
        if t["total"] < 0.05:
            continue
        say(f"cProfile, {name}: heaviest cumulative time of docker-dir's functions and C calls (cum ms, own ms, "
            "calls):")
        for cumtime, tottime, calls, where in t["top"]:
            say(f"  {ms(cumtime):>6} {ms(tottime):>6} {calls:>7}  {where}")
    if probe["missing"]:
        say("")
        say("NOT MEASURED (patch targets missing in this Python): " + ", ".join(probe["missing"]))
    return lines


def code_of(lib):
    """Which code the profiled lib/ is: the last commit that changed it, + "+uncommitted" when it differs."""
    git = ["git", "-C", lib]
    head = subprocess.run(git + ["log", "-1", "--format=%h", "HEAD", "--", "."], capture_output=True, text=True)
    if head.returncode:
        return f"{lib} (not in a git checkout)"
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "."], capture_output=True, text=True).stdout.strip()
    return f"{head.stdout.strip()}{'+uncommitted' if dirty else ''} ({lib})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2 if quick_mode() else 5, help="interleaved rounds (default 5)")
    parser.add_argument("--layer-mib", type=int, default=8 if quick_mode() else 150, help="the layer's size")
    parser.add_argument("--requests", action="store_true", help="also list the requests one by one")
    parser.add_argument("--warm", action="store_true",
                        help="profile the warm push instead: the unchanged image to a new repository of a registry "
                             "both tools pushed it to, caches kept")
    parser.add_argument("--lib", action="append", help="profile the docker_dir package of this lib/ directory "
                                                       "instead of this checkout's; several: interleaved, a "
                                                       "before/after in one run")
    args = parser.parse_args()
    libs = {}
    for lib in [os.path.abspath(path) for path in args.lib or [LIB]]:
        subprocess.run([PY, "-m", "compileall", "-q", lib], check=True, stdout=subprocess.DEVNULL)
        label = code_of(lib).split(" ")[0]
        libs[label if label not in libs else f"{label}#{len(libs) + 1}"] = lib
    for tool in ("docker-registry", "skopeo", "openssl", "curl"):
        if not shutil.which(tool):
            raise SystemExit(f"bench_push_profile needs {tool} (the Debian package of that name)")
    with bench_image([args.layer_mib]) as (ref, _image_id, image_size), workdir("push-profile") as work:
        image_dir = os.path.join(work, "image")
        run_timed(docker_dir("save", "-q", ref, image_dir))
        skopeo_dir = os.path.join(work, "skopeo-dir")
        run_timed(["skopeo", "copy", "-q", "--format", "v2s2", f"docker-daemon:{ref}", f"dir:{skopeo_dir}"])
        layer = the_layer(image_dir)
        gzipped = os.path.join(work, "layer.gz")
        gzipped_hex, _ = gzip_layer(layer, gzipped)
        ca = ThrowawayCA(os.path.join(work, "ca"))
        runs = Runs(libs, work, ca, image_dir, skopeo_dir, gzipped, gzipped_hex)
        contenders = list(runs.contenders) + list(PEERS[:1] if args.warm else PEERS)
        print(f"bench_push_profile: {image_size / 1e6:.0f} MB image, {args.runs} rounds of {', '.join(contenders)} "
              f"after one warm-up round{', caches warm' if args.warm else ''}", file=sys.stderr, flush=True)
        walls, loads = {name: [] for name in contenders}, []
        with runs.warmed() if args.warm else contextlib.nullcontext():
            for round_ in range(args.runs + 1):
                if round_:
                    loads.append(round(os.getloadavg()[0], 2))
                for name in contenders:
                    wall = runs.once(name)
                    if round_:
                        walls[name].append(wall)
        probes = {name: sorted(found[1:], key=lambda p: p["wall"])  # without the warm-up's
                  for name, found in runs.probes.items()}
        floor = floors(layer, work)
        startups = {name: startup_floors(runs.contenders[name][1]) for name in probes}
    shown = {name: found[(len(found) - 1) // 2] for name, found in probes.items()}
    measured = measured_at()
    codes = [code_of(lib) for lib in libs.values()]
    text = report(measured, codes, args.layer_mib, image_size, walls, loads, shown, floor, startups, args.requests,
                  args.warm)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    name = "push_profile_warm" if args.warm else "push_profile"
    with open(os.path.join(RESULTS, f"{name}.txt"), "w") as out:
        out.write(text + "\n")
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as out:
        json.dump({"bench": name, "quick": quick_mode(), "rows": [], "measured": measured, "warm": args.warm,
                   "info": {"codes": codes, "walls": walls, "loads": loads, "probes": probes, "floors": floor,
                            "startups": startups, "image_size": image_size, "layer_mib": args.layer_mib}},
                  out, indent=1)


if __name__ == "__main__":
    main()
