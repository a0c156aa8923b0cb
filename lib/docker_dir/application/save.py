"""Save images into a directory, in the one layout docker-dir writes (format/canonical.py):
from an engine (its export streamed and extracted safely, no temporary tar), from a
registry (pull.py), or from another image directory or archive (copied, every blob
checked against its digest). Everything is built in a hidden sibling of DIR, moved into
place only when complete. The registry client (http.client, ssl and the rest) is imported
only for docker:// sources: an engine's save does not pay for it (bench/RESULTS.md)."""
import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
import time

from ..errors import BadImageDir, CantWrite, DockerDirError, EngineFailed, Interrupted, SelectionError, UsageError
from ..format.canonical import (OCI_CONFIG, OCI_LAYER_PREFIX, OCI_MANIFEST, Blobs, Entry, layer_media_type,
                                stored_compression, write_index_layout, write_layout)
from ..format.compression import NONE
from ..format.extract import extract_stream
from ..format.imagedir import ImageDir
from ..format.names import SOURCE_DIGEST_ANNOTATION, hex_of_digest, shown
from ..format.selection import select_among
from ..format.streams import CountingReader, sha256_file
from ..fs import move_into_place, open_regular
from ..nodelocal import BuildDir, remove_abandoned
from ..signals import SignalLatch
from . import QUIET

TEMP_MARK = ".docker-dir-save-"
# Inside the build directory: an engine's export, or an archive, before its blobs move to blobs/.
_STAGING = ".staging-"


class EngineImage:
    """An image the engine holds: `ref` as the engine names it."""

    def __init__(self, ref):
        self.ref = ref

    def __str__(self):
        return self.ref


class DirectoryImages:
    """The images of another image directory or archive, of any layout docker-dir reads:
    `transport` is how it was named (oci, dir, docker-archive), `tag` an optional
    OCI ref name or repo tag choosing among them."""

    def __init__(self, transport, path, tag=None):
        self.transport, self.path, self.tag = transport, path, tag

    def __str__(self):
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


class RegistryImage:
    """An image in a registry: docker://[HOST[:PORT]/]NAME[:TAG|@sha256:DIGEST]."""

    def __init__(self, text):
        from ..registry.reference import Reference

        self.reference = Reference.parse(text)

    def __str__(self):
        return f"docker://{self.reference}"


class Selectors:
    """--repo-tag, --config, --platform, --all-platforms: which images of a source are saved."""

    def __init__(self, repo_tag=None, config=None, platform=None, all_platforms=False):
        self.repo_tag, self.config, self.platform, self.all_platforms = repo_tag, config, platform, all_platforms


