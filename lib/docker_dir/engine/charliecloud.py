"""Charliecloud (ch-run 0.31): no daemon, no image store; images unpacked into a
node-local cache and run unprivileged, as the caller.

"Loading" an image is unpacking its layers (format/unpack.py) into the cache:

    $DOCKER_DIR_CACHE, default /var/tmp/docker-dir-UID   (the caller's, mode 0700: nodelocal.private_dir)
        <config hex>/                    one entry per image, renamed into place complete
            root/                        the image's tree, plus what ch-run needs: mount points
                                         (dev proc sys tmp home mnt, and the directories
                                         docker-dir-exec binds), etc/passwd, etc/group, and
                                         ch/environment (the config's Env, read by bare --set-env)
            run.json                     Entrypoint, Cmd and WorkingDir of the config
        .<config hex>.unpacking-XXXXXX/  an entry being built; its builder holds a flock on it.
                                         One nobody holds was interrupted: never used, and
                                         removed by the next unpack or prune
        .<config hex>.pruning-XXXXXX/    an entry being removed

application/load.py serializes unpacks of one image on a node (its lock). An entry's
mtime is when an exec last used it (touched at most hourly, one stat otherwise):
prune_cache() removes the entries older than N days.

The hot path (has_image, run_argv) is standard library only (hot.py says why): a check
of the cache directory, the entry's run.json, the mount points, then ch-run is execv'd.
ch-run execs the command in its own process (no PID namespace, no init): status and
signals pass through, stdin, stdout and stderr are the caller's.
"""
import errno
import os
import stat
import time

from ..errors import BadImageDir, CantWrite, EngineFailed, EngineUnavailable, UsageError
from ..fastjson import loads_json
from ..nodelocal import lock_dir, locked_temp_dir, private_dir, remove_abandoned
from .base import Engine
from .hot import find_program

CACHE_ENV = "DOCKER_DIR_CACHE"
ROOT = "root"
RUN_FILE = "run.json"
UNPACKING = ".unpacking-"
PRUNING = ".pruning-"
# What ch-run mounts over (dev, proc, sys, tmp; home with --home), and mnt, which users expect.
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "home", "mnt")
# Container paths ch-run mounts itself: a bind below them is made there, not in the tree.
MOUNTED_BY_CH_RUN = ("/dev", "/proc", "/sys", "/tmp")
# What dockerd gives a container whose image does not set them (HOME: a user the image's
# /etc/passwd does not list, as docker-dir's --user UID:GID normally is).
DEFAULT_ENV = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("HOME", "/"))
TOUCH_EVERY = 3600
MAX_LINKS = 40
INSTALL_HINT = ("install Charliecloud >= 0.31 (Debian, Ubuntu: apt-get install charliecloud-runtime), "
                "or choose another engine with --engine or DOCKER_DIR_ENGINE")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_dir():
    return os.environ.get(CACHE_ENV) or f"/var/tmp/docker-dir-{os.geteuid()}"


