"""The pytest plugin (entry point ``pytest11``): ``--agent-image REF`` or
``--agent-package PATH``, fixtures ``agent_image`` (the image reference) and
``agent`` (a running ``AgentContainer``; session scope unless ``--agent-scope``).

Loaded by every pytest run where agent-image is installed, so it imports
nothing heavy at load time and never testcontainers until ``agent`` is used.
Without either option the fixtures skip; with one, a missing engine or extra
is a failure, not a skip.
"""

from __future__ import annotations

import pytest

SKIP_MESSAGE = ("no agent image to test: pass --agent-image REF (an image on the engine or in a registry) "
                "or --agent-package PATH (an agent folder or .apkg, built first)")
SCOPES = ("session", "package", "module", "class", "function")


def pytest_addoption(parser) -> None:
    group = parser.getgroup("agent-image", "agent-image: test an agent image")
    group.addoption("--agent-image", metavar="REF", default=None, help="the agent image the `agent` fixture runs")
    group.addoption("--agent-package", metavar="PATH", default=None,
                    help="an agent folder or .apkg: built with agent-image first (an unchanged one is reused)")
    group.addoption("--agent-index-url", metavar="URL", default=None,
                    help="package index for --agent-package's build (default as for `agent-image build`)")
    group.addoption("--agent-env", metavar="KEY=VALUE", action="append", default=[],
                    help="environment for the agent container (repeatable; or override the agent_env fixture)")
    group.addoption("--agent-scope", choices=SCOPES, default="session",
                    help="how long one agent container lives (default session)")


def pytest_configure(config) -> None:
    if config.getoption("agent_image", None) and config.getoption("agent_package", None):
        raise pytest.UsageError("--agent-image and --agent-package name two agents: pass one of them")
    bad = [kv for kv in config.getoption("agent_env", None) or [] if "=" not in kv]
    if bad:
        raise pytest.UsageError(f"--agent-env {bad[0]!r} is not KEY=VALUE")


def parse_env(items: list[str]) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in items)


def _scope(fixture_name: str, config) -> str:
    return config.getoption("agent_scope", "session")


def _fail(err) -> None:
    from builder.core.errors import PackageLoadError
    if isinstance(err, PackageLoadError):
        tail = "".join(f"\n  | {ln}" for ln in err.log_tail[-20:])
        pytest.fail(f"agent-image: error[{err.reference}] {err}" + (f"\nlast log lines:{tail}" if tail else ""),
                    pytrace=False)
    pytest.fail(f"agent-image: the Docker engine is not reachable ({type(err).__name__}: {err}); "
                "start it or set DOCKER_HOST", pytrace=False)


def _is_engine_error(exc: BaseException) -> bool:
    # docker's DockerException, by name: only builder/build/engine.py imports docker
    return any(c.__name__ == "DockerException" for c in type(exc).__mro__) or isinstance(exc, ConnectionError)


@pytest.fixture(scope="session")
def agent_image(request) -> str:
    """The image under test: --agent-image as given, or --agent-package's image, built now."""
    from builder.core.errors import PackageLoadError
    config = request.config
    ref, package = config.getoption("agent_image"), config.getoption("agent_package")
    if not ref and not package:
        pytest.skip(SKIP_MESSAGE)
    if ref:
        return ref
    from builder.api import BuildOptions, build_image
    try:
        return build_image(package, BuildOptions(index_url=config.getoption("agent_index_url"))).image_id
    except PackageLoadError as err:
        _fail(err)


@pytest.fixture(scope="session")
def agent_env(request) -> dict:
    """The task's environment; override this fixture to set it from code."""
    return parse_env(request.config.getoption("agent_env"))


@pytest.fixture(scope="session")
def agent_secrets() -> dict:
    """What ECS would inject as secrets (plain values in tests); override this fixture to set them."""
    return {}


@pytest.fixture(scope=_scope)
def agent(agent_image, agent_env, agent_secrets):
    """A running AgentContainer of agent_image, healthy; stopped (SIGTERM, drain) afterwards."""
    from builder.core.errors import PackageLoadError
    try:
        from builder.testing.container import AgentContainer
    except ImportError as exc:
        pytest.fail(f"agent-image: the `agent` fixture needs testcontainers ({exc}); "
                    "pip install 'agent-image[testing]'", pytrace=False)
    try:
        container = AgentContainer(agent_image, env=agent_env, secrets=agent_secrets)  # connects to the engine
        container.start()  # removes its container itself when it fails
    except PackageLoadError as err:
        _fail(err)
    except Exception as exc:
        if _is_engine_error(exc):
            _fail(exc)
        raise
    try:
        yield container
    finally:
        container.stop()
