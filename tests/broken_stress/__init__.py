"""Deliberately broken implementations for the stress suites' meta-tests.

Each subclasses or wraps the reference (``reference.plugin.ReferenceImplementation``,
``reference.handler.DecodeStagingHandler``, ``reference.allocator.RingAllocator``)
and breaks one thing, the way real staging code goes wrong:

* ``lifecycle``: a region freed before its scatter completed (CPU, with a
  lazily running copy "stream"; and CUDA, with real streams), a duplicate
  arrival scattering again, a leak on abort, one failed request freeing its
  neighbours' regions; plus ``AsyncScatterReference``, a *correct* handler
  with the same lazy CPU stream (a positive control);
* ``allocator``: a watermark advanced past a live allocation;
* ``threading_bugs``: a handler without its lock, yielding between reading
  shared state and acting on it;
* ``misbehaving``: a handler that hangs, one that raises, one that returns
  garbage, one that writes outside its staging ring.

Every class is a zero-argument factory, so each also plugs in with
``--impl tests.broken_stress.<module>:<Class>``.
"""
