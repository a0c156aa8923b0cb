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
    for name in ("docker-dir-save", "docker-dir-id", "docker-dir-exec", "docker-dir-push", "docker-dir-store",
                 "docker-dir-mirror"):
        script = bin_dir / name
        assert script.read_text().splitlines()[0] == f"#!{bin_dir / 'python3'}", name
        proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "exit status:" in proc.stdout, (name, proc.stderr)
        from docker_dir import __version__

        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert proc.stdout == f"{name} {__version__}\n", (name, proc.stderr)


def test_snakemake_plugin_installs_beside_docker_dir_and_only_on_python_3_11_up(tmp_path):
    """`pip install . ./snakemake-plugin` (as the README says) gives a plugin Snakemake's own
    registry finds, installed as users install it (not editable); on Python 3.9 pip refuses
    the plugin, for its interface needs 3.11, while docker-dir itself installs."""
    source = tracked_copy(tmp_path / "src")
    bin_dir = venv(SYSTEM_PYTHON, tmp_path / "with-plugin")
    proc = subprocess.run([str(bin_dir / "pip"), "install", "-q", "--no-cache-dir", ".", "./snakemake-plugin"],
                          cwd=source, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = subprocess.run([str(bin_dir / "python"), "-c",
                            "from snakemake_interface_software_deployment_plugins.registry import "
                            "SoftwareDeploymentPluginRegistry as R; print(R().get_plugin('docker-dir').name)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert found.stdout == "docker-dir\n", found.stderr

    old = python_3_9()
    if old is None:
        pytest.skip("no Python 3.9 on this machine (PATH, pyenv) to show the plugin is refused there")
    old_bin = venv(old, tmp_path / "python3.9")
    pip_install(old_bin, source)  # first: else pip may stop at docker-dir, which is on no index, before Python
    assert subprocess.run([str(old_bin / "docker-dir-id"), "--version"], capture_output=True).returncode == 0
    refused = subprocess.run([str(old_bin / "pip"), "install", "-q", "--no-cache-dir", "./snakemake-plugin"],
                             cwd=source, capture_output=True, text=True, timeout=600)
    # pip says so through the plugin's Requires-Python or, older pips, its interface's
    assert refused.returncode != 0, refused.stdout
    assert ("requires a different Python" in refused.stderr
            or "No matching distribution found for snakemake-interface-software-deployment-plugins" in refused.stderr
            ), refused.stderr[-2000:]
    assert not list((old_bin.parent / "lib").glob("python3.9/site-packages/snakemake_software_deployment_plugin*"))


def python_3_9():
    """A Python 3.9 (docker-dir's oldest) on PATH or among pyenv's versions, or None."""
    import glob

    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for candidate in [shutil.which("python3.9"), *sorted(glob.glob(f"{pyenv}/versions/3.9*/bin/python3.9"))]:
        if candidate and subprocess.run([candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 9))"],
                                        capture_output=True).returncode == 0:
            return candidate
    return None
