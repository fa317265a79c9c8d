#!/usr/bin/env bash
# Fresh machine to a running example agent: set-up, build, run, ask it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PORT=${PORT:-18080}
echo "== build examples/hello-agent" >&2
.venv/bin/agent-image build examples/hello-agent --expect-name hello-agent --expect-version 1.0.0
echo "== run it on 127.0.0.1:$PORT" >&2
docker rm -f hello-agent-demo >/dev/null 2>&1 || true
url=$(.venv/bin/agent-image run agents/hello-agent:1.0.0 --port "$PORT" --name hello-agent-demo 2>/dev/null)
echo "GET  $url/health  -> $(curl -s "$url/health")"
echo "POST $url/invoke  -> $(curl -s -X POST "$url/invoke" -H 'Content-Type: application/json' -d '{"name": "newcomer"}')"
echo "(the agent keeps running as container hello-agent-demo: docker rm -f hello-agent-demo)"
