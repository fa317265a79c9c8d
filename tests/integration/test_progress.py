"""Issue 9: `build` on a terminal, run under a real pseudo-terminal.

stderr is the pty (what a person sees), stdout a pipe (what a script reads).
Off a TTY (--progress auto) the log is plain lines a person reads in a CI log; --progress json
gives the JSON log lines tools follow (issue 22).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import threading

from builder.core.events import OPENED, READY, REUSED_IMAGE
from tests.support.cli import AGENT_IMAGE

_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_tty(args: list[str], columns: int = 110) -> tuple[int, str, str]:
    """Run agent-image with stderr on a pty; return (exit code, what the pty received, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([AGENT_IMAGE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout = proc.stdout.read().decode()
    code = proc.wait(timeout=600)
    reader.join(10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace"), stdout


def frames(raw: str) -> list[str]:
    """Every line the terminal was shown, escape codes removed."""
    return [ln.strip() for ln in re.split(r"[\r\n]+", _CSI.sub("", raw)) if ln.strip()]


def test_build_on_a_tty_shows_steps_a_live_line_and_a_summary(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/tty-agent")
    agent = agent_factory("tty-agent", requirements="requests==2.32.3\nstructlog\n")
    code, raw, stdout = run_on_tty(["build", str(agent), "--index-url", index_url, "--no-cache"])
    shown = frames(raw)
    assert code == 0, "\n".join(shown[-30:])
    assert re.fullmatch(r"agents/tty-agent:0\.1\.0 sha256:[0-9a-f]{64}\n", stdout), stdout
    # each step, finished: mark, [n/total], its phase, the instruction, its time
    assert any(re.match(r"✔ \[\d+/\d+\] deps: pip install .*-r \S+requirements-deps.* \d+\.\ds$", ln)
               for ln in shown), shown
    # the live line followed pip while the dependency step ran, the package named without the proxy URL;
    # a step's first line is shown however fast the step (this one takes under a second with a warm index)
    live = [ln for ln in shown if ln.startswith(("Collecting", "Downloading", "Installing collected packages"))]
    assert any(ln.startswith("Collecting requests==2.32.3") for ln in live), shown
    assert not any("agent-image-index.invalid" in ln for ln in live), shown
    # elapsed time on the live line: "[n/total] ... step s / total s"
    assert any(re.search(r"\[\d+/\d+\] \w+: .* \d+\.\ds / \d+\.\ds$", ln) for ln in shown), shown
    summary = "\n".join(shown[shown.index(next(ln for ln in shown if ln.startswith("Built "))):])
    assert "Built agents/tty-agent:0.1.0 in" in summary
    assert re.search(r"size +\d+\.\d MiB, \d+\.\d MiB unique to this agent \(base \S+: \d+\.\d MiB\)", summary)
    assert re.search(r"cached +0/\d+ steps", summary) and "requests-2.32.3" in summary
    # no log lines without -v
    assert not any(ln.startswith("{") or "[info" in ln or "timestamp" in ln for ln in shown), shown

    # a code-only change: the steps the layer cache served say so, and the summary counts them
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nX = 1\n")
    code, raw, stdout = run_on_tty(["build", str(agent), "--index-url", index_url, "-v"])
    shown = frames(raw)
    assert code == 0, "\n".join(shown[-30:])
    # (the dependency layer is the dependency image's: one line says which, and that it was reused)
    assert any(re.match(r"✔ deps: agents/agent-image\.deps:deps-[0-9a-f]{48} \(local\) cached$", ln)
               for ln in shown), shown
    assert re.search(r"cached +[1-9]\d*/\d+ steps \([a-z, ]*deps", "\n".join(shown))
    # -v: every log line, debug build lines included, above the progress
    assert any("[info" in ln and OPENED in ln for ln in shown), shown
    assert any("[debug" in ln and "Step 1/" in ln for ln in shown), shown


def test_off_a_tty_the_log_is_plain_lines_and_json_on_request(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/pipe-agent")
    agent = agent_factory("pipe-agent", requirements=None)
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--index-url", index_url], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.fullmatch(r"agents/pipe-agent:0\.1\.0 sha256:[0-9a-f]{64}\n", proc.stdout)
    lines = proc.stderr.splitlines()
    assert any("[info" in ln and READY in ln for ln in lines), lines  # one readable line per event
    assert not any(ln.startswith("{") for ln in lines), lines[:5]
    assert "✔" not in proc.stderr and "\x1b[" not in proc.stderr
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--index-url", index_url, "--progress", "json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(ln) for ln in proc.stderr.splitlines()]  # every stderr line a JSON log event
    assert {e["event"] for e in events} & {READY, REUSED_IMAGE}  # (the second build may reuse the first's image)


def test_json_on_a_tty_keeps_one_object_and_plain_or_json_logs(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/tty-json")
    agent = agent_factory("tty-json", requirements=None)
    code, raw, stdout = run_on_tty(["build", str(agent), "--index-url", index_url, "--json"])
    assert code == 0 and json.loads(stdout)["ok"] is True and json.loads(stdout)["schema"] == 1
    assert frames(raw) and not any(ln.startswith(("{", "✔")) for ln in frames(raw)), frames(raw)[:5]
    code, raw, stdout = run_on_tty(["build", str(agent), "--index-url", index_url, "--json", "--progress", "json"])
    assert code == 0 and json.loads(stdout)["ok"] is True
    assert all(ln.startswith("{") for ln in frames(raw)), frames(raw)[:5]


def test_push_on_a_tty_ends_with_the_digest_reference(agent_factory, index_url, registry, cleanup_images):
    prefix = f"{registry.host}/tty"
    cleanup_images(prefix)
    agent = agent_factory("tty-pushed", requirements=None)
    code, raw, stdout = run_on_tty(["build", str(agent), "--index-url", index_url, "--registry", prefix, "--push"])
    shown = frames(raw)
    assert code == 0, "\n".join(shown[-30:])
    ref = stdout.splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(prefix)}/tty-pushed@sha256:[0-9a-f]{{64}}", ref), stdout
    assert f"✔ pushed {ref}" in shown and any(re.fullmatch(rf"digest +{re.escape(ref)}", ln) for ln in shown)
