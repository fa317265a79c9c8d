"""HEALTHCHECK for agent images: exit 0 when /health answers 200."""
import os
import sys
import urllib.request

base = os.environ.get("BASE_PATH", "/").rstrip("/")
url = f"http://127.0.0.1:{os.environ.get('REST_PORT', '8080')}{base}/health"
try:
    with urllib.request.urlopen(url, timeout=2) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception:
    sys.exit(1)
