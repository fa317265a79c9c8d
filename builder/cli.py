"""The `agent-image` command: parse options, run, render the result or the error.

Exit codes come from one table, ``errors.EXIT_CODES``: 0 is success, 2 a
usage error, every PackageLoadError subclass its own code (see --help).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import structlog

from . import __version__
from .apkg import DEFAULT_LIMITS, Limits
from .errors import EXIT_CODES, PackageLoadError, RunError
from .upstream import DEFAULT_FILE_BYTES, DEFAULT_PAGE_BYTES

log = structlog.get_logger("agent_image")


def _codes_epilog() -> str:
    rows = sorted(EXIT_CODES.items(), key=lambda kv: kv[1])
    return "exit codes:\n  0  success\n  2  bad command-line usage\n" + "\n".join(
        f"  {code:<2} {name}" for name, code in rows)


def _positive(kind):
    """argparse type: a finite number above 0 (a usage error, exit 2, otherwise)."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
        return value
    return convert


def _port(text: str) -> int:
    value = _positive(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout; logs are JSON too")
    p.add_argument("-v", "--verbose", action="store_true", help="log every build-log line (debug level)")
    p.add_argument("--engine", metavar="URL", help="Docker engine address (default: DOCKER_HOST or the local socket)")


def _add_ecs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ECS task definition")
    g.add_argument("--cpu", type=int, default=256, help="task CPU units (default 256; Fargate's pairs are checked)")
    g.add_argument("--memory", type=int, default=512, help="task memory in MiB (default 512)")
    g.add_argument("--launch-type", choices=["FARGATE", "EC2"], default="FARGATE", help="default FARGATE")
    g.add_argument("--execution-role-arn", help="task execution role (needed for secrets, awslogs, ECR on Fargate)")
    g.add_argument("--task-role-arn", help="the role the agent's own AWS calls use")
    g.add_argument("--log-group", help="awslogs group (no logConfiguration without it)")
    g.add_argument("--log-region", help="awslogs region (required with --log-group)")
    g.add_argument("--log-stream-prefix", help="awslogs stream prefix (default: the agent name)")
    g.add_argument("--secrets-prefix", metavar="ARN_PREFIX",
                   help="valueFrom for each ${...} reference in agent.yaml's environment: ARN_PREFIX + NAME")
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

    b = sub.add_parser("build", help="build the image of one agent package",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                       description="Build SOURCE (an .apkg file or a folder with agent.yaml) into an image "
                                   "tagged REPOSITORY:VERSION (default agents/NAME:VERSION).")
    b.add_argument("source", help=".apkg file or agent folder")
    b.add_argument("--repository", help="image repository (default agents/NAME, or REGISTRY/NAME)")
    b.add_argument("--registry", metavar="HOST[:PORT]/PREFIX", help="registry to tag for (and push to with --push)")
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
    b.add_argument("--no-cache", action="store_true", help="ignore the layer cache and the input-digest cache")
    b.add_argument("--dry-run", action="store_true", help="print the rendered Dockerfile and stop")
    b.add_argument("--overwrite", action="store_true",
                   help="with --push, replace NAME:VERSION even when the registry holds other content under it "
                        "(refused by default: version tags are immutable, exit 62)")
    b.add_argument("--ecs-task-def", metavar="FILE", type=Path,
                   help="with --push: write the image's ECS RegisterTaskDefinition request to FILE "
                        "(options: see 'ECS task definition')")
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
    _add_ecs(b)

    base = sub.add_parser("base", help="build the shared base image (agent-image/base:pyX.Y)")
    base.add_argument("--python", default="3.11", choices=["3.11", "3.9"], help="Python version (default 3.11)")
    base.add_argument("--from", dest="from_image", help="Python image to start from "
                                                        "(default agent-image/python:X.Y from scripts/setup.sh)")
    base.add_argument("--tag", help="tag for the base (default agent-image/base:pyX.Y; "
                                    "the repository is $AGENT_IMAGE_BASE_REPOSITORY when set)")
    base.add_argument("--registry", metavar="HOST[:PORT]/PREFIX",
                      help="with --push: push the base as REGISTRY/agent-image.base:pyX.Y")
    base.add_argument("--push", action="store_true", help="push the base and print its digest reference")
    base.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    base.add_argument("--index-url", help="index the base's uv (for --installer uv) comes from "
                                          "(default as for build)")
    base.add_argument("--ca-bundle", metavar="PEM", help="extra CA bundle for reaching that index")
    _add_common(base)

    rb = sub.add_parser("rebase", help="move agent images onto a new base in the registry, without rebuilding",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                        description="Replace the base layers of each REF (in its registry) with BASE's, keep the "
                                    "agent's own layers byte for byte, and move REF's tag to the result.")
    rb.add_argument("refs", nargs="+", metavar="REF", help="REGISTRY/NAME:TAG of an agent image")
    rb.add_argument("--base", required=True, metavar="BASE_REF", help="the new base, e.g. REGISTRY/agent-image.base@sha256:...")
    rb.add_argument("--dry-run", action="store_true", help="show what would change; push nothing")
    rb.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD); "
                                                "default: the Docker config's credentials")
    _add_common(rb)

    pull = sub.add_parser("pull", help="pull an agent image and verify its labels")
    pull.add_argument("ref", help="REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...")
    pull.add_argument("--expect-name", help="fail unless io.pixell.agent.name matches")
    pull.add_argument("--expect-version", help="fail unless io.pixell.agent.version matches")
    pull.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    _add_common(pull)

    doc = sub.add_parser("doctor", help="check what a build step on this engine can reach (exit 0: the index "
                                        "proxy and nothing else; else 52)")
    doc.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                     help="an address a build must not reach (repeatable; replaces the defaults "
                          "169.254.169.254:80, 169.254.170.2:80, pypi.org:443); listeners on every host "
                          "address are always tried")
    doc.add_argument("--python", default="3.11", choices=["3.11", "3.9"], help="base image to probe from")
    doc.add_argument("--base-image", help="image to probe from (default the shared base for --python)")
    _add_common(doc)

    run = sub.add_parser("run", help="start an agent image locally and wait for /health")
    run.add_argument("ref", help="image reference or id")
    run.add_argument("--port", type=_port, default=8080, help="host port on 127.0.0.1 (default 8080)")
    run.add_argument("--wait", type=_positive(float), default=30.0, help="seconds to wait for /health (default 30)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the agent")
    run.add_argument("--name", help="container name")
    _add_common(run)

    ecs = sub.add_parser("ecs-task-def", help="print the ECS RegisterTaskDefinition request for a pushed image",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_codes_epilog(),
                         description="Derive the task definition from the image itself (labels, user, port, "
                                     "HEALTHCHECK, architecture, registry digest); pulls REF when not local. "
                                     "--json prints the request alone, for "
                                     "`aws ecs register-task-definition --cli-input-json`.")
    ecs.add_argument("ref", help="REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:... (a pushed image)")
    ecs.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    _add_common(ecs)
    _add_ecs(ecs)
    return top


