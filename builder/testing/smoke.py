"""`agent-image test`: start an image as its ECS task would, check /health,
optionally invoke it and compare a subset of the answer, then SIGTERM it
during a request and check the drain (docs/testing.md).

Returns a JSON-able report or raises: RunError (70) when it never became
healthy, SmokeTestError (71) when a check failed, AgentResponseError (72) when
--invoke got an error answer; each carries the report as ``err.result``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from builder.core.errors import PackageLoadError, SmokeTestError
from builder.testing.facts import mismatches

HEALTH_TURN_S = 2.0   # how long after SIGTERM /health may still say 200 (the signal is being delivered)
HEAD_START_S = 0.05   # the in-flight request leaves before the signal


def run_smoke(source: str | Path, *, payload: Any = None, expect: Mapping[str, Any] | None = None,
              env: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None,
              start_timeout: float | None = None, build_options: Mapping[str, Any] | None = None) -> dict:
    try:  # (testcontainers is the optional extra 'testing'; the command says so rather than crash)
        from builder.testing.container import AgentContainer
    except ModuleNotFoundError as exc:
        raise SmokeTestError(f"agent-image test needs {exc.name}, which is not installed",
                             hint="pip install 'agent-image[testing]' (the recipes install it).") from None
    from builder.build.engine import Engine  # (here: loading builder.testing imports no docker)
    Engine().ping()  # an unreachable engine is EngineError (50) here, not docker-py's error inside testcontainers
    report: dict[str, Any] = {"ok": False, "source": str(source)}
    kw = {"env": env, "secrets": secrets, "start_timeout": start_timeout}
    try:
        if Path(source).exists():  # a package (folder or .apkg): build it, or reuse its identical image
            agent = AgentContainer.from_package(source, **kw, **(build_options or {}))
            report["image"] = agent.build_result.image
        else:
            agent = AgentContainer(str(source), **kw)
            report["image"] = str(source)
        started = time.monotonic()  # after a build: ready_s is the start alone
        with agent:
            report["ready_s"] = round(time.monotonic() - started, 3)
            report["health"] = agent.health()
            if payload is not None:
                report["answer"] = agent.invoke(payload)
                bad = mismatches(expect or {}, report["answer"])
                if bad:
                    report["mismatches"] = bad
                    said = "; ".join(f"{k}: expected {json.dumps(v['expected'])}, "
                                     + ("missing" if v.get("missing") else f"got {json.dumps(v['got'])}")
                                     for k, v in bad.items())
                    raise SmokeTestError(f"the answer to --invoke differs from --expect: {said}",
                                         field="--expect", hint="The answer and each differing key are in the "
                                                                "--json report.")
                report["expected"] = bool(expect)
            report["drain"] = check_drain(agent, payload)
    except PackageLoadError as err:
        err.result = {**report, **getattr(err, "result", {})}  # the drain check attaches its own details
        raise
    report["ok"] = True
    return report


def check_drain(agent, payload: Any) -> dict:
    """SIGTERM during a request: it gets its answer, /health turns 503 (or the
    listener closes), the container exits 0 within the drain window."""
    facts = agent.facts
    answer: dict[str, Any] = {}
    body = json.dumps({} if payload is None else payload).encode()

    def call() -> None:
        try:
            status, _, got = agent.request("POST", "/invoke", body, timeout=facts.stop_timeout_s + 5)
            answer.update(status=status, error=got.get("error") if isinstance(got, dict) else None)
        except OSError as exc:
            answer["dropped"] = str(exc) or type(exc).__name__

    caller = threading.Thread(target=call, name="in-flight", daemon=True)
    caller.start()
    time.sleep(HEAD_START_S)
    signalled = time.monotonic()
    agent.terminate()
    health = _health_after_signal(agent)
    caller.join(facts.stop_timeout_s + 5)
    code = agent.wait_exit(max(0.0, facts.stop_timeout_s - (time.monotonic() - signalled)))
    events = {e.get("event"): e for e in agent.log_events() if e.get("event") in ("draining", "drained")}
    out = {"window_s": facts.drain_s, "health_after_sigterm": health, "in_flight_request": answer,
           "in_flight_at_signal": events.get("draining", {}).get("in_flight"),
           "left_in_flight": events.get("drained", {}).get("left_in_flight"),
           "exit_code": code, "exit_s": round(time.monotonic() - signalled, 3) if code is not None else None}
    problems = _drain_problems(out, facts.stop_timeout_s)
    if problems:
        err = SmokeTestError(f"the drain on SIGTERM failed: {'; '.join(problems)}",
                             hint="See docs/serving.md (drain on SIGTERM); the report's `drain` has the details.")
        err.log_tail = agent.logs().splitlines()[-20:]
        err.result = {"drain": out}
        raise err
    return out


def _health_after_signal(agent) -> str:
    """'503' once /health says so, 'closed' when nothing answers any more, '200' when it never turned."""
    deadline = time.monotonic() + HEALTH_TURN_S
    while True:
        try:
            status = agent.request("GET", "/health", timeout=2)[0]
        except OSError:
            return "closed"
        if status != 200 or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.02)


def _drain_problems(out: dict, stop_timeout_s: int) -> list[str]:
    problems = []
    if "dropped" in out["in_flight_request"] or "status" not in out["in_flight_request"]:
        problems.append(f"the request sent before SIGTERM got no answer "
                        f"({out['in_flight_request'].get('dropped', 'timed out')})")
    if out["health_after_sigterm"] not in ("503", "closed"):
        problems.append(f"/health still answered {out['health_after_sigterm']} {HEALTH_TURN_S:g}s after SIGTERM")
    if out["left_in_flight"]:
        problems.append(f"{out['left_in_flight']} request(s) were still running when the drain window ended")
    if out["exit_code"] is None:
        problems.append(f"the container was still running {stop_timeout_s}s after SIGTERM (ECS would SIGKILL it)")
    elif out["exit_code"] != 0:
        problems.append(f"the container exited with code {out['exit_code']}, not 0")
    return problems


def one_line(report: dict) -> str:
    """The human result line of `agent-image test`."""
    drain = report.get("drain") or {}
    parts = [f"ok {report.get('image')}", f"healthy in {report.get('ready_s')}s"]
    if "answer" in report:
        parts.append("invoke answered" + (" as expected" if report.get("expected") else ""))
    parts.append(f"drained on SIGTERM (exit {drain.get('exit_code')} in {drain.get('exit_s')}s, "
                 f"window {drain.get('window_s'):g}s)")
    return ", ".join(parts)
