#!/usr/bin/env python3
"""Merge bench/results/*.json into one table: printed, written as Markdown and as a PNG bar chart.

usage: report.py MARKDOWN PNG
       report.py --merge MARKDOWN BENCH...   put only these benches' rows (results/BENCH.json) into the
                                            existing MARKDOWN: a row of the same metric is replaced, with its
                                            note; the others are added at the end of the table and of the
                                            notes; every other line stays (the PNG is not redrawn)
"""
import datetime
import glob
import json
import os
import platform
import sys

from plumbum import local

from benchlib import BENCH, PY, RESULTS, fmt, ratio

ORDER = ("id", "save", "exec", "charliecloud", "pull", "pull-1layer", "push", "push-1layer", "store")


def load_benches():
    benches = {}
    for path in glob.glob(os.path.join(RESULTS, "*.json")):
        with open(path) as stream:
            data = json.load(stream)
        benches[data["bench"]] = data
    names = [n for n in ORDER if n in benches] + sorted(set(benches) - set(ORDER))
    return [benches[n] for n in names]


def cells(r):
    baseline = fmt(r["raw"], r["unit"])
    if r["baseline"] != "raw docker":
        baseline += f" ({r['baseline']})"
    dd_raw, dd_ad = ratio(r["docker_dir"], r["raw"]), ratio(r["docker_dir"], r["adapter"])
    met = {True: "met", False: "**missed**", None: ""}[r["met"]]
    return [r["metric"], fmt(r["docker_dir"], r["unit"]), baseline, fmt(r["adapter"], r["unit"]),
            f"{dd_raw:.2f}x" if dd_raw else "-", f"{dd_ad:.2f}x" if dd_ad else "-",
            r["goal_text"] or "", met, measured(r)]


def measured(r):
    m = r.get("measured")
    if not m:
        return "?"
    return f"{m['commit']}, {m['utc']} UTC, load {m['load'][0]:.1f}"


HEADER = ["metric", "docker-dir", "raw docker (baseline)", "datalad-container adapter", "docker-dir / baseline",
          "docker-dir / adapter", "goal", "", "measured (commit, time, 1-min load)"]


def environment(quick):
    def out(*argv):
        try:
            return local[argv[0]][argv[1:]](retcode=None).strip()
        except OSError:
            return "?"

    adapter_version = out(PY, "-c", "import importlib.metadata as m; print(m.version('datalad-container'))")
    return (f"Table made {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{'QUICK smoke mode (small images, few runs)' if quick else 'full mode'}; each row names the "
            "commit it was measured on, when, and the load average then. "
            f"{os.cpu_count()} CPUs, {platform.platform(terse=True)}, dockerd "
            f"{out('docker', 'version', '--format', '{{.Server.Version}}')}, datalad-container {adapter_version}, "
            f"Python {platform.python_version()} ({PY}).")


def table_line(r):
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |"


def note_line(r):
    return f"- {r['metric']}: {r['note']}"


