"""One exception tree for every failure a user can cause.

The root keeps the seed runtime's name, ``PackageLoadError``. Each class has
a stable kebab-case ``reference`` and an ``exit_code``; ``EXIT_CODES`` below
is the one table the CLI and the ``--json`` result read. Errors carry
evidence (the step, the offending requirement or line, a bounded log tail),
never secrets: messages are passed through ``redact`` (the current build's
``Redactor``, see ``redaction_scope``) when made and again on the way out.

It imports only builder/core/redact.py (the per-build Redactor).
"""

from __future__ import annotations

from typing import Any

from builder.core.redact import Redactor, redact


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


class EmulationMissingError(EngineError):
    """A build for another CPU needs QEMU user emulation (binfmt_misc), and the engine's host has none."""
    reference = "emulation-missing"
    exit_code = 53


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


class SignatureError(ImageVerificationError):
    """An image's signature is missing, does not verify with the key, or is for another image or repository
    (or its SBOM and provenance are not the ones it signed); or the signing key cannot be used."""
    reference = "signature"
    exit_code = 64


class PlatformMissingError(RegistryError):
    """The image (or its index) has no manifest for the platform asked for."""
    reference = "platform-missing"
    exit_code = 65


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

    def __init__(self, message: str, *, problems: list[dict[str, str | None]] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        # every problem found in one pass ({"field", "message", "hint"}), so one run reports them all
        self.problems = problems or [{"field": self.field, "message": self.message, "hint": self.hint}]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "problems": self.problems}


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
    EngineError, BaseImageMissingError, SandboxError, EmulationMissingError, RegistryError, ImageVerificationError,
    TagExistsError, SignatureError, PlatformMissingError,
    RebaseError, RunError, SmokeTestError, AgentResponseError, TaskDefinitionError, InternalError,
)

# The one exit-code table (class name -> code); the CLI and --json read it.
EXIT_CODES: dict[str, int] = {cls.__name__: cls.exit_code for cls in ALL_ERRORS}
