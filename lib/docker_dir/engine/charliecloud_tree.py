"""An unpacked image tree as ch-run needs it, and container paths inside it.

prepare_tree() adds, once after unpacking, what ch-run expects: mount points (dev proc
sys tmp home mnt), etc/passwd and etc/group (it binds its own over them) and
ch/environment (the config's Env, read by a bare --set-env). make_path() adds, before a
run, a bind's destination or the workdir; container_path() names the same path without
creating anything, for the argv. Symlinks in the tree are followed as the container sees
them (an absolute target starts at the tree's top, `..` stops there), so nothing outside
the tree is ever reached, and ch-run (which follows absolute links on the host) is
handed paths with none.
"""
import os
import stat

from ..errors import EngineFailed
from ..fs import NEW_FILE, OPEN_DIR

# What ch-run mounts over (dev, proc, sys, tmp; home with --home), and mnt, which users expect.
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "home", "mnt")
# Container paths ch-run mounts itself: a bind below them is made there, not in the tree.
MOUNTED_BY_CH_RUN = ("/dev", "/proc", "/sys", "/tmp")
# What dockerd gives a container whose image does not set them (HOME: a user the image's
# /etc/passwd does not list, as docker-dir's --user UID:GID normally is).
DEFAULT_ENV = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("HOME", "/"))
MAX_LINKS = 40


def prepare_tree(root, env, remove_tree):
    """Add to an unpacked tree what ch-run needs. What the image has is kept, but for
    /ch/environment, written anew from the config as Charliecloud's own tools do, and a
    /ch that is not a directory (a name Charliecloud claims)."""
    root_fd = os.open(root, OPEN_DIR)
    try:
        for name in MOUNT_POINTS + ("etc",):
            _mkdir_once(name, root_fd)
        etc = _open_dir(root_fd, "etc")
        if etc is not None:  # else a link: ch-run's own error says what it thinks of it
            try:
                for name in ("passwd", "group"):
                    _create_once(name, etc, b"")
            finally:
                os.close(etc)
        ch = _open_dir(root_fd, "ch")
        if ch is None:
            remove_tree(os.path.join(root, "ch"))
            os.mkdir("ch", 0o755, dir_fd=root_fd)
            ch = _open_dir(root_fd, "ch")
        try:
            try:
                os.unlink("environment", dir_fd=ch)
            except FileNotFoundError:
                pass
            _create_once("environment", ch, environment_file(env))
        finally:
            os.close(ch)
    finally:
        os.close(root_fd)


def environment_file(env):
    """The config's Env as ch-run's --set-env reads it: NAME='VALUE' lines (ch-run strips
    one pair of single quotes, so any value comes through as it is, and with
    --env-no-expand nothing in it is expanded), after dockerd's defaults for PATH and HOME.
    A value holding a newline cannot be a line: run.json carries those."""
    entries = env_entries(env)
    names = {entry.split("=", 1)[0] for entry in entries}
    lines = [f"{name}='{value}'" for name, value in DEFAULT_ENV if name not in names]
    lines += ["{}='{}'".format(*entry.split("=", 1)) for entry in entries if "\n" not in entry]
    return "".join(line + "\n" for line in lines).encode()


def env_entries(env):
    """Env entries ch-run can set: NAME=VALUE with a name."""
    return [e for e in env or () if isinstance(e, str) and e.partition("=")[0] and "=" in e and "\0" not in e]


def run_settings(config):
    """What run.json keeps of an image config: Entrypoint, Cmd, WorkingDir, and the Env
    entries with a newline (ch/environment cannot hold those)."""
    settings = config.get("config") if isinstance(config, dict) else None
    settings = settings if isinstance(settings, dict) else {}

    def words(value):
        return [w for w in value if isinstance(w, str)] if isinstance(value, list) else None

    workdir = settings.get("WorkingDir")
    return {"Entrypoint": words(settings.get("Entrypoint")), "Cmd": words(settings.get("Cmd")),
            "WorkingDir": workdir if isinstance(workdir, str) and workdir.startswith("/") else None,
            "Env": [e for e in env_entries(settings.get("Env")) if "\n" in e]}


def below(path, tops):
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


def make_path(root_fd, path, directory=True):
    """Make the container path `path` exist in the tree at root_fd, as a directory or an
    empty file; return it without symlinks."""
    return _walk(root_fd, path, directory, create=True)


def container_path(root_fd, path, directory=True):
    """The container path `path` without symlinks, as make_path() returns it; creates nothing."""
    return _walk(root_fd, path, directory, create=False)


def _walk(root_fd, path, directory, create):
    todo = path.split("/")[::-1]
    done = []
    links = 0
    missing = False  # below a missing name, nothing more can be looked at
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        rel = "/".join(done + [name])
        last = not any(p not in ("", ".") for p in todo)
        if missing:
            done.append(name)
            continue
        try:
            st = os.lstat(rel, dir_fd=root_fd)
        except FileNotFoundError:
            if create:
                _make(root_fd, rel, directory or not last, path)
            else:
                missing = True
            done.append(name)
            continue
        except OSError as err:
            raise EngineFailed(f"cannot make {path} in the unpacked image: /{rel}: {err.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise EngineFailed(f"cannot make {path} in the unpacked image: too many symlinks")
            target = os.readlink(rel, dir_fd=root_fd)
            if target.startswith("/"):
                done = []
            todo.extend(target.split("/")[::-1])
            continue
        if (directory or not last) != stat.S_ISDIR(st.st_mode):
            kind = "is a directory" if stat.S_ISDIR(st.st_mode) else "is not a directory"
            raise EngineFailed(f"cannot make {path} in the unpacked image: /{rel} {kind} there")
        done.append(name)
    return "/" + "/".join(done)


def _make(root_fd, rel, directory, path):
    try:
        if directory:
            os.mkdir(rel, 0o755, dir_fd=root_fd)
        else:
            os.close(os.open(rel, NEW_FILE, 0o644, dir_fd=root_fd))
    except FileExistsError:
        pass  # a parallel exec made it
    except OSError as err:
        raise EngineFailed(f"cannot make {path} in the unpacked image: /{rel}: {err.strerror}") from None


def _mkdir_once(name, dir_fd):
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass


def _create_once(name, dir_fd, content):
    try:
        fd = os.open(name, NEW_FILE, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        return
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _open_dir(dir_fd, name):
    """A descriptor of the real directory `name` in dir_fd, or None for anything else."""
    try:
        return os.open(name, OPEN_DIR, dir_fd=dir_fd)
    except OSError:
        return None
