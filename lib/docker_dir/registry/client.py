"""A registry client (the OCI distribution API, as docker and podman use it): manifests
and blobs in and out, no container engine involved.

Every method raises docker-dir's errors, never a raw exception. Registries are not
trusted: every answer is bounded, blobs and manifests are checked against their
digests, and nothing larger than expected is kept.
"""
import hashlib
import ipaddress
import os
import re
import threading
from urllib.parse import quote, urljoin, urlsplit

from ..errors import (AuthRefused, BadImageDir, BadRegistryData, CantWrite, DigestMismatch, DockerDirError,
                      RegistryUnavailable, SelectionError)
from ..format.names import hex_of_digest
from . import transport as tp
from .auth import TokenCache, fetch_token, login_advice, parse_challenges, scope
from .credentials import Secret, credentials_for
from .messages import cut, error_codes, registry_errors
from .reference import api_host, check_repository, check_tag, is_tag
from .retry import ATTEMPTS, Tries, retryable_status

MAX_MANIFEST = 4 << 20  # the limit distribution itself puts on a manifest
MAX_TAG_LIST = 16 << 20  # all the pages of a repository's tag list: some 100,000 long tags
MAX_ERROR_BODY = 16 << 10
READ_CHUNK = 1 << 20
_DRAIN = 1 << 20
_GENERIC_TYPES = ("", "application/json", "text/plain", "application/octet-stream")
_PULL, _PUSH = "pull", "pull,push"


