"""Installing with pip, as a new user does: the scripts it installs must run.

Seen once: `pip install .` left build/ in the tree; a second `pip install .` into a
venv of Debian's /usr/bin/python3 (pip 23, no `wheel` package) fell back to the legacy
`setup.py install`, reused build/scripts-3.11 and installed scripts starting with
`#!python` ("cannot execute: required file not found"). pyproject.toml's build
system makes every pip build a wheel instead.
"""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SYSTEM_PYTHON = "/usr/bin/python3"


def tracked_copy(dest):
    """The checkout as a clone would have it (no .venv, no build/)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and os.path.exists(REPO / name):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name, follow_symlinks=False)
    return dest


def venv(python, path):
    subprocess.run([python, "-m", "venv", str(path)], check=True, capture_output=True)
    return path / "bin"


def pip_install(bin_dir, source):
    proc = subprocess.run([str(bin_dir / "pip"), "install", "-q", "--no-cache-dir", str(source)], cwd=source,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_second_install_into_a_debian_python_venv_has_runnable_scripts(tmp_path):
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip"],
                                                           capture_output=True).returncode:
        pytest.fail("Debian's python3 with venv (package python3-venv) is needed: run tests/run-all.sh")
    source = tracked_copy(tmp_path / "src")
    pip_install(venv(sys.executable, tmp_path / "first"), source)
    assert (source / "build").is_dir(), "the first install is expected to leave build/ behind"

    bin_dir = venv(SYSTEM_PYTHON, tmp_path / "debian")
    pip_install(bin_dir, source)
    remote = bin_dir / "git-annex-remote-docker-dir"
    assert remote.read_text().splitlines()[0] == f"#!{bin_dir / 'python3'}"
    # git-annex starts it and waits for its greeting (annexremote's import included)
    greeting = subprocess.run([str(remote)], input="", capture_output=True, text=True, timeout=60)
    assert greeting.stdout.splitlines()[:1] == ["VERSION 1"], greeting.stderr
    for name in ("docker-dir-save", "docker-dir-id", "docker-dir-exec", "docker-dir-push"):
        script = bin_dir / name
        assert script.read_text().splitlines()[0] == f"#!{bin_dir / 'python3'}", name
        proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "exit status:" in proc.stdout, (name, proc.stderr)
        from docker_dir import __version__

        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert proc.stdout == f"{name} {__version__}\n", (name, proc.stderr)
