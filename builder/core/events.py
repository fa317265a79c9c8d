"""The log events other code follows: the live progress view (builder/cli/progress.py)
and the tests. The values are the ``event`` field of the JSON log, unchanged:
a reword is one edit here, and the view follows it.

Other log lines are for people and may say anything.
"""

OPENED = "Opened agent package"
RUNTIME_EOL = "Runtime past end of life"                     # runtime=, python=, end_of_life= (core/pythons.py)
RUNTIME_PREVIEW = "Runtime not allowed by pixell-kit yet"      # accepted through AGENT_IMAGE_PREVIEW_RUNTIMES
REUSED_IMAGE = "Inputs unchanged: reusing the image"       # the input digest matched: nothing is built
INSTALLING = "Installing dependencies from requirements.txt"  # the build starts (with dependency lines)
BUILDING = "Building agent image"                            # the build starts (without)
DEPS_REUSED = "Dependency image reused"
DEPS_BUILDING = "Building the dependency image"
STEP = "build step"                                          # one Dockerfile step starts: step=N/M, name, instruction
LINE = "build"                                               # one line of the engine's build log (debug)
READY = "Agent image ready"
READY_TIME = "Measured the agent's ready time"                 # seconds= (build/readytime.py)
PUSHED = "Pushed agent image"
ATTACHED = "Attached SBOM and provenance"                   # signed=true|false, sbom, provenance, referrers
VERIFIED = "Signature verified"                             # digest_ref, key, agent