class CharliecloudEngine(Engine):
    name = "charliecloud"
    program = "ch-run"
    start_hint = "ch-run needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0)"

    def __init__(self, binary=None):
        binary = binary or find_program(self.program)
        if not binary:
            raise EngineUnavailable(f"ch-run is not installed (not found on PATH): {INSTALL_HINT}")
        super().__init__(binary)
        self._cache = None

    def cache(self):
        """The cache directory, made if missing, refused if it is not the caller's alone."""
        if self._cache is None:
            self._cache = private_dir(cache_dir(), "cache directory",
                                      f"set {CACHE_ENV} to a directory of your own")
        return self._cache

    def image_ref(self, config_hex):
        return config_hex

    def has_image(self, ref):
        return os.path.isfile(os.path.join(self.cache(), ref, RUN_FILE))

    def stored_digest(self, digests):
        return None  # no store an image could already be in under another name

    def inspect_id(self, ref):
        """What docker-dir-save asks first: no image can be saved from here."""
        raise UsageError(f"charliecloud keeps no images to save {ref} from: it runs image directories; save with "
                         "--engine docker or podman")

    # -- unpacking -------------------------------------------------------------
    def load(self, image, ref, on_bytes=None, held=0):
        import signal

        from ..format.unpack import apply_layers, remove_tree

        cache = self.cache()
        remove_stale(cache)
        entry = os.path.join(cache, ref)
        # A signal between mkdtemp and the `try` below would leave the temp dir behind.
        catchable = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, catchable)
        try:
            tmp, lock_fd = locked_temp_dir(cache, f".{ref}{UNPACKING}")
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, catchable)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, catchable)  # a pending signal raises here
            try:
                root = os.path.join(tmp, ROOT)
                os.mkdir(root, 0o755)
                apply_layers(_layer_streams(image), root, on_bytes)
                config = image.config_json()
                settings = config.get("config") if isinstance(config, dict) else None
                settings = settings if isinstance(settings, dict) else {}
                prepare_tree(root, settings.get("Env"))
                _write_run_file(tmp, settings)
                _put_in_place(tmp, entry, cache)
            except OSError as err:
                raise CantWrite(f"{cache}: cannot unpack {image.image_dir.path} there ({err.strerror}); free "
                                f"space, or set {CACHE_ENV} to another directory") from None
        except BaseException:
            remove_tree(tmp)
            raise
        finally:
            os.close(lock_fd)

    def prune_cache(self, days):
        """Remove the entries not used for `days` days, and what interrupted unpacks left."""
        from ..format.unpack import remove_tree

        cache = self.cache()
        remove_stale(cache)
        cutoff = time.time() - days * 86400
        removed = freed = 0
        for name in os.listdir(cache):
            path = os.path.join(cache, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if name.startswith(".") or not stat.S_ISDIR(st.st_mode) or st.st_mtime >= cutoff:
                continue
            # Out of the way first: an exec arriving now unpacks afresh instead of using a half-removed tree.
            doomed, lock_fd = _move_aside(cache, name)
            if doomed is None:
                continue
            try:
                freed += _allocated(doomed)
                remove_tree(doomed)
                removed += 1
            finally:
                os.close(lock_fd)
        return removed, freed, cache

    # -- running ---------------------------------------------------------------
    def unsupported(self, request):
        if request.network not in (None, "host"):
            return (f"--network {request.network}: charliecloud has no network isolation, commands use the "
                    "host's network; leave --network out (or use --network host)")
        if request.user is not None and not all(p.isdigit() for p in request.user.split(":", 1)):
            return f"--user {request.user}: charliecloud takes a numeric UID[:GID]"
        for env in request.env:
            if env.startswith("="):
                return f"-e {env}: no variable name"
        named = {os.path.abspath(arg) for arg in request.command}
        for mount in request.mounts:
            problem = _unsupported_mount(mount, named)
            if problem:
                return problem
        for arg in request.extra_args:
            if arg in ("-w", "--write"):
                return (f"--engine-arg={arg}: would make the unpacked image writable, and every later exec "
                        "reuses it")
        return None

    def run_argv(self, request):
        entry = os.path.join(self.cache(), request.image)
        try:
            with open(os.path.join(entry, RUN_FILE), "rb") as stream:
                run = loads_json(stream.read())
            used = os.stat(entry).st_mtime
        except (OSError, ValueError):
            raise EngineFailed(f"the unpacked image {entry} went away or is damaged (pruned meanwhile?); "
                               "run again to unpack it") from None
        if used < time.time() - TOUCH_EVERY:
            os.utime(entry)
        if "USER" not in os.environ:  # ch-run refuses to start without it
            import pwd

            try:
                os.environ["USER"] = pwd.getpwuid(os.getuid()).pw_name
            except KeyError:
                os.environ["USER"] = str(os.getuid())
        root = os.path.join(entry, ROOT)
        argv = [self.binary, "--unset-env=*", "--env-no-expand"]
        if request.tty and os.environ.get("TERM"):
            argv.append(_set_env("TERM", os.environ["TERM"]))  # dockerd sets one for a terminal too
        argv.append("--set-env")  # the image's Env, from root/ch/environment
        argv += [_set_env(*line.split("=", 1)) for line in run.get("Env") or ()]
        for env in request.env:
            name, value = env.split("=", 1) if "=" in env else (env, os.environ.get(env))
            # NAME alone takes the caller's value, and unsets the variable where the caller has none.
            argv.append(_set_env(name, value) if value is not None else f"--unset-env={_glob_escape(name)}")
        # Private and thrown away, as a container's /tmp is (a tmpfs; the image's read-only root has no other place).
        argv.append("--private-tmp")
        if request.user is not None:
            uid, _, gid = request.user.partition(":")
            argv += ["--uid", uid] + (["--gid", gid] if gid else [])
        workdir = request.workdir or run.get("WorkingDir") or "/"
        root_fd = os.open(root, _DIR)
        try:
            argv += _binds(root_fd, request.mounts)
            targets = [os.path.normpath(m.target) for m in request.mounts]
            if not _below(os.path.normpath(workdir), list(MOUNTED_BY_CH_RUN) + targets):
                make_path(root_fd, workdir)  # dockerd makes a missing workdir too
        finally:
            os.close(root_fd)
        argv += ["--cd", workdir]
        return argv + request.extra_args + [root, "--", *_command(request, run)]


ENGINE = CharliecloudEngine


# -- the tree ------------------------------------------------------------------

def _layer_streams(image):
    """The layer files, opened one at a time as apply_layers reaches them."""
    from ..format.imagedir import open_regular

    for layer in image.layers:
        shown = image.image_dir.join(layer.path)
        try:
            stream = open_regular(image.image_dir.resolve(layer.path))
        except OSError as err:
            raise BadImageDir(f"{shown}: cannot read the layer ({err.strerror})") from None
        stream.raw.name = shown  # names it in apply_layers' errors
        with stream:
            yield stream


def prepare_tree(root, env):
    """Add to an unpacked tree what ch-run needs: its mount points, etc/passwd and
    etc/group (it binds its own over them), and ch/environment. What the image has is
    kept, but for /ch/environment, written anew from the config as Charliecloud's own
    tools do, and a /ch that is not a directory (a name Charliecloud claims)."""
    from ..format.unpack import remove_tree

    root_fd = os.open(root, _DIR)
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
    entries = _env_entries(env)
    names = {entry.split("=", 1)[0] for entry in entries}
    lines = [f"{name}='{value}'" for name, value in DEFAULT_ENV if name not in names]
    lines += ["{}='{}'".format(*entry.split("=", 1)) for entry in entries if "\n" not in entry]
    return "".join(line + "\n" for line in lines).encode()


def _env_entries(env):
    """Env entries ch-run can set: NAME=VALUE with a name."""
    return [e for e in env or () if isinstance(e, str) and e.partition("=")[0] and "=" in e and "\0" not in e]


def _write_run_file(entry, settings):
    import json

    def words(value):
        return [w for w in value if isinstance(w, str)] if isinstance(value, list) else None

    workdir = settings.get("WorkingDir")
    run = {"Entrypoint": words(settings.get("Entrypoint")), "Cmd": words(settings.get("Cmd")),
           "WorkingDir": workdir if isinstance(workdir, str) and workdir.startswith("/") else None,
           "Env": [e for e in _env_entries(settings.get("Env")) if "\n" in e]}
    with open(os.path.join(entry, RUN_FILE), "w", encoding="utf-8") as out:
        json.dump(run, out)


def _put_in_place(tmp, entry, cache):
    """Rename the finished entry into place. An incomplete one found there (a removal by
    hand that stopped half-way) goes first; a complete one (another node sharing the
    cache made it meanwhile) is kept and ours dropped."""
    from ..format.unpack import remove_tree

    if os.path.isdir(entry) and not os.path.isfile(os.path.join(entry, RUN_FILE)):
        broken, lock_fd = _move_aside(cache, os.path.basename(entry))
        if broken:
            try:
                remove_tree(broken)
            finally:
                os.close(lock_fd)
    try:
        os.rename(tmp, entry)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        remove_tree(tmp)


def _mkdir_once(name, dir_fd):
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass


def _create_once(name, dir_fd, content):
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=dir_fd)
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
        return os.open(name, _DIR, dir_fd=dir_fd)
    except OSError:
        return None


