"""The one registry HTTP client: Docker Registry HTTP API v2, Docker and OCI manifests.

rebase (read manifests and configs, mount or copy blobs, put a config and a
manifest) and the tag-immutability check talk to registries through this
module only; the engine still pushes whole images. So what leaves the
builder for a registry is readable here: one urllib3 ``PoolManager``,
redirects followed by hand (GET/HEAD only, credentials dropped when the host
changes), bounded retries, size caps on what a registry sends back.

Auth: anonymous first; on a 401 the challenge decides. ``Basic`` gets the
caller's credentials (``--registry-username`` + ``AGENT_IMAGE_REGISTRY_PASSWORD``)
or the Docker config's; ``Bearer`` gets a token from the realm (with the same
credentials, when there are any). Passwords and tokens are registered as
secrets, so no log line or error shows them.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from urllib3.util import Retry, Timeout

from builder.core.errors import RegistryError
from builder.core.redact import redact, register_secret
from builder.core.refs import DIGEST_RE, parse
from builder.core.urls import Disagreement, join, read_url
from builder.ship.dockerconfig import docker_config_auth

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
ACCEPT = ", ".join((*MANIFEST_TYPES, DOCKER_LIST, OCI_INDEX))
# caps on what a registry sends back, checked before reading
MAX_MANIFEST_BYTES = 4 * 1024 ** 2
MAX_CONFIG_BYTES = 8 * 1024 ** 2
_REDIRECTS = (301, 302, 303, 307, 308)
_HOST_RE = re.compile(r"^(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|[A-Za-z0-9.-]+:[0-9]+|\[[0-9a-fA-F:]+\](:[0-9]+)?)$")
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')
MAX_TAG_PAGES = 50  # a tag list's pages read (the registry sets their size: 100 to 1,000 tags each)


@dataclass(frozen=True)
class Ref:
    """HOST/REPO[:TAG][@DIGEST], split."""
    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"

    @property
    def reference(self) -> str:
        """What the manifest endpoint takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_ref(ref: str) -> Ref:
    """Split a registry reference; the first component must name a registry host."""
    repository, tag, digest = parse(ref)
    host, slash, path = repository.partition("/")
    if not slash or not _HOST_RE.match(host) or not path:
        raise RegistryError(f"{ref!r} does not name a registry (HOST[:PORT]/REPOSITORY[:TAG][@sha256:...])",
                            hint="Give the image's full registry reference, e.g. 127.0.0.1:5000/agents/NAME:1.0.")
    if digest and not DIGEST_RE.match(digest):
        raise RegistryError(f"{ref!r} has a malformed digest", hint="Digests look like sha256:<64 hex>.")
    return Ref(host=host, repo=path, tag=tag or (None if digest else "latest"), digest=digest)


def _loopback(netloc: str) -> bool:
    """Is NETLOC (host[:port]) on loopback, read as the connection reads it? (Not by prefix: that let
    http://127.0.0.1.example.com/ take credentials over plain http.)"""
    try:
        host = read_url(f"http://{netloc}/").host
    except Disagreement:
        return False
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_reading(url: str, what: str) -> None:
    """A URL the registry gave (a redirect, a token service) must read alike to urllib.parse, which
    decides here, and urllib3, which connects (builder/core/urls.py)."""
    try:
        read_url(url)
    except Disagreement as exc:
        raise RegistryError(f"{what} is refused: {exc}",
                            hint="Check the registry's configuration.") from None


