"""What a command prints for CI: the log format (--progress), the JSON envelope, and
GitHub Actions' annotation and job summary.

--progress picks the log format on stderr: ``tty`` the live view (builder/cli/progress.py,
build only), ``plain`` one readable line per event (structlog's console renderer, no
colours), ``json`` one JSON object per event (what tools following events read);
``auto`` is ``tty`` when stderr is a terminal and --json is off, else ``plain``.
stdout is unaffected: the result, or with --json exactly one JSON object.

Under GitHub Actions (GITHUB_ACTIONS=true) a failure is also an ``::error`` workflow
command, written to stderr: the runner reads workflow commands from both streams
(actions/runner ScriptHandler: one OutputManager on stdout and one on stderr), and
stderr keeps stdout exactly the result (one JSON object with --json, a reference a
script captures with $(...) without). With GITHUB_STEP_SUMMARY set, a short Markdown
block (the image, its digest and the time; or the error) is appended to the job summary.
A build of an agent whose runtime is past its end of life adds a ``::warning`` and a
summary row saying so.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys

import structlog

# the version of every --json object's shape (its "schema" key); raised when a key changes meaning or goes
SCHEMA = 1
MODES = ("auto", "tty", "plain", "json")

log = structlog.get_logger("agent_image")


def envelope(command: str, out: dict) -> dict:
    """OUT with its schema version first. ecs-task-def's object is the AWS request itself
    (`aws ecs register-task-definition --cli-input-json` refuses unknown keys): left as is."""
    return out if command == "ecs-task-def" else {"schema": SCHEMA, **out}


def log_mode(args) -> str:
    """tty, plain or json: what --progress asks, with auto settled for this stderr."""
    mode = getattr(args, "progress", None) or "auto"
    if mode != "auto":
        return mode
    return "tty" if sys.stderr.isatty() and not args.json else "plain"


# -- GitHub Actions ---------------------------------------------------------------------------

def _on_github() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    """A workflow command's message: %, CR and LF escaped, as the runner unescapes them."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (title=...): also : and , which end a property."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(command: str, err) -> str:
    title = f"agent-image {command} failed: {type(err).__name__} (exit {err.exit_code})"
    message = err.message + (f"\nhint: {err.hint}" if err.hint else "")
    return f"::error title={escape_property(title)}::{escape_data(message)}\n"


def _fenced(text: str) -> str:
    """TEXT in a Markdown code fence longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}\n"


def _summary_of_success(command: str, out: dict) -> str:
    lines = [f"### agent-image {command}: {out.get('image')}\n", "| | |", "|---|---|"]
    if out.get("agent"):
        lines.append(f"| agent | `{out['agent'].get('name')}` {out['agent'].get('version')} |")
    lines.append(f"| image | `{out.get('image')}` |")
    if out.get("digest_ref"):
        lines.append(f"| digest | `{out['digest_ref']}` |")
    if out.get("duration_s") is not None:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in (out.get("phases") or {}).items())
        lines.append(f"| duration | {out['duration_s']:.1f} s" + (f" ({phases})" if phases else "") + " |")
    if out.get("cached"):
        lines.append("| cached | inputs unchanged: the existing image, nothing rebuilt |")
    runtime = out.get("runtime") or {}
    if runtime.get("past_end_of_life"):
        lines.append(f"| runtime | :warning: `{runtime.get('name')}` is past its end of life "
                     f"({runtime.get('end_of_life')}): set `runtime` in agent.yaml to a supported one |")
    elif runtime.get("name"):
        lines.append(f"| runtime | `{runtime['name']}` (supported until {runtime.get('end_of_life')}) |")
    return "\n".join(lines) + "\n\n"


def eol_annotation(out: dict) -> str:
    """A ``::warning`` for a runtime past its end of life ('' when it is not)."""
    runtime = out.get("runtime") or {}
    if not runtime.get("past_end_of_life"):
        return ""
    title = f"agent-image: runtime {runtime.get('name')} is past its end of life"
    message = next((w for w in out.get("warnings") or () if w.startswith("runtime ")), title)
    return f"::warning title={escape_property(title)}::{escape_data(message)}\n"


def _summary_of_failure(command: str, err) -> str:
    text = f"### agent-image {command} failed: {type(err).__name__} (exit {err.exit_code})\n\n"
    text += _fenced(err.message)
    if err.hint:
        text += f"\n**hint:**\n\n{_fenced(err.hint)}"
    return text + "\n"


def _append_summary(text: str) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:  # the summary is a courtesy: the exit code and the log still say it all
        log.warning("Could not write the GitHub job summary", path=path, reason=str(exc))


def succeeded(command: str, out: dict) -> None:
    """A command succeeded: under GitHub Actions, its image in the job summary."""
    if _on_github() and isinstance(out, dict) and out.get("image"):
        with contextlib.suppress(OSError):
            sys.stderr.write(eol_annotation(out))
        _append_summary(_summary_of_success(command, out))


@contextlib.contextmanager
def usage_annotated():
    """Under GitHub Actions a usage error (argparse's exit 2) is an annotation too: argparse's
    own text is kept (it goes to stderr as always) and its last line becomes the annotation."""
    if not _on_github():
        yield
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            yield
    except SystemExit as exc:
        sys.stderr.write(said.getvalue())
        last = (said.getvalue().strip().splitlines() or ["bad command-line usage"])[-1]
        if exc.code == 2:
            title = "agent-image: bad command-line usage (exit 2)"
            sys.stderr.write(f"::error title={escape_property(title)}::{escape_data(last)}\n")
        raise
    sys.stderr.write(said.getvalue())


def failed(command: str, err) -> None:
    """A command failed with ERR (a PackageLoadError): under GitHub Actions, an annotation and the summary."""
    if not _on_github():
        return
    try:
        sys.stderr.write(annotation(command, err))
        sys.stderr.flush()
    except OSError:
        pass
    _append_summary(_summary_of_failure(command, err))
