"""Engine layer: one module per container engine, found through ENGINES.

ENGINES is the one list of engines: the --engine choices of every command, the
default choice and the messages all derive from it. Its order is the default's
preference: the first engine whose program is installed. Adding an engine is one
module here defining `ENGINE`, a subclass of base.Engine (its docstring lists what
to implement), plus its name in ENGINES.
"""
import os

from ..direct import find_program
from ..errors import UsageError

ENGINES = ("docker", "podman", "charliecloud")


def engine_class(name):
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    return __import__(f"{__name__}.{name}", fromlist=["ENGINE"]).ENGINE


def get_engine(name=None):
    """The engine named, else $DOCKER_DIR_ENGINE, else the first of ENGINES installed."""
    name = name or os.environ.get("DOCKER_DIR_ENGINE")
    if not name:
        name = next((n for n in ENGINES if find_program(engine_class(n).program)), ENGINES[0])
    return engine_class(name)()
