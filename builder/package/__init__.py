"""Phase 1, the package: open an upload (.apkg zip or folder) as hostile input
and read it: ``reader`` (the archive or folder, bounded), ``manifest``
(agent.yaml), ``dotenv`` (.env files), ``piplines`` (requirement text as pip
reads it), ``requirements`` (the index policy and the layer split).

May import: ``builder.core``.
"""
