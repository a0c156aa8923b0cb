"""Engine layer: one class per container engine, chosen by name.

Adding an engine is one module here plus one line in ENGINES.
"""
import os

from ..errors import UsageError
from .base import find_program

ENGINES = {"docker": ("docker", "DockerEngine"), "podman": ("podman", "PodmanEngine")}


def get_engine(name=None):
    """The engine named, else $DOCKER_DIR_ENGINE, else docker when installed, else podman."""
    name = name or os.environ.get("DOCKER_DIR_ENGINE")
    if not name:
        name = "docker" if find_program("docker") or not find_program("podman") else "podman"
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    module, cls = ENGINES[name]
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), cls)()
