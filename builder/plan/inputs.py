"""What a build sends the engine, worked out from the package alone: the
requirements read and split, the Dockerfile, the generated files and the
content identity. No engine here."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import structlog

from builder.core.errors import PackageValidationError
from builder.core.redact import current_redactor
from builder.core.refs import REPOSITORY_RE
from builder.package.dotenv import env_values
from builder.package.piplines import decode, written_as_read_text
from builder.package.reader import Package
from builder.package.requirements import Split, read_requirements
from builder.plan.context import files_digest
from builder.plan.dockerfile import render
from builder.plan.proxied import proxied_requirements

if TYPE_CHECKING:
    from builder.plan.options import BuildOptions

log = structlog.get_logger("agent_image")

PACKAGING_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "requirements.txt")


def check_identity(manifest, options: BuildOptions) -> None:
    """The caller says which agent this upload is for; the package may not name another.

    NAME picks the repository (REGISTRY/NAME) and VERSION the tag, so a package
    naming another agent would push over that agent's images and its layer cache.
    """
    for field_name, have, want, option in (("name", manifest.name, options.expect_name, "--expect-name"),
                                          ("metadata.version", manifest.version, options.expect_version,
                                           "--expect-version")):
        if want is not None and have != want:
            raise PackageValidationError(
                f"agent.yaml {field_name} is {have!r}, but this build is for {want!r} ({option})",
                field=field_name, hint=f"Upload the package of {want!r}, or fix {field_name} in its agent.yaml.")


def log_requirements(pkg: Package, split, venv: str) -> None:
    """The seed's log lines, so operators grepping for them still find them."""
    if pkg.requirements_path is None:
        log.info("No requirements.txt found, skipping dependency installation", venv=venv,
                 package_path=str(pkg.source))
    elif split.real_lines == 0:
        log.info("requirements.txt is empty, skipping dependency installation", venv=venv)
    else:
        log.info("Found requirements.txt with dependencies", venv=venv, line_count=split.real_lines)


def learn_env_values(pkg: Package, paths: list[str]) -> None:
    """This build's redactor hides the values of the package's .env files; a value
    the package shows itself (agent.yaml, requirements, setup files) is no secret."""
    public = "\n".join((pkg.root / rel).read_text(encoding="utf-8", errors="replace")
                       for rel in ("agent.yaml", *PACKAGING_FILES)
                       if (pkg.root / rel).is_file() and not pkg.kept_out(rel))
    redactor = current_redactor()
    for value in env_values(pkg.root, paths):
        redactor.add_value(value, public)


def read_ca_bundle(path: str | None) -> bytes:
    """The --ca-bundle file, checked before any work: a wrong path fails here, not mid-build."""
    if not path:
        raise PackageValidationError("--ca-bundle-in-image needs --ca-bundle PEM.", field="--ca-bundle",
                                     hint="Name the PEM file with --ca-bundle.")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PackageValidationError(f"Cannot read the CA bundle {path}: {exc.strerror}.", field="--ca-bundle",
                                     hint="Pass a readable PEM file.") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise PackageValidationError(f"The CA bundle {path} holds no PEM certificate.", field="--ca-bundle",
                                     hint="Pass a file with one or more '-----BEGIN CERTIFICATE-----' blocks.")
    return data


def check_cache_dir(path: Path) -> None:
    """The cache folder must be a folder we can write, checked before any work."""
    try:
        (Path(path) / "downloads").mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=Path(path) / "downloads").close()
    except OSError as exc:
        reason = "it is a file" if Path(path).is_file() else exc.strerror or str(exc)
        raise PackageValidationError(
            f"The cache folder {path} is not a writable folder: {reason}.", field="--cache-dir",
            hint="Pass --cache-dir with a folder you can write (default ~/.cache/agent-image, "
                 "or $AGENT_IMAGE_CACHE).") from None


def repository(manifest_name: str, options: BuildOptions) -> str:
    """The agent's image repository: --repository, else REGISTRY/NAME, else agents/NAME."""
    if options.repository:
        repo = options.repository
    elif options.registry:
        repo = f"{options.registry.rstrip('/')}/{manifest_name}"
    else:
        repo = f"agents/{manifest_name}"
    if not REPOSITORY_RE.match(repo):
        raise PackageValidationError(f"{repo!r} is not a valid image repository", field="--repository",
                                     hint="Use lowercase host[:port]/path components.")
    return repo


def kept_out(pkg: Package, options: BuildOptions) -> set[str]:
    """Package paths that never enter the build context: every .env file (and .env folder)."""
    # (and every file that is one of them under another name: a hard link)
    return set() if options.include_env else {*pkg.env_paths, *pkg.env_aliases}


