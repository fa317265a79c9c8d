"""The agent's build, from its plan: FROM the dependency image or the base, without a
network when only the code changed, else in the sandbox behind the index proxy
(the dependency image first when it must be built). ``builder.api`` runs it."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import structlog

from builder.build import delta, depsimage, readytime
from builder.build.engine import Engine
from builder.build.image import Image
from builder.build.platformbuild import sandbox_image
from builder.build.proxy import wheeltags
from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.stats import Stats
from builder.build.proxy.upstream import Upstream
from builder.build.reuse import drop_attempt, fence, only_code_changed
from builder.build.sandbox import Sandbox
from builder.build.steplog import cached_steps
from builder.build.stream import BuildOutcome
from builder.core import events
from builder.core.errors import PackageLoadError
from builder.core.labels import ABI_LABEL, CONTENT_LABEL, DEPS_LABEL, INPUT_LABEL
from builder.package.reader import Package
from builder.plan.agent import Plan, from_deps
from builder.plan.context import Context
from builder.plan.dockerfile import COMPILE_START, Rendered
from builder.plan.options import BuildOptions

log = structlog.get_logger("agent_image")

MAX_HINTS = 300  # a sibling's distributions expected ahead (its label may name thousands: the pages' budget is the set's)


@dataclass(frozen=True)
class Target:
    """What the agent's own build sends the engine, and its fence (None: no build without a network)."""
    rendered: Rendered
    context: Context
    fenced: str | None


def target_of(pkg: Package, options: BuildOptions, plan: Plan, deps: depsimage.Plan | None) -> Target:
    """FROM the dependency image once there is one; FROM the base without dependency lines."""
    if deps and deps.image is not None:
        rendered, files, context = from_deps(pkg, options, plan, deps.image.id)
        return Target(rendered, context, fence(rendered.text, files))
    return Target(plan.rendered, plan.context, None if deps else fence(plan.rendered.text, plan.files))


@dataclass(frozen=True)
class Builder:
    """One engine build: this call's shared deadline, its step events."""
    engine: Engine
    deadline: float
    nocache: bool
    venv: str
    before: Callable[[], None] | None = None  # the base's pull, when it runs beside the build (api._base)

    def __call__(self, context: Context, dockerfile: Rendered, labels: dict[str, str], cache_from: list[str] | None,
                 network: str, buildargs: dict[str, str] | None = None) -> BuildOutcome:
        if self.before is not None:
            self.before()
        def on_step(n: int, total: int, instr: str) -> None:
            name = dockerfile.step_name(n)
            if name == "package" and instr.startswith("RUN"):
                log.info("Installing agent package in editable mode", venv=self.venv, step=f"{n}/{total}")
            log.info(events.STEP, step=f"{n}/{total}", name=name, instruction=instr.replace(COMPILE_START, "")[:200])
        return self.engine.build(context=context.data, buildargs=buildargs, labels=labels,
                                 timeout=max(1.0, self.deadline - time.monotonic()), nocache=self.nocache,
                                 cache_from=cache_from, network_mode=network, on_step=on_step,
                                 on_line=lambda line: log.debug(events.LINE, line=line))


@dataclass(frozen=True)
class Built:
    """A build's end: its outcome, what it built, what the index was asked."""
    outcome: BuildOutcome
    target: Target
    stats: Stats
    deps_lines: list[str] = field(default_factory=list)  # the dependency image's build log, when built
    failed: Rendered | None = None                       # the Dockerfile whose build failed
    previous: Image | None = None                        # a code-only rebuild's previous image (its ready time)
    delta: object | None = None                          # a near twin's layer (build/delta.py): the registry goes on


def agent_labels(plan: Plan) -> dict[str, str]:
    # the agent's labels are in the Dockerfile; the digest of that Dockerfile can't be
    # (the deps-key label comes with the dependency image: one LABEL step fewer per build)
    return {INPUT_LABEL: plan.digest, CONTENT_LABEL: plan.content}


