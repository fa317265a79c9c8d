"""The Python API: ``build_image(source, options) -> BuildResult`` or an error.

This is the pipeline in order: open -> requirements -> render -> context ->
cache check -> index proxy -> engine build -> classify or tag -> push.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from .apkg import DEFAULT_LIMITS, Limits, Package, open_package
from .buildlog import Failure, classify, conflict_warnings, installed_packages, marked_step, step_lines
from .context import build_context
from .dockerfile import render
from .engine import Engine
from .errors import PackageLoadError, PackageValidationError, register_secret
from .index import resolve_index
from .indexproxy import DownloadCache, IndexProxy
from .logs import configure as configure_logs
from .requirements import Split, logical_lines, read_requirements

log = structlog.get_logger("agent_image")

DEFAULT_CACHE_DIR = Path(os.environ.get("AGENT_IMAGE_CACHE", Path.home() / ".cache" / "agent-image"))
# AGENT_IMAGE_BASE_REPOSITORY names another base repository (a CI runner's own,
# or a work tree that changes the base without touching the shared one)
BASE_REPOSITORY = os.environ.get("AGENT_IMAGE_BASE_REPOSITORY", "agent-image/base")
INPUT_LABEL = "io.pixell.agent-image.input-digest"
# what shapes the dependency layer; images that share it are that layer's cache
DEPS_LABEL = "io.pixell.agent-image.deps-key"
PACKAGING_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "requirements.txt")
VENV_LABEL = "io.pixell.agent-image.venv"  # on our base: /opt/venv is there already
_REF_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def base_image_for(python: str) -> str:
    return f"{BASE_REPOSITORY}:py{python}"


@dataclass
class BuildOptions:
    repository: str | None = None          # default: agents/NAME, or REGISTRY/NAME with a registry
    registry: str | None = None            # HOST[:PORT]/PREFIX
    push: bool = False
    registry_auth: dict | None = None      # {"username", "password"}; None: the Docker config's
    index_url: str | None = None
    allow_index_hosts: frozenset[str] = frozenset()
    ca_bundle: str | None = None           # extra CA for the index proxy's upstream TLS
    ca_bundle_in_image: bool = False       # also trust it inside the image at run time
    timeout: float = 300.0
    base_image: str | None = None
    include_env: bool = False
    cache_dir: Path = DEFAULT_CACHE_DIR
    cache_max_bytes: int = 2 * 1024 ** 3
    limits: Limits = DEFAULT_LIMITS
    nocache: bool = False
    installer: str = "pip"                  # "pip" | "uv" (uv in its own venv, outside the agent's)
    use_cache: bool = True                  # skip the build when the input digest exists
    env: dict[str, str] | None = None       # environment for index resolution (default os.environ)


@dataclass
class BuildResult:
    ok: bool
    image: str
    image_id: str
    agent: dict[str, str]
    duration_s: float
    cached: bool = False
    input_digest: str = ""
    digest_ref: str | None = None
    steps_cached: list[str] = field(default_factory=list)  # build steps the layer cache served
    steps_total: int = 0
    installed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _repository(manifest_name: str, options: BuildOptions) -> str:
    if options.repository:
        repo = options.repository
    elif options.registry:
        repo = f"{options.registry.rstrip('/')}/{manifest_name}"
    else:
        repo = f"agents/{manifest_name}"
    if not _REF_RE.match(repo):
        raise PackageValidationError(f"{repo!r} is not a valid image repository", field="--repository",
                                     hint="Use lowercase host[:port]/path components.")
    return repo


def _log_requirements(pkg: Package, split, venv: str) -> None:
    """The seed's log lines, so operators grepping for them still find them."""
    if pkg.requirements_path is None:
        log.info("No requirements.txt found, skipping dependency installation", venv=venv,
                 package_path=str(pkg.source))
    elif split.real_lines == 0:
        log.info("requirements.txt is empty, skipping dependency installation", venv=venv)
    else:
        log.info("Found requirements.txt with dependencies", venv=venv, line_count=split.real_lines)


