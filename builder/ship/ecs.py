"""An agent image's facts -> an ECS ``RegisterTaskDefinition`` request. Pure: no engine, no AWS.

Every field that can disagree with the image comes from the image itself
(``engine.Image``: labels, config, HEALTHCHECK, architecture) and its
registry digest; the rest are options. The AWS API model checks only
shapes, so the rules it does not check (Fargate's cpu/memory pairs,
stopTimeout <= 120, the health-check ranges, the roles a task needs) are
checked here, and every failure is a ``TaskDefinitionError`` (exit 80)
raised before anything is printed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

import structlog

from builder.build.image import Image
from builder.core.errors import TaskDefinitionError
from builder.core.labels import AGENT_NAME_LABEL, AGENT_VERSION_LABEL, DRAIN_LABEL, ENV_REFS_LABEL, INPUT_LABEL
from builder.core.refs import split_ref
from builder.package.manifest import ENV_KEY_RE, RESERVED_ENV

log = structlog.get_logger("agent_image.ecs")

DEFAULT_DRAIN_S = 25  # the serving default when an image predates the drain label
STOP_MARGIN_S = 5     # after the drain: the process exits, the log flushes
FARGATE_MAX_STOP_S = 120
LAUNCH_TYPES = ("FARGATE", "EC2")
ARCHITECTURES = {"amd64": "X86_64", "arm64": "ARM64"}

# Fargate's task sizes: cpu units -> allowed memory (MiB)
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
EC2_CPU = (128, 196608)

# ECS's ranges for a container health check, and Docker's values for a 0 (unset) field
HEALTH_RANGES = {"interval": (5, 300), "timeout": (2, 60), "retries": (1, 10), "startPeriod": (0, 300)}
_DOCKER_HEALTH = {"interval": ("Interval", 30), "timeout": ("Timeout", 30), "startPeriod": ("StartPeriod", 0)}
_NS = 1_000_000_000

# variables the image sets for itself: the task may not move them from under it
IMAGE_OWNED_ENV = RESERVED_ENV | {"REST_PORT"}
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}\Z")
_ECR_HOST = re.compile(r"^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_TOKEN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,2048}\Z")  # an ARN, a name, a prefix: one printable word
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class TaskOptions:
    cpu: int = 256
    memory: int = 512
    launch_type: str = "FARGATE"
    execution_role_arn: str | None = None
    task_role_arn: str | None = None
    log_group: str | None = None
    log_region: str | None = None
    log_stream_prefix: str | None = None   # default: the agent name
    secrets_prefix: str | None = None      # valueFrom = prefix + NAME
    secrets: Mapping[str, str] = field(default_factory=dict)      # NAME -> ARN, wins over the prefix
    environment: Mapping[str, str] = field(default_factory=dict)  # AGENT_APP_ID, DEPLOYMENT_ID, BASE_PATH, ...


def _fail(message: str, field_name: str, hint: str | None = None) -> TaskDefinitionError:
    # a full stop: --json's message is the message and the hint in one string
    return TaskDefinitionError(message.rstrip(".") + ".", field=field_name, hint=hint)


def _word(value: str | None, option: str, what: str) -> None:
    if value is not None and not _TOKEN.match(value):
        raise _fail(f"{option} must be {what} without spaces or control characters, got {value[:60]!r}", option)


def check_options(o: TaskOptions) -> None:
    """Rules on the options alone (no image needed), so a build can check them before it starts."""
    if o.launch_type not in LAUNCH_TYPES:
        raise _fail(f"--launch-type must be one of {', '.join(LAUNCH_TYPES)}, got {o.launch_type!r}", "--launch-type")
    if o.launch_type == "FARGATE":
        if o.cpu not in FARGATE_SIZES:
            raise _fail(f"Fargate has no task size with --cpu {o.cpu}", "--cpu",
                        f"Use one of {', '.join(map(str, FARGATE_SIZES))} (CPU units; 1024 = 1 vCPU).")
        if o.memory not in FARGATE_SIZES[o.cpu]:
            allowed = FARGATE_SIZES[o.cpu]
            sizes = (", ".join(map(str, allowed)) if len(allowed) < 5 else
                     f"{allowed[0]}-{allowed[-1]} MiB in steps of {allowed[1] - allowed[0]}")
            raise _fail(f"Fargate does not allow --memory {o.memory} with --cpu {o.cpu}", "--memory",
                        f"With --cpu {o.cpu} use {sizes}.")
    else:
        if not EC2_CPU[0] <= o.cpu <= EC2_CPU[1]:
            raise _fail(f"--cpu {o.cpu} is outside ECS's {EC2_CPU[0]}-{EC2_CPU[1]} CPU units", "--cpu")
        if o.memory < 6:  # Docker's own floor for a container
            raise _fail(f"--memory {o.memory} MiB is below the 6 MiB a container needs", "--memory")
    for value, option in ((o.execution_role_arn, "--execution-role-arn"), (o.task_role_arn, "--task-role-arn")):
        if value is not None and not _ROLE_ARN.match(value):
            raise _fail(f"{option} must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {value[:80]!r}",
                        option)
    for value, option in ((o.log_group, "--log-group"), (o.log_region, "--log-region"),
                          (o.log_stream_prefix, "--log-stream-prefix"), (o.secrets_prefix, "--secrets-prefix")):
        _word(value, option, "one word")
    if o.log_group is None and (o.log_region or o.log_stream_prefix):
        raise _fail("--log-region/--log-stream-prefix without --log-group", "--log-group",
                    "Add --log-group NAME (the awslogs group the task writes to).")
    if o.log_group is not None:
        if not o.log_region:
            raise _fail("--log-group needs --log-region (the awslogs driver requires awslogs-region)", "--log-region")
        if not o.execution_role_arn:
            raise _fail("awslogs needs --execution-role-arn: the task's agent writes the logs with that role",
                        "--execution-role-arn", "Pass the ARN of a role with AmazonECSTaskExecutionRolePolicy.")
    for key, value in o.environment.items():
        if not ENV_KEY_RE.match(key):
            raise _fail(f"environment name {key!r} is not a valid variable name", "--env")
        if key in IMAGE_OWNED_ENV:
            raise _fail(f"{key} is set by the image and cannot be set by the task", "--env",
                        "Leave it out: the port, health check and venv depend on the image's value.")
        if _CONTROL.search(value):
            raise _fail(f"the value of {key} contains a control character", "--env")
    for key, value in o.secrets.items():
        if not ENV_KEY_RE.match(key):
            raise _fail(f"--secret {key!r}: not a valid variable name", "--secret")
        _word(value, "--secret", f"an ARN or parameter name for {key}")
        if key in o.environment:
            raise _fail(f"{key} is given both as --secret and as a plain environment value", "--secret")


def secret_entries(refs: tuple[str, ...], o: TaskOptions) -> list[dict[str, str]]:
    """One `secrets` entry per ${...} reference in agent.yaml; an unmapped one is an error."""
    stray = sorted(set(o.secrets) - set(refs))
    if stray:
        raise _fail(f"--secret {', '.join(stray)}: not an environment reference of this agent "
                    f"(its references: {', '.join(refs) or 'none'})", "--secret",
                    "Map only the names agent.yaml's `environment` gives as ${...}.")
    unmapped = [name for name in refs if name not in o.secrets and not o.secrets_prefix]
    if unmapped:
        raise _fail(f"agent.yaml's environment references {', '.join(unmapped)}, which no secret maps",
                    "--secret", f"Pass --secrets-prefix ARN_PREFIX (valueFrom = prefix + name) or "
                                f"--secret {unmapped[0]}=ARN for each.")
    clash = sorted(set(refs) & set(o.environment))
    if clash:
        raise _fail(f"{', '.join(clash)} is a secret reference in agent.yaml and also given with --env", "--env",
                    "Leave it to the secret: a plain value would put the secret in the task definition.")
    if refs and not o.execution_role_arn:
        raise _fail(f"secrets ({', '.join(refs)}) need --execution-role-arn: ECS reads them with that role",
                    "--execution-role-arn", "Pass a role allowed ssm:GetParameters / secretsmanager:GetSecretValue.")
    return [{"name": name, "valueFrom": o.secrets.get(name) or f"{o.secrets_prefix}{name}"} for name in refs]


def env_refs(labels: Mapping[str, str]) -> tuple[str, ...]:
    if ENV_REFS_LABEL not in labels:
        raise _fail(f"the image has no {ENV_REFS_LABEL} label, so the secrets it reads are unknown",
                    ENV_REFS_LABEL, "Rebuild it with this agent-image (build records the names it references).")
    names = tuple(n for n in labels[ENV_REFS_LABEL].split(",") if n)
    bad = [n for n in names if not ENV_KEY_RE.match(n)]
    if bad:
        raise _fail(f"the {ENV_REFS_LABEL} label holds {bad[0]!r}, not a variable name", ENV_REFS_LABEL)
    return names


def _seconds(ns: int, name: str) -> int:
    # ECS counts whole seconds; a fractional Docker value cannot be written without changing it
    if ns % _NS:
        raise _fail(f"the image's HEALTHCHECK {name} is {ns / _NS:g}s; ECS takes whole seconds", f"healthCheck.{name}",
                    "Rebuild the image with a whole-second HEALTHCHECK value.")
    return ns // _NS


def health_check(hc: Mapping | None) -> dict | None:
    """The image's HEALTHCHECK in ECS's form, equal in behaviour; a value ECS cannot take is an error.

    Docker reports nanoseconds and 0 for 'default'; the defaults differ
    (Docker's timeout is 30 s, ECS's 5 s), so every field is written out.
    """
    test = list((hc or {}).get("Test") or [])
    if not test or test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
        raise _fail(f"the image's HEALTHCHECK {test!r} is not a CMD or CMD-SHELL command", "healthCheck.command")
    out: dict = {"command": test}
    for key, (docker_key, default_s) in _DOCKER_HEALTH.items():
        raw = int(hc.get(docker_key) or 0)
        out[key] = _seconds(raw, key) if raw else default_s
    out["retries"] = int(hc.get("Retries") or 0) or 3
    for key, (low, high) in HEALTH_RANGES.items():
        if not low <= out[key] <= high:
            raise _fail(f"the image's HEALTHCHECK {key} is {out[key]}, outside ECS's {low}-{high}",
                        f"healthCheck.{key}", "Rebuild the image with a HEALTHCHECK ECS accepts; the task "
                                              "definition copies it rather than running a different check.")
    return {k: out[k] for k in ("command", "interval", "timeout", "retries", "startPeriod")}


def stop_timeout(labels: Mapping[str, str], launch_type: str) -> int:
    """Long enough for the serving drain window, plus a margin for the exit itself."""
    raw = labels.get(DRAIN_LABEL)
    try:
        drain = float(raw) if raw is not None else DEFAULT_DRAIN_S
    except ValueError:
        raise _fail(f"the image's {DRAIN_LABEL} label is {raw!r}, not a number of seconds", DRAIN_LABEL) from None
    if not 0 <= drain < 3600:
        raise _fail(f"the image's {DRAIN_LABEL} label is {raw!r}, not a drain window in seconds", DRAIN_LABEL)
    timeout = max(2, math.ceil(drain) + STOP_MARGIN_S)
    if launch_type == "FARGATE" and timeout > FARGATE_MAX_STOP_S:
        raise _fail(f"the image drains for {drain:g}s, so it needs stopTimeout {timeout}; Fargate allows at most "
                    f"{FARGATE_MAX_STOP_S}", "stopTimeout",
                    f"Rebuild with a drain window of at most {FARGATE_MAX_STOP_S - STOP_MARGIN_S}s, or use "
                    "--launch-type EC2.")
    return timeout


def runtime_platform(image: Image) -> dict[str, str]:
    if image.os and image.os != "linux":
        raise _fail(f"the image is for {image.os}; agent images run on Linux", "runtimePlatform")
    arch = ARCHITECTURES.get(image.architecture)
    if arch is None:
        raise _fail(f"the image's architecture {image.architecture!r} has no ECS runtime platform "
                    f"(ECS runs {', '.join(ARCHITECTURES)})", "runtimePlatform.cpuArchitecture")
    return {"cpuArchitecture": arch, "operatingSystemFamily": "LINUX"}


def rest_port(image: Image) -> int:
    """REST_PORT from the image's environment; the image must EXPOSE it."""
    env = dict(e.split("=", 1) for e in image.env if "=" in e)
    raw = env.get("REST_PORT")
    if raw is None or not raw.isdigit() or not 0 < int(raw) < 65536:
        raise _fail(f"the image sets no usable REST_PORT (got {raw!r})", "portMappings",
                    "Build it with agent-image: its images set REST_PORT and EXPOSE it.")
    if f"{raw}/tcp" not in image.exposed_ports:
        raise _fail(f"the image serves REST_PORT {raw} but exposes {', '.join(image.exposed_ports) or 'nothing'}",
                    "portMappings")
    return int(raw)


