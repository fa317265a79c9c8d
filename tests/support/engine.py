"""Questions to a Docker client (docker-py's), each in as few API calls as it can."""

from __future__ import annotations

import io
import tarfile

import docker


def engine_tags(client) -> set[str]:
    """Every tag the engine holds, in one API call.

    (``images.list()`` inspects each image in turn, which races with any other
    build or cleanup removing an image in between.)"""
    return {t for image in client.api.images() for t in (image.get("RepoTags") or []) if t != "<none>:<none>"}


def engine_containers(client) -> set[str]:
    """Ids of every container, running or not, in one API call (see engine_tags)."""
    return {c["Id"] for c in client.api.containers(all=True)}


def remove_tags(client, prefixes) -> None:
    """Remove every tag that starts with one of PREFIXES (gone already: fine)."""
    for tag in engine_tags(client):
        if any(tag.startswith(p) for p in prefixes):
            try:
                client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass


def run_in_image(docker_client, image: str, command: list[str]) -> str:
    out = docker_client.containers.run(image, command, remove=True, stderr=True)
    return out.decode()


def image_holds(docker_client, ref: str, needles: list[bytes]) -> list[str]:
    """Where in `docker save` of REF (every layer, config, manifest) any needle occurs."""
    found = []
    blob = b"".join(docker_client.images.get(ref).save(named=True))
    with tarfile.open(fileobj=io.BytesIO(blob)) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()
            found += [member.name for n in needles if n in data]
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for entry in layer.getmembers():
                        if any(n in entry.name.encode() for n in needles):
                            found.append(f"{member.name}:{entry.name}")
    return found
