"""A plug-in module whose own import fails on a missing dependency."""

import kvconform_missing_dependency_xyz  # noqa: F401


def make_implementation():
    raise AssertionError("never reached")
