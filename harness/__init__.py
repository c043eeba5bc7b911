"""kvconform's harness: plug-in loading, the simulated cluster, oracles, conformance tests, report and CLI.

Importing ``harness`` is cheap and imports neither torch nor any implementation;
entry points are ``harness.cli:main`` (the ``kvconform`` command),
``harness.pytest_plugin`` and ``harness.loading.load_implementation``.
"""
