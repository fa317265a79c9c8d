"""Issue 12: serving that holds under load and faults, on both paths.

Each class runs against real containers of one image per serving path: the
standard-library server (an agent without FastAPI) and the agent's own
FastAPI app under uvicorn (``rest.entry`` with fastapi and uvicorn from the
test index). Bounds are generous: they check behaviour, not speed.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import docker
import pytest

from builder.api import BuildOptions, build_image
from tests.support.engine import engine_tags
from tests.support.packages import make_agent
from tests.support.serving import Served, raw_exchange

AGENT = """\
import time


def handler(context):
    if "boom" in context:
        raise ValueError(context["boom"])
    time.sleep(float(context.get("sleep", 0)))
    return {"ok": True, "slept": context.get("sleep", 0)}
"""

REST = """\
from fastapi import HTTPException


def mount(app):
    @app.get("/api/hello")
    def hello():
        return {"message": "Hello from REST"}

    @app.get("/api/boom")
    def boom():
        raise RuntimeError("db-password-in-a-route-exception")

    @app.get("/api/handled")
    def handled():
        raise HTTPException(500, "the agent's own 500")
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


@pytest.fixture(scope="class")
def served(image, docker_client):
    s = Served(docker_client, image[1])
    yield s
    s.remove()


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
            assert answer.startswith(b"HTTP/1.1 408") and b'"header-timeout"' in answer  # both paths answer
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


def _post_with(client: str, url: str, body) -> tuple[int, dict]:
    """POST BODY with a real client library: (status, JSON body)."""
    if client == "urllib":
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as answered:
            return answered.code, json.loads(answered.read())
    if client == "requests":
        import requests
        resp = requests.post(url, data=body, timeout=60)
    else:
        httpx = pytest.importorskip("httpx")
        resp = httpx.post(url, content=body, timeout=60)
    return resp.status_code, resp.json()


class TestIssue26:
    """Issue 26: answers real clients can read; chunked bodies; JSON 500s; quiet health checks."""

    @pytest.mark.parametrize("client", ["urllib", "requests", "httpx"])
    def test_a_20_mib_post_gets_a_413_the_client_reads(self, served, client):
        # the server answers before the body is read: closing at once reset the
        # connection while the client was still sending, and it never saw the 413
        code, body = _post_with(client, f"http://127.0.0.1:{served.port}/invoke", b"x" * (20 * 1024 * 1024))
        assert (code, body["error"], body["limit"]) == (413, "body-too-large", 10 * 1024 * 1024)
        assert served.call("GET", "/health")[0] == 200

    def test_chunked_bodies_are_accepted_under_the_same_cap(self, served):
        url = f"http://127.0.0.1:{served.port}/invoke"
        code, body = _post_with("requests", url, iter([b'{"sle', b'ep": 0', b'}']))  # a generator: chunked
        assert (code, body) == (200, {"ok": True, "slept": 0})
        # extensions and trailers are read and dropped; the next request on the connection is unaffected
        answer = raw_exchange(served.port, b"POST /invoke HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           b"3;ext=1\r\n{\"x\r\n4\r\n\": 1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n"
                                           b"GET /meta HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 200") == 2, answer[:300]
        # the cap counts decoded bytes: 11 MiB in 1 MiB chunks is a 413, and the client reads it
        code, body = _post_with("requests", url, (b"x" * 1024 * 1024 for _ in range(11)))
        assert (code, body["error"]) == (413, "body-too-large")

    def test_an_exception_in_the_agents_own_route_is_a_json_500(self, served, image):
        if image[0] != "fastapi":
            pytest.skip("only the FastAPI path has the agent's own routes")
        code, headers, body = served.call("GET", "/api/boom", headers={"X-Request-Id": "route-boom-1"})
        assert (code, body) == (500, {"error": "agent-error", "id": "route-boom-1", "class": "RuntimeError"})
        assert headers["content-type"] == "application/json" and headers["x-request-id"] == "route-boom-1"
        failed = [ln for ln in served.logs(lambda ln: ln.get("event") == "request failed")
                  if ln.get("event") == "request failed" and ln.get("request_id") == "route-boom-1"]
        assert failed and "db-password-in-a-route-exception" in failed[0]["error"]  # the log has it, not the body
        # the agent's own handled error is untouched
        code, _, body = served.call("GET", "/api/handled")
        assert (code, body) == (500, {"detail": "the agent's own 500"})

    def test_health_checks_are_not_access_logged_other_requests_are(self, served, image):
        for path in ("/health", f"/agents/serve-{image[0]}/health"):
            assert served.call("GET", path, headers={"X-Request-Id": "health-quiet"})[0] == 200
        served.call("GET", "/meta", headers={"X-Request-Id": "meta-logged"})
        lines = served.logs(lambda ln: ln.get("request_id") == "meta-logged")
        assert [ln["path"] for ln in lines if ln.get("request_id") == "meta-logged"] == ["/meta"]
        health = [ln for ln in lines if ln.get("event") == "request" and ln["path"].endswith("/health")]
        assert health == []  # nor the image's own HEALTHCHECK every 5 s

    def test_agent_log_health_turns_health_logging_back_on(self, image, docker_client):
        served = Served(docker_client, image[1], env={"AGENT_LOG_HEALTH": "1"})
        try:
            served.call("GET", "/health", headers={"X-Request-Id": "health-loud"})
            lines = served.logs(lambda ln: ln.get("request_id") == "health-loud")
            assert [ln["path"] for ln in lines if ln.get("request_id") == "health-loud"] == ["/health"]
        finally:
            served.remove()
