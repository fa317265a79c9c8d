"""HTTP servers in this process, on loopback: ``Running`` (any handler class, in a
thread) and ``Server`` (an upstream answering from a route table, recording what
it was asked)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# the body of a file an upstream serves when a test names none
WHEEL = b"PK-fake-wheel-" * 100
SHA = hashlib.sha256(WHEEL).hexdigest()


class Running:
    """HANDLER served by a ThreadingHTTPServer on ADDRESS (port PORT, 0: any free one) in a
    daemon thread until close(); also a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], address: str = "127.0.0.1", port: int = 0,
                 request_queue_size: int | None = None) -> None:
        attrs = {"daemon_threads": True}
        if request_queue_size is not None:
            attrs["request_queue_size"] = request_queue_size
        self.httpd = type("Server", (ThreadingHTTPServer,), attrs)((address, port), handler)
        self.address, self.port = address, self.httpd.server_address[1]
        self.host = f"{address}:{self.port}"
        self.base = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Server:
    """A real HTTP server: ROUTES {path: (status, headers, body)}; SEEN [(method, path, auth)]."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, head: bool) -> None:
                srv.seen.append((self.command, self.path, self.headers.get("Authorization")))
                status, headers, body = srv.routes.get(self.path, (404, {}, b"nope"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if headers.get("Transfer-Encoding") == "chunked":
                    for i in range(0, len(body), 1000):
                        part = body[i:i + 1000]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._answer(False)

            def do_HEAD(self):  # noqa: N802
                self._answer(True)

            def log_message(self, *a):
                pass

        self.running = Running(H, address)
        self.port, self.base = self.running.port, self.running.base

    def page(self, path: str, hrefs: list[str]) -> None:
        body = "".join(f'<a href="{h}">{h.rsplit("/", 1)[-1]}</a>\n' for h in hrefs)
        self.routes[path] = (200, {"Content-Type": "text/html"}, f"<html><body>{body}</body></html>".encode())

    def file(self, path: str, body: bytes = WHEEL, **headers) -> None:
        self.routes[path] = (200, headers, body)

    def redirect(self, path: str, to: str, code: int = 302) -> None:
        self.routes[path] = (code, {"Location": to}, b"")

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.seen]

    def close(self) -> None:
        self.running.close()
