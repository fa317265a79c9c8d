"""The `agent-image` command: parse options, run, render the result or the error.

Exit codes come from one table, ``errors.EXIT_CODES``: 0 is success, 2 a
usage error, every PackageLoadError subclass its own code (see --help).
"""

from __future__ import annotations

import argparse
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

log = structlog.get_logger("agent_image")


def _codes_epilog() -> str:
    rows = sorted(EXIT_CODES.items(), key=lambda kv: kv[1])
    return "exit codes:\n  0  success\n  2  bad command-line usage\n" + "\n".join(
        f"  {code:<2} {name}" for name, code in rows)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout; logs are JSON too")
    p.add_argument("-v", "--verbose", action="store_true", help="log every build-log line (debug level)")
    p.add_argument("--engine", metavar="URL", help="Docker engine address (default: DOCKER_HOST or the local socket)")


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
    b.add_argument("--timeout", type=float, default=300.0, help="wall-clock build timeout in seconds (default 300)")
    b.add_argument("--base-image", help="image to build FROM (default agent-image/base:pyX.Y for the runtime; the repository is $AGENT_IMAGE_BASE_REPOSITORY when set)")
    b.add_argument("--include-env", action="store_true", help="copy the package's .env into the image "
                                                              "(off by default: it may hold secrets)")
    b.add_argument("--installer", choices=["pip", "uv"], default="pip",
                   help="what installs the requirements (default pip; uv runs from its own venv in the image)")
    b.add_argument("--no-cache", action="store_true", help="ignore the layer cache and the input-digest cache")
    b.add_argument("--dry-run", action="store_true", help="print the rendered Dockerfile and stop")
    b.add_argument("--cache-dir", type=Path, help="download cache folder (default ~/.cache/agent-image)")
    b.add_argument("--max-entries", type=int, default=DEFAULT_LIMITS.max_entries,
                   help=f"most entries a package may hold (default {DEFAULT_LIMITS.max_entries})")
    b.add_argument("--max-total-bytes", type=int, default=DEFAULT_LIMITS.max_total_bytes,
                   help=f"most bytes a package may expand to (default {DEFAULT_LIMITS.max_total_bytes})")
    b.add_argument("--max-ratio", type=int, default=DEFAULT_LIMITS.max_ratio,
                   help=f"highest compression ratio of an entry over 1 MiB (default {DEFAULT_LIMITS.max_ratio})")
    _add_common(b)

    base = sub.add_parser("base", help="build the shared base image (agent-image/base:pyX.Y)")
    base.add_argument("--python", default="3.11", choices=["3.11", "3.9"], help="Python version (default 3.11)")
    base.add_argument("--from", dest="from_image", help="Python image to start from "
                                                        "(default agent-image/python:X.Y from scripts/setup.sh)")
    base.add_argument("--tag", help="tag for the base (default agent-image/base:pyX.Y; "
                                    "the repository is $AGENT_IMAGE_BASE_REPOSITORY when set)")
    base.add_argument("--index-url", help="index the base's uv (for --installer uv) comes from "
                                          "(default as for build)")
    base.add_argument("--ca-bundle", metavar="PEM", help="extra CA bundle for reaching that index")
    _add_common(base)

    pull = sub.add_parser("pull", help="pull an agent image and verify its labels")
    pull.add_argument("ref", help="REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...")
    pull.add_argument("--expect-name", help="fail unless io.pixell.agent.name matches")
    pull.add_argument("--expect-version", help="fail unless io.pixell.agent.version matches")
    pull.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    _add_common(pull)

    run = sub.add_parser("run", help="start an agent image locally and wait for /health")
    run.add_argument("ref", help="image reference or id")
    run.add_argument("--port", type=int, default=8080, help="host port on 127.0.0.1 (default 8080)")
    run.add_argument("--wait", type=float, default=30.0, help="seconds to wait for /health (default 30)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the agent")
    run.add_argument("--name", help="container name")
    _add_common(run)
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
        **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    if args.dry_run:
        with open_package(args.source, opts.limits) as pkg:
            upstream = resolve_index(opts.index_url)
            _, rendered, context, digest = prepare(pkg, opts, upstream.url, base_id="(not resolved in --dry-run)")
            if not args.json:
                sys.stdout.write(rendered.text)
            return {"ok": True, "dockerfile": rendered.text, "context_bytes": context.size}
    result = build_image(args.source, opts, engine=engine_factory())
    if not args.json:
        print(f"{result.image} {result.image_id}" + (f"\n{result.digest_ref}" if result.digest_ref else ""))
    return result.to_dict()


def cmd_base(args, engine_factory) -> dict:
    from .base import build_base
    image_id = build_base(engine_factory(), python=args.python, from_image=args.from_image, tag=args.tag,
                          index_url=args.index_url, ca_bundle=args.ca_bundle)
    from .api import base_image_for
    tag = args.tag or base_image_for(args.python)
    if not args.json:
        print(f"{tag} {image_id}")
    return {"ok": True, "image": tag, "image_id": image_id}


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


COMMANDS = {"build": cmd_build, "base": cmd_base, "pull": cmd_pull, "run": cmd_run}


def _interrupt(signum, frame):
    # SIGTERM (CI cancelling a job) cancels the build the same way Ctrl-C does
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from .logs import configure
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    configure(json_output=True if args.json else None, verbose=args.verbose)

    def engine_factory():
        from .engine import Engine
        return Engine(args.engine)

    try:
        out = COMMANDS[args.command](args, engine_factory)
        if args.json:
            print(json.dumps(out, default=str))
        return 0
    except PackageLoadError as err:
        if args.json:
            print(json.dumps({"ok": False, "error": err.to_dict()}, default=str))
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
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
