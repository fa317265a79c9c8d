"""What a build returns (builder.api.build_image): the CLI prints it, --json writes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    deps_origin: str = ""   # "local" | "pulled" | "built" | "registry" (appended there: ship/assemble.py) | "near twin"
    phases: dict[str, float] = field(default_factory=dict)  # seconds per stage; duration_s is the whole call
    # the agent's runtime: name, python, end_of_life (ISO date), past_end_of_life, preview (package/runtime.py)
    runtime: dict[str, Any] = field(default_factory=dict)
    supply: dict[str, Any] = field(default_factory=dict)  # with --push: SBOM, provenance, signature (ship/supply.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
