"""Registry credentials, found where `docker login` and `podman login` put them.

Files, first answer wins: $REGISTRY_AUTH_FILE, podman's auth.json ($XDG_RUNTIME_DIR/
containers/auth.json, or /run/containers/UID/auth.json when XDG_RUNTIME_DIR is unset,
as podman writes it; then $XDG_CONFIG_HOME/containers/auth.json, which podman reads
too), then docker's $DOCKER_CONFIG/config.json (~/.docker/config.json; podman 4 logs
in there when DOCKER_CONFIG is set).
In each: `credHelpers[host]`, else `credsStore` (docker's: it answers for every host),
else an `auths` entry: its key is a host or, as podman writes them, a host and a repository
path (`quay.io/team`), matched longest first (`quay.io/team/tool`, `quay.io/team`, `quay.io`),
so two accounts on one registry each answer for their own repositories. An entry holds
`auth` (base64 "user:password"), or an `identitytoken` (a refresh token, from `docker login`
against a registry whose token service gives one, or `az acr login`), which the token
service exchanges for access tokens (auth.py). Helpers are `docker-credential-NAME get`;
one answering the user `<token>` gives an identity token too.

Secrets live in Secret objects from the moment they are read, so no repr, message or
traceback that shows local variables can print them.
"""
import base64
import os
import shutil
import threading

from ..errors import AuthRefused, RegistryUnavailable, UsageError
from ..fastjson import loads_json, read_bounded
from .messages import cut

# A config file is a few kB; this only bounds a damaged one.
_MAX_CONFIG_BYTES = 4 << 20
_HELPER_TIMEOUT = 30
_NOT_FOUND = "credentials not found in native keychain"
_DOCKER_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
# docker's key for Docker Hub, in config.json and towards credential helpers
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_SECRET_FIELDS = ("auth", "identitytoken", "password")


class Secret:
    """A string that never shows itself: reveal() is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value):
        self._value = value

    def reveal(self):
        return self._value

    def __repr__(self):
        return "<secret>"

    __str__ = __repr__


class Credentials:
    """A username and its secret (a password or access token, or an identity token: a
    refresh token only a token service takes), and where they were found."""

    __slots__ = ("username", "secret", "source", "identity_token")

    def __init__(self, username, secret, source, identity_token=False):
        self.username = username
        self.secret = secret if isinstance(secret, Secret) else Secret(secret)
        self.source = source
        self.identity_token = identity_token

    def __iter__(self):  # (username, secret), as the contract names the pair
        return iter((self.username, self.secret))

    def basic_authorization(self, registry):
        """The Authorization header value for HTTP Basic, as a Secret."""
        if self.identity_token:
            raise AuthRefused(f"the login for {registry} ({self.source}) is an identity token, which only a "
                              "registry with a token service takes, and this one asks for a password (Basic); "
                              f"log in with a username and password: 'docker login {registry}'")
        pair = f"{self.username}:{self.secret.reveal()}".encode("utf-8", "surrogatepass")
        return Secret("Basic " + base64.b64encode(pair).decode("ascii"))

    def __repr__(self):
        return f"Credentials(username={self.username!r}, secret=<secret>, source={self.source!r})"


def credentials_for(registry, repository=None):
    """Credentials for `repository` of `registry` (host[:port] as written, "docker.io" for
    Docker Hub), or None."""
    names = _host_names(registry)
    for path in auth_files():
        config = _read_config(path)
        if config is None:
            continue
        helpers = config.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if _key_host(key) in names and isinstance(helper, str) and helper:
                    return _ask_helper(helper, registry, f"credHelpers in {path}")
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            return _ask_helper(store, registry, f"credsStore in {path}")
        auths = config.get("auths")
        if isinstance(auths, dict):
            for _, entry in sorted(_matching_keys(auths, names, repository), key=lambda found: -found[0]):
                found = _from_auth_entry(entry, registry, path)
                if found:
                    return found
    return None


def _matching_keys(auths, names, repository):
    """(length of the path matched, entry) of the `auths` entries that cover `repository`:
    a host key covers every repository (length 0); a podman key HOST/PATH covers PATH and
    what lies under it."""
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        if "://" in key:  # docker's older keys: a URL, whose path is the API's, not a repository
            if _key_host(key) in names:
                yield 0, entry
            continue
        host, _, path = key.lower().rstrip("/").partition("/")
        if host not in names:
            continue
        if not path:
            yield 0, entry
        elif repository is not None and (repository == path or repository.startswith(path + "/")):
            yield len(path), entry


def auth_files():
    """Where logins are kept, in the order they are read."""
    paths = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(os.environ["REGISTRY_AUTH_FILE"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    paths.append(os.path.join(runtime, "containers", "auth.json") if runtime
                 else f"/run/containers/{os.getuid()}/auth.json")
    home = os.path.expanduser("~")
    paths.append(os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                              "containers", "auth.json"))
    docker_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    paths.append(os.path.join(docker_dir, "config.json"))
    return paths


def _host_names(registry):
    host = registry.lower()
    return _DOCKER_HUB_NAMES if host in _DOCKER_HUB_NAMES else (host,)


def _key_host(key):
    """The host[:port] of a config key, which may be a URL ("https://index.docker.io/v1/")."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
            break
    return key.split("/", 1)[0].lower()


