"""The Python API: ``build_image(source, options) -> BuildResult`` or an error.

This is the pipeline in order: open -> requirements -> render -> context ->
cache check -> index proxy -> engine build -> classify or tag -> push.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from .apkg import DEFAULT_LIMITS, Limits, Package, open_package
from .buildlog import Failure, classify, conflict_warnings, installed_packages, marked_step, step_lines
from .context import build_context, files_digest
from .dockerfile import render
from .engine import Engine
from .dotenv import env_values, is_env_path
from .errors import PackageLoadError, PackageValidationError, current_redactor, redaction_scope
from .index import resolve_index
from .indexproxy import DownloadCache, IndexProxy, proxied_requirements
from .sandbox import Sandbox
from .upstream import DEFAULT_FILE_BYTES, DEFAULT_PAGE_BYTES
from .layercache import deps_key, from_registry, own_previous, remote, same_agent
from .logs import configure as configure_logs
from .rebase import CONTENT_LABEL, base_labels
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


_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")


def check_image_ref(ref: str, option: str) -> str:
    """REPOSITORY[:TAG][@sha256:DIGEST] or an image id, checked before the engine is
    asked: a malformed one would come back from the engine as a 400, told as
    'engine unreachable'."""
    name, _, digest = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    repo, tag = (name[:colon], name[colon + 1:]) if colon > slash else (name, None)
    if _DIGEST_RE.match(ref) or (_REF_RE.match(repo) and (tag is None or _TAG_RE.match(tag))
                                  and (not digest or _DIGEST_RE.match(digest))):
        return ref
    raise PackageValidationError(f"{ref!r} is not a valid image reference", field=option,
                                 hint="Use REPOSITORY[:TAG] or REPOSITORY@sha256:DIGEST, e.g. agent-image/base:py3.11.")


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
    index_page_max_bytes: int = DEFAULT_PAGE_BYTES  # the proxy refuses a bigger index page
    download_max_bytes: int = DEFAULT_FILE_BYTES    # ... and a bigger file (not kept in the cache)
    limits: Limits = DEFAULT_LIMITS
    nocache: bool = False
    installer: str = "pip"                  # "pip" | "uv" (uv in its own venv, outside the agent's)
    use_cache: bool = True                  # skip the build when the input digest exists
    env: dict[str, str] | None = None       # environment for index resolution (default os.environ)
    expect_name: str | None = None          # the caller's agent: agent.yaml must name it (it picks the repository)
    expect_version: str | None = None       # ... and this version (it picks the tag)
    overwrite: bool = False                 # --push may replace a NAME:VERSION that holds other content


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
    tag_kept: bool = False  # the registry's NAME:VERSION already held this content: nothing was pushed

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


def _log_requirements(pkg: Package, split, venv: str) -> None:
    """The seed's log lines, so operators grepping for them still find them."""
    if pkg.requirements_path is None:
        log.info("No requirements.txt found, skipping dependency installation", venv=venv,
                 package_path=str(pkg.source))
    elif split.real_lines == 0:
        log.info("requirements.txt is empty, skipping dependency installation", venv=venv)
    else:
        log.info("Found requirements.txt with dependencies", venv=venv, line_count=split.real_lines)


def _learn_env_values(pkg: Package, paths: list[str]) -> None:
    """This build's redactor hides the values of the package's .env files; a value
    the package shows itself (agent.yaml, requirements, setup files) is no secret."""
    public = "\n".join((pkg.root / rel).read_text(encoding="utf-8", errors="replace")
                       for rel in ("agent.yaml", *PACKAGING_FILES) if (pkg.root / rel).is_file())
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


def _kept_out(pkg: Package, options: BuildOptions) -> set[str]:
    """Package paths that never enter the build context: every .env file (and .env folder)."""
    return set() if options.include_env else set(pkg.env_paths)


