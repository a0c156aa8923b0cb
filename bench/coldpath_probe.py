"""Run one docker-dir command in this process with its phases timed (bench_coldpath.py's probe).

usage: coldpath_probe.py LOG LIB TOOL [ARGS...]      (TOOL: exec or save)

Writes LOG as JSON: the probe's first instant, the events [label, depth, start, end]
(time.monotonic(), the clock the parent reads too, so it places the interpreter's
start-up before the first event and the engine's own `run` after the execv), and the
patch targets it could not find (a renamed function must not drop out of the figures
unnoticed). Timed: the cli module's import, imports made while running (outermost
only, >= 0.2 ms), the engine's methods, every request on the daemon's socket, and the
application's steps. The wrappers cost about a microsecond each.
"""
import time

START = time.monotonic()

import builtins  # noqa: E402
import sys  # noqa: E402

LOG, LIB, TOOL = sys.argv[1:4]
sys.argv = [f"docker-dir-{TOOL}"] + sys.argv[4:]
sys.path.insert(0, LIB)

events = []
_depth = [0]
_open = []  # the calls under way: an execv ends them without a return
missing = []


def timed(label, fn, *args, **kwargs):
    depth = _depth[0]
    _depth[0] = depth + 1
    call = (label, depth, time.monotonic())
    _open.append(call)
    try:
        return fn(*args, **kwargs)
    finally:
        _depth[0] = depth
        _open.remove(call)
        events.append(call + (time.monotonic(),))


def wrap(owner, name, label=None):
    """Time every call of owner.name (a module function or a class's method)."""
    real = getattr(owner, name, None)
    if real is None:
        missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
        return

    def wrapper(*args, **kwargs):
        return timed(label(*args) if callable(label) else (label or name), real, *args, **kwargs)

    setattr(owner, name, wrapper)


def _api_path(prefix):
    return lambda sock, path, *rest, **kw: f"{prefix} {path.split('?')[0]}"


def _engine(cls):
    for name in ("has_image", "inspect_id", "stored_digest", "held_layers", "image_layers", "containerd_store",
                 "tag", "load", "load_stream", "save", "image_size", "server_version", "run_command"):
        wrap(cls, name, f"engine.{name}")


def _docker_api(mod):
    wrap(mod, "get", _api_path("GET"))
    wrap(mod, "post", _api_path("POST"))
    wrap(mod.Download, "__init__", "GET /images/get: request sent, reply headers read")
    wrap(mod.Download, "finish", "GET /images/get: finish")
    wrap(mod.Upload, "__init__", "POST /images/load: connect, request headers sent")
    wrap(mod.Upload, "finish", "POST /images/load: the daemon's reply after the last byte")


def _save_engine(mod):
    _functions("extract_stream", "_whole_images", "_adopted")(mod)
    wrap(mod._EngineExport, "check", "engine export: check (the engine asked before the build)")
    wrap(mod._EngineExport, "_export", "engine export: _export")


def _functions(*names, prefix=""):
    def patch(mod):
        for name in names:
            wrap(mod, name, prefix + name)
    return patch


# Patched when the module is imported, so a lazy import keeps its cost where it falls.
PATCHES = {
    "docker_dir.engine.docker_api": _docker_api,
    "docker_dir.engine.docker": lambda mod: _engine(mod.DockerEngine),
    "docker_dir.application.exec": _functions("read_consistently", "get_engine", "run_request", "_load"),
    "docker_dir.application.load": _functions("_lock", "ensure_loaded", "_load", "_unlock"),
    "docker_dir.format.loadstream": _functions("write_load_stream"),
    "docker_dir.application.save": _functions("check_target", "remove_stale_temps", "write_layout",
                                              "move_into_place"),
    "docker_dir.application.save_engine": _save_engine,
    "docker_dir.format.imagedir": lambda mod: wrap(mod.ImageDir, "images", "ImageDir.images (reads the layout)"),
    "docker_dir.cli.exec": _functions("trap_signals", "ready_to_run"),
    "docker_dir.cli.save": _functions("trap_signals", "get_engine", "save", "print_output"),
}
# The modules each command imports (a patch left over is reported as missing).
USED_BY = {
    "exec": ("docker_dir.engine.docker_api", "docker_dir.engine.docker", "docker_dir.application.exec",
             "docker_dir.application.load", "docker_dir.format.loadstream", "docker_dir.format.imagedir",
             "docker_dir.cli.exec"),
    "save": ("docker_dir.engine.docker_api", "docker_dir.engine.docker", "docker_dir.application.save",
             "docker_dir.application.save_engine",
             "docker_dir.format.imagedir", "docker_dir.cli.save"),
}
for _name in set(PATCHES) - set(USED_BY[TOOL]):
    del PATCHES[_name]


def patch_imported():
    for name in [n for n in PATCHES if n in sys.modules]:
        PATCHES.pop(name)(sys.modules[name])


_real_import = builtins.__import__
_importing = [False]


def _timed_import(name, globals=None, locals=None, fromlist=(), level=0):
    if _importing[0]:
        return _real_import(name, globals, locals, fromlist, level)
    _importing[0] = True
    start = time.monotonic()
    try:
        return _real_import(name, globals, locals, fromlist, level)
    finally:
        end = time.monotonic()
        _importing[0] = False
        if end - start >= 0.0002:
            base = name
            if level:
                package = (globals or {}).get("__package__") or ""
                base = package.rsplit(".", level - 1)[0] + (f".{name}" if name else "")
            label = f"import {base}" + (f" ({', '.join(fromlist)})" if fromlist else "")
            events.append((label, _depth[0], start, end))
        patch_imported()


def dump(execv=False):
    """Write the log. Its own time (json's import, the write) is left out: what follows
    is measured from `written`, what docker-dir did ends at `called`."""
    called = time.monotonic()
    import json

    data = {"start": START, "called": called, "execv": execv, "missing": missing + sorted(PATCHES),
            "events": events + [call + (called,) for call in _open]}
    with open(LOG, "w") as out:
        json.dump(data, out)
        out.flush()
        data["written"] = time.monotonic()
        out.seek(0)
        out.truncate()
        json.dump(data, out)


def main():
    import importlib

    cli = timed(f"import docker_dir.cli.{TOOL} (the bin script's import)", importlib.import_module,
                f"docker_dir.cli.{TOOL}")
    patch_imported()
    if TOOL == "exec":
        real_replace = cli.replace_process

        def replace_process(argv, env=None):
            dump(execv=True)
            real_replace(argv, env)

        cli.replace_process = replace_process
    builtins.__import__ = _timed_import
    real_exit = getattr(cli, "exit_now", None)  # revisions whose commands end with os._exit
    if real_exit:
        def exit_now(code):
            builtins.__import__ = _real_import
            dump()
            real_exit(code)

        cli.exit_now = exit_now
    status = timed("entry_point", cli.entry_point)
    builtins.__import__ = _real_import
    dump()
    return status


if __name__ == "__main__":
    sys.exit(main())
