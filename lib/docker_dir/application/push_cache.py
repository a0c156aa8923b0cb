"""What docker-dir-push remembers between pushes, in $XDG_CACHE_HOME/docker-dir
(~/.cache/docker-dir): layer-digests.json,

    {"compressed": {diff hex: {compressor: [hex, size]}},
     "pushed": {registry: {hex: [repositories]}}}

what a layer compressed to (so a re-push asks the registry for the compressed digest
first and compresses only what it lacks), and where blobs were pushed (repositories a
mount may take them from). A compressor is named with its library's version and level
(format/compress.compressor_id): another one's output is never taken for its own.

Pushes run at once share the file: each change is made under an exclusive lock on
layer-digests.json.lock, to the file as it is then (re-read), and written atomically,
so no push loses another's entries. A damaged file counts as empty.
"""
import fcntl
import json
import os

from ..format.compress import compressor_id
from ..format.names import hex_of_digest
from ..fs import write_if_changed
from ..nodelocal import private_dir

_FILE = "layer-digests.json"


def cache_dir():
    """$XDG_CACHE_HOME/docker-dir (~/.cache/docker-dir), made if missing, the caller's own."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass  # private_dir says what is wrong with it
    return private_dir(os.path.join(base, "docker-dir"), "cache directory",
                       "set XDG_CACHE_HOME to a directory of your own")


class Remembered:
    """layer-digests.json of the cache directory `cache`."""

    def __init__(self, cache):
        self.path = os.path.join(cache, _FILE)
        self.data = _read(self.path)

    def compressed(self, diff_hex, method):
        """(hex, size) the layer of uncompressed digest `diff_hex` compressed to, or None."""
        found = _dict(_dict(self.data.get("compressed")).get(diff_hex)).get(compressor_id(method))
        if isinstance(found, list) and len(found) == 2 and hex_of_digest("sha256:" + str(found[0])) \
                and isinstance(found[1], int):
            return found[0], found[1]
        return None

    def remember(self, diff_hex, method, hexd, size):
        self._change(lambda data: _set(data, ["compressed", diff_hex, compressor_id(method)], [hexd, size]))

    def repositories(self, registry, hexd):
        """Repositories of `registry` known to hold blob `hexd`."""
        found = _dict(_dict(self.data.get("pushed")).get(registry)).get(hexd)
        return [r for r in found if isinstance(r, str)] if isinstance(found, list) else []

    def pushed(self, registry, repository, digests):
        def add(data):
            for hexd in digests:
                repositories = _set(data, ["pushed", registry, hexd], None)
                if repository not in repositories:
                    repositories.append(repository)
        self._change(add)

    def _change(self, change):
        """Apply change(data) to the file as it is now, under the lock other pushes (and
        this push's other threads: flock holds per open file) take."""
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _read(self.path)
            change(data)
            write_if_changed(self.path, json.dumps(data, sort_keys=True))
            self.data = data


def _read(path):
    try:
        with open(path, "rb") as stream:
            data = json.loads(stream.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _set(data, keys, value):
    """data[k1][k2]…[kn] = value (None: a list, kept if there), making or mending the
    dicts on the way; returns the value there."""
    for key in keys[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    if value is None:
        if not isinstance(data.get(keys[-1]), list):
            data[keys[-1]] = []
    else:
        data[keys[-1]] = value
    return data[keys[-1]]


def _dict(value):
    return value if isinstance(value, dict) else {}