def _dotenv_secrets(root: Path) -> None:
    env = root / ".env"
    if env.is_file():
        for line in env.read_text(encoding="utf-8", errors="replace").splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                register_secret(line.split("=", 1)[1].strip().strip("'\""))


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


def _kept_out(options: BuildOptions) -> set[str]:
    """Package files that never enter the build context."""
    return set() if options.include_env else {".env"}


def read_split(pkg: Package, options: BuildOptions) -> Split:
    """requirements.txt read, policed and split; no include may pull a kept-out file in."""
    split = read_requirements(pkg.root, options.allow_index_hosts)
    for rel in split.includes:
        if rel in _kept_out(options):  # -r/-c .env would carry its secrets into the build
            raise PackageValidationError(f"requirements.txt includes {rel} (-r/-c), which is kept out of the image",
                                         field="requirements.txt", hint=f"Do not include {rel} from requirements.")
    return split


def prepare(pkg: Package, options: BuildOptions, upstream_url: str, base_id: str, *,
            base_has_venv: bool = True, split: Split | None = None, base_has_uv: bool = True):
    """Pure-ish middle of the pipeline: requirements, Dockerfile and context."""
    split = split or read_split(pkg, options)
    base_image = options.base_image or base_image_for(pkg.manifest.python)
    rendered = render(pkg.manifest, base_image=base_image, index_identity=upstream_url,
                      deps=bool(split.deps), editable=pkg.has_setup, requirements=split.real_lines > 0,
                      installer=options.installer, ca_bundle=options.ca_bundle_in_image,
                      base_has_venv=base_has_venv, base_has_uv=base_has_uv, require_hashes=split.hashed,
                      source_requirements=bool(split.source))
    generated = {"Dockerfile": rendered.text.encode()}
    # the packaging files, for the install pass that runs before the code is copied;
    # package __init__.py files too, so setup(packages=[...]) finds its folders
    inits = sorted(f for f in pkg.files if f == "__init__.py" or f.endswith("/__init__.py"))
    for rel in (*PACKAGING_FILES, *split.includes, *inits):
        path = pkg.root / rel
        if path.is_file() and not path.is_symlink():
            generated[f".agent-image/meta/{rel}"] = path.read_bytes()
    if options.ca_bundle_in_image:
        generated[".agent-image/extra-ca.pem"] = read_ca_bundle(options.ca_bundle)
    if split.deps:
        generated[".agent-image/deps/requirements-deps.txt"] = split.deps_text.encode()
        for name, text in split.constraints.items():
            generated[f".agent-image/deps/{name}"] = text.encode()
    context = build_context(pkg.root, generated, exclude=_kept_out(options))
    digest = hashlib.sha256(json.dumps(
        [context.digest, base_id, upstream_url, __version__], sort_keys=True).encode()).hexdigest()
    return split, rendered, context, digest


