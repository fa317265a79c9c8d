"""agent-image: turn an AI agent package (APKG) into a container image.

The pipeline, in the order data flows: ``apkg`` (open and check the
package) -> ``manifest`` (agent.yaml) -> ``requirements`` (policy and layer
split; ``reqlines`` reads lines as pip does) -> ``dockerfile`` (render) ->
``plan`` (what one build sends the engine) -> ``context`` (deterministic
tar) -> ``layercache`` (earlier images to
reuse) -> ``depsimage`` (the dependency image agents with the same lines
share) ->
``indexproxy`` (credentials stay outside the build; ``proxyroutes`` what a
build may ask it for, ``upstream`` its one outbound client, ``downloadcache``
its files, ``proxyfile`` the tee that sends a file on while it downloads) ->
``sandbox`` (the build
reaches that proxy and nothing else) -> ``engine`` (the one place that
knows Docker) -> ``buildlog`` (read the log) -> ``pipfailures`` (its failure
to an error class) ->
``registry`` (push/pull). ``api.build_image`` ties them together; ``cli``
is the command line.
"""

__version__ = "0.1.0"
