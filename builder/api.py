"""The Python API: ``build_image(source, options) -> BuildResult`` or an error.

``build_image`` is an orchestrator of named stages, in order: check the inputs
(everything the package and the options can get wrong, before the engine is
asked anything) -> on an empty runner, assemble in the registry (ship/assemble.py)
-> resolve the base -> make the plan (builder/plan/agent.py, rendered once) -> reuse
an identical image -> find the dependency image -> build (without a network, or in
the sandbox) -> classify a failure -> finish (tags, result) -> ship (push).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog

from builder.build import agentbuild, depsimage, usage
from builder.build.engine import Engine
from builder.build.image import Image
from builder.build.platformbuild import check_base, cross_target, remember_stage, sandbox_image, stage_cache
from builder.build.proxy.index import resolve_index
from builder.build.prune import after_build
from builder.build.proxy.upstream import Upstream
from builder.build.reuse import from_registry, own_previous, remember_fence, remote, same_agent
from builder.build.sandbox import Sandbox
from builder.build.steplog import cached_steps, conflict_warnings, installed_packages
from builder.core import events
from builder.core.defaults import base_image_for
from builder.core.errors import PackageLoadError, PackageValidationError
from builder.core.labels import INPUT_LABEL
from builder.core.log import configure as configure_logs
from builder.core.platforms import is_host, platform_tag, require_emulation
from builder.core.redact import redaction_scope
from builder.core.result import BuildResult
from builder.core.refs import CACHE_TAG, check_image_ref, input_tag, split_ref
from builder.package.reader import Package, open_package
from builder.package.requirements import Split
from builder.package.runtime import warn_about_runtime
from builder.plan.agent import Plan, base_facts, make_plan, prepare  # (prepare: --dry-run and tools)
from builder.plan.dockerfile import check_installer
from builder.plan.inputs import (added_files, check_cache_dir, check_identity, learn_env_values, log_requirements,
                                 read_ca_bundle, read_split, repository)
from builder.plan.options import BuildOptions
from builder.ship import deltaimage
from builder.ship.publish import add_runtime, guard_tag, push
from builder.ship.pushpull import BasePull, pull_base

__all__ = ["BuildOptions", "BuildResult", "build_image", "check_inputs", "prepare"]

log = structlog.get_logger("agent_image")


def build_image(source: str | os.PathLike, options: BuildOptions | None = None,
                engine: Engine | None = None) -> BuildResult:
    """Build the agent image for SOURCE. Returns a BuildResult or raises PackageLoadError.

    Each build redacts with its own Redactor (its credentials, its .env values):
    nothing it learns reaches the next build in this process.
    """
    engine = engine or Engine()  # (it connects on its first call: the checks before it ask it nothing)
    reached: list[str] = []      # the image this build made or reused, once the engine was asked
    # the build's lease outlives it, narrowed to what it made, until its own prune ran (prune.after_build)
    leases: list[usage.Lease] = []
    with redaction_scope() as redactor, contextlib.ExitStack() as ends:
        ends.callback(lambda: [lease.__exit__() for lease in leases])
        if options is not None and options.registry_auth:
            redactor.add_secret(options.registry_auth.get("password"))
        try:
            result = _build_image(source, options, engine, reached, leases)
        except PackageLoadError as err:
            raise err.redacted(redactor) from None
        finally:  # --prune-max-bytes: after every build that reached the engine, a cancelled one too (its
            # lease goes now: what other builds' prunes could not take while it ran would else stay)
            after_build(engine, options, reached, leases)
        result.warnings = [redactor(w) for w in result.warnings]
        result.installed = [redactor(p) for p in result.installed]
        return result


def _build_image(source: str | os.PathLike, options: BuildOptions | None, engine: Engine,
                 reached: list[str], leases: list[usage.Lease]) -> BuildResult:
    """The stages, in order; each is a function of the values the ones before it settled."""
    if not structlog.is_configured():
        # a library caller that set nothing up gets our redacting logs on stderr,
        # not structlog's default of every debug line on stdout
        configure_logs()
    options = options or BuildOptions()
    started = time.monotonic()
    deadline = started + options.timeout  # the whole command's: reading the package too, not only the build
    with open_package(source, options.limits, deadline) as pkg, contextlib.ExitStack() as early, \
            contextlib.ExitStack() as held:
        job = _check_inputs(pkg, options, started, held)
        _lap(job, "check")
        if options.push and remote(job.repo):  # before the engine: a build the push would lose is not started
            from builder.ship.preflight import check_push
            check_push(job.repo, auth=options.registry_auth,
                       option="--repository" if options.repository else "--registry")
            _lap(job, "registry")
        engine.ping()
        reached.append("")
        # what a prune must not take while this build runs (builder/build/usage.py): its repository
        leases.append(job.lease.__enter__())
        assembled = _in_registry(engine, job)
        if assembled is not None:
            return assembled
        base, pulling = _base(engine, job.base_image, options, pkg.manifest.python)
        before = None
        if pulling is not None:  # what needs the base in the engine waits for it (the sandbox, a build)
            early.push(lambda kind, *_: pulling.settle(failing=kind is not None))
            before = pulling.wait
        plan = make_plan(pkg, options, base_facts(job.base_image, base.id, base.labels, base.digests, base.layers),
                         job.upstream.url, job.split, job.added, job.replace)
        log_requirements(pkg, plan.split, job.venv)

        hit, cache_from = _identical_image(engine, job, plan)
        if hit is not None:
            reached.append(hit.id)
            return _ship(*_reuse(engine, job, plan, hit), engine, job, plan)
        deps, sandbox_early = _dependency_image(engine, job, plan, base, early, before)
        # every build of this call shares --timeout, with the reading before them
        build = agentbuild.Builder(engine, deadline, options.nocache, job.venv, before)
        if options.use_cache and not options.nocache and not cache_from:
            cache_from = own_previous(engine, job.repo, job.ref, pkg.manifest, job.cache_tag)
        cache_from = cache_from + (stage_cache(engine, job.repo, job.cache_tag) if cache_from else [])
        log.info(events.INSTALLING if plan.split.real_lines else events.BUILDING, venv=job.venv,
                 index=plan.upstream_url, context_bytes=plan.context.size, steps=len(plan.rendered.steps))
        target = agentbuild.target_of(pkg, options, plan, deps)
        built = agentbuild.build_offline(build, plan, target, cache_from, options.cache_dir)
        if built is None:
            twin = deltaimage.near_twin(build, deps, plan, base, options, job.repo)
            built = agentbuild.build_in_sandbox(build, pkg, options, job.upstream, plan, base, deps, target,
                                                cache_from, sandbox_early, twin and twin.step)
            if built.delta is not None:  # a near twin: its dependency image is written in the registry
                written = twin.finish(deps, base, built.delta)
                done = written and _in_registry(engine, job, "near twin")  # and the agent appended there
                if done:
                    return done
                if written:  # the agent's steps need the engine: FROM that image, pulled (else built whole)
                    deps.image, deps.origin = depsimage.find(engine, deps.ref, deps.key, base, deps.layers,
                                                             auth=options.registry_auth, remote=True)
                    target = agentbuild.target_of(pkg, options, plan, deps)
                built = agentbuild.build_in_sandbox(build, pkg, options, job.upstream, plan, base, deps, target,
                                                    cache_from, sandbox_early)
            early.close()  # the sandbox started before the pull, if any: gone with the build
        if built.failed is not None:
            usage.touch_many(options.cache_dir, built.outcome.committed, [job.ref])
            raise agentbuild.failure(built, plan, job.pkg, job.venv)
        agentbuild.add_ready_time(build, built)
        reached.append(built.outcome.image_id)
        return _ship(*_finish(engine, job, plan, deps, built), engine, job, plan)


# -- check the inputs: everything the package and the options can get wrong, before the engine ------------------

@dataclass(frozen=True)
class _Job:
    """What the checks settled. Nothing in it came from the engine."""
    pkg: Package
    options: BuildOptions
    started: float
    repo: str
    ref: str                     # REPOSITORY:VERSION
    venv: str                    # NAME-VERSION, for the seed's log lines
    upstream: Upstream
    split: Split
    added: dict[str, bytes]      # inputs.added_files: the same for every rendering
    replace: dict[str, bytes]
    base_image: str
    cache_tag: str               # the layer cache's moving tag: latest (latest-ARCH for one platform of an index)
    held: contextlib.ExitStack   # what the build holds until it ends: the version tag's lock (build_image: the lease)
    lease: usage.Lease
    laps: dict[str, float] = field(default_factory=dict)  # stage -> seconds (BuildResult.phases)
    signer: Any = None           # --sign-key, loaded before the engine (builder/ship/sign.py)


def _lap(job: _Job, name: str) -> None:
    """Close stage NAME: the seconds since the last one closed (or the start)."""
    now = time.monotonic() - job.started
    job.laps[name] = round(now - sum(job.laps.values()), 3)


def _check_inputs(pkg: Package, options: BuildOptions, started: float,
                  held: contextlib.ExitStack | None = None) -> _Job:
    m = pkg.manifest
    log.info(events.OPENED, agent=m.name, version=m.version, runtime=m.runtime,
             source=str(pkg.source), kind=pkg.source_kind, files=len(pkg.files))
    warn_about_runtime(m)
    learn_env_values(pkg, pkg.env_paths)
    check_identity(m, options)
    for rel in pkg.env_paths if options.include_env else ():
        log.warning("Including .env in the image (--include-env): its values ship to whoever pulls it",
                    agent=m.name, path=rel)
    repo = repository(m.name, options)
    if options.push and not options.registry and not options.repository:
        raise PackageValidationError("--push needs --registry (or --repository) to know where to push",
                                     field="--registry", hint="Add --registry HOST[:PORT]/PREFIX.")
    upstream = resolve_index(options.index_url, options.env)
    if options.ca_bundle:
        read_ca_bundle(options.ca_bundle)
    check_cache_dir(options.cache_dir)
    check_installer(options.installer)
    split = read_split(pkg, options, deadline=started + options.timeout)
    if options.base_image:
        check_image_ref(options.base_image, "--base-image")
    added, replace = added_files(pkg, options, split)  # (--ca-bundle-in-image without --ca-bundle fails here)
    if not is_host(options.platform):  # before the engine: the command that fixes it
        require_emulation(options.platform, "building")
    from builder.ship.sign import signer_for  # a key that cannot sign fails now, not after the push
    return _Job(signer=signer_for(options.sign_key, push=options.push), pkg=pkg, options=options, started=started,
                repo=repo, ref=f"{repo}:{platform_tag(m.version, options.platform, options.platform_tags)}",
                venv=f"{m.name}-{m.version}", upstream=upstream, split=split, added=added, replace=replace,
                base_image=options.base_image or base_image_for(m.python, options.platform),
                cache_tag=platform_tag(CACHE_TAG, options.platform, options.platform_tags),
                held=held or contextlib.ExitStack(), lease=usage.Lease(repos=[repo]))


def check_inputs(pkg: Package, options: BuildOptions) -> _Job:
    """Every check a build makes before the engine (--dry-run runs them too)."""
    return _check_inputs(pkg, options, time.monotonic())


# -- resolve the base ----------------------------------------------------------------------------------------------

def _base(engine: Engine, base_image: str, options: BuildOptions, python: str) -> tuple[Image, BasePull | None]:
    """The base image; one the engine lacks is pulled when it names a registry
    (`agent-image base --push` puts it there), so empty runners share its bytes. Read from
    the registry first when it can be: then it is pulled beside the build (the BasePull returned)."""
    base = engine.image(base_image)
    if base is None and remote(split_ref(base_image)[0].split("@")[0]):
        if is_host(options.platform):  # (another CPU's build reads the host's base from the engine too)
            from builder.ship.assemble import registry_image
            read = registry_image(base_image, auth=options.registry_auth)
            if read is not None:
                check_base(read, base_image, options.platform, python)
                return read, BasePull(engine.sibling(), base_image, read, auth=options.registry_auth)
        pull_base(engine, base_image, auth=options.registry_auth)
    image = engine.require_image(base_image, hint=f"Run `agent-image base --python {python}" + (
        f" --platform {options.platform}" if options.platform else "") + "` (or pass --base-image) and retry.")
    check_base(image, base_image, options.platform, python)
    return image, None


# -- in the registry: an empty runner pulls nothing the registry already has -------------------------------------

def _in_registry(engine: Engine, job: _Job, origin: str = "registry") -> BuildResult | None:
    """An empty runner, --push to a registry: the image of the same inputs retagged there, or the agent's
    layers appended to the dependency image there (builder/ship/assemble.py); None: the engine builds."""
    options = job.options
    if not (options.push and options.use_cache and not options.nocache and remote(job.repo)):
        return None
    from builder.ship import assemble
    done = assemble.build(assemble.Inputs(
        pkg=job.pkg, options=options, repo=job.repo, ref=job.ref, upstream_url=job.upstream.url,
        auth_header=job.upstream.auth_header, split=job.split, added=job.added, replace=job.replace,
        base_image=job.base_image), engine.image)
    if done is None:
        return None
    m, plan = job.pkg.manifest, done.plan
    log_requirements(job.pkg, plan.split, job.venv)
    _lap(job, "assemble")
    facts = None
    if done.dists:  # appended here: its listing and its base are known without the engine
        from builder.ship.supply import assembled_facts
        facts = assembled_facts(done, job.pkg, options, job.started)
    return _supplied(BuildResult(
        ok=True, image=job.ref, image_id=done.image_id, agent={"name": m.name, "version": m.version},
        duration_s=0.0, cached=done.how == "reused", input_digest=plan.digest, digest_ref=done.digest_ref,
        tag_kept=done.tag_kept, deps_image=done.deps_image, deps_origin=origin if done.deps_image else "",
        index={"url": plan.upstream_url}, installed=done.installed), job, facts)


# -- reuse an identical image --------------------------------------------------------------------------------------

def _identical_image(engine: Engine, job: _Job, plan: Plan) -> tuple[Image | None, list[str]]:
    """An image of the same inputs, here or in the registry (else None), and the
    registry's images to use as layer cache (what a registry lookup found)."""
    options, m = job.options, job.pkg.manifest
    if not options.use_cache or options.nocache:
        return None, []
    same_inputs, cache_from = f"{job.repo}:{input_tag(plan.digest)}", []
    hit = engine.image(same_inputs)
    if hit is None and remote(job.repo):
        hit, cache_from = from_registry(engine, job.repo, same_inputs, options.registry_auth, m, job.cache_tag,
                                        options.platform)
    if hit is not None and hit.labels.get(INPUT_LABEL) == plan.digest and same_agent(hit, m):
        return hit, cache_from
    return None, cache_from


