"""The Python API: ``build_image(source, options) -> BuildResult`` or an error.

This is the pipeline in order: open -> requirements -> render -> context ->
cache check -> index proxy -> engine build -> classify or tag -> push.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from builder import __version__
from builder.build import depsimage
from builder.build.classify import classify
from builder.build.engine import Engine
from builder.build.proxy import wheeltags
from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.index import resolve_index
from builder.build.proxy.server import IndexProxy, Stats
from builder.build.reuse import (drop_attempt, fence, from_registry, only_code_changed, own_previous, remember_fence,
                                 remote, same_agent)
from builder.build.sandbox import Sandbox
from builder.build.steplog import Failure, conflict_warnings, installed_packages, marked_step, step_lines
from builder.core import events
from builder.core.defaults import base_image_for
from builder.core.errors import (EngineError, PackageLoadError, PackageValidationError, RegistryError, current_redactor,
                                 redaction_scope)
from builder.core.labels import (ABI_LABEL, CONTENT_LABEL, DEPS_LABEL, INPUT_LABEL, RUNTIME_LABEL, TOOL_PIP_LABEL,
                                 VENV_LABEL, base_labels)
from builder.core.log import configure as configure_logs
from builder.core.refs import REPOSITORY_RE, check_image_ref, split_ref
from builder.package.dotenv import env_values
from builder.package.piplines import logical_lines
from builder.package.reader import Package, open_package
from builder.package.requirements import Split
from builder.plan.context import build_context
from builder.plan.dockerfile import Rendered, pip_reports
from builder.plan.inputs import (PACKAGING_FILES, check_cache_dir, check_identity, content_digest, generated_files,
                                 kept_out, log_requirements, read_ca_bundle, read_split, render_agent)
from builder.plan.options import BuildOptions

log = structlog.get_logger("agent_image")



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
    deps_image: str = ""    # the dependency image it was built FROM (builder/build/depsimage.py)
    deps_origin: str = ""   # "local" | "pulled" | "built"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _repository(manifest_name: str, options: BuildOptions) -> str:
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


def _learn_env_values(pkg: Package, paths: list[str]) -> None:
    """This build's redactor hides the values of the package's .env files; a value
    the package shows itself (agent.yaml, requirements, setup files) is no secret."""
    public = "\n".join((pkg.root / rel).read_text(encoding="utf-8", errors="replace")
                       for rel in ("agent.yaml", *PACKAGING_FILES) if (pkg.root / rel).is_file())
    redactor = current_redactor()
    for value in env_values(pkg.root, paths):
        redactor.add_value(value, public)


def prepare(pkg: Package, options: BuildOptions, upstream_url: str, base_id: str, *,
            base_has_venv: bool = True, split: Split | None = None, base_labels: dict[str, str] | None = None,
            base_has_uv: bool = True, pip_report: bool = False, tool_pip: bool = False,
            base_has_runtime: bool = False):
    """Pure-ish middle of the pipeline: requirements, Dockerfile and context."""
    check_identity(pkg.manifest, options)
    split = split or read_split(pkg, options)
    base_image = options.base_image or base_image_for(pkg.manifest.python)
    rendered = render_agent(pkg, options, upstream_url, split, base_image=base_image, base_has_venv=base_has_venv,
                            base_labels=base_labels, base_has_uv=base_has_uv, pip_report=pip_report,
                            tool_pip=tool_pip, base_has_runtime=base_has_runtime)
    generated, replace = generated_files(pkg, options, split, rendered.text)
    context = build_context(pkg.root, generated, exclude=kept_out(pkg, options), replace=replace)
    digest = hashlib.sha256(json.dumps(
        [context.digest, base_id, upstream_url, __version__], sort_keys=True).encode()).hexdigest()
    return split, rendered, context, digest




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
    with open_package(source, options.limits) as pkg, contextlib.ExitStack() as early:
        m = pkg.manifest
        venv = f"{m.name}-{m.version}"
        log.info(events.OPENED, agent=m.name, version=m.version, runtime=m.runtime,
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
        reports, tool_pip = pip_reports(base.labels), bool(base.labels.get(TOOL_PIP_LABEL))
        runtime = base.labels.get(RUNTIME_LABEL) == "1"  # (not in content_digest: the image's config is the same)
        split, rendered, context, digest = prepare(pkg, options, upstream.url, base.id, base_has_venv=has_venv,
                                                   split=split, base_labels=base_labels(base_image, base.digests,
                                                                                        base.layers),
                                                   base_has_uv=has_uv, pip_report=reports, tool_pip=tool_pip,
                                                   base_has_runtime=runtime)
        content = content_digest(pkg, options, upstream.url, split, base_has_venv=has_venv, base_has_uv=has_uv,
                                 tool_pip=tool_pip)
        log_requirements(pkg, split, venv)
        input_tag = f"{repo}:in-{digest[:20]}"

        cache_from: list[str] = []
        if options.use_cache and not options.nocache:
            hit = engine.image(input_tag)
            if hit is None and remote(repo):
                hit, cache_from = from_registry(engine, repo, input_tag, options.registry_auth, m)
            if hit is not None and hit.labels.get(INPUT_LABEL) == digest and same_agent(hit, m):
                kept = _guard_tag(ref, hit.id, content, options)
                engine.tag(hit.id, ref)
                log.info(events.REUSED_IMAGE, image=ref, image_id=hit.id, input_digest=digest)
                result = BuildResult(ok=True, image=ref, image_id=hit.id, agent={"name": m.name, "version": m.version},
                                     duration_s=round(time.monotonic() - started, 3), cached=True, input_digest=digest)
                return _maybe_push(result, engine, options, kept)

        deps = depsimage.plan(rendered, split, base, repo, options.registry, upstream.auth_header)
        sandbox_early = None
        if deps and not options.nocache and remote(deps.repo) and engine.image(deps.ref) is None:
            # the pull takes seconds: the build's sandbox starts meanwhile (0.3 s saved on an empty runner)
            sandbox_early = early.enter_context(Sandbox(engine, base_image))
        if deps and not options.nocache:  # a local image with this key, else the registry's
            deps.image, deps.origin = depsimage.find(engine, deps.ref, deps.key, base, deps.layers,
                                                     auth=options.registry_auth, remote=remote(deps.repo))
            if deps.image is not None:
                log.info(events.DEPS_REUSED, image=deps.ref, origin=deps.origin, venv=venv)
        # the agent's labels are in the Dockerfile; the digest of that Dockerfile can't be
        # (the deps-key label comes with the dependency image: one LABEL step fewer per build)
        labels = {INPUT_LABEL: digest, CONTENT_LABEL: content}
        deadline = time.monotonic() + options.timeout  # every build of this call shares --timeout
        if options.use_cache and not options.nocache and not cache_from:
            cache_from = own_previous(engine, repo, ref, m)
        log.info(events.INSTALLING if split.real_lines else events.BUILDING,
                 venv=venv, index=upstream.url, context_bytes=context.size, steps=len(rendered.steps))

        # the files the build adds: only the Dockerfile among them differs between the renderings below
        generated, replace = generated_files(pkg, options, split, rendered.text)

        def agent_plan():
            """FROM the dependency image: the Dockerfile of the agent's own steps, its context and fence."""
            plan = render_agent(pkg, options, upstream.url, split, base_image=base_image, base_has_venv=has_venv,
                                base_labels=base_labels(base_image, base.digests, base.layers), base_has_uv=has_uv,
                                deps_image=deps.image.id, pip_report=reports, tool_pip=tool_pip,
                                base_has_runtime=runtime)
            files = {**generated, "Dockerfile": plan.text.encode()}
            ctx = build_context(pkg.root, files, exclude=kept_out(pkg, options), replace=replace)
            return plan, ctx, fence(plan.text, files)

        def build(ctx, plan: Rendered, build_labels: dict[str, str], cache: list[str] | None, network: str,
                  buildargs: dict[str, str] | None = None):
            def on_step(n: int, total: int, instr: str) -> None:
                name = plan.step_name(n)
                if name == "package" and instr.startswith("RUN"):
                    log.info("Installing agent package in editable mode", venv=venv, step=f"{n}/{total}")
                log.info(events.STEP, step=f"{n}/{total}", name=name, instruction=instr[:200])
            return engine.build(context=ctx.data, buildargs=buildargs, labels=build_labels,
                                timeout=max(1.0, deadline - time.monotonic()), nocache=options.nocache,
                                cache_from=cache, network_mode=network, on_step=on_step,
                                on_line=lambda line: log.debug(events.LINE, line=line))

        fenced = None
        if deps and deps.image is not None:
            rendered, context, fenced = agent_plan()
        elif not deps:
            fenced = fence(rendered.text, generated)
        outcome, failed, deps_lines, stats = None, None, [], Stats()
        if cache_from and fenced and not split.source and only_code_changed(options.cache_dir, cache_from[0], fenced):
            # only the code changed since the agent's last image: every step before the code is
            # cached and none after it needs the index, so no sandbox and no proxy: no network at all
            log.info("Only the code changed: building without a network", previous=cache_from[0])
            outcome = build(context, rendered, labels, cache_from, "none")
            if outcome.error is not None or outcome.image_id is None:
                log.info("A step needs the index after all: building in the sandbox", error=(outcome.error or "")[:200])
                drop_attempt(engine, outcome)
                outcome = None
        if outcome is None:
            # the build's network (builder/build/sandbox.py): it starts in the background now
            with (contextlib.nullcontext(sandbox_early) if sandbox_early else Sandbox(engine, base_image)) as sandbox, \
                    IndexProxy(upstream, DownloadCache(Path(options.cache_dir) / "downloads", options.cache_max_bytes),
                               ca_bundle=options.ca_bundle, allowed_hosts=options.allow_index_hosts,
                               direct_urls=split.direct, page_max_bytes=options.index_page_max_bytes,
                               file_max_bytes=options.download_max_bytes, unix_path=sandbox.socket_path,
                               target=wheeltags.target(base.labels.get(ABI_LABEL), base.architecture)) as proxy:
                if deps and deps.image is None:  # its pages can come while the sandbox starts
                    proxy.expect([line.text for line in split.deps])
                sandbox.wait(proxy.ready)
                args = {"http_proxy": sandbox.proxy_url(proxy)}
                if deps and deps.image is None:
                    log.info(events.DEPS_BUILDING, image=deps.ref, deps_key=deps.key, venv=venv)
                    # no cache_from: the engine's own layer cache (same base, same lines) is this image's
                    outcome = build(depsimage.context(deps.dockerfile, generated), deps.dockerfile,
                                    {DEPS_LABEL: deps.key}, None, sandbox.network_mode, args)
                    if outcome.error is None and outcome.image_id is not None:
                        engine.tag(outcome.image_id, deps.ref)
                        deps.image, deps.origin = engine.require_image(deps.ref, hint="Rerun the build."), "built"
                        deps.cached, deps_lines = _cached_steps(deps.dockerfile, outcome), outcome.lines
                        rendered, context, fenced = agent_plan()
                    else:
                        failed = (outcome, deps.dockerfile)
                if failed is None:
                    outcome = build(context, rendered, labels, cache_from, sandbox.network_mode, args)
                    if outcome.error is not None or outcome.image_id is None:
                        failed = (outcome, rendered)
                stats = proxy.stats
            early.close()  # the sandbox started before the pull, if any: gone with the build

        if failed is not None:
            outcome, plan = failed
            step, lines = marked_step(step_lines(outcome.lines, outcome.failed_step),
                                      plan.step_name(outcome.failed_step or 0))
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
        if fenced:
            remember_fence(options.cache_dir, outcome.image_id, fenced, outcome.lines)
        # a step counts as cached when every instruction in it was
        cached_names = _cached_steps(rendered, outcome)
        if deps and (deps.origin != "built" or "deps" in deps.cached):  # the dependency image's steps
            cached_names = sorted({*cached_names, *(n for n in deps.dockerfile.steps if n != "base")})
        if "deps" in cached_names:
            log.info("Dependency layer reused from cache", venv=venv)
        installed = installed_packages(deps_lines + outcome.lines)
        warnings = conflict_warnings(deps_lines + outcome.lines)
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
            warnings=warnings, index={"url": upstream.url, **stats.as_dict()},
            deps_image=deps.ref if deps else "", deps_origin=deps.origin if deps else "")
        log.info(events.READY, venv=venv, image=ref, image_id=outcome.image_id,
                 package_installed=pkg.has_setup, requirements_installed=split.real_lines > 0,
                 cached_steps=cached_names, duration_s=result.duration_s)
        return _maybe_push(result, engine, options, kept)