# -- the cache -----------------------------------------------------------------

def _move_aside(cache, name):
    """(path, locked descriptor) of entry `name` renamed to a temporary name, or (None, None)."""
    path = os.path.join(cache, f".{name}{PRUNING}{os.urandom(6).hex()}")
    try:
        os.rename(os.path.join(cache, name), path)
    except FileNotFoundError:
        return None, None
    fd = lock_dir(path)
    return (path, fd) if fd is not None else (None, None)


def remove_stale(cache):
    """Remove the temporary entries of unpacks and prunes that were killed (nobody holds
    their flock); a live one is left alone."""
    from ..format.unpack import remove_tree

    remove_abandoned(cache, lambda name: name.startswith(".") and (UNPACKING in name or PRUNING in name),
                     remove_tree)


def _allocated(path):
    """Bytes allocated below path, as du counts them (hardlinked files once)."""
    seen, total = set(), 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


# -- binds, workdir, command -------------------------------------------------------

def _unsupported_mount(mount, named):
    spec = mount.spec()
    if not mount.source:
        return f"-v {spec}: anonymous volumes need a daemon; bind a directory: -v SRC:DST"
    if not mount.source.startswith(("/", ".")):
        return f"-v {spec}: named volumes need a daemon; bind a directory: -v /path/to/dir:DST"
    if ":" in mount.source or ":" in mount.target:
        return f"{mount.source}: ch-run cannot bind a path with ':' in it"
    if not mount.target.startswith("/") or os.path.normpath(mount.target) == "/":
        return f"-v {spec}: the destination must be an absolute path other than /"
    for option in filter(None, mount.options.split(",")):
        # ch-run 0.31 binds read-write only; a script named on the command line (the shebang
        # case) is only read by its interpreter, so its bind may well be writable.
        if option != "rw" and not (option == "ro" and os.path.abspath(mount.source) in named):
            return f"-v {spec}: ch-run 0.31 binds read-write only, so '{option}' cannot be honoured"
    if not os.path.exists(mount.source):
        return f"-v {spec}: {mount.source} does not exist (ch-run binds what exists)"
    return None


