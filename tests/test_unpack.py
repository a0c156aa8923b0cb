"""Unpacking an image's layers into a directory (format/unpack.py, format/compression.py).

The oracle is the engine itself: images are built offline with `docker build`
(legacy builder, FROM scratch + the busybox rootfs) or loaded from layers
crafted here with `docker load`; their layers, saved with `docker save | tar -x`,
are applied with apply_layers, and the tree is compared with `docker export` of
a container created from the same image: names, types, modes, symlink targets,
sha256 of file contents, mtimes and which files are hardlinks of each other.

Differences that are ours by design, each checked on its own:
- setuid and setgid are dropped (the export keeps them: compared without them);
- device nodes and fifos are not created (an unprivileged user cannot).

What `docker export` adds itself, and is ignored: see DOCKER_ADDS.

Hostile layers are crafted in Python; each case says whether apply_layers
refuses it or stays inside, and a canary directory next to the tree is checked
to be untouched either way.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, docker, raw_save

from docker_dir.errors import EXIT_ENGINE_UNAVAILABLE, BadImageDir, CantWrite
from docker_dir.format import compression
from docker_dir.format.compression import BadLayerData, ZstdUnavailable, media_type_compression, \
    open_decompressed, sniff_compression
from docker_dir.format.unpack import MAX_DEPTH, UnsafeLayer, apply_layers, remove_tree

# Entries of `docker export` that the image does not have: the engine's init layer
# makes them for every container (mount points and bind-mount targets).
DOCKER_ADDS = {
    ".dockerenv",  # the engine's "inside a container" marker
    "dev", "dev/console", "dev/pts", "dev/shm",  # /dev is a tmpfs mount; these are its mount points
    "proc", "sys",  # mount points
    "etc/hostname", "etc/hosts", "etc/resolv.conf",  # bind-mounted from the engine
    "etc/mtab",  # a symlink to /proc/mounts
}
# The init layer also lists etc/ itself, the parent of the files above: the export
# shows that copy's mtime, and an etc/ even for an image that has none.
MTIME_FROM_DOCKER = {"etc"}

# Every layer kind the engines write: each RUN is one layer.
ORACLE_DOCKERFILE = r"""FROM scratch
COPY rootfs/ /
ENV PATH=/bin
RUN mkdir -p /etc /del/sub /deldir/a/b /opq/keep /opq/sub /ro/sub /d2f /sym2dir-target /zero/in && \
    echo 'root:x:0:0:root:/:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group && \
    echo f > /del/file && echo x > /del/sub/x && echo y > /deldir/a/b/y && \
    echo old > /opq/old && echo k > /opq/keep/k && echo s > /opq/sub/s && \
    echo base > /base-file && echo h > /hl-a && ln /hl-a /hl-b && echo c > /hl-c && ln /hl-c /hl-d && \
    ln -s base-file /rel-link && ln -s /base-file /abs-link && ln -s /nowhere /dangling && \
    ln -s /opq /dirlink && ln -s ../../base-file /del/sub/up-link && ln -s /sym2dir-target /sym2dir && \
    echo r > /ro/r && echo s > /ro/sub/s && chmod 0555 /ro && \
    echo su > /setuid && chmod 4755 /setuid && echo sg > /setgid && chmod 2711 /setgid && \
    mkdir /sticky && chmod 1777 /sticky && echo p > /private && chmod 0600 /private && \
    echo z > /zero/in/z && mkdir /zero/in/deeper && chmod 0750 /zero/in/deeper && chmod 0 /zero/in && \
    echo in > /d2f/in && echo f > /f2d && mkfifo /fifo && mknod /chardev c 1 3 && echo soon-fifo > /to-fifo && \
    n=0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz && \
    mkdir /long && echo l > /long/$n-$n && \
    echo u > '/unicode é ü'
RUN rm /del/file && rm -rf /deldir && rm -rf /opq && mkdir /opq && echo new > /opq/f && mkdir /opq/sub && \
    echo n > /opq/sub/n