def _cached_steps(rendered: Rendered, outcome) -> list[str]:
    """The build steps the layer cache served: a step counts when every instruction in it did."""
    return sorted({name for name in rendered.steps
                   if all(n in outcome.cached for n, other in enumerate(rendered.steps, 1)
                          if other == name and n > 1)} - {"base"})


def _base_has_uv(labels: dict[str, str]) -> bool:
    """Our base carries uv in /opt/agent-image/tools: an agent image then adds none."""
    from builder.core.labels import UV_LABEL
    from builder.plan.dockerfile import UV_VERSION
    return labels.get(UV_LABEL) == UV_VERSION


def _base(engine: Engine, base_image: str, options: BuildOptions, python: str):
    """The base image; one the engine lacks is pulled when it names a registry
    (`agent-image base --push` puts it there), so empty runners share its bytes."""
    from builder.core.refs import split_ref
    base = engine.image(base_image)
    if base is None and remote(split_ref(base_image)[0].split("@")[0]):
        from builder.ship.pushpull import pull_base
        pull_base(engine, base_image, auth=options.registry_auth)
    return engine.require_image(base_image, hint=f"Run `agent-image base --python {python}` "
                                                 "(scripts/setup.sh does it) and retry.")


def _all_lines(root: Path):
    path = root / "requirements.txt"
    return logical_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else []