def _binds(root_fd, mounts):
    """ch-run --bind options, parents first (a bind below another is made after it, as
    dockerd orders them), each destination made in the tree where ch-run needs it."""
    argv, done = [], list(MOUNTED_BY_CH_RUN)
    for mount in sorted(mounts, key=lambda m: os.path.normpath(m.target).count("/")):
        source, target = os.path.abspath(mount.source), os.path.normpath(mount.target)
        if _below(target, done):
            dest = target  # ch-run makes it in what is mounted there, or says why not
        else:
            dest = make_path(root_fd, target, directory=os.path.isdir(source))
        done.append(target)
        argv += ["--bind", f"{source}:{dest}"]
    return argv


def _below(path, tops):
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


def make_path(root_fd, path, directory=True):
    """Make the container path `path` exist in the tree at root_fd, as a directory or an
    empty file; return it without symlinks. Symlinks in the tree are followed as the
    container sees them (an absolute target starts at the tree's top, `..` stops there),
    so nothing outside the tree is ever reached, and ch-run (which follows absolute links
    on the host) is handed a path with none."""
    todo = path.split("/")[::-1]
    done = []
    links = 0
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
        try:
            st = os.lstat(rel, dir_fd=root_fd)
        except FileNotFoundError:
            _make(root_fd, rel, directory or not last, path)
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
            os.close(os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=root_fd))
    except FileExistsError:
        pass  # a parallel exec made it
    except OSError as err:
        raise EngineFailed(f"cannot make {path} in the unpacked image: /{rel}: {err.strerror}") from None


def _set_env(name, value):
    return f"--set-env={name}='{value}'"


def _glob_escape(name):
    return "".join("\\" + c if c in "*?[]\\!+@()|" else c for c in name)


def _command(request, run):
    """Entrypoint and Cmd as `docker run` combines them: CMD replaces Cmd; --entrypoint
    replaces Entrypoint ('' removes it) and drops Cmd."""
    entrypoint, cmd = run.get("Entrypoint") or [], run.get("Cmd") or []
    if request.entrypoint is not None:
        entrypoint, cmd = [request.entrypoint] if request.entrypoint else [], []
    command = entrypoint + (request.command or cmd)
    if not command:
        raise UsageError("no command: give CMD (the image has neither Entrypoint nor Cmd)")
    return command
