"""One exception tree for every failure a user can cause.

The root keeps the seed runtime's name, ``PackageLoadError``. Each class has
a stable kebab-case ``reference`` and an ``exit_code``; ``EXIT_CODES`` below
is the one table the CLI and the ``--json`` result read. Errors carry
evidence (the step, the offending requirement or line, a bounded log tail),
never secrets: messages are passed through ``redact`` (the current build's
``Redactor``, see ``redaction_scope``) when made and again on the way out.

This module imports nothing else of ours.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

# userinfo in a URL (https://user:TOKEN@host) and token-looking query args
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s:]+(?::[^/@\s]*)?)@")
_SECRET_KV = re.compile(r"(?i)\b(token|password|passwd|secret|authorization)(=|:\s*)(\S+)")

# Words of the build log's own syntax (the engine's, pip's, uv's and ours). A
# .env value equal to one of them is never hidden: `X=Successfully` must not
# blind the classifiers or the reader.
LOG_WORDS = frozenset("""
    step error errors warning warnings successfully collecting downloading installing installed building built
    running requirement requirements already satisfied using cache cached looking indexes obtaining processing
    preparing metadata attempting uninstalling uninstalled removing removed intermediate container sending
    context tagged stored created wheel wheels editable resolved prepared audited downloaded collected packages
    package satisfies matching distribution version versions found could cannot conflict conflicting because
    dependency dependencies resolver subprocess exited failed failure generation setup install uninstall source
    python import module modules return returned command status running notice info debug critical traceback
    recent exception message hint field agent image images layer layers build builds pushed pulled digest latest
    """.split())
MIN_VALUE_CHARS = 6
# a .env value is hidden only as a whole token: not inside a word, a host name,
# a path or a URL (evil.example stays visible in https://evil.example/simple)
_BEFORE = r"(?<![\w.\-/@+%~])"
_AFTER = r"(?![\w\-/@+%~:])(?!\.\w)"


class Redactor:
    """What one build hides in its logs and errors.

    Credentials (index tokens, registry passwords) are hidden wherever they
    occur. Values from the package's .env files are the package's word, so
    they are hidden only as whole tokens, only when at least 6 characters,
    never when they are a word of the log's syntax and never when the package
    shows them itself (in requirements or agent.yaml). Nothing outlives the
    build: each build gets its own (``redaction_scope``).
    """

    def __init__(self, parent: "Redactor | None" = None) -> None:
        self._secrets: set[str] = set(parent._secrets) if parent else set()
        self._values: set[str] = set(parent._values) if parent else set()
        self._pattern: re.Pattern | None = None

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self._secrets.add(value)

    def add_value(self, value: str | None, public: str = "") -> bool:
        """Hide a .env VALUE as a whole token, unless the rules above say no; True when taken."""
        value = (value or "").strip()
        words = re.findall(r"\w+", value.lower())
        if (len(value) < MIN_VALUE_CHARS or "\n" in value or all(w in LOG_WORDS for w in words)
                or (public and value in public)):
            return False
        self._values.add(value)
        self._pattern = None
        return True

    def __call__(self, text: Any) -> Any:
        if not isinstance(text, str):
            return text
        out = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
        out = _SECRET_KV.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in out:
                out = out.replace(secret, "***")
        if self._values:
            if self._pattern is None:
                alts = "|".join(re.escape(v) for v in sorted(self._values, key=len, reverse=True))
                self._pattern = re.compile(f"{_BEFORE}(?:{alts}){_AFTER}")
            out = self._pattern.sub("***", out)
        return out


_BASE = Redactor()  # patterns only; it never learns a value
_CURRENT: ContextVar[Redactor] = ContextVar("agent_image_redactor")


def current_redactor() -> Redactor:
    return _CURRENT.get(_BASE)


@contextmanager
def redaction_scope() -> Iterator[Redactor]:
    """A Redactor for one build (or one CLI command), inheriting the enclosing
    scope's secrets; what it learns is gone when the scope ends."""
    redactor = Redactor(parent=_CURRENT.get(None))
    token = _CURRENT.set(redactor)
    try:
        yield redactor
    finally:
        _CURRENT.reset(token)


