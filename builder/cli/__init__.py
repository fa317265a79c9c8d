"""The ``agent-image`` command: ``main`` (options, output, exit codes),
``commands`` (each subcommand from parsed options to a result), ``progress``
(the live view on a terminal).

May import: everything below it, through ``builder.api`` for builds.
"""
