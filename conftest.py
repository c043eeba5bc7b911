"""Plain ``pytest`` in a checkout: load the kvconform plugin (default implementation: the reference).

The plugin stays inert (no implementation loaded, no report) unless the run
reaches harness/conformance or a kvconform option is given, so
``pytest tests/...`` does not depend on the reference.  ``pytester`` serves the
harness's own tests.
"""

pytest_plugins = ["harness.pytest_plugin", "pytester"]