def _reuse(engine: Engine, job: _Job, plan: Plan, hit: Image) -> tuple[BuildResult, str | None]:
    kept = guard_tag(job.ref, hit.id, plan.content, job.options, job.held)
    engine.tag(hit.id, job.ref)
    usage.touch_used(job.options.cache_dir, hit.id, [job.ref, f"{job.repo}:{input_tag(plan.digest)}"])
    log.info(events.REUSED_IMAGE, image=job.ref, image_id=hit.id, input_digest=plan.digest)
    m = job.pkg.manifest
    return BuildResult(ok=True, image=job.ref, image_id=hit.id, agent={"name": m.name, "version": m.version},
                       duration_s=round(time.monotonic() - job.started, 3), cached=True,
                       input_digest=plan.digest), kept


# -- find the dependency image -------------------------------------------------------------------------------------

def _dependency_image(engine: Engine, job: _Job, plan: Plan, base: Image, early: contextlib.ExitStack,
                      before: Callable[[], None] | None) -> tuple[depsimage.Plan | None, Sandbox | None]:
    """The dependency image the agent builds FROM (None without dependency lines), found
    here or in the registry when it exists; and the sandbox, when it started during a pull."""
    options = job.options
    python = job.pkg.manifest.python
    deps = depsimage.plan(plan.rendered, plan.split, base, job.repo, options.registry, job.upstream.auth_header,
                          cross_target(engine, base, options.platform, python))
    if not deps or options.nocache:
        return deps, None
    sandbox = None
    job.lease.add(refs=[deps.ref])  # before it is looked up: a prune from now on keeps it
    if remote(deps.repo) and engine.image(deps.ref) is None:
        # the pull takes seconds: the build's sandbox starts meanwhile (0.3 s saved on an empty runner)
        sandbox = early.enter_context(Sandbox(engine, sandbox_image(engine, job.base_image, options.platform, python),
                                              before=before))
    # a local image with this key, else the registry's
    deps.image, deps.origin = depsimage.find(engine, deps.ref, deps.key, base, deps.layers,
                                             auth=options.registry_auth, remote=remote(deps.repo))
    if deps.image is not None:
        log.info(events.DEPS_REUSED, image=deps.ref, origin=deps.origin, venv=job.venv)
    return deps, sandbox


