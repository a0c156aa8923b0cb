"""json.loads without importing json, and bounded reading of the JSON files engines write.

Shared by the format layer (manifests, configs) and the engine layer (the docker
API's answers, the client config): both sit on hot paths where importing json (and
with it re and enum) would cost about as much as docker-dir-id's whole run
(bench/RESULTS.md has that run's time). `import json` in a function below is that saving.
"""
import os

# No engine writes a manifest, index or config anywhere near this size (a config with
# a thousand history entries is under 1 MB); a larger file is refused before it is read:
# parsing one costs seconds and many times its size in memory.
MAX_JSON_BYTES = 16 << 20


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _make_scanner():
    """The C scanner behind json.loads: same grammar but for NaN/Infinity, which no
    engine writes; None where _json is missing (then json.loads answers)."""
    try:
        import _json
    except ImportError:
        return None

    class Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = staticmethod(_reject_constant)

    return _json.make_scanner(Context())


_scan = _make_scanner()
_SPACE = " \t\n\r"


def loads_json(data):
    """json.loads for the UTF-8 documents engines write; raises ValueError on bad input."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a value at character {stop.value}") from None
    except SystemError:
        # The scanner raises most syntax errors as json.decoder.JSONDecodeError and,
        # when that module was never imported, fails with SystemError instead:
        # let json.loads report the error (bad input only pays for the import).
        import json

        return json.loads(text)
    if text[end:].strip(_SPACE):
        raise ValueError(f"extra data at character {end}")
    return value


class TooLarge(ValueError):
    """A JSON file larger than MAX_JSON_BYTES."""


def read_bounded(stream, limit=MAX_JSON_BYTES):
    """The whole content of an open regular file, refusing one above `limit` bytes
    before reading it (fstat), and one that grew past it while being read."""
    if os.fstat(stream.fileno()).st_size > limit:
        raise TooLarge(f"larger than {limit >> 20} MiB, far beyond what any engine writes")
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"larger than {limit >> 20} MiB, far beyond what any engine writes")
    return data
