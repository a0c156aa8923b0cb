"""Where the symlinks of an image directory may lead: inside the directory or, within a
git work tree, anywhere in that tree (git-annex keeps content in .git/annex/objects, or
in a submodule's gitdir/annex/objects). Anything else is refused by ImageDir.resolve."""
import os


def enclosing_roots(real_dir):
    """Directories a symlink in the image dir may point into: the enclosing work tree and,
    when its gitdir lies elsewhere, only that gitdir's annexed objects (a .git file in a
    copied directory could name any directory, even /)."""
    probe = real_dir
    while True:
        dotgit = os.path.join(probe, ".git")
        if os.path.islink(dotgit):
            # git-annex turns a submodule's .git file into a link to its gitdir.
            return (probe, os.path.join(os.path.realpath(dotgit), "annex", "objects"))
        if os.path.isdir(dotgit):
            return (probe,)
        if os.path.isfile(dotgit):
            # A submodule keeps its annexed objects under the gitdir it names.
            try:
                with open(dotgit, encoding="utf-8") as stream:
                    line = stream.readline().strip()
            except (OSError, ValueError):  # ValueError: not UTF-8
                line = ""
            if line.startswith("gitdir:") and "\0" not in line:
                gitdir = os.path.realpath(os.path.join(probe, line[7:].strip()))
                return (probe, os.path.join(gitdir, "annex", "objects"))
            return (probe,)
        parent = os.path.dirname(probe)
        if parent == probe:
            return (real_dir,)
        probe = parent


def inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")
