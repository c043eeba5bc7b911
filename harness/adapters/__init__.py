"""Adapters that plug third-party staging code into kvconform.

Each adapter is an ordinary implementation of :mod:`harness.interface`: a
module with a zero-argument ``make_implementation`` factory, loaded by
``--impl <name>`` or ``--impl harness.adapters.<module>:make_implementation``
exactly like a third-party plug-in.  Adapters import nothing else from
kvconform, so they exercise the interface the way an outside implementation
would.

* :mod:`harness.adapters.sglang` -- SGLang 0.5.23's decode-side staging
  (``sglang/srt/disaggregation/common/staging_buffer.py`` and
  ``staging_handler.py``), see ``docs/sglang.md``.
"""
