"""Before a build that will push: is the registry there, does it take our credentials, may we push?

A build takes seconds to minutes; a registry typo, a down registry or a missing push
right used to show only after it (exit 60 at the end). The Distribution API has no
"may I push" query, so we ask the way a push starts: open a blob upload in the
repository (``POST /v2/REPO/blobs/uploads/``, which the token service scopes
``pull,push``) and cancel it at once (``DELETE`` on its Location). No blob, manifest
or tag is written. A registry that cannot cancel (405) just lets the empty upload
session expire.
"""

from __future__ import annotations

import time

import structlog

from builder.core.errors import RegistryError
from builder.ship.client import RegistryClient, parse_ref

log = structlog.get_logger("agent_image.registry")

# names the engine accepts for Docker Hub, whose registry API answers at another host
_HUB = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


def check_push(repository: str, *, auth: dict | None = None, option: str = "--registry", retries: int = 1) -> float:
    """Raise RegistryError unless REPOSITORY (HOST[:PORT]/PATH) would take a push; return seconds taken."""
    started = time.monotonic()
    ref = parse_ref(repository)
    client = RegistryClient(_HUB.get(ref.host, ref.host), auth=auth, retries=retries, timeout=15.0)
    scopes = (f"repository:{ref.repo}:pull,push",)
    try:
        # (the client's one sending path: auth challenges, redirects and redaction as for every request)
        opened = client._request("POST", f"/v2/{ref.repo}/blobs/uploads/", scopes=scopes, ok=(202,))
    except RegistryError as err:
        raise RegistryError(f"{repository}: the registry cannot take this push (checked before building): "
                            f"{err.message}", hint=_hint(err), field=option) from None
    try:  # the answer was yes; closing the empty session is tidiness, and some registries cannot
        if opened.headers.get("Location"):
            client._request("DELETE", client._location(opened), scopes=scopes, ok=(202, 204, 404, 405))
    except RegistryError as err:
        log.debug("The registry kept the empty upload session (it expires)", repository=repository,
                  reason=err.message)
    took = time.monotonic() - started
    log.info("Registry accepts the push", repository=repository, seconds=round(took, 3))
    return took


def _hint(err: RegistryError) -> str:
    if "answered HTTP 404" in err.message or "NAME_UNKNOWN" in err.message:  # (not "404": a port may hold it)
        return ("Create the repository first (ECR: repositories must exist before a push), or fix the repository. "
                "Nothing was built.")
    return f"{err.hint or 'Check --registry.'} Nothing was built."