def digest_ref(image: Image, ref: str) -> str:
    """REPO@sha256:... for the image: ECS must run these bytes, not whatever a tag names later."""
    if "@sha256:" in ref:
        return ref
    repo, _ = split_ref(ref)
    same_repo = [d for d in image.digests if d.split("@", 1)[0] == repo]
    candidates = same_repo or list(image.digests)
    if not candidates:
        raise _fail(f"{ref} has no registry digest: it was built here and never pushed or pulled", "image",
                    "Push it first (agent-image build ... --push, which can write the task definition itself "
                    "with --ecs-task-def FILE), then pass REGISTRY/NAME@sha256:....")
    if len(candidates) > 1:
        raise _fail(f"{ref} is in several registries ({', '.join(candidates)}); which one ECS pulls is unclear",
                    "image", "Pass the digest reference itself (REPO@sha256:...).")
    return candidates[0]


def task_definition(image: Image, ref: str, o: TaskOptions) -> dict:
    """The RegisterTaskDefinition request for IMAGE, pinned by the digest reference REF."""
    check_options(o)
    name = image.labels.get(AGENT_NAME_LABEL)
    version = image.labels.get(AGENT_VERSION_LABEL)
    if not name or not version:
        raise _fail(f"{ref} has no io.pixell.agent.name/version labels: it was not built by agent-image",
                    "image", "Pass an image built with `agent-image build`.")
    secrets = secret_entries(env_refs(image.labels), o)
    host = ref.split("/", 1)[0]
    if o.launch_type == "FARGATE" and _ECR_HOST.match(host) and not o.execution_role_arn:
        raise _fail("Fargate pulls from ECR with the task execution role: --execution-role-arn is required",
                    "--execution-role-arn")
    container: dict = {
        "name": name,
        "image": ref,
        "essential": True,
        "portMappings": [{"containerPort": rest_port(image), "protocol": "tcp", "name": "rest",
                          "appProtocol": "http"}],
        "stopTimeout": stop_timeout(image.labels, o.launch_type),
    }
    if image.user:
        container["user"] = image.user
    else:
        log.warning("The image runs as root; the task will too", image=ref)
    if o.environment:
        container["environment"] = [{"name": k, "value": v} for k, v in sorted(o.environment.items())]
    if secrets:
        container["secrets"] = secrets
    check = health_check(image.healthcheck)
    if check:
        container["healthCheck"] = check
    else:
        log.warning("The image has no HEALTHCHECK; ECS will not replace an unhealthy task", image=ref)
    if o.log_group:
        container["logConfiguration"] = {"logDriver": "awslogs", "options": {
            "awslogs-group": o.log_group, "awslogs-region": o.log_region,
            "awslogs-stream-prefix": o.log_stream_prefix or name}}
    request: dict = {"family": name}
    if o.execution_role_arn:
        request["executionRoleArn"] = o.execution_role_arn
    if o.task_role_arn:
        request["taskRoleArn"] = o.task_role_arn
    request.update({
        "networkMode": "awsvpc",
        "requiresCompatibilities": [o.launch_type],
        "cpu": str(o.cpu),
        "memory": str(o.memory),
        "runtimePlatform": runtime_platform(image),
        "containerDefinitions": [container],
        "tags": [{"key": AGENT_NAME_LABEL, "value": name}, {"key": AGENT_VERSION_LABEL, "value": version}]
        + ([{"key": INPUT_LABEL, "value": image.labels[INPUT_LABEL]}] if image.labels.get(INPUT_LABEL) else []),
    })
    return request
