"""The one engine that drives an implementation's decode rank, and the one allocator oracle.

Modules, one concept each (imported by name; this package imports nothing eagerly):

* ``buffers``  canary-guarded buffers and the marker bytes (canary, scribble, garbage);
* ``shapes``   :class:`~harness.engine.shapes.RankShape` and :class:`~harness.engine.shapes.RequestPlan`,
  built from the suite's case types (``TpTopology``, ``KvSpec``, ``RequestSpec``), and their strategies;
* ``ledger``   the allocation ledger between handler and allocator: *the* allocator oracle
  (placements, refusals, watermark, scribbling freed bytes, writer safety and liveness);
* ``writers``  the one writer-slot computation, chunk layouts, and the one wait-until-writable loop;
* ``pool``     a decode rank's paged pool, each request's ground truth, and the pool oracles;
* ``model``    what the harness knows of each request and how a polled state is judged;
* ``rank``     the one decode-rank driver: handler + ring + pool + ledger + request model;
* ``moves``    single-request flows: a ``TransferCase`` through the rank, or through gather/scatter,
  direct copy and ``move_request`` (no handler).

Single-request scenarios and multi-request ones are the same :class:`~harness.engine.rank.Rank` with different
plans; distributed mode drives it too, receiving writer bytes over the process group.
"""
