"""Responses of the index proxy, and the tee that sends a file to the build while it downloads.

pip fetches one file at a time: if the proxy first downloaded a whole file
and only then sent it, every download and its resend over the sandbox's
loopback would add up. The tee writes each piece from upstream to the cache's
temp file and sends it on at once, holding back only the last piece until the
whole file is checked (size, cap, the page's sha256). So a client never gets
a body that looks complete unless it is the file that gets cached: a failure
after the first byte closes the connection mid-body, short of the announced
Content-Length or without chunked encoding's last chunk, which pip and uv
report as an error (a close-delimited body could not say so, hence chunked
when upstream gives no usable length).
"""

from __future__ import annotations

import hashlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import BinaryIO, Callable

from builder.build.proxy.upstream import Body, Unreachable

RESUMES = 2                       # Range requests after upstream cut a file short
STARTED = "_agent_image_started"  # handler attribute: this request's response is under way


def begin(h: BaseHTTPRequestHandler) -> None:
    """A new request on H's connection (a keep-alive connection reuses the handler)."""
    setattr(h, STARTED, False)


def send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "text/plain") -> None:
    if getattr(h, STARTED, False):
        # headers and some bytes went out already: the one honest answer left is
        # to cut the body short, which the client reads as a failed download
        h.close_connection = True
        return
    try:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
    except OSError:  # the client went away
        pass


def send_file(h: BaseHTTPRequestHandler, blob: Path, head: bool = False) -> None:
    try:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(blob.stat().st_size))
        h.end_headers()
        if head:
            return
        with open(blob, "rb") as fh:
            while chunk := fh.read(1 << 16):
                h.wfile.write(chunk)
    except (BrokenPipeError, ConnectionResetError):
        # the client hung up (uv drops a download it no longer needs): not the index's
        # failure, so neither "index unreachable" in the log nor in the build's stats
        h.close_connection = True


class Tee:
    """One upstream BODY into OUT (the cache's temp file) and, as it comes, to the client of H.

    Use: pump() (raises on a failed, over-cap or short download), check the
    digest and store the file, then finish(); False means nothing was sent yet
    and the caller sends the stored file itself (a HEAD, a file of one piece)."""

    def __init__(self, h: BaseHTTPRequestHandler, body: Body, out: BinaryIO, *, stream: bool) -> None:
        self.h, self.body, self.out = h, body, out
        self.chunked = body.length is None
        # chunked needs HTTP/1.1; an HTTP/1.0 client without a length gets the stored file
        self.stream = stream and (not self.chunked or h.request_version == "HTTP/1.1")
        self.digest = hashlib.sha256()
        self.size = 0
        self._held = b""

    def pump(self, resume: Callable[[int], Body] | None = None) -> None:
        """RESUME(offset): the rest of the file from OFFSET. Once bytes went to the client, a
        cut upstream can no longer be a 502 that pip retries, so the tee asks for the rest
        (a Range request; only from a server that answers 206 with that range)."""
        body, total = self.body, self.body.length
        try:
            for attempt in range(RESUMES + 1):
                try:
                    self._copy(body)
                    break
                except Unreachable:
                    if resume is None or total is None or attempt == RESUMES:
                        raise
                if body is not self.body:  # the caller closes the first one
                    body.close()
                body = resume(self.size)
                if body.status != 206 or not body.content_range.startswith(f"bytes {self.size}-{total - 1}/") \
                        or body.length != total - self.size:
                    raise Unreachable(f"upstream cut the file at {self.size} of {total} bytes and cannot resume")
        finally:
            if body is not self.body:
                body.close()
        self.out.flush()
        if total is not None and self.size != total:
            raise Unreachable(f"upstream sent {self.size} of {total} bytes")

    def _copy(self, body: Body) -> None:
        for chunk in body.chunks():
            self.digest.update(chunk)
            self.size += len(chunk)
            self.out.write(chunk)
            if self.stream:
                if self._held:
                    self._emit(self._held)
                self._held = chunk

    def finish(self) -> bool:
        if not getattr(self.h, STARTED, False):
            return False
        if self.stream:
            self._emit(self._held)
            self._emit(b"")
        return True

    def _emit(self, data: bytes) -> None:
        h = self.h
        try:
            if not getattr(h, STARTED, False):
                h.send_response(200)
                h.send_header("Content-Type", "application/octet-stream")
                if self.chunked:
                    h.send_header("Transfer-Encoding", "chunked")
                else:
                    h.send_header("Content-Length", str(self.body.length))
                h.end_headers()
                setattr(h, STARTED, True)
            if self.chunked:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))  # b"" is the last chunk
            elif data:
                h.wfile.write(data)
        except OSError:
            # the client hung up: finish the download anyway, so a retry is a cache hit
            self.stream = False
            h.close_connection = True
            setattr(h, STARTED, True)
