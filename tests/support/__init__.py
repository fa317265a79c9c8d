"""What the tests share, as plain functions and classes (pip's tests/lib style).

No test module imports another test module or a conftest: helpers live here,
and the conftest files only turn them into fixtures.

``paths`` (the checkout, the venv's bin, the caches), ``net`` (free ports,
waiting for a URL), ``httpserver`` (one way to run an HTTP server on
loopback in a thread, and a route-table upstream on it), ``cli`` (the
``agent-image`` command as a subprocess), ``packages`` (agent folders,
setuptools projects, wheels), ``index`` (the wheelhouse and a pypiserver
with htpasswd users), ``registry`` (Debian's docker-registry on loopback),
``engine`` (questions to a Docker client: tags, containers, image bytes),
``hosts`` (a link-local address on this machine, listeners that count).

Only ``engine`` knows Docker; ``index``, ``registry`` and ``hosts`` start
processes or change this machine: the unit tier uses none of those three.
"""
