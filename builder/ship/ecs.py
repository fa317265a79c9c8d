"""An agent image's facts -> an ECS ``RegisterTaskDefinition`` request. Pure: no engine, no AWS.

Every field that can disagree with the image comes from the image itself
(``engine.Image``: labels, config, HEALTHCHECK, architecture) and its
registry digest; the rest are options. The AWS API model checks only
shapes, so the rules it does not check (Fargate's cpu/memory pairs,
stopTimeout <= 120, the health-check ranges, the roles a task needs) are
checked here, and every failure is a ``TaskDefinitionError`` (exit 80)
raised before anything is printed. Every problem found in one pass is in that
one error (``Problems``): a run says all that is wrong, not the first thing.

By default the task is hardened as far as the image allows: a read-only root
with a writable /tmp volume (agent images write nowhere else; `agent-image
test` runs them so), and the numeric uid from the base's ABI label (a scanner
cannot tell that a user *name* is not root).
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import structlog

from builder.build.image import Image
from builder.core.labels import (ABI_LABEL, AGENT_NAME_LABEL, AGENT_VERSION_LABEL, DRAIN_LABEL, ENV_REFS_LABEL,
                                 INPUT_LABEL, parse_abi, ready_seconds)
from builder.core.refs import split_ref
from builder.package.manifest import ENV_KEY_RE
# the options and their rules; re-exported: callers import them from here
from builder.ship.ecsopts import (EC2_CPU, FARGATE_SIZES, LAUNCH_TYPES, Problems, TaskOptions, check_options, fail,
                                  option_problems, secret_entries, secret_problems)

__all__ = ["EC2_CPU", "FARGATE_SIZES", "LAUNCH_TYPES", "TaskOptions", "check_options", "secret_entries",
           "task_definition", "digest_ref", "health_check", "start_period", "stop_timeout"]

log = structlog.get_logger("agent_image.ecs")

DEFAULT_DRAIN_S = 25  # the serving default when an image predates the drain label
STOP_MARGIN_S = 5     # after the drain: the process exits, the log flushes
FARGATE_MAX_STOP_S = 120
ARCHITECTURES = {"amd64": "X86_64", "arm64": "ARM64"}
TMP_VOLUME = "tmp"  # the task volume mounted at /tmp when the root is read-only (Fargate)
TMP_MIB = 64        # EC2's tmpfs /tmp, as `agent-image test` mounts it (builder/testing/facts.py TMP_SIZE)

# healthCheck.startPeriod from the ready time the build measured (core/labels.py READY_LABEL):
# the builder's core counts as one vCPU; a task of CPU units below 1024 imports that much slower
# (1024 / cpu: 4x at 256), then x1.5 for a cold page cache and noisy neighbours, + 5 s for the
# container and interpreter start and the first check; never below the image's HEALTHCHECK
# start period, never above ECS's 300 s. --start-period overrides it.
START_SCALE = 1.5
START_PAD_S = 5
# ECS's ranges for a container health check, and Docker's values for a 0 (unset) field
HEALTH_RANGES = {"interval": (5, 300), "timeout": (2, 60), "retries": (1, 10), "startPeriod": (0, 300)}
_DOCKER_HEALTH = {"interval": ("Interval", 30), "timeout": ("Timeout", 30), "startPeriod": ("StartPeriod", 0)}
_NS = 1_000_000_000
_ECR_HOST = re.compile(r"^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_fail = fail


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


def start_period(image: Image, o: TaskOptions, declared: int) -> int:
    """The health check's startPeriod: --start-period, else from the image's measured ready time
    (at least DECLARED, the image's own HEALTHCHECK start period), else DECLARED."""
    if o.start_period is not None:
        return o.start_period
    ready = ready_seconds(image.labels)
    if ready is None:
        return declared
    slower = max(1.0, 1024 / o.cpu) if o.cpu > 0 else 1.0
    derived = math.ceil(ready * slower * START_SCALE + START_PAD_S)
    return max(declared, min(derived, HEALTH_RANGES["startPeriod"][1]))


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
    raw = image.environment.get("REST_PORT")
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


def task_user(image: Image) -> str | None:
    """The numeric uid from the base's ABI label: ECS.5-style checks and Kubernetes' runAsNonRoot
    cannot tell a user *name* from root, a number they can. The name only for an image without it."""
    uid = parse_abi(image.labels.get(ABI_LABEL)).get("uid")
    if uid and uid.isdigit():
        return uid
    if image.user:
        log.warning("The image's ABI label has no uid; the task runs as the user name", user=image.user)
    return image.user or None


def read_only_root(image: Image, o: TaskOptions, user: str | None) -> dict:
    """The container fields that make the root read-only with a writable /tmp, where the image allows it.

    Agent images write only /tmp (`agent-image test` runs them so). On EC2 /tmp is a tmpfs, as in
    that test. Fargate has no tmpfs: /tmp is a task volume, which Fargate creates root-owned 0755
    unless the image declares VOLUME /tmp (then it copies the image's /tmp, mode 1777): a non-root
    agent could not write an undeclared one, so such an image keeps a writable root.
    """
    if o.writable_root:
        return {}
    if o.launch_type == "EC2":
        return {"readonlyRootFilesystem": True,
                "linuxParameters": {"tmpfs": [{"containerPath": "/tmp", "size": TMP_MIB}]}}
    if "/tmp" not in image.volumes and user not in (None, "0", "root"):
        log.warning("The image declares no VOLUME /tmp, so on Fargate its non-root user could not write a "
                    "mounted /tmp: the root filesystem stays writable", image=image.id[:19])
        return {}
    return {"readonlyRootFilesystem": True,
            "mountPoints": [{"sourceVolume": TMP_VOLUME, "containerPath": "/tmp", "readOnly": False}]}


def _container(image: Image, ref: str, name: str, o: TaskOptions, p: Problems) -> dict:
    container: dict = {
        "name": name,
        "image": ref,
        "essential": True,
        "portMappings": [{"containerPort": p.run(rest_port, image, default=0), "protocol": "tcp", "name": "rest",
                          "appProtocol": "http"}],
        "stopTimeout": p.run(stop_timeout, image.labels, o.launch_type, default=0),
    }
    user = task_user(image)
    if user and user not in ("0", "root"):
        container["user"] = user
    else:
        log.warning("The image runs as root; the task will too", image=ref)
    container.update(read_only_root(image, o, user))
    if o.environment:
        container["environment"] = [{"name": k, "value": v} for k, v in sorted(o.environment.items())]
    check = p.run(health_check, image.healthcheck)
    if check:
        check["startPeriod"] = start_period(image, o, check["startPeriod"])
        container["healthCheck"] = check
    elif not p.items:
        log.warning("The image has no HEALTHCHECK; ECS will not replace an unhealthy task", image=ref)
    if o.log_group:
        container["logConfiguration"] = {"logDriver": "awslogs", "options": {
            "awslogs-group": o.log_group, "awslogs-region": o.log_region,
            "awslogs-stream-prefix": o.log_stream_prefix or name}}
    return container


def task_definition(image: Image, ref: str, o: TaskOptions) -> dict:
    """The RegisterTaskDefinition request for IMAGE, pinned by the digest reference REF.

    Every problem, of the options and of the image, is collected and raised as one error."""
    p = Problems()
    option_problems(o, p)
    name = image.labels.get(AGENT_NAME_LABEL)
    version = image.labels.get(AGENT_VERSION_LABEL)
    if not name or not version:
        p.add("image", f"{ref} has no io.pixell.agent.name/version labels: it was not built by agent-image",
              "Pass an image built with `agent-image build`.")
        p.raise_any()
    refs = p.run(env_refs, image.labels, default=())
    secrets = secret_problems(refs, o, p)
    host = ref.split("/", 1)[0]
    if o.launch_type == "FARGATE" and _ECR_HOST.match(host) and not o.execution_role_arn:
        p.add("--execution-role-arn", "Fargate pulls from ECR with the task execution role: "
              "--execution-role-arn is required")
    container = _container(image, ref, name, o, p)
    if secrets:
        container["secrets"] = secrets
    platform = p.run(runtime_platform, image)
    p.raise_any()
    # healthCheck and logConfiguration last, as before: the order a reader of task.json sees
    container = {k: container[k] for k in sorted(container, key=lambda k: k in ("healthCheck", "logConfiguration"))}
    request: dict = {"family": f"{o.family_prefix}{name}"}
    if o.execution_role_arn:
        request["executionRoleArn"] = o.execution_role_arn
    if o.task_role_arn:
        request["taskRoleArn"] = o.task_role_arn
    request.update({
        "networkMode": o.network,
        "requiresCompatibilities": [o.launch_type],
        "cpu": str(o.cpu),
        "memory": str(o.memory),
        "runtimePlatform": platform,
        "containerDefinitions": [container],
    })
    if "mountPoints" in container:
        request["volumes"] = [{"name": TMP_VOLUME}]  # no host: task storage (Fargate's ephemeral storage)
    if o.ephemeral_storage is not None:
        request["ephemeralStorage"] = {"sizeInGiB": o.ephemeral_storage}
    request["tags"] = ([{"key": AGENT_NAME_LABEL, "value": name}, {"key": AGENT_VERSION_LABEL, "value": version}]
                       + ([{"key": INPUT_LABEL, "value": image.labels[INPUT_LABEL]}]
                          if image.labels.get(INPUT_LABEL) else []))
    return request
