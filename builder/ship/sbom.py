"""The image's CycloneDX 1.6 SBOM, from what the build knows: no scan.

- the venv's distributions: the listing every install step writes into the image
  (DISTS_PATH, builder/plan/dockerfile.py: name, version, licence, direct_url.json),
  read back from a created, never started container;
- the file each came from and its sha256 as downloaded: the index proxy's record of
  the files this build's installers fetched (builder/build/proxy/server.py), and the
  download cache's record of earlier builds (a dependency layer reused from an image
  carries no download; a runner that never downloaded it says so in a property);
- the index, without credentials; the agent (agent.yaml); the base (name, digest); the
  builder's version.

Built and validated with cyclonedx-python-lib (its JSON schema validator).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from builder.core.errors import BuildError

SPEC = "1.6"
_NAME_RE = re.compile(r"[-_.]+")


def normalise(name: str) -> str:
    return _NAME_RE.sub("-", name).lower()


@dataclass
class Dist:
    name: str
    version: str
    licence: str = ""
    classifiers: list[str] = field(default_factory=list)
    direct_url: str | None = None
    location: str = ""


def read_listing(raw: bytes) -> list[Dist]:
    """The image's listing (LIST_DISTS's JSON) to Dists; malformed is a BuildError (the image is ours)."""
    try:
        rows = json.loads(raw)
        return [Dist(str(r[0]), str(r[1]), str(r[2] or ""), [str(c) for c in r[3] or []], r[4],
                     str(r[5]) if len(r) > 5 else "") for r in rows]
    except (ValueError, TypeError) as exc:
        raise BuildError(f"the image's distribution listing is malformed ({exc})",
                         hint="Rebuild the image with this agent-image.") from None


def dists_of(engine, image: str) -> list[Dist]:
    """The venv's distributions in IMAGE: its listing, else (an image with no install step) the
    same listing printed by the image's python (a container run, the one slow path)."""
    from builder.plan.dockerfile import DISTS_PATH, LIST_DISTS_STDOUT
    raw = engine.read_file(image, DISTS_PATH)
    if raw is None:
        raw = engine.run_once(image, ["python", "-I", "-W", "ignore", "-c", LIST_DISTS_STDOUT]).encode()
    return read_listing(raw)


def _licence(d: Dist):
    try:  # its home since 11.x; cyclonedx.factory.license before (deprecated there now)
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:
        from cyclonedx.factory.license import LicenseFactory
    text = d.licence.strip()
    if text and "\n" not in text and len(text) <= 100:
        return [LicenseFactory().make_from_string(text)]
    names = [c.rsplit("::", 1)[-1].strip() for c in d.classifiers if c.count("::") >= 2]
    return [LicenseFactory().make_from_string(n) for n in names[:1]]


def make_sbom(*, agent: dict[str, str], dists: list[Dist], files: dict[str, dict], index_url: str,
              base: dict[str, str], builder_version: str, serial: str | None = None) -> bytes:
    """The SBOM as JSON bytes, validated. FILES: normalised name -> {"sha256", "file", "index", "version"}."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL
    from uuid import UUID

    bom = Bom(**({"serial_number": UUID(serial)} if serial else {}))
    root = Component(type=ComponentType.APPLICATION, name=agent["name"], version=agent["version"],
                     bom_ref=f"agent:{agent['name']}@{agent['version']}",
                     properties=[Property(name="agent-image:role", value="agent")])
    bom.metadata.component = root
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="agent-image",
                                                version=builder_version, group="io.pixell"))
    base_ref = Component(type=ComponentType.CONTAINER, name=base["name"], version=base.get("digest") or base["id"],
                         bom_ref="base", hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h.split(":", 1)[1])
                                                 for h in (base.get("digest"),) if h and h.startswith("sha256:")],
                         properties=[Property(name="agent-image:role", value="base"),
                                     Property(name="agent-image:image-id", value=base["id"])])
    bom.components.add(base_ref)
    libs = []
    for d in dists:
        key = normalise(d.name)
        got = files.get(key) if (files.get(key) or {}).get("version") in (None, d.version) else None
        props = [Property(name="agent-image:source", value=_source(d, got))]
        if got:
            props.append(Property(name="agent-image:file", value=got["file"]))
        lib = Component(
            type=ComponentType.LIBRARY, name=d.name, version=d.version, bom_ref=f"pypi:{key}@{d.version}",
            purl=PackageURL(type="pypi", name=key, version=d.version), licenses=_licence(d), properties=props,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=got["sha256"])] if got else [],
            external_references=[ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                                   url=XsUri(got.get("index") or index_url))] if got else [])
        bom.components.add(lib)
        libs.append(lib)
    bom.register_dependency(root, [base_ref, *libs])
    return _serialise(bom)


def _source(d: Dist, got: dict | None) -> str:
    if got:
        return "index"
    if d.location.rstrip("/") == "/app" or (d.direct_url and '"file:///app' in d.direct_url):
        return "agent package"
    return "not downloaded by a build on this runner (the base's venv, or a reused layer)"


def _serialise(bom) -> bytes:
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    text = JsonV1Dot6(bom).output_as_string()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise BuildError(f"the SBOM does not validate against CycloneDX {SPEC}: {str(error)[:300]}",
                         hint="This is agent-image's fault: report it with the build's log.")
    return text.encode()


def rebased(sbom: bytes, base: dict[str, str]) -> bytes:
    """The SBOM of a rebased image: the same document with its base component replaced."""
    doc = json.loads(sbom)
    for comp in doc.get("components") or []:
        if comp.get("bom-ref") == "base":
            comp.update({"name": base["name"], "version": base.get("digest") or base["id"]})
            if (base.get("digest") or "").startswith("sha256:"):
                comp["hashes"] = [{"alg": "SHA-256", "content": base["digest"].split(":", 1)[1]}]
            comp["properties"] = [{"name": "agent-image:role", "value": "base"},
                                  {"name": "agent-image:image-id", "value": base["id"]}]
    doc.pop("serialNumber", None)
    return json.dumps(doc, indent=2).encode()
