"""Loopback registries for the push and pull benches: Debian's docker-registry over TLS,
with a certificate from a throwaway CA that every client finds where it looks for one.

The CA (made with the openssl command, so the bench needs no Python crypto package) goes
in /etc/docker/certs.d/127.0.0.1:PORT/ca.crt for each registry while it runs: docker-dir
and skopeo 1.9 both read that directory (skopeo looks in /etc/containers/certs.d and
/etc/docker/certs.d), so both verify the same certificate with no flag; dockerd treats
127.0.0.0/8 as insecure and speaks TLS to it without checking. The entry is removed when
the registry stops, also on failure.

The registry keeps its storage in memory (/dev/shm, or $BENCH_REGISTRY_DIR): it plays a
remote server, and on a machine whose disk others keep busy its own writes (each upload
chunk, each commit) would otherwise add seconds of noise to whichever client is running.
The clients' files (DIR, docker-dir's cache and work files) stay where the bench puts them.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from benchlib import registry_shapes, workdir

CERTS_D = "/etc/docker/certs.d"
SERVER_DIR = os.environ.get("BENCH_REGISTRY_DIR") or "/dev/shm"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


# Set for every process of these sandboxes (pointing at the system's own bundle), and on no
# user's machine: with them, a client loads the whole bundle where it would look CAs up.
SANDBOX_TLS_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def client_env(**extra):
    """The environment for the clients measured, as a user's machine has it: no proxy
    variables (a Python client has no loopback exemption from them), no SSL_CERT_FILE or
    SSL_CERT_DIR (both tools then trust the system's CAs), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k not in SANDBOX_TLS_VARIABLES}
    env.update(extra)
    return env


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args, cwd):
    proc = subprocess.run(["openssl", *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()[-400:]}")


def trust(ca, host):
    """Make `ca` trusted for HOST:PORT through certs.d; returns the entry, which the caller removes."""
    entry = os.path.join(CERTS_D, host)
    os.makedirs(entry)  # a leftover entry for this port would be someone else's: fail
    shutil.copy(ca.cert, os.path.join(entry, "ca.crt"))
    return entry


class ThrowawayCA:
    """A private CA and one server certificate for 127.0.0.1 and localhost, in `directory`
    (ca.crt, server.crt, server.key): enough for any number of loopback registries."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                 "-subj", f"/CN=docker-dir bench CA {os.urandom(4).hex()}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=directory)
        _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory)
        with open(os.path.join(directory, "server.ext"), "w") as out:
            out.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=directory)
        self.cert = os.path.join(directory, "ca.crt")
        self.server_cert = os.path.join(directory, "server.crt")
        self.server_key = os.path.join(directory, "server.key")

    def context(self):
        return ssl.create_default_context(cafile=self.cert)


class LoopbackRegistry:
    """`docker-registry serve` on a free 127.0.0.1 port with its own storage (in SERVER_DIR,
    else under `root`), anonymous; HTTPS with the CA's certificate (trusted through
    certs.d while it runs) when given a ThrowawayCA, plain HTTP without one."""

    def __init__(self, root, ca=None):
        self.ca = ca
        server_dir = SERVER_DIR if os.access(SERVER_DIR, os.W_OK) else root
        self.dir = tempfile.mkdtemp(prefix="docker-dir-bench-registry-", dir=server_dir)
        self.process = None
        self.port = None
        self.certs_entry = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"{'https' if self.ca else 'http'}://{self.host}"

    def start(self):
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            for _attempt in range(5):
                self.port = free_port()
                http = {"addr": self.host, "secret": os.urandom(16).hex()}
                if self.ca:
                    http["tls"] = {"certificate": self.ca.server_cert, "key": self.ca.server_key}
                config = {"version": 0.1, "log": {"level": "error"},
                          "storage": {"filesystem": {"rootdirectory": os.path.join(self.dir, "storage")},
                                      "delete": {"enabled": True}},
                          "http": http}
                path = os.path.join(self.dir, "config.yml")
                with open(path, "w") as out:
                    json.dump(config, out)  # JSON is YAML
                with open(os.path.join(self.dir, "log"), "ab") as log:
                    self.process = subprocess.Popen(["docker-registry", "serve", path], stdin=subprocess.DEVNULL,
                                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                    env=env)
                if self._ready():
                    if self.ca:
                        self._trust()
                    return self
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"docker-registry did not start: see {self.dir}/log")

    def _trust(self):
        self.certs_entry = trust(self.ca, self.host)

    def _ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # its port was taken meanwhile: another one
            try:
                if self.request("GET", "/v2/", timeout=2)[0] == 200:
                    return True
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry on {self.host} did not answer within 30 s")

    def request(self, method, path, headers=None, timeout=30):
        """(status, headers, body) of one request, independent of the clients measured."""
        request = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        context = self.ca.context() if self.ca else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def manifest(self, repo, tag):
        status, _, body = self.request("GET", f"/v2/{repo}/manifests/{tag}",
                                       {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
        if status != 200:
            raise RuntimeError(f"{self.host}/{repo}:{tag}: no manifest (HTTP {status})")
        return json.loads(body)

    def stop(self):
        if self.certs_entry:
            shutil.rmtree(self.certs_entry, ignore_errors=True)
            self.certs_entry = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class CountingRelay:
    """A TCP relay on a free loopback port in front of a registry, counting the bytes clients
    send through it (`sent`) and receive (`received`), HTTP headers (and TLS records, when the
    registry speaks TLS) included: what a push or a pull costs on the wire. With a ThrowawayCA,
    its port is trusted through certs.d (the registry's certificate names 127.0.0.1) until closed."""

    def __init__(self, target_port, ca=None):
        self.target_port = target_port
        self.sent = self.received = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.certs_entry = trust(ca, self.host) if ca else None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, "sent"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "received"), daemon=True).start()

    def _pump(self, source, sink, counter):
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                with self.lock:
                    setattr(self, counter, getattr(self, counter) + len(data))
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        if self.certs_entry:
            shutil.rmtree(self.certs_entry, ignore_errors=True)
            self.certs_entry = None
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main_over_shapes(name, description, measure_shape):
    """A registry bench's main: --shape chosen (default all), its tools checked, one work
    directory and one throwaway CA, measure_shape(shape, layers, work, ca) for each shape."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shape", action="append", choices=sorted(registry_shapes()),
                        help="only this image shape (repeatable; default: all)")
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"bench_{name} needs {tool} (the Debian package of that name)")
    with workdir(name) as work:
        ca = ThrowawayCA(os.path.join(work, "ca"))
        for shape, layers in registry_shapes(args.shape).items():
            measure_shape(shape, layers, work, ca)


# skopeo's blob-info cache as root (1.9 keeps it in BoltDB, later releases in SQLite):
# removed before every cold run, so skopeo never learns where a blob already is.
SKOPEO_CACHE_DIR = "/var/lib/containers/cache"


def forget_skopeo_cache():
    for path in glob.glob(os.path.join(SKOPEO_CACHE_DIR, "blob-info-cache-v1.*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def docker_push(ref, registry, repo_tag):
    """`docker push` of the engine's image `ref` to REGISTRY/REPO_TAG (dockerd gzips the layers)."""
    target = f"{registry.host}/{repo_tag}"
    subprocess.run(["docker", "tag", ref, target], check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run(["docker", "push", target], check=True, stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["docker", "rmi", target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
