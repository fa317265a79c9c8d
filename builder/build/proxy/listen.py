"""Where the index proxy (server.py) listens: the sandbox's unix socket, or the builder's loopback."""

from __future__ import annotations

import os
import socketserver
from http.server import ThreadingHTTPServer


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 128  # uv opens ~50 connections at once

    def server_close(self) -> None:
        """And its socket file: a build's second proxy on the same sandbox (a near twin's step, then
        the whole dependency image: builder/build/agentbuild.py) binds the same path."""
        super().server_close()
        if os.path.exists(self.server_address):
            os.unlink(self.server_address)


class TCPHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # the default backlog of 5 overflows when uv opens ~50 connections at once,
    # and a dropped SYN is retried only after a second
    request_queue_size = 128