def markdown(rows, png_name, quick):
    lines = ["# docker-dir benchmarks", "", environment(quick), "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += [table_line(r) for r in rows]
    lines += ["", "Notes:", ""]
    lines += [note_line(r) for r in rows if r["note"]]
    lines += ["", f"![bar chart of the table]({png_name})", "",
              "Made by `bench/run-all`; see [README.md](README.md) for what each figure measures.", ""]
    return "\n".join(lines)


def print_table(rows):
    table = [HEADER] + [[c.replace("**", "") for c in cells(r)] for r in rows]
    widths = [min(max(len(row[i]) for row in table), 60) for i in range(len(HEADER))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 3.2 * nrows), squeeze=False)
    colors = {"docker-dir": "#2a7ab0", "baseline": "#8c8c8c", "adapter": "#d9822b"}
    for ax, r in zip(axes.flat, rows):
        scale, unit = (1e-6, "MB") if r["unit"] == "bytes" else \
                      ((1000, "ms") if max(v or 0 for v in (r["docker_dir"], r["raw"], r["adapter"])) < 1 else (1, "s"))
        bars = [("docker-dir", r["docker_dir"]), (r["baseline"], r["raw"]), ("adapter", r["adapter"])]
        bars = [(label, value) for label, value in bars if value is not None]
        values = [value * scale for _, value in bars]
        labels = [label.replace(", ", ",\n").replace(" + ", " +\n") for label, _ in bars]
        bar_colors = [colors.get(label, colors["baseline"]) for label, _ in bars]
        drawn = ax.barh(labels, values, color=bar_colors)
        ax.invert_yaxis()
        dd_raw = ratio(r["docker_dir"], r["raw"])
        texts = [fmt(v, r["unit"]) + (f"  ({dd_raw:.2f}x baseline)" if label == "docker-dir" and dd_raw else "")
                 for label, v in bars]
        ax.bar_label(drawn, labels=texts, padding=3, fontsize=9)
        limit = r["limit"] if r["limit"] is not None else (r["goal"] * r["raw"] if r["goal"] and r["raw"] else None)
        if limit:
            ax.axvline(limit * scale, color="#c0392b", linestyle="--", linewidth=1.2)
        verdict = {True: "met", False: "MISSED", None: ""}[r["met"]]
        goal = f"\ngoal (red line): {r['goal_text']}: {verdict}" if r["goal_text"] else "\n(no goal: for diagnosis)"
        ax.set_title(r["metric"] + goal, fontsize=9.5, loc="left",
                     color="#c0392b" if r["met"] is False else "black")
        ax.set_xlabel(unit, fontsize=9)
        ax.set_xlim(0, max(values + [limit * scale if limit else 0]) * 1.6 or 1)
        ax.tick_params(labelsize=9)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle("docker-dir vs raw docker vs the datalad-container adapter (medians; shorter is better)",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merged(text, rows):
    """The Markdown `text` of a table with `rows` put in (see the usage); nothing else changes."""
    lines = text.split("\n")
    header = next(i for i, line in enumerate(lines) if line.startswith("| metric |"))
    table_end = next(i for i in range(header + 2, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
    notes = lines.index("Notes:", table_end) + 2
    notes_end = next(i for i in range(notes, len(lines) + 1) if i == len(lines) or not lines[i].startswith("- "))
    table, notes_list = lines[header + 2:table_end], lines[notes:notes_end]
    for r in rows:
        first_cell = "| " + r["metric"].replace("|", "\\|") + " |"
        at = [i for i, line in enumerate(table) if line.startswith(first_cell)]
        if at:
            table[at[0]] = table_line(r)
        else:
            table.append(table_line(r))
        notes_list = [line for line in notes_list if not line.startswith(f"- {r['metric']}: ")]
        if r["note"]:
            notes_list.append(note_line(r))
    return "\n".join(lines[:header + 2] + table + lines[table_end:notes] + notes_list + lines[notes_end:])


def merge(md_path, names):
    rows = []
    for name in names:
        with open(os.path.join(RESULTS, f"{name}.json")) as stream:
            rows += json.load(stream)["rows"]
    with open(md_path) as stream:
        text = merged(stream.read(), rows)
    with open(md_path, "w") as out:
        out.write(text)
    print_table(rows)
    print(f"\nput {len(rows)} rows of {', '.join(names)} into {md_path}")


def main():
    if sys.argv[1:2] == ["--merge"]:
        return merge(sys.argv[2], sys.argv[3:])
    md_path, png_path = sys.argv[1:3]
    benches = load_benches()
    rows = [r for bench in benches for r in bench["rows"]]
    # A diagnosis (inventory, coldpath) has no row: its mode says nothing of the table's.
    quick = any(bench.get("quick") and bench["rows"] for bench in benches)
    if not rows:
        sys.exit(f"no results in {RESULTS}; run the bench scripts first")
    print_table(rows)
    chart(rows, png_path)
    with open(md_path, "w") as out:
        out.write(markdown(rows, os.path.relpath(png_path, os.path.dirname(os.path.abspath(md_path))), quick))
    print(f"\nwrote {os.path.relpath(md_path, BENCH)} and {os.path.relpath(png_path, BENCH)} (in bench/)")


if __name__ == "__main__":
    main()