def register_secret(value: str | None) -> None:
    """Hide a credential for the rest of the current scope. Outside any scope
    there is nowhere to keep it (no process-wide list): the URL-userinfo and
    key=value patterns still apply."""
    redactor = _CURRENT.get(None)
    if redactor is not None:
        redactor.add_secret(value)


def redact(text: Any) -> Any:
    """Hide credentials and the current build's secrets in a string (other types pass)."""
    return current_redactor()(text)


class PackageLoadError(Exception):
    """Root of every failure agent-image reports.

    ``message`` says what went wrong, ``hint`` what to do; ``requirement`` and
    ``line`` name the offending input; ``step`` names the build step;
    ``log_tail`` holds the last lines of the build log as evidence.
    """

    reference = "package-load-error"
    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        requirement: str | None = None,
        line: int | None = None,
        field: str | None = None,
        step: str | None = None,
        log_tail: list[str] | None = None,
    ) -> None:
        self.message = redact(message)
        self.hint = redact(hint) if hint else None
        self.requirement = redact(requirement) if requirement else None
        self.line = line
        self.field = field
        self.step = step
        self.log_tail = [redact(x) for x in (log_tail or [])]
        super().__init__(self.message)

    def redacted(self, redactor: Redactor) -> "PackageLoadError":
        """Apply REDACTOR again (on the way out of a build, whose .env values may
        have been learned after this error was made)."""
        self.message = redactor(self.message)
        self.hint = redactor(self.hint) if self.hint else None
        self.requirement = redactor(self.requirement) if self.requirement else None
        self.log_tail = [redactor(x) for x in self.log_tail]
        self.args = (self.message,)
        return self

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f" {self.hint}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "reference": self.reference,
            "message": self.message,  # without the hint: that is its own key
            "hint": self.hint,
            "requirement": self.requirement,
            "line": self.line,
            "field": self.field,
            "step": self.step,
            "exit_code": self.exit_code,
            "log_tail": self.log_tail,
        }


# --- the package itself -------------------------------------------------------

class PackageValidationError(PackageLoadError):
    """The package or its agent.yaml is malformed, unsafe or unsupported."""
    reference = "package-invalid"
    exit_code = 10


class IndexPolicyError(PackageValidationError):
    """requirements.txt tries to point pip at another index (dependency confusion)."""
    reference = "index-policy"
    exit_code = 11


class RequirementsSyntaxError(PackageLoadError):
    """pip could not parse a line of requirements.txt."""
    reference = "requirements-syntax"
    exit_code = 12


# --- installing dependencies -------------------------------------------------

class DependencyError(PackageLoadError):
    """A dependency could not be installed."""
    reference = "dependency-error"
    exit_code = 20


class DependencyNotFoundError(DependencyError):
    """The index has no distribution of that name at all."""
    reference = "dependency-not-found"
    exit_code = 21


class VersionNotFoundError(DependencyError):
    """The index has the project, but no version matching the constraint."""
    reference = "version-not-found"
    exit_code = 22


class HashMismatchError(DependencyError):
    """A downloaded file does not match the --hash pinned in requirements."""
    reference = "hash-mismatch"
    exit_code = 23


class DependencyConflictError(DependencyError):
    """pip's resolver found no set of versions satisfying every constraint."""
    reference = "dependency-conflict"
    exit_code = 24


class WheelBuildError(DependencyError):
    """A dependency ships only as source and failed to build (compiler/headers)."""
    reference = "wheel-build-failed"
    exit_code = 25


class EditableInstallError(DependencyError):
    """`pip install -e .` of the agent package itself failed."""
    reference = "editable-install-failed"
    exit_code = 26


class IndexUnreachableError(PackageLoadError):
    """The package index could not be reached."""
    reference = "index-unreachable"
    exit_code = 30


class IndexAuthError(PackageLoadError):
    """The package index refused our credentials (401/403)."""
    reference = "index-auth"
    exit_code = 31


class CodeArtifactError(IndexAuthError):
    """Getting a CodeArtifact token or endpoint failed."""
    reference = "codeartifact"
    exit_code = 32


