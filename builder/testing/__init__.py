"""Test the image you built: ``AgentContainer`` (a testcontainers container
for an agent image, run as its ECS task runs it), the pytest plugin
(``--agent-image`` / ``--agent-package``, fixtures ``agent_image`` and
``agent``) and ``agent-image test``'s smoke test. See docs/testing.md.

May import builder.api and everything below it (the cli level). testcontainers
is an optional extra (``agent-image[testing]``), imported only when a
container is made: importing this package, or loading the plugin, never needs it.
"""

from __future__ import annotations

from typing import Any

from builder.core.errors import AgentResponseError, RunError, SmokeTestError

__all__ = ["AgentContainer", "AgentResponseError", "RunError", "SmokeTestError"]


def __getattr__(name: str) -> Any:
    if name == "AgentContainer":
        from builder.testing.container import AgentContainer
        return AgentContainer
    raise AttributeError(f"module 'builder.testing' has no attribute {name!r}")
