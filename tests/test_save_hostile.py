"""docker-dir-save refuses archives that would write outside DIR.

No real engine produces these archives, so they are fed through a FAKE `docker`
on PATH (the only fake in this file): it answers `docker image inspect --format
{{.Id}} REF` with an ID (save checks the image exists first) and streams the
crafted tar for `docker save -- REF`. The positive cases at the end go through
the same fake, so a refusal above is never an artefact of the fake itself.

Layout of every case: tmp_path/work is DIR's parent (DIR = work/img), and
tmp_path/outside holds a canary. The temp dir save extracts into is
work/.img.docker-dir-save-XXXX, so `../` from the archive's top is work/ and
`../../outside` is the canary's directory.
"""
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile

import pytest

from conftest import cli, one_line_error

from docker_dir.application.save import TEMP_MARK
from docker_dir.errors import EXIT_BAD_DIR, EXIT_ENGINE_FAILED

FAKE_ID = "sha256:" + "ab" * 32
CANARY = b"canary: must stay as it is\n"


def fake_docker(bindir, archive, stderr_line=None):
    bindir.mkdir()
    script = bindir / "docker"
    warn = f"echo '{stderr_line}' >&2\n" if stderr_line else ""
    script.write_text(
        "#!/bin/sh\n"
        "# FAKE docker: serves one crafted archive; a real engine never writes one like it.\n"
        f"{warn}"
        'case "$1 $2" in\n'
        f'  "image inspect") echo {FAKE_ID} ;;\n'
        f'  "save --") exec cat {archive} ;;\n'
        '  *) echo "fake docker: unexpected call: $*" >&2; exit 99 ;;\n'
        "esac\n")
    script.chmod(0o755)
    # No daemon socket: docker-dir asks the engine's API directly when it can,
    # and must fall back to the (fake) CLI here.
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", DOCKER_HOST=f"unix://{bindir}/no-daemon.sock")


def member(name, kind="file", data=b"", target=None):
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if kind == "file":
        info.size = len(data)
    elif kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, target
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, target
    elif kind == "chr":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "blk":
        info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 7, 0
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    return info, data