class Registry:
    """One registry (host[:port] as written; "docker.io" is Docker Hub). Safe to share between
    threads, which share its connections and tokens; but call log_in(repository) from the
    main thread before worker threads use a repository."""

    def __init__(self, registry_host, insecure=(), timeout=tp.TIMEOUT):
        self.host = registry_host
        self._api = api_host(registry_host)
        self._insecure = {name.lower() for name in insecure}
        self._transport = tp.Transport(timeout)
        self._lock = threading.Lock()
        self._base = None  # "https://HOST" or "http://HOST", once GET /v2/ answered
        self._challenge = None  # (scheme, params) of the registry's WWW-Authenticate, None when open
        self._credentials = {}  # repository -> Credentials or None: the login that covers it
        self._tokens = TokenCache()
        self._token_lock = threading.Lock()
        # A request went unanswered through all of its tries (a registry that is down): the
        # next ones try once until an answer comes, or a git-annex remote's every key (and
        # git-annex's own retries of each) would wait out the backoff again.
        self._unanswered = False

    def __repr__(self):
        return f"Registry({self.host!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._transport.close()

    # -- the API -------------------------------------------------------------------------

    def log_in(self, repository):
        """Find the login that covers `repository` and reach the registry: from the main
        thread, before worker threads use the repository, since a credential helper may
        run (credentials.py says why only the main thread may start one)."""
        check_repository(repository)
        self._credentials_for(repository)
        self._ensure_base()

    def get_manifest(self, repo, reference, accept):
        """(bytes, media type, digest) of a manifest or index, by tag or digest. `accept` is
        a media type or a list of them, most wanted first."""
        check_repository(repo)
        wanted = "sha256:" + _checked_digest(reference) if ":" in reference else None
        if not wanted:
            check_tag(reference)
        what = f"manifest {reference}" if wanted else f"tag {reference}"
        headers = {"Accept": accept if isinstance(accept, str) else ", ".join(accept)}
        response = self._call("GET", f"/v2/{repo}/manifests/{reference}", repo, [scope(repo, _PULL)], headers)
        if response.status != 200:
            raise self._refusal(response, repo, f"get {what} of repository {repo}", what)
        length = _content_length(response)
        data = None if length is not None and length > MAX_MANIFEST else self._read_limited(response, MAX_MANIFEST)
        if data is None:
            response.close()
            raise BadRegistryData(f"{self.host} sent a {what} of repository {repo} larger than "
                                  f"{MAX_MANIFEST >> 20} MiB, the most a registry accepts; it is misbehaving")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if wanted and digest != wanted:
            raise DigestMismatch(f"{self.host} sent content with digest {digest} for manifest {wanted} of "
                                 f"repository {repo}; try again, or tell the registry's operator")
        claimed = response.header("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatch(f"{self.host} named the {what} of repository {repo} {cut(claimed, 80)} but "
                                 f"sent content with digest {digest}; try again, or tell the registry's operator")
        return data, self._media_type(data, response, f"the {what} of repository {repo}"), digest

    def list_tags(self, repo):
        """The tags of `repo`, as its tag list (GET /v2/NAME/tags/list) names them, each
        once, following the list's pages (a Link header with rel="next", as distribution
        and the OCI distribution spec write it). Every tag is checked against the tag
        grammar: a tag is also a file name (docker-dir-mirror's PARENT/TAG)."""
        check_repository(repo)
        path = f"/v2/{repo}/tags/list"
        tags, query, budget = {}, "", MAX_TAG_LIST
        while True:
            response = self._call("GET", path + query, repo, [scope(repo, _PULL)], {"Accept": "application/json"})
            if response.status != 200:
                raise self._refusal(response, repo, f"list the tags of repository {repo}", "tag list")
            data = self._read_limited(response, budget)
            if data is None:
                raise BadRegistryData(f"{self.host} sent a tag list of repository {repo} larger than "
                                      f"{MAX_TAG_LIST >> 20} MiB; it is misbehaving")
            budget -= len(data)
            page = self._tag_page(data, repo)
            following = self._next_page(response, path, repo)
            if following is not None and not set(page) - set(tags):  # bounded: each page adds a tag
                raise BadRegistryData(f"{self.host} sent a page of the tag list of repository {repo} that adds no "
                                      "tag but points to another page; it is misbehaving")
            tags.update(dict.fromkeys(page))
            if following is None:
                return list(tags)
            query = following

    def blob_size(self, repo, digest):
        """The size of a blob in `repo`, or None when the registry does not have it there."""
        check_repository(repo)
        _checked_digest(digest)
        response = self._call("HEAD", f"/v2/{repo}/blobs/{digest}", repo, [scope(repo, _PULL)])
        response.close()
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._refusal(response, repo, f"look up blob {digest} in repository {repo}", f"blob {digest}")
        size = _content_length(response)
        if size is None:
            raise BadRegistryData(f"{self.host} gave no valid size (Content-Length) for blob {digest} "
                                  f"of repository {repo}; it is misbehaving")
        return size

    def fetch_blob(self, repo, digest, size, path, on_bytes=None):
        """Download a blob of `size` bytes into `path` (a new file), checking its size and
        digest; on any failure the file is removed. A dropped transfer resumes where it
        stopped (Range), within the retry policy's bounds (retry.py). `on_bytes(n)` reports
        progress; a negative n takes bytes back when the registry makes us start over."""
        check_repository(repo)
        hex_digest = _checked_digest(digest)
        try:
            out = open(path, "xb")
        except OSError as err:
            raise CantWrite(f"cannot create {path}: {err.strerror}") from None
        try:
            actual = self._download(repo, digest, size, out, path, _Progress(on_bytes))
            try:
                out.close()
            except OSError as err:  # the last buffered bytes did not fit
                raise CantWrite(f"cannot write {path}: {err.strerror}") from None
            if actual != hex_digest:
                raise DigestMismatch(f"blob {digest} of {self.host}/{repo} arrived with digest sha256:{actual}; "
                                     "the registry sent other content: try again, or tell the registry's operator")
        except BaseException:
            try:
                out.close()
            except OSError:
                pass  # already reported: it is why we are here
            os.unlink(path)
            raise

    def mount_blob(self, repo, digest, from_repo):
        """Ask the registry to link a blob of `from_repo` into `repo` without sending it:
        True when it did, False when it wants the blob uploaded."""
        check_repository(repo)
        check_repository(from_repo)
        _checked_digest(digest)
        response = self._call(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={quote(digest, safe='')}&from={quote(from_repo, safe='/')}",
            repo, [scope(repo, _PUSH), scope(from_repo, _PULL)], {"Content-Length": "0"})
        response.close()
        if response.status == 201:
            return True
        if response.status == 202:
            self._abandon_upload(repo, response)
            return False
        if response.status in (401, 403):  # no right to read `from_repo` (another account's): upload, as docker does
            return False
        raise self._refusal(response, repo, f"mount blob {digest} into repository {repo}", f"blob {digest}")

    def upload_blob(self, repo, open_stream, on_bytes=None, digest=None, size=None):
        """Upload a blob; returns its (digest, size). `open_stream(offset)` gives a reader of
        the blob's bytes from `offset` on, the same bytes each time, so a dropped upload goes
        on from what the registry confirms it has (within retry.py's bounds); read to its
        end, the reader's `digest` and `size` say what it gave in all. A blob of known digest
        and size goes up in one PUT; another streams in one PATCH (chunked: compressed as it
        goes, say) and a closing PUT names its digest. `on_bytes(n)` reports progress,
        negative when bytes are sent again."""
        check_repository(repo)
        if digest is not None:
            _checked_digest(digest)
        progress = _Progress(on_bytes)
        scopes = [scope(repo, _PUSH)]
        tries = self._tries()
        location, offset = self._start_upload(repo, scopes, tries), 0
        while True:
            try:
                stream = open_stream(offset)
                body = _Body(stream, offset, None if size is None else size - offset, progress)
                try:
                    if digest is not None and size is not None and offset == 0:
                        self._finish_upload(repo, digest, location, scopes, tries, body, size)
                        return digest, size
                    location = self._patch_upload(repo, location, scopes, tries, body, offset)
                finally:
                    body.close()
                made = "sha256:" + stream.digest
                if digest is not None and made != digest:
                    raise BadImageDir(f"blob {digest} was read as {made} while it was uploaded; check the local "
                                      "copy: docker-dir-id --verify DIR")
                self._finish_upload(repo, made, location, scopes, tries, None, 0)
                return made, stream.size
            except _UploadBroken as broken:
                if not tries.again():
                    raise RegistryUnavailable(f"uploading blob {digest or ''} to {self.host}/{repo} broke "
                                              f"{tries.made} times, the last: {broken}; try again later"
                                              .replace("blob  to", "a blob to")) from None
                if broken.restart:
                    location, offset = self._start_upload(repo, scopes, tries), 0
                else:
                    location, offset = self._upload_status(repo, location, scopes, tries)
                progress.move_to(offset)

    def put_manifest(self, repo, reference, data, media_type):
        """Store a manifest under a tag (or its digest); returns its digest."""
        check_repository(repo)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ":" in reference:
            _checked_digest(reference)
        else:
            check_tag(reference)
        response = self._call("PUT", f"/v2/{repo}/manifests/{reference}", repo, [scope(repo, _PUSH)],
                              {"Content-Type": media_type}, data)
        response.close()
        if response.status not in (200, 201):
            raise self._refusal(response, repo, f"store the manifest {reference} in repository {repo}",
                                f"manifest {reference}")
        claimed = response.header("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise BadRegistryData(f"{self.host} stored the manifest {reference} of repository {repo} as "
                                  f"{cut(claimed, 80)}, not as its digest {digest}; it is misbehaving")
        return digest

    # -- requests, authorization, retries ------------------------------------------------

    def _call(self, method, path, repo, scopes, headers=None, body=None, tries=None, resume=False, chunked=False):
        """The Response to one request (any status: callers judge it), authorized for `scopes`
        with the login that covers `repo`. `path` is /v2/… or an absolute URL (an upload's
        Location). `body` is None, bytes, or a stream sent once. A request that got no answer,
        or a 5xx/429, is tried again as retry.py says (`tries`, shared by the requests of one
        transfer); with `resume` (an upload's body, sent once), such a failure raises
        _UploadBroken for the caller to go on from the registry's state."""
        base = self._ensure_base()
        url = urljoin(base, path)
        tries = tries or self._tries()
        while True:
            try:
                response = self._send_authorized(method, url, repo, scopes, headers, body, chunked)
            except tp.TransportFailure as failure:
                if not failure.retryable:
                    raise self._unavailable(failure) from None
                if resume:
                    raise _UploadBroken(str(failure)) from None
                if tries.again():
                    continue
                self._unanswered = True
                raise self._unavailable(failure, f" ({_attempts(tries.made)})") from None
            self._unanswered = False
            if retryable_status(response.status):
                if resume:
                    response.close()
                    raise _UploadBroken(f"HTTP {response.status}")
                if tries.again(response.header("Retry-After")):
                    response.close()
                    continue
                response.attempts = tries.made
            return response

    def _send_authorized(self, method, url, repo, scopes, headers, body, chunked):
        """Send with this registry's authorization; on 401, once more with a fresh token (or
        with the challenge this answer brings, when it differs from the one /v2/ gave)."""
        authorization, forget = self._authorization(repo, scopes)
        response = self._transport.request(method, url, headers, body, authorization, chunked)
        if response.status != 401:
            return response
        challenge = _pick_challenge(response.header("WWW-Authenticate"))
        if forget is None and challenge in (None, self._challenge):
            return response  # Basic, or nothing asked: the same request would fail the same way
        if forget is not None:
            forget()
        if challenge is not None:
            with self._lock:
                self._challenge = challenge
        response.close()
        if body is not None and not isinstance(body, bytes):
            raise _UploadBroken("the registry asked for a new token")  # a stream cannot be sent twice
        authorization, _ = self._authorization(repo, scopes)
        return self._transport.request(method, url, headers, body, authorization, chunked)

    def _authorization(self, repo, scopes):
        """(Authorization header value as a Secret or None, a function that forgets a refused
        token or None)."""
        challenge = self._challenge
        if challenge is None:
            return None, None
        kind, params = challenge
        credentials = self._credentials_for(repo)
        if kind == "basic":
            return (credentials.basic_authorization(self.host) if credentials else None), None
        key = (params.get("realm"), params.get("service"), tuple(sorted(scopes)), credentials)
        token = self._tokens.get(key)
        if token is None:
            with self._token_lock:  # threads that need the same token wait for one request
                token = self._tokens.get(key)
                if token is None:
                    token, lifetime = fetch_token(self._transport, self.host, params, scopes, credentials,
                                                  self._plain_ok)
                    self._tokens.put(key, token, lifetime)
        return Secret("Bearer " + token.reveal()), (lambda: self._tokens.drop(key, token))

    def _credentials_for(self, repo):
        """The login that covers `repo` (None: anonymous), looked up once per repository."""
        with self._lock:
            if repo not in self._credentials:
                self._credentials[repo] = credentials_for(self.host, repo)
            return self._credentials[repo]

    def _ensure_base(self):
        """The registry's base URL, found by GET /v2/ (docker's ping): HTTPS, or plain HTTP
        for a loopback or --insecure-registry host that does not speak TLS."""
        with self._lock:
            if self._base is None:
                self._base, self._challenge = self._ping()
            return self._base

    def _ping(self):
        plain_ok = self._plain_ok(self._api)
        try:
            return self._ping_at(f"https://{self._api}", plain_ok)
        except tp.TransportFailure as failure:
            if failure.kind in (tp.NO_TLS, tp.CONNECT) and plain_ok:
                try:
                    return self._ping_at(f"http://{self._api}", False)
                except tp.TransportFailure as second:
                    raise self._unavailable(second) from None
            raise self._unavailable(failure) from None

    def _ping_at(self, base, plain_next):
        """(base, challenge) from GET /v2/ at `base`; with `plain_next`, a refused connection
        is not tried again: plain HTTP is tried next."""
        tries = self._tries()
        while True:
            try:
                response = self._transport.request("GET", base + "/v2/")
            except tp.TransportFailure as failure:
                if failure.retryable and not (plain_next and failure.kind == tp.CONNECT):
                    if tries.again():
                        continue
                    self._unanswered = True
                raise
            self._unanswered = False
            body = response.read_prefix(MAX_ERROR_BODY)
            if retryable_status(response.status) and tries.again(response.header("Retry-After")):
                continue
            break
        if response.status == 200:
            return base, None
        if response.status == 401:
            header = response.header("WWW-Authenticate")
            challenge = _pick_challenge(header)
            if challenge is None:
                raise BadRegistryData(f"{self.host} asks for an authentication docker-dir does not know "
                                      f"('{cut(header or '', 80)}'); it supports Basic and Bearer")
            return base, challenge
        said = registry_errors(body)
        said = f": {said}" if said else ""
        if response.status == 404:
            raise RegistryUnavailable(f"{self.host} does not serve the registry API (GET /v2/ answered 404); "
                                      "check the registry's address")
        if response.status >= 500 or response.status == 429:
            raise RegistryUnavailable(f"{self.host} keeps failing (HTTP {response.status}{said}, "
                                      f"{_attempts(tries.made)}); try again later")
        raise BadRegistryData(f"{self.host} answered GET /v2/ with HTTP {response.status}{said}; "
                              "is it a container registry?")

    def _plain_ok(self, where):
        """Whether plain HTTP is allowed to host[:port] `where`: loopback, or --insecure-registry."""
        where = where.lower()
        hostname = urlsplit("//" + where).hostname or ""
        if where in self._insecure or hostname in self._insecure or hostname == "localhost":
            return True
        try:
            return ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return False

    # -- answers that are not what was asked for -----------------------------------------

    def _tries(self):
        """The tries of a new request: as retry.py says, or one while the registry is down."""
        return Tries(attempts=1 if self._unanswered else ATTEMPTS)

    def _unavailable(self, failure, suffix=""):
        text = f"{failure}{suffix}"
        if failure.kind == tp.PROTOCOL:
            return BadRegistryData(f"{text}; the registry at {self.host} is misbehaving")
        if failure.kind == tp.CERTIFICATE:
            return RegistryUnavailable(f"{text}; if {failure.where} uses its own CA, put it in "
                                       f"/etc/docker/certs.d/{failure.where}/ca.crt")
        if failure.kind == tp.TLS_REFUSED:
            return RegistryUnavailable(f"{text}; if it wants a client certificate, put it (NAME.cert and "
                                       f"NAME.key) in /etc/docker/certs.d/{failure.where}/")
        if failure.kind == tp.NO_TLS:
            return RegistryUnavailable(f"{text}; if it is a plain HTTP registry you trust, use "
                                       f"--insecure-registry {failure.where}")
        if failure.kind == tp.CONNECT:
            return RegistryUnavailable(f"{text}; check the registry's address and that it is running")
        if failure.kind == tp.PROXY:
            return RegistryUnavailable(f"{text}; check the proxy setting (or list {self.host} in NO_PROXY to go "
                                       "direct) and that the proxy is running")
        return RegistryUnavailable(f"{text}; try again later")

    def _refusal(self, response, repo, doing, what):
        """The error for an answer that is not a success: `doing` says what was asked
        ("get tag 1 of repository x/y"), `what` the thing named ("tag 1", "blob sha256:…")."""
        try:
            body = response.read_prefix(MAX_ERROR_BODY)
        except tp.TransportFailure:
            body = b""  # the status says enough
        status = response.status
        said = registry_errors(body)
        said = f"{' ' if said else ''}{said}"
        codes = error_codes(body)
        if status == 401:
            credentials = self._credentials.get(repo)
            if credentials and _insufficient_scope(response):  # a good login, whose token lacks this permission
                return AuthRefused(f"{self.host} does not let the user of the credentials from {credentials.source} "
                                   f"{doing} (HTTP 401 insufficient_scope{said}); {login_advice(self.host)} as a "
                                   "user allowed to")
            if credentials:
                return AuthRefused(f"{self.host} refused the credentials from {credentials.source} for "
                                   f"repository {repo} (HTTP 401{said}); {login_advice(self.host)}")
            return AuthRefused(f"{self.host} requires credentials for repository {repo} (HTTP 401{said}), "
                               f"or it does not exist; {login_advice(self.host)}")
        if status == 403:
            return AuthRefused(f"{self.host} does not let you {doing} (HTTP 403{said}); "
                               f"{login_advice(self.host)} as a user allowed to")
        if status == 404:
            if "NAME_UNKNOWN" in codes:
                return SelectionError(f"{self.host} has no repository {repo} (HTTP 404{said}); check the name")
            return SelectionError(f"{self.host} has no {what} in repository {repo} (HTTP 404{said}); "
                                  "check the reference")
        if status == 405:
            return AuthRefused(f"{self.host} does not allow you to {doing} (HTTP 405{said}); "
                               "the registry may be read-only")
        if retryable_status(status):
            attempts = getattr(response, "attempts", 1)
            return RegistryUnavailable(f"{self.host} failed to {doing} (HTTP {status}{said}, {attempts} "
                                       f"attempt{'s' if attempts > 1 else ''}); try again later")
        if status == 400 and "DIGEST_INVALID" in codes:
            return DigestMismatch(f"{self.host} found that the content sent for {what} does not match "
                                  f"its digest (HTTP 400{said}); check the local copy: docker-dir-id --verify DIR")
        return BadRegistryData(f"{self.host} refused to {doing} (HTTP {status}{said})")

    def _read_limited(self, response, limit):
        try:
            return response.read_limited(limit)
        except tp.TransportFailure as failure:
            raise self._unavailable(failure) from None

    def _media_type(self, data, response, what):
        """The media type of a manifest: its own mediaType field, else the Content-Type;
        the two must agree when both are specific."""
        from ..fastjson import loads_json

        try:
            document = loads_json(data)
        except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than the parser goes
            raise BadRegistryData(f"{self.host} sent {what} that is not valid JSON ({cut(str(err), 80)}); "
                                  "it is misbehaving") from None
        if not isinstance(document, dict):
            raise BadRegistryData(f"{self.host} sent {what} that is not a JSON object; it is misbehaving")
        declared = document.get("mediaType")
        if declared is not None and (not isinstance(declared, str) or not declared or not declared.isprintable()):
            raise BadRegistryData(f"{self.host} sent {what} with an invalid mediaType; it is misbehaving")
        content_type = (response.header("Content-Type") or "").split(";", 1)[0].strip().lower()
        if declared and content_type not in _GENERIC_TYPES and content_type != declared:
            raise BadRegistryData(f"{self.host} sent {what} as {cut(content_type, 80)} but it says it is "
                                  f"{cut(declared, 80)}; the registry is misbehaving")
        media_type = declared or content_type
        if not media_type or media_type in _GENERIC_TYPES:
            raise BadRegistryData(f"{self.host} sent {what} without a media type; it is misbehaving")
        return media_type

    def _tag_page(self, data, repo):
        """The tags of one page of a tag list ({"name": …, "tags": [...]}; null: none)."""
        from ..fastjson import loads_json

        what = f"a tag list of repository {repo}"
        try:
            document = loads_json(data)
        except (ValueError, RecursionError) as err:
            raise BadRegistryData(f"{self.host} sent {what} that is not valid JSON ({cut(str(err), 80)}); "
                                  "it is misbehaving") from None
        tags = document.get("tags", ()) if isinstance(document, dict) else ()
        if tags is None:  # distribution's answer for a repository whose tags were all deleted
            return []
        if not isinstance(tags, list):
            raise BadRegistryData(f"{self.host} sent {what} without a list of tags; it is misbehaving")
        for tag in tags:
            if not is_tag(tag):
                raise BadRegistryData(f"{self.host} sent {what} naming '{cut(str(tag), 80)}', which is not a valid "
                                      "tag; it is misbehaving")
        return tags

    def _next_page(self, response, path, repo):
        """The query ("?last=…&n=…") of the tag list's next page, from the Link header, or
        None on the last page. The next page is asked of this registry, at the list's own
        path: a link elsewhere is refused."""
        for target, params in _LINK.findall(response.header("Link") or ""):
            rel = _LINK_REL.search(params)
            if not rel or "next" not in rel.group(1).lower().split():
                continue
            url = urlsplit(urljoin(response.url, target.strip()))
            if url.path != path or not all("!" <= c <= "~" for c in url.query):
                raise BadRegistryData(f"{self.host} points the tag list of repository {repo} to "
                                      f"'{cut(target, 80)}' for its next page; it is misbehaving")
            return "?" + url.query if url.query else ""
        return None

    # -- blob transfers ------------------------------------------------------------------

    def _download(self, repo, digest, size, out, path, progress):
        """Stream the blob into `out`; returns the hex sha256 of what was written."""
        hasher = hashlib.sha256()
        received = 0
        tries = self._tries()  # the requests and the resumptions of this transfer
        while True:
            headers = {"Range": f"bytes={received}-"} if received else None
            response = self._call("GET", f"/v2/{repo}/blobs/{digest}", repo, [scope(repo, _PULL)], headers,
                                  tries=tries)
            if response.status == 200 and received:  # Range ignored: the whole blob again
                response_start = 0
            elif response.status == 206 and received:
                response_start = _range_start(response.header("Content-Range"))
                if response_start != received:
                    response.close()
                    raise BadRegistryData(f"{self.host} answered a request for blob {digest} from byte {received} "
                                          f"with '{cut(response.header('Content-Range') or '', 60)}'; "
                                          "it is misbehaving")
            elif response.status == 200:
                response_start = 0
            else:
                raise self._refusal(response, repo, f"get blob {digest} of repository {repo}", f"blob {digest}")
            if response_start == 0 and received:
                _rewind(out, path)
                hasher, received = hashlib.sha256(), 0
                progress.move_to(0)
            length = _content_length(response)
            if length is not None and received + length > size:
                response.close()
                raise self._too_large(repo, digest, size)
            try:
                while True:
                    chunk = response.read(min(READ_CHUNK, size - received + 1))
                    if not chunk:
                        break
                    if received + len(chunk) > size:
                        response.close()
                        raise self._too_large(repo, digest, size)
                    _write(out, chunk, path)
                    hasher.update(chunk)
                    received += len(chunk)
                    progress.move_to(received)
                response.close()
                if received == size:
                    return hasher.hexdigest()
                problem = f"the transfer ended after {received} of {size} bytes"
            except tp.TransportFailure as failure:
                problem = str(failure)
            if not tries.again():
                raise RegistryUnavailable(f"downloading blob {digest} from {self.host}/{repo} broke {tries.made} "
                                          f"times, the last: {problem}; try again later")

    def _too_large(self, repo, digest, size):
        return BadRegistryData(f"{self.host} sent more than the {size} bytes of blob {digest} of repository "
                               f"{repo}; the registry is misbehaving")

    def _start_upload(self, repo, scopes, tries):
        """The Location of a new upload session."""
        response = self._call("POST", f"/v2/{repo}/blobs/uploads/", repo, scopes, {"Content-Length": "0"},
                              tries=tries)
        response.close()
        if response.status != 202:
            raise self._refusal(response, repo, f"start an upload to repository {repo}", "upload")
        return self._location(response, repo)

    def _patch_upload(self, repo, location, scopes, tries, body, offset):
        """Append the blob's bytes from `offset` on to the upload (distribution's stream
        mode: no Content-Range); the next Location once the registry holds all of them."""
        headers = {"Content-Type": "application/octet-stream"}
        if body.length is not None:
            headers["Content-Length"] = str(body.length)
        response = self._call("PATCH", location, repo, scopes, headers, body, tries=tries, resume=True,
                              chunked=body.length is None)
        response.close()
        if response.status == 416:
            raise _UploadBroken(f"{self.host} did not accept the upload at byte {offset} (HTTP 416)", restart=True)
        if response.status != 202:
            raise self._refusal(response, repo, f"upload a blob to repository {repo}", "upload")
        sent = offset + body.sent
        if self._confirmed_end(response, repo, sent) != sent:
            raise _UploadBroken(f"{self.host} holds fewer bytes than the {sent} sent")
        return self._location(response, repo)

    def _finish_upload(self, repo, digest, location, scopes, tries, body, length):
        """PUT ?digest= on the upload, with the whole blob or (after the PATCH) nothing."""
        url = location + ("&" if "?" in location else "?") + "digest=" + quote(digest, safe="")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        response = self._call("PUT", url, repo, scopes, headers, body if body else b"", tries=tries, resume=True)
        response.close()
        if response.status != 201:
            raise self._refusal(response, repo, f"upload blob {digest} to repository {repo}", f"blob {digest}")
        claimed = response.header("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise BadRegistryData(f"{self.host} stored blob {digest} of repository {repo} as {cut(claimed, 80)}; "
                                  "it is misbehaving")

    def _upload_status(self, repo, location, scopes, tries):
        """(Location, offset) to go on from after a broken upload: what the registry has,
        or a new session from 0 when it lost this one."""
        response = self._call("GET", location, repo, scopes, tries=tries)
        response.close()
        if response.status == 404:
            return self._start_upload(repo, scopes, tries), 0
        if response.status != 204:
            raise self._refusal(response, repo, f"get the state of an upload to repository {repo}", "upload")
        return self._location(response, repo), self._confirmed_end(response, repo, None)

    def _confirmed_end(self, response, repo, at_most):
        """The byte after what an upload holds, from its Range header ("0-N"). distribution
        writes "0-0" for an empty upload too: that counts as 0, and a 416 sorts out the rest."""
        text = response.header("Range") or "0-0"
        first, dash, last = text.partition("-")
        if not (dash and first == "0" and last.isdigit() and len(last) < 20):
            raise BadRegistryData(f"{self.host} gave an invalid upload Range '{cut(text, 60)}' for repository "
                                  f"{repo}; it is misbehaving")
        end = int(last) + 1 if last != "0" else 0
        if at_most is not None and end > at_most:
            raise BadRegistryData(f"{self.host} claims to hold {end} bytes of an upload to repository {repo} after "
                                  f"{at_most} were sent; it is misbehaving")
        return end

    def _location(self, response, repo):
        location = response.header("Location")
        if not location:
            raise BadRegistryData(f"{self.host} started an upload to repository {repo} without a Location; "
                                  "it is misbehaving")
        url = urljoin(response.url, location)  # relative or absolute; its query string is the session's state
        if urlsplit(url).scheme not in ("http", "https"):
            raise BadRegistryData(f"{self.host} gave an upload Location that is not HTTP; it is misbehaving")
        return url

    def _abandon_upload(self, repo, response):
        """Close an upload session we will not use (a refused mount): a courtesy, so its
        failure does not matter; the registry expires sessions on its own."""
        try:
            self._call("DELETE", self._location(response, repo), repo, [scope(repo, _PUSH)]).close()
        except DockerDirError:
            pass


