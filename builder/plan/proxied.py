"""Requirement lines rewritten to reach the index proxy: what pip in the build
sees of ``--allow-index-host`` indexes and direct references. Pure."""

from __future__ import annotations

import base64
import shlex
from urllib.parse import quote, unquote, urlsplit

from builder.core.errors import IndexPolicyError, PackageLoadError
from builder.core.urls import Disagreement, read_url
from builder.package.piplines import (APP, BESIDE_INDEX_URL, INDEX_URL_OPTIONS, Line, logical_spans, parse_line,
                                      pip_path, requirement_spans, requirement_targets, under_app, values)

PIP_INDEX_HOST = "agent-image-index.invalid"   # what pip in the build sees (dockerfile.PIP_INDEX_URL)


def proxy_url(url: str, *, find_links: bool = False) -> str:
    """The in-build URL for an index (or find-links page) on an allowed host."""
    token = base64.urlsafe_b64encode(url.encode()).decode()
    return f"http://{PIP_INDEX_HOST}/{'_l' if find_links else '_x'}/{token}/"


def direct_name(url: str) -> str:
    """The file name pip gives a direct reference's URL (its last path segment, a trailing / ignored)."""
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


def direct_url(url: str) -> str:
    """The in-build URL for a direct reference (``name @ URL``) to a file on an allowed host.
    The token is the URL as written, fragment and all: the proxy serves only URLs the
    requirements name (Split.direct), and checks the #sha256= it gives."""
    token = base64.urlsafe_b64encode(url.encode()).decode()
    fragment = urlsplit(url).fragment
    return f"http://{PIP_INDEX_HOST}/_d/{token}/{quote(direct_name(url), safe='')}" + (f"#{fragment}" if fragment else "")


def proxied_requirements(text: str, allowed_hosts: frozenset[str]) -> str:
    """requirements TEXT with each index, find-links and direct-reference URL on an allowed
    host turned into its in-build proxy URL (the build reaches nothing else).

    Read as pip reads it (its line joining and option table: the alias --pypi-url, a
    quoted value and a continued line are the same option to it). A rewritten line
    keeps its number (pip's errors name it); other lines are unchanged. Lines naming a
    host that is not allowed were refused before (requirements.check_line)."""
    allowed = {h.lower() for h in allowed_hosts}
    if not allowed:
        return text
    physical = text.splitlines(keepends=True)
    for line, end in logical_spans(text):
        new = _proxied_line(line, allowed)
        if new is not None:  # the continuation's other lines stay, empty
            physical[line.number - 1:end] = [new + "\n"] + ["\n"] * (end - line.number)
    return "".join(physical)


def _proxied_line(line: Line, allowed: set[str]) -> str | None:
    """LINE with its allowed hosts' URLs proxied, or None when it has none to proxy."""
    try:
        parsed = parse_line(line)
    except PackageLoadError:  # refused before (check_line); nothing to rewrite
        return None

    def ours(url: str) -> bool:  # (the host the proxy will connect to: builder/core/urls.py)
        try:
            return read_url(url).host in allowed
        except Disagreement:
            return False

    if parsed.args:  # a requirement: its direct reference, at the very place pip reads it (check_line let one be)
        spans = [(a, b) for a, b in requirement_spans(parsed.args) if ours(parsed.args[a:b])]
        if not spans:
            return None
        start, end = spans[0]
        url = direct_url(line.text[start:end])
        text = line.text[:start] + url + line.text[end:]  # (ARGS is the line's start: pip's break_args_options)
        again = parse_line(Line(line.file, line.number, text)).args
        if len(spans) > 1 or requirement_targets(again) != [url] or not under_app(pip_path(again) or str(APP)):
            raise IndexPolicyError(f"{line.where}: '{line.text}' reads differently once its URL goes through the "
                                   "build's proxy", line=line.number, requirement=line.text, field=line.file,
                                   hint="Write the line as 'name @ URL'.")
        return text
    urls = [(dest, v) for dest in INDEX_URL_OPTIONS for v in values(parsed.opts.get(dest))]
    if not any(ours(v) for _, v in urls) or set(parsed.opts) - set(INDEX_URL_OPTIONS) - set(BESIDE_INDEX_URL):
        return None  # (other options beside an index URL: refused before, check_line)
    words = [w for dest, v in urls for w in (INDEX_URL_OPTIONS[dest],
                                             proxy_url(v, find_links=dest == "find_links") if ours(v) else v)]
    words += [w for dest in BESIDE_INDEX_URL if dest in parsed.opts
              for w in ([BESIDE_INDEX_URL[dest]] if parsed.opts[dest] is True else
                        [x for v in values(parsed.opts[dest]) for x in (BESIDE_INDEX_URL[dest], v)])]
    return " ".join(shlex.quote(w) for w in words)