RUN ln /base-file /hl-earlier && echo new-c > /hl-c.tmp && mv /hl-c.tmp /hl-c
RUN rm -rf /d2f && echo now-file > /d2f && rm /f2d && mkdir /f2d && echo x > /f2d/x && \
    rm /sym2dir && mkdir /sym2dir && echo y > /sym2dir/y && rm /to-fifo && mkfifo /to-fifo && \
    rm /fifo && echo not-fifo > /fifo
RUN echo new > /ro/new && rm /ro/r && rm -rf /del/sub && ln -s /opq /del/sub
"""
# Made by the image, not by apply_layers: the fifo and the device node.
SPECIALS = {"chardev", "to-fifo"}


# -- comparing trees ------------------------------------------------------------

def tree_of(root):
    """path -> (kind, mode, symlink target or sha256, mtime), and the sets of paths sharing an inode."""
    entries, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", None, os.readlink(path), int(st.st_mtime))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", oct(mode), None, int(st.st_mtime))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                entries[rel] = ("file", oct(mode), digest, int(st.st_mtime))
            else:
                entries[rel] = ("special", oct(mode), None, int(st.st_mtime))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, set()).add(rel)
    return entries, {frozenset(group) for group in inodes.values()}


def tree_of_tar(data):
    """The same, from a tar such as `docker export` writes (its modes carry the file type
    bits too): permission bits as they are, setuid included."""
    entries, groups = {}, {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            name = m.name.rstrip("/")
            mode = oct(stat.S_IMODE(m.mode))
            if m.isdir():
                entries[name] = ("dir", mode, None, m.mtime)
            elif m.issym():
                entries[name] = ("symlink", None, m.linkname, m.mtime)
            elif m.isreg():
                digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                entries[name] = ("file", mode, digest, m.mtime)
            elif m.islnk():  # the same inode as an earlier member
                entries[name] = entries[m.linkname]
                groups.setdefault(m.linkname, {m.linkname}).add(name)
            else:
                entries[name] = ("special", mode, None, m.mtime)
    return entries, {frozenset(group) for group in groups.values()}


def exported(ref):
    """`docker export` of a container created (never started) from ref."""
    cid = docker("create", ref, "sh").stdout.strip()
    try:
        return tree_of_tar(subprocess.run(["docker", "export", cid], capture_output=True, check=True).stdout)
    finally:
        docker("rm", cid)


def without_setuid(entries):
    return {name: (kind, mode and oct(int(mode, 8) & 0o1777), detail, mtime)
            for name, (kind, mode, detail, mtime) in entries.items()}


def assert_same_as_export(tree, export, specials=frozenset(), mtime_of_creation=frozenset()):
    """mtime_of_creation: directories made as parents only, whose mtime is when they were made."""
    ours, our_links = tree_of(tree)
    theirs, their_links = export
    theirs = {name: entry for name, entry in without_setuid(theirs).items() if name not in DOCKER_ADDS}
    if "etc" not in ours:
        del theirs["etc"]
    for name in (MTIME_FROM_DOCKER | mtime_of_creation) & set(ours) & set(theirs):
        ours[name], theirs[name] = ours[name][:3], theirs[name][:3]
    for name in specials:
        assert theirs.pop(name)[0] == "special" and name not in ours
    assert ours == theirs
    assert our_links == their_links


# -- images and layers ------------------------------------------------------------

def layer_files(saved):
    entry = json.loads((saved / "manifest.json").read_text())[0]
    return [saved / layer for layer in entry["Layers"]]


def apply_files(paths, dest, **kwargs):
    dest.mkdir()
    streams = [open(path, "rb") for path in paths]
    try:
        return apply_layers(streams, dest, **kwargs)
    finally:
        for stream in streams:
            stream.close()


@pytest.fixture(scope="session")
def oracle(docker_engine, rootfs, tmp_path_factory):
    """The image built from ORACLE_DOCKERFILE: its saved layers and its export."""
    ref = f"docker-dir-unpack/oracle-{uuid.uuid4().hex[:8]}:1"
    context = tmp_path_factory.mktemp("oracle-context")
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    (context / "Dockerfile").write_text(ORACLE_DOCKERFILE)
    docker("build", "-q", "-t", ref, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    try:
        saved = raw_save(ref, tmp_path_factory.mktemp("oracle-saved"))
        yield layer_files(saved), exported(ref)
    finally:
        docker("rmi", ref)


def layer(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def m(name, kind="file", data=b"", mode=None, target=None, mtime=1600000000):
    """One crafted member: file, dir, symlink, hardlink or fifo."""
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.mode = 0o644 if mode is None else mode
    if kind == "file":
        info.size = len(data)
        return info, data
    info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                 "fifo": tarfile.FIFOTYPE}[kind]
    if kind == "dir" and mode is None:
        info.mode = 0o755
    info.linkname = target or ""
    return info, None


def docker_load(layers, ref):
    """Load crafted layers as an image (legacy docker-archive layout)."""
    files, diff_ids, names = {}, [], []
    for index, data in enumerate(layers):
        digest = hashlib.sha256(data).hexdigest()
        diff_ids.append(f"sha256:{digest}")
        names.append(f"{index}-{digest[:12]}/layer.tar")
        files[names[-1]] = data
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    files[config_name] = config
    files["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": names}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    docker("load", input=archive.getvalue(), text=False)


def apply_bytes(layers, dest, **kwargs):
    dest.mkdir()
    return apply_layers([io.BytesIO(data) for data in layers], dest, **kwargs)


# -- the oracle: images docker builds ----------------------------------------------

def test_docker_built_image_matches_export(oracle, tmp_path):
    layers, export = oracle
    apply_files(layers, tmp_path / "tree")
    assert_same_as_export(tmp_path / "tree", export, SPECIALS)


def test_setuid_and_setgid_dropped(oracle, tmp_path):
    layers, (theirs, _) = oracle
    apply_files(layers, tmp_path / "tree")
    assert (theirs["setuid"][1], theirs["setgid"][1]) == ("0o4755", "0o2711")
    assert stat.S_IMODE(os.lstat(tmp_path / "tree/setuid").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(tmp_path / "tree/setgid").st_mode) == 0o711


def test_gzip_layers_match_export(oracle, tmp_path):
    """One layer in two gzip members with zero padding between them, as gzip(1) allows."""
    layers, export = oracle
    blobs = []
    for index, path in enumerate(layers):
        data = path.read_bytes()
        blob = tmp_path / f"{index}.tar.gz"
        if index == 1:
            half = len(data) // 2
            blob.write_bytes(gzip.compress(data[:half]) + bytes(1000) + gzip.compress(data[half:]))
        else:
            blob.write_bytes(gzip.compress(data))
        blobs.append(blob)
    apply_files(blobs, tmp_path / "tree")
    assert_same_as_export(tmp_path / "tree", export, SPECIALS)


def test_zstd_layers_match_export(oracle, tmp_path):
    """One layer in two zstd frames, as chunked zstd writers make them."""
    zstandard = pytest.importorskip("zstandard")
    layers, export = oracle
    blobs = []
    for index, path in enumerate(layers):
        data = path.read_bytes()
        blob = tmp_path / f"{index}.tar.zst"
        half = len(data) // 2 if index == 1 else len(data)
        blob.write_bytes(zstandard.ZstdCompressor().compress(data[:half]) +
                         (zstandard.ZstdCompressor(write_checksum=True).compress(data[half:]) if half < len(data)
                          else b""))
        blobs.append(blob)
    apply_files(blobs, tmp_path / "tree")
    assert_same_as_export(tmp_path / "tree", export, SPECIALS)


def test_layer_from_a_pipe(oracle, tmp_path):
    """Streams need not seek: the bottom layer comes through `cat`."""
    layers, export = oracle
    cat = subprocess.Popen(["cat", str(layers[0])], stdout=subprocess.PIPE)
    streams = [cat.stdout] + [open(path, "rb") for path in layers[1:]]
    (tmp_path / "tree").mkdir()
    try:
        apply_layers(streams, tmp_path / "tree")
    finally:
        for stream in streams:
            stream.close()
        cat.wait()
    assert_same_as_export(tmp_path / "tree", export, SPECIALS)


def test_bytes_written_and_progress(oracle, tmp_path):
    layers, _ = oracle
    content = 0
    for path in layers:
        with tarfile.open(path) as tar:
            content += sum(member.size for member in tar if member.isreg())
    seen = []
    assert apply_files(layers, tmp_path / "tree", on_bytes=seen.append) == content
    assert sum(seen) == sum(path.stat().st_size for path in layers)


def test_nonroot_user(oracle):
    """As nobody, with a world-readable copy of the two modules and the system Python:
    the same tree, owned by nobody, and remove_tree deletes it (0555 and 0000 directories)."""
    layers, export = oracle
    python, runuser = "/usr/bin/python3", shutil.which("runuser")
    if os.geteuid() != 0 or not runuser or not os.access(python, os.X_OK):
        pytest.skip("needs root, runuser and /usr/bin/python3 to switch to nobody")
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="docker-dir-unpack-"))
    try:
        base.chmod(0o755)
        package = base / "lib/docker_dir"
        (package / "format").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "format/__init__.py").write_text("")
        source = REPO / "lib/docker_dir"
        for name in ("errors.py", "fs.py", "format/compression.py", "format/names.py", "format/streams.py",
                     "format/unpack.py"):
            shutil.copy(source / name, package / name)
        for index, path in enumerate(layers):
            shutil.copy(path, base / f"{index}.tar")
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        work = base / "work"
        work.mkdir()
        os.chown(work, nobody, nobody)
        script = ("import os, sys; sys.path.insert(0, sys.argv[1] + '/lib')\n"
                  "from docker_dir.format.unpack import apply_layers, remove_tree\n"
                  "dest = sys.argv[1] + '/work/tree'\n"
                  "if os.environ['STEP'] == 'apply':\n"
                  "    os.mkdir(dest)\n"
                  "    apply_layers([open(path, 'rb') for path in sys.argv[2:]], dest)\n"
                  "else:\n"
                  "    remove_tree(dest)\n")
        layer_args = [str(base / f"{index}.tar") for index in range(len(layers))]

        def as_nobody(step):
            return subprocess.run([runuser, "-u", "nobody", "--", python, "-c", script, str(base), *layer_args],
                                  capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "STEP": step})

        proc = as_nobody("apply")
        assert proc.returncode == 0, proc.stderr
        tree = work / "tree"
        assert_same_as_export(tree, export, SPECIALS)
        assert {os.lstat(path).st_uid for path in [tree, *tree.rglob("*")]} == {nobody}
        assert stat.S_IMODE(os.lstat(tree / "zero/in").st_mode) == 0
        proc = as_nobody("remove")
        assert proc.returncode == 0, proc.stderr
        assert not tree.exists()
    finally:
        shutil.rmtree(base)


# -- the oracle: layers crafted here, loaded with docker load ----------------------------

# Cases where the engine accepts the layers: its export must equal our tree.
ENGINE_CASES = {
    "opaque_marker_after_the_layers_own_entries": [
        layer(m("d", "dir"), m("d/old", data=b"old"), m("d/sub", "dir"), m("d/sub/s", data=b"s"),
              m("d/keep", "dir", mode=0o700), m("d/keep/k", data=b"k")),
        layer(m("d", "dir"), m("d/new", data=b"new"), m("d/sub", "dir"), m("d/sub/n", data=b"n"),
              m("d/.wh..wh..opq")),
    ],
    "opaque_marker_before_the_layers_own_entries": [
        layer(m("d", "dir"), m("d/old", data=b"old"), m("d/sub", "dir"), m("d/sub/s", data=b"s")),
        layer(m("d", "dir"), m("d/.wh..wh..opq"), m("d/sub", "dir"), m("d/sub/n", data=b"n")),
    ],
    "opaque_marker_at_the_root_hides_nothing": [
        layer(m("a", data=b"a"), m("b", "dir"), m("b/c", data=b"c")),
        layer(m(".wh..wh..opq"), m("n", data=b"n")),
    ],
    "whiteout_of_a_directory_tree": [
        layer(m("t", "dir"), m("t/u", "dir"), m("t/u/v", data=b"v"), m("t/w", "symlink", target="/t/u")),
        layer(m(".wh.t")),
    ],
    "whiteout_below_a_symlink_makes_a_directory": [
        layer(m("x", "dir"), m("x/y", data=b"y"), m("a", "symlink", target="/x")),
        layer(m("a/.wh.y")),
    ],
    "file_below_a_symlink_makes_a_directory": [
        layer(m("x", "dir"), m("x/y", data=b"y"), m("a", "symlink", target="x")),
        layer(m("a/f", data=b"f")),
    ],
    "opaque_marker_below_a_symlink": [
        layer(m("x", "dir"), m("x/y", data=b"y"), m("a", "symlink", target="x")),
        layer(m("a/.wh..wh..opq")),
    ],
    "file_below_a_file_makes_a_directory": [
        layer(m("f", data=b"f")),
        layer(m("f/g", data=b"g")),
    ],
    "whiteout_with_missing_parents": [
        layer(m("k", data=b"k")),
        layer(m("nope/deeper/.wh.x")),
    ],
    "hardlink_to_a_symlink_is_a_symlink": [
        layer(m("s", "symlink", target="/etc/passwd"), m("t", "hardlink", target="s")),
    ],
    "directory_over_a_symlink_and_symlink_over_a_directory": [
        layer(m("s", "symlink", target="/d"), m("d", "dir"), m("d/in", data=b"in")),
        layer(m("s", "dir", mode=0o750), m("s/x", data=b"x"), m("d", "symlink", target="s")),
    ],
    "ignored_aufs_metadata": [
        layer(m("a", data=b"a")),
        layer(m(".wh..wh.aufs"), m("b", "dir"), m("b/.wh..wh.plnk", data=b"")),
    ],
    "fifo_replaces_a_file": [
        layer(m("f", data=b"f"), m("g", data=b"g")),
        layer(m("f", "fifo")),
    ],
}


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_crafted_layers_match_docker_load(docker_engine, tmp_path, case):
    layers = ENGINE_CASES[case]
    ref = f"docker-dir-unpack/{case.replace('_', '-')}-{uuid.uuid4().hex[:8]}:1"
    docker_load(layers, ref)
    try:
        export = exported(ref)
    finally:
        docker("rmi", ref)
    apply_bytes(layers, tmp_path / "tree")
    listed = set()
    for data in layers:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            listed.update(member.name for member in tar if member.isdir())
    unlisted = {name for name, entry in tree_of(tmp_path / "tree")[0].items()
                if entry[0] == "dir" and name not in listed}
    assert_same_as_export(tmp_path / "tree", export, {"f"} if case == "fifo_replaces_a_file" else (), unlisted)


# Where Docker 20.10 differs or refuses; what apply_layers does instead.

def test_directory_only_passed_through_keeps_its_mode(tmp_path):
    """overlay2 shows 0755 for p and p/q here (the parents it made in the layer's own
    directory); containerd keeps the lower ones' attributes, and so does apply_layers."""
    apply_bytes([layer(m("p", "dir", mode=0o700), m("p/q", "dir", mode=0o711)),
                 layer(m("p/q/new", data=b"n"))], tmp_path / "tree")
    assert stat.S_IMODE(os.lstat(tmp_path / "tree/p").st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(tmp_path / "tree/p/q").st_mode) == 0o711


