"""Phase 4, ship: after the build. ``client`` (the one registry HTTP API
client), ``pushpull`` (push and pull through the engine, verified),
``rebase`` (a pure function of manifests and configs) and ``rebaser`` (fetch,
rebase, push), ``ecs`` (a task definition from an image's facts; its options and
their rules in ``ecsopts``, AWS name shapes in ``awsnames``), ``ecr`` (a new agent's ECR repositories).

May import: ``builder.core``, ``builder.package``, ``builder.plan``,
``builder.build``.
"""
