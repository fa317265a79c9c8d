"""Facts and plumbing every phase shares: the error tree and its exit codes,
labels, image references, defaults, logging, crash reports, run-time files.

May import: nothing else in ``builder`` (it is the bottom layer).
"""
