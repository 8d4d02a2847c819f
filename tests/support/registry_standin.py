"""A container registry on 127.0.0.1 that speaks the Docker Registry HTTP API v2 for
the images it is given, so that a real Docker engine pulls from it.

No registry is reachable here and ``registry:2`` cannot be pulled, so the tests bring
their own: ``/v2/`` (API version check), ``/v2/<name>/manifests/<tag or digest>``
(image manifest, schema 2) and ``/v2/<name>/blobs/<digest>`` (config and gzip layers),
each with the content type, ``Docker-Content-Digest`` and length the engine checks,
and the registry's own error bodies (``MANIFEST_UNKNOWN``, ``BLOB_UNKNOWN``) for
anything else. Blobs are sent at a bounded rate so that a pull takes long enough to
report progress. Docker treats 127.0.0.0/8 registries as insecure (plain HTTP) by
default, so no TLS is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    manifest: bytes
    blobs: dict[str, bytes]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def build_image(layer_tars: list[bytes]) -> Image:
    """A schema-2 image from uncompressed layer tars: gzip layers, a config naming their
    diff ids, and the manifest naming config and layers by digest."""
    blobs: dict[str, bytes] = {}
    layers, diff_ids = [], []
    for tar in layer_tars:
        compressed = gzip.compress(tar, mtime=0)
        blobs[sha256(compressed)] = compressed
        layers.append({"mediaType": LAYER_GZIP, "size": len(compressed), "digest": sha256(compressed)})
        diff_ids.append(sha256(tar))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}).encode()
    blobs[sha256(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                           "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": sha256(config)},
                           "layers": layers}).encode()
    return Image(manifest, blobs)


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class RegistryStandIn:
    images: dict[tuple[str, str], Image] = field(default_factory=dict)  # (name, tag) -> image
    rate: float = 1 << 20  # bytes per second per blob
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, tag: str, image: Image) -> str:
        self.images[(name, tag)] = image
        return f"{self.address}/{name}:{tag}"

    def start(self) -> RegistryStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self.route(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self.route(body=True)

            def route(self, body: bool) -> None:
                standin.requests.append(f"{self.command} {self.path}")
                if self.path.rstrip("/") == "/v2":
                    return self.send(200, b"{}", "application/json", body)
                m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", self.path)
                if not m:
                    return self.error(404, "NAME_UNKNOWN", "repository name not known to registry", body)
                name, kind, ref = m.groups()
                if kind == "manifests":
                    image = standin.images.get((name, ref)) or next(
                        (i for (n, _), i in standin.images.items() if n == name and i.digest == ref), None)
                    if image is None:
                        return self.error(404, "MANIFEST_UNKNOWN", "manifest unknown", body, {"Tag": ref})
                    return self.send(200, image.manifest, MANIFEST_V2, body, image.digest)
                blob = next((i.blobs[ref] for (n, _), i in standin.images.items() if n == name and ref in i.blobs),
                            None)
                if blob is None:
                    return self.error(404, "BLOB_UNKNOWN", "blob unknown to registry", body, {"Digest": ref})
                self.send(200, blob, "application/octet-stream", body, ref, throttle=True)

            def error(self, status: int, code: str, message: str, body: bool, detail: object = None) -> None:
                payload = json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()
                self.send(status, payload, "application/json", body)

            def send(self, status: int, data: bytes, content_type: str, body: bool, digest: str | None = None,
                     throttle: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if not body:
                    return
                chunk = 64 << 10
                for start in range(0, len(data), chunk):
                    self.wfile.write(data[start:start + chunk])
                    if throttle:
                        time.sleep(chunk / standin.rate)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
