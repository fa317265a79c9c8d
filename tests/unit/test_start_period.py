"""Issue 26: healthCheck.startPeriod from the ready time the build measured (the image's
io.pixell.agent-image.ready-seconds label): scaled to the task's CPU with a margin, never below
the image's own HEALTHCHECK start period, clamped to ECS's 300 s, overridden by --start-period.
Each request passes botocore's model and registers with moto's ECS."""

from __future__ import annotations

import pytest

from builder.core.errors import TaskDefinitionError
from builder.core.labels import READY_LABEL
from builder.ship.ecs import task_definition
from builder.ship.ecsopts import TaskOptions
from tests.support.ecs import api_errors, registered
from tests.unit.test_ecs_taskdef import REF, facts


def period(ready: str | None, **opts) -> int:
    image = facts(labels={READY_LABEL: ready} if ready is not None else {})
    request = task_definition(image, REF, TaskOptions(**opts))
    assert api_errors(request) == ""
    return request["containerDefinitions"][0]["healthCheck"]["startPeriod"]


@pytest.mark.parametrize("ready, cpu, memory, expected", [
    ("0.1", 256, 512, 10),     # a quick import: the image's own 10 s stands (0.1 x 4 x 1.5 + 5 = 5.6)
    ("3.0", 256, 512, 23),     # 3 s on the builder, 0.25 vCPU: 3 x 4 x 1.5 + 5 = 23
    ("3.0", 512, 1024, 14),    # half a vCPU: 3 x 2 x 1.5 + 5 = 14
    ("3.0", 2048, 4096, 10),   # more than a vCPU is no faster for one import: 3 x 1 x 1.5 + 5 = 9.5 -> 10
    ("12.5", 256, 512, 80),    # 12.5 x 4 x 1.5 + 5 = 80
    ("60", 256, 512, 300),     # clamped to ECS's largest startPeriod
])
def test_start_period_is_derived_from_the_measured_ready_time(ready, cpu, memory, expected):
    assert period(ready, cpu=cpu, memory=memory) == expected


def test_an_image_without_a_ready_time_keeps_its_own_start_period():
    assert period(None) == 10
    assert period("not-a-number") == 10


def test_start_period_option_overrides_and_is_checked():
    assert period("60", start_period=45) == 45
    assert period("0.1", start_period=0) == 0
    with pytest.raises(TaskDefinitionError) as err:
        task_definition(facts(), REF, TaskOptions(start_period=301))
    assert err.value.field == "--start-period" and "0-300" in err.value.message


def test_derived_start_periods_register_with_ecs():
    requests = [task_definition(facts(labels={READY_LABEL: r}), REF, TaskOptions()) for r in ("0.05", "7.2", "99")]
    stored = registered(*requests)
    assert [t["containerDefinitions"][0]["healthCheck"]["startPeriod"] for t in stored] == [10, 49, 300]
