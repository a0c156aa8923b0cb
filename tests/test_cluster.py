"""The Slurm scenario: the README's Snakefile.example through snakemake's cluster-generic
executor, and a plain `sbatch --array` of cold docker-dir-exec jobs, on the one-node Slurm
cluster tests/provision-extra.sh brings up (real slurmctld/slurmd, real dockerd, as root).

What a batch job looks like (BRIEF §7, checked here in every array task): stdin /dev/null,
no TTY, TMPDIR=/tmp, the submitter's environment (sbatch --export=ALL, the default), so
the docker-dir commands come from the submitter's PATH; XDG_RUNTIME_DIR only if the
submitter exported it.

"Loaded once" proves something only if two jobs met a cold engine at the same moment. The
node has 2 CPUs and a job takes one; jobs are submitted with --hold and released together
once both CPUs are free and no other job waits for one (two test runs sharing the cluster
take turns releasing), and each test checks that two ran at once and that one of them
waited on the load lock. Without docker-dir's lock every test here fails (two loads).

Skipped, with the reason, only when Slurm cannot be brought up here.
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import cli, docker, import_image, manifest, private_ref, raw_save
from hosts import USER_DIRS, or_skip, sbatch, slurm_cluster
from test_buildsystems import SNAKEFILE, check_counts, outputs, tool_env, write_inputs

# {rule} is filled in by snakemake for each job; the job's log is slurm-<id>.out in the workflow dir.
SUBMIT_CMD = "sbatch --parsable --job-name=smk-{rule} --output=slurm-%j.out"
WAITED = "waiting for another process loading this image"  # docker-dir-exec's note when it waits on the lock


@pytest.fixture(scope="module")
def slurm():
    cluster = or_skip(slurm_cluster)
    yield cluster
    cluster.stop()  # only if this module started the daemons


def squeue(*args):
    proc = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def free_for_two():
    """Two CPUs idle (sinfo's allocated/idle/other/total) and no job of anyone's waiting to take one."""
    proc = subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, timeout=30)
    try:
        idle = sum(int(line.split("/")[1]) for line in proc.stdout.split())
    except (IndexError, ValueError):
        return False
    waiting = [reason for reason in squeue("-t", "PENDING", "-o", "%r")
               if not reason.startswith(("JobHeld", "Dependency", "BeginTime"))]
    return idle >= 2 and not waiting


@contextlib.contextmanager
def release_turn():
    """Between test processes sharing the cluster (two checkouts' suites at once): one at a
    time releases jobs, so another's jobs never take a CPU the moment ours should start."""
    USER_DIRS.mkdir(parents=True, exist_ok=True)
    with open(USER_DIRS / "slurm-release.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class SlurmWatch:
    """Releases the held Slurm jobs started from `workdir` while the block runs (polling
    every 0.05 s), so that two of the jobs named in `together` start at the same moment.

    The first batch, once no new job has come for 1 s: when two CPUs are idle and no other
    job waits for one (waiting up to 2 min), the `together` jobs at once and before the others; `together`
    tells whether two of them then ran within 3 s, `busy` what else ran when they did not.
    Jobs held later are released as soon as they appear. At the end, jobs of `workdir` still
    queued or running are cancelled (a failed test)."""

    def __init__(self, workdir, together):
        self.workdir = str(workdir)
        self.names = set(together)
        self.together = False
        self.busy = ""
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ours(self, states):
        """[(job or array task, name, reason)] of the jobs of workdir in those states."""
        rows = [line.split("|", 3) for line in squeue("-t", states, "-o", "%i|%j|%r|%Z")]
        return [tuple(row[:3]) for row in rows if len(row) == 4 and row[3] == self.workdir]

    def _held(self):
        return [(job, name) for job, name, reason in self._ours("PENDING") if reason.startswith("JobHeld")]

    @staticmethod
    def _release_now(jobs):
        if jobs:  # "123_[1-8]" (a held array) releases as "123"
            subprocess.run(["scontrol", "release", ",".join(job.split("_")[0] for job in jobs)],
                           capture_output=True, timeout=30)

    def _release(self, jobs):
        if jobs:
            with release_turn():
                self._release_now(jobs)

    def _until(self, condition, timeout):
        """Whether condition() came true within timeout s (and before the block ended)."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            if condition():
                return True
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return False

    def _two_running(self):
        return len([name for _, name, _ in self._ours("RUNNING") if name in self.names]) >= 2

    def _run(self):
        try:
            batch, since = [], time.monotonic()
            while not self._stop.is_set():
                held = self._held()
                if held != batch:
                    batch, since = held, time.monotonic()
                elif batch and time.monotonic() - since >= 1:
                    break
                time.sleep(0.05)
            if batch:
                with release_turn():
                    self._until(free_for_two, 120)
                    self._release_now([job for job, name in batch if name in self.names])
                    self.together = self._until(self._two_running, 3)
                    if not self.together:
                        self.busy = "\n".join(squeue("-t", "RUNNING", "-o", "%i %j %u %Z"))
                        self._until(self._two_running, 10)  # before the others could take a CPU
                self._release([job for job, name in batch if name not in self.names])
            while not self._stop.wait(0.05):
                self._release([job for job, _ in self._held()])
        except Exception as error:  # noqa: BLE001 -- raised again by __exit__
            self.error = error
            self._release([job for job, _ in self._held()])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        left = self._ours("PENDING,RUNNING,SUSPENDED")
        if left:
            subprocess.run(["scancel", *{job.split("_")[0] for job, *_ in left}], capture_output=True)
        if self.error and not exc[0]:
            raise self.error


class Loads:
    """Counts the engine's load events for one image ID while the block runs, from a live
    `docker events` stream. Not conftest.count_events after the fact: dockerd answers --since
    from its last 256 events only, which other work on a shared machine can push out within
    a minute (measured here: 45 s)."""

    def __init__(self, image):
        assert image.startswith("sha256:"), image  # dockerd 20.10 reports a load under the ID only
        self.image = image
        self.count = None

    def __enter__(self):
        self._proc = subprocess.Popen(
            ["docker", "events", "--since", f"{time.time():.3f}", "--filter", "type=image", "--filter", "event=load",
             "--filter", f"image={self.image}", "--format", "{{.Action}}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)  # the loads ended seconds ago (their jobs finished since); let the last line through
        self._proc.terminate()
        out, err = self._proc.communicate(timeout=30)
        assert self._proc.returncode in (0, 143, -15), f"docker events: {err}"  # 143: it ends on SIGTERM
        self.count = len([line for line in out.splitlines() if line.strip()])


def show(logs):
    return "".join(f"\n--- {name}\n{text}" for name, text in logs.items())


def snakemake_on_slurm(work, image):
    """Snakefile.example with every job but `all` (a localrule) submitted through sbatch, as the
    README shows, plus --hold: SlurmWatch releases two count_words jobs together. Status checks
    every second, not every 10 s (snakemake's default), to keep the test short.
    Returns snakemake's output, the Slurm logs of its jobs, the SlurmWatch and how many times
    `image` was loaded meanwhile."""
    argv = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE),
            "--executor", "cluster-generic", "--cluster-generic-submit-cmd", SUBMIT_CMD + " --hold",
            "--cluster-generic-cancel-cmd", "scancel", "--jobs", "4", "--seconds-between-status-checks", "1"]
    with Loads(image) as loads, SlurmWatch(work, together={"smk-count_words"}) as watch:
        proc = subprocess.run(argv, cwd=work, env=tool_env(), capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    jobs = re.findall(r"Submitted job \d+ with external jobid '(\d+)'", log)
    logs = {f"slurm-{job}.out": (work / f"slurm-{job}.out").read_text(errors="replace")
            if (work / f"slurm-{job}.out").exists() else "(no log)\n" for job in jobs}
    assert proc.returncode == 0, log + show(logs)
    return log, logs, watch, loads.count


def check_loaded_once(watch, loads, logs):
    assert watch.together, ("two jobs did not start together, so nothing raced to load; the node was busy with:\n"
                            + watch.busy)
    assert loads == 1, f"{loads} loads" + show(logs)
    # two jobs started together on a cold engine met at the lock: one loaded, the other waited
    assert any(WAITED in text for text in logs.values()), "no job waited for the load" + show(logs)


@pytest.fixture
def loading_image(rootfs, tmp_path):
    """Factory: a new image (tagged `ref`) with a 48 MB layer, so its load takes long enough
    for two jobs started together to meet at the lock (a small one loads before the second
    job asks); removed after the test."""
    made = []

    def make(ref):
        root = tmp_path / f"root-{len(made)}"
        shutil.copytree(rootfs, root, symlinks=True)
        (root / "big.bin").write_bytes(os.urandom(48 << 20))
        made.append(import_image(root, ref, label=uuid.uuid4().hex))
        shutil.rmtree(root)
        return made[-1]

    yield make
    for image in made:
        docker("rmi", "-f", private_ref(image), image, check=False)


def test_snakemake_cluster_generic_loads_once_and_reruns_only_for_a_new_image(slurm, loading_image, tmp_path):
    first = loading_image(f"fixture/cluster-{uuid.uuid4().hex[:8]}:1")
    directory = raw_save(first, tmp_path / "image")
    docker("rmi", "-f", first)
    counts = write_inputs(tmp_path, 4)

    log, logs, watch, loads = snakemake_on_slurm(tmp_path, first)
    # image exists, so save_image does not run: write_image_id and the 4 count_words jobs do
    assert len(logs) == 5, log
    check_loaded_once(watch, loads, logs)
    check_counts(tmp_path, counts)
    assert (tmp_path / "image.id").read_text() == first + "\n"
    built = outputs(tmp_path)

    # The same image saved again (by ID: the cold image has no tag left): a newer directory, the same ID.
    time.sleep(0.02)
    proc = cli("docker-dir-save", "-q", "--force", first, directory)
    assert proc.returncode == 0, proc.stderr
    log, logs, _, loads = snakemake_on_slurm(tmp_path, first)
    assert "Nothing to be done" in log and not logs and loads == 0, log
    assert outputs(tmp_path) == built

    # A new image saved over it, and gone from the engine again: every job that uses it reruns
    # on Slurm, and the new image too is loaded once.
    second = loading_image(f"fixture/cluster-{uuid.uuid4().hex[:8]}:latest")
    proc = cli("docker-dir-save", "-q", "--force", second, directory)
    assert proc.returncode == 0, proc.stderr
    docker("rmi", "-f", second)
    log, logs, watch, loads = snakemake_on_slurm(tmp_path, second)
    assert "Params have changed" in log and len(logs) == 5, log
    check_loaded_once(watch, loads, logs)
    after = outputs(tmp_path)
    assert all(after[name][0] != built[name][0] for name in built), "every job should have run again"
    assert (tmp_path / "image.id").read_text() == second + "\n"
    check_counts(tmp_path, counts)


# Each task: show its environment, wait until a second task has started too (so two execs meet
# the cold engine at the same moment, not one after the other), then run in the image.
ARRAY_TASK = """#!/bin/sh
set -eu
echo "stdin=$(readlink /proc/self/fd/0) tty=$(if [ -t 0 ] || [ -t 1 ]; then echo yes; else echo no; fi)" \\
     "TMPDIR=${TMPDIR-unset} XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR-unset}"
touch "here.$SLURM_ARRAY_TASK_ID"
i=0
while [ "$(ls here.* | wc -l)" -lt 2 ]; do
  i=$((i + 1))
  if [ "$i" -gt 1500 ]; then echo "no other task started within 30 s"; break; fi
  sleep 0.02
done
exec docker-dir-exec -e TASK="$SLURM_ARRAY_TASK_ID" IMAGE_DIR \\
  sh -c 'cat; echo "task $TASK in $(cat /docker-dir-test)"; { [ -t 0 ] || [ -t 1 ]; } && echo tty || echo no tty'
"""


def label(directory):
    """The docker-dir-test label conftest's fixture images carry (also in the file /docker-dir-test)."""
    config = json.loads((directory / manifest(directory)[0]["Config"]).read_text())
    return config["config"]["Labels"]["docker-dir-test"]


# Slurm passes XDG_RUNTIME_DIR only when the submitter exported it, and a compute node has no
# login session to make one: batch jobs usually run without it, and docker-dir then keeps its
# load lock in /run/docker-dir (root; /tmp/docker-dir-UID for others). "unset" runs the array
# that way, so the lock that makes 8 cold tasks load once is the fallback one; "exported"
# checks that a submitter's XDG_RUNTIME_DIR is honoured on the node.
@pytest.mark.parametrize("xdg", ["unset", "exported"])
def test_sbatch_array_of_cold_execs_loads_once(slurm, cold_dir, tmp_path, monkeypatch, xdg):
    directory, image = cold_dir("image")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    env = {"PATH": tool_env()["PATH"]}
    xdg_dir = tmp_path / "xdg"
    if xdg == "unset":
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # sbatch passes on the test's environment
    else:
        xdg_dir.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(xdg_dir)

    name = f"dd-array-{uuid.uuid4().hex[:8]}"
    with Loads(image) as loads, SlurmWatch(jobs, together={name}) as watch:
        job = sbatch(script=ARRAY_TASK.replace("IMAGE_DIR", str(directory)), array="1-8", cwd=jobs, env=env,
                     options=("--hold", f"--job-name={name}"), wait=False)
        job.wait(timeout=240)
    logs = {f"task {task}": job.output(task) for task in range(1, 9)}
    assert job.succeeded(), f"{job.tasks()}" + show(logs)
    check_loaded_once(watch, loads.count, logs)

    expected_xdg = "unset" if xdg == "unset" else str(xdg_dir)
    for task in range(1, 9):
        log = logs[f"task {task}"]
        assert [line for line in log.splitlines() if WAITED not in line] == [
            f"stdin=/dev/null tty=no TMPDIR=/tmp XDG_RUNTIME_DIR={expected_xdg}",
            f"task {task} in {label(directory)}", "no tty"], log

    lock_dir = (xdg_dir / "docker-dir") if xdg == "exported" else "/run/docker-dir"
    st = os.lstat(lock_dir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    if xdg == "unset":
        assert not xdg_dir.exists()
