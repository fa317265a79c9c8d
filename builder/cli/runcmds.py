"""pull, verify and run: an agent image from the registry to a container answering /health."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import structlog

from builder.cli.args import platform_of, registry_auth
from builder.core.errors import RunError

log = structlog.get_logger("agent_image")


def verified_ref(args, ref: str, expect_name=None, expect_version=None) -> tuple[str, dict | None]:
    """--verify-key: (the verified digest reference to use instead of REF, what was verified);
    without it (REF, None). Before the engine is asked anything."""
    if not getattr(args, "verify_key", None):
        return ref, None
    from builder.ship.verify import verify_image
    verified = verify_image(ref, args.verify_key, auth=registry_auth(args), expect_name=expect_name,
                            expect_version=expect_version)
    return verified["digest_ref"], verified


def cmd_verify(args, engine_factory) -> dict:
    from builder.ship.verify import verify_image
    out = verify_image(args.ref, args.key, auth=registry_auth(args), expect_name=args.expect_name,
                       expect_version=args.expect_version)
    if not args.json:
        print(f"{out['digest_ref']}: signature verified (agent {out['agent']['name']} {out['agent']['version']}; "
              f"sbom {out['sbom'] or '-'}; provenance {out['provenance'] or '-'})")
    return out


def cmd_pull(args, engine_factory) -> dict:
    from builder.ship.pushpull import pull_image
    ref, verified = verified_ref(args, args.ref, args.expect_name, args.expect_version)
    image_id = pull_image(engine_factory(), ref, expect_name=args.expect_name,
                          expect_version=args.expect_version, auth=registry_auth(args), platform=platform_of(args))
    if not args.json:
        print(image_id)
    return {"ok": True, "image": args.ref, "image_id": image_id,
            **({"verified": verified} if verified else {})}


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
    ref, verified = verified_ref(args, args.ref)
    engine = engine_factory()
    if verified and engine.image(ref) is None:  # the verified digest, never what a local tag says
        from builder.ship.pushpull import pull_image
        pull_image(engine, ref, auth=registry_auth(args))
    env = dict(kv.split("=", 1) for kv in args.env if "=" in kv)
    env.setdefault("REST_PORT", "8080")
    image = ref
    if platform_of(args):  # that platform's image: the engine's, or pulled (an arm64 one runs under QEMU)
        from builder.ship.pushpull import image_for_platform
        image = image_for_platform(engine, ref, platform_of(args)).id
    cid = engine.run(image, env=env, ports={int(env["REST_PORT"]): args.port}, name=args.name)
    host = engine.published_at()[1]  # a remote engine's port is on its host, not this one
    url = f"http://{host}:{args.port}{('/' + env.get('BASE_PATH', '/').strip('/')).rstrip('/')}"
    try:
        took = wait_healthy(f"{url}/health", args.wait, lambda: engine.container_state(cid).get("Running", False))
    except RunError as err:
        err.log_tail = engine.logs(cid).splitlines()[-20:]
        engine.stop(cid)
        raise
    log.info("Agent is serving", url=url, container=cid[:12], ready_s=round(took, 3))
    if not args.json:
        print(url)
    return {"ok": True, "url": url, "container": cid, "ready_s": round(took, 3),
            **({"verified": verified} if verified else {})}