def write_tar(path, members):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def image_members(extra_before=(), layer_links=None):
    """A minimal valid legacy archive (config, one layer, manifest), with `extra_before` first."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    members = list(extra_before) + [
        member(f"{config_hex}.json", data=config),
        member("aaaa", "dir"),
        member("aaaa/layer.tar", data=layer),
        member("manifest.json", data=json.dumps(
            [{"Config": f"{config_hex}.json", "RepoTags": ["evil/img:1"], "Layers": ["aaaa/layer.tar"]}]).encode()),
    ]
    return members


@pytest.fixture
def arena(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "canary").write_bytes(CANARY)
    return tmp_path


def assert_refused(arena, members, stderr_line=None, head=b""):
    """Run save on the crafted archive (`head`: raw tar members before `members`); it must
    refuse it and leave no trace anywhere."""
    archive = write_tar(arena / "evil.tar", image_members(members))
    archive.write_bytes(head + archive.read_bytes())
    env = fake_docker(arena / "fakebin", archive, stderr_line)
    before_root = sorted(os.listdir(arena))
    proc = cli("docker-dir-save", "--engine", "docker", "evil/img:1", arena / "work" / "img", env=env)
    assert proc.returncode == EXIT_BAD_DIR, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "refusing the archive" in lines[0], lines[0]
    assert proc.stdout == ""
    # nothing in DIR's parent (no DIR, no sibling, no hidden temp dir) and nothing outside
    assert os.listdir(arena / "work") == []
    assert sorted(os.listdir(arena)) == before_root
    assert os.listdir(arena / "outside") == ["canary"]
    assert (arena / "outside" / "canary").read_bytes() == CANARY
    assert not os.path.lexists("/pwned-by-docker-dir-test")
    return lines[0]


def test_absolute_path(arena):
    assert_refused(arena, [member(str(arena / "outside" / "pwned"), data=b"x")])


def test_absolute_path_at_filesystem_root(arena):
    assert_refused(arena, [member("/pwned-by-docker-dir-test", data=b"x")])


def test_dotdot_escape(arena):
    assert_refused(arena, [member("../../outside/pwned", data=b"x")])


def test_dotdot_escape_after_descending(arena):
    assert_refused(arena, [member("a/b/../../../../outside/pwned", data=b"x")])


def test_symlink_outside_then_write_through_it(arena):
    assert_refused(arena, [member("esc", "symlink", target="../../outside"),
                           member("esc/pwned", data=b"x")])


def test_absolute_symlink_then_write_through_it(arena):
    assert_refused(arena, [member("esc", "symlink", target=str(arena / "outside")),
                           member("esc/pwned", data=b"x")])


def test_symlink_to_outside_file_then_overwrite_it(arena):
    assert_refused(arena, [member("c", "symlink", target="../../outside/canary"),
                           member("c", data=b"overwritten")])


def test_hardlink_to_outside_file(arena):
    # A naive extractor links the canary into the tree, then the second member writes into it.
    assert_refused(arena, [member("h", "hardlink", target="../../outside/canary"),
                           member("h", data=b"overwritten")])


def test_hardlink_absolute_target(arena):
    assert_refused(arena, [member("h", "hardlink", target=str(arena / "outside" / "canary")),
                           member("h", data=b"overwritten")])


def test_hardlink_through_in_tree_symlink(arena):
    # `up -> ../x` is itself in-tree (x/up is a link to the top); the hardlink walks through it
    assert_refused(arena, [member("x", "dir"), member("x/up", "symlink", target="../x"),
                           member("h", "hardlink", target="x/up/../../outside/canary")])


@pytest.mark.parametrize("kind", ["chr", "blk", "fifo"])
def test_special_files(arena, kind):
    line = assert_refused(arena, [member("dev/thing", kind)])
    assert "special file" in line


def test_sibling_sharing_dir_prefix_by_name(arena):
    """work/img vs work/img-evil: a check by string prefix would let this through."""
    assert_refused(arena, [member("../img-evil/x", data=b"x")])
    assert not os.path.lexists(arena / "work" / "img-evil")


def test_sibling_sharing_dir_prefix_by_top_level_symlink(arena):
    assert_refused(arena, [member("img-evil", "symlink", target="../img-evil"),
                           member("img-evil/x", data=b"x")])


def test_sibling_via_temp_dir_name_prefix(arena):
    """The hidden temp dir's own name is a prefix of many paths: `../.img.docker-dir-save-x`."""
    assert_refused(arena, [member("s", "symlink", target="../.img.docker-dir-save-evil"),
                           member("s/x", data=b"x")])


def test_symlink_chain_climbing_after_descending(arena):
    assert_refused(arena, [member("deep/x", "dir"), member("deep/x/s", "symlink", target="../.."),
                           member("l", "symlink", target="deep/x/s/../.."),
                           member("l/outside/pwned", data=b"x")])


def test_symlink_chain_each_link_in_tree(arena):
    """Each link alone stays inside (s -> deep, the top's child), yet l = s/../.. would be work/."""
    assert_refused(arena, [member("deep/x", "dir"), member("deep/x/s", "symlink", target="../../deep"),
                           member("l", "symlink", target="deep/x/s/../.."),
                           member("l/img-evil/x", data=b"x")])


def test_symlink_chain_leading_outside_is_refused_even_unused(arena):
    """No member writes through l, but DIR would hold a link to work/ for whoever reads it later."""
    assert_refused(arena, [member("deep/x", "dir"), member("deep/x/s", "symlink", target="../../deep"),
                           member("l", "symlink", target="deep/x/s/../..")])


def test_link_climbing_after_a_link_that_jumps_up(arena):
    """j sits at depth 4 but names z (depth 1); two `..` after it leave the tree, although L
    climbs less than its own depth. Only the rule 'no `..` after a name' stops it."""
    assert_refused(arena, [member("z", "dir"), member("a/b/c/d", "dir"),
                           member("a/b/c/d/j", "symlink", target="../../../../z"),
                           member("a/b/c/d/L", "symlink", target="j/../..")])


def test_link_to_own_parent_then_climb_from_apparent_depth(arena):
    """d/l -> ../d makes d/l/l/l... all name d; a link placed at d/l/l/s must not count that depth."""
    assert_refused(arena, [member("d", "dir"), member("d/l", "symlink", target="../d"),
                           member("d/l/l/s", "symlink", target="../../../outside"),
                           member("d/l/l/s/pwned", data=b"x")])


