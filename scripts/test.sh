#!/usr/bin/env bash
# The whole test suite against a real engine, registry and index (set-up first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pytest -q "$@"