def _registry_auth(args) -> dict | None:
    """Registry credentials from options + environment; None means the Docker config's."""
    user = getattr(args, "registry_username", None)
    if not user:
        return None
    from .errors import register_secret
    password = os.environ.get("AGENT_IMAGE_REGISTRY_PASSWORD", "")
    register_secret(password)
    return {"username": user, "password": password}


def _limits(args) -> Limits:
    return Limits(max_entries=args.max_entries, max_total_bytes=args.max_total_bytes, max_ratio=args.max_ratio)


def _pairs(items: list[str], option: str) -> dict[str, str]:
    from .errors import TaskDefinitionError
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise TaskDefinitionError(f"{option} {bad[0]!r} is not KEY=VALUE.", field=option)
    return dict(kv.split("=", 1) for kv in items)


def _task_options(args):
    from .ecs import TaskOptions, check_options
    env = {k: v for k, v in (("AGENT_APP_ID", args.agent_app_id), ("DEPLOYMENT_ID", args.deployment_id),
                             ("BASE_PATH", args.base_path)) if v is not None}
    opts = TaskOptions(
        cpu=args.cpu, memory=args.memory, launch_type=args.launch_type, execution_role_arn=args.execution_role_arn,
        task_role_arn=args.task_role_arn, log_group=args.log_group, log_region=args.log_region,
        log_stream_prefix=args.log_stream_prefix, secrets_prefix=args.secrets_prefix,
        secrets=_pairs(args.secret, "--secret"), environment={**_pairs(args.task_env, "--env"), **env})
    check_options(opts)
    return opts


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: a reader never sees half a file."""
    import tempfile
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ecs_precheck(args):
    """--ecs-task-def: every option and secret mapping checked before the build starts."""
    from .apkg import open_package
    from .ecs import secret_entries
    from .errors import TaskDefinitionError
    if not args.push:
        raise TaskDefinitionError("--ecs-task-def needs --push: the task definition names the pushed image "
                                  "by its registry digest.", field="--ecs-task-def", hint="Add --push --registry ....")
    if not args.ecs_task_def.resolve().parent.is_dir():
        raise TaskDefinitionError(f"--ecs-task-def {args.ecs_task_def}: no such folder.", field="--ecs-task-def")
    opts = _task_options(args)
    with open_package(args.source, _limits(args)) as pkg:
        secret_entries(pkg.manifest.environment_refs, opts)
    return opts


def cmd_ecs_task_def(args, engine_factory) -> dict:
    from .ecs import digest_ref, task_definition
    opts = _task_options(args)  # option errors come before the engine is asked
    engine = engine_factory()
    image = engine.image(args.ref) or engine.pull(args.ref, auth=_registry_auth(args))
    request = task_definition(image, digest_ref(image, args.ref), opts)
    if not args.json:
        print(json.dumps(request, indent=2))
    return request


def cmd_build(args, engine_factory) -> dict:
    from .api import BuildOptions, build_image, prepare, base_image_for
    from .apkg import open_package
    from .index import resolve_index

    opts = BuildOptions(
        repository=args.repository, registry=args.registry, push=args.push, index_url=args.index_url,
        allow_index_hosts=frozenset(args.allow_index_host), ca_bundle=args.ca_bundle,
        ca_bundle_in_image=args.ca_bundle_in_image, timeout=args.timeout,
        base_image=args.base_image, include_env=args.include_env, nocache=args.no_cache, installer=args.installer,
        limits=_limits(args), registry_auth=_registry_auth(args),
        expect_name=args.expect_name, expect_version=args.expect_version,
        index_page_max_bytes=args.max_index_page_bytes, download_max_bytes=args.max_download_bytes, overwrite=args.overwrite,
        **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    if args.dry_run:
        with open_package(args.source, opts.limits) as pkg:
            upstream = resolve_index(opts.index_url)
            _, rendered, context, digest = prepare(pkg, opts, upstream.url, base_id="(not resolved in --dry-run)")
            if not args.json:
                sys.stdout.write(rendered.text)
            return {"ok": True, "dockerfile": rendered.text, "context_bytes": context.size}
    task_opts = _ecs_precheck(args) if args.ecs_task_def else None
    engine = engine_factory()
    result = build_image(args.source, opts, engine=engine)
    out = result.to_dict()
    if task_opts is not None:
        out["ecs_task_def"] = str(_write_task_def(engine, result, task_opts, args.ecs_task_def))
    if not args.json:
        print(f"{result.image} {result.image_id}" + (f"\n{result.digest_ref}" if result.digest_ref else ""))
    return out


def _write_task_def(engine, result, task_opts, path: Path) -> Path:
    from .ecs import task_definition
    from .errors import TaskDefinitionError
    try:
        request = task_definition(engine.image(result.image_id), result.digest_ref, task_opts)
    except TaskDefinitionError as err:
        pushed = (f"The image is pushed as {result.digest_ref}: "
                  f"`agent-image ecs-task-def {result.digest_ref}` makes it once fixed.")
        err.hint = " ".join(filter(None, (err.hint, pushed)))
        raise
    _write_atomically(path, json.dumps(request, indent=2) + "\n")
    log.info("Wrote the ECS task definition", path=str(path), image=result.digest_ref)
    return path


def cmd_rebase(args, engine_factory) -> dict:
    from .rebasing import rebase_refs
    outcomes = rebase_refs(args.refs, args.base, auth=_registry_auth(args), dry_run=args.dry_run)
    failed = next((o for o in outcomes if not o.ok), None)
    if not args.json:
        for o in outcomes:
            if not o.ok:
                continue
            note = " (unchanged: already on this base)" if o.unchanged else " (dry run: nothing pushed)" if args.dry_run else ""
            print(f"{o.from_ref} -> {o.digest_ref}{note}")
            if args.dry_run:
                for key, (old, new) in o.changes.items():
                    print(f"    {key}: {old or '-'} -> {new}")
                print(f"    agent layers kept: {o.layers_kept}")
    if failed is not None:
        # each image was done or refused on its own; the exit code is the first failure's
        failed.error.result = {"results": [o.to_dict() for o in outcomes]}
        for o in outcomes:
            if not o.ok and o is not failed and not args.json:
                sys.stderr.write(f"\nerror[{o.error.reference}]: {o.image}: {o.error}\n")
        raise failed.error
    return {"ok": True, "results": [o.to_dict() for o in outcomes]}


def cmd_base(args, engine_factory) -> dict:
    from .base import build_base, push_base
    from .errors import PackageValidationError
    if args.push and not args.registry:
        raise PackageValidationError("--push needs --registry to know where to push", field="--registry",
                                     hint="Add --registry HOST[:PORT]/PREFIX.")
    engine = engine_factory()
    image_id = build_base(engine, python=args.python, from_image=args.from_image, tag=args.tag)
    from .base import build_base
    image_id = build_base(engine_factory(), python=args.python, from_image=args.from_image, tag=args.tag,
                          index_url=args.index_url, ca_bundle=args.ca_bundle)
    from .api import base_image_for
    tag = args.tag or base_image_for(args.python)
    pinned = push_base(engine, image_id, registry=args.registry, python=args.python,
                       auth=_registry_auth(args)) if args.push else None
    if not args.json:
        print(f"{tag} {image_id}" + (f"\n{pinned}" if pinned else ""))
    return {"ok": True, "image": tag, "image_id": image_id, "digest_ref": pinned}


def cmd_pull(args, engine_factory) -> dict:
    from .registry import pull_image
    image_id = pull_image(engine_factory(), args.ref, expect_name=args.expect_name,
                          expect_version=args.expect_version, auth=_registry_auth(args))
    if not args.json:
        print(image_id)
    return {"ok": True, "image": args.ref, "image_id": image_id}


def wait_healthy(url: str, wait: float, is_running) -> float:
    """Poll URL until 200; return seconds taken. Raise RunError on timeout or exit."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < wait:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        if not is_running():
            raise RunError(f"the agent container exited before {url} answered", hint="Read its logs.")
        time.sleep(0.1)
    raise RunError(f"{url} did not answer 200 within {wait:g}s (last: {last})", hint="Read the container logs.")


