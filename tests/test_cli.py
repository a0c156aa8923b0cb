"""What the three commands share: the exit-code table, and the shortcuts taken for
speed (docker-dir-id's quick parser, the JSON scanner) held to what they replace."""
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, cli

from docker_dir.cli.id import full_parse, quick_parse
from docker_dir.errors import EXIT_CODES, UsageError
from docker_dir.fastjson import loads_json

PROGS = ("docker-dir-save", "docker-dir-id", "docker-dir-exec", "docker-dir-push", "docker-dir-store",
         "docker-dir-mirror")


def _plain(text):
    return " ".join(text.replace("`", "").replace("'", "").split())


def readme_exit_codes():
    section = (REPO / "README.md").read_text().split("## Exit status", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\S+) \| (.+) \|$", section, re.M)
    return {code: _plain(meaning) for code, meaning in rows if code != "code"}


def help_exit_codes(text):
    table, code = {}, None
    for line in text.split("exit status:", 1)[1].splitlines()[1:]:
        match = re.match(r"  (\S+)\s+(.*)", line)
        if match and not line.startswith("   "):
            code = match.group(1)
            table[code] = match.group(2)
        elif code and line.strip():
            table[code] += " " + line.strip()
    return {c: _plain(m) for c, m in table.items()}


@pytest.mark.parametrize("prog", PROGS)
def test_help_exit_codes_are_the_readme_table(prog):
    proc = cli(prog, "--help")
    assert proc.returncode == 0, proc.stderr
    documented = readme_exit_codes()
    assert documented == {code: _plain(meaning) for code, meaning in EXIT_CODES}
    assert help_exit_codes(proc.stdout) == documented


# -- docker-dir-id's quick parser against argparse ------------------------------------

WORDS = ["--verify", "--json", "--debug", "--repo-tag", "--repo-tag=x:1", "--config", "--config=abc", "-o",
         "--output", "--output=out", "--engine", "--engine=docker", "--engine=podman", "--engine=rkt", "--", "-",
         "DIR", "other", "x:1", "abc", "docker", "-x", "--verif", "-ofile", "--json=1", "-o=f", "--help", "--platform", "linux/arm64", "--platform=linux/amd64"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=6))
def test_quick_parse_agrees_with_argparse(argv):
    quick = quick_parse(argv)
    if quick is None:
        return  # argparse decides alone
    try:
        full = full_parse(argv)
    except (UsageError, SystemExit) as err:
        pytest.fail(f"quick_parse accepted {argv} that argparse refuses: {err}")
    assert {key: getattr(quick, key) for key in vars(full)} == vars(full), argv


def test_quick_parse_takes_the_common_command_lines():
    for argv in (["DIR"], ["--verify", "DIR"], ["-o", "image.id", "DIR"], ["--repo-tag", "a:1", "--json", "DIR"]):
        assert quick_parse(argv) is not None, argv


# -- loads_json against json.loads ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


def outcome(parse, text):
    try:
        return "value", parse(text)
    except (ValueError, RecursionError) as err:
        return "error", type(err).__name__ == "RecursionError"


@settings(max_examples=400, deadline=None)
@given(json_values, st.sampled_from(["", " ", "\n\t", "\r\n "]))
def test_loads_json_reads_what_json_loads_reads(value, space):
    text = space + json.dumps(value, ensure_ascii=False) + space
    assert loads_json(text) == json.loads(text)
    assert loads_json(text.encode()) == json.loads(text)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(max_size=30),
                 json_values.map(json.dumps).flatmap(lambda t: st.integers(0, len(t)).map(lambda n: t[:n])),
                 st.sampled_from(['{"a": 1} x', "[1,]", "{'a': 1}", '"\\ud800"', "1e999", "[" * 3000 + "]" * 3000,
                                  '{"a": 1, "a": 2}', "\ufeff{}", "01", "-", '"\x01"', "nul", "[1 2]"])))
def test_loads_json_fails_where_json_loads_fails(text):
    if any(word in text for word in ("NaN", "Infinity")):
        return  # refused on purpose: no engine writes them (test below)
    assert outcome(loads_json, text) == outcome(json.loads, text)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_loads_json_refuses_what_no_engine_writes(text):
    json.loads(text)
    with pytest.raises(ValueError):
        loads_json(text)


# -- the small things ----------------------------------------------------------------

@pytest.mark.parametrize("prog", PROGS)
def test_version_from_a_checkout_and_installed(prog):
    import os
    import subprocess
    import sys

    from docker_dir import __version__

    proc = cli(prog, "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{prog} {__version__}\n", "")
    installed = os.path.join(os.path.dirname(sys.executable), prog)  # pip install -e put it there
    proc = subprocess.run([installed, "--version"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, f"{prog} {__version__}\n"), proc.stderr


def test_errors_show_dir_normalised(tmp_path):
    typed = f"{tmp_path}//missing/./"
    for prog, extra in (("docker-dir-id", []), ("docker-dir-exec", ["true"])):
        proc = cli(prog, typed, *extra)
        assert proc.stderr.startswith(f"{prog}: {tmp_path}/missing: no such directory"), proc.stderr
