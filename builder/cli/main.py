"""The `agent-image` command: parse options, run (``commands``), render the result or the error.

Exit codes come from one table, ``errors.EXIT_CODES``: 0 is success, 2 a
usage error, every PackageLoadError subclass its own code (see --help).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
from pathlib import Path

import structlog

from builder import __version__
from builder.cli import ciout, pruning
from builder.cli.commands import COMMANDS
from builder.cli.platformopts import add_platform
from builder.cli.supplyargs import add_pull, add_sign_key, add_verify, add_verify_key
from builder.cli.usage import port as _port
from builder.cli.usage import positive as _positive
from builder.core.defaults import DEFAULT_FILE_BYTES, DEFAULT_PAGE_BYTES
from builder.core.errors import EXIT_CODES, PackageLoadError
from builder.core.pythons import PYTHONS
from builder.package.reader import DEFAULT_LIMITS

log = structlog.get_logger("agent_image")


def _codes_epilog() -> str:
    rows = sorted(EXIT_CODES.items(), key=lambda kv: kv[1])
    return "exit codes:\n  0  success\n  2  bad command-line usage\n" + "\n".join(
        f"  {code:<2} {name}" for name, code in rows)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (\"schema\": 1); "
                                                       "the log on stderr follows --progress")
    p.add_argument("-v", "--verbose", action="store_true", help="log every build-log line (debug level)")
    p.add_argument("--engine", metavar="URL", help="Docker engine address (default: DOCKER_HOST or the local socket)")
    p.add_argument("--progress", choices=ciout.MODES, default="auto",
                   help="log format on stderr: tty (build's live view), plain (a line per event), json (a JSON "
                        "object per event); auto (default): tty on a terminal without --json, else plain")


def _add_ecs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ECS task definition")
    g.add_argument("--cpu", type=int, default=256, help="task CPU units (default 256; Fargate's pairs are checked)")
    g.add_argument("--memory", type=int, default=512, help="task memory in MiB (default 512)")
    g.add_argument("--launch-type", choices=["FARGATE", "EC2"], default="FARGATE",
                   help="default FARGATE; picks networkMode (Fargate awsvpc, EC2 bridge)")
    g.add_argument("--network-mode", choices=["awsvpc", "bridge", "host"],
                   help="EC2 only: override the networkMode (Fargate takes awsvpc alone)")
    g.add_argument("--family-prefix", default="", metavar="PREFIX",
                   help="family = PREFIX + the agent name (letters, digits, - and _)")
    g.add_argument("--ephemeral-storage", type=int, metavar="GiB",
                   help="Fargate's task storage, 21-200 GiB (default: Fargate's 20)")
    g.add_argument("--writable-root", action="store_true",
                   help="leave the root filesystem writable (default: read-only with a writable /tmp where "
                        "the image allows it: EC2 a tmpfs, Fargate a volume if the image declares VOLUME /tmp)")
    g.add_argument("--start-period", type=int, metavar="SECONDS", help="healthCheck startPeriod, 0-300 (default: "
                   "from the image's measured ready time, scaled to --cpu with a margin; docs/ecs.md)")
    g.add_argument("--execution-role-arn", help="task execution role (needed for secrets, awslogs, ECR on Fargate)")
    g.add_argument("--task-role-arn", help="the role the agent's own AWS calls use")
    g.add_argument("--log-group", help="awslogs group (no logConfiguration without it)")
    g.add_argument("--log-region", help="awslogs region (required with --log-group)")
    g.add_argument("--log-stream-prefix", help="awslogs stream prefix (default: the agent name)")
    g.add_argument("--secrets-prefix", metavar="ARN_PREFIX",
                   help="valueFrom for each ${...} reference in agent.yaml's environment: ARN_PREFIX + NAME "
                        "(ends in /, - or :)")
    g.add_argument("--secret", action="append", default=[], metavar="NAME=ARN", help="valueFrom for one reference")
    g.add_argument("--agent-app-id", help="AGENT_APP_ID for the task")
    g.add_argument("--deployment-id", help="DEPLOYMENT_ID for the task")
    g.add_argument("--base-path", help="BASE_PATH for the task (the image's default is /)")
    g.add_argument("--env", dest="task_env", action="append", default=[], metavar="KEY=VALUE",
                   help="another environment variable for the task (A2A_PORT, MULTIPLEXED, ...)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="agent-image", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn an AI agent package (.apkg or its folder) into a container image.",
        epilog=_codes_epilog())
    top.add_argument("--version", action="version", version=f"agent-image {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_base(sub)
    _add_rebase(sub)
    add_pull(sub, _add_common)
    add_verify(sub, _add_common)
    _add_doctor(sub)
    _add_run(sub)
    _add_ecs_task_def(sub)
    _add_test(sub)
    pruning.add_prune(sub, _add_common)
    top.commands = sub.choices  # each command's parser, for the usage errors argparse cannot see (_check_usage)
    return top


def _add_build(sub) -> None:
    b = sub.add_parser("build", help="build the image of one agent package",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                       description="Build SOURCE (an .apkg file or a folder with agent.yaml) into an image "
                                   "tagged REPOSITORY:VERSION (default agents/NAME:VERSION).")
    b.add_argument("source", help=".apkg file or agent folder")
    b.add_argument("--repository", help="image repository (default agents/NAME, or REGISTRY/NAME)")
    b.add_argument("--registry", metavar="HOST[:PORT]/PREFIX", help="registry to tag for (and push to with --push); "
                   "the dependency image shared by agents with the same lines is PREFIX/agent-image.deps")
    b.add_argument("--expect-name", metavar="NAME", help="the agent this upload is for: refuse a package whose "
                                                         "agent.yaml names another (it picks the repository)")
    b.add_argument("--expect-version", metavar="VERSION", help="refuse a package whose metadata.version differs "
                                                               "(it picks the tag)")
    b.add_argument("--push", action="store_true", help="push REGISTRY/NAME:VERSION and report the digest")
    b.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD); "
                                               "default: the Docker config's credentials")
    b.add_argument("--index-url", help="package index (default: PIP_INDEX_URL, CodeArtifact when "
                                       "ENABLE_CODEARTIFACT=true, else https://pypi.org/simple/)")
    b.add_argument("--allow-index-host", action="append", default=[], metavar="HOST",
                   help="let requirements.txt name this host in --index-url/--extra-index-url/--find-links/"
                        "--trusted-host (refused by default)")
    b.add_argument("--ca-bundle", metavar="PEM", help="extra CA bundle for reaching the index (used by the "
                                                      "builder's index proxy; not copied into the image)")
    b.add_argument("--ca-bundle-in-image", action="store_true",
                   help="also add the --ca-bundle CAs to the image's trust (SSL_CERT_FILE, REQUESTS_CA_BUNDLE)")
    b.add_argument("--timeout", type=_positive(float), default=300.0, help="wall-clock build timeout in seconds (default 300)")
    b.add_argument("--base-image", help="image to build FROM (default agent-image/base:pyX.Y for the runtime; the repository is $AGENT_IMAGE_BASE_REPOSITORY when set)")
    b.add_argument("--include-env", action="store_true", help="copy the package's .env into the image "
                                                              "(off by default: it may hold secrets)")
    b.add_argument("--installer", choices=["pip", "uv"], default="pip",
                   help="what installs the requirements (default pip; uv runs from its own venv in the image)")
    b.add_argument("--no-cache", action="store_true", help="ignore the layer cache and the input-digest cache, and "
                   "rebuild the dependency image (PREFIX/agent-image.deps) too")
    b.add_argument("--dry-run", action="store_true", help="print the Dockerfile and stop (rendered without the "
                   "engine, as one file FROM the base: a build splits it at the dependency image and uses the "
                   "base's own pip and uv when it has them)")
    b.add_argument("--overwrite", action="store_true",
                   help="with --push, replace NAME:VERSION even when the registry holds other content under it "
                        "(refused by default: version tags are immutable, exit 62)")
    b.add_argument("--ecs-task-def", metavar="FILE", type=Path,
                   help="with --push: write the image's ECS RegisterTaskDefinition request to FILE "
                        "(options: see 'ECS task definition')")
    b.add_argument("--create-repository", action="store_true",
                   help="ECR only: create the agent's repository and PREFIX/agent-image.deps when missing "
                        "(version tags immutable, lifecycle policies; docs/ci.md)")
    add_sign_key(b, "with --push: sign the image (cosign's format) with KEY; without it the SBOM and provenance "
                    "are attached unsigned")
    add_platform(b, "build")
    b.add_argument("--source-url", metavar="URL", help="org.opencontainers.image.source (default: the CI's repository URL)")
    b.add_argument("--revision", metavar="SHA", help="org.opencontainers.image.revision (default: the CI's commit; "
                   "image.created comes from SOURCE_DATE_EPOCH when set)")
    b.add_argument("--cache-dir", type=Path, help="download cache folder (default ~/.cache/agent-image)")
    b.add_argument("--max-index-page-bytes", type=_positive(int), default=DEFAULT_PAGE_BYTES,
                   help=f"largest index page the proxy passes to the build (default {DEFAULT_PAGE_BYTES})")
    b.add_argument("--max-download-bytes", type=_positive(int), default=DEFAULT_FILE_BYTES,
                   help=f"largest file the proxy downloads for the build (default {DEFAULT_FILE_BYTES}); "
                        "a bigger one fails the build (exit 33) and is not kept")
    b.add_argument("--max-entries", type=_positive(int), default=DEFAULT_LIMITS.max_entries,
                   help=f"most entries a package may hold (default {DEFAULT_LIMITS.max_entries})")
    b.add_argument("--max-total-bytes", type=_positive(int), default=DEFAULT_LIMITS.max_total_bytes,
                   help=f"most bytes a package may expand to (default {DEFAULT_LIMITS.max_total_bytes})")
    b.add_argument("--max-ratio", type=_positive(int), default=DEFAULT_LIMITS.max_ratio,
                   help=f"highest compression ratio of an entry over 1 MiB (default {DEFAULT_LIMITS.max_ratio})")
    _add_common(b)
    pruning.add_budget_options(b)
    _add_ecs(b)


def _add_base(sub) -> None:
    base = sub.add_parser("base", help="build the shared base image (agent-image/base:pyX.Y)")
    base.add_argument("--python", default="3.11", choices=list(PYTHONS), help="Python version (default 3.11)")
    base.add_argument("--from", dest="from_image", help="Python image to start from (default "
                                                        "agent-image/python:X.Y, made by scripts/setup.sh in a "
                                                        "checkout; elsewhere e.g. python:3.11-slim)")
    base.add_argument("--tag", help="tag for the base (default agent-image/base:pyX.Y; "
                                    "the repository is $AGENT_IMAGE_BASE_REPOSITORY when set)")
    base.add_argument("--registry", metavar="HOST[:PORT]/PREFIX",
                      help="with --push: push the base as REGISTRY/agent-image.base:pyX.Y")
    base.add_argument("--push", action="store_true", help="push the base and print its digest reference")
    base.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    base.add_argument("--index-url", help="index the base's uv (for --installer uv) comes from "
                                          "(default as for build)")
    base.add_argument("--ca-bundle", metavar="PEM", help="extra CA bundle for reaching that index")
    add_platform(base, "base")
    _add_common(base)


def _add_rebase(sub) -> None:
    rb = sub.add_parser("rebase", help="move agent images onto a new base in the registry, without rebuilding",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                        description="Replace the base layers of each REF (in its registry) with BASE's, keep the "
                                    "agent's own layers byte for byte, and move REF's tag to the result.")
    rb.add_argument("refs", nargs="+", metavar="REF", help="REGISTRY/NAME:TAG of an agent image")
    rb.add_argument("--base", required=True, metavar="BASE_REF", help="the new base, e.g. REGISTRY/agent-image.base@sha256:...")
    rb.add_argument("--dry-run", action="store_true", help="show what would change; push nothing")
    add_sign_key(rb, "sign each new image with KEY (its SBOM and provenance are carried over either way)")
    add_platform(rb, "rebase")
    rb.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD); "
                                                "default: the Docker config's credentials")
    _add_common(rb)


def _add_doctor(sub) -> None:
    doc = sub.add_parser("doctor", help="check what a build step on this engine can reach (exit 0: the index "
                                        "proxy and nothing else; else 52)")
    doc.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                     help="an address a build must not reach (repeatable; replaces the defaults "
                          "169.254.169.254:80, 169.254.170.2:80, pypi.org:443); listeners on every host "
                          "address are always tried")
    doc.add_argument("--python", default="3.11", choices=list(PYTHONS), help="base image to probe from")
    doc.add_argument("--base-image", help="image to probe from (default the shared base for --python)")
    _add_common(doc)


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="start an agent image locally and wait for /health")
    run.add_argument("ref", help="image reference or id")
    run.add_argument("--port", type=_port, default=8080,
                     help="host port on 127.0.0.1 (default 8080); with a tcp:// engine, on the engine's host, "
                          "reached at DOCKER_HOST's address")
    run.add_argument("--wait", type=_positive(float), default=30.0, help="seconds to wait for /health (default 30)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the agent")
    run.add_argument("--name", help="container name")
    add_verify_key(run, "; runs the verified digest")
    run.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    add_platform(run, "run")
    _add_common(run)


def _add_ecs_task_def(sub) -> None:
    ecs = sub.add_parser("ecs-task-def", help="print the ECS RegisterTaskDefinition request for a pushed image",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                         description="Derive the task definition from the image itself (labels, user, port, "
                                     "HEALTHCHECK, architecture, registry digest); pulls REF when not local. "
                                     "--json prints the request alone, for "
                                     "`aws ecs register-task-definition --cli-input-json`.")
    ecs.add_argument("ref", help="REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:... (a pushed image)")
    ecs.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    add_platform(ecs, "ecs-task-def")
    _add_common(ecs)
    _add_ecs(ecs)


def _add_test(sub) -> None:
    t = sub.add_parser("test", help="smoke-test an agent image: /health, an invoke, the drain on SIGTERM",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                       description="Start SOURCE (an image reference, or a package folder/.apkg built first) as "
                                   "its ECS task runs it (read-only root, tmpfs /tmp, its numeric user), wait "
                                   "for /health within its start period, optionally POST --invoke and compare "
                                   "--expect, then SIGTERM it during a request and check the drain. Exit 0, "
                                   "70 (never healthy), 71 (a check failed) or 72 (--invoke got an error).")
    t.add_argument("source", metavar="REF|PACKAGE", help="image reference or id, or an agent folder / .apkg")
    t.add_argument("--invoke", metavar="JSON", help="POST this JSON to /invoke")
    t.add_argument("--expect", metavar="JSON", help="a JSON object: each of its keys must be equal in the answer")
    t.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the agent")
    t.add_argument("--secret", action="append", default=[], metavar="KEY=VALUE",
                   help="a secret as ECS would inject it (a plain value here)")
    t.add_argument("--start-timeout", type=_positive(float), metavar="S",
                   help="seconds to wait for /health (default: the image's HEALTHCHECK start period)")
    t.add_argument("--index-url", help="package index for building a PACKAGE (default as for build)")
    _add_common(t)


def _check_usage(top: argparse.ArgumentParser, args) -> None:
    """Combinations of options that cannot work: a usage error (exit 2) before anything runs."""
    if args.command == "build" and args.push and not (args.registry or args.repository):
        top.commands["build"].error("--push needs --registry (or --repository) to know where to push")
    if args.command == "build" and args.create_repository:
        from builder.ship.ecr import ecr_registry
        where = args.repository or args.registry
        if not args.push or not where or ecr_registry(where) is None:
            top.commands["build"].error("--create-repository needs --push and an ECR registry "
                                        f"(ACCOUNT.dkr.ecr.REGION.amazonaws.com/PREFIX), not {where or 'none'}")
    if args.command == "test" and args.expect is not None and args.invoke is None:
        top.commands["test"].error("--expect needs --invoke (the answer it is compared with)")
    for kv in (args.env + args.secret) if args.command == "test" else []:
        if "=" not in kv:
            top.commands["test"].error(f"--env/--secret {kv!r} is not KEY=VALUE")
    if args.command == "base" and args.push and not args.registry:
        top.commands["base"].error("--push needs --registry to know where to push")
    from builder.cli.usage import problems
    said = problems(args)
    if said:
        top.commands[args.command].error("; ".join(said))


def _interrupt(signum, frame):
    # SIGTERM (CI cancelling a job) cancels the build the same way Ctrl-C does
    raise KeyboardInterrupt


def _progress(args, mode: str):
    """A live progress view for `build` when a person watches stderr (--progress tty); None everywhere else."""
    if args.command != "build" or args.dry_run or mode != "tty":
        return None
    from builder.cli.progress import BuildProgress
    return BuildProgress(verbose=args.verbose, pushing=args.push)


def _sizes(args, result: dict, runtime: str | None, engine_factory) -> tuple[int, int, str] | None:
    """(image bytes, base bytes, base ref) for the summary; None when the engine cannot say."""
    from builder.core.defaults import base_image_for
    from builder.package.manifest import SUPPORTED_RUNTIMES
    python = SUPPORTED_RUNTIMES.get(runtime or "")
    base = args.base_image or (base_image_for(python) if python else None)
    if not result.get("image_id"):  # a multi-platform build: one image per platform
        return None
    try:
        engine = engine_factory()
        image, base_image = engine.image(result["image_id"]), engine.image(base) if base else None
    except PackageLoadError:
        return None
    return (image.size, base_image.size, base) if image and base_image else None


def _report(err: PackageLoadError, as_json: bool, command: str = "") -> int:
    ciout.failed(command, err)
    if as_json:
        # a command may attach its partial result (doctor's checks, rebase's per-image outcomes) to the error;
        # ecs-task-def's stdout is a task definition or nothing (`> task.json` must not catch an error object)
        out = sys.stderr if command == "ecs-task-def" else sys.stdout
        print(json.dumps({"schema": ciout.SCHEMA, "ok": False, **getattr(err, "result", {}),
                          "error": err.to_dict()}, default=str), file=out)
    else:
        sys.stderr.write(f"\nerror[{err.reference}]: {err.message}\n")
        for label, value in (("requirement", err.requirement), ("field", err.field), ("step", err.step)):
            if value:
                sys.stderr.write(f"  {label}: {value}\n")
        if err.log_tail:
            sys.stderr.write("  log tail:\n" + "".join(f"    | {ln}\n" for ln in err.log_tail[-12:]))
        if err.hint:
            sys.stderr.write(f"hint: {err.hint}\n")
    return err.exit_code


def main(argv: list[str] | None = None) -> int:
    top = parser()
    with ciout.usage_annotated():
        args = top.parse_args(argv)
        _check_usage(top, args)

    def engine_factory():
        from builder.build.engine import Engine
        return Engine(args.engine)

    from builder.core.redact import redaction_scope

    # the command's credentials (registry password...) are hidden for its whole run,
    # error reports and crash files included; each build adds its own, for itself
    with redaction_scope():
        return _run(args, engine_factory)


def _run(args, engine_factory) -> int:
    from builder.core.log import configure
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        mode = ciout.log_mode(args)
        progress = _progress(args, mode)
        configure(json_output=mode == "json", verbose=args.verbose, progress=progress)
        if progress:
            # the result line waits for the summary: written mid-display it would be painted over
            with progress, contextlib.redirect_stdout(io.StringIO()) as result_line:
                out = COMMANDS[args.command](args, engine_factory)
            progress.summary(out, _sizes(args, out, progress.runtime, engine_factory))
            sys.stdout.write(result_line.getvalue())
        else:
            out = COMMANDS[args.command](args, engine_factory)
        if args.json:
            print(json.dumps(ciout.envelope(args.command, out), default=str))
        ciout.succeeded(args.command, out)
        return 0
    except PackageLoadError as err:
        return _report(err, args.json, args.command)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # anything else is our bug: one line and a traceback file, never a traceback
        from builder.core.crash import internal_error
        err = internal_error(exc, getattr(args, "cache_dir", None))
        try:
            return _report(err, args.json, args.command)
        except OSError:  # stdout/stderr gone (a closed pipe): the exit code still says it
            return err.exit_code

if __name__ == "__main__":
    sys.exit(main())
