"""Every reader sees one whole image while `docker-dir-save --force` replaces DIR again
and again (the save swaps the new directory in atomically, then removes the old one):
docker-dir-id plain, --verify and --json, exec on an image the engine has, and the cold
exec that streams DIR's files into the engine. Seen before: 4 of 115 verifies failed
with "cannot read" or a false "datalad get" hint."""
import json
import threading
import time

import pytest

from conftest import cli, docker, private_ref

SAVES = 16


@pytest.fixture
def swapping(images, tmp_path):
    """DIR, saved over and over with two images in turn by a background thread; yields
    (DIR, {image ID: its /docker-dir-test or /data marker}) while it runs."""
    d = tmp_path / "img"
    first = cli("docker-dir-save", "-q", images.one, d)
    assert first.returncode == 0, first.stderr
    stop = threading.Event()
    failures = []

    def save_loop():
        for n in range(SAVES):
            if stop.is_set():
                break
            proc = cli("docker-dir-save", "-q", "--force", (images.multi, images.one)[n % 2], d)
            if proc.returncode:
                failures.append(proc.stderr)

    saver = threading.Thread(target=save_loop)
    saver.start()
    yield d, saver
    stop.set()
    saver.join()
    assert not failures, failures


def loop_while(saver, run):
    outcomes = []
    while saver.is_alive():
        outcomes.append(run())
    outcomes.append(run())
    return outcomes


@pytest.mark.parametrize("options", [[], ["--verify"], ["--json"]])
def test_id_sees_the_old_or_the_new_image(swapping, images, options):
    d, saver = swapping
    results = loop_while(saver, lambda: cli("docker-dir-id", *options, d))
    bad = [(r.returncode, r.stderr) for r in results if r.returncode]
    assert not bad, bad[:3]
    ids = {json.loads(r.stdout)["id"] if options == ["--json"] else r.stdout.strip() for r in results}
    assert ids <= {images.one_id, images.multi_id}
    assert len(results) > 5


def test_exec_hot_sees_the_old_or_the_new_image(swapping, images, saved, tmp_path):
    d, saver = swapping
    for directory in (saved.one, saved.multi):
        assert cli("docker-dir-exec", "--load-only", directory).returncode == 0  # the engine has both
    results = loop_while(saver, lambda: cli("docker-dir-exec", d, "sh", "-c", "ls /data 2>/dev/null | wc -l",
                                            cwd=tmp_path))
    bad = [(r.returncode, r.stderr) for r in results if r.returncode]
    assert not bad, bad[:3]
    assert {r.stdout.strip() for r in results} <= {"0", "2"}  # one (no /data) or multi (a.bin, b.bin)


def test_cold_exec_loads_the_old_or_the_new_image(swapping, images, tmp_path):
    d, saver = swapping
    results = []

    def cold():
        for image_id in (images.one_id, images.multi_id):
            docker("rmi", "-f", private_ref(image_id), check=False)
        return cli("docker-dir-exec", d, "sh", "-c", "ls /data 2>/dev/null | wc -l", cwd=tmp_path)

    deadline = time.monotonic() + 120
    while saver.is_alive() and time.monotonic() < deadline:
        results.append(cold())
    bad = [(r.returncode, r.stderr) for r in results if r.returncode]
    assert not bad, bad[:3]
    assert {r.stdout.strip() for r in results} <= {"0", "2"}
    assert len(results) >= 2
