"""What running an agent image the way ECS does needs to know about it, read
from the image's inspect facts, and the pure checks of a test's answers.

No engine, no testcontainers: the pytest plugin and the CLI import this freely.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from builder.build.image import Image
from builder.core.errors import SmokeTestError
from builder.core.labels import ABI_LABEL, DRAIN_LABEL, parse_abi

DEFAULT_START_PERIOD_S = 10.0  # templates/agent.Dockerfile.j2's --start-period
DEFAULT_DRAIN_S = 25.0         # the shim's default when the image predates the drain label
STOP_MARGIN_S = 5              # as builder/ship/ecs.py: the exit itself and the last log lines
TMP_SIZE = "64m"               # the tmpfs /tmp a read-only root leaves writable
_NS = 1_000_000_000


@dataclass(frozen=True)
class RunFacts:
    """How to run one image as its ECS task would."""
    port: int
    base_path: str         # "" or "/prefix"
    user: str              # numeric uid[:gid] when the image's ABI label says it, else the image's USER
    start_period_s: float
    drain_s: float

    @property
    def stop_timeout_s(self) -> int:
        # the task definition's stopTimeout: SIGKILL comes only after the drain window
        return max(2, math.ceil(self.drain_s) + STOP_MARGIN_S)


def _float(raw: Any, default: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return default
    return value if 0 <= value < 3600 else default


def run_facts(image: Image, env: Mapping[str, str] | None = None) -> RunFacts:
    """The port, user, start period and drain window of IMAGE (ENV is the task's environment)."""
    merged = {**image.environment, **(env or {})}
    port = merged.get("REST_PORT", "8080")
    port = int(port) if port.isdigit() and 0 < int(port) < 65536 else 8080
    base = "/" + merged.get("BASE_PATH", "/").strip("/")
    uid = parse_abi(image.labels.get(ABI_LABEL)).get("uid")
    # numeric, as a task whose image is scanned for a non-root user sets it; the name only when unknown
    user = uid if uid and uid.isdigit() else image.user
    hc = image.healthcheck or {}
    start = int(hc.get("StartPeriod") or 0) / _NS or DEFAULT_START_PERIOD_S
    drain = _float(merged.get("AGENT_DRAIN_SECONDS", image.labels.get(DRAIN_LABEL)), DEFAULT_DRAIN_S)
    return RunFacts(port=port, base_path="" if base == "/" else base, user=user, start_period_s=start,
                    drain_s=drain)


def mismatches(expect: Mapping[str, Any], answer: Any) -> dict[str, dict[str, Any]]:
    """Every key of EXPECT whose value differs in ANSWER: {key: {"expected", "got"}}.

    A subset check, one level deep: keys the answer has and EXPECT does not
    name are ignored; a value is compared whole (a nested dict must be equal).
    """
    if not isinstance(answer, Mapping):
        return {key: {"expected": value, "got": None, "missing": True} for key, value in expect.items()}
    out = {}
    for key, value in expect.items():
        if key not in answer:
            out[key] = {"expected": value, "got": None, "missing": True}
        elif answer[key] != value or isinstance(answer[key], bool) != isinstance(value, bool):  # JSON: true is not 1
            out[key] = {"expected": value, "got": answer[key]}
    return out


def json_option(text: str | None, option: str, *, want_object: bool = False) -> Any:
    """The JSON value of a command-line option; a bad one names the option."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SmokeTestError(f"{option} is not JSON: {exc}", field=option,
                             hint=f"Quote it for the shell, e.g. {option} '{{\"name\": \"ECS\"}}'.") from None
    if want_object and not isinstance(value, dict):
        raise SmokeTestError(f"{option} must be a JSON object (the keys to compare), got {type(value).__name__}",
                             field=option, hint=f"Pass an object, e.g. {option} '{{\"message\": \"Hello, ECS!\"}}'.")
    return value
