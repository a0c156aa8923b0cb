"""git-annex-remote-docker-dir: a read-only git-annex special remote whose content is
blobs in container registries, named by URLs of one form:

    docker-blob://HOST[:PORT]/NAME@sha256:HEX

(registered per key with `git annex registerurl`: annex.py does it after a pull or a
push with --annex-urls). CHECKPRESENT asks the registry (HEAD); RETRIEVE downloads
through the same registry client as docker-dir-save docker:// (credentials, TLS,
redirects, resumed transfers, every byte checked against the digest); STORE and REMOVE
are refused: a registry is written with docker-dir-push, and its blobs are not ours to
delete. Speaks git-annex's external special remote protocol through annexremote.
"""
import os
import re

from annexremote import ProtocolError, RemoteError, SpecialRemote

from ..errors import DockerDirError, SelectionError, first_line
from ..registry.client import Registry
from ..registry.reference import BLOB_URL_SCHEME as URL_SCHEME, parse_blob_url

_SIZE_IN_KEY = re.compile(r"-s(\d+)")


class DockerDirRemote(SpecialRemote):
    """The special remote. Configuration (initremote/enableremote): `insecure=HOST:PORT[,...]`,
    registries that may answer in plain HTTP (loopback ones need not be named)."""

    def __init__(self, annex):
        super().__init__(annex)
        self.configs = {"insecure": "registries (HOST:PORT, comma-separated) allowed to answer in plain HTTP"}
        self._registries = {}

    def initremote(self):
        pass  # nothing to make: the registries exist already

    def prepare(self):
        pass  # connections are made when a blob is asked for

    def claimurl(self, url):
        return parse_blob_url(url) is not None

    def checkurl(self, url):
        found = parse_blob_url(url)
        if found is None:
            return False
        size = self._blob_size(found)
        # One entry without "url" is CHECKURL-CONTENTS; with it, annexremote answers CHECKURL-MULTI,
        # a list of files with empty names, of which git annex addurl adds none.
        return [{"size": size}] if size is not None else False

    def checkpresent(self, key):
        failures = []
        for found in self._urls(key):
            try:
                if self._blob_size(found) is not None:
                    return True
            except RemoteError as err:  # another URL (another registry) may still answer
                failures.append(str(err))
        if failures:
            # Counting copies for a drop, git-annex keeps CHECKPRESENT-UNKNOWN's message to
            # itself ("Unable to access these remotes"): say why.
            try:
                self.annex.info(failures[-1])
            except ProtocolError:
                pass  # a git-annex older than INFO (7.20191230): the message stays unsaid
            raise RemoteError(failures[-1])
        return False

    def transfer_retrieve(self, key, local_file):
        failures = []
        for found in self._urls(key):
            try:
                if os.path.exists(local_file):  # what an interrupted transfer left: the client resumes within one
                    os.unlink(local_file)
                self._ask(found, lambda registry, repository, digest: registry.fetch_blob(
                    repository, digest, self._size(key, registry, repository, digest), local_file, self._progress()))
                return
            except RemoteError as err:
                failures.append(str(err))
        raise RemoteError(failures[-1] if failures else f"no {URL_SCHEME} URL is registered for {key}")

    def transfer_store(self, key, local_file):
        raise RemoteError("docker-dir's registry remote is read-only: put images in a registry with "
                          "docker-dir-push, which records the URLs (--annex-urls)")

    def remove(self, key):
        raise RemoteError("docker-dir's registry remote is read-only: it never deletes a registry's blobs")

    # -- helpers -----------------------------------------------------------------------

    def _urls(self, key):
        return [found for found in map(parse_blob_url, self.annex.geturls(key, URL_SCHEME)) if found]

    def _blob_size(self, found):
        return self._ask(found, lambda registry, repository, digest: registry.blob_size(repository, digest))

    def _registry(self, host):
        if host not in self._registries:
            insecure = [h.strip() for h in (self.annex.getconfig("insecure") or "").split(",") if h.strip()]
            self._registries[host] = Registry(host, insecure=insecure)
        return self._registries[host]

    def _ask(self, found, question):
        """question(registry, repository, digest); docker-dir's errors become git-annex's,
        one line (a missing blob of CHECKPRESENT is its answer, not an error)."""
        host, repository, digest = found
        try:
            return question(self._registry(host), repository, digest)
        except SelectionError:
            return None
        except DockerDirError as err:
            raise RemoteError(first_line(str(err))) from None

    @staticmethod
    def _size(key, registry, repository, digest):
        match = _SIZE_IN_KEY.search(key.split("--", 1)[0])
        return int(match.group(1)) if match else registry.blob_size(repository, digest)

    def _progress(self):
        done = [0]

        def on_bytes(nbytes):
            done[0] += nbytes
            self.annex.progress(done[0])

        return on_bytes
