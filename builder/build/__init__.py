"""Phase 3, the build: drive the engine and read what it says. ``engine`` (the
one module that knows Docker), ``sandbox`` (the build's only door is the index
proxy, in ``proxy/``), ``reuse`` (earlier images a build may reuse),
``depsimage`` (the shared dependency image), ``stream`` / ``steplog`` /
``classify`` (the build log to an error class), ``base`` (the shared base
image), ``doctor`` (what a build step can reach).

May import: ``builder.core``, ``builder.package``, ``builder.plan``.
"""
