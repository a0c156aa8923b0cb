#!/usr/bin/env python3
"""Issue 19: where the cold path's fixed cost goes, for the two rows where it shows
(bench_exec's small rebuilt image, bench_save's ~150 MB save). A diagnosis: printed,
and written to results/coldpath.json without a table row.

For `docker-dir-exec DIR sh -c true` (a small image rebuilt with a 1 MiB layer, its base
in the engine) and `docker-dir-save -q IMG DIR` (~150 MB):

1. imports: `python -X importtime` of the command: the modules entered from
   docker-dir's code (or at run time) beyond those `python -c pass` imports, heaviest
   first, with the module that pulled each in (importtime's figures, median of the
   runs; -X importtime inflates them); and, not inflated, the wall time of importing
   exactly that set against `python -c pass`.
2. phases: the command run in coldpath_probe.py, which times the cli's import, imports
   made while running, the engine's methods, each request on the daemon's socket and
   the application's steps (medians; "(own code)" is a step's time outside the steps
   under it).
3. beside them, interleaved run by run, the raw steps: `python -c pass`, `docker load -i
   IMAGE.tar`, `docker run --rm --init ID sh -c true`, `docker run` with docker-dir's
   flags; `docker save IMG | tar -x`, `docker save IMG > /dev/null`.
"""
import json
import os
import re
import shutil
import subprocess
import time

from bench_exec import COMMAND, same_flags_argv
from benchlib import (BENCH, CHECKOUT, PY, RESULTS, SAVE_150_LAYERS, SMALL_BASE_LAYERS, bench_image, check_saved,
                      has_image, interleaved, measured_at, median, quick_mode, raw_save, raw_save_argv, rebuilt_image,
                      remove_image, run_timed, save_tar, workdir)

LIB = os.path.join(CHECKOUT, "lib")
PROBE = os.path.join(BENCH, "coldpath_probe.py")


# -- imports -----------------------------------------------------------------

