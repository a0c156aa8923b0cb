"""Text from a registry or a helper, made fit for a one-line error message."""
from ..fastjson import loads_json

SHOWN_CHARS = 200


def cut(text, limit=SHOWN_CHARS):
    """One printable line of at most `limit` characters (an ellipsis marks a cut)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def registry_errors(body):
    """The {"errors": [{"code", "message", "detail"}]} of a registry's error body as one short
    line (a detail only when it is a string, such as the digest of a missing blob); the raw
    text when the body is not that; "" when empty."""
    try:
        parts = []
        for error in loads_json(body)["errors"]:
            detail = error.get("detail")
            part = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
            part += f" ({detail})" if isinstance(detail, str) and detail else ""
            if part and part not in parts:
                parts.append(part)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return cut(body)
    return cut("; ".join(parts))


def error_codes(body):
    """The set of `code`s in a registry's error body (empty when there are none)."""
    try:
        return {error["code"] for error in loads_json(body)["errors"] if isinstance(error.get("code"), str)}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return set()
