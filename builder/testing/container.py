"""``AgentContainer``: a testcontainers ``DockerContainer`` for an agent image,
run the way its ECS task runs it (read-only root, a tmpfs /tmp, the numeric
user, environment and secrets as variables, SIGTERM then the drain window on
stop), with the runtime's REST contract as methods (docs/serving.md).

    with AgentContainer("REGISTRY/agents/my-agent@sha256:...") as agent:
        assert agent.invoke({"name": "ECS"})["message"] == "Hello, ECS!"

testcontainers is imported here and only here (``pip install agent-image[testing]``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, Mapping

from testcontainers.core.container import DockerContainer

from builder.build.image import image_from
from builder.core.errors import AgentResponseError, RunError
from builder.testing.facts import TMP_SIZE, RunFacts, run_facts

LOG_TAIL = 20


class AgentContainer(DockerContainer):
    """One agent image, started on ``with`` (or ``start()``) and ready when it returns.

    ``env`` is the task's environment, ``secrets`` what ECS would inject from
    Secrets Manager or SSM (plain values here: both become variables, as in
    the task). ``start_timeout`` overrides the image's HEALTHCHECK start period.
    """

    def __init__(self, image: str, *, env: Mapping[str, str] | None = None,
                 secrets: Mapping[str, str] | None = None, start_timeout: float | None = None, **kwargs: Any):
        super().__init__(image, **kwargs)
        self.task_env = dict(env or {})
        self.secrets = dict(secrets or {})
        self.start_timeout = start_timeout
        self.facts: RunFacts | None = None
        self.exit_code: int | None = None
        self.build_result = None    # the BuildResult, from from_package
        self._url: str | None = None
        self._failed = False

    @classmethod
    def from_package(cls, path: str | os.PathLike, *, env: Mapping[str, str] | None = None,
                     secrets: Mapping[str, str] | None = None, start_timeout: float | None = None,
                     **build_options: Any) -> "AgentContainer":
        """Build PATH through builder.api first (an unchanged package reuses its image by input digest)."""
        from builder.api import BuildOptions, build_image
        result = build_image(path, BuildOptions(**build_options))
        agent = cls(result.image_id, env=env, secrets=secrets, start_timeout=start_timeout)
        agent.build_result = result
        return agent

    # --- starting and stopping ----------------------------------------------

    def start(self) -> "AgentContainer":
        client = self.get_docker_client().client  # the engine is first asked here
        image = image_from(_inspect_or_pull(client, self.image))
        variables = {**self.task_env, **self.secrets}
        self.facts = run_facts(image, variables)
        for key, value in variables.items():
            self.with_env(key, value)
        self.with_exposed_ports(self.facts.port)
        # ECS's user and a read-only root: an agent that writes outside /tmp fails here, not in production
        run = {"read_only": True, "user": self.facts.user}
        tmp = {"/tmp": f"rw,size={TMP_SIZE}"}  # docker's mount options (with_tmpfs_mount passes its size as them)
        if isinstance(getattr(self, "tmpfs", None), dict):  # testcontainers >= 4.13 passes tmpfs= itself
            self.tmpfs.update(tmp)
        else:
            run["tmpfs"] = tmp
        self.with_kwargs(**{**run, **self._kwargs})  # a caller's kwargs win
        super().start()
        try:
            try:
                port = self.get_exposed_port(self.facts.port)
            except Exception:  # exited at once: no port is mapped; the exit code and logs say why
                self.exit_code = self.state().get("ExitCode")
                raise self._start_failure("the container stopped before its port was mapped") from None
            self._url = f"http://{self.get_container_host_ip()}:{port}{self.facts.base_path}"
            self._wait_healthy()
        except BaseException:
            self._remove()  # start() alone (no `with`) must not leave a container behind
            raise
        return self

    def _remove(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.remove(force=True, v=True)
            except Exception:  # already gone
                pass

    def _wait_healthy(self) -> None:
        timeout = self.start_timeout if self.start_timeout is not None else self.facts.start_period_s
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            state = self.state()
            if not state.get("Running"):
                self.exit_code = state.get("ExitCode")
                raise self._start_failure(f"the container exited with code {self.exit_code} before /health "
                                          "answered 200")
            try:
                status, _, body = self.request("GET", "/health", timeout=2)
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            else:
                if status == 200:
                    return
                kind = body.get("error") if isinstance(body, dict) else None
                last = f"HTTP {status} {kind or ''}".strip()
                if kind == "import-failed":  # the shim stays 503 for good: no point in waiting
                    raise self._start_failure("its entrypoint failed to import (/health: import-failed)")
            if time.monotonic() > deadline:
                raise self._start_failure(f"/health did not answer 200 within the start period of {timeout:g}s "
                                          f"(last: {last})")
            time.sleep(0.1)

    def _start_failure(self, why: str) -> RunError:
        self._failed = True  # no drain wait for a container that never served
        tail = self.logs().splitlines()[-LOG_TAIL:]
        exited = "" if self.exit_code is None else f" (exit code {self.exit_code})"
        err = RunError(f"agent image {self.image} did not start: {why}{exited}", log_tail=tail,
                       hint="Its last log lines are attached (err.log_tail); the agent's own error is there.")
        err.exit_status = self.exit_code
        if hasattr(err, "add_note"):  # pytest prints notes under the error
            err.add_note("last log lines:\n" + "\n".join(f"  | {ln}" for ln in tail))
        return err

    def terminate(self) -> None:
        """SIGTERM, as ECS sends at a deploy or scale-in; the agent starts draining."""
        self.get_wrapped_container().kill(signal="SIGTERM")

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the container has stopped, or None after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if not state.get("Running"):
                self.exit_code = state.get("ExitCode")
                return self.exit_code
            time.sleep(0.1)
        return None

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """SIGTERM, up to the drain window plus ECS's margin, SIGKILL; then remove."""
        container = self._container
        if container is not None and not self._failed and self.facts is not None:
            try:
                container.stop(timeout=self.facts.stop_timeout_s)
                self.exit_code = self.state().get("ExitCode")
            except Exception:  # already gone: removal below says what it says
                pass
        super().stop(force=force, delete_volume=delete_volume)

    def state(self) -> dict:
        container = self.get_wrapped_container()
        container.reload()
        return container.attrs.get("State") or {}

    # --- the REST contract ----------------------------------------------------

    @property
    def url(self) -> str:
        """http://HOST:PORT[/BASE_PATH], HOST being the engine's (not localhost: the engine may be remote)."""
        if self._url is None:
            raise RunError("the agent container is not started", hint="Use `with AgentContainer(...) as agent:`.")
        return self._url

    def request(self, method: str, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None,
                timeout: float = 60) -> tuple[int, dict[str, str], Any]:
        """(status, lower-cased headers, JSON body or text) of one call; error statuses are returned, not raised."""
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, head, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, head, raw = exc.code, exc.headers, exc.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return status, {k.lower(): v for k, v in head.items()}, parsed

    def health(self) -> dict:
        """GET /health's body: {"ok": true, "agent", "version"}, or ok false with the error kind (503)."""
        return self.request("GET", "/health", timeout=10)[2]

    def meta(self) -> dict:
        return self.request("GET", "/meta", timeout=10)[2]

    def invoke(self, payload: Any = None, *, request_id: str | None = None, timeout: float = 60) -> Any:
        """POST /invoke: the entrypoint's JSON answer, or AgentResponseError with the error's kind and id."""
        headers = {"X-Request-Id": request_id} if request_id else {}
        status, head, body = self.request("POST", "/invoke", {} if payload is None else payload,
                                          headers=headers, timeout=timeout)
        if status < 400:
            return body
        raise self._response_error(status, head, body)

    def _response_error(self, status: int, head: dict, body: Any) -> AgentResponseError:
        fields = body if isinstance(body, dict) else {}
        kind, rid = fields.get("error", ""), fields.get("id") or head.get("x-request-id", "")
        cls = f" {fields['class']}" if fields.get("class") else ""
        err = AgentResponseError(f"POST /invoke answered {status} {kind}{cls} (request id {rid})", status=status,
                                 kind=kind, request_id=rid, body=body,
                                 hint="The agent's log line with this request_id holds the message and traceback.")
        mine = [ln for ln in self.logs().splitlines() if rid and rid in ln][-5:]
        err.log_tail = mine
        if mine and hasattr(err, "add_note"):
            err.add_note("log lines of this request:\n" + "\n".join(f"  | {ln}" for ln in mine))
        return err

    def logs(self) -> str:
        """Everything the agent wrote (JSON lines on stdout, anything on stderr)."""
        return self.get_wrapped_container().logs(stdout=True, stderr=True).decode("utf-8", "replace")

    def log_events(self) -> list[dict]:
        """The JSON log lines, parsed (other lines left out)."""
        out = []
        for line in self.logs().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out


def _inspect_or_pull(client, ref: str) -> dict:
    """The image's inspect document, pulled first when the engine does not have it."""
    try:
        return client.api.inspect_image(ref)
    except Exception as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
    try:
        client.images.pull(ref)
    except Exception as exc:
        raise RunError(f"agent image {ref} is not on the engine and could not be pulled: {exc}",
                       hint="Build it (agent-image build) or log in to its registry.") from None
    return client.api.inspect_image(ref)
