"""Tests of the built image, run against a real container of it.

    pip install 'agent-image[testing]'
    pytest tests --agent-package .                                  # build this folder, then test its image
    pytest tests --agent-image REGISTRY/agents/hello-agent@sha256:...   # test the image CI pushed

`agent` is a running container of the image, started as its ECS task runs it
(read-only root, a tmpfs /tmp, its numeric user), healthy before the first test.
"""

import pytest

from builder.testing import AgentResponseError


@pytest.fixture(scope="session")
def agent_secrets():
    # what ECS would inject from Secrets Manager or SSM for agent.yaml's ${OPENAI_API_KEY}
    return {"OPENAI_API_KEY": "sk-test-not-a-real-key"}


def test_it_is_healthy(agent):
    assert agent.health() == {"ok": True, "agent": "hello-agent", "version": "1.0.0"}


def test_it_greets_by_name(agent):
    answer = agent.invoke({"name": "ECS"})
    assert answer["message"] == "Hello, ECS!"
    assert answer["requests"] == "2.32.3"  # the pinned requirement is what the image runs


def test_a_bad_body_is_refused_with_an_id(agent):
    status, headers, body = agent.request("POST", "/invoke", b"{not json")
    assert status == 400 and body["error"] == "bad-json"
    assert body["id"] == headers["x-request-id"]  # the id finds the request's log line


def test_an_error_answer_is_an_exception_with_its_id(agent):
    with pytest.raises(AgentResponseError) as caught:
        agent.invoke("not an object", request_id="example-1")  # the handler calls context.get
    assert (caught.value.status, caught.value.kind, caught.value.request_id) == (500, "agent-error", "example-1")
