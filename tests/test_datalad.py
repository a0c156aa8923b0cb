"""examples/datalad-run.sh with real DataLad, datalad-container and git-annex: an annexed
image directory, a recorded containers-run, a rerun on a cold engine, and dropped content.

No `containers-add --url dhub://`: it always pulls from a registry.
"""
import json
import subprocess
import time
import uuid

import pytest

from conftest import REPO, cli, count_events, docker, manifest, private_ref
from test_buildsystems import tool_env

from docker_dir.errors import EXIT_CONTENT_MISSING

EXAMPLE = REPO / "examples" / "datalad-run.sh"
IDENTITY = {"GIT_AUTHOR_NAME": "docker-dir test", "GIT_AUTHOR_EMAIL": "test@docker-dir.invalid",
            "GIT_COMMITTER_NAME": "docker-dir test", "GIT_COMMITTER_EMAIL": "test@docker-dir.invalid"}


def run(*args, cwd, **extra_env):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=tool_env(**IDENTITY, **extra_env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture
def dataset(tmp_path):
    """A DataLad dataset holding data.txt, saved (containers-run wants a clean dataset)."""
    ds = tmp_path / "ds"
    run("datalad", "create", ds, cwd=tmp_path)
    (ds / "data.txt").write_text("three little words\n")
    run("datalad", "save", "-m", "Add data", cwd=ds)
    return ds


def test_containers_run_on_annexed_image_dir(fresh_image, dataset):
    ref = f"fixture/datalad-{uuid.uuid4().hex[:8]}:1"
    image = fresh_image(ref)
    run("sh", EXAMPLE, cwd=dataset, IMAGE_REF=ref)

    assert (dataset / "counts.txt").read_text().strip() == "3"
    message = run("git", "log", "-1", "--format=%B", cwd=dataset)
    assert message.startswith("[DATALAD RUNCMD]")
    record = json.loads(message.split("=== Do not change lines below ===")[1].split("^^^")[0])
    assert record["cmd"] == "docker-dir-exec images/tools sh -c 'wc -w < data.txt > counts.txt'"
    assert record["extra_inputs"] == ["images/tools"] and record["outputs"] == ["counts.txt"]

    # --gitattributes: manifest and config are plain files in git, the layers annexed.
    image_dir = dataset / "images" / "tools"
    entry = manifest(image_dir)[0]
    modes = {line.split("\t")[1]: line.split()[0]
             for line in run("git", "ls-files", "-s", "images/tools", cwd=dataset).splitlines()}
    assert modes["images/tools/manifest.json"] == "100644"
    assert modes[f"images/tools/{entry['Config']}"] == "100644"
    layers = [f"images/tools/{layer}" for layer in entry["Layers"]]
    assert all(modes[layer] == "120000" for layer in layers)
    assert run("git", "annex", "find", "images/tools", cwd=dataset).split() == layers

    # The recorded run replays on an engine that never saw the image: loaded once from the annex.
    docker("rmi", "-f", private_ref(image), image)
    since = time.time()
    run("datalad", "rerun", cwd=dataset)
    assert count_events("load", since, image=image) == 1
    assert (dataset / "counts.txt").read_text().strip() == "3"

    run("git", "annex", "drop", "--force", *layers, cwd=dataset)
    assert run("git", "annex", "find", "images/tools", cwd=dataset) == ""
    docker("rmi", "-f", private_ref(image))
    proc = cli("docker-dir-id", image_dir)
    assert proc.returncode == 0 and proc.stdout == image + "\n", proc.stderr
    proc = cli("docker-dir-exec", image_dir, "true", cwd=dataset, env=tool_env())
    assert proc.returncode == EXIT_CONTENT_MISSING, proc.stderr
    assert "not present" in proc.stderr and f"datalad get {image_dir}" in proc.stderr
