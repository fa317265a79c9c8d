"""The one seam that knows the container engine (repo2docker's ContainerEngine).

``Engine`` offers keyword-only verbs (build, image, tag, push, pull, run) and returns neutral values
(``Image``, ``BuildOutcome``); nothing else imports docker-py. Engine failures become ``EngineError``
or ``RegistryError`` here, once (their words, and the pure parts: builder/build/engineparts.py).
"""

from __future__ import annotations

import io
import os
import threading
import time
import urllib.parse
from typing import Any, Callable

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.api.client import APIClient

from builder.build.engineparts import (SSH_HINT, engine_error, first_file, inventory_rows, pull_error,
                                      registry_hint, shutdown_response)
from builder.build.image import Image, image_from
from builder.build.stream import BuildOutcome, consume, rejoin_lines
from builder.core.errors import (BaseImageMissingError, BuildInterruptedError, BuildTimeoutError, EngineError,
                                 RegistryError)
from builder.core.labels import RUN_LABEL
from builder.core.redact import redact
from builder.core.refs import split_ref

DEFAULT_TIMEOUT = 300.0
# what a cut or dropped engine connection raises mid-stream
_STREAM_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException,
                  urllib3.exceptions.HTTPError, OSError)


class _CancellableAPIClient(APIClient):
    """APIClient that remembers each thread's streaming response: docker-py's build generator cannot be
    closed from another thread, but its socket can be shut down, which makes the engine cancel the build."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._local = threading.local()

    def _stream_helper(self, response, decode=False):  # noqa: D401 (docker-py override)
        self._local.response = response
        return super()._stream_helper(response, decode=decode)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: D401 (requests override)
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str):
            # DOCKER_CERT_PATH's CA: requests would let REQUESTS_CA_BUNDLE (set on many CI runners) replace it
            settings["verify"] = self.verify
        return settings

    def current_response(self):
        return getattr(self._local, "response", None)


class Engine:
    """The container engine, through docker-py. One instance per process is fine."""

    def __init__(self, base_url: str | None = None, *, api_timeout: float = 120.0) -> None:
        # no connection yet (version="auto" asks the daemon): the checks before a build need no engine
        self._base_url, self._api_timeout = base_url, api_timeout
        self._api: _CancellableAPIClient | None = None
        self._connecting = threading.Lock()

    def sibling(self) -> "Engine":
        """The same engine over its own connection: for work beside a call under way (a push)."""
        return Engine(self._base_url, api_timeout=self._api_timeout)

    @property
    def api(self) -> _CancellableAPIClient:
        """The docker-py client, connected on first use."""
        with self._connecting:
            if self._api is None:
                try:
                    kwargs = docker.utils.kwargs_from_env()
                    if self._base_url:
                        kwargs["base_url"] = self._base_url
                    kwargs.setdefault("base_url", "unix:///var/run/docker.sock")
                    if str(kwargs["base_url"]).startswith("ssh://"):
                        raise EngineError(f"{kwargs['base_url']}: ssh:// engines are not supported", hint=SSH_HINT)
                    self._api = _CancellableAPIClient(version="auto", timeout=self._api_timeout, **kwargs)
                except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                    raise engine_error(exc, "connecting") from None
            return self._api

    # -- facts ------------------------------------------------------------------
    def ping(self) -> str:
        try:
            return self.api.version().get("Version", "?")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, "checking it") from None

    def image(self, ref: str) -> Image | None:
        try:
            return image_from(self.api.inspect_image(ref))
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 404:
                return None
            raise engine_error(exc, f"inspecting {ref}") from None
        except requests.exceptions.RequestException as exc:
            raise engine_error(exc, f"inspecting {ref}") from None

    def require_image(self, ref: str, hint: str) -> Image:
        img = self.image(ref)
        if img is None:
            raise BaseImageMissingError(f"base image {ref} is not present in the engine", hint=hint)
        return img

    # -- build ------------------------------------------------------------------
    def build(
        self,
        *,
        context: bytes,
        buildargs: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cache_from: list[str] | None = None,
        network_mode: str = "host",
        nocache: bool = False,
        on_line: Callable[[str], None] | None = None,
        on_step: Callable[[int, int, str], None] | None = None,
    ) -> BuildOutcome:
        """Build the tar CONTEXT (Dockerfile at its root) without tagging: tagging is the caller's move,
        after success, so a failed or cancelled build never moves a tag. At the wall-clock TIMEOUT the
        stream's socket is cut, which makes the engine cancel the build and remove its container; then
        ``BuildTimeoutError`` is raised. Ctrl-C does the same and raises ``BuildInterruptedError``."""
        outcome = BuildOutcome(image_id=None)
        started = time.monotonic()
        fired = threading.Event()
        state: dict[str, Any] = {}

        def cut() -> None:
            fired.set()
            resp = state.get("response")
            if resp is not None:
                shutdown_response(resp)

        timer = threading.Timer(timeout, cut)
        timer.daemon = True
        timer.start()
        try:
            stream = self.api.build(
                fileobj=io.BytesIO(context), custom_context=True, encoding=None, rm=True, forcerm=True,
                buildargs=buildargs or {}, labels=labels or {}, network_mode=network_mode,
                cache_from=cache_from or None, nocache=nocache, decode=True,
            )
            state["response"] = self.api.current_response()
            if fired.is_set() and state["response"] is not None:
                shutdown_response(state["response"])
            for chunk in rejoin_lines(stream):
                consume(chunk, outcome, on_line, on_step)
        except KeyboardInterrupt:
            cut()
            self._settle()
            raise BuildInterruptedError("the build was interrupted and cancelled; no tag was changed",
                                        log_tail=outcome.lines[-20:]) from None
        except _STREAM_ERRORS as exc:
            if not fired.is_set():
                if isinstance(exc, docker.errors.APIError) and exc.status_code and exc.status_code < 500:
                    outcome.error = redact(exc.explanation or str(exc))
                else:
                    raise EngineError(
                        f"the connection to the Docker engine dropped mid-build: {redact(str(exc))[:200]}",
                        hint="Check that dockerd is running (it may have restarted), then rerun the build.",
                        log_tail=outcome.lines[-20:]) from None
        finally:
            timer.cancel()
        outcome.duration_s = time.monotonic() - started
        if fired.is_set():
            self._settle()
            raise BuildTimeoutError(
                f"the build timed out after {timeout:g}s and was cancelled; no tag was changed",
                hint="Check for very large dependencies or a slow index, or raise --timeout.",
                log_tail=outcome.lines[-20:])
        if outcome.image_id is None and outcome.error is None:
            raise EngineError("the Docker engine ended the build without a result (did dockerd restart?)",
                              hint="Rerun the build once the engine is up.", log_tail=outcome.lines[-20:])
        return outcome

    @staticmethod
    def _settle() -> None:
        # the engine cancels asynchronously once the stream is cut; give it a moment
        time.sleep(0.5)

    def tag(self, image_id: str, ref: str) -> None:
        repo, tag = split_ref(ref)
        try:
            self.api.tag(image_id, repo, tag, force=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, f"tagging {ref}") from None

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        try:
            self.api.remove_image(ref, force=force, noprune=False)
        except docker.errors.ImageNotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, f"removing {ref}") from None

    def push(self, ref: str, *, auth: dict | None = None, on_line: Callable[[str], None] | None = None) -> str:
        """Push REF; return the manifest digest. Scans the stream: docker-py
        does not raise on an error chunk sent with HTTP 200 (docker-py #3161)."""
        repo, tag = split_ref(ref)
        digest = None
        try:
            for chunk in self.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
                if "error" in chunk:
                    raise RegistryError(f"pushing {ref} failed: {redact(chunk['error'])}",
                                        hint=registry_hint(chunk["error"]))
                aux = chunk.get("aux") or {}
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = aux["Digest"]
                if on_line and chunk.get("status"):
                    on_line(f"{chunk.get('id', '')} {chunk['status']}".strip())
        except docker.errors.APIError as exc:
            raise RegistryError(f"pushing {ref} failed: {redact(exc.explanation or str(exc))}",
                                hint=registry_hint(str(exc))) from None
        except requests.exceptions.RequestException as exc:
            raise engine_error(exc, f"pushing {ref}") from None
        if not digest:
            raise RegistryError(f"pushing {ref} ended without a digest", hint="Check the registry's logs.")
        return digest

    def pull(self, ref: str, *, auth: dict | None = None, platform: str | None = None) -> Image:
        """Pull REF; PLATFORM (linux/arm64) picks that platform's manifest from an index,
        and a registry without it is a PlatformMissingError."""
        repo, tag = split_ref(ref)
        try:
            for chunk in self.api.pull(repo, tag=tag, stream=True, decode=True, auth_config=auth, platform=platform):
                if "error" in chunk:
                    raise pull_error(ref, chunk["error"], platform)
        except docker.errors.APIError as exc:
            raise pull_error(ref, exc.explanation or str(exc), platform) from None
        except requests.exceptions.RequestException as exc:
            raise engine_error(exc, f"pulling {ref}") from None
        img = self.image(ref)
        if img is None:
            raise RegistryError(f"pulled {ref} but the engine does not show it")
        return img

    # -- containers ------------------------------------------------------------------
    def published_at(self) -> tuple[str, str]:
        """(where ports are published, where this builder reaches them): loopback, or a tcp:// engine's host."""
        url = self._base_url or os.environ.get("DOCKER_HOST") or ""
        host = urllib.parse.urlsplit(url.replace("tcp://", "http://", 1)).hostname if "://" in url else None
        return ("0.0.0.0", host or "127.0.0.1") if url.startswith(("tcp://", "http://", "https://")) else (
            "127.0.0.1", "127.0.0.1")

    def run(self, image: str, *, env: dict[str, str] | None = None, ports: dict[int, int] | None = None,
            name: str | None = None, network_mode: str | None = None) -> str:
        try:
            host_config = self.api.create_host_config(
                port_bindings={p: (self.published_at()[0], hp) for p, hp in (ports or {}).items()},
                network_mode=network_mode)
            container = self.api.create_container(
                image, environment=env or {}, ports=list((ports or {}).keys()), name=name,
                host_config=host_config, labels={RUN_LABEL: "1"})
            self.api.start(container["Id"])
            return container["Id"]
        except docker.errors.APIError as exc:
            raise EngineError(f"starting {image} failed: {redact(exc.explanation or str(exc))}") from None

    def start_attached(self, image: str, *, command: list[str], labels: dict[str, str]) -> tuple[str, Any, Any]:
        """IMAGE running COMMAND: ``--network none``, read-only, no capabilities, no mounts, auto-removed,
        stdin/stdout attached before it starts (any DOCKER_HOST). Returns (id, the attach socket: raw stdin
        in, docker's multiplexed stdout out, and a handle to keep while it is used)."""
        try:
            host_config = self.api.create_host_config(
                network_mode="none", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                auto_remove=True, pids_limit=1024)
            config = self.api.create_container_config(
                image, command[1:], entrypoint=command[:1], user="0:0", labels=labels, host_config=host_config,
                stdin_open=True, tty=False, healthcheck={"test": ["NONE"]})
            config["StdinOnce"] = True  # (create_container does not pass it on)
            cid = self.api.create_container_from_config(config)["Id"]
            try:
                sock = self.api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 0, "stream": 1})
                self.api.start(cid)
            except BaseException:
                self.api.remove_container(cid, force=True)
                raise
            # docker-py hands back a SocketIO for http/unix; the socket under it is what select() needs
            return cid, getattr(sock, "_sock", sock), sock
        except docker.errors.APIError as exc:
            raise EngineError(f"starting a build sandbox from {image} failed: "
                              f"{redact(exc.explanation or str(exc))}") from None
        except requests.exceptions.RequestException as exc:
            raise engine_error(exc, "starting a build sandbox") from None

    def containers(self, *, label: str) -> list[dict]:
        """Every container (running or not) carrying LABEL: [{"id", "labels", "running"}]."""
        try:
            found = self.api.containers(all=True, filters={"label": label})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, "listing containers") from None
        return [{"id": c["Id"], "labels": c.get("Labels") or {}, "running": c.get("State") == "running"}
                for c in found]

    def inventory(self) -> tuple[list[dict], set[str]]:
        """Every image, intermediate ones too ({"id", "parent", "size", "created", "labels", "tags"}),
        and the ids of the images any container (running or not) uses. Two API calls."""
        try:
            images, containers = self.api.images(all=True), self.api.containers(all=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, "listing images") from None
        return inventory_rows(images, containers)

    def kill(self, container_id: str) -> None:
        """SIGKILL; returns once sent (an auto-removed container then goes by itself)."""
        try:
            self.api.kill(container_id)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone, or not running: either way it is on its way out
                raise engine_error(exc, f"stopping container {container_id[:12]}") from None
        except requests.exceptions.RequestException as exc:
            raise engine_error(exc, f"stopping container {container_id[:12]}") from None

    def remove_container(self, container_id: str) -> None:
        """Kill and remove; gone already is fine."""
        try:
            self.api.remove_container(container_id, force=True, v=True)  # v: its anonymous /tmp volume too
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise engine_error(exc, f"removing container {container_id[:12]}") from None
        except requests.exceptions.RequestException as exc:
            raise engine_error(exc, f"removing container {container_id[:12]}") from None

    def run_once(self, image: str, command: list[str], *, timeout: float = 60.0, as_image_user: bool = False,
                 tmp_size: str | None = None) -> str:
        """Run COMMAND in IMAGE (no network) to completion; return its output; remove the container.

        as_image_user: as the image's USER, not root; tmp_size: as its ECS task runs it, a
        read-only root with a tmpfs /tmp of that size and no capabilities."""
        limits = dict(read_only=True, tmpfs={"/tmp": f"rw,size={tmp_size}"}, cap_drop=["ALL"],
                      security_opt=["no-new-privileges"]) if tmp_size else {}
        try:
            cid = self.api.create_container(image, command=command, entrypoint=[],
                                            user=None if as_image_user else "0", healthcheck={"test": ["NONE"]},
                                            host_config=self.api.create_host_config(network_mode="none", **limits))["Id"]
            try:
                self.api.start(cid)
                code = self.api.wait(cid, timeout=timeout).get("StatusCode")
                out = self.api.logs(cid).decode("utf-8", "replace")
            finally:
                self.api.remove_container(cid, force=True, v=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, f"running a command in {image}") from None
        if code != 0:
            raise EngineError(f"{command[0]} in {image} exited {code}: {redact(out)[-300:]}")
        return out

    def read_file(self, image: str, path: str, *, max_bytes: int = 1 << 20) -> bytes | None:
        return self.read_files(image, {path: max_bytes})[path]

    def read_files(self, image: str, caps: dict[str, int]) -> dict[str, bytes | None]:
        """Small files of IMAGE, {path: at most its cap} -> {path: bytes, None when it has none or a larger
        one}, from one created, never started container (nothing of the image runs; one container: ~40 ms)."""
        found: dict[str, bytes | None] = dict.fromkeys(caps)
        try:
            cid = self.api.create_container(image, command=["true"], entrypoint=[],
                                            host_config=self.api.create_host_config(network_mode="none"))["Id"]
            try:
                for path, cap in caps.items():
                    try:
                        stream, stat = self.api.get_archive(cid, path)
                        found[path] = None if int(stat.get("size") or 0) > cap else first_file(b"".join(stream), cap)
                    except docker.errors.NotFound:
                        pass
            finally:  # v: the anonymous volume an image's VOLUME gave it (agent images: /tmp)
                self.api.remove_container(cid, force=True, v=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_error(exc, f"reading {', '.join(caps)} from {image}") from None
        return found

    def logs(self, container_id: str, tail: int = 50) -> str:
        return self.api.logs(container_id, tail=tail).decode("utf-8", "replace")

    def stop(self, container_id: str, *, remove: bool = True, timeout: int = 10) -> None:
        try:
            self.api.stop(container_id, timeout=timeout)
            if remove:
                self.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass

    def container_state(self, container_id: str) -> dict:
        try:
            return self.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:  # an auto-removed container that exited
            return {"Running": False, "Status": "removed"}