def test_opaque_marker_keeps_entries_whose_parents_the_layer_does_not_list(tmp_path):
    """The layer's d/sub is a parent only: it still hides the lower d/sub's content
    (the engine agrees on the names; its d/sub has the extraction time as mtime)."""
    apply_bytes([layer(m("d", "dir"), m("d/sub", "dir"), m("d/sub/s", data=b"s"), m("d/old", data=b"old")),
                 layer(m("d/sub/n", data=b"n"), m("d/.wh..wh..opq"))], tmp_path / "tree")
    assert sorted(str(path.relative_to(tmp_path / "tree")) for path in (tmp_path / "tree").rglob("*")) == \
        ["d", "d/sub", "d/sub/n"]


def test_hardlink_to_a_file_of_an_earlier_layer(tmp_path):
    """Docker 20.10 refuses this layer ("link /f /g: no such file or directory")."""
    apply_bytes([layer(m("f", data=b"f")), layer(m("g", "hardlink", target="f"))], tmp_path / "tree")
    assert os.lstat(tmp_path / "tree/f").st_ino == os.lstat(tmp_path / "tree/g").st_ino


def test_later_member_wins_within_a_layer(tmp_path):
    """Docker 20.10 refuses duplicate paths in one layer; the tar order decides here."""
    apply_bytes([layer(m("w", data=b"lower")),
                 layer(m("z", "dir"), m("z/in", data=b"i"), m("z", data=b"file now"),
                       m("y", data=b"y"), m("y", "dir"), m("y/in", data=b"in"),
                       m("w", data=b"again"), m(".wh.w"), m("v", data=b"v"), m(".wh.v"), m("v", data=b"back"))],
                tmp_path / "tree")
    tree = tmp_path / "tree"
    assert (tree / "z").read_bytes() == b"file now"
    assert (tree / "y/in").read_bytes() == b"in"
    assert not os.path.lexists(tree / "w")
    assert (tree / "v").read_bytes() == b"back"


