"""What each `agent-image` subcommand does, from parsed options to a result dict.

``cli`` parses and reports; a command returns the JSON-able result or raises
a ``PackageLoadError``. Heavy modules are imported inside the commands, so
`--help` and a usage error stay fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import structlog

from builder.cli.args import limits, platform_of, registry_auth
from builder.cli.runcmds import cmd_pull, cmd_run, cmd_verify

log = structlog.get_logger("agent_image")


def _pairs(items: list[str], option: str) -> dict[str, str]:
    from builder.core.errors import TaskDefinitionError
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        raise TaskDefinitionError(f"{option} {', '.join(map(repr, bad))}: not KEY=VALUE.", field=option)
    return dict(kv.split("=", 1) for kv in items)


def _task_options(args, problems=None):
    """The ECS options; their problems (a malformed KEY=VALUE too) go into PROBLEMS, or are raised
    together when none is given."""
    from builder.ship.ecsopts import Problems, TaskOptions, option_problems
    p = Problems() if problems is None else problems
    env = {k: v for k, v in (("AGENT_APP_ID", args.agent_app_id), ("DEPLOYMENT_ID", args.deployment_id),
                             ("BASE_PATH", args.base_path)) if v is not None}
    opts = TaskOptions(
        cpu=args.cpu, memory=args.memory, launch_type=args.launch_type, execution_role_arn=args.execution_role_arn,
        task_role_arn=args.task_role_arn, log_group=args.log_group, log_region=args.log_region,
        log_stream_prefix=args.log_stream_prefix, secrets_prefix=args.secrets_prefix,
        secrets=p.run(_pairs, args.secret, "--secret", default={}),
        environment={**p.run(_pairs, args.task_env, "--env", default={}), **env},
        network_mode=args.network_mode, family_prefix=args.family_prefix,
        ephemeral_storage=args.ephemeral_storage, writable_root=args.writable_root, start_period=args.start_period)
    option_problems(opts, p)
    if problems is None:
        p.raise_any()
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
    from builder.core.errors import TaskDefinitionError
    from builder.package.reader import open_package
    from builder.ship.ecsopts import Problems, secret_problems
    if not args.push:
        raise TaskDefinitionError("--ecs-task-def needs --push: the task definition names the pushed image "
                                  "by its registry digest.", field="--ecs-task-def", hint="Add --push --registry ....")
    if not args.ecs_task_def.resolve().parent.is_dir():
        raise TaskDefinitionError(f"--ecs-task-def {args.ecs_task_def}: no such folder.", field="--ecs-task-def")
    # the options' problems and the secret mapping's, in one error
    problems = Problems()
    opts = _task_options(args, problems)
    with open_package(args.source, limits(args)) as pkg:
        secret_problems(pkg.manifest.environment_refs, opts, problems)
    problems.raise_any()
    return opts


def cmd_ecs_task_def(args, engine_factory) -> dict:
    from builder.ship.ecs import digest_ref, task_definition
    opts = _task_options(args)  # option errors come before the engine is asked
    engine = engine_factory()
    from builder.build.reuse import remote
    from builder.core.refs import split_ref
    from builder.ship.pushpull import image_for_platform
    ref, platform = args.ref, platform_of(args)
    if platform and "@" not in ref and remote(split_ref(ref)[0]):  # that platform's manifest, by its digest
        from builder.ship.index import platform_ref
        ref = platform_ref(ref, platform, auth=registry_auth(args))
    image = image_for_platform(engine, ref, platform, auth=registry_auth(args))
    request = task_definition(image, digest_ref(image, ref), opts)
    if not args.json:
        print(json.dumps(request, indent=2))
    return request


def cmd_build(args, engine_factory) -> dict:
    from builder.api import BuildOptions, build_image
    from builder.cli.pruning import budget
    from builder.plan.provenance import provenance

    opts = BuildOptions(
        repository=args.repository, registry=args.registry, push=args.push, index_url=args.index_url,
        allow_index_hosts=frozenset(args.allow_index_host), ca_bundle=args.ca_bundle,
        ca_bundle_in_image=args.ca_bundle_in_image, timeout=args.timeout,
        base_image=args.base_image, include_env=args.include_env, nocache=args.no_cache, installer=args.installer,
        limits=limits(args), registry_auth=registry_auth(args),
        expect_name=args.expect_name, expect_version=args.expect_version,
        index_page_max_bytes=args.max_index_page_bytes, download_max_bytes=args.max_download_bytes, overwrite=args.overwrite,
        provenance=provenance(args.source_url, args.revision, os.environ), sign_key=args.sign_key, **budget(args),
        **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    if args.dry_run:
        return _dry_run(args, opts)
    task_opts = _ecs_precheck(args) if args.ecs_task_def else None
    created = _create_repositories(args, opts) if args.create_repository else None
    engine = engine_factory()
    if args.platform:  # one image per platform, and (with --push) one index over them
        return _build_platforms(args, opts, engine, task_opts, created)
    result = build_image(args.source, opts, engine=engine)
    out = result.to_dict()
    if created is not None:
        out["created_repositories"] = created
    if task_opts is not None:
        started = time.monotonic()
        out["ecs_task_def"] = str(_write_task_def(engine, result, task_opts, args.ecs_task_def, registry_auth(args)))
        took = round(time.monotonic() - started, 3)  # duration_s is the whole command's: this step too
        out["phases"]["ecs_task_def"], out["duration_s"] = took, round(out["duration_s"] + took, 3)
    if not args.json:
        print(f"{result.image} {result.image_id}" + (f"\n{result.digest_ref}" if result.digest_ref else ""))
    return out


def _build_platforms(args, opts, engine, task_opts, created) -> dict:
    from builder.cli.multiarch import build_platforms
    from builder.core.platforms import parse_platforms
    multi = build_platforms(args.source, opts, parse_platforms(args.platform), engine)
    out = multi.to_dict()
    if created is not None:
        out["created_repositories"] = created
    if task_opts is not None:  # the first platform's image (its runtimePlatform), named by the index digest
        first = next(iter(multi.results.values()))
        first.digest_ref = multi.digest_ref
        out["ecs_task_def"] = str(_write_task_def(engine, first, task_opts, args.ecs_task_def))
    if not args.json:
        for platform, r in multi.results.items():
            print(f"{platform} {r.image} {r.image_id}")
        print(multi.digest_ref or multi.image)
    return out


def _dry_run(args, opts) -> dict:
    """The Dockerfile, after every check a build makes without the engine (and the registry's,
    with --push); what only a build can check is said, in the result and on stderr."""
    from builder.api import check_inputs, prepare
    from builder.build.reuse import remote
    from builder.package.reader import open_package
    with open_package(args.source, opts.limits) as pkg:
        job = check_inputs(pkg, opts)
        checked = ["options", "package", "requirements"]
        if args.ecs_task_def:
            _ecs_precheck(args)
            checked.append("ecs-task-def options")
        not_checked = [f"the engine: the base image {job.base_image} and what it holds, the build sandbox",
                       f"the index {job.upstream.url}: that the requirements resolve and install"]
        if args.push and remote(job.repo):
            from builder.ship.preflight import check_push
            check_push(job.repo, auth=opts.registry_auth, option="--repository" if args.repository else "--registry")
            checked.append(f"the registry: {job.repo} takes a push")
            if not args.overwrite:
                not_checked.append(f"the registry: that {job.ref} is free or holds this content (it needs the image)")
        _, rendered, context, _ = prepare(pkg, opts, job.upstream.url, base_id="(not resolved in --dry-run)",
                                          split=job.split)
    if not args.json:
        sys.stdout.write(rendered.text)
        sys.stderr.write(f"dry run: checked {', '.join(checked)}; not checked: {'; '.join(not_checked)}\n")
    return {"ok": True, "dockerfile": rendered.text, "context_bytes": context.size, "checked": checked,
            "not_checked": not_checked}


def _create_repositories(args, opts) -> list[str]:
    """--create-repository: the agent's ECR repository and the dependency images', before the build."""
    from builder.build.depsimage import repository as deps_repository
    from builder.package.reader import open_package
    from builder.plan.inputs import repository
    from builder.ship.ecr import ensure_repositories
    name = args.expect_name
    if not name:
        with open_package(args.source, opts.limits) as pkg:
            name = pkg.manifest.name
    agent_repo = repository(name, opts)
    return ensure_repositories(agent_repo, deps_repository(agent_repo, opts.registry))


def _write_task_def(engine, result, task_opts, path: Path, auth: dict | None) -> Path:
    from builder.core.errors import TaskDefinitionError
    from builder.ship.assemble import registry_image
    from builder.ship.ecs import task_definition
    # (an image assembled in the registry is not on this engine: its config is read from there)
    image = (engine.image(result.image_id) or registry_image(result.digest_ref, auth=auth)
             or engine.pull(result.digest_ref, auth=auth))
    try:
        request = task_definition(image, result.digest_ref, task_opts)
    except TaskDefinitionError as err:
        pushed = (f"The image is pushed as {result.digest_ref}: "
                  f"`agent-image ecs-task-def {result.digest_ref}` makes it once fixed.")
        err.hint = " ".join(filter(None, (err.hint, pushed)))
        raise
    _write_atomically(path, json.dumps(request, indent=2) + "\n")
    log.info("Wrote the ECS task definition", path=str(path), image=result.digest_ref)
    return path


def cmd_rebase(args, engine_factory) -> dict:
    from builder.ship.rebaser import rebase_refs
    signer = None
    if args.sign_key:
        from builder.ship.sign import load_signer
        signer = load_signer(args.sign_key)
    outcomes = rebase_refs(args.refs, args.base, auth=registry_auth(args), dry_run=args.dry_run, signer=signer,
                           platform=platform_of(args))
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
    from builder.build.base import BASE_NAME, build_base, push_base
    from builder.build.reuse import remote as remote_repo
    from builder.core.errors import PackageValidationError
    if args.push and not args.registry:  # (the command line says it first, exit 2; this is for other callers)
        raise PackageValidationError("--push needs --registry to know where to push", field="--registry",
                                     hint="Add --registry HOST[:PORT]/PREFIX.")
    from builder.core.defaults import base_image_for
    from builder.core.platforms import host_platform, parse_platforms
    from builder.core.refs import check_image_ref
    several = parse_platforms(args.platform) if args.platform else ()
    if len(several) > 1:  # each platform's base, and with --push one index over them
        from builder.cli.multiarch import base_platforms
        return base_platforms(args, several, engine_factory(), registry_auth(args))
    platform = several[0] if several else None
    tag = check_image_ref(args.tag, "--tag") if args.tag else base_image_for(args.python, platform)
    if args.push and remote_repo(f"{args.registry.rstrip('/')}/{BASE_NAME}"):  # before the build, as for build
        from builder.ship.preflight import check_push
        check_push(f"{args.registry.rstrip('/')}/{BASE_NAME}", auth=registry_auth(args))
    engine = engine_factory()
    image_id = build_base(engine, python=args.python, from_image=args.from_image, tag=tag,
                          index_url=args.index_url, ca_bundle=args.ca_bundle, platform=platform)
    pinned = push_base(engine, image_id, registry=args.registry, python=args.python,
                       auth=registry_auth(args), platform=platform) if args.push else None
    if not args.json:
        print(f"{tag} {image_id}" + (f"\n{pinned}" if pinned else ""))
    return {"ok": True, "image": tag, "image_id": image_id, "digest_ref": pinned,
            "platform": platform or host_platform()}


def cmd_doctor(args, engine_factory) -> dict:
    from builder.build.doctor import render, run_doctor
    from builder.core.defaults import base_image_for
    from builder.core.errors import SandboxError
    engine = engine_factory()
    base = args.base_image or base_image_for(args.python)
    engine.require_image(base, hint=f"Run `agent-image base --python {args.python}` and retry.")
    report = run_doctor(engine, base_image=base, targets=args.target or None)
    if not args.json:
        sys.stdout.write(render(report))
    if not report["ok"]:
        reached = [c["target"] for c in report["checks"] if c["reached"] != c["expected"]]
        err = SandboxError(f"a build step on this engine is not confined to the index proxy: {', '.join(reached)}",
                           hint="Do not build on this runner until doctor passes: unset "
                                "AGENT_IMAGE_TEST_HOST_NETWORK if set, and read agent-image's docs/security.md, "
                                "'What a build can reach' and 'Doctor', for what the sandbox needs from the engine.")
        err.result = report
        raise err
    return report


def cmd_test(args, engine_factory) -> dict:
    from builder.testing.facts import json_option
    from builder.testing.smoke import one_line, run_smoke
    payload = json_option(args.invoke, "--invoke")
    expect = json_option(args.expect, "--expect", want_object=True)
    if args.engine:  # testcontainers reads the engine's address from the environment
        os.environ["DOCKER_HOST"] = args.engine
    report = run_smoke(args.source, payload=payload, expect=expect, env=_pairs(args.env, "--env"),
                       secrets=_pairs(args.secret, "--secret"), start_timeout=args.start_timeout,
                       build_options={"index_url": args.index_url})
    if not args.json:
        print(one_line(report))
    return report


COMMANDS = {"build": cmd_build, "base": cmd_base, "pull": cmd_pull, "verify": cmd_verify, "run": cmd_run, "doctor": cmd_doctor,
            "ecs-task-def": cmd_ecs_task_def, "rebase": cmd_rebase,
            "test": cmd_test, "prune": lambda args, engine_factory: _prune(args, engine_factory)}


def _prune(args, engine_factory) -> dict:
    from builder.cli.pruning import cmd_prune
    return cmd_prune(args, engine_factory)
