"""An image as the pipeline sees it: a neutral value the engine seam returns
(repo2docker's ``Image``), read from the engine's inspect document."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Image:
    id: str
    tags: tuple[str, ...]
    labels: dict[str, str]
    size: int
    layers: tuple[str, ...]
    digests: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    exposed_ports: tuple[str, ...] = ()    # "8080/tcp"
    healthcheck: dict | None = None        # Docker's {"Test", "Interval", ...}; durations in ns
    architecture: str = ""
    os: str = ""
    volumes: tuple[str, ...] = ()          # the image's VOLUME paths

    @property
    def environment(self) -> dict[str, str]:
        """ENV as a mapping (Docker lists it as KEY=VALUE strings)."""
        return dict(e.split("=", 1) for e in self.env if "=" in e)


def image_from(attrs: dict) -> Image:
    cfg = attrs.get("Config") or {}
    return Image(
        id=attrs["Id"],
        tags=tuple(attrs.get("RepoTags") or ()),
        labels=dict(cfg.get("Labels") or {}),
        size=int(attrs.get("Size") or 0),
        layers=tuple((attrs.get("RootFS") or {}).get("Layers") or ()),
        digests=tuple(attrs.get("RepoDigests") or ()),
        env=tuple(cfg.get("Env") or ()),
        user=cfg.get("User") or "",
        exposed_ports=tuple(sorted(cfg.get("ExposedPorts") or {})),
        healthcheck=dict(cfg["Healthcheck"]) if cfg.get("Healthcheck") else None,
        architecture=attrs.get("Architecture") or "",
        os=attrs.get("Os") or "",
        volumes=tuple(sorted(cfg.get("Volumes") or {})),
    )
