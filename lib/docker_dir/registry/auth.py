"""Registry authentication: WWW-Authenticate challenges, Basic, and Bearer tokens from a
token service: distribution's "token authentication" (GET REALM?service=&scope=, with
Basic credentials or none), or, for an identity token, its OAuth2 form (POST REALM with
grant_type=refresh_token), as docker exchanges one.

Tokens are cached per scope set until shortly before they expire, shared by every
thread of one Registry under a lock.
"""
import threading
import time
from urllib.parse import quote, urlencode, urlsplit

from ..errors import AuthRefused, BadRegistryData, RegistryUnavailable
from .credentials import Secret
from .messages import cut, registry_errors
from .retry import Tries, retryable_status
from .transport import TransportFailure, host_port

MAX_TOKEN_ANSWER = 1 << 20  # a JWT is a few kB; this only bounds a hostile token service
MAX_ERROR_BODY = 16 << 10
DEFAULT_LIFETIME = 60  # seconds, when the answer does not say (the token spec's default)
_EARLY = 10  # renew this many seconds before a token expires: a request takes time to arrive
CLIENT_ID = "docker-dir"  # who asks, in an OAuth2 request (the spec requires one)


def parse_challenges(header):
    """[(scheme in lowercase, {param in lowercase: value})] of a WWW-Authenticate value:
    `Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"`.
    Quoted values may hold commas and backslash escapes."""
    challenges = []
    params = None
    i, n = 0, len(header)
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        start = i
        while i < n and header[i] not in " \t,=":
            i += 1
        word = header[start:i]
        j = i
        while j < n and header[j] in " \t":
            j += 1
        if j < n and header[j] == "=" and params is not None and word:
            value, i = _param_value(header, j + 1)
            params[word.lower()] = value
        elif word:
            params = {}
            challenges.append((word.lower(), params))
        else:  # a stray "=" with no scheme before it
            i = j + 1
    return challenges


def _param_value(header, i):
    """(value, index after it) of a token or quoted-string starting at or after i."""
    n = len(header)
    while i < n and header[i] in " \t":
        i += 1
    if i < n and header[i] == '"':
        value = []
        i += 1
        while i < n and header[i] != '"':
            if header[i] == "\\" and i + 1 < n:
                i += 1
            value.append(header[i])
            i += 1
        return "".join(value), i + 1
    start = i
    while i < n and header[i] not in " \t,":
        i += 1
    return header[start:i], i


def scope(repository, actions):
    """A token scope: repository:NAME:pull or repository:NAME:pull,push."""
    return f"repository:{repository}:{actions}"


