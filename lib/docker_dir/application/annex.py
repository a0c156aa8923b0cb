"""Recording in a git-annex repository that the layers of a saved or pushed image can be
had from a registry (--annex-urls): the layers are annexed (the JSON files stay in git,
as DIR/.gitattributes says: written here when DIR has none, as for a DIR saved without
--gitattributes and then pushed) and each gets its docker-blob:// URL (annex_remote.py),
registered with git-annex, which counts the registry as a copy. The docker-dir special
remote is set up once per repository, with autoenable=true so clones have it too.
"""
import os
import sys

from .. import process
from ..errors import CantWrite, EngineUnavailable, UsageError, first_line
from ..format.imagedir import ImageDir
from .save import gitattributes

REMOTE = "docker-dir"


def annex_root(directory):
    """The top of the git-annex repository `directory` is in; UsageError when it is in none."""
    root = _git(["rev-parse", "--show-toplevel"], directory, "finding the git repository of " + directory,
                error=UsageError, hint="--annex-urls needs DIR inside a git-annex repository (datalad create, or "
                                       "git init && git annex init)").strip()
    if not _git(["config", "--get", "annex.uuid"], root, "", check=False).strip():
        raise UsageError(f"{root} is a git repository without git-annex; run 'git annex init' there "
                         "(or use a DataLad dataset), then save again with --annex-urls")
    return root


def record_urls(directory, urls):
    """Annex DIR and register `urls` ({path relative to DIR: docker-blob:// URL}) for its
    layers; returns (layers linked to a registry, layers kept only in the annex)."""
    root = annex_root(directory)
    env = _with_our_programs()
    if _git(["config", "--get", f"remote.{REMOTE}.annex-externaltype"], root, "", check=False).strip() != REMOTE:
        _git(["annex", "initremote", REMOTE, "type=external", f"externaltype={REMOTE}", "encryption=none",
              "autoenable=true"], root, "setting up the docker-dir special remote", env=env)
    _ensure_gitattributes(directory)
    _git(["annex", "add", "--quiet", os.path.abspath(directory)], root, f"annexing {directory}", env=env)
    layers = _layer_paths(directory)
    keys = {}
    for relpath in layers:
        if relpath in urls:
            keys[relpath] = _git(["annex", "lookupkey", os.path.join(os.path.abspath(directory), relpath)], root,
                                 f"finding the annex key of {relpath}", env=env).strip()
    if keys:
        _git(["annex", "registerurl", "--batch"], root, "registering the layers' URLs", env=env,
             input="".join(f"{key} {urls[relpath]}\n" for relpath, key in keys.items()))
        # registerurl records where to get the content; that the remote holds it (a copy
        # that lets `drop` go ahead) git-annex 10.2023 records only when told:
        uuid = _git(["config", "--get", f"remote.{REMOTE}.annex-uuid"], root, "finding the special remote").strip()
        _git(["annex", "setpresentkey", "--batch"], root, "recording the layers as present in their registry",
             env=env, input="".join(f"{key} {uuid} 1\n" for key in keys.values()))
    return len(keys), len(layers) - len(keys)


def _ensure_gitattributes(directory):
    """Without DIR/.gitattributes, git annex add would annex the manifest and config too
    (DataLad's and git-annex's default): then the ID needs the annex's content."""
    path = os.path.join(directory, ".gitattributes")
    if os.path.lexists(path):
        return  # the user's, or --gitattributes': theirs to keep
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(gitattributes(ImageDir(directory)))
    except OSError as err:
        raise CantWrite(f"cannot write {path}: {err.strerror}") from None


def _layer_paths(directory):
    return list(dict.fromkeys(layer.path for image in ImageDir(directory).images() for layer in image.layers))


def _with_our_programs():
    """The environment git-annex runs in, with this installation's scripts first on PATH:
    git-annex starts git-annex-remote-docker-dir by name."""
    ours = os.path.dirname(os.path.realpath(sys.argv[0]))
    env = dict(os.environ)
    if os.path.exists(os.path.join(ours, "git-annex-remote-docker-dir")):
        env["PATH"] = ours + os.pathsep + env.get("PATH", "")
    return env


def _git(args, cwd, doing, check=True, env=None, input=None, error=CantWrite, hint=None):
    try:
        status, stdout, stderr = process.run(["git", "-C", cwd, *args], timeout=600, input=input, env=env)
    except process.NoAnswer:
        raise CantWrite(f"git did not answer while {doing}") from None
    except OSError as err:
        raise EngineUnavailable(f"cannot run git ({err.strerror}); install git and git-annex") from None
    if status and check:
        raise error(f"{doing} failed: {first_line(stderr) or 'no message'}" + (f"; {hint}" if hint else ""))
    return stdout
