"""The plan of one agent build, made once: what the engine is sent, and its identities.

``make_plan`` renders the Dockerfile FROM the base, adds the generated files and
builds the context; ``from_deps`` is the same agent FROM its dependency image
(the other rendering a build can need). Frozen: every stage after it reads one
plan, so no two of them can disagree about what is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping

from builder import __version__
from builder.core.labels import RUNTIME_LABEL, TOOL_PIP_LABEL, UV_LABEL, VENV_LABEL, base_labels
from builder.package.reader import Package
from builder.package.requirements import Split
from builder.plan.context import Context, build_context
from builder.plan.cross import package_on_host
from builder.plan.dockerfile import UV_VERSION, Rendered, pip_reports
from builder.plan.inputs import content_digest, kept_out, render_agent
from builder.plan.options import BuildOptions


@dataclass(frozen=True)
class Base:
    """What the plan knows of the base image: its reference, its id, and what it carries."""
    image: str
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)  # what the agent image records of its base
    has_venv: bool = True
    has_uv: bool = True
    pip_report: bool = False   # its pip writes --report
    tool_pip: bool = False     # it carries a current pip for the dependency layer
    has_runtime: bool = False  # it carries ENV PATH, EXPOSE, HEALTHCHECK, CMD (not in the content identity:
    #                            the image's config is the same)


def base_facts(image: str, image_id: str, labels: Mapping[str, str], digests: tuple[str, ...],
               layers: tuple[str, ...]) -> Base:
    """The plan's Base from the engine's facts of IMAGE (its labels, digests and layers)."""
    return Base(image=image, id=image_id, labels=base_labels(image, digests, layers),
                has_venv=labels.get(VENV_LABEL) == "/opt/venv",
                has_uv=labels.get(UV_LABEL) == UV_VERSION,  # our base carries uv: an agent image adds none
                pip_report=pip_reports(dict(labels)), tool_pip=bool(labels.get(TOOL_PIP_LABEL)),
                has_runtime=labels.get(RUNTIME_LABEL) == "1")


@dataclass(frozen=True)
class Plan:
    """One agent build, FROM the base: rendered, its context, its identities."""
    base: Base
    upstream_url: str
    split: Split
    rendered: Rendered                 # FROM the base, every step
    added: Mapping[str, bytes]         # files the build adds, but the Dockerfile (inputs.added_files)
    replace: Mapping[str, bytes]       # package files whose copy is rewritten
    context: Context
    digest: str                        # the input digest: same inputs, same image (the cache key)
    content: str                       # the content identity (tag immutability compares it)

    @property
    def files(self) -> dict[str, bytes]:
        """Every generated file, this plan's Dockerfile first."""
        return {"Dockerfile": self.rendered.text.encode(), **self.added}


def _render(pkg: Package, options: BuildOptions, base: Base, upstream_url: str, split: Split,
            deps_image: str = "") -> Rendered:
    return render_agent(pkg, options, upstream_url, split, base_image=base.image, base_has_venv=base.has_venv,
                        base_labels=dict(base.labels), base_has_uv=base.has_uv, deps_image=deps_image,
                        pip_report=base.pip_report, tool_pip=base.tool_pip, base_has_runtime=base.has_runtime)


def make_plan(pkg: Package, options: BuildOptions, base: Base, upstream_url: str, split: Split,
              added: Mapping[str, bytes], replace: Mapping[str, bytes]) -> Plan:
    """The plan FROM BASE. ADDED, REPLACE: ``inputs.added_files`` (read before the engine)."""
    rendered = _render(pkg, options, base, upstream_url, split)
    files = {"Dockerfile": rendered.text.encode(), **added}
    context = build_context(pkg.root, files, exclude=kept_out(pkg, options), replace=dict(replace))
    digest = hashlib.sha256(json.dumps(
        [context.digest, base.id, upstream_url, __version__], sort_keys=True).encode()).hexdigest()
    content = content_digest(pkg, options, upstream_url, split, added, base_has_venv=base.has_venv,
                             base_has_uv=base.has_uv, tool_pip=base.tool_pip)
    return Plan(base=base, upstream_url=upstream_url, split=split, rendered=rendered, added=added, replace=replace,
                context=context, digest=digest, content=content)


def from_deps(pkg: Package, options: BuildOptions, plan: Plan, deps_image_id: str) -> tuple[Rendered, dict, Context]:
    """The agent's own steps FROM its dependency image: (Dockerfile, generated files, context)."""
    rendered = _render(pkg, options, plan.base, plan.upstream_url, plan.split, deps_image=deps_image_id)
    if options.host_deps_image:  # another CPU's build: the editable install on the host's, when it can
        rendered = package_on_host(rendered, options.host_deps_image) or rendered
    files = {"Dockerfile": rendered.text.encode(), **plan.added}
    return rendered, files, build_context(pkg.root, files, exclude=kept_out(pkg, options), replace=dict(plan.replace))


def prepare(pkg: Package, options: BuildOptions, upstream_url: str, base_id: str, *,
            base_has_venv: bool = True, split: Split | None = None, base_labels: dict[str, str] | None = None,
            base_has_uv: bool = True, pip_report: bool = False, tool_pip: bool = False,
            base_has_runtime: bool = False):
    """Pure-ish middle of the pipeline (--dry-run, tools): (split, Dockerfile, context, input digest)."""
    from builder.core.defaults import base_image_for
    from builder.plan.inputs import added_files, check_identity, read_split
    check_identity(pkg.manifest, options)
    split = split or read_split(pkg, options)
    base = Base(image=options.base_image or base_image_for(pkg.manifest.python), id=base_id,
                labels=base_labels or {}, has_venv=base_has_venv, has_uv=base_has_uv, pip_report=pip_report,
                tool_pip=tool_pip, has_runtime=base_has_runtime)
    plan = make_plan(pkg, options, base, upstream_url, split, *added_files(pkg, options, split))
    return split, plan.rendered, plan.context, plan.digest