def build_image(source: str | os.PathLike, options: BuildOptions | None = None,
                engine: Engine | None = None) -> BuildResult:
    """Build the agent image for SOURCE. Returns a BuildResult or raises PackageLoadError."""
    if not structlog.is_configured():
        # a library caller that set nothing up gets our redacting logs on stderr,
        # not structlog's default of every debug line on stdout
        configure_logs()
    options = options or BuildOptions()
    started = time.monotonic()
    with open_package(source, options.limits) as pkg:
        m = pkg.manifest
        venv = f"{m.name}-{m.version}"
        log.info("Opened agent package", agent=m.name, version=m.version, runtime=m.runtime,
                 source=str(pkg.source), kind=pkg.source_kind, files=len(pkg.files))
        _dotenv_secrets(pkg.root)
        if options.include_env and (pkg.root / ".env").is_file():
            log.warning("Including .env in the image (--include-env): its values ship to whoever pulls it",
                        agent=m.name)
        repo = _repository(m.name, options)
        ref = f"{repo}:{m.version}"
        upstream = resolve_index(options.index_url, options.env)
        if options.ca_bundle:
            read_ca_bundle(options.ca_bundle)

        # everything the package itself can get wrong is reported before the engine is asked
        split = read_split(pkg, options)
        engine = engine or Engine()
        engine.ping()
        base_image = options.base_image or base_image_for(m.python)
        base = engine.require_image(base_image, hint=f"Run `agent-image base --python {m.python}` "
                                                    "(scripts/setup.sh does it) and retry.")
        split, rendered, context, digest = prepare(pkg, options, upstream.url, base.id,
                                                   base_has_venv=base.labels.get(VENV_LABEL) == "/opt/venv",
                                                   split=split, base_has_uv=_base_has_uv(base.labels))
        _log_requirements(pkg, split, venv)
        input_tag = f"{repo}:in-{digest[:20]}"

        cache_from: list[str] = []
        if options.use_cache and not options.nocache:
            hit = engine.image(input_tag)
            if hit is None and _remote(repo):
                hit, cache_from = _from_registry(engine, repo, input_tag, options)
            if hit is not None and hit.labels.get(INPUT_LABEL) == digest:
                engine.tag(hit.id, ref)
                log.info("Inputs unchanged: reusing the image", image=ref, image_id=hit.id, input_digest=digest)
                result = BuildResult(ok=True, image=ref, image_id=hit.id, agent={"name": m.name, "version": m.version},
                                     duration_s=round(time.monotonic() - started, 3), cached=True, input_digest=digest)
                return _maybe_push(result, engine, options)
            if not cache_from:
                cache_from = _own_previous(engine, repo, ref)

        key = deps_key(rendered.text, split, base.id)
        if key and not options.nocache:
            cache_from += [i for i in engine.images_labelled(DEPS_LABEL, key) if i not in cache_from]
        # the agent's labels are in the Dockerfile; the digest of that Dockerfile can't be
        labels = {INPUT_LABEL: digest, **({DEPS_LABEL: key} if key else {})}
        cache = DownloadCache(Path(options.cache_dir) / "downloads", options.cache_max_bytes)
        with IndexProxy(upstream, cache, ca_bundle=options.ca_bundle) as proxy:
            log.info("Installing dependencies from requirements.txt" if split.real_lines else "Building agent image",
                     venv=venv, index=upstream.url, context_bytes=context.size, steps=len(rendered.steps))

            def on_step(n: int, total: int, instr: str) -> None:
                name = rendered.step_name(n)
                if name == "package" and instr.startswith("RUN"):
                    log.info("Installing agent package in editable mode", venv=venv, step=f"{n}/{total}")
                log.info("build step", step=f"{n}/{total}", name=name, instruction=instr[:120])

            outcome = engine.build(context=context.data, buildargs={"http_proxy": proxy.address},
                                   labels=labels, timeout=options.timeout, nocache=options.nocache,
                                   cache_from=cache_from,
                                   on_step=on_step, on_line=lambda line: log.debug("build", line=line))
            stats = proxy.stats

        if outcome.error is not None or outcome.image_id is None:
            step, lines = marked_step(step_lines(outcome.lines, outcome.failed_step),
                                      rendered.step_name(outcome.failed_step or 0))
            failure = Failure(step=step, lines=lines,
                              error=outcome.error or "", all_lines=outcome.lines, deps=split.deps,
                              requirements=_all_lines(pkg.root), auth_failures=stats.auth_failures,
                              unreachable=stats.unreachable, not_found=stats.not_found,
                              versions=stats.versions)
            err = classify(failure)
            log.error("Requirements installation failed" if step in ("deps", "requirements") else "Build failed",
                      venv=venv, step=step, error_class=type(err).__name__, error=str(err))
            raise err

        engine.tag(outcome.image_id, ref)
        engine.tag(outcome.image_id, input_tag)
        # a step counts as cached when every instruction in it was
        cached_names = sorted({name for name in rendered.steps
                               if all(n in outcome.cached for n, other in enumerate(rendered.steps, 1)
                                      if other == name and n > 1)} - {"base"})
        if "deps" in cached_names:
            log.info("Dependency layer reused from cache", venv=venv)
        installed = installed_packages(outcome.lines)
        warnings = conflict_warnings(outcome.lines)
        for w in warnings:
            log.warning("Dependency conflict resolved in favour of requirements.txt", venv=venv, detail=w)
        if split.real_lines:
            log.info("Requirements installed successfully", venv=venv, requirements_file="requirements.txt")
        if installed:
            log.info("Installed dependencies", venv=venv, packages=installed)
        result = BuildResult(
            ok=True, image=ref, image_id=outcome.image_id, agent={"name": m.name, "version": m.version},
            duration_s=round(time.monotonic() - started, 3), input_digest=digest,
            steps_cached=cached_names, steps_total=outcome.total_steps, installed=installed,
            warnings=warnings, index={"url": upstream.url, **stats.as_dict()})
        log.info("Agent image ready", venv=venv, image=ref, image_id=outcome.image_id,
                 package_installed=pkg.has_setup, requirements_installed=split.real_lines > 0,
                 cached_steps=cached_names, duration_s=result.duration_s)
        return _maybe_push(result, engine, options)


