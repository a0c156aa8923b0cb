"""Reading an image directory that `docker-dir-save --force` may replace meanwhile (an
atomic swap): readers see the old image or the new one, whole, never a mix."""
from ..errors import BadImageDir, DockerDirError, Interrupted
from .imagedir import ImageDir, identity


def read_consistently(path, read, attempts=10):
    """read(ImageDir(path)), seeing one image: when DIR is another directory after the
    read than before it, the read starts again on the new one (a failure seen meanwhile,
    such as a file of the old image gone, is not reported). `read` only reads: what acts
    on its result (a load) runs after, so it never runs twice."""
    failure = None
    for _ in range(attempts):
        before = identity(path)
        try:
            result = read(ImageDir(path))
        except (DockerDirError, OSError) as err:
            if isinstance(err, Interrupted) or identity(path) == before:
                raise
            failure = err
            continue
        if identity(path) == before:
            return result
    if failure is not None:
        raise failure
    raise BadImageDir(f"{path}: replaced {attempts} times while it was read; try again")


def image_id(path, repo_tag=None, config=None, platform=None):
    """The config digest (`sha256:<hex>`) of the image saved in directory `path`."""
    return read_consistently(path, lambda image_dir: image_dir.select(repo_tag, config, platform).image_id())
