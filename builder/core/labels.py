"""Every label agent-image writes or reads, in one place (CNB's platform/labels.go),
and the few pure functions that format or read their values."""

from __future__ import annotations

from builder.core.refs import parse

# the agent (written from agent.yaml by package.manifest.Manifest.labels)
AGENT_NAME_LABEL = "io.pixell.agent.name"
AGENT_VERSION_LABEL = "io.pixell.agent.version"
ENV_REFS_LABEL = "io.pixell.agent.env-refs"
DRAIN_LABEL = "io.pixell.agent.drain-seconds"  # the serving drain window (templates/agent.Dockerfile.j2)

# the build
BASE_NAME_LABEL = "org.opencontainers.image.base.name"
BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"
TOP_LAYER_LABEL = "io.pixell.agent-image.base.top-layer"
BUILDER_LABEL = "io.pixell.agent-image.builder"
INPUT_LABEL = "io.pixell.agent-image.input-digest"
REBASED_FROM_LABEL = "io.pixell.agent-image.rebased-from"
# what the image is made of, without what the runner adds (base image id, host):
# equal on two runners for one package and options, so a retried push is recognised
CONTENT_LABEL = "io.pixell.agent-image.content-digest"
# ABI fields that must be equal for the agent's layers to run on the new base;
# the rest (the versions the base seeds into the venv) may move, and are reported
ABI_MUST_MATCH = ("distro", "python", "venv", "uid")
ABI_FIELDS = (*ABI_MUST_MATCH, "pip", "setuptools")
DEPS_LABEL = "io.pixell.agent-image.deps-key"  # what shapes the dependency layer (build.depsimage)
# the dependency image's distribution listing (its /opt/agent-image/dists.json, a JSON list), so the
# registry path (ship.assemble) knows the venv, for the agent's listing and its SBOM, without its layers;
# an agent image built FROM it inherits it: it describes the dependency layer, not the agent's listing
DEPS_DISTS_LABEL = "io.pixell.agent-image.deps-dists"
# the dependency image's requested distributions (those pip marked REQUESTED: the lines' own names), a JSON list
DEPS_REQUESTED_LABEL = "io.pixell.agent-image.deps-requested"
# the deps key without the lines (base, index, installer, reader, repository, builder): dependency images of
# one family can lend a near twin their layers (build.delta); DELTA: how many near-twin layers it has
DEPS_FAMILY_LABEL = "io.pixell.agent-image.deps-family"
DEPS_DELTA_LABEL = "io.pixell.agent-image.deps-delta"
# "1": its install ran no code of what it installed (the proxy served wheels alone, nothing ran the venv's site
# after): only such an image may lend a near twin its layers (what it lists is then what its layers hold)
DEPS_WHEELS_LABEL = "io.pixell.agent-image.deps-wheels"
# {name: sha256 of the wheel it came from} (its /opt/agent-image/deps-wheels.json, from pip's --report)
DEPS_HASHES_LABEL = "io.pixell.agent-image.deps-wheel-hashes"
# seconds the agent's import took on the builder, measured right after its build (build.readytime);
# ecs-task-def derives the health check's startPeriod from it (ship.ecs.start_period)
READY_LABEL = "io.pixell.agent-image.ready-seconds"

# the base (Dockerfile.base, build.base)
ABI_LABEL = "io.pixell.agent-image.abi"
VENV_LABEL = "io.pixell.agent-image.venv"  # on our base: /opt/venv is there already
TOOL_PIP_LABEL = "io.pixell.agent-image.pip"
RUNTIME_LABEL = "io.pixell.agent-image.runtime"  # the base carries ENV PATH, EXPOSE, HEALTHCHECK, CMD for agents
UV_LABEL = "io.pixell.agent-image.uv"  # on our base: the uv version in /opt/agent-image/tools

# containers the builder starts (found again by these when a builder died)
SANDBOX_LABEL = "io.pixell.agent-image.sandbox"
RUN_LABEL = "io.pixell.agent-image.run"
DOCTOR_LABEL = "io.pixell.agent-image.doctor"


def abi_label(facts: dict[str, str]) -> str:
    """The ABI label's value: ``distro=debian:12;python=3.11;venv=/opt/venv;uid=10001;pip=...;setuptools=...``."""
    return ";".join(f"{k}={facts[k]}" for k in ABI_FIELDS if facts.get(k) is not None)


def ready_seconds(labels: dict[str, str]) -> float | None:
    """The READY_LABEL's seconds; None when the image has none (built before it, or its import failed)."""
    try:
        value = float(labels.get(READY_LABEL, ""))
    except ValueError:
        return None
    return value if 0 <= value < 86400 else None


def parse_abi(text: str | None) -> dict[str, str]:
    return dict(part.split("=", 1) for part in (text or "").split(";") if "=" in part)


def base_labels(base_image: str, repo_digests: tuple[str, ...], layers: tuple[str, ...]) -> dict[str, str]:
    """What an agent image records of its base at build time (OCI's base.name and
    base.digest, CNB's top layer), so rebase can tell its own layers from the base's."""
    name = base_image.partition("@")[0]
    repo, _, digest = parse(base_image)
    if not digest:  # the manifest digest the engine knows for that repository, if it was pushed or pulled
        digest = next((d.split("@", 1)[1] for d in repo_digests if d.split("@", 1)[0] == repo), "")
    return {BASE_NAME_LABEL: name, BASE_DIGEST_LABEL: digest or "", TOP_LAYER_LABEL: layers[-1] if layers else ""}