class RegistryClient:
    """One registry host. Methods take a repository name (no host) and raise RegistryError."""

    def __init__(self, host: str, *, auth: dict | None = None, retries: int = 3, timeout: float = 30.0,
                 pool: urllib3.PoolManager | None = None) -> None:
        self.host = host
        # Docker's own rule: loopback registries speak plain HTTP, every other one TLS
        self.scheme = "http" if _loopback(host) else "https"
        self._auth = auth if auth is not None else docker_config_auth(host)
        if self._auth:
            register_secret(self._auth.get("password"))
        self._tokens: dict[tuple[str, ...], str] = {}
        self._basic = False
        self.retry = Retry(total=retries, connect=retries, read=retries, status=retries, redirect=0,
                           status_forcelist=(429, 502, 503, 504), allowed_methods=None,
                           backoff_factor=0.2, raise_on_status=False, respect_retry_after_header=False)
        self.http = pool or urllib3.PoolManager(timeout=Timeout(connect=5.0, read=timeout), retries=self.retry)
        self.bytes_sent = 0
        self.subject_indexed = False
        self._present: set[tuple[str, str]] = set()  # blobs this client put (no HEAD for them again)

    # -- the reads --------------------------------------------------------------------
    def manifest(self, repo: str, reference: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) of a manifest, or None when the registry has none."""
        resp = self._request("GET", f"/v2/{repo}/manifests/{reference}", scopes=(f"repository:{repo}:pull",),
                             headers={"Accept": ACCEPT}, ok=(200, 404), cap=MAX_MANIFEST_BYTES)
        if resp.status == 404:
            return None
        digest = "sha256:" + hashlib.sha256(resp.data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{self.host}/{repo}@{reference}: the registry sent a manifest whose digest is {digest}",
                                hint="The registry is corrupt or something between us rewrites responses.")
        media = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            media = json.loads(resp.data).get("mediaType") or media
        except ValueError:
            raise RegistryError(f"{self.host}/{repo}:{reference}: the manifest is not JSON") from None
        return resp.data, media, digest

    def blob(self, repo: str, digest: str, *, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
        """A small blob (an image config), verified against its digest."""
        resp = self._request("GET", f"/v2/{repo}/blobs/{digest}", scopes=(f"repository:{repo}:pull",),
                             cap=max_bytes)
        if "sha256:" + hashlib.sha256(resp.data).hexdigest() != digest:
            raise RegistryError(f"{self.host}/{repo}: blob {digest} does not match its digest",
                                hint="The registry is corrupt or something between us rewrites responses.")
        return resp.data

    def has_blob(self, repo: str, digest: str) -> bool:
        resp = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", scopes=(f"repository:{repo}:pull",),
                             ok=(200, 404))
        return resp.status == 200

    def referrers(self, repo: str, digest: str) -> dict | None:
        """The OCI 1.1 referrers API's index for DIGEST, or None where the registry has no such API."""
        resp = self._request("GET", f"/v2/{repo}/referrers/{digest}", scopes=(f"repository:{repo}:pull",),
                             headers={"Accept": OCI_INDEX}, ok=(200, 404, 400, 405), cap=MAX_MANIFEST_BYTES)
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if resp.status != 200 or ctype != OCI_INDEX:
            return None
        return json.loads(resp.data)

    def tags(self, repo: str, *, pages: int = MAX_TAG_PAGES) -> list[str]:
        """REPO's tags, from every page the registry gives (its Link rel="next", on this host and this
        list only), at most PAGES of them; [] when it has none."""
        path, found = f"/v2/{repo}/tags/list", set()
        for _ in range(pages):
            resp = self._request("GET", path, scopes=(f"repository:{repo}:pull",), ok=(200, 404), cap=MAX_MANIFEST_BYTES)
            if resp.status != 200:
                break
            found.update(t for t in json.loads(resp.data).get("tags") or [] if isinstance(t, str))
            nxt = _NEXT_RE.search(resp.headers.get("Link") or "")
            parts = urlsplit(nxt.group(1)) if nxt else None
            if parts is None or parts.path != f"/v2/{repo}/tags/list" or parts.netloc not in ("", self.host):
                break
            path = f"{parts.path}?{parts.query}"
        return sorted(found)

    # -- the writes -------------------------------------------------------------------
    def mount(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount (no bytes sent); False when the registry would not."""
        scopes = (f"repository:{repo}:pull,push", f"repository:{from_repo}:pull")
        query = urlencode({"mount": digest, "from": from_repo})
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/?{query}", scopes=scopes, ok=(201, 202))
        if resp.status == 202 and resp.headers.get("Location"):  # an upload was opened instead: close it
            self._request("DELETE", self._location(resp), scopes=scopes, ok=(204, 404, 405))
        return resp.status == 201

    def upload(self, repo: str, data: bytes, *, check: bool = True) -> str:
        """Put DATA as a blob (monolithic upload) unless it is there (CHECK=False: bytes that cannot be
        there yet, a timestamped document: no HEAD first); return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if (repo, digest) in self._present or (check and self.has_blob(repo, digest)):
            return digest
        scopes = (f"repository:{repo}:pull,push",)
        start = self._request("POST", f"/v2/{repo}/blobs/uploads/", scopes=scopes, ok=(202,))
        url = self._location(start)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        self._request("PUT", url, scopes=scopes, body=data, ok=(201,),
                      headers={"Content-Type": "application/octet-stream"})
        self.bytes_sent += len(data)
        self._present.add((repo, digest))
        return digest

    def copy_blob(self, source: RegistryClient, source_repo: str, repo: str, digest: str, size: int) -> int:
        """Stream a blob from another registry into REPO; return the bytes sent."""
        scopes = (f"repository:{repo}:pull,push",)
        start = self._request("POST", f"/v2/{repo}/blobs/uploads/", scopes=scopes, ok=(202,))
        url = self._location(start)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        src = source._request("GET", f"/v2/{source_repo}/blobs/{digest}", scopes=(f"repository:{source_repo}:pull",),
                              stream=True)
        try:  # a streamed body cannot be sent twice: no retries for this one request
            self._request("PUT", url, scopes=scopes, body=src, ok=(201,), retries=0,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        finally:
            src.release_conn()
        self.bytes_sent += size
        return size

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag (moving it) or its digest; return the digest."""
        resp = self._request("PUT", f"/v2/{repo}/manifests/{reference}", scopes=(f"repository:{repo}:pull,push",),
                             body=data, headers={"Content-Type": media_type}, ok=(201,))
        self.bytes_sent += len(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        # OCI 1.1: a registry that indexed a manifest's subject says so (else: the referrers tag schema)
        self.subject_indexed = bool(resp.headers.get("OCI-Subject"))
        sent = resp.headers.get("Docker-Content-Digest")
        if sent and sent != digest:
            raise RegistryError(f"{self.host}/{repo}: the registry stored the manifest as {sent}, not {digest}")
        return digest

    # -- one place that sends ------------------------------------------------------------
    def _location(self, resp) -> str:
        loc = resp.headers.get("Location") or ""
        if not loc:
            raise RegistryError(f"{self.host}: an upload answer had no Location header")
        return urljoin(f"{self.scheme}://{self.host}/", loc)

    def _request(self, method: str, path: str, *, scopes: tuple[str, ...], headers: dict | None = None,
                 body=None, ok: tuple[int, ...] = (200,), cap: int | None = None, stream: bool = False,
                 retries: int | None = None):
        url = path if "://" in path else f"{self.scheme}://{self.host}{path}"
        retry = self.retry if retries is None else Retry(total=retries, redirect=0, raise_on_status=False)
        for attempt in (1, 2):
            sent = {**(headers or {}), **self._authorization(scopes, url)}
            resp = self._send(method, url, sent, body, retry, stream=stream or cap is not None)
            if resp.status == 401 and attempt == 1 and self._authenticate(resp, scopes):
                resp.release_conn()
                continue
            break
        if resp.status not in ok:
            raise self._error(method, url, resp)
        if cap is not None:
            resp = _Capped(resp, cap, f"{self.host}{urlsplit(url).path}")
        return resp

    def _send(self, method: str, url: str, headers: dict, body, retry: Retry, *, stream: bool):
        """One request, with GET/HEAD redirects followed by hand: at most 3, and credentials
        are not sent to another host (blob storage behind a redirect gets none)."""
        for _ in range(4):
            try:
                resp = self.http.request(method, url, headers=headers, body=body, retries=retry, redirect=False,
                                         preload_content=not stream)
            except urllib3.exceptions.HTTPError as exc:
                raise RegistryError(f"{method} {redact(_clean(url))}: the registry is unreachable ({type(exc).__name__})",
                                    hint="Check the registry address and that it is running, then retry.") from None
            if resp.status not in _REDIRECTS or method not in ("GET", "HEAD"):
                return resp
            resp.release_conn()
            try:  # the Location as written and as joined must read alike to urllib.parse and urllib3
                target = join(url, resp.headers.get("Location", ""))
            except Disagreement as exc:
                raise RegistryError(f"{method} {_clean(url)}: the registry's redirect is refused: {exc}",
                                    hint="Check the registry's configuration.") from None
            if urlsplit(target).scheme not in ("https", "http") or (
                    urlsplit(target).scheme == "http" and not _loopback(urlsplit(target).netloc)):
                raise RegistryError(f"{method} {_clean(url)}: the registry redirected to a non-TLS address",
                                    hint="Registries may redirect blob reads to storage, but only over https.")
            if urlsplit(target).netloc != urlsplit(url).netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError(f"{method} {_clean(url)}: too many redirects", hint="Check the registry's configuration.")

    def _authorization(self, scopes: tuple[str, ...], url: str) -> dict:
        if urlsplit(url).netloc != self.host:
            return {}
        if scopes in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scopes]}"}
        if self._basic and self._auth:
            pair = f"{self._auth['username']}:{self._auth.get('password', '')}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def _authenticate(self, resp, scopes: tuple[str, ...]) -> bool:
        """Answer a 401's challenge; False when there is nothing more to try."""
        challenge = resp.headers.get("WWW-Authenticate") or ""
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "basic":
            if self._basic or not self._auth:
                return False
            self._basic = True
            return True
        if kind != "bearer":
            return False
        params = dict(_CHALLENGE_RE.findall(challenge))
        realm = params.get("realm", "")
        _one_reading(realm, f"{self.host}: the token service")
        parts = urlsplit(realm)
        if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.netloc)):
            raise RegistryError(f"{self.host}: the token service {parts.netloc or realm!r} is not https",
                                hint="Registry credentials are only sent to https token services.")
        query = [("service", params["service"])] if "service" in params else []
        query += [("scope", s) for s in scopes]
        headers = {}
        if self._auth:
            pair = f"{self._auth['username']}:{self._auth.get('password', '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        token_resp = self._send("GET", url, headers, None, self.retry, stream=False)
        if token_resp.status != 200:
            raise self._error("GET", realm, token_resp)
        try:
            doc = json.loads(token_resp.data)
            token = doc.get("token") or doc["access_token"]
        except (ValueError, KeyError):
            raise RegistryError(f"{self.host}: the token service sent no token") from None
        register_secret(token)
        self._tokens[scopes] = token
        return True

    def _error(self, method: str, url: str, resp) -> RegistryError:
        detail = ""
        try:
            errors = json.loads(resp.data[:65536]).get("errors") or []
            detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)[:300]
        except (ValueError, AttributeError):
            pass
        # "URL answered HTTP n": "URL: ..." would read as a "token: value" pair to redact
        what = f"{method} {_clean(url)} answered HTTP {resp.status}" + (f" ({detail})" if detail else "")
        if resp.status in (401, 403):
            hint = ("The registry refused the credentials: pass --registry-username with AGENT_IMAGE_REGISTRY_PASSWORD, "
                    "or docker login.")
        else:
            hint = "Check the reference and the registry's logs, then retry."
        return RegistryError(redact(what), hint=hint)


def _clean(url: str) -> str:
    """A URL for messages: no query (upload session ids, digests of no interest) and no userinfo."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


class _Capped:
    """A response whose body is read only up to CAP bytes (Content-Length checked first)."""

    def __init__(self, resp, cap: int, what: str) -> None:
        self.status, self.headers = resp.status, resp.headers
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            resp.release_conn()
            raise RegistryError(f"{what}: {length} bytes is more than the {cap} allowed")
        data = resp.read(cap + 1) if resp.status != 204 else b""
        resp.release_conn()
        if len(data) > cap:
            raise RegistryError(f"{what}: more than the {cap} bytes allowed")
        self.data = data
