"""The base image of the host-runtime mode, built on the node with `docker import`.

Air-gapped nodes (and these test machines) reach no registry, so they cannot pull
an engine image. What a container then needs is a root filesystem whose ``/usr``,
``/lib*`` and ``/bin`` resolve to the host's, so that the host runtime, bind-mounted
read-only at the same paths, runs unchanged: the program the node resolved (its
llama.cpp build, its Python environment) works in the container as on the host.
On a merged-/usr system that is a handful of directories and symlinks, so the
image is a few kilobytes, written here and imported — no registry, no Dockerfile.
Its tag is a hash of its content: an unchanged image is found, not rebuilt.

``python -m gpufleet.node.runtimes.host_image`` builds it (scripts/start-dockerd.sh
does) and prints the reference to pass as ``gpufleet node --host-runtime-image``.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from typing import Any

REPOSITORY = "gpufleet/host-runtime"

#: (path, kind, target): the root filesystem, in tar order
_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("usr", "dir", ""),
    ("bin", "link", "usr/bin"),
    ("sbin", "link", "usr/sbin"),
    ("lib", "link", "usr/lib"),
    ("lib64", "link", "usr/lib64"),
    ("etc", "dir", ""),
    ("etc/passwd", "file", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    ("etc/group", "file", "root:x:0:\nnogroup:x:65534:\n"),
    ("etc/nsswitch.conf", "file", "passwd: files\ngroup: files\nhosts: files dns\n"),
    ("root", "dir", ""),
    ("tmp", "dir", ""),
    ("models", "dir", ""),
    ("proc", "dir", ""),
    ("sys", "dir", ""),
    ("dev", "dir", ""),
    ("run", "dir", ""),
    ("var/tmp", "dir", ""),
)


def rootfs_tar() -> bytes:
    """The image's root filesystem as a tar, byte-for-byte the same on every call."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, kind, data in _ENTRIES:
            info = tarfile.TarInfo(path)
            info.mtime = 0
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if path in ("tmp", "var/tmp") else 0o755
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, data, 0o777
                tar.addfile(info)
            else:
                payload = data.encode()
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def reference() -> str:
    return f"{REPOSITORY}:{hashlib.sha256(rootfs_tar()).hexdigest()[:12]}"


def ensure_host_runtime_image(client: Any) -> str:
    """Import the image unless this content is there already; returns its reference."""
    from docker.errors import ImageNotFound

    ref = reference()
    try:
        client.images.get(ref)
        return ref
    except ImageNotFound:
        pass
    repo, tag = ref.split(":")
    client.api.import_image_from_data(rootfs_tar(), repository=repo, tag=tag)
    client.images.get(ref)  # raises if the import did not produce it
    return ref


def main() -> int:
    import docker

    try:
        client = docker.from_env()
        print(ensure_host_runtime_image(client))
    except docker.errors.DockerException as exc:
        print(f"cannot build {REPOSITORY}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
