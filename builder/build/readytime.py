"""The agent's ready time, measured on the builder right after its build, and recorded in
the image (core/labels.py READY_LABEL) so `ecs-task-def` can give a slow starter a long
enough health-check start period (ship/ecs.py start_period).

What is timed is what stands between a started container and its first healthy /health:
importing the agent's entrypoint, and for a ``rest.entry`` with FastAPI in its venv,
importing FastAPI and uvicorn and mounting the agent's routes. It runs in the built image
as its ECS task runs it (no network, read-only root, a tmpfs /tmp, the image's user), so
an agent that reaches out at import time gets no further than it would with no network.

The label is added by a one-step build FROM the built image (a LABEL: no layer, about 0.1 s). The label is not in the input digest: an identical rebuild is reused, label and all.

A code-only rebuild (agentbuild.build_offline) is not measured: the import costs a real agent
about a second (the seed's: 0.75 s of a 0.7 s rebuild), and what it reads is the previous
image's but for the agent's own code. That image's ready time comes along when the two images
share every layer below the code and every ENV value but the version (carried); else it is
measured, as after any other build.
"""

from __future__ import annotations

import time

import structlog

from builder.build.engine import Engine
from builder.build.image import Image
from builder.build.stream import BuildOutcome
from builder.core import events
from builder.core.errors import EngineError
from builder.core.labels import READY_LABEL, ready_seconds
from builder.plan.dockerfile import LAYER_INSTRUCTIONS, Rendered
from builder.plan.context import build_context

log = structlog.get_logger("agent_image")

MEASURE_TIMEOUT_S = 60   # past this startPeriod is clamped at ECS's 300 s anyway: recorded as the lower bound
TMP_SIZE = "64m"         # as `agent-image test` (testing/facts.py) and ecs-task-def's EC2 tmpfs
_MARK = "agent-image-ready-seconds="
# the shim's own way of loading (builder/shim/serve_core.py load, serve.py main), timed
SCRIPT = f"""
import importlib, os, sys, time
started = time.perf_counter()
sys.path.insert(0, "/app")
def load(spec):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
entry, rest = os.environ.get("AGENT_ENTRYPOINT", ""), os.environ.get("AGENT_REST_ENTRY", "")
if entry:
    load(entry)
if rest:
    try:
        import fastapi, uvicorn
    except ImportError:
        pass
    else:
        load(rest)(fastapi.FastAPI())
print("{_MARK}%.3f" % (time.perf_counter() - started))
"""


def measure(engine: Engine, image_id: str, timeout: float = MEASURE_TIMEOUT_S) -> float | None:
    """Seconds the agent takes to get ready in IMAGE_ID on this builder; None when its import failed
    (it may need its secrets: serving shows it then). An import past TIMEOUT is recorded as TIMEOUT."""
    started = time.monotonic()
    try:
        out = engine.run_once(image_id, ["python", "-c", SCRIPT], timeout=timeout, as_image_user=True,
                              tmp_size=TMP_SIZE)
    except EngineError as exc:
        if time.monotonic() - started >= timeout:
            log.warning(events.READY_TIME, seconds=timeout, note=f"the import did not finish in {timeout} s")
            return float(timeout)
        log.warning("The agent's import failed on the builder: no ready time recorded (ecs-task-def keeps the "
                    "image's start period)", error=str(exc)[-300:])
        return None
    seconds = next((float(line[len(_MARK):]) for line in reversed(out.splitlines()) if line.startswith(_MARK)), None)
    if seconds is not None:
        log.info(events.READY_TIME, seconds=seconds)
    return seconds


def label(engine: Engine, outcome: BuildOutcome, timeout: float) -> BuildOutcome:
    """OUTCOME with its image carrying READY_LABEL (unchanged when the agent's import failed)."""
    seconds = measure(engine, outcome.image_id)
    if seconds is None:
        return outcome
    # FROM the built image itself: one LABEL step on top of it, whatever else the layer cache holds
    dockerfile = f'FROM {outcome.image_id}\nLABEL {READY_LABEL}="{seconds:.3f}"\n'.encode()
    again = engine.build(context=build_context(None, {"Dockerfile": dockerfile}).data, network_mode="none",
                         timeout=timeout)
    if again.error is not None or again.image_id is None:
        log.warning("Could not add the ready-time label; the image is kept without it", error=(again.error or "")[:200])
        return outcome
    outcome.image_id = again.image_id
    return outcome


def ready_label(previous: Image | None) -> dict[str, str]:
    """{READY_LABEL: seconds} of a code-only rebuild's PREVIOUS image, for the build's own labels; {} without one."""
    seconds = ready_seconds(previous.labels) if previous is not None else None
    return {READY_LABEL: f"{seconds:.3f}"} if seconds is not None else {}


def carried(previous: Image, built: Image, rendered: Rendered) -> float | None:
    """The ready time BUILT took over from PREVIOUS (the agent's last image), or None: measure it.
    It stands only when the two differ in nothing the import reads but the agent's code: every
    layer below the code step's (the base, the dependencies, the package step) the same, the
    same number of layers, and the same ENV but AGENT_VERSION (entrypoint, REST entry, the agent's
    own environment)."""
    seconds = ready_seconds(previous.labels)
    names = rendered.steps
    if seconds is None or built.labels.get(READY_LABEL) != f"{seconds:.3f}" or "source" not in names:
        return None
    first = names.index("source")
    above = sum(1 for i in rendered.instructions[first:] if i.split(None, 1)[0].upper() in LAYER_INSTRUCTIONS)
    below = len(built.layers) - above
    if above == 0 or below <= 0 or len(previous.layers) != len(built.layers) \
            or previous.layers[:below] != built.layers[:below]:
        return None
    env = lambda image: {k: v for k, v in image.environment.items() if k != "AGENT_VERSION"}  # noqa: E731
    if env(previous) != env(built) or previous.user != built.user:
        return None
    log.info(events.READY_TIME, seconds=seconds, carried_from=previous.id,
             note="only the code changed: the previous image's ready time")
    return seconds
