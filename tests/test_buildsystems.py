"""Snakefile.example, examples/Makefile and the shebang example, run by real snakemake, GNU make
and the kernel: first run, no-op run, same image re-saved, changed image, one load on a cold engine.

The tests run the example files the README shows, not copies, so the two cannot drift apart.
"""
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import BIN, REPO, cli, count_events, docker

SNAKEFILE = REPO / "Snakefile.example"
MAKEFILE = REPO / "examples" / "Makefile"
WORD_COUNT = REPO / "examples" / "word-count"


def tool_env(**extra):
    """The checkout's commands first, then this venv, whose python3 runs them (it has plumbum)."""
    path = os.pathsep.join([str(BIN), os.path.dirname(sys.executable), os.environ["PATH"]])
    return {**os.environ, "PATH": path, **extra}


def write_inputs(work, count):
    (work / "data").mkdir()
    texts = {f"s{i}": " ".join(["word"] * (i + 1)) + "\n" for i in range(count)}
    for name, text in texts.items():
        (work / "data" / f"{name}.txt").write_text(text)
    return {name: len(text.split()) for name, text in texts.items()}


def outputs(work):
    """Name -> (mtime_ns, content) of everything the workflow made: what changes when a job runs."""
    made = sorted((work / "out").glob("*.txt")) + [work / "image.id"]
    return {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in made}


def check_counts(work, counts):
    for name, words in counts.items():
        assert (work / "out" / f"{name}.txt").read_text().strip() == str(words)


def tick():
    """Let the clock move past the filesystem's timestamp granularity, so a rewrite shows in mtimes."""
    time.sleep(0.02)


@pytest.fixture
def rebuilt_tag(fresh_image):
    """A tag and two images it points to in turn, like `docker build -t tag .` run twice."""
    ref = f"fixture/buildsys-{uuid.uuid4().hex[:8]}:latest"
    first = fresh_image(ref)
    second = fresh_image()

    def retag_to_second():
        docker("tag", second, ref)

    return ref, first, second, retag_to_second


def snakemake(work, *args):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "4", *args],
                          cwd=work, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def make(work, *args):
    proc = subprocess.run(["make", "-f", str(MAKEFILE), *args], cwd=work, env=tool_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def recipes_run(make_log):
    return [line for line in make_log.splitlines() if line.startswith("docker-dir-exec image ")]


def resave(ref, work):
    proc = cli("docker-dir-save", "-q", "--force", ref, work / "image")
    assert proc.returncode == 0, proc.stderr


def test_snakemake_reruns_only_for_a_new_image(rebuilt_tag, tmp_path):
    ref, first, second, retag_to_second = rebuilt_tag
    counts = write_inputs(tmp_path, 4)

    snakemake(tmp_path, "--config", f"image_ref={ref}")
    assert (tmp_path / "image" / "manifest.json").is_file()
    check_counts(tmp_path, counts)
    assert (tmp_path / "image.id").read_text() == first + "\n"
    built = outputs(tmp_path)

    tick()
    log = snakemake(tmp_path, "--config", f"image_ref={ref}")
    assert "Nothing to be done" in log
    assert outputs(tmp_path) == built

    resave(ref, tmp_path)
    log = snakemake(tmp_path, "--config", f"image_ref={ref}")
    assert "Nothing to be done" in log
    assert outputs(tmp_path) == built

    retag_to_second()
    resave(ref, tmp_path)
    log = snakemake(tmp_path, "--config", f"image_ref={ref}")
    assert "Params have changed" in log
    after = outputs(tmp_path)
    assert set(after) == set(built)
    assert all(after[name][0] != built[name][0] for name in built), "every job should have run again"
    assert (tmp_path / "image.id").read_text() == second + "\n"
    check_counts(tmp_path, counts)


def test_snakemake_parallel_jobs_load_a_cold_image_once(cold_dir, tmp_path):
    directory, image = cold_dir("image")
    assert directory == tmp_path / "image"
    counts = write_inputs(tmp_path, 4)
    since = time.time()
    snakemake(tmp_path)
    assert count_events("load", since, image=image) == 1
    check_counts(tmp_path, counts)
    assert (tmp_path / "image.id").read_text() == image + "\n"


def test_make_remakes_only_for_a_new_image(rebuilt_tag, tmp_path):
    ref, first, second, retag_to_second = rebuilt_tag
    counts = write_inputs(tmp_path, 4)

    make(tmp_path, "-j8", f"IMAGE_REF={ref}")
    check_counts(tmp_path, counts)
    assert (tmp_path / "image.id").read_text() == first + "\n"
    built = outputs(tmp_path)

    tick()
    log = make(tmp_path, f"IMAGE_REF={ref}")
    assert "Nothing to be done" in log
    assert outputs(tmp_path) == built

    # The re-saved directory is newer than image.id, so make asks docker-dir-id again,
    # which leaves image.id alone: make sees its mtime unchanged and remakes nothing.
    resave(ref, tmp_path)
    log = make(tmp_path, f"IMAGE_REF={ref}")
    assert "docker-dir-id" in log and not recipes_run(log)
    assert outputs(tmp_path) == built

    retag_to_second()
    resave(ref, tmp_path)
    log = make(tmp_path, "-j8", f"IMAGE_REF={ref}")
    assert len(recipes_run(log)) == len(counts)
    after = outputs(tmp_path)
    assert all(after[name][0] != built[name][0] for name in built), "every target should have been remade"
    assert (tmp_path / "image.id").read_text() == second + "\n"
    check_counts(tmp_path, counts)


def test_make_j8_loads_a_cold_image_once(cold_dir, tmp_path):
    directory, image = cold_dir("image")
    assert directory == tmp_path / "image"
    counts = write_inputs(tmp_path, 8)
    since = time.time()
    make(tmp_path, "-j8")
    assert count_events("load", since, image=image) == 1
    check_counts(tmp_path, counts)


def test_shebang_script_runs_in_image_from_another_directory(cold_dir, tmp_path):
    directory, image = cold_dir("image")
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    (caller / "notes.txt").write_text("three small words\n")
    since = time.time()
    proc = subprocess.run([str(WORD_COUNT), "notes.txt"], cwd=caller, capture_output=True, text=True,
                          env=tool_env(DOCKER_DIR_IMAGE=str(directory)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "3 notes.txt\n"
    assert count_events("load", since, image=image) == 1  # it ran through docker-dir-exec, in that image


def test_shebang_line_naming_the_image_directory(saved, tmp_path):
    """The `#!/usr/bin/env -S docker-dir-exec /abs/image sh` form of the same script."""
    lines = WORD_COUNT.read_text().splitlines(keepends=True)
    assert lines[0] == "#!/usr/bin/env -S docker-dir-exec sh\n"
    script = tmp_path / "scripts" / "word-count"
    script.parent.mkdir()
    script.write_text(f"#!/usr/bin/env -S docker-dir-exec {saved.one} sh\n" + "".join(lines[1:]))
    script.chmod(0o755)
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    (caller / "notes.txt").write_text("two words\n")
    env = tool_env()
    env.pop("DOCKER_DIR_IMAGE", None)
    proc = subprocess.run([str(script), "notes.txt"], cwd=caller, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 notes.txt\n"


@pytest.mark.parametrize("example", ["Snakefile.example", "examples/Makefile", "examples/word-count",
                                     "examples/datalad-run.sh"])
def test_readme_shows_the_tested_example_verbatim(example):
    readme = (REPO / "README.md").read_text()
    assert (REPO / example).read_text() in readme, f"README.md must show {example} as it is (a fenced block)"