def deps_key(dockerfile: str, split: Split, base_id: str) -> str | None:
    """Identity of the dependency layer: the base, the Dockerfile up to that layer
    (index identity, installer) and the dependency lines with their constraints.
    Agents that share it pass each other's images as cache_from: the classic
    builder with cache_from trusts only the images listed, so without them a
    second agent with the same lines reinstalls everything."""
    if not split.deps:
        return None
    head = dockerfile.split("#> step config", 1)[0]
    head = head[head.find("#> step base"):]  # the first line names the agent
    return hashlib.sha256(json.dumps([base_id, head, split.deps_text, split.constraints, __version__],
                                     sort_keys=True).encode()).hexdigest()


def _base_has_uv(labels: dict[str, str]) -> bool:
    """Our base carries uv in /opt/agent-image/tools: an agent image then adds none."""
    from .base import UV_LABEL
    from .dockerfile import UV_VERSION
    return labels.get(UV_LABEL) == UV_VERSION


def _own_previous(engine: Engine, repo: str, ref: str) -> list[str]:
    """The agent's own last image as the layer cache. Without it the classic
    builder takes the newest local image matching each step, and the first
    steps are the same for every agent: one other agent's --no-cache build
    would then cost this agent a full dependency reinstall."""
    for candidate in (ref, f"{repo}:latest"):
        image = engine.image(candidate)
        if image is not None:
            return [image.id]
    return []


def _remote(repo: str) -> bool:
    """Does REPO name a registry host (host.domain or host:port first)?"""
    first = repo.split("/", 1)[0]
    return "/" in repo and ("." in first or ":" in first or first == "localhost")


def _from_registry(engine: Engine, repo: str, input_tag: str, options: BuildOptions):
    """An ephemeral runner starts empty: take the exact image from the registry if it
    was built before, else the agent's last pushed image as a layer cache."""
    from .errors import EngineError, RegistryError
    try:
        return engine.pull(input_tag, auth=options.registry_auth), []
    except (RegistryError, EngineError) as exc:
        log.debug("no exact image in the registry", image=input_tag, reason=str(exc)[:200])
    try:
        last = f"{repo}:latest"
        engine.pull(last, auth=options.registry_auth)
        log.info("Using the last pushed image as a layer cache", cache_from=last)
        return None, [last]
    except (RegistryError, EngineError) as exc:
        log.debug("no previous image in the registry", image=f"{repo}:latest", reason=str(exc)[:200])
        return None, []


def _all_lines(root: Path):
    path = root / "requirements.txt"
    return logical_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else []


def _maybe_push(result: BuildResult, engine: Engine, options: BuildOptions) -> BuildResult:
    if options.push:
        from .registry import push_image
        if not options.registry and not options.repository:
            raise PackageValidationError("--push needs --registry (or --repository) to know where to push",
                                         field="--registry", hint="Add --registry HOST[:PORT]/PREFIX.")
        result.digest_ref = push_image(engine, result.image, input_digest=result.input_digest,
                                       auth=options.registry_auth)
    return result
