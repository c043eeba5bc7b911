"""Standalone repro scripts: a failing example's calls into the implementation, replayed without kvconform.

* ``recorder``: the guard reports every call of a failing example's final replay; the trace holds the
  calls, their tensors (storage layout and bytes), returns or exceptions, the harness's writes between
  calls, and the verdict (the judge's exception, with the expected bytes an oracle attached);
* ``runtime``: the replay helpers (standard library and torch only), copied into every script;
* ``script``: a finished trace as ``repro_<test>_<n>.py`` source.
"""