def cmd_run(args, engine_factory) -> dict:
    engine = engine_factory()
    env = dict(kv.split("=", 1) for kv in args.env if "=" in kv)
    env.setdefault("REST_PORT", "8080")
    cid = engine.run(args.ref, env=env, ports={int(env["REST_PORT"]): args.port}, name=args.name)
    url = f"http://127.0.0.1:{args.port}{('/' + env.get('BASE_PATH', '/').strip('/')).rstrip('/')}"
    try:
        took = wait_healthy(f"{url}/health", args.wait, lambda: engine.container_state(cid).get("Running", False))
    except RunError as err:
        err.log_tail = engine.logs(cid).splitlines()[-20:]
        engine.stop(cid)
        raise
    log.info("Agent is serving", url=url, container=cid[:12], ready_s=round(took, 3))
    if not args.json:
        print(url)
    return {"ok": True, "url": url, "container": cid, "ready_s": round(took, 3)}


def cmd_doctor(args, engine_factory) -> dict:
    from .api import base_image_for
    from .doctor import render, run_doctor
    from .errors import SandboxError
    engine = engine_factory()
    base = args.base_image or base_image_for(args.python)
    engine.require_image(base, hint=f"Run `agent-image base --python {args.python}` and retry.")
    report = run_doctor(engine, base_image=base, targets=args.target or None)
    if not args.json:
        sys.stdout.write(render(report))
    if not report["ok"]:
        reached = [c["target"] for c in report["checks"] if c["reached"] != c["expected"]]
        err = SandboxError(f"a build step on this engine is not confined to the index proxy: {', '.join(reached)}",
                           hint="Builds must run in the sandbox (builder/sandbox.py); see README "
                                "'What a build can reach'.")
        err.result = report
        raise err
    return report