def _maybe_push(result: BuildResult, engine: Engine, options: BuildOptions, kept: str | None = None) -> BuildResult:
    if options.push:
        from builder.ship.pushpull import push_image
        if not options.registry and not options.repository:
            raise PackageValidationError("--push needs --registry (or --repository) to know where to push",
                                         field="--registry", hint="Add --registry HOST[:PORT]/PREFIX.")
        if kept:
            result.digest_ref, result.tag_kept = kept, True
        else:
            result.digest_ref = push_image(engine, result.image, input_digest=result.input_digest,
                                           auth=options.registry_auth)
        # after the agent: its layers are there now, so this is a manifest, for the next runner to find
        if result.deps_image and result.deps_origin != "pulled" and remote(split_ref(result.deps_image)[0]):
            try:
                depsimage.push(engine, result.deps_image, auth=options.registry_auth)
            except (RegistryError, EngineError) as exc:  # the agent is pushed: sharing is an optimisation
                why = (f"the dependency image {result.deps_image} was not pushed ({str(exc)[:160]}); other runners "
                       f"will build it again. Create the repository {result.deps_image.rsplit(':', 1)[0]} (ECR: "
                       "repositories must exist before a push) or grant push to it.")
                log.warning("Dependency image not pushed", image=result.deps_image, reason=str(exc)[:300])
                result.warnings.append(why)
    return result


def _guard_tag(ref: str, image_id: str, content: str, options: BuildOptions) -> str | None:
    """Version tags are immutable (builder/ship/pushpull.py guard_tag), checked before any tag moves."""
    if not options.push or options.overwrite or not remote(ref.rsplit(":", 1)[0]):
        return None
    from builder.ship.pushpull import guard_tag
    return guard_tag(ref, image_id=image_id, content=content, auth=options.registry_auth)
