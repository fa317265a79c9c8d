"""Every reader of a requirement line reads it alike, or the line is refused.

The build's installers get each line as pip read it (piplines.written_as_read), so what
is refused here is what that rewrite cannot carry over: words pip's option parser drops
(uv installs them), options pip ignores on a requirement line, a short option joined to
its value (optparse keeps the '=', uv drops it), and words quoted, escaped or holding
characters the readers split on differently.
"""

from __future__ import annotations

import re

from builder.package.piplines import CONTROL, INDEX_URL_OPTIONS, PLAIN_WORD, REQUIREMENT_OPTIONS, Line, refuse, values

ATTACHED = re.compile(r"^-[A-Za-z].")  # a short option with its value joined on: '-e=./x', '-rfile.txt'
PATH_OR_URL_OPTIONS = ("editables", "requirements", "constraints", "trusted_hosts", *INDEX_URL_OPTIONS)


def check_readers_agree(line: Line, parsed) -> None:
    """What the build's installers read is the line as pip read it (piplines.written_as_read);
    refused here: what pip drops or splits in a way another reader (uv) would not."""
    joined = next((t for t in parsed.tokens if ATTACHED.match(t)), None)
    if joined is not None:  # optparse reads '-e=../x' as the path '=../x', uv as '../x'
        raise refuse(line, f"'{joined}' joins a short option and its value: pip reads '{joined[2:]}', uv may "
                           "read it without the '='", f"Write the option and its value apart ('{joined[:2]} VALUE').")
    odd = next((v for dest in PATH_OR_URL_OPTIONS for v in values(parsed.opts.get(dest)) if v.startswith("=")), None)
    if odd is not None:
        raise refuse(line, f"the value {odd!r} starts with '=': pip keeps it, uv would drop it",
                     "Write the value without the '='.")
    if parsed.stray:
        raise refuse(line, f"pip drops '{' '.join(parsed.stray)}' after the options, but uv would install it",
                     "Put each requirement on its own line.")
    if parsed.args:
        ignored = sorted(set(parsed.opts) - REQUIREMENT_OPTIONS)
        if ignored:
            raise refuse(line, f"pip ignores the option for {ignored[0]!r} on a requirement line; uv may not",
                         "Put the option on a line of its own.")
        if CONTROL.search(parsed.args.strip()):
            raise refuse(line, "has a tab or a control character, which readers of requirement files split "
                               "differently", "Separate words with spaces.")
    odd = next((t for t in parsed.tokens if not PLAIN_WORD.match(t)), None)
    if odd is not None:
        raise refuse(line, f"the option word {odd!r} is quoted, escaped, or holds a space, '#', '$' or '`': "
                           "readers of requirement files split it differently", "Write the value plainly.")
