#!/usr/bin/env bash
# The test suite, in two tiers (tests/unit, tests/integration):
#   bash scripts/test.sh [PYTEST-ARGS...]              everything, as CI runs it: scripts/setup.sh first
#                                                      (engine, registry, base images), then the unit tier,
#                                                      then the integration tier
#   bash scripts/test.sh unit [PYTEST-ARGS...]         the unit tier alone: no engine, registry, index or root;
#                                                      runs no set-up step except making .venv if it is missing
#   bash scripts/test.sh integration [PYTEST-ARGS...]  the integration tier alone, after scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
case "${1:-}" in
  -h|--help) usage ;;
  unit)
    shift
    if [ ! -x .venv/bin/pytest ]; then
      echo "[test] creating .venv with the test extras (no engine needed for the unit tier)" >&2
      python3 -m venv .venv
      .venv/bin/pip install -q --upgrade pip >/dev/null
      .venv/bin/pip install -q -e '.[test,codeartifact]'
    fi
    exec .venv/bin/pytest -q tests/unit "$@" ;;
  integration)
    shift
    bash scripts/setup.sh
    exec .venv/bin/pytest -q tests/integration "$@" ;;
  *)
    bash scripts/setup.sh
    exec .venv/bin/pytest -q "$@" ;;
esac
