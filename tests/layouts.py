"""One image written as a directory in each layout people keep, each by the real tool
that writes it, so docker-dir can be tested against what those tools really produce.

Import from a test module (tests/ is on sys.path under pytest):

    from layouts import KINDS, Layout, write_layout, write_layouts

write_layout(kind, ref, dest, source="docker", env=None, daemon=None) -> Layout
    Writes the image `ref` as the directory `dest` (created; it must not exist or be
    empty) in the layout `kind`, one of KINDS. `source` says where `ref` is:
    "docker" (the daemon the docker CLI reaches: DOCKER_HOST or the main dockerd)
    or "podman" (root podman's default storage). `env`: the environment for podman,
    buildah and skopeo (default: engines.podman_env in a temp dir, i.e. the ulimits
    root podman needs here). `daemon`: for the docker26* kinds, a started
    engines.SideDockerd of that kind to use (the image stays loaded there);
    without it one is started and stopped for this call (about 1 s).
    Raises engines.Unavailable with the reason when a tool is missing or too old
    (umoci: Debian package umoci, not among tests/provision.sh's packages).
    The source image is never modified, and nothing is left in the main dockerd or in
    podman's default storage: the podman, buildah and umoci kinds work in a private
    containers-storage (overlay, --root/--runroot in a temp dir) removed at the end.

Layout: kind, path (Path of dest), writer (the tools, their versions and the
    command lines that wrote it, for messages), tag (the name recorded inside the
    layout, or None when the layout has none: skopeo dir:, docker-dir).

Times here for a 2 MB busybox image: 0.05-0.1 s for skopeo and umoci kinds, 0.25-0.5 s
for podman kinds, about 2.3 s for each docker26 kind (most of it starting the side
daemon; pass daemon= to share one).

write_layouts(ref, root, kinds=KINDS, **options) -> {kind: Layout | Unavailable}
    Every kind under root/<kind>; a kind whose tool is missing maps to its
    Unavailable instead of stopping the others.

KINDS, with what each writes (REF is the source image, TAG its tag):
    skopeo-oci          skopeo copy docker-daemon:REF oci:DIR:TAG: OCI layout; skopeo
                        converts the config to OCI (so a new config digest) and
                        gzips the layers.
    skopeo-oci-zstd     the same with --dest-compress-format zstd (skopeo >= 1.9):
                        layers application/vnd.oci.image.layer.v1.tar+zstd.
    skopeo-dir-v2s2     skopeo copy --format v2s2 … dir:DIR: containers/image "dir"
                        layout: manifest.json (one Docker v2s2 manifest object), the
                        config and layers as files named by bare hex, `version`. The
                        config is the engine's own (same digest); layers stay
                        uncompressed although the manifest calls them tar.gzip.
    skopeo-dir-oci      the same with --format oci: OCI manifest and config.
    podman-oci-dir      podman save --format oci-dir: OCI layout, gzip layers,
                        ref.name = the full image name.
    podman-docker-dir   podman save --format docker-dir: the "dir" layout, v2s2.
    podman-oci-archive  podman save --format oci-archive, extracted with tar -x.
    umoci               the skopeo-oci layout, then `umoci insert` of one small file
                        (a new layer, config and manifest) and `umoci gc` (old
                        manifest and config removed; umoci writes blobs mode 0600).
    podman-index        a multi-platform image index: podman manifest create, then
                        manifest add of REF (linux/amd64, as is) and of a copy made
                        by buildah from REF with `buildah config --arch arm64
                        --variant v8` (buildah commit adds an empty layer), added
                        with --arch arm64 --os linux --variant v8; then podman
                        manifest push --all LIST oci:DIR:TAG. index.json points at
                        the OCI image index, which points at the two manifests.
    nested-index        no tool here writes an index inside an index (podman manifest
                        add of a list picks one instance of it): the podman-index
                        layout with one more index blob, written by this module,
                        between index.json and podman's index.
    docker26-save       docker save from Docker 26 (classic store) after docker load
                        of REF there: OCI layout + manifest.json + repositories.
    docker26-containerd-save   the same from Docker 26 with the containerd image store.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from plumbum import local

from engines import SideDockerd, Unavailable, podman_env, side_dockerd

KINDS = (
    "skopeo-oci",
    "skopeo-oci-zstd",
    "skopeo-dir-v2s2",
    "skopeo-dir-oci",
    "podman-oci-dir",
    "podman-docker-dir",
    "podman-oci-archive",
    "umoci",
    "podman-index",
    "nested-index",
    "docker26-save",
    "docker26-containerd-save",
)

ARM64_PLATFORM = ("linux", "arm64", "v8")


@dataclass
class Layout:
    kind: str
    path: Path
    writer: str
    tag: Optional[str]


def _need(tool, package=None):
    path = shutil.which(tool)
    if not path:
        raise Unavailable(f"{tool} not installed (Debian package {package or tool})")
    return path


def _version(tool):
    """`tool --version` in a few words, e.g. 'skopeo 1.9.3'."""
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True)
    match = re.search(r"\d+\.\d+[.\w+~-]*", proc.stdout + proc.stderr)
    return f"{tool} {match.group(0) if match else '?'}"


def _run(argv, env=None, stdin=None, timeout=300):
    proc = subprocess.run([str(a) for a in argv], env=env, stdin=stdin, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _pipe(producer, consumer, env_producer=None, env_consumer=None):
    """producer | consumer (plumbum); both must succeed."""
    def command(argv, env):
        cmd = local[str(argv[0])][[str(a) for a in argv[1:]]]
        return cmd.with_env(**env) if env else cmd

    return (command(producer, env_producer) | command(consumer, env_consumer))(timeout=300)


def _tag_of(ref):
    """The tag of a reference ('latest' when none; a digest or an ID gives 'latest' too)."""
    last = ref.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last or ref.startswith("sha256:"):
        return "latest"
    return last.rsplit(":", 1)[1]


def _source_transport(ref, source):
    if source == "docker":
        return f"docker-daemon:{ref if ':' in ref.rsplit('/', 1)[-1] else ref + ':latest'}"
    if source == "podman":
        return f"containers-storage:{ref}"
    raise ValueError(f"source must be 'docker' or 'podman', not {source!r}")


def _prepare_dest(dest):
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- a private containers-storage ---------------------------------------------------

class _PrivateStorage:
    """podman/buildah/skopeo options for a containers-storage in a temp dir, removed by close()."""

    def __init__(self, env):
        self.dir = tempfile.mkdtemp(prefix="layouts-cs-")
        self.root, self.runroot = f"{self.dir}/root", f"{self.dir}/run"
        self.env = env

    @property
    def options(self):
        return ["--root", self.root, "--runroot", self.runroot, "--storage-driver", "overlay"]

    @property
    def transport(self):
        return f"containers-storage:[overlay@{self.root}+{self.runroot}]"

    def podman(self, *args, **kwargs):
        return _run(["podman", *self.options, *args], env=self.env, **kwargs)

    def buildah(self, *args):
        return _run(["buildah", *self.options, *args], env=self.env)

    def bring(self, ref, source):
        """Copy the source image into this storage; returns the name it has there (the
        qualified name, e.g. docker.io/x/y:1), or its ID when it has no name."""
        if source == "docker":
            image_id = self.podman("pull", "-q", _source_transport(ref, source)).strip()
        else:
            name = _run(["podman", "image", "inspect", "--format", "{{index .RepoTags 0}}", ref], env=self.env)
            name = name.strip() or ref
            _run(["skopeo", "copy", "-q", _source_transport(name, source), f"{self.transport}{name}"],
                 env=self.env)
            image_id = self.podman("image", "inspect", "--format", "{{.Id}}", name).strip()
        names = json.loads(self.podman("image", "inspect", "--format", "{{json .RepoTags}}", image_id))
        return names[0] if names else image_id

    def close(self):
        # Image storage mounts nothing here; unmount anything that is, before removing.
        with open("/proc/self/mountinfo") as info:
            points = [line.split()[4] for line in info]
        for point in sorted((p for p in points if p.startswith(self.dir + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- writers ----------------------------------------------------------------------

def _skopeo(kind, ref, dest, source, env):
    _need("skopeo")
    tag = _tag_of(ref)
    src = _source_transport(ref, source)
    if kind.startswith("skopeo-oci"):
        extra = ["--dest-compress-format", "zstd"] if kind.endswith("zstd") else []
        if extra:
            help_text = _run(["skopeo", "copy", "--help"])
            if "--dest-compress-format" not in help_text:
                raise Unavailable(f"{_version('skopeo')} has no --dest-compress-format")
        argv = ["skopeo", "copy", "-q", *extra, src, f"oci:{dest}:{tag}"]
    else:
        manifest_format = "v2s2" if kind.endswith("v2s2") else "oci"
        argv = ["skopeo", "copy", "-q", "--format", manifest_format, src, f"dir:{dest}"]
        tag = None
    _run(argv, env=env)
    return Layout(kind, dest, f"{_version('skopeo')}: {' '.join(argv)}", tag)


def _podman_save(kind, ref, dest, source, env):
    _need("podman")
    storage = _PrivateStorage(env)
    try:
        name = storage.bring(ref, source)
        fmt = kind[len("podman-"):]
        if fmt == "oci-archive":
            archive = Path(storage.dir) / "image.tar"
            storage.podman("save", "-q", "--format", "oci-archive", "-o", archive, name)
            dest.mkdir(exist_ok=True)
            _run(["tar", "-x", "-C", dest, "-f", archive])
            command = f"podman save --format oci-archive -o X.tar {name}; tar -x -C DIR -f X.tar"
        else:
            storage.podman("save", "-q", "--format", fmt, "-o", dest, name)
            command = f"podman save --format {fmt} -o DIR {name}"
    finally:
        storage.close()
    return Layout(kind, dest, f"{_version('podman')}: {command}", None if fmt == "docker-dir" else name)


def _umoci(ref, dest, source, env):
    _need("umoci")
    layout = _skopeo("skopeo-oci", ref, dest, source, env)
    work = Path(tempfile.mkdtemp(prefix="layouts-umoci-"))
    try:
        inserted = work / "umoci-inserted"
        inserted.write_text("inserted by umoci\n")
        image = f"{dest}:{layout.tag}"
        _run(["umoci", "insert", "--image", image, inserted, "/umoci-inserted"])
        _run(["umoci", "gc", "--layout", dest])
    finally:
        shutil.rmtree(work)
    return Layout("umoci", dest, f"{layout.writer}; {_version('umoci')}: umoci insert --image {image} FILE "
                                 f"/umoci-inserted; umoci gc --layout {dest}", layout.tag)


def _podman_index(ref, dest, source, env):
    _need("podman")
    _need("buildah")
    storage = _PrivateStorage(env)
    tag = _tag_of(ref)
    os_, arch, variant = ARM64_PLATFORM
    try:
        name = storage.bring(ref, source)
        arm = "localhost/layouts/arm64:1"
        container = storage.buildah("from", "--pull-never", "-q", name).strip()
        storage.buildah("config", "--os", os_, "--arch", arch, "--variant", variant, container)
        storage.buildah("commit", "-q", container, arm)
        storage.buildah("rm", container)
        listing = "localhost/layouts/list:1"
        storage.podman("manifest", "create", listing)
        storage.podman("manifest", "add", listing, f"containers-storage:{name}")
        storage.podman("manifest", "add", "--os", os_, "--arch", arch, "--variant", variant, listing,
                       f"containers-storage:{arm}")
        storage.podman("manifest", "push", "-q", "--all", listing, f"oci:{dest}:{tag}")
    finally:
        storage.close()
    writer = (f"{_version('podman')}, {_version('buildah')}: buildah from {name}; buildah config --os {os_} "
              f"--arch {arch} --variant {variant}; buildah commit {arm}; podman manifest create {listing}; "
              f"podman manifest add {listing} containers-storage:{name}; podman manifest add --os {os_} "
              f"--arch {arch} --variant {variant} {listing} containers-storage:{arm}; "
              f"podman manifest push --all {listing} oci:DIR:{tag}")
    return Layout("podman-index", dest, writer, tag)


def _nest(dest):
    """index.json -> (new) index -> podman's index: adds one level, in place."""
    index_path = dest / "index.json"
    top = json.loads(index_path.read_text())
    inner = dict(top["manifests"][0])
    annotations = inner.pop("annotations", None)
    outer = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [inner]}, separators=(",", ":")).encode()
    digest = _sha256(outer)
    (dest / "blobs" / "sha256" / digest).write_bytes(outer)
    entry = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}",
             "size": len(outer)}
    if annotations:
        entry["annotations"] = annotations
    top["manifests"] = [entry]
    index_path.write_text(json.dumps(top, separators=(",", ":")))


