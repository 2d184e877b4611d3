"""Object-store backends for end-to-end tests, chosen by SPINDLE_TEST_BACKEND: `fs` (a local
directory, the default), `s3` (a moto server) or `azure` (Azurite). Servers run on 127.0.0.1 on
free ports, one per test session, and each Spindle gets its own bucket prefix.

A TCP proxy (`FlakyProxy`) can sit between Spindle and the server to simulate an outage:
connections refused or reset while it is down."""

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

BACKEND = os.environ.get("SPINDLE_TEST_BACKEND", "fs")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BUCKET = "spindle-test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends RST


def reset(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        sock.close()
    except OSError:
        pass


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to a target port; `down()` resets every open connection and
    every new one until `up()`."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.alive = True
        self.conns = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.alive:
                reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                reset(client)
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self):
        self.alive = False
        with self.lock:
            for c in self.conns:
                reset(c)
            self.conns = []

    def up(self):
        self.alive = True


class Backend:
    """A running object store and how Spindle reaches it."""

    name = "fs"

    def new_url(self, via_port=None):
        return "file://" + tempfile.mkdtemp(prefix="spindle-blocks-")

    def args(self, via_port=None):
        return []

    def env(self):
        return {}

    def list_parquet(self, url):
        assert url.startswith("file://")
        return sorted(glob.glob(os.path.join(url[len("file://"):], "**", "*.parquet"), recursive=True))

    @property
    def port(self):
        return None


class S3Backend(Backend):
    name = "s3"

    def __init__(self):
        import boto3

        self._port = free_port()
        venv_bin = os.path.dirname(os.path.realpath(os.sys.executable))
        server = shutil.which("moto_server", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))
        self.log = open(os.path.join(tempfile.mkdtemp(prefix="moto-"), "moto.log"), "ab")
        self.proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(self._port)], stdout=self.log, stderr=self.log)
        atexit.register(self.proc.kill)
        wait_port(self._port, self.proc, "moto_server")
        self.client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self._port}",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=BUCKET)

    @property
    def port(self):
        return self._port

    def new_url(self, via_port=None):
        return f"s3://{BUCKET}/{uuid.uuid4().hex}"

    def args(self, via_port=None):
        return ["--storage-endpoint", f"http://127.0.0.1:{via_port or self._port}"]

    def env(self):
        return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

    def list_parquet(self, url):
        prefix = url[len(f"s3://{BUCKET}/"):] + "/"
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".parquet")]
        return sorted(keys)


class AzureBackend(Backend):
    name = "azure"

    def __init__(self):
        from azure.storage.blob import BlobServiceClient

        self._port = free_port()
        binary = os.path.join(ROOT, ".cache", "npm", "node_modules", ".bin", "azurite-blob")
        self.dir = tempfile.mkdtemp(prefix="azurite-")
        self.log = open(os.path.join(self.dir, "azurite.log"), "ab")
        self.proc = subprocess.Popen(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self._port), "--location", self.dir,
             "--skipApiVersionCheck", "--loose", "--silent"],
            stdout=self.log, stderr=self.log,
        )
        atexit.register(self.proc.kill)
        wait_port(self._port, self.proc, "azurite")
        conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self._port}/{AZURITE_ACCOUNT};")
        self.client = BlobServiceClient.from_connection_string(conn)
        self.client.create_container(BUCKET)

    @property
    def port(self):
        return self._port

    def new_url(self, via_port=None):
        return f"az://{BUCKET}/{uuid.uuid4().hex}"

    def args(self, via_port=None):
        return ["--storage-endpoint", f"http://127.0.0.1:{via_port or self._port}/{AZURITE_ACCOUNT}"]

    def env(self):
        return {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY}

    def list_parquet(self, url):
        prefix = url[len(f"az://{BUCKET}/"):] + "/"
        container = self.client.get_container_client(BUCKET)
        return sorted(b.name for b in container.list_blobs(name_starts_with=prefix) if b.name.endswith(".parquet"))


_backend = None


def backend():
    """The session's backend, started on first use."""
    global _backend
    if _backend is None:
        _backend = {"fs": Backend, "s3": S3Backend, "azure": AzureBackend}[BACKEND]()
    return _backend