def add_ready_time(build: Builder, built: Built) -> None:
    """The built image gets the agent's ready time (builder/build/readytime.py): measured now, or on a
    code-only rebuild the previous image's, which the build already labelled it with (readytime.carried)."""
    if built.previous is not None:
        image = build.engine.image(built.outcome.image_id)
        if image is not None and readytime.carried(built.previous, image, built.target.rendered) is not None:
            return
    readytime.label(build.engine, built.outcome, timeout=max(1.0, build.deadline - time.monotonic()))


def build_offline(build: Builder, plan: Plan, target: Target, cache_from: list[str], cache_dir: Path) -> Built | None:
    """Only the code changed since the agent's last image: every step before the code is
    cached and none after it needs the index, so no sandbox and no proxy: no network at all.
    None when that is not so, or a step needed the index after all."""
    if not (cache_from and target.fenced and not plan.split.source
            and only_code_changed(cache_dir, cache_from[0], target.fenced)):
        return None
    log.info("Only the code changed: building without a network", previous=cache_from[0])
    previous = build.engine.image(cache_from[0])
    # its ready time goes on with the build's own labels (no step more); add_ready_time checks it may
    ready = readytime.ready_label(previous)
    outcome = build(target.context, target.rendered, {**agent_labels(plan), **ready}, cache_from, "none")
    if outcome.error is None and outcome.image_id is not None:
        return Built(outcome, target, Stats(), previous=previous if ready else None)
    log.info("A step needs the index after all: building in the sandbox", error=(outcome.error or "")[:200])
    drop_attempt(build.engine, outcome)
    return None


def build_in_sandbox(build: Builder, pkg: Package, options: BuildOptions, upstream: Upstream, plan: Plan, base: Image,
                     deps: depsimage.Plan | None, target: Target, cache_from: list[str],
                     sandbox_early: Sandbox | None, near_twin: DeltaStep | None = None) -> Built:
    """The build's network (builder/build/sandbox.py) reaches the index proxy and nothing else:
    the dependency image first when it must be built, then the agent FROM it."""
    split, engine = plan.split, build.engine
    door = sandbox_image(engine, plan.base.image, options.platform, pkg.manifest.python)  # host CPU when it can
    # (the sandbox waits for the base's pull; the proxy starts now, and fetches the lines' pages meanwhile)
    door_cm = contextlib.nullcontext(sandbox_early) if sandbox_early else Sandbox(engine, door, before=build.before)
    with door_cm as sandbox, \
            IndexProxy(upstream, DownloadCache(Path(options.cache_dir) / "downloads", options.cache_max_bytes),
                       ca_bundle=options.ca_bundle, allowed_hosts=options.allow_index_hosts,
                       direct_urls=split.direct, page_max_bytes=options.index_page_max_bytes,
                       file_max_bytes=options.download_max_bytes, unix_path=sandbox.socket_path,
                       target=wheeltags.target(base.labels.get(ABI_LABEL), base.architecture)) as proxy:
        twin = near_twin if deps and deps.image is None else None
        if twin and proxy.prefetch is not None:  # it resolves all and installs little: .metadata ahead, not wheels
            proxy.prefetch.metadata_first = True
        if deps and deps.image is None:  # its pages can come while the sandbox starts
            proxy.expect([line.text for line in split.deps] + (twin.hints if twin else []))
        sandbox.wait(proxy.ready)
        args, deps_lines = {"http_proxy": sandbox.proxy_url(proxy)}, []
        made = None
        if twin:
            proxy.wheels_only = True  # no code of what it installs may run there (build/delta.py)
            try:
                made = twin.run(sandbox.network_mode, args)
            finally:
                proxy.wheels_only = False
                if proxy.prefetch is not None:
                    proxy.prefetch.metadata_first = False
        if made is not None:  # the dependency image is written in the registry, and the agent appended there
            return Built(BuildOutcome(image_id=None), target, proxy.stats, delta=made)
        if deps and deps.image is None:
            log.info(events.DEPS_BUILDING, image=deps.ref, deps_key=deps.key, venv=build.venv)
            # no cache_from: the engine's own layer cache (same base, same lines) is this image's
            outcome = build(depsimage.context(deps.dockerfile, plan.files), deps.dockerfile,
                            {DEPS_LABEL: deps.key}, None, sandbox.network_mode, args)
            if outcome.error is not None or outcome.image_id is None:
                return Built(outcome, target, proxy.stats, failed=deps.dockerfile)
            # wheels alone, and every instruction of the step ran (none the layer cache's, made who knows
            # how): it ran no code of what it installed (DEPS_WHEELS_LABEL)
            ran = {n for n, step in enumerate(deps.dockerfile.steps, 1) if step == "deps"}.isdisjoint(outcome.cached)
            wheels = not proxy.stats.sources and ran
            labelled = depsimage.with_listing(engine, outcome.image_id, family=deps.family, wheels=wheels,
                                              timeout=max(1.0, build.deadline - time.monotonic()))
            engine.tag(labelled, deps.ref)
            deps.image, deps.origin = engine.require_image(deps.ref, hint="Rerun the build."), "built"
            deps.cached, deps_lines = cached_steps(deps.dockerfile, outcome.cached), outcome.lines
            target = target_of(pkg, options, plan, deps)
        outcome = build(target.context, target.rendered, agent_labels(plan), cache_from, sandbox.network_mode, args)
        failed = target.rendered if outcome.error is not None or outcome.image_id is None else None
        return Built(outcome, target, proxy.stats, deps_lines, failed)


