"""Fixtures both tiers use; none of them needs the engine, a registry, an index or root.

The engine, index, registry and link-local fixtures are in tests/integration/conftest.py,
so a unit test that asks for one is an error ("fixture not found"), not a slow test.
Helpers are in tests/support.
"""

from __future__ import annotations

import pytest

from tests.support.httpserver import Server
from tests.support.packages import make_agent


@pytest.fixture
def agent_factory(tmp_path):
    return lambda *a, **kw: make_agent(tmp_path, *a, **kw)


@pytest.fixture
def a():
    """An upstream on loopback answering from its route table: plays the index."""
    s = Server()
    yield s
    s.close()


@pytest.fixture
def b():
    """Another upstream on loopback: plays another origin."""
    s = Server()
    yield s
    s.close()
