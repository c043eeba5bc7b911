"""The conformance suite: one module per area, one test per (invariant, level).

Run with ``kvconform`` or ``pytest --pyargs harness.conformance --impl ...``.
"""