@dataclass(frozen=True)
class DeltaStep:
    """A near twin's step for build_in_sandbox: RUN(network, build args) -> its Delta, or None to build
    whole; HINTS: the first sibling's distributions (name==version), whose pages the resolve will want."""
    run: Callable[[str, dict], object]
    hints: list[str]


def near_twin(build: Builder, deps: depsimage.Plan, plan: Plan, siblings: list, install: str) -> DeltaStep:
    """The delta step (builder/build/delta.py) for build_in_sandbox."""
    def run(network: str, args: dict[str, str]):
        rendered = delta.dockerfile(deps.dockerfile)
        log.info("Building a near twin's dependency layer", image=deps.ref, siblings=len(siblings), venv=build.venv)
        outcome = build(delta.context(rendered, plan.files, install, siblings), rendered, {}, None, network, args)
        try:
            if outcome.error is not None or outcome.image_id is None:
                log.info("The near twin's step failed: building the dependency image whole",
                         error=(outcome.error or "")[:300])
                return None
            return delta.read(build.engine, outcome.image_id)
        finally:
            delta.drop(build.engine, outcome.image_id)
    # (a sibling's labels are another build's words: only what reads as a name and a version)
    hints = [f"{n}=={v}" for n, v in (siblings[0].dists.items() if siblings else ())
             if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", n) and re.fullmatch(r"[0-9][A-Za-z0-9.+!_-]{0,63}", v)]
    return DeltaStep(run, hints[:MAX_HINTS])


def failure(built: Built, plan: Plan, pkg: Package, venv: str) -> PackageLoadError:
    """The failed build as the error class that names its cause (builder/build/classify.py)."""
    from builder.build.classify import classify
    from builder.build.steplog import Failure, marked_step, step_lines
    from builder.package.piplines import logical_lines
    outcome, stats = built.outcome, built.stats
    step, lines = marked_step(step_lines(outcome.lines, outcome.failed_step),
                              built.failed.step_name(outcome.failed_step or 0))
    path = pkg.root / "requirements.txt"
    requirements = logical_lines(path.read_text(encoding="utf-8", errors="replace")) if path.is_file() else []
    err = classify(Failure(step=step, lines=lines, error=outcome.error or "", all_lines=outcome.lines,
                           deps=plan.split.deps, requirements=requirements,
                           auth_failures=stats.auth_failures, unreachable=stats.unreachable,
                           not_found=stats.not_found, refused=stats.refused, versions=stats.versions))
    log.error("Requirements installation failed" if step in ("deps", "requirements") else "Build failed",
              venv=venv, step=step, error_class=type(err).__name__, error=str(err))
    return err
