"""Turn a root file system tarball into a one-layer image for any CPU: `docker load` of a
docker-archive whose config names the architecture.

`docker import --platform` is ignored by an engine that is not "multi-platform capable"
(Debian's dockerd 20.10 without experimental features): the image it makes says the
host's architecture whatever its files are, and every build FROM it inherits that.
A docker-archive carries its own config, which the engine keeps as written.

    python3 scripts/import_rootfs.py ROOTFS.tar IMAGE:TAG ARCH | docker load
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import time


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def main(rootfs: str, ref: str, arch: str) -> None:
    digest = hashlib.sha256()
    with open(rootfs, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    diff_id = "sha256:" + digest.hexdigest()
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"debootstrap --arch {arch} (scripts/setup.sh)"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as out:
        _member(out, config_name, config)
        _member(out, "manifest.json", manifest)
        out.add(rootfs, arcname="layer/layer.tar")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