# -- finish --------------------------------------------------------------------------------------------------------

def _finish(engine: Engine, job: _Job, plan: Plan, deps: depsimage.Plan | None,
            built: agentbuild.Built) -> tuple[BuildResult, str | None]:
    """Tag the built image (after the tag guard), remember its fence, and report it."""
    image_id, venv = built.outcome.image_id, job.venv
    kept = guard_tag(job.ref, image_id, plan.content, job.options, job.held)  # before any tag moves
    engine.tag(image_id, job.ref)
    engine.tag(image_id, f"{job.repo}:{input_tag(plan.digest)}")
    remember_stage(engine, built.outcome.lines, built.target.rendered.text, job.repo, job.cache_tag)
    usage.touch_used(job.options.cache_dir, image_id, [job.ref, f"{job.repo}:{input_tag(plan.digest)}"])
    if deps and deps.image is not None:
        usage.touch_used(job.options.cache_dir, deps.image.id, [deps.ref])
    if built.target.fenced:
        remember_fence(job.options.cache_dir, image_id, built.target.fenced, built.outcome.lines)
    cached_names = cached_steps(built.target.rendered, built.outcome.cached)
    if deps and (deps.origin != "built" or "deps" in deps.cached):  # the dependency image's steps
        cached_names = sorted({*cached_names, *(n for n in deps.dockerfile.steps if n != "base")})
    if "deps" in cached_names:
        log.info("Dependency layer reused from cache", venv=venv)
    lines = built.deps_lines + built.outcome.lines
    installed, warnings = installed_packages(lines), conflict_warnings(lines)
    for w in warnings:
        log.warning("Dependency conflict resolved in favour of requirements.txt", venv=venv, detail=w)
    if plan.split.real_lines:
        log.info("Requirements installed successfully", venv=venv, requirements_file="requirements.txt")
    if installed:
        log.info("Installed dependencies", venv=venv, packages=installed)
    m = job.pkg.manifest
    result = BuildResult(
        ok=True, image=job.ref, image_id=image_id, agent={"name": m.name, "version": m.version},
        duration_s=round(time.monotonic() - job.started, 3), input_digest=plan.digest,
        steps_cached=cached_names, steps_total=built.outcome.total_steps, installed=installed,
        warnings=warnings, index={"url": plan.upstream_url, **built.stats.as_dict()},
        deps_image=deps.ref if deps else "", deps_origin=deps.origin if deps else "")
    log.info(events.READY, venv=venv, image=job.ref, image_id=image_id, package_installed=job.pkg.has_setup,
             requirements_installed=plan.split.real_lines > 0, cached_steps=cached_names,
             duration_s=result.duration_s)
    return result, kept