def importtime(argv, **kwargs):
    """[(name, self µs, cumulative µs, depth, parent name or None)] of one run under -X importtime."""
    proc = subprocess.run([PY, "-X", "importtime", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, **kwargs)
    if proc.returncode:
        raise RuntimeError(f"{argv} failed under -X importtime: {proc.stderr[-500:]}")
    entries, pending = [], {}
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        field = parts[2][1:]
        depth = (len(field) - len(field.lstrip(" "))) // 2
        name = field.strip()
        # importtime prints a module after the modules it imported, one level deeper
        for child in pending.pop(depth + 1, []):
            entries[child] = entries[child][:4] + (name,)
        pending.setdefault(depth, []).append(len(entries))
        entries.append((name, int(parts[0].split(":")[1]), int(parts[1]), depth, None))
    return entries


def import_figures(next_argv, runs, baseline_names, **kwargs):
    """Median importtime figures over `runs` runs, each of the argv next_argv() returns once it set the run up."""
    runs = [importtime(next_argv(), **kwargs) for _ in range(runs)]
    first = runs[0]
    fresh = [e for e in first if e[0] not in baseline_names]
    cumulative = {name: median([next((c for n, _, c, _, _ in run if n == name), 0) for run in runs])
                  for name, *_ in fresh}
    own = median([sum(s for n, s, _, _, _ in run if n.startswith("docker_dir")) for run in runs])
    total = median([sum(s for n, s, _, _, _ in run if n not in baseline_names) for run in runs])
    # Where foreign code is entered: from a docker_dir module, or at depth 0 (a function's import at run time).
    entered = [(name, parent) for name, _, _, depth, parent in fresh
               if not name.startswith("docker_dir") and (parent is None or parent.startswith("docker_dir"))]
    heavy = sorted(((cumulative[n], n, p) for n, p in entered), reverse=True)
    top_level = [name for name, _, _, depth, _ in fresh if depth == 0]
    return {"modules": len(fresh), "docker_dir_modules": sum(1 for e in fresh if e[0].startswith("docker_dir")),
            "total_us": total, "docker_dir_self_us": own, "heavy": heavy[:12], "top_level": top_level}


def import_wall(top_level, runs):
    """Wall time of importing exactly `top_level` (in order) against `python -c pass`: no -X importtime."""
    code = f"import sys; sys.path.insert(0, {LIB!r}); " + "; ".join(f"import {name}" for name in top_level)
    samples = interleaved({"pass": [PY, "-c", "pass"], "imports": [PY, "-c", code]}, runs, warmup=2)
    return median(samples["pass"]), median(samples["imports"])


# -- phases --------------------------------------------------------------------

def probe(tool, args, log, **kwargs):
    """Run the probe once: (its log, seconds from spawn to exit, the spawn instant)."""
    spawned = time.monotonic()
    proc = subprocess.run([PY, PROBE, log, LIB, tool, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, **kwargs)
    ended = time.monotonic()
    if proc.returncode:
        raise RuntimeError(f"probe {tool} failed: {proc.stderr.decode(errors='replace')[-800:]}")
    with open(log) as stream:
        found = json.load(stream)
    found["spawned"], found["ended"] = spawned, ended
    return found, ended - spawned


def tree(log):
    """The run's steps as nested nodes {label, ms, n, children}, with interpreter start-up
    before them and what follows the last (the engine's `run` after an execv, or the exit)."""
    events = sorted(log["events"], key=lambda e: (e[2], e[1]))
    root = {"label": "", "children": []}
    stack = [root]
    for label, depth, start, end in events:
        del stack[depth + 1:]
        node = {"label": re.sub(r"[0-9a-f]{12,}", "<hex>", label), "ms": (end - start) * 1000, "n": 1,
                "children": []}
        stack[-1]["children"].append(node)
        stack.append(node)
    nodes = [{"label": "interpreter start-up, to the probe's first line",
              "ms": (log["start"] - log["spawned"]) * 1000, "n": 1, "children": []}]
    nodes += [_merged(node) for node in root["children"]]
    label = ("after the execv: the engine's run (docker CLI, container)" if log["execv"]
             else "exit: the interpreter shuts down")
    nodes.append({"label": label, "ms": (log["ended"] - log["written"]) * 1000, "n": 1, "children": []})
    return nodes


def _merged(node):
    """Consecutive siblings of one label as one node (×n), and the step's own code."""
    children = []
    for child in map(_merged, node["children"]):
        if children and children[-1]["label"] == child["label"]:
            prev = children[-1]
            prev["ms"] += child["ms"]
            prev["n"] += child["n"]
            prev["children"] += child["children"]
        else:
            children.append(child)
    if children:
        own = node["ms"] - sum(c["ms"] for c in children)
        children.append({"label": "(own code)", "ms": own, "n": 1, "children": []})
    return {**node, "children": children}


def flatten(nodes, path=()):
    """[(key, depth, label)] in order, with {key: (ms, n)}."""
    order, values = [], {}
    seen = {}
    for node in nodes:
        seen[node["label"]] = seen.get(node["label"], 0) + 1
        key = path + ((node["label"], seen[node["label"]]),)
        order.append((key, len(path), node["label"]))
        values[key] = (node["ms"], node["n"])
        sub_order, sub_values = flatten(node["children"], key)
        order += sub_order
        values.update(sub_values)
    return order, values


def print_phases(logs, min_ms=0.3):
    flat = [flatten(tree(log)) for log in logs]
    order = []
    for run_order, _ in flat:  # a step only some runs had goes after the step before it in its run
        for i, entry in enumerate(run_order):
            if entry not in order:
                order.insert(order.index(run_order[i - 1]) + 1 if i else 0, entry)
    lines = []
    for key, depth, label in order:
        found = [values[key] for _, values in flat if key in values]
        ms, n = median([f[0] for f in found]), median([f[1] for f in found])
        if ms < min_ms:
            continue
        times = f" x{n:g}" if n > 1 else ""
        partial = f"  (in {len(found)} of {len(logs)} runs)" if len(found) < len(logs) else ""
        lines.append((f"{'  ' * (depth + 2)}{label}{times}", ms, partial))
    width = max(len(text) for text, _, _ in lines)
    for text, ms, partial in lines:
        print(f"{text.ljust(width)}  {ms:8.1f} ms{partial}")


def requests_of(log):
    """(short API requests, their ms, imports made while running, their ms) of one run;
    the save and load streams (labelled "...: what") are not short requests."""
    api = [(end - start) for label, _, start, end in log["events"]
           if re.match(r"(GET|POST) /", label) and ": " not in label]
    imports = [(end - start) for label, depth, start, end in log["events"] if label.startswith("import ")
               and "(the bin script's import)" not in label]
    return len(api), sum(api) * 1000, len(imports), sum(imports) * 1000


def summarize(name, logs, walls, raw, imports, import_cost):
    print(f"\n{name}: median of {len(logs)} runs")
    print(f"  whole command, spawn to exit: {median(walls) * 1000:.1f} ms; beside it (interleaved): "
          + "; ".join(f"{n} {median(v) * 1000:.1f} ms" for n, v in raw.items()))
    figures = [requests_of(log) for log in logs]
    print(f"  short requests on the daemon's socket: {median([f[0] for f in figures]):g}, "
          f"{median([f[1] for f in figures]):.1f} ms; imports while running (outermost): "
          f"{median([f[2] for f in figures]):g}, {median([f[3] for f in figures]):.1f} ms")
    base, imported = import_cost
    print(f"  imports: {imports['modules']} modules beyond python -c pass ({imports['docker_dir_modules']} of "
          f"docker-dir), importtime total {imports['total_us'] / 1000:.1f} ms (docker-dir's own modules' bodies "
          f"{imports['docker_dir_self_us'] / 1000:.1f} ms); without -X importtime, importing that set costs "
          f"{(imported - base) * 1000:.1f} ms of wall time ({imported * 1000:.1f} vs {base * 1000:.1f} ms)")
    print("  heaviest modules entered from docker-dir's code (importtime cumulative, pulled in by):")
    for us, module, parent in imports["heavy"]:
        print(f"    {us / 1000:6.1f} ms  {module}  <- {parent or 'a function, at run time'}")
    print("  phases:")
    print_phases(logs)
    missing = sorted({m for log in logs for m in log["missing"]})
    if missing:
        print(f"  NOT TIMED (the probe did not find them; update coldpath_probe.py): {', '.join(missing)}")


# -- the two commands ---------------------------------------------------------------

def exec_cold(work, runs, baseline_names):
    with bench_image(SMALL_BASE_LAYERS) as (ref, base_id, _), rebuilt_image(ref, 1) as (new_ref, new_id):
        new_dir, tar = os.path.join(work, "rebuilt"), os.path.join(work, "rebuilt.tar")
        raw_save(new_ref, new_dir)
        save_tar(new_ref, tar)
        argv = [os.path.join(CHECKOUT, "bin", "docker-dir-exec"), new_dir, *COMMAND]

        def cold():
            remove_image(new_id)
            if not has_image(base_id) or has_image(new_id):
                raise RuntimeError("the engine must hold the base and not the rebuilt image before a cold run")

        def cold_argv():
            cold()
            return argv

        imports = import_figures(cold_argv, runs, baseline_names, cwd=work)
        logs, log = [], os.path.join(work, "probe.json")

        def probed():
            found, elapsed = probe("exec", argv[1:], log, cwd=work)
            logs.append(found)
            return elapsed

        contenders = {
            "probe": probed,
            "python -c pass": [PY, "-c", "pass"],
            "docker load -i IMAGE.tar": ["docker", "load", "-q", "-i", tar],
            # the image is present here: loaded by the contender before
            "docker run --rm --init": ["docker", "run", "--rm", "--init", new_id, *COMMAND],
            "docker run, docker-dir's flags": same_flags_argv(new_id, work),
        }
        samples = interleaved({n: (lambda a=a: run_timed(a, cwd=work)) if isinstance(a, list) else a
                               for n, a in contenders.items()}, runs,
                              before_each=lambda name: cold() if name in ("probe", "docker load -i IMAGE.tar")
                              else None)
        remove_image(new_id)
    del logs[:len(logs) - runs]  # the warm-up run
    walls = samples.pop("probe")
    import_cost = import_wall(imports["top_level"], runs * 3)
    summarize("exec cold: docker-dir-exec DIR sh -c true, image rebuilt with 1 MiB, base in the engine", logs,
              walls, samples, imports, import_cost)
    return {"walls": walls, "raw": samples, "imports": imports, "import_wall": import_cost, "logs": logs}


def save_150(work, runs, baseline_names):
    layers = [4] * 4 if quick_mode() else SAVE_150_LAYERS
    with bench_image(layers) as (ref, image_id, size):
        parent = os.path.join(work, "save")
        target = os.path.join(parent, "img")

        def fresh():
            shutil.rmtree(parent, ignore_errors=True)
            os.mkdir(parent)

        def fresh_argv():
            fresh()
            return [os.path.join(CHECKOUT, "bin", "docker-dir-save"), "-q", ref, target]

        imports = import_figures(fresh_argv, runs, baseline_names)
        logs, log = [], os.path.join(work, "probe.json")

        def probed():
            found, elapsed = probe("save", ["-q", ref, target], log)
            check_saved(target, image_id)
            logs.append(found)
            return elapsed

        samples = interleaved({"probe": probed,
                               "docker save | tar -x": lambda: run_timed(raw_save_argv(ref, target)),
                               "docker save > /dev/null": lambda: run_timed(["docker", "save", ref])},
                              runs, before_each=lambda name: fresh())
    del logs[:len(logs) - runs]
    walls = samples.pop("probe")
    import_cost = import_wall(imports["top_level"], runs * 3)
    summarize(f"save: docker-dir-save -q IMG DIR, image {size / 1e6:.0f} MB", logs, walls, samples, imports,
              import_cost)
    return {"size": size, "walls": walls, "raw": samples, "imports": imports, "import_wall": import_cost,
            "logs": logs}


def main():
    runs = 2 if quick_mode() else 7
    baseline_names = {name for name, *_ in importtime(["-c", "pass"])}
    at = measured_at()
    print(f"bench_coldpath: {runs} runs of each, {PY}; {at['commit']}, {at['utc']} UTC, load {at['load']}",
          flush=True)
    with workdir("coldpath") as work:
        results = {"exec": exec_cold(work, runs, baseline_names), "save": save_150(work, runs, baseline_names)}
    results["measured"] = at
    results["load_after"] = [round(x, 1) for x in os.getloadavg()]
    print(f"\nload average after: {results['load_after']}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "coldpath.json"), "w") as out:  # a diagnosis: no table row
        json.dump({"bench": "coldpath", "quick": quick_mode(), "rows": [], "info": results}, out, indent=1)


if __name__ == "__main__":
    main()