def _read_config(path):
    """The config at `path` with its secret fields wrapped in Secret, or None if absent."""
    try:
        with open(path, "rb") as stream:
            raw = read_bounded(stream, _MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return None
    except OSError as err:  # TooLarge is a ValueError, not an OSError
        raise UsageError(f"cannot read registry credentials from {path}: {err.strerror}; "
                         "fix its permissions or remove it") from None
    except ValueError as err:
        raise UsageError(f"cannot read registry credentials from {path}: {err}; fix or remove it") from None
    try:
        config = loads_json(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        config = None
    raw = None  # the file's secrets must not outlive this point as a plain local
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a JSON object as docker and podman write it; "
                         "fix it, or remove it and log in again")
    auths = config.get("auths")
    if isinstance(auths, dict):
        for entry in auths.values():
            if isinstance(entry, dict):
                for field in _SECRET_FIELDS:
                    if field in entry:
                        entry[field] = Secret(entry[field])
    return config


def _from_auth_entry(entry, registry, path):
    token = entry.get("identitytoken")
    if isinstance(token, Secret) and isinstance(token.reveal(), str) and token.reveal():
        found = _decode_auth(entry["auth"], path) if isinstance(entry.get("auth"), Secret) else None
        return Credentials(found.username if found else "<token>", token, path, identity_token=True)
    if isinstance(entry.get("auth"), Secret):
        found = _decode_auth(entry["auth"], path)
        if found is None:
            raise UsageError(f"the login for {registry} in {path} is damaged (its 'auth' is not base64 of "
                             f"user:password); log in again with 'docker login {registry}'")
        return found
    return None


def _decode_auth(encoded, path):
    """Credentials from base64 "user:password", or None when malformed. Never raises, so the
    decoded secret is in no frame of a traceback."""
    try:
        text = base64.b64decode(encoded.reveal(), validate=True).decode("utf-8")
    except (ValueError, TypeError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    username, colon, password = text.partition(":")
    if not colon or not username:
        return None
    return Credentials(username, Secret(password), path)


def _ask_helper(name, registry, where):
    """Ask `docker-credential-NAME get`, as docker does: the server on stdin, JSON on stdout."""
    from .. import process  # plumbum: only when a helper must run

    program = f"docker-credential-{name}"
    if threading.current_thread() is not threading.main_thread():
        # fork() with other threads running can deadlock the child (a lock held by another
        # thread at the fork stays held), and the helper's PDEATHSIG would fire when this
        # thread, not the command, ends: Registry.log_in looks logins up first.
        raise RuntimeError(f"{program} would be started from a worker thread; call Registry.log_in first")
    path = shutil.which(program)
    if path is None:
        raise RegistryUnavailable(f"the credential helper {program} ({where}) is not installed or not on PATH; "
                                  "install it, or remove it from that file")
    server = _DOCKER_HUB_KEY if registry.lower() in _DOCKER_HUB_NAMES else registry
    try:
        status, out, err = process.run([path, "get"], timeout=_HELPER_TIMEOUT, input=server)
    except (OSError, process.NoAnswer) as failure:
        raise RegistryUnavailable(f"the credential helper {program} ({where}) failed to run: {failure}") from None
    if status != 0:
        # Helpers print their errors on stdout (docker-credential-helpers' protocol).
        if _NOT_FOUND in out or _NOT_FOUND in err:
            return None
        raise RegistryUnavailable(f"the credential helper {program} ({where}) failed (exit status {status}): "
                                  f"{cut(out.strip() or err)}")
    answer = _parse_helper_answer(out, f"{program} ({where})")
    out = None  # the secret, as text: gone before anything below can raise
    if answer is None:
        raise RegistryUnavailable(f"the credential helper {program} ({where}) did not answer with JSON "
                                  "holding Username and Secret; check that helper")
    if answer.username == "<token>":  # docker-credential-helpers' name for an identity token
        answer.identity_token = True
    return answer if answer.username else None


def _parse_helper_answer(out, source):
    """Credentials from a helper's JSON answer, or None when it is not one. Never raises."""
    try:
        answer = loads_json(out)
    except (ValueError, RecursionError):
        return None
    if not isinstance(answer, dict):
        return None
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str):
        return None
    return Credentials(username, Secret(secret), source)
