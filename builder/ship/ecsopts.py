"""The ECS task definition's options and the rules on them alone (no image needed, so a
build checks them before it starts), and ``Problems``: every failed rule collected and
raised as one ``TaskDefinitionError`` naming each option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar

from builder.core.errors import TaskDefinitionError
from builder.package.manifest import ENV_KEY_RE, RESERVED_ENV
from builder.ship.awsnames import prefix_problem, region_problem, role_problem, secret_ref_problem

LAUNCH_TYPES = ("FARGATE", "EC2")
NETWORK_MODES = ("awsvpc", "bridge", "host")  # Fargate takes awsvpc only
FARGATE_EPHEMERAL_GIB = (21, 200)
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
START_PERIOD_MAX_S = 300  # ECS's healthCheck.startPeriod range is 0-300 s
# variables the image sets for itself: the task may not move them from under it
IMAGE_OWNED_ENV = RESERVED_ENV | {"REST_PORT"}
_FAMILY_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,200}\Z")  # family: letters, digits, - and _, up to 255
_TOKEN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,2048}\Z")  # a name, a prefix: one printable word
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
T = TypeVar("T")


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
    network_mode: str | None = None        # default: awsvpc on Fargate, bridge on EC2
    family_prefix: str = ""                # family = prefix + agent name
    ephemeral_storage: int | None = None   # GiB, Fargate only (21-200)
    writable_root: bool = False            # opt out of readonlyRootFilesystem
    start_period: int | None = None        # healthCheck.startPeriod; default: from the image's ready time

    @property
    def network(self) -> str:
        return self.network_mode or ("awsvpc" if self.launch_type == "FARGATE" else "bridge")


def fail(message: str, field_name: str, hint: str | None = None) -> TaskDefinitionError:
    # a full stop: --json's message is the message and the hint in one string
    return TaskDefinitionError(message.rstrip(".") + ".", field=field_name, hint=hint)


class Problems:
    """Every problem of one task definition, raised together by ``raise_any``."""

    def __init__(self) -> None:
        self.items: list[dict[str, str | None]] = []

    def add(self, option: str, message: str, hint: str | None = None) -> None:
        item = {"field": option, "message": message.rstrip(".") + ".", "hint": hint}
        if item not in self.items:
            self.items.append(item)

    def run(self, step: Callable[..., T], *args, default: T = None) -> T:
        """STEP(*ARGS), its TaskDefinitionError recorded instead of raised (then DEFAULT)."""
        try:
            return step(*args)
        except TaskDefinitionError as err:
            for item in err.problems:
                if item not in self.items:
                    self.items.append(item)
            return default

    def raise_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            one = self.items[0]
            raise TaskDefinitionError(one["message"], field=one["field"], hint=one["hint"], problems=self.items)
        # "[--secret]", not "--secret:": the log redactor would hide the word after "secret:"
        lines = [f"- [{i['field']}] {i['message']}" + (f" {i['hint']}" if i["hint"] else "") for i in self.items]
        fields = list(dict.fromkeys(i["field"] for i in self.items))
        raise TaskDefinitionError(f"{len(self.items)} problems with the task definition:\n" + "\n".join(lines),
                                  field=", ".join(fields), problems=self.items,
                                  hint="Fix them all, then run again (each names its option).")


def _size_problems(o: TaskOptions, p: Problems) -> None:
    if o.launch_type == "FARGATE":
        if o.cpu not in FARGATE_SIZES:
            p.add("--cpu", f"Fargate has no task size with --cpu {o.cpu}",
                  f"Use one of {', '.join(map(str, FARGATE_SIZES))} (CPU units; 1024 = 1 vCPU).")
        elif o.memory not in FARGATE_SIZES[o.cpu]:
            allowed = FARGATE_SIZES[o.cpu]
            sizes = (", ".join(map(str, allowed)) if len(allowed) < 5 else
                     f"{allowed[0]}-{allowed[-1]} MiB in steps of {allowed[1] - allowed[0]}")
            p.add("--memory", f"Fargate does not allow --memory {o.memory} with --cpu {o.cpu}",
                  f"With --cpu {o.cpu} use {sizes}.")
        if o.network not in ("awsvpc",):
            p.add("--network-mode", f"Fargate runs tasks in awsvpc network mode only, not {o.network}",
                  "Leave --network-mode out, or use --launch-type EC2.")
        low, high = FARGATE_EPHEMERAL_GIB
        if o.ephemeral_storage is not None and not low <= o.ephemeral_storage <= high:
            p.add("--ephemeral-storage", f"Fargate's ephemeral storage is {low}-{high} GiB, "
                  f"not {o.ephemeral_storage}", "Leave it out for the default 20 GiB.")
    else:
        if not EC2_CPU[0] <= o.cpu <= EC2_CPU[1]:
            p.add("--cpu", f"--cpu {o.cpu} is outside ECS's {EC2_CPU[0]}-{EC2_CPU[1]} CPU units")
        if o.memory < 6:  # Docker's own floor for a container
            p.add("--memory", f"--memory {o.memory} MiB is below the 6 MiB a container needs")
        if o.ephemeral_storage is not None:
            p.add("--ephemeral-storage", "ephemeral storage is set for Fargate tasks only",
                  "On EC2 the instance's disk is the limit: leave --ephemeral-storage out.")
    if o.network not in NETWORK_MODES:
        p.add("--network-mode", f"--network-mode must be one of {', '.join(NETWORK_MODES)}, got {o.network!r}")


def _name_problems(o: TaskOptions, p: Problems) -> None:
    """Roles, regions, the log settings, the family prefix: each by its documented shape."""
    for value, option in ((o.execution_role_arn, "--execution-role-arn"), (o.task_role_arn, "--task-role-arn")):
        problem = role_problem(value) if value is not None else None
        if problem:
            p.add(option, f"{option} {problem}", "Pass the role's ARN, as `aws iam get-role` shows it.")
    for value, option in ((o.log_group, "--log-group"), (o.log_region, "--log-region"),
                          (o.log_stream_prefix, "--log-stream-prefix")):
        if value is not None and not _TOKEN.match(value):
            p.add(option, f"{option} must be one word without spaces or control characters, got {value[:60]!r}")
    if o.log_region and _TOKEN.match(o.log_region) and (problem := region_problem(o.log_region)):
        p.add("--log-region", f"--log-region {problem}")
    if o.log_group is None and (o.log_region or o.log_stream_prefix):
        p.add("--log-group", "--log-region/--log-stream-prefix without --log-group",
              "Add --log-group NAME (the awslogs group the task writes to).")
    if o.log_group is not None:
        if not o.log_region:
            p.add("--log-region", "--log-group needs --log-region (the awslogs driver requires awslogs-region)")
        if not o.execution_role_arn:
            p.add("--execution-role-arn", "awslogs needs --execution-role-arn: the task's agent writes the logs "
                  "with that role", "Pass the ARN of a role with AmazonECSTaskExecutionRolePolicy.")
    if not _FAMILY_PREFIX.match(o.family_prefix or ""):
        p.add("--family-prefix", f"--family-prefix may hold letters, digits, - and _ only, got "
              f"{o.family_prefix[:60]!r}")


def _secret_problems(o: TaskOptions, p: Problems) -> None:
    if o.secrets_prefix is not None and (problem := prefix_problem(o.secrets_prefix)):
        p.add("--secrets-prefix", f"--secrets-prefix {problem}",
              "End it in / (a path), - or : so that prefix + NAME names one parameter or secret.")
    for key, value in o.secrets.items():
        if not ENV_KEY_RE.match(key):
            p.add("--secret", f"--secret {key!r}: not a valid variable name")
        elif (problem := secret_ref_problem(value)):
            p.add("--secret", f"--secret {key}={problem}")
        if key in o.environment:
            p.add("--secret", f"{key} is given both as --secret and as a plain environment value")
    if (o.secrets_prefix or o.secrets) and not o.execution_role_arn:
        p.add("--execution-role-arn", SECRETS_NEED_ROLE, ROLE_HINT)


SECRETS_NEED_ROLE = "secrets need --execution-role-arn: ECS reads them with that role"
ROLE_HINT = "Pass a role allowed ssm:GetParameters / secretsmanager:GetSecretValue."


def option_problems(o: TaskOptions, p: Problems) -> None:
    """Every rule on the options alone, into P."""
    if o.launch_type not in LAUNCH_TYPES:
        p.add("--launch-type", f"--launch-type must be one of {', '.join(LAUNCH_TYPES)}, got {o.launch_type!r}")
    else:
        _size_problems(o, p)
    _name_problems(o, p)
    if o.start_period is not None and not 0 <= o.start_period <= START_PERIOD_MAX_S:
        p.add("--start-period", f"ECS's health-check startPeriod is 0-{START_PERIOD_MAX_S} s, not {o.start_period}",
              "Leave it out to derive it from the ready time the image records.")
    for key, value in o.environment.items():
        if not ENV_KEY_RE.match(key):
            p.add("--env", f"environment name {key!r} is not a valid variable name")
        elif key in IMAGE_OWNED_ENV:
            p.add("--env", f"{key} is set by the image and cannot be set by the task",
                  "Leave it out: the port, health check and venv depend on the image's value.")
        if _CONTROL.search(value):
            p.add("--env", f"the value of {key} contains a control character")
    _secret_problems(o, p)


def check_options(o: TaskOptions) -> None:
    """Rules on the options alone, all of them at once."""
    p = Problems()
    option_problems(o, p)
    p.raise_any()


def secret_problems(refs: tuple[str, ...], o: TaskOptions, p: Problems) -> list[dict[str, str]]:
    """One `secrets` entry per ${...} reference in agent.yaml; an unmapped one is a problem."""
    stray = sorted(set(o.secrets) - set(refs))
    if stray:
        p.add("--secret", f"--secret {', '.join(stray)}: not an environment reference of this agent "
              f"(its references: {', '.join(refs) or 'none'})",
              "Map only the names agent.yaml's `environment` gives as ${...}.")
    unmapped = [name for name in refs if name not in o.secrets and not o.secrets_prefix]
    if unmapped:
        p.add("--secret", f"agent.yaml's environment references {', '.join(unmapped)}, which no secret maps",
              f"Pass --secrets-prefix ARN_PREFIX (valueFrom = prefix + name) or "
              f"--secret {unmapped[0]}=ARN for each.")
    clash = sorted(set(refs) & set(o.environment))
    if clash:
        p.add("--env", f"{', '.join(clash)} is a secret reference in agent.yaml and also given with --env",
              "Leave it to the secret: a plain value would put the secret in the task definition.")
    if refs and not o.execution_role_arn:
        p.add("--execution-role-arn", SECRETS_NEED_ROLE, ROLE_HINT)
    return [{"name": name, "valueFrom": o.secrets.get(name) or f"{o.secrets_prefix}{name}"} for name in refs]


def secret_entries(refs: tuple[str, ...], o: TaskOptions) -> list[dict[str, str]]:
    p = Problems()
    entries = secret_problems(refs, o, p)
    p.raise_any()
    return entries
