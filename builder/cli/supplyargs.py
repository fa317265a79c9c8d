"""The supply-chain options: `verify`, `pull`, --sign-key (build, rebase), --verify-key (pull, run)."""

from __future__ import annotations

from builder.cli.platformopts import add_platform

KEYS = "a PEM file or awskms:///ARN"


def add_sign_key(p, what: str) -> None:
    p.add_argument("--sign-key", metavar="KEY", help=f"{what}; KEY: {KEYS} (EC P-256; docs/supply-chain.md)")


def add_verify_key(p, extra: str = "") -> None:
    p.add_argument("--verify-key", metavar="KEY", help="refuse (exit 64), before pulling or running anything, an "
                   f"image not signed with KEY for its repository (a PEM public key or awskms:///ARN){extra}")


def add_verify(sub, add_common) -> None:
    v = sub.add_parser("verify", help="verify an image's signature, SBOM and provenance in the registry (exit 0, "
                                      "else 64)", description="Check that REF's manifest is signed with KEY for "
                                      "its repository, that its agent labels are the signed ones, and that the "
                                      "signed SBOM and provenance are attached. Reads the registry only.")
    v.add_argument("ref", help="REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...")
    v.add_argument("--key", required=True, metavar="KEY", help="the public key (PEM, e.g. cosign.pub) or awskms:///ARN")
    v.add_argument("--expect-name", help="also fail unless the signature names this agent")
    v.add_argument("--expect-version", help="also fail unless the signature names this version")
    v.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    add_common(v)


def add_pull(sub, add_common) -> None:
    pull = sub.add_parser("pull", help="pull an agent image and verify its labels")
    pull.add_argument("ref", help="REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...")
    pull.add_argument("--expect-name", help="fail unless io.pixell.agent.name matches")
    pull.add_argument("--expect-version", help="fail unless io.pixell.agent.version matches")
    add_verify_key(pull)
    pull.add_argument("--registry-username", help="registry user (password from AGENT_IMAGE_REGISTRY_PASSWORD)")
    add_platform(pull, "pull")
    add_common(pull)