class _UploadBroken(Exception):
    """An upload request that got no answer or a 5xx: resume from the registry's state,
    or (restart) from a new session."""

    def __init__(self, message, restart=False):
        super().__init__(message)
        self.restart = restart


def _attempts(count):
    return "1 attempt" if count == 1 else f"{count} attempts"


class _Progress:
    """Where a transfer stands, told to on_bytes as differences."""

    def __init__(self, on_bytes):
        self._on_bytes = on_bytes
        self.position = 0

    def move_to(self, position):
        if position != self.position and self._on_bytes:
            self._on_bytes(position - self.position)
        self.position = position


class _Body:
    """What an upload sends: the blob's bytes from `offset` on, read from `stream` as urllib3
    sends them, `length` of them when known; fewer bytes than that is an error about the
    local copy."""

    def __init__(self, stream, offset, length, progress):
        self._stream = stream
        self.length = length
        self.sent = 0
        self._progress = progress
        progress.move_to(offset)

    def read(self, size=-1):
        if self.length is not None:
            size = self.length - self.sent if size < 0 else min(size, self.length - self.sent)
            if size == 0:
                if self._stream.read(1):
                    while self._stream.read(_DRAIN):  # to its end, where a stream checks what it read
                        pass
                    raise BadImageDir("a local blob is larger than its declared size; check the local copy: "
                                      "docker-dir-id --verify DIR")
                return b""
        data = self._stream.read(size)
        if not data and self.length is not None:
            raise BadImageDir("a local blob ended before its declared size; check the local copy: "
                              "docker-dir-id --verify DIR")
        self.sent += len(data)
        self._progress.move_to(self._progress.position + len(data))
        return data

    def close(self):
        self._stream.close()