def read_split(pkg: Package, options: BuildOptions) -> Split:
    """requirements.txt read, policed and split; no include may pull a kept-out file in."""
    # -r/-c .env (or a requirements.txt linking to it) would carry its secrets into the build
    return read_requirements(pkg.root, options.allow_index_hosts, keep_out=None if options.include_env else is_env_path)


def _render(pkg: Package, options: BuildOptions, upstream_url: str, split: Split, *, base_image: str,
            base_has_venv: bool, base_labels: dict[str, str] | None, base_has_uv: bool = True):
    return render(pkg.manifest, base_image=base_image, index_identity=upstream_url,
                  deps=bool(split.deps), editable=pkg.has_setup, requirements=split.real_lines > 0,
                  installer=options.installer, ca_bundle=options.ca_bundle_in_image,
                  base_has_venv=base_has_venv, base_has_uv=base_has_uv, require_hashes=split.hashed,
                  source_requirements=bool(split.source), base_labels=base_labels or {})


def prepare(pkg: Package, options: BuildOptions, upstream_url: str, base_id: str, *,
            base_has_venv: bool = True, split: Split | None = None, base_labels: dict[str, str] | None = None,
            base_has_uv: bool = True):
    """Pure-ish middle of the pipeline: requirements, Dockerfile and context."""
    check_identity(pkg.manifest, options)
    split = split or read_split(pkg, options)
    base_image = options.base_image or base_image_for(pkg.manifest.python)
    rendered = _render(pkg, options, upstream_url, split, base_image=base_image, base_has_venv=base_has_venv,
                       base_labels=base_labels, base_has_uv=base_has_uv)
    generated, replace = _generated(pkg, options, split, rendered.text)
    context = build_context(pkg.root, generated, exclude=_kept_out(pkg, options), replace=replace)
    digest = hashlib.sha256(json.dumps(
        [context.digest, base_id, upstream_url, __version__], sort_keys=True).encode()).hexdigest()
    return split, rendered, context, digest


def content_digest(pkg: Package, options: BuildOptions, upstream_url: str, split: Split, *,
                   base_has_venv: bool = True, base_has_uv: bool = True) -> str:
    """The content identity: the input digest without the base image (its name, id and
    labels are rendered as placeholders) and without anything of the runner. Two
    runners building one package with one set of options agree on it; tag
    immutability compares it, not image bytes."""
    text = _render(pkg, options, upstream_url, split, base_image="agent-image-base", base_has_venv=base_has_venv,
                   base_labels={}, base_has_uv=base_has_uv).text
    # (files an --allow-index-host rewrite replaces in the context follow from the originals hashed here)
    files = files_digest(pkg.root, _generated(pkg, options, split, text)[0], exclude=_kept_out(pkg, options))
    return "sha256:" + hashlib.sha256(json.dumps([files, upstream_url]).encode()).hexdigest()


