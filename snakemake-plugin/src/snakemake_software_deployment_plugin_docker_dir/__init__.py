"""Snakemake software-deployment plugin: a step runs in a Docker image kept as a directory
(docker-dir), or in one pulled from a registry into the plugin's cache.

    rule count:
        software: docker_dir(path="images/tools")          # or ref="docker://HOST/NAME:TAG"
        shell: "wc -w < {input} > {output}"

    snakemake --sdm docker-dir [--sdm-docker-dir-engine charliecloud] ...

Identity, deployment, caching, pinning and what the image reports go through docker-dir's
application layer; the step itself is a `docker-dir-exec` process, so it runs exactly as
docker-dir-exec runs commands (current directory at the same path, the caller's UID:GID,
exit status and signals passed through). docker-dir's errors reach Snakemake as a
WorkflowError carrying docker-dir's one-line message.
"""
import contextlib
import errno
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_software_deployment_plugins import (CacheableEnvBase, DeployableEnvBase, EnvSpecBase,
                                                             EnvSpecSourceFile, PinnableEnvBase, SoftwareReport)
from snakemake_interface_software_deployment_plugins.settings import CommonSettings, SoftwareDeploymentSettingsBase

from docker_dir import image_id as read_image_id
from docker_dir.application.exec import ExecOptions, ready_to_run, run_request
from docker_dir.engine import ENGINES, get_engine
from docker_dir.errors import DockerDirError
from docker_dir.format.consistent import read_consistently

__version__ = "0.3.0"

SCHEME = "docker://"
EXEC = "docker-dir-exec"
# Pulled images in the cache, one directory per image ID; assets are links to them.
STORE = "images"

# Its own kind, not "container": Snakemake lets one plugin per kind be active and names the
# Snakefile's function after the kind, so sharing "container" would hide one of the two
# plugins' container() whenever both are installed.
common_settings = CommonSettings(provides="docker_dir")


@dataclass
class Settings(SoftwareDeploymentSettingsBase):
    engine: Optional[str] = field(default=None, metadata={
        "help": "Engine that runs the steps (default: $DOCKER_DIR_ENGINE, else the first of "
                f"{', '.join(ENGINES)} installed), as docker-dir-exec --engine.",
        "choices": ENGINES, "env_var": False, "required": False})
    mounts: List[str] = field(default_factory=list, metadata={
        "help": "More bind mounts, SRC:DST[:OPTS] as docker-dir-exec -v (the working directory, "
                "Snakemake's source cache and its temporary directory are always mounted).",
        "nargs": "+", "metavar": "SRC:DST"})
    env: List[str] = field(default_factory=list, metadata={
        "help": "Environment variables for the steps, NAME=VALUE or NAME (its value here), as "
                "docker-dir-exec -e; nothing else of this environment reaches the image.",
        "nargs": "+", "metavar": "NAME[=VALUE]"})


@contextlib.contextmanager
def _docker_dir_errors():
    """docker-dir's errors as Snakemake's, with docker-dir's one line and no traceback of its internals."""
    try:
        yield
    except DockerDirError as err:
        raise WorkflowError(str(err)) from None


@dataclass(eq=False)  # EnvSpecBase compares and hashes by identity_attributes
class EnvSpec(EnvSpecBase):
    path: Optional[EnvSpecSourceFile] = None  # an image directory, relative to the Snakefile
    ref: Optional[str] = None  # docker://[HOST[:PORT]/]NAME[:TAG|@sha256:DIGEST]
    repo_tag: Optional[str] = None  # which image of a directory holding several
    platform: Optional[str] = None  # OS/ARCH[/VARIANT] of a multi-platform image

    def __post_init__(self):
        if (self.path is None) == (self.ref is None):
            raise WorkflowError("docker_dir(): give either path=DIR (an image directory) or "
                                f"ref='{SCHEME}NAME:TAG' (a registry image)")
        if self.ref is not None and not self.ref.startswith(SCHEME):
            raise WorkflowError(f"docker_dir(ref={self.ref!r}): a registry image is named {SCHEME}NAME[:TAG]; "
                                "an image directory is given as path=DIR")
        if isinstance(self.path, (str, Path)):  # Snakemake wraps it; a direct call may not
            self.path = EnvSpecSourceFile(self.path)

    @classmethod
    def identity_attributes(cls) -> Iterable[str]:
        return ("path", "ref", "repo_tag", "platform")

    @classmethod
    def source_path_attributes(cls) -> Iterable[str]:
        return ("path",)

    def __str__(self) -> str:
        where = str(self.path.path_or_uri) if self.path is not None else self.ref
        chosen = ", ".join(f"{name}={value}" for name, value in (("repo_tag", self.repo_tag),
                                                                  ("platform", self.platform)) if value)
        return f"{where} ({chosen})" if chosen else where