COMMANDS = {"build": cmd_build, "base": cmd_base, "pull": cmd_pull, "run": cmd_run, "doctor": cmd_doctor,
            "ecs-task-def": cmd_ecs_task_def, "rebase": cmd_rebase}


def _interrupt(signum, frame):
    # SIGTERM (CI cancelling a job) cancels the build the same way Ctrl-C does
    raise KeyboardInterrupt


def _progress(args):
    """A live progress view for `build` when a person watches stderr; None everywhere else."""
    if args.command != "build" or args.json or args.dry_run or not sys.stderr.isatty():
        return None
    from .progress import BuildProgress
    return BuildProgress(verbose=args.verbose, pushing=args.push)


def _sizes(args, result: dict, runtime: str | None, engine_factory) -> tuple[int, int, str] | None:
    """(image bytes, base bytes, base ref) for the summary; None when the engine cannot say."""
    from .api import base_image_for
    from .manifest import SUPPORTED_RUNTIMES
    python = SUPPORTED_RUNTIMES.get(runtime or "")
    base = args.base_image or (base_image_for(python) if python else None)
    try:
        engine = engine_factory()
        image, base_image = engine.image(result["image_id"]), engine.image(base) if base else None
    except PackageLoadError:
        return None
    return (image.size, base_image.size, base) if image and base_image else None