# -- ship ----------------------------------------------------------------------------------------------------------

def _ship(result: BuildResult, kept: str | None, engine: Engine, job: _Job, plan: Plan) -> BuildResult:
    """With --push: the agent (unless the registry's tag holds this content already), its dependency
    image, then its SBOM, provenance and signature (builder/ship/supply.py)."""
    _lap(job, "build")
    facts = None
    if job.options.push:  # the SBOM needs the image, not its digest: made beside the push
        from builder.ship.supply import prepare
        facts = prepare(engine.sibling(), result.image_id, plan, job.pkg, job.options, job.started)
    push(result, kept, engine, job.options)
    if job.options.push:
        _lap(job, "push")
    return _supplied(result, job, facts)


def _supplied(result: BuildResult, job: _Job, facts) -> BuildResult:
    """Every way a build ends: the runtime facts; with FACTS and a pushed digest, the SBOM and the
    provenance attached (signed with --sign-key). duration_s is the whole call, the push included;
    phases say where it went."""
    add_runtime(result, job.pkg.manifest)
    if facts is not None and result.digest_ref:
        from builder.ship.supply import attach_build
        result.supply = attach_build(result.digest_ref, facts, auth=job.options.registry_auth, signer=job.signer)
        _lap(job, "supply")
    result.phases = dict(job.laps)
    result.duration_s = round(time.monotonic() - job.started, 3)
    return result
