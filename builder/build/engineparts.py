"""The engine seam's pure parts (no docker-py), so builder/build/engine.py keeps to the verbs: what
it says when the engine or a registry fails, how it cuts a stream, how it reads what the API answers."""

from __future__ import annotations

import io
import socket
import tarfile

from builder.core.errors import EngineError, PlatformMissingError, RegistryError
from builder.core.redact import redact

SSH_HINT = ("Forward the engine's socket and use it: ssh -nNT -L /tmp/docker.sock:/var/run/docker.sock HOST, "
            "then DOCKER_HOST=unix:///tmp/docker.sock.")


def shutdown_response(response) -> None:
    """Cut a streaming response's socket from any thread."""
    try:
        raw = response.raw._fp.fp.raw
        sock = getattr(raw, "_sock", raw)
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # already closed, or a transport without a socket
        try:
            response.close()
        except Exception:
            pass


def engine_error(exc: Exception, doing: str) -> EngineError:
    return EngineError(f"the Docker engine is unreachable while {doing}: {redact(str(exc))[:300]}",
                       hint="Start dockerd (or Docker Desktop), or point DOCKER_HOST (or --engine) at a running "
                            "engine, then retry.")


def pull_error(ref: str, text: str, platform: str | None) -> RegistryError:
    if platform and ("no matching manifest" in text or "does not match the specified platform" in text):
        return PlatformMissingError(f"{ref} has no image for {platform}: {redact(text)[:200]}", field="--platform",
                                    hint=f"Build and push it for {platform} (agent-image build --platform "
                                         f"{platform} --push), or ask for a platform the image has.")
    return RegistryError(f"pulling {ref} failed: {redact(text)}", hint=registry_hint(text))


def registry_hint(text: str) -> str:
    low = text.lower()
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return "Log in to the registry (docker login) or pass --registry-username/--registry-password."
    if "connection refused" in low or "no such host" in low or "dial tcp" in low or "timeout" in low:
        return "The registry is unreachable: check the address and that it is running, then retry."
    return "Check the registry address and its logs, then retry."


def inventory_rows(images: list[dict], containers: list[dict]) -> tuple[list[dict], set[str]]:
    """The API's image and container lists as Engine.inventory answers them."""
    return ([{"id": i["Id"], "parent": i.get("ParentId") or "", "size": i.get("Size") or 0,
              "created": i.get("Created") or 0, "labels": i.get("Labels") or {},
              "tags": [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"]} for i in images],
            {c.get("ImageID") or "" for c in containers})


def first_file(archive: bytes, max_bytes: int) -> bytes | None:
    """The first regular file of a tar archive (get_archive's answer), at most MAX_BYTES."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next((m for m in tar.getmembers() if m.isfile()), None)
        fh = tar.extractfile(member) if member else None
        return fh.read(max_bytes) if fh else None