def test_directory_member_through_symlink(arena):
    assert_refused(arena, [member("esc", "symlink", target="../../outside"), member("esc/newdir", "dir")])


def test_long_name_in_pax_header(arena):
    """Over 100 characters the name travels in a PAX header; it is checked all the same."""
    assert_refused(arena, [member("../../outside/" + "p" * 120, data=b"x")])
    assert os.listdir(arena / "outside") == ["canary"]


def test_long_symlink_target_in_pax_header(arena):
    assert_refused(arena, [member("esc", "symlink", target="../../outside/" + "q" * 120)])


def test_sparse_file(arena, tmp_path_factory):
    """A sparse member's bytes in the stream are not the file's; GNU tar writes one with
    --sparse (the crafted member comes from it: tarfile cannot write one), no engine does."""
    src = tmp_path_factory.mktemp("sparse")
    with open(src / "holes", "wb") as out:
        out.seek(4 << 20)
        out.write(b"end\n")
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(src / "sparse.tar"), "-C", str(src), "holes"],
                   check=True)
    with tarfile.open(src / "sparse.tar") as tar:
        assert tar.next().issparse(), "GNU tar wrote no sparse member: the case is not tested"
        head = (src / "sparse.tar").read_bytes()[:tar.offset]
    assert "sparse file" in assert_refused(arena, [], head=head)


def test_refusal_wins_over_engine_chatter_on_stderr(arena):
    """The docker CLI prints warnings on stderr (e.g. an unreadable config.json) while
    the save succeeds: an unsafe archive must still be reported as unsafe (65)."""
    assert_refused(arena, [member("../../outside/pwned", data=b"x")],
                   stderr_line="WARNING: Error loading config file: /root/.docker/config.json: permission denied")


# -- legitimate in-tree relative links survive (same fake, so the refusals above are real)

def save_crafted(arena, members):
    archive = write_tar(arena / "ok.tar", members)
    env = fake_docker(arena / "fakebin", archive)
    d = arena / "work" / "img"
    proc = cli("docker-dir-save", "--engine", "docker", "evil/img:1", d, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(arena / "work")) == ["img"]
    return d, proc