def check_target(path, force):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CantWrite(f"{path}: parent directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CantWrite(f"{path}: parent directory {parent} is not writable")
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise CantWrite(f"{path}: exists and is not a directory; remove it or choose another DIR")
        if os.listdir(path) and not force:
            raise CantWrite(f"{path}: exists and is not empty; use --force to replace it")
    return parent


def _remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(parent, name):
    """Remove hidden temp dirs of earlier saves to the same DIR that were killed.
    A running save holds a lock on its temp dir, so it is left alone."""
    prefix = f".{name}{TEMP_MARK}"
    remove_abandoned(parent, lambda entry: entry.startswith(prefix), _remove_tree)


def gitattributes(image_dir):
    """Layers go to the annex; the small JSON files (manifest, config, index) stay in git."""
    lines = ["* annex.largefiles=nothing"]
    for image in image_dir.images():
        for layer in image.layers:
            lines.append(f"/{layer.path} annex.largefiles=anything")
    return "\n".join(dict.fromkeys(lines)) + "\n"


class Saved:
    """What a save wrote: the images' IDs, bytes received, seconds taken, and the
    registry URLs of the layers pulled ({path in DIR: docker-blob:// URL})."""

    def __init__(self, ids, nbytes, seconds, layer_urls):
        self.ids, self.nbytes, self.seconds, self.layer_urls = ids, nbytes, seconds, layer_urls


def save(sources, path, engine=None, force=False, reporter=QUIET, write_gitattributes=False,
         selectors=Selectors(), insecure=()):
    """Save the images `sources` name into directory `path`. `engine` exports the
    EngineImage sources (None when there are none); `insecure` registries may answer
    in plain HTTP."""
    check_all_platforms(sources, selectors)
    parent = check_target(path, force)
    name = os.path.basename(os.path.abspath(path))
    refs = [source.ref for source in sources if isinstance(source, EngineImage)]
    total = _check_engine_images(engine, refs) if refs else None
    remove_stale_temps(parent, name)
    started = time.monotonic()
    received = 0
    with SignalLatch() as latch, BuildDir(parent, f".{name}{TEMP_MARK}", _remove_tree) as tmp:
        blobs = Blobs(tmp)
        entries = []
        if refs:
            progress = reporter.transfer(f"saving {' '.join(refs)}", total=total,
                                         waiting="the engine is preparing the export")
            try:
                entries += _from_engine(engine, refs, tmp, blobs, path, progress)
            except BaseException:
                progress.cancel()
                raise
            progress.close()
            received += progress.done
        index = None
        layer_urls = {}
        for source in sources:
            if isinstance(source, DirectoryImages):
                entries += _from_directory(source, tmp, blobs, selectors)
            elif isinstance(source, RegistryImage):
                from .pull import pull

                try:
                    pulled = pull(source, blobs, selectors, reporter, insecure,
                                  reuse_dir=path if os.path.isdir(path) else None)
                except CantWrite as err:  # it names a file of the temp dir, which is gone
                    why = ("no space left on the device; nothing was written, free space and save again"
                           if "No space" in str(err) else f"{err}; nothing was written")
                    raise CantWrite(f"{path}: {why}") from None
                entries += pulled.entries
                index = pulled.index and (pulled.index, pulled.repo_tags)
                received += pulled.nbytes
                layer_urls.update(pulled.layer_urls)
        if index:
            write_index_layout(tmp, blobs, *index)
        else:
            write_layout(tmp, blobs, entries)
        os.chmod(tmp, 0o755)
        saved = ImageDir(tmp)
        ids = list(dict.fromkeys(image.image_id() for image in saved.images()))
        if write_gitattributes:
            with open(os.path.join(tmp, ".gitattributes"), "w", encoding="utf-8") as out:
                out.write(gitattributes(saved))
        latch.check()  # a signal whose exception was dropped stops us before the commit
        move_into_place(tmp, path, _remove_tree)
    return Saved(ids, received, time.monotonic() - started, layer_urls)


def check_all_platforms(sources, selectors):
    """--all-platforms keeps one registry index whole: it is the only source then."""
    if selectors.all_platforms and (len(sources) != 1 or not isinstance(sources[0], RegistryImage)):
        raise UsageError("--all-platforms keeps one registry image's whole index: give one docker:// SOURCE "
                         "(from a directory, choose a platform with --platform)")


def _check_engine_images(engine, refs):
    """Refuse before anything is made: an engine that cannot save, an image it lacks.
    Returns about how many bytes the export streams."""
    if not engine.can_save:
        raise UsageError(f"{engine.name} keeps no images to save {' '.join(refs)} from: it runs image "
                         "directories; save with another engine (--engine)")
    for ref in refs:
        if engine.inspect_id(ref) is None:
            raise EngineFailed(f"image {ref} not found in {engine.name}; list images with '{engine.name} images'")
    return engine.image_size(refs)


# -- from an engine ---------------------------------------------------------------

def _from_engine(engine, refs, tmp, blobs, path, progress):
    """The engine's export, extracted as it streams into a staging directory of the build
    directory, its files then moved to blobs/: no layer is copied."""
    staging = os.path.join(tmp, f"{_STAGING}engine")
    os.mkdir(staging, 0o700)
    doing = f"saving {' '.join(refs)}"
    stream = engine.save(refs)
    try:
        extract_stream(CountingReader(stream.stdout, progress), staging)
    except BaseException as err:
        stream.abort()
        raise _stream_error(err, engine.save_failed(stream, doing), engine, path) from None
    status, _, stderr = stream.finish()
    if status:
        raise engine.error(stderr, doing)
    exported = ImageDir(staging)
    images = _whole_images(exported, engine, staging, path)
    placed = {}
    entries = [_adopted(image, blobs, placed) for image in images]
    shutil.rmtree(staging)
    return entries


def _adopted(image, blobs, placed):
    """An Entry for an exported image whose files move into blobs/. `placed` maps the
    real paths already moved to (hex, size, media type): engines link a repeated layer
    (and a config saved under two names) to one file."""
    image_dir = image.image_dir

    def real_path(relpath):
        return os.path.realpath(image_dir.resolve(relpath))

    diff_ids = image.diff_ids() or []  # before the config moves away
    config = real_path(image.config_path)
    if config not in placed:
        placed[config] = (image.config_digest(), os.stat(config).st_size, None)
        blobs.adopt(config, image.config_digest())
    layers = []
    for i, layer in enumerate(image.layers):
        real = real_path(layer.path)
        if real not in placed:
            placed[real] = _adopt_layer(real, layer, diff_ids[i] if i < len(diff_ids) else None, blobs)
        layers.append(placed[real])
    manifest, notes = _kept_manifest(image)
    return Entry(placed[config][0], placed[config][1], layers, repo_tags=image.repo_tags, manifest=manifest,
                 notes=notes)


def _adopt_layer(real, layer, diff_id, blobs):
    """(hex, size, media type) of a layer file moved into blobs/. Docker's legacy layer
    files are named by no digest: an uncompressed one's is the config's diff_id."""
    compression = stored_compression(real, layer.media_type)
    hexd = layer.digest[7:] if layer.digest else None
    if hexd is None and compression == NONE:
        hexd = hex_of_digest(diff_id)
    if hexd is None:  # compressed, and named by no digest: hashed once
        hexd = sha256_file(real)
    size = os.stat(real).st_size
    blobs.adopt(real, hexd)
    return hexd, size, layer_media_type(compression, layer.media_type)


# -- from another image directory or archive -----------------------------------------

def _from_directory(source, tmp, blobs, selectors):
    """Entries for the images a directory or archive source holds (those chosen), every
    blob checked against its digest and size as it is copied (or, from an archive
    extracted into the build directory, as it is moved)."""
    if os.path.isfile(source.path):
        staging = tempfile.mkdtemp(prefix=_STAGING, dir=tmp)
        try:
            with open_regular(source.path) as stream:
                extract_stream(stream, staging)
        except (tarfile.TarError, EOFError) as err:
            raise BadImageDir(f"{source.path}: not a tar archive of an image ({err}); give the archive "
                              "'docker save -o', 'podman save' or an oci-archive wrote, or its directory") from None
        image_dir, in_build_dir = ImageDir(staging), True
    else:
        image_dir, in_build_dir = ImageDir(source.path), False
    entries = [_checked_copy(image, blobs, in_build_dir) for image in _chosen(image_dir, source, selectors)]
    if in_build_dir:
        shutil.rmtree(image_dir.path)
    return entries


def _chosen(image_dir, source, selectors):
    """The images of a source the selectors leave: all of them, but one platform of a
    multi-platform index (this host's, or --platform's)."""
    if selectors.all_platforms:
        raise UsageError(f"{source}: --all-platforms keeps a registry's whole index (docker:// sources); "
                         "from a directory, choose a platform with --platform")
    images = image_dir.images()
    chosen = [i for i in images if source.tag is None or i.matches_reference(source.tag)]
    if source.tag is not None and not chosen:
        raise SelectionError(f"{source}: no image tagged {shown(source.tag)}; it holds: "
                             + "; ".join(i.label() for i in images))
    if selectors.repo_tag is not None or selectors.config is not None or selectors.platform is not None or (
            len(chosen) > 1 and all(i.platform for i in chosen)):
        return [select_among(image_dir, chosen, selectors)]
    return chosen


def _checked_copy(image, blobs, in_build_dir):
    """An Entry for an image of another directory: its config and layers copied (or
    moved, from an extracted archive) into blobs/, each refused (65) when its content
    does not match the digest or size that names it; its manifest's bytes kept when
    they are an OCI manifest (the digest stays the source's)."""
    image_dir = image.image_dir
    image.require_content()
    diff_ids = image.diff_ids() or []

    def place(relpath, hexd, size):
        path = image_dir.resolve(relpath)
        shown_path = image_dir.join(relpath)
        with open_regular(path) as stream:
            found = blobs.copy(stream, hexd, size, shown_path)
        if in_build_dir:
            os.unlink(path)
        return found, os.stat(blobs.path(found)).st_size

    config_hex, config_size = place(image.config_path, image.config_digest(), None)
    layers = []
    for i, layer in enumerate(image.layers):
        compression = stored_compression(image_dir.resolve(layer.path), layer.media_type)
        expected = layer.digest[7:] if layer.digest else None
        if expected is None and compression == NONE and i < len(diff_ids):
            expected = hex_of_digest(diff_ids[i])
        hexd, size = place(layer.path, expected, layer.size)
        layers.append((hexd, size, layer_media_type(compression, layer.media_type)))
    manifest, notes = _kept_manifest(image)
    return Entry(config_hex, config_size, layers, repo_tags=image.repo_tags, ref_names=image.ref_names,
                 manifest=manifest, notes=notes)


def _kept_manifest(image):
    """(the bytes of the image's own manifest when it is an OCI one, checked against its
    digest, or None: docker-dir writes one; annotations recording the manifest the source
    had when it is not kept: an engine that holds the image knows it by that digest)."""
    if image.json_blobs:  # the OCI walk's blobs: the image's own manifest last
        relpath, hexd = image.json_blobs[-1]
    else:  # a docker-archive's index.json names the manifest; the dir: layout's is manifest.json
        hexd = hex_of_digest(image.manifest_digest())
        relpath = f"blobs/sha256/{hexd}" if hexd else None
    if hexd is None:
        return None, {}
    if relpath is None or not os.path.exists(image.image_dir.join(relpath)):
        return None, {SOURCE_DIGEST_ANNOTATION: "sha256:" + hexd}
    data = image.image_dir.read_bytes(relpath, f"{image.image_dir.join(relpath)}: missing")
    if hashlib.sha256(data).hexdigest() != hexd:
        raise BadImageDir(f"{image.image_dir.join(relpath)}: content does not match its digest sha256:{hexd[:12]}; "
                          "refusing the image")
    if _is_oci_manifest(image.image_dir.parse_json(data, relpath)):
        return data, {}
    return None, {SOURCE_DIGEST_ANNOTATION: "sha256:" + hexd}


def _is_oci_manifest(manifest):
    """An OCI image manifest: OCI media types for itself, its config and its layers."""
    config = manifest.get("config") if isinstance(manifest, dict) else None
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    return (manifest.get("mediaType") in (OCI_MANIFEST, None) and isinstance(config, dict)
            and config.get("mediaType") == OCI_CONFIG and isinstance(layers, list)
            and all(isinstance(d, dict) and str(d.get("mediaType")).startswith(OCI_LAYER_PREFIX) for d in layers))


def _whole_images(exported, engine, staging, path):
    """The exported images, once the archive proved to hold every file its manifest names
    (an engine can end a stream early between two files and still exit 0)."""
    try:
        images = exported.images()
        missing = [relpath for image in images for relpath in image.missing_files()]
    except BadImageDir as err:
        reason = str(err).split(";")[0].replace(staging, path)
        raise EngineFailed(f"{engine.name} sent an archive that is not an image ({reason}); "
                           "nothing was written") from None
    if missing:
        raise EngineFailed(f"{engine.name} sent an incomplete archive ({missing[0]} is missing); "
                           "nothing was written")
    return images


def _stream_error(err, engine_error, engine, path):
    """The error to report when extraction stopped early; `engine_error` is the engine's
    own complaint, if it made one."""
    if isinstance(err, (KeyboardInterrupt, Interrupted)):
        return err
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CantWrite(f"{path}: no space left on the device; nothing was written, free space and save again")
    if isinstance(err, DockerDirError):
        return err  # an unsafe archive stays unsafe whatever the engine printed on stderr
    if engine_error is not None:
        return engine_error
    if isinstance(err, (tarfile.TarError, EOFError)):
        return EngineFailed(f"{engine.name} sent a malformed archive ({err}); nothing was written")
    if isinstance(err, OSError):
        return CantWrite(f"{path}: {err.strerror or err}; nothing was written")
    return err