def _report(err: PackageLoadError, as_json: bool) -> int:
    if as_json:
        # a command may attach its partial result (doctor's checks, rebase's per-image outcomes) to the error
        print(json.dumps({"ok": False, **getattr(err, "result", {}), "error": err.to_dict()}, default=str))
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
    args = parser().parse_args(argv)

    def engine_factory():
        from .engine import Engine
        return Engine(args.engine)

    from .errors import redaction_scope
    # the command's credentials (registry password...) are hidden for its whole run,
    # error reports and crash files included; each build adds its own, for itself
    with redaction_scope():
        return _run(args, engine_factory)


def _run(args, engine_factory) -> int:
    from .logs import configure
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        progress = _progress(args)
        configure(json_output=True if args.json else None, verbose=args.verbose, progress=progress)
        if progress:
            # the result line waits for the summary: written mid-display it would be painted over
            with progress, contextlib.redirect_stdout(io.StringIO()) as result_line:
                out = COMMANDS[args.command](args, engine_factory)
            progress.summary(out, _sizes(args, out, progress.runtime, engine_factory))
            sys.stdout.write(result_line.getvalue())
        else:
            out = COMMANDS[args.command](args, engine_factory)
        if args.json:
            print(json.dumps(out, default=str))
        return 0
    except PackageLoadError as err:
        return _report(err, args.json)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:  # anything else is our bug: one line and a traceback file, never a traceback
        from .crash import internal_error
        err = internal_error(exc, getattr(args, "cache_dir", None))
        try:
            return _report(err, args.json)
        except OSError:  # stdout/stderr gone (a closed pipe): the exit code still says it
            return err.exit_code

if __name__ == "__main__":
    sys.exit(main())