class Env(PinnableEnvBase, CacheableEnvBase, DeployableEnvBase):
    """An image directory (path=) or a registry image pulled into the cache (ref=)."""

    spec: EnvSpec
    settings: Settings

    def __post_init__(self) -> None:
        self.settings = self.settings or Settings()
        self._image_dir = None

    # -- where the image is, and what it is --------------------------------------------
    def image_dir(self) -> str:
        """The directory the steps run from: the spec's, or the pulled copy in the cache
        (pulled now if the cache has none). Fixed once asked, so every step of a run uses
        the image whose ID is the environment's hash."""
        if self._image_dir is None:
            self._image_dir = self._source_dir() if self.spec.path is not None else self._pulled_dir()
        return self._image_dir

    def _source_dir(self) -> str:
        source = self.spec.path
        cached = source.cached  # Snakemake's copy, where its source cache could make one
        if cached is not None and Path(cached).is_dir():
            return os.path.abspath(cached)
        return os.path.abspath(source.path_or_uri)

    def _pulled_dir(self) -> str:
        link = self.get_cache_asset_path(self._asset())
        if not link.exists():  # absent, or its image was removed
            self._pull_to(link)
        return str(link.resolve())

    def image_id(self) -> str:
        with _docker_dir_errors():
            return read_image_id(self.image_dir(), repo_tag=self.spec.repo_tag, platform=self.spec.platform)

    def _image(self):
        with _docker_dir_errors():
            return read_consistently(self.image_dir(), lambda image_dir: image_dir.select(
                repo_tag=self.spec.repo_tag, platform=self.spec.platform))

    def record_hash(self, hash_object) -> None:
        # The image ID alone: re-saving the same image changes nothing, a new image does;
        # a pulled image and a directory of the same image are the same environment.
        hash_object.update(self.image_id().encode())

    def report_software(self) -> Iterable[SoftwareReport]:
        image = self._image()
        with _docker_dir_errors():
            names = ", ".join(image.repo_tags + image.ref_names) or str(self.spec)
            platform = image.platform or image.platform_of_config()
            return [SoftwareReport(name=f"{names} ({platform})" if platform else names, version=image.image_id())]

    # -- running -------------------------------------------------------------------------
    def _options(self, command, **kwargs) -> ExecOptions:
        return ExecOptions(self.image_dir(), command, repo_tag=self.spec.repo_tag, platform=self.spec.platform,
                           engine=self.settings.engine, **kwargs)

    def decorate_shellcmd(self, cmd: str) -> str:
        argv = [_exec_script()]
        if self.settings.engine:
            argv += ["--engine", self.settings.engine]
        for option, value in (("--repo-tag", self.spec.repo_tag), ("--platform", self.spec.platform)):
            if value:
                argv += [option, value]
        for path in self._mounted_paths():
            argv += ["-v", f"{path}:{path}"]
        for spec in self.settings.mounts:
            argv += ["-v", spec]
        for env in [*sorted(self.envvars), *self.settings.env]:
            argv += ["-e", env]
        # The shell Snakemake runs steps with, by name: its path here may not be the image's.
        shell = self.shell_executable
        argv += [self.image_dir(), "--", shell.name, shell.command_arg, cmd]
        return shlex.join(argv)

    def _mounted_paths(self) -> List[str]:
        """What Snakemake needs the step to see besides the working directory (which
        docker-dir-exec mounts): its temporary directory, source cache and search paths."""
        cwd = os.getcwd()
        paths = []
        for path in [self.tempdir, *self.mountpoints]:
            path = os.path.abspath(path)
            # A missing source would be made by docker as root; Charliecloud refuses it.
            if path != cwd and path not in paths and os.path.isdir(path):
                paths.append(path)
        return paths

    def contains_executable(self, executable: str) -> bool:
        options = self._options(["sh", "-c", 'command -v "$1"', "sh", executable], load_only=True)
        with _docker_dir_errors():
            ready_to_run(options)  # loads the image once, under docker-dir-exec's lock
            engine = get_engine(self.settings.engine)
            request = run_request(options, engine.image_ref(self.image_id().split(":", 1)[1]))
            request.tty = request.interactive = False  # answered with no terminal, whatever Snakemake has
            engine.check_request(request)
            engine.prepare_run(request)
            command = engine.run_command(request)
        try:
            return subprocess.run(command.argv, env=command.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0
        except OSError as err:
            raise WorkflowError(f"cannot run {command.argv[0]}: {err.strerror}") from None

    # -- deployable: the engine holds the image --------------------------------------------
    def is_deployment_path_portable(self) -> bool:
        return True  # nothing refers to the deployment path

    async def deploy(self) -> None:
        # Not in a worker thread: a pull (of a ref not cached yet) sets signal handlers, which
        # only the main thread may.
        with _docker_dir_errors():
            ready_to_run(self._options([], load_only=True))
        # What Snakemake checks to skip a deployment; the engine's copy is node-local, so
        # a step on a node without it loads it (once) as docker-dir-exec does anyway.
        self.deployment_path.mkdir(parents=True, exist_ok=True)
        (self.deployment_path / "image-id").write_text(self.image_id() + "\n")

    def remove(self) -> None:
        # The engine keeps the image: other workflows may run it (README: Cleaning up).
        shutil.rmtree(self.deployment_path, ignore_errors=True)

    # -- cacheable: a registry image, pulled into the cache --------------------------------
    def is_cacheable(self) -> bool:
        return self.spec.ref is not None

    def _asset(self) -> str:
        """A file name for the pulled image of this ref and platform (the cache asset)."""
        reference = self.spec.ref[len(SCHEME):]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", reference)[:80]
        key = hashlib.sha256(f"{self.spec.ref}\0{self.spec.platform or ''}".encode()).hexdigest()[:16]
        return f"{readable}-{key}"

    async def get_cache_assets(self) -> Iterable[str]:
        return [self._asset()] if self.is_cacheable() else []

    async def cache_asset(self, asset: str, to_path: Path) -> None:
        # Snakemake renames to_path over the asset: a link does that atomically whatever
        # the asset was, where a directory could not replace another.
        current = self.get_cache_asset_path(asset)
        if current.exists():
            _link(to_path, os.readlink(current))  # pulled already (the hash needed it)
        else:
            self._pull_to(to_path)

    def _pull_to(self, link: Path) -> None:
        """Pull the ref into the cache's store (once per image) and make `link` name it."""
        from docker_dir.application.save import RegistryImage, Selectors, save

        building = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.cache_path))
        try:
            with _docker_dir_errors():
                save([RegistryImage(self.spec.ref[len(SCHEME):])], str(building / "image"),
                     selectors=Selectors(platform=self.spec.platform))
                config_hex = read_image_id(str(building / "image")).split(":", 1)[1]
            store = self.cache_path / STORE
            store.mkdir(exist_ok=True)
            try:
                os.rename(building / "image", store / config_hex)
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another pull of the same image was first: the same content, kept
        finally:
            shutil.rmtree(building, ignore_errors=True)
        _link(link, f"{STORE}/{config_hex}")

    async def remove_cache(self) -> None:
        for asset in await self.get_cache_assets():
            with contextlib.suppress(FileNotFoundError):
                self.get_cache_asset_path(asset).unlink()
        store = self.cache_path / STORE
        if not store.is_dir():
            return
        linked = {os.path.realpath(entry) for entry in self.cache_path.iterdir() if entry.is_symlink()}
        for image in store.iterdir():
            if not image.name.startswith(".") and os.path.realpath(image) not in linked:
                shutil.rmtree(image)

    # -- pinnable: the digest the tag names --------------------------------------------------
    def is_pinnable(self) -> bool:
        return self.spec.ref is not None

    @classmethod
    def pinfile_extension(cls) -> str:
        return ".ref"

    async def pin(self) -> None:
        image = self._image()
        with _docker_dir_errors():
            digests = image.repo_digests
        if not digests:
            raise WorkflowError(f"{self.spec}: the pulled image {self.image_dir()} records no registry digest; "
                                "remove it from the cache and run again")
        self.pinfile.parent.mkdir(parents=True, exist_ok=True)
        self.pinfile.write_text(digests[0] + "\n")


def _link(path, target) -> None:
    """Make `path` a symbolic link to `target`, replacing what is there in one rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, path)


def _exec_script() -> str:
    """docker-dir-exec of the installation this plugin runs in, else the one on PATH: by its
    full path, as Snakemake may run steps in a login shell that sets PATH anew."""
    beside = os.path.join(sysconfig.get_path("scripts"), EXEC)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(EXEC)
    if found is None:
        raise WorkflowError(f"{EXEC} not found (neither in {os.path.dirname(beside)} nor on PATH); "
                            "install docker-dir where Snakemake runs the steps")
    return os.path.abspath(found)
