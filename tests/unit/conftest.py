"""The unit tier: no engine, no registry, no index server, no root.

Every unit test runs with DOCKER_HOST pointing at nothing, so one that reaches
for the engine (in this process or in an `agent-image` it starts) fails at once
instead of passing only on machines that happen to run one.
"""

from __future__ import annotations

import pytest

NO_ENGINE = "unix:///nonexistent/the-unit-tier-has-no-engine.sock"


@pytest.fixture(autouse=True)
def no_engine(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
