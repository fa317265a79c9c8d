"""Issue 12: serving that holds under load and faults, on both paths.

Each class runs against real containers of one image per serving path: the
standard-library server (an agent without FastAPI) and the agent's own
FastAPI app under uvicorn (``rest.entry`` with fastapi and uvicorn from the
test index). Bounds are generous: they check behaviour, not speed.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import docker
import pytest

from builder.api import BuildOptions, build_image
from tests.support.engine import engine_tags
from tests.support.net import wait_for
from tests.support.packages import make_agent

AGENT = """\
import time


def handler(context):
    if "boom" in context:
        raise ValueError(context["boom"])
    time.sleep(float(context.get("sleep", 0)))
    return {"ok": True, "slept": context.get("sleep", 0)}
"""

REST = """\
def mount(app):
    @app.get("/api/hello")
    def hello():
        return {"message": "Hello from REST"}
"""

REPO = "agents/issue12-serving"


@pytest.fixture(scope="module", params=["stdlib", "fastapi"])
def image(request, index, tmp_path_factory, docker_client):
    path = request.param
    extra = {"src/main.py": AGENT}
    requirements = None
    if path == "fastapi":
        extra["src/rest.py"] = REST
        requirements = "fastapi\nuvicorn\n"
    agent = make_agent(tmp_path_factory.mktemp(path), f"serve-{path}", requirements=requirements, extra=extra)
    if path == "fastapi":
        (agent / "agent.yaml").write_text((agent / "agent.yaml").read_text() + "rest:\n  entry: src.rest:mount\n")
    result = build_image(agent, BuildOptions(index_url=index.url_for("alice"), repository=f"{REPO}-{path}"))
    yield path, result.image
    for tag in engine_tags(docker_client):  # NAME:VERSION and the build's in-<digest> tag
        if tag.startswith(f"{REPO}-{path}:"):
            try:
                docker_client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass


class Served:
    def __init__(self, client, image: str, env: dict | None = None):
        self.container = client.containers.run(image, detach=True, environment=env or {},
                                               ports={"8080/tcp": ("127.0.0.1", None)})
        self.container.reload()
        self.port = int(self.container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        wait_for(f"http://127.0.0.1:{self.port}/health")

    def call(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
             timeout: float = 30) -> tuple[int, dict, dict]:
        """(status, lower-cased headers, JSON body)"""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if data else {}
        finally:
            conn.close()

    def logs(self, until=None, timeout: float = 5) -> list[dict]:
        """The JSON log lines; with UNTIL, wait (bounded) for one it accepts:
        the access line is written once the answer has gone out."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.container.logs(stdout=True, stderr=False).decode().splitlines()
            parsed = [json.loads(ln) for ln in lines if ln.startswith("{")]
            if until is None or any(until(ln) for ln in parsed) or time.monotonic() > deadline:
                return parsed
            time.sleep(0.1)

    def remove(self) -> None:
        self.container.remove(force=True)


@pytest.fixture(scope="class")
def served(image, docker_client):
    s = Served(docker_client, image[1])
    yield s
    s.remove()


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send DATA on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