def read_split(pkg: Package, options: BuildOptions, deadline: float | None = None) -> Split:
    """requirements.txt read, policed and split; no include may pull a kept-out file in.
    DEADLINE (time.monotonic()): --timeout, which covers the reading too."""
    # -r/-c .env (or a requirements.txt linking to it, or a hard link to it) would carry its secrets into the build
    return read_requirements(pkg.root, options.allow_index_hosts,
                             keep_out=None if options.include_env else pkg.kept_out, deadline=deadline)


def render_agent(pkg: Package, options: BuildOptions, upstream_url: str, split: Split, *, base_image: str,
                 base_has_venv: bool, base_labels: dict[str, str] | None, base_has_uv: bool = True,
                 deps_image: str = "", pip_report: bool = False, tool_pip: bool = False,
                 base_has_runtime: bool = False, provenance: Mapping[str, str] | None = None):
    return render(pkg.manifest, base_image=base_image, index_identity=upstream_url,
                  deps=bool(split.deps), editable=pkg.has_setup, requirements=split.real_lines > 0,
                  installer=options.installer, ca_bundle=options.ca_bundle_in_image,
                  base_has_venv=base_has_venv, base_has_uv=base_has_uv, base_has_runtime=base_has_runtime,
                  require_hashes=split.hashed,
                  source_requirements=bool(split.source), base_labels=base_labels or {},
                  deps_image=deps_image, pip_report=pip_report, tool_pip=tool_pip,
                  provenance=options.provenance if provenance is None else provenance)


def content_digest(pkg: Package, options: BuildOptions, upstream_url: str, split: Split, added: Mapping[str, bytes], *,
                   base_has_venv: bool = True, base_has_uv: bool = True, tool_pip: bool = False) -> str:
    """The content identity: the input digest without the base image (its name, id and
    labels are rendered as placeholders) and without anything of the runner. Two
    runners building one package with one set of options agree on it; tag
    immutability compares it, not image bytes. ADDED: ``added_files``' files."""
    text = render_agent(pkg, options, upstream_url, split, base_image="agent-image-base", base_has_venv=base_has_venv,
                   base_labels={}, base_has_uv=base_has_uv, tool_pip=tool_pip,
                   provenance={}).text  # where the bytes came from is not what they are
    # (files an --allow-index-host rewrite replaces in the context follow from the originals hashed here)
    files = files_digest(pkg.root, {"Dockerfile": text.encode(), **added}, exclude=kept_out(pkg, options))
    return "sha256:" + hashlib.sha256(json.dumps([files, upstream_url]).encode()).hexdigest()


def generated_files(pkg: Package, options: BuildOptions, split: Split,
               dockerfile: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``added_files`` with DOCKERFILE: the files the builder adds to the context."""
    added, proxied = added_files(pkg, options, split)
    return {"Dockerfile": dockerfile.encode(), **added}, proxied


def added_files(pkg: Package, options: BuildOptions, split: Split) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The files the builder adds to the context next to the package, but the Dockerfile
    (it differs between renderings, these do not), and the package files whose content
    it replaces (index URLs rewritten to the proxy)."""
    generated = {}
    # the packaging files, for the install pass that runs before the code is copied;
    # package __init__.py files too, so setup(packages=[...]) finds its folders
    inits = sorted(f for f in pkg.files if f == "__init__.py" or f.endswith("/__init__.py"))
    # what the installers read is each requirement file as pip read it (no comment, continuation or
    # word pip drops: uv and the image's older pip cannot read it otherwise), with index URLs on
    # --allow-index-host hosts turned into proxy URLs (the sandbox reaches nothing else)
    proxied = {}
    for rel in ("requirements.txt", *split.includes):
        path = pkg.root / rel
        if path.is_file() and not path.is_symlink():
            text = decode(path.read_bytes(), rel)  # as the policy read it (a UTF-8 byte-order mark is not text)
            rewritten = proxied_requirements(written_as_read_text(text, rel), options.allow_index_hosts)
            if rewritten != text:
                proxied[rel] = rewritten.encode()
    for rel in (*PACKAGING_FILES, *split.includes, *inits):
        if not options.include_env and pkg.kept_out(rel):
            continue
        path = pkg.root / rel
        if path.is_file() and not path.is_symlink():
            generated[f".agent-image/meta/{rel}"] = proxied.get(rel) or path.read_bytes()
    if options.ca_bundle_in_image:
        generated[".agent-image/extra-ca.pem"] = read_ca_bundle(options.ca_bundle)
    if split.deps:
        hosts = options.allow_index_hosts
        generated[".agent-image/deps/requirements-deps.txt"] = proxied_requirements(split.deps_text, hosts).encode()
        for name, text in split.constraints.items():
            generated[f".agent-image/deps/{name}"] = proxied_requirements(written_as_read_text(text, name),
                                                                          hosts).encode()
    return generated, proxied
