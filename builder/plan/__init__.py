"""Phase 2, the plan: pure functions from the package and the options to what
a build sends the engine: ``options`` (BuildOptions), ``inputs`` (identity
checks, the split, digests, generated files), ``dockerfile`` (the render),
``proxied`` (requirement lines rewritten to reach the index proxy),
``context`` (a deterministic tar). No engine, no network.

May import: ``builder.core``, ``builder.package``.
"""