# A Link header's links (RFC 8288): <URL> and its parameters; rel="next" (or rel=next).
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_LINK_REL = re.compile(r'rel\s*=\s*"?([^";,]*)', re.IGNORECASE)


def _pick_challenge(header):
    """The (scheme, params) to answer: Bearer when offered, else Basic, else None."""
    challenges = dict(reversed(parse_challenges(header or "")))
    for kind in ("bearer", "basic"):
        if kind in challenges:
            return kind, challenges[kind]
    return None


def _insufficient_scope(response):
    """Whether a 401 says the token was good but does not grant what was asked."""
    challenge = _pick_challenge(response.header("WWW-Authenticate"))
    return challenge is not None and challenge[0] == "bearer" and challenge[1].get("error") == "insufficient_scope"


def _checked_digest(digest):
    hex_digest = hex_of_digest(digest)
    if hex_digest is None:
        raise BadRegistryData(f"'{cut(str(digest), 80)}' is not a digest docker-dir accepts (sha256: and 64 "
                              "lowercase hex digits)")
    return hex_digest


def _content_length(response):
    text = response.header("Content-Length")
    if text is None or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _range_start(content_range):
    """N of "bytes N-M/T", or None."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[6:].split("-", 1)[0].strip()
    return int(start) if start.isdigit() and len(start) < 19 else None


def _write(out, data, path):
    try:
        out.write(data)
    except OSError as err:
        raise CantWrite(f"cannot write {path}: {err.strerror}") from None


def _rewind(out, path):
    try:
        out.seek(0)
        out.truncate()
    except OSError as err:
        raise CantWrite(f"cannot write {path}: {err.strerror}") from None
