"""The index proxy: the build's one door to a package index, outside the
build so credentials never enter it. ``index`` (which index, CodeArtifact),
``server`` (the HTTP server the sandbox reaches), ``routes`` (what a build may
ask for), ``pages`` (index pages filtered), ``upstream`` (the one outbound
client), ``tee`` (files sent on while they download), ``cache`` (files kept on
the build host), ``prefetch`` (fetch ahead of pip), ``wheeltags`` (wheels the
base's interpreter can install).

May import: ``builder.core``, ``builder.package``, ``builder.plan``.
"""