class IndexResponseError(PackageLoadError):
    """The index proxy refused an upstream answer: over a size cap, a bad redirect, a link-local address."""
    reference = "index-response-refused"
    exit_code = 33


# --- the build and the engine -----------------------------------------------

class BuildError(PackageLoadError):
    """The image build failed for a reason no finer class describes."""
    reference = "build-failed"
    exit_code = 40


class BuildTimeoutError(BuildError):
    """The command ran past --timeout: the build was cancelled, or the package was still being read."""
    reference = "build-timeout"
    exit_code = 41


class BuildInterruptedError(BuildError):
    """The build was interrupted (Ctrl-C / SIGTERM) and cancelled."""
    reference = "build-interrupted"
    exit_code = 42


class EngineError(PackageLoadError):
    """The Docker engine is unreachable or failed underneath us."""
    reference = "engine-unreachable"
    exit_code = 50


class BaseImageMissingError(EngineError):
    """The shared base image the agent builds FROM is not present."""
    reference = "base-image-missing"
    exit_code = 51


class SandboxError(EngineError):
    """The build sandbox could not be set up, or a build reaches more than the index proxy."""
    reference = "sandbox"
    exit_code = 52


class RegistryError(PackageLoadError):
    """Pushing to or pulling from the registry failed."""
    reference = "registry-error"
    exit_code = 60


class ImageVerificationError(RegistryError):
    """A pulled image's labels do not match what the caller expected."""
    reference = "image-verification"
    exit_code = 61


class TagExistsError(RegistryError):
    """The registry already holds a different image under NAME:VERSION (tags are immutable)."""
    reference = "tag-exists"
    exit_code = 62


class RebaseError(PackageLoadError):
    """A rebase was refused: the image or the new base would not fit together."""
    reference = "rebase-refused"
    exit_code = 63


class RunError(PackageLoadError):
    """A started agent container did not become healthy."""
    reference = "run-failed"
    exit_code = 70


class SmokeTestError(PackageLoadError):
    """A started agent image failed a check of `agent-image test` or builder.testing: its answer, its drain or its exit."""
    reference = "smoke-test-failed"
    exit_code = 71


class AgentResponseError(SmokeTestError):
    """The agent answered a call with an error status (its JSON error body: kind and request id).

    ``status``, ``kind`` and ``request_id`` are the answer's; the request id
    finds the agent's log line with the message and traceback.
    """
    reference = "agent-error-response"
    exit_code = 72

    def __init__(self, message: str, *, status: int = 0, kind: str = "", request_id: str = "",
                 body: Any = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status, self.kind, self.request_id, self.body = status, kind, request_id, body

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "status": self.status, "kind": self.kind, "request_id": self.request_id}


class TaskDefinitionError(PackageLoadError):
    """An ECS task definition cannot be made for the image with these options."""
    reference = "task-definition"
    exit_code = 80


# --- agent-image itself --------------------------------------------------------

class InternalError(PackageLoadError):
    """An unexpected exception: a bug in agent-image, not in the input.

    ``traceback_file`` names where the full, redacted traceback was written.
    """
    reference = "internal-error"
    exit_code = 99

    def __init__(self, message: str, *, traceback_file: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.traceback_file = traceback_file

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "traceback_file": self.traceback_file}


ALL_ERRORS: tuple[type[PackageLoadError], ...] = (
    PackageLoadError, PackageValidationError, IndexPolicyError, RequirementsSyntaxError,
    DependencyError, DependencyNotFoundError, VersionNotFoundError, HashMismatchError,
    DependencyConflictError, WheelBuildError, EditableInstallError, IndexUnreachableError,
    IndexAuthError, CodeArtifactError, IndexResponseError, BuildError, BuildTimeoutError, BuildInterruptedError,
    EngineError, BaseImageMissingError, SandboxError, RegistryError, ImageVerificationError, TagExistsError,
    RebaseError, RunError, SmokeTestError, AgentResponseError, TaskDefinitionError, InternalError,
)

# The one exit-code table (class name -> code); the CLI and --json read it.
EXIT_CODES: dict[str, int] = {cls.__name__: cls.exit_code for cls in ALL_ERRORS}