def _generated(pkg: Package, options: BuildOptions, split: Split,
               dockerfile: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The files the builder adds to the context next to the package, and the package
    files whose content it replaces (index URLs rewritten to the proxy)."""
    generated = {"Dockerfile": dockerfile.encode()}
    # the packaging files, for the install pass that runs before the code is copied;
    # package __init__.py files too, so setup(packages=[...]) finds its folders
    inits = sorted(f for f in pkg.files if f == "__init__.py" or f.endswith("/__init__.py"))
    # index URLs on --allow-index-host hosts become proxy URLs in what the build reads (the sandbox reaches
    # nothing else); without that option every file goes in as it is
    proxied = {}
    for rel in ("requirements.txt", *split.includes) if options.allow_index_hosts else ():
        path = pkg.root / rel
        if path.is_file() and not path.is_symlink():
            text = path.read_text(encoding="utf-8", errors="replace")
            rewritten = proxied_requirements(text, options.allow_index_hosts)
            if rewritten != text:
                proxied[rel] = rewritten.encode()
    for rel in (*PACKAGING_FILES, *split.includes, *inits):
        if not options.include_env and is_env_path(rel):
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
            generated[f".agent-image/deps/{name}"] = proxied_requirements(text, hosts).encode()
    return generated, proxied


def build_image(source: str | os.PathLike, options: BuildOptions | None = None,
                engine: Engine | None = None) -> BuildResult:
    """Build the agent image for SOURCE. Returns a BuildResult or raises PackageLoadError.

    Each build redacts with its own Redactor (its credentials, its .env values):
    nothing it learns reaches the next build in this process.
    """
    with redaction_scope() as redactor:
        if options is not None and options.registry_auth:
            redactor.add_secret(options.registry_auth.get("password"))
        try:
            result = _build_image(source, options, engine)
        except PackageLoadError as err:
            raise err.redacted(redactor) from None
        result.warnings = [redactor(w) for w in result.warnings]
        result.installed = [redactor(p) for p in result.installed]
        return result


def _build_image(source: str | os.PathLike, options: BuildOptions | None, engine: Engine | None) -> BuildResult:
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
        dotenv = pkg.env_paths
        _learn_env_values(pkg, dotenv)
        check_identity(m, options)
        for rel in dotenv if options.include_env else ():
            log.warning("Including .env in the image (--include-env): its values ship to whoever pulls it",
                        agent=m.name, path=rel)
        repo = _repository(m.name, options)
        ref = f"{repo}:{m.version}"
        upstream = resolve_index(options.index_url, options.env)
        if options.ca_bundle:
            read_ca_bundle(options.ca_bundle)
        check_cache_dir(options.cache_dir)

        # everything the package itself can get wrong is reported before the engine is asked
        split = read_split(pkg, options)
        if options.base_image:
            check_image_ref(options.base_image, "--base-image")
        engine = engine or Engine()
        engine.ping()
        base_image = options.base_image or base_image_for(m.python)
        base = _base(engine, base_image, options, m.python)
        has_venv, has_uv = base.labels.get(VENV_LABEL) == "/opt/venv", _base_has_uv(base.labels)
        split, rendered, context, digest = prepare(pkg, options, upstream.url, base.id, base_has_venv=has_venv,
                                                   split=split, base_labels=base_labels(base_image, base.digests,
                                                                                        base.layers),
                                                   base_has_uv=has_uv)
        content = content_digest(pkg, options, upstream.url, split, base_has_venv=has_venv, base_has_uv=has_uv)
        _log_requirements(pkg, split, venv)
        input_tag = f"{repo}:in-{digest[:20]}"

        cache_from: list[str] = []
        if options.use_cache and not options.nocache:
            hit = engine.image(input_tag)
            if hit is None and remote(repo):
                hit, cache_from = from_registry(engine, repo, input_tag, options.registry_auth, m)
            if hit is not None and hit.labels.get(INPUT_LABEL) == digest and same_agent(hit, m):
                kept = _guard_tag(ref, hit.id, content, options)
                engine.tag(hit.id, ref)
                log.info("Inputs unchanged: reusing the image", image=ref, image_id=hit.id, input_digest=digest)
                result = BuildResult(ok=True, image=ref, image_id=hit.id, agent={"name": m.name, "version": m.version},
                                     duration_s=round(time.monotonic() - started, 3), cached=True, input_digest=digest)
                return _maybe_push(result, engine, options, kept)

        key = deps_key(rendered.text, split, base.id)
        if key and not options.nocache:
            cache_from += [i for i in engine.images_labelled(DEPS_LABEL, key) if i not in cache_from]
        # the agent's labels are in the Dockerfile; the digest of that Dockerfile can't be
        labels = {INPUT_LABEL: digest, CONTENT_LABEL: content, **({DEPS_LABEL: key} if key else {})}
        cache = DownloadCache(Path(options.cache_dir) / "downloads", options.cache_max_bytes)
        # the build's network (builder/sandbox.py): it starts in the background now
        with Sandbox(engine, base_image) as sandbox, \
                IndexProxy(upstream, cache, ca_bundle=options.ca_bundle, allowed_hosts=options.allow_index_hosts,
                           page_max_bytes=options.index_page_max_bytes, file_max_bytes=options.download_max_bytes,
                           unix_path=sandbox.socket_path) as proxy:
            log.info("Installing dependencies from requirements.txt" if split.real_lines else "Building agent image",
                     venv=venv, index=upstream.url, context_bytes=context.size, steps=len(rendered.steps))
            if options.use_cache and not options.nocache and not cache_from:  # while the sandbox starts
                cache_from = own_previous(engine, repo, ref, m)

            def on_step(n: int, total: int, instr: str) -> None:
                name = rendered.step_name(n)
                if name == "package" and instr.startswith("RUN"):
                    log.info("Installing agent package in editable mode", venv=venv, step=f"{n}/{total}")
                log.info("build step", step=f"{n}/{total}", name=name, instruction=instr[:120])

            sandbox.wait(proxy.ready)
            outcome = engine.build(context=context.data, buildargs={"http_proxy": sandbox.proxy_url(proxy)},
                                   labels=labels, timeout=options.timeout, nocache=options.nocache,
                                   cache_from=cache_from, network_mode=sandbox.network_mode,
                                   on_step=on_step, on_line=lambda line: log.debug("build", line=line))
            stats = proxy.stats

        if outcome.error is not None or outcome.image_id is None:
            step, lines = marked_step(step_lines(outcome.lines, outcome.failed_step),
                                      rendered.step_name(outcome.failed_step or 0))
            failure = Failure(step=step, lines=lines,
                              error=outcome.error or "", all_lines=outcome.lines, deps=split.deps,
                              requirements=_all_lines(pkg.root), auth_failures=stats.auth_failures,
                              unreachable=stats.unreachable, not_found=stats.not_found, refused=stats.refused,
                              versions=stats.versions)
            err = classify(failure)
            log.error("Requirements installation failed" if step in ("deps", "requirements") else "Build failed",
                      venv=venv, step=step, error_class=type(err).__name__, error=str(err))
            raise err

        kept = _guard_tag(ref, outcome.image_id, content, options)  # before any tag moves
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
        return _maybe_push(result, engine, options, kept)


def _base_has_uv(labels: dict[str, str]) -> bool:
    """Our base carries uv in /opt/agent-image/tools: an agent image then adds none."""
    from .base import UV_LABEL
    from .dockerfile import UV_VERSION
    return labels.get(UV_LABEL) == UV_VERSION


def _base(engine: Engine, base_image: str, options: BuildOptions, python: str):
    """The base image; one the engine lacks is pulled when it names a registry
    (`agent-image base --push` puts it there), so empty runners share its bytes."""
    from .engine import split_ref
    base = engine.image(base_image)
    if base is None and remote(split_ref(base_image)[0].split("@")[0]):
        from .registry import pull_base
        pull_base(engine, base_image, auth=options.registry_auth)
    return engine.require_image(base_image, hint=f"Run `agent-image base --python {python}` "
                                                 "(scripts/setup.sh does it) and retry.")


def _all_lines(root: Path):
    path = root / "requirements.txt"
    return logical_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else []


def _maybe_push(result: BuildResult, engine: Engine, options: BuildOptions, kept: str | None = None) -> BuildResult:
    if options.push:
        from .registry import push_image
        if not options.registry and not options.repository:
            raise PackageValidationError("--push needs --registry (or --repository) to know where to push",
                                         field="--registry", hint="Add --registry HOST[:PORT]/PREFIX.")
        if kept:
            result.digest_ref, result.tag_kept = kept, True
            return result
        result.digest_ref = push_image(engine, result.image, input_digest=result.input_digest,
                                       auth=options.registry_auth)
    return result


def _guard_tag(ref: str, image_id: str, content: str, options: BuildOptions) -> str | None:
    """Version tags are immutable (builder/registry.py guard_tag), checked before any tag moves."""
    if not options.push or options.overwrite or not remote(ref.rsplit(":", 1)[0]):
        return None
    from .registry import guard_tag
    return guard_tag(ref, image_id=image_id, content=content, auth=options.registry_auth)