def _docker26(kind, ref, dest, source, env, daemon):
    _need("docker", "docker.io")
    side_kind = "26-containerd" if "containerd" in kind else "26"
    own = daemon is None
    if own:
        daemon = side_dockerd(side_kind, f"layouts {side_kind}")
    elif not isinstance(daemon, SideDockerd):
        raise TypeError("daemon must be an engines.SideDockerd")
    try:
        producer = ["docker", "save", ref] if source == "docker" else ["podman", "save", "-q", ref]
        _pipe(producer, ["docker", "load", "-q"], env_producer=env,
              env_consumer=daemon.env())
        dest.mkdir(exist_ok=True)
        _pipe(["docker", "save", ref], ["tar", "-x", "-C", dest], env_producer=daemon.env())
        version = daemon.server_version
    finally:
        if own:
            daemon.stop()
    store = "containerd image store" if side_kind == "26-containerd" else "classic store"
    return Layout(kind, dest, f"dockerd {version} ({store}): docker load; docker save {ref} | tar -x", ref)


def write_layout(kind, ref, dest, source="docker", env=None, daemon=None):
    """See the module docstring."""
    if kind not in KINDS:
        raise ValueError(f"unknown layout kind {kind!r}; one of {', '.join(KINDS)}")
    dest = _prepare_dest(dest)
    own_env_dir = None
    if env is None:
        own_env_dir = tempfile.mkdtemp(prefix="layouts-env-")
        try:
            env = podman_env(own_env_dir)
        except Unavailable:
            env = dict(os.environ)
    try:
        if kind.startswith("skopeo-"):
            return _skopeo(kind, ref, dest, source, env)
        if kind.startswith("podman-") and kind != "podman-index":
            return _podman_save(kind, ref, dest, source, env)
        if kind == "umoci":
            return _umoci(ref, dest, source, env)
        if kind in ("podman-index", "nested-index"):
            layout = _podman_index(ref, dest, source, env)
            if kind == "podman-index":
                return layout
            _nest(dest)
            return Layout(kind, dest, f"{layout.writer}; then one more index level written by tests/layouts.py",
                          layout.tag)
        return _docker26(kind, ref, dest, source, env, daemon)
    except Unavailable:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        if own_env_dir:
            shutil.rmtree(own_env_dir, ignore_errors=True)


def write_layouts(ref, root, kinds=KINDS, **options):
    """Every kind under root/<kind>: {kind: Layout or the Unavailable that stopped it}."""
    result = {}
    for kind in kinds:
        try:
            result[kind] = write_layout(kind, ref, Path(root) / kind, **options)
        except Unavailable as why:
            result[kind] = why
    return result