def test_rewriting_one_hardlink_leaves_the_other(tmp_path):
    """A later layer's file replaces the name; it never writes into the shared inode."""
    apply_bytes([layer(m("f", data=b"old"), m("h", "hardlink", target="f")), layer(m("h", data=b"new"))],
                tmp_path / "tree")
    assert (tmp_path / "tree/f").read_bytes() == b"old"
    assert (tmp_path / "tree/h").read_bytes() == b"new"


def test_hardlink_to_a_fifo_is_skipped_too(tmp_path):
    apply_bytes([layer(m("p", "fifo"), m("q", "hardlink", target="p"), m("r", data=b"r"))], tmp_path / "tree")
    assert sorted(os.listdir(tmp_path / "tree")) == ["r"]


def test_read_only_directories_get_their_modes_last(tmp_path):
    tree = tmp_path / "tree"
    apply_bytes([layer(m("ro", "dir", mode=0o555), m("ro/a", data=b"a"), m("none", "dir", mode=0),
                       m("none/x", "dir", mode=0o500), m("none/x/y", data=b"y", mode=0o400)),
                 layer(m("ro", "dir", mode=0o555), m("ro/b", data=b"b"), m("none/x/z", data=b"z"))], tree)
    assert stat.S_IMODE(os.lstat(tree / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(tree / "none").st_mode) == 0
    assert stat.S_IMODE(os.lstat(tree / "none/x").st_mode) == 0o500
    assert sorted(os.listdir(tree / "ro")) == ["a", "b"]
    remove_tree(tree)
    assert not tree.exists()


# -- hostile layers ------------------------------------------------------------------

CANARY = b"canary: must stay as it is\n"


@pytest.fixture
def arena(tmp_path):
    """tmp_path/outside holds the canary, tmp_path/tree is where layers go."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "canary").write_bytes(CANARY)
    return tmp_path


def snapshot(directory):
    return {str(path): (os.lstat(path).st_mode, os.lstat(path).st_nlink, os.lstat(path).st_mtime_ns,
                        path.read_bytes() if path.is_file() and not path.is_symlink() else None)
            for path in [directory, *directory.rglob("*")]}


def outside_path(arena):
    """The canary directory, relative to / (so that a member under a link to / reaches it)."""
    return str(arena / "outside").lstrip("/")


def climb(arena):
    """A relative symlink target that climbs from tree/ to /."""
    return "../" * (len(arena.parts) + 2)


HOSTILE = {
    # name: (layers as a function of the arena, "refused" or a check of the tree)
    "symlink_to_root_then_write_through_it": (
        lambda a: [layer(m("a", "symlink", target="/")),
                   layer(m(f"a/{outside_path(a)}/canary", data=b"pwned"))],
        lambda a, tree: (tree / "a" / outside_path(a) / "canary").read_bytes() == b"pwned"),
    "symlink_to_root_then_write_through_it_in_the_same_layer": (
        lambda a: [layer(m("a", "symlink", target="/"), m(f"a/{outside_path(a)}/canary", data=b"pwned"))],
        lambda a, tree: not os.path.islink(tree / "a")),
    "relative_symlink_climbing_out_then_write_through_it": (
        lambda a: [layer(m("a", "symlink", target=climb(a)),
                         m(f"a/{outside_path(a)}/new", data=b"pwned"))],
        lambda a, tree: (tree / "a" / outside_path(a) / "new").read_bytes() == b"pwned"),
    "symlink_to_the_canary_then_a_file_over_it": (
        lambda a: [layer(m("c", "symlink", target=str(a / "outside/canary"))), layer(m("c", data=b"pwned"))],
        lambda a, tree: (tree / "c").read_bytes() == b"pwned"),
    "symlink_to_outside_then_a_directory_over_it": (
        lambda a: [layer(m("d", "symlink", target=str(a / "outside"))),
                   layer(m("d", "dir", mode=0o700), m("d/sub", "dir", mode=0o700))],
        lambda a, tree: stat.S_IMODE(os.lstat(tree / "d").st_mode) == 0o700),
    "hardlink_to_etc_passwd": (
        lambda a: [layer(m("h", "hardlink", target="/etc/passwd"))], "refused"),
    "hardlink_climbing_out": (
        lambda a: [layer(m("h", "hardlink", target="../outside/canary"))], "refused"),
    "hardlink_through_a_symlink": (
        lambda a: [layer(m("a", "symlink", target=str(a / "outside"))),
                   layer(m("h", "hardlink", target="a/canary"))], "refused"),
    "hardlink_to_a_symlink_to_the_canary": (
        lambda a: [layer(m("s", "symlink", target=str(a / "outside/canary")), m("h", "hardlink", target="s"))],
        lambda a, tree: os.readlink(tree / "h") == str(a / "outside/canary")),
    "dotdot_name": (
        lambda a: [layer(m("../outside/canary", data=b"pwned"))], "refused"),
    "dotdot_after_descending": (
        lambda a: [layer(m("x/../../outside/canary", data=b"pwned"))], "refused"),
    "absolute_name": (
        lambda a: [layer(m(str(a / "outside/canary"), data=b"pwned"))], "refused"),
    "whiteout_of_dotdot": (
        lambda a: [layer(m("sub/.wh..."))], "refused"),
    "whiteout_of_dot": (
        lambda a: [layer(m("outside/.wh.."))], "refused"),
    "whiteout_below_a_symlink_to_outside": (
        lambda a: [layer(m("a", "symlink", target=str(a / "outside"))), layer(m("a/.wh.canary"))],
        lambda a, tree: os.listdir(tree / "a") == []),
    "opaque_marker_below_a_symlink_to_outside": (
        lambda a: [layer(m("a", "symlink", target=str(a / "outside"))), layer(m("a/.wh..wh..opq"))],
        lambda a, tree: os.listdir(tree / "a") == []),
    "name_too_deep": (
        lambda a: [layer(m("d/" * MAX_DEPTH + "f", data=b"deep"))], "refused"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer(arena, case):
    make, outcome = HOSTILE[case]
    before = snapshot(arena / "outside")
    tree = arena / "tree"
    if outcome == "refused":
        with pytest.raises(UnsafeLayer) as err:
            apply_bytes(make(arena), tree)
        assert isinstance(err.value, BadImageDir) and "\n" not in str(err.value)
        assert str(err.value).startswith("layer ")
    else:
        apply_bytes(make(arena), tree)
        assert outcome(arena, tree)
    assert snapshot(arena / "outside") == before
    remove_tree(tree)
    assert not tree.exists() and snapshot(arena / "outside") == before


def test_remove_tree_removes_links_not_their_targets(arena):
    before = snapshot(arena / "outside")
    (arena / "link").symlink_to(arena / "outside")
    remove_tree(arena / "link")
    remove_tree(arena / "missing/deeper")
    assert not os.path.lexists(arena / "link") and snapshot(arena / "outside") == before


# -- errors ------------------------------------------------------------------------

def test_destination_must_be_empty(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/x").write_text("x")
    with pytest.raises(CantWrite):
        apply_layers([io.BytesIO(layer(m("f")))], tmp_path / "tree")


class NamedBytes(io.BytesIO):
    name = "blobs/sha256/abc"


@pytest.mark.parametrize("blob, message", [
    (b"", "empty file"),
    (b"hello, not a layer" * 40, "not a tar, gzip or zstd stream"),
    (b"\xfd7zXZ\x00" + bytes(600), "xz-compressed"),
    (gzip.compress(layer(m("f", data=b"x" * 5000)))[:-30], "gzip data ends early"),
    (gzip.compress(layer(m("f", data=b"x" * 5000))) + b"trailing junk", "damaged gzip data"),
])
def test_damaged_layers(tmp_path, blob, message):
    (tmp_path / "tree").mkdir()
    source = NamedBytes(blob)
    with pytest.raises(BadLayerData, match=message) as err:
        apply_layers([source], tmp_path / "tree")
    assert str(err.value).startswith("blobs/sha256/abc: ") and "\n" not in str(err.value)


def test_truncated_tar(tmp_path):
    data = layer(m("f", data=os.urandom(5000)))
    with pytest.raises(BadLayerData, match="layer 1: not a valid tar"):
        apply_bytes([data[:3000]], tmp_path / "tree")


def test_zstd_without_a_decompressor(monkeypatch, tmp_path):
    zstd_blob = bytes.fromhex("28b52ffd") + bytes(20)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "compression", None)  # the standard library's, on Python >= 3.14
    with pytest.raises(ZstdUnavailable) as err:
        apply_bytes([zstd_blob], tmp_path / "tree")
    assert str(err.value).endswith(": pip install zstandard") and "\n" not in str(err.value)
    assert err.value.exit_code == EXIT_ENGINE_UNAVAILABLE


# -- compression.py on its own ------------------------------------------------------

def test_sniff():
    tar = layer(m("f", data=b"x"))
    v7 = bytearray(tar[:512])
    v7[257:265] = bytes(8)  # no magic: a pre-POSIX header
    v7[148:156] = b"        "
    v7[148:156] = b"%06o\0 " % sum(v7)
    assert sniff_compression(tar) == "none"
    assert sniff_compression(bytes(v7)) == "none"
    assert sniff_compression(bytes(1024)) == "none"  # an empty archive
    assert sniff_compression(gzip.compress(tar)) == "gzip"
    assert sniff_compression(bytes.fromhex("28b52ffd") + bytes(9)) == "zstd"
    assert sniff_compression(b"\x1f\x8b") is None
    assert sniff_compression(b"x" * 512) is None


@pytest.mark.parametrize("media_type, expected", [
    ("application/vnd.oci.image.layer.v1.tar", "none"),
    ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"),
    ("application/vnd.docker.image.rootfs.diff.tar", "none"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.docker.image.rootfs.diff.tar.zstd", "zstd"),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"),
    ("Application/VND.OCI.image.layer.v1.tar+gzip; charset=binary", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", None),
    ("application/vnd.oci.image.config.v1+json", None),
])
def test_media_type_compression(media_type, expected):
    assert media_type_compression(media_type) == expected


def read_in(stream, sizes):
    out = []
    for size in sizes:
        data = stream.read(size)
        assert len(data) <= size
        out.append(data)
    while True:
        data = stream.read(compression.CHUNK)
        if not data:
            return b"".join(out)
        out.append(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20000), st.lists(st.integers(0, 20000), max_size=4),
       st.lists(st.integers(1, 70000), max_size=8), st.integers(0, 50))
def test_gzip_members_round_trip(data, cuts, sizes, padding):
    """Any split into members, zero padding between them, any read sizes."""
    bounds = sorted({0, len(data), *[min(cut, len(data)) for cut in cuts]})
    blob = b"".join(gzip.compress(data[a:b]) + bytes(padding) for a, b in zip(bounds, bounds[1:]))
    if not blob:
        return
    assert read_in(open_decompressed(io.BytesIO(blob)), sizes) == data


def test_gzip_damage_is_reported():
    blob = bytearray(gzip.compress(os.urandom(3000)))
    blob[-6] ^= 1  # the CRC
    with pytest.raises(BadLayerData, match="damaged gzip data"):
        open_decompressed(io.BytesIO(bytes(blob)), "x").read()