class TokenCache:
    """Bearer tokens by (realm, service, scopes), each until shortly before it expires."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens = {}

    def get(self, key):
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None or entry[1] <= time.monotonic():
                return None
            return entry[0]

    def put(self, key, token, lifetime):
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - _EARLY, 1))

    def drop(self, key, token):
        """Forget `token` (refused by the registry), unless another thread already replaced it."""
        with self._lock:
            entry = self._tokens.get(key)
            if entry is not None and entry[0] is token:
                del self._tokens[key]


def fetch_token(transport, registry, challenge, scopes, credentials, plain_ok):
    """(token as a Secret, lifetime in seconds) from the token service a Bearer challenge
    names. Credentials go only over HTTPS, or plain HTTP to a host `plain_ok` accepts."""
    realm = challenge.get("realm", "")
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRegistryData(f"{registry} names a token service that is not an HTTP address "
                              f"('{cut(realm, 80)}'); the registry is misconfigured")
    where = host_port(realm)
    if credentials is not None and parts.scheme == "http" and not plain_ok(where):
        raise AuthRefused(f"the token service of {registry} ({where}) is plain HTTP: docker-dir sends no "
                          f"credentials there unless it is a loopback host or given with --insecure-registry")
    tries = Tries()
    while True:
        try:
            if credentials is not None and credentials.identity_token:
                response = _exchange_identity_token(transport, realm, challenge, scopes, credentials)
            else:
                response = _ask_for_token(transport, realm, challenge, scopes, credentials, registry)
            if retryable_status(response.status) and tries.again(response.header("Retry-After")):
                response.close()
                continue
            if response.status != 200:
                body = response.read_prefix(MAX_ERROR_BODY)
                raise _token_refused(registry, where, response.status, body, credentials)
            body = response.read_limited(MAX_TOKEN_ANSWER)
            break
        except TransportFailure as failure:
            if failure.retryable and tries.again():
                continue
            raise RegistryUnavailable(f"cannot get a token for {registry} from {where}: {failure}") from None
    if body is None:
        raise BadRegistryData(f"the token service of {registry} ({where}) answered with more than "
                              f"{MAX_TOKEN_ANSWER >> 20} MiB; it is misbehaving")
    token, lifetime = _parse_token_answer(body)
    body = None  # the token, as bytes: gone before anything below can raise
    if token is None:
        raise BadRegistryData(f"the token service of {registry} ({where}) answered without a token "
                              "(JSON with 'token' or 'access_token'); it is misbehaving")
    return token, lifetime


def _ask_for_token(transport, realm, challenge, scopes, credentials, registry):
    """GET REALM?service=&scope=&account=, with Basic credentials or none."""
    query = [f"service={quote(challenge['service'], safe='')}"] if challenge.get("service") else []
    query += [f"scope={quote(item, safe='')}" for item in scopes]
    if credentials is not None:
        query.append(f"account={quote(credentials.username, safe='')}")
    url = realm + ("&" if urlsplit(realm).query else "?") + "&".join(query)
    return transport.request("GET", url, {"Accept": "application/json"},
                             authorization=credentials.basic_authorization(registry) if credentials else None)


def _exchange_identity_token(transport, realm, challenge, scopes, credentials):
    """POST REALM with the OAuth2 refresh-token grant (distribution's "OAuth2 token"
    specification), the identity token in the form: as docker does."""
    form = [("grant_type", "refresh_token"), ("refresh_token", credentials.secret.reveal()),
            ("client_id", CLIENT_ID), ("scope", " ".join(scopes))]
    if challenge.get("service"):
        form.append(("service", challenge["service"]))
    return transport.request("POST", realm, {"Accept": "application/json",
                                             "Content-Type": "application/x-www-form-urlencoded"},
                             urlencode(form).encode())


def _parse_token_answer(body):
    """(Secret token or None, lifetime). Never raises, so the token is in no traceback."""
    from ..fastjson import loads_json

    try:
        answer = loads_json(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None, 0
    if not isinstance(answer, dict):
        return None, 0
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token.isprintable():
        return None, 0
    lifetime = answer.get("expires_in")
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < DEFAULT_LIFETIME:
        lifetime = DEFAULT_LIFETIME  # the spec's minimum
    return Secret(token), lifetime


def _token_refused(registry, where, status, body, credentials):
    said = registry_errors(body)
    said = f": {said}" if said else ""
    if credentials is not None and credentials.identity_token and status in (400, 401, 403):
        said = _oauth_error(body) or said
        return AuthRefused(f"the token service of {registry} ({where}) refused the identity token from "
                           f"{credentials.source} (HTTP {status}{said}); it may have expired or been revoked: "
                           f"{login_advice(registry)} again")
    if status in (401, 403):
        return AuthRefused(f"the token service of {registry} ({where}) refused "
                           + (f"the credentials from {credentials.source}" if credentials else "anonymous access")
                           + f" (HTTP {status}{said}); {login_advice(registry)}")
    if status >= 500:
        return RegistryUnavailable(f"the token service of {registry} ({where}) failed (HTTP {status}{said}); "
                                   "try again later")
    return BadRegistryData(f"the token service of {registry} ({where}) answered HTTP {status}{said}")


def login_advice(registry):
    return f"log in with 'docker login {registry}' or 'podman login {registry}'"


def _oauth_error(body):
    """": error: description" of an OAuth2 error answer ({"error", "error_description"}), or ""."""
    from ..fastjson import loads_json

    try:
        answer = loads_json(body)
        parts = [answer.get(key) for key in ("error", "error_description")]
    except (ValueError, RecursionError, AttributeError):
        return ""
    said = ": ".join(cut(part, 100) for part in parts if isinstance(part, str) and part)
    return f": {said}" if said else ""
