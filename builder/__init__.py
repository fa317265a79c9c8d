"""agent-image: turn an AI agent package (APKG) into a container image.

The folders are the pipeline, in the order data flows (each folder's
docstring says what it owns and what it may import; imports only point down
this list, checked by tests/unit/test_layers.py):

- ``core``: errors and exit codes, labels, image references, defaults, retry, logging;
- ``package``: read the upload as hostile input (archive, agent.yaml, .env, requirements);
- ``plan``: pure: the options, the Dockerfile, the generated files, digests, the context;
- ``build``: drive the engine in the sandbox, through the index proxy (``build/proxy``),
  and read its log into an error class;
- ``ship``: the registry (push, pull, rebase) and ECS task definitions;
- ``api``: ``build_image`` runs the phases in order; ``cli``: the ``agent-image`` command;
- ``shim``: the serving code copied into the base image (imports nothing of the builder).
"""

__version__ = "0.1.0"