def _manifest_hex(d):
    return json.loads((d / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]


def layer_bytes(text):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def config_for(layers):
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    return config, hashlib.sha256(config).hexdigest()


def test_legacy_duplicate_layer_symlink_survives(arena):
    layer = layer_bytes(b"same\n")
    config, config_hex = config_for([layer, layer])
    v1, v2 = "1" * 64, "2" * 64
    d, proc = save_crafted(arena, [
        member(f"{config_hex}.json", data=config),
        member(v2, "dir"), member(f"{v2}/layer.tar", data=layer),
        member(v1, "dir"), member(f"{v1}/layer.tar", "symlink", target=f"../{v2}/layer.tar"),
        member("manifest.json", data=json.dumps([{"Config": f"{config_hex}.json", "RepoTags": None,
                                                  "Layers": [f"{v2}/layer.tar", f"{v1}/layer.tar"]}]).encode()),
    ])
    assert proc.stdout == f"sha256:{config_hex}\n"
    # the link was followed to its file, which became the one blob both layers name
    layer_hex = hashlib.sha256(layer).hexdigest()
    assert json.loads((d / "manifest.json").read_text())[0]["Layers"] == [f"blobs/sha256/{layer_hex}"] * 2
    assert sorted(os.listdir(d / "blobs" / "sha256")) == sorted([layer_hex, config_hex, _manifest_hex(d)])
    check = cli("docker-dir-id", "--verify", d)
    assert check.returncode == 0 and check.stdout == f"sha256:{config_hex}\n", check.stderr


def test_podman_layer_symlink_survives(arena):
    layer = layer_bytes(b"podman\n")
    config, config_hex = config_for([layer])
    sha = hashlib.sha256(layer).hexdigest()
    d, proc = save_crafted(arena, [
        member(f"{sha}.tar", data=layer),
        member(sha, "dir"), member(f"{sha}/layer.tar", "symlink", target=f"../{sha}.tar"),
        member(f"{config_hex}.json", data=config),
        member("manifest.json", data=json.dumps([{"Config": f"{config_hex}.json", "RepoTags": ["evil/img:1"],
                                                  "Layers": [f"{sha}/layer.tar"]}]).encode()),
    ])
    assert stat.S_ISREG(os.lstat(d / "blobs" / "sha256" / sha).st_mode)
    assert json.loads((d / "manifest.json").read_text())[0]["RepoTags"] == ["evil/img:1"]
    check = cli("docker-dir-id", "--verify", d)
    assert check.returncode == 0 and check.stdout == f"sha256:{config_hex}\n", check.stderr


# -- archives that are safe but not a whole image: DIR must not appear half-made

def assert_incomplete_refused(arena, members):
    archive = write_tar(arena / "incomplete.tar", members)
    env = fake_docker(arena / "fakebin", archive)
    proc = cli("docker-dir-save", "--engine", "docker", "evil/img:1", arena / "work" / "img", env=env)
    assert proc.returncode == EXIT_ENGINE_FAILED, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert TEMP_MARK not in lines[0], "the message names the hidden temp dir instead of DIR"
    assert os.listdir(arena / "work") == []
    return lines[0]


def test_manifest_naming_a_layer_the_archive_lacks(arena):
    members = [m for m in image_members() if m[0].name != "aaaa/layer.tar"]
    assert "aaaa/layer.tar" in assert_incomplete_refused(arena, members)


def test_archive_without_manifest(arena):
    members = [m for m in image_members() if m[0].name != "manifest.json"]
    assert "manifest.json" in assert_incomplete_refused(arena, members)


def test_member_repeating_a_link_name_replaces_the_link_not_its_target(arena):
    """A later member named like an in-tree symlink or hardlink must not write through it.
    The files are extras the saved layout does not keep: the extraction is checked itself."""
    from docker_dir.format.extract import extract_stream

    archive = write_tar(arena / "links.tar", image_members([]) + [
        member("aaaa/alias", "symlink", target="layer.tar"),
        member("aaaa/alias", data=b"replaced the link\n"),
        member("aaaa/twin", "hardlink", target="aaaa/layer.tar"),
        member("aaaa/twin", data=b"replaced the hardlink\n"),
    ])
    d = arena / "extracted"
    d.mkdir()
    with open(archive, "rb") as stream:
        extract_stream(stream, str(d))
    assert (d / "aaaa" / "alias").read_bytes() == b"replaced the link\n"
    assert not (d / "aaaa" / "alias").is_symlink()
    assert (d / "aaaa" / "twin").read_bytes() == b"replaced the hardlink\n"
    assert (d / "aaaa" / "layer.tar").read_bytes() != b"replaced the hardlink\n"
    saved, _ = save_crafted(arena, image_members([]) + [member("aaaa/alias", "symlink", target="layer.tar"),
                                                         member("aaaa/alias", data=b"replaced the link\n")])
    check = cli("docker-dir-id", "--verify", saved)
    assert check.returncode == 0, check.stderr


def test_archive_without_its_config(arena):
    members = [m for m in image_members() if not m[0].name.endswith(".json") or m[0].name == "manifest.json"]
    assert "is missing" in assert_incomplete_refused(arena, members)


@pytest.mark.parametrize("what", ["layer", "config"])
def test_content_that_does_not_match_its_digest(arena, what):
    """Every file of an export is hashed as it streams and checked against the digest the
    image names it by: a layer that is not its diff_id, a config that is not its name."""
    members = image_members()
    if what == "layer":
        layer = next(m for m in members if m[0].name == "aaaa/layer.tar")
        members[members.index(layer)] = member("aaaa/layer.tar", data=layer[1][:-1] + b"\1")
    else:
        config = next(m for m in members if m[0].name.endswith(".json"))
        members[members.index(config)] = member(config[0].name, data=config[1].replace(b"amd64", b"arm64"))
    archive = write_tar(arena / "bad.tar", members)
    proc = cli("docker-dir-save", "--engine", "docker", "evil/img:1", arena / "work" / "img",
               env=fake_docker(arena / "fakebin", archive))
    line = one_line_error(proc, EXIT_ENGINE_FAILED)
    assert "with content sha256:" in line and "as the image names it" in line, line
    assert os.listdir(arena / "work") == []