class TestLimitsAndErrors:
    def test_body_over_the_cap_is_413_before_the_body_is_sent(self, served):
        # the head announces 11 MiB and not one byte of body follows: the answer must come anyway
        answer = raw_exchange(served.port, b"POST /invoke HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                           b"Content-Length: 11534336\r\nX-Request-Id: big-1\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert json.loads(body) == {"error": "body-too-large", "id": "big-1", "limit": 10 * 1024 * 1024}
        assert b"connection: close" in head.lower()

    @pytest.mark.parametrize("length", [b"-1", "\u00b2".encode("latin-1"), b"12abc"])
    def test_a_content_length_that_is_not_a_number_is_400(self, served, image, length):
        # the old server read `Content-Length: -1` until the client closed
        answer = raw_exchange(served.port, b"POST /invoke HTTP/1.1\r\nHost: t\r\nContent-Length: " + length +
                              b"\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        if image[0] == "stdlib":  # uvicorn refuses it itself, in plain text
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "bad-request"

    def test_malformed_and_too_deep_json_are_400(self, served):
        code, _, body = served.call("POST", "/invoke", b'{"unclosed": ')
        assert code == 400 and body["error"] == "bad-json" and body["reason"] and "\n" not in body["reason"]
        code, _, body = served.call("POST", "/invoke", b"[" * 100_000)
        assert (code, body["error"]) == (400, "bad-json") and "too deep" in body["reason"]
        assert served.call("GET", "/health")[0] == 200  # and the server is still there

    def test_500_body_has_the_id_and_class_but_not_the_message(self, served):
        secret = "db-password-hunter2-in-an-exception"
        code, headers, body = served.call("POST", "/invoke", {"boom": secret}, {"X-Request-Id": "boom-7"})
        assert code == 500
        assert body == {"error": "agent-error", "id": "boom-7", "class": "ValueError"}
        assert headers["x-request-id"] == "boom-7"
        raised = [ln for ln in served.logs(lambda ln: ln.get("request_id") == "boom-7")
                  if ln.get("event") == "entrypoint raised"]
        assert raised and raised[-1]["request_id"] == "boom-7" and secret in raised[-1]["error"]

    def test_one_access_log_line_per_request_with_its_id(self, served):
        code, headers, _ = served.call("POST", "/invoke", {"x": 1}, {"X-Request-Id": "trace-abc.123"})
        assert code == 200 and headers["x-request-id"] == "trace-abc.123"
        code, headers, _ = served.call("GET", "/meta?token=not-for-logs")
        generated = headers["x-request-id"]
        assert code == 200 and len(generated) == 32  # none given: one is made and returned
        lines = [ln for ln in served.logs(lambda ln: ln.get("request_id") == generated) if ln.get("event") == "request"]
        mine = [ln for ln in lines if ln["request_id"] == "trace-abc.123"]
        assert len(mine) == 1
        assert {k: mine[0][k] for k in ("method", "path", "status")} == {"method": "POST", "path": "/invoke",
                                                                        "status": 200}
        assert mine[0]["bytes"] > 0 and mine[0]["duration_ms"] >= 0
        meta = [ln for ln in lines if ln["request_id"] == generated]
        assert len(meta) == 1 and meta[0]["path"] == "/meta"  # no query string: tokens in URLs stay out

    def test_health_answers_while_a_4s_synchronous_invoke_runs(self, served):
        result = {}
        slow = threading.Thread(target=lambda: result.update(r=served.call("POST", "/invoke", {"sleep": 4})))
        slow.start()
        time.sleep(0.5)
        started = time.monotonic()
        code, _, body = served.call("GET", "/health", timeout=5)
        took = time.monotonic() - started
        slow.join(30)
        assert code == 200 and body["ok"] is True
        assert took < 1.0, f"/health took {took:.2f} s while an invoke ran"
        assert result["r"][0] == 200 and result["r"][2]["slept"] == 4

    def test_health_answers_with_200_idle_connections_held_open(self, served):
        socks = []
        try:
            for _ in range(200):  # slowloris: a head begun and never finished
                s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
                s.sendall(b"POST /invoke HTTP/1.1\r\nHost: t\r\n")
                socks.append(s)
            time.sleep(0.5)
            started = time.monotonic()
            code = served.call("GET", "/health", timeout=10)[0]
            assert code == 200 and time.monotonic() - started < 5
            assert served.call("POST", "/invoke", {"x": 2})[0] == 200
        finally:
            for s in socks:
                s.close()

    def test_the_agents_own_routes_get_the_id_and_log_line(self, served, image):
        if image[0] != "fastapi":
            pytest.skip("only the FastAPI path has the agent's own routes")
        code, headers, body = served.call("GET", "/api/hello", headers={"X-Request-Id": "own-route-1"})
        assert (code, body) == (200, {"message": "Hello from REST"}) and headers["x-request-id"] == "own-route-1"
        logged = served.logs(lambda ln: ln.get("request_id") == "own-route-1")
        assert any(ln.get("request_id") == "own-route-1" and ln["path"] == "/api/hello" for ln in logged)


def test_the_image_records_its_drain_window(image, docker_client):
    labels = docker_client.images.get(image[1]).labels
    assert labels["io.pixell.agent.drain-seconds"] == "25"  # the task definition's stopTimeout must exceed it


class TestBusy:
    def test_a_full_queue_is_503_busy_with_retry_after(self, image, docker_client):
        served = Served(docker_client, image[1], env={"AGENT_WORKERS": "1", "AGENT_QUEUE": "1"})
        try:
            results = []
            slow = [threading.Thread(target=lambda: results.append(served.call("POST", "/invoke", {"sleep": 3})))
                    for _ in range(2)]
            for t in slow:
                t.start()
            time.sleep(1.0)  # one runs, one waits: the gate is full
            code, headers, body = served.call("POST", "/invoke", {"x": 1}, {"X-Request-Id": "busy-1"})
            assert (code, body) == (503, {"error": "busy", "id": "busy-1"}) and headers["retry-after"] == "1"
            assert served.call("GET", "/health", timeout=5)[0] == 200  # busy is not unhealthy
            for t in slow:
                t.join(30)
            assert sorted(r[0] for r in results) == [200, 200]
        finally:
            served.remove()


class TestTimeouts:
    def test_a_head_not_finished_in_time_is_closed(self, image, docker_client):
        served = Served(docker_client, image[1], env={"AGENT_HEADER_TIMEOUT": "2"})
        try:
            with socket.create_connection(("127.0.0.1", served.port), timeout=20) as sock:
                sock.sendall(b"POST /invoke HTTP/1.1\r\nHost: t\r\n")
                started = time.monotonic()
                answer = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                took = time.monotonic() - started
            assert 1.5 < took < 15, f"closed after {took:.1f} s"
            if image[0] == "stdlib":  # uvicorn closes without an answer
                assert answer.startswith(b"HTTP/1.1 408") and b'"header-timeout"' in answer
            assert served.call("POST", "/invoke", {"x": 3})[0] == 200  # a whole request is unaffected
        finally:
            served.remove()


class TestDrain:
    def test_sigterm_lets_five_slow_requests_finish_then_exits_0(self, image, docker_client):
        served = Served(docker_client, image[1])
        try:
            results = []
            slow = [threading.Thread(target=lambda: results.append(served.call("POST", "/invoke", {"sleep": 3})))
                    for _ in range(5)]
            for t in slow:
                t.start()
            time.sleep(1.0)
            started = time.monotonic()
            served.container.kill(signal="SIGTERM")
            time.sleep(0.3)
            # the listener stays open: new requests and /health get 503 and Connection: close at once
            code, headers, body = served.call("GET", "/health", timeout=5)
            assert (code, body["error"], headers["connection"]) == (503, "draining", "close")
            code, headers, body = served.call("POST", "/invoke", {"x": 1}, timeout=5)
            assert (code, body["error"], headers["connection"]) == (503, "draining", "close")
            for t in slow:
                t.join(30)
            assert [r[0] for r in results] == [200] * 5, results
            assert served.container.wait(timeout=30)["StatusCode"] == 0
            took = time.monotonic() - started
            assert took < 25, f"exit took {took:.1f} s: the drain must end when the requests are done"
            events = [ln["event"] for ln in served.logs()]
            assert "draining" in events and "stopped" in events
        finally:
            served.remove()
