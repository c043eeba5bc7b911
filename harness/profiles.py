"""Hypothesis settings profiles for kvconform runs.

``default`` is fast (25 examples), ``ci`` runs 100, ``thorough`` 1000.  All
print the ``@reproduce_failure(...)`` blob of a failure (``print_blob``), have
no deadline (allocating tensors on CPU is slow and uneven) and suppress the
``too_slow`` health check.  Failing examples are saved to
``.hypothesis/examples`` under the directory pytest was started from, or to
``$KVCONFORM_HYPOTHESIS_DB``, so a rerun of the same test replays them first.

``gate`` is the lane for CI and merge gates: the same commit gives the same
verdict on every machine and every run.  It is derandomized (each test's
examples are derived from its own source, not drawn at random), has a fixed
budget of examples per test (:data:`GATE_EXAMPLES`; the whole suite against
the reference with ``-n 2`` on two quiet CPU cores: 76 s under process
isolation, 47 s in-process, measured 2026-12-02 on 0b7b1c6 -- the one-minute
target of issue 11 is met in-process only, see bench/README.md), reads and
writes no example database (``database=None``: a gate must not depend on
what a machine saw before, and a read-only database would still make the
verdict depend on which machine's history it holds), reports one bug per
test (Hypothesis keeps looking for more bugs for up to ten *seconds* after
the first, so the example count would depend on the machine's speed),
skips the explain phase (it reruns the failure under a tracer; slow, and it
changes no verdict) and the target phase: under 1000 examples Hypothesis
runs one optimisation pass from the budget's middle on, and climbing the
chunk count of one example spent the gate's second half on variants of one
topology (35 of 40 path-equivalence cases had P == D).  Every profile, not only ``gate``, runs with
:func:`pin_local_constants`, since that source of nondeterminism is
invisible otherwise.

``explore`` is the nightly lane: random (a new seed every run), the
example database on, targeted search (``hypothesis.target()``, wherever a
test reports a target) kept, and a *time* budget instead of an example
count: each test generates for ``--explore-seconds`` (default
:data:`EXPLORE_SECONDS`) and then stops, unless it found a failure, which
is shrunk as usual (``harness.replay``).  Its failures are written as
corpus cases into the directory named by ``--corpus-out`` (never into the
repository unless that is the directory named).  Every profile replays the
regression corpus (``corpus/``) before generating: see docs/corpus.md.

``thorough`` also vouches for what ran: it fails a run in which a case class
that ``harness.case_classes.EXPECTED`` lists for an invariant got no case
(:data:`CLASS_COVERAGE_PROFILES`); the other profiles only show the class
coverage in the report.

Select a profile with Hypothesis's ``--hypothesis-profile NAME`` or with
``KVCONFORM_PROFILE=NAME``; without either, ``default`` is loaded (or ``ci``
when Hypothesis detected a CI environment).  An unknown name is a usage error
listing the valid ones (:func:`check_profile_name`).  The environment is read
through ``harness.settings``.  ``harness.pytest_plugin``
registers the profiles when it is imported; Hypothesis is imported lazily here
so the CLI can read these names before pytest starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Examples per test in the ``gate`` profile (timings of the whole suite with it: the module docstring).
GATE_EXAMPLES = 40
GATE = "gate"
EXPLORE = "explore"
#: Seconds of generation per test in the ``explore`` profile unless ``--explore-seconds`` says otherwise.
EXPLORE_SECONDS = 60.0
#: The ``explore`` profile's example count: never reached, the time budget ends each test first.
EXPLORE_EXAMPLES = 1_000_000

#: Profile name -> max_examples.
PROFILE_EXAMPLES: dict[str, int] = {"default": 25, "ci": 100, "thorough": 1000, GATE: GATE_EXAMPLES,
                                    EXPLORE: EXPLORE_EXAMPLES}
#: Profiles whose verdict is a function of the commit alone (derandomized, no example database).
DETERMINISTIC_PROFILES = frozenset({GATE})
#: Profiles that fail a run when an expected case class got zero cases (``harness.case_classes``): only the one
#: with examples enough that every expected class is reached whatever the seed.
CLASS_COVERAGE_PROFILES = frozenset({"thorough"})


def database_directory(base: Path | str | None = None) -> Path:
    """``$KVCONFORM_HYPOTHESIS_DB``, else ``<base or cwd>/.hypothesis/examples``."""
    from harness import settings  # settings imports this module's names

    override = settings.current().hypothesis_db
    return override if override is not None else database_directory_default(base)


def shared_database() -> tuple[str, str] | None:
    """``$KVCONFORM_SHARED_DB`` as ``(owner, repo)``: the CI artifact database ``explore`` reads, if any."""
    from harness import settings

    return settings.current().shared_db


def database_directory_default(base: Path | str | None = None) -> Path:
    """``<base or cwd>/.hypothesis/examples``, whatever the environment says."""
    return Path(base if base is not None else os.getcwd()).resolve() / ".hypothesis" / "examples"


def register_profiles(database_dir: Path, shared: tuple[str, str] | None = None) -> None:
    """(Re)register the kvconform profiles with their examples saved under ``database_dir``.

    ``shared``: ``(owner, repo)`` whose CI artifact database ``explore`` reads too, read-only
    (``$KVCONFORM_SHARED_DB``).  Re-registering the currently loaded profile reloads it (Hypothesis does so).
    """
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.database import (
        DirectoryBasedExampleDatabase,
        ExampleDatabase,
        GitHubArtifactDatabase,
        MultiplexedDatabase,
        ReadOnlyDatabase,
    )

    database: ExampleDatabase = DirectoryBasedExampleDatabase(str(database_dir))
    explore_database = database
    if shared is not None:
        explore_database = MultiplexedDatabase(database, ReadOnlyDatabase(GitHubArtifactDatabase(*shared)))
    for name, examples in PROFILE_EXAMPLES.items():
        deterministic = name in DETERMINISTIC_PROFILES
        settings.register_profile(
            name,
            max_examples=examples,
            deadline=None,
            print_blob=True,
            derandomize=deterministic,
            suppress_health_check=[HealthCheck.too_slow],
            database=None if deterministic else explore_database if name == EXPLORE else database,
            # One bug per test (no time-boxed search for more), no explain or target phase: see the module docstring.
            report_multiple_bugs=not deterministic,
            phases=tuple(p for p in Phase if not (deterministic and p in (Phase.explain, Phase.target))),
        )


def pin_local_constants() -> None:
    """Stop Hypothesis from drawing constants found in the source of whatever local modules are imported.

    Hypothesis (6.13x+) occasionally replaces a drawn value by a literal found
    in a "local" module (not stdlib, not site-packages) in ``sys.modules``, and
    re-scans whenever more modules are imported.  Which ones are imported
    depends on the tests a process ran before (pytest-xdist hands tests out by
    load) and on whether kvconform is a checkout or installed, so the pool,
    and with it every later draw of a derandomized test, differed between two
    runs of the same commit.  Pinned to the empty pool, draws depend on the
    test alone; Hypothesis's built-in constants (boundary values) still apply.
    Idempotent; a no-op on Hypothesis versions without the pool.
    """
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:
        return
    current = getattr(providers, "_get_local_constants", None)
    if current is None or getattr(current, _PINNED, False):
        return
    empty = providers.Constants()

    def no_local_constants() -> Any:
        return empty

    setattr(no_local_constants, _PINNED, True)
    setattr(providers, "_kvconform_original_get_local_constants", current)  # tests/test_gate.py: the control
    providers._get_local_constants = no_local_constants
    providers.CONSTANTS_CACHE.cache.clear()  # values already filtered from the old pool


_PINNED = "_kvconform_pinned"


def selected_profile(command_line_profile: str | None, project_default: str | None = None) -> str | None:
    """The kvconform profile to load, or ``None`` when ``--hypothesis-profile`` already chose one.

    ``$KVCONFORM_PROFILE`` was validated by ``harness.settings``; ``project_default`` (the
    ``kvconform_profile`` ini option of the project's pytest configuration) comes next.
    """
    from hypothesis import settings

    from harness import settings as kvconform_settings

    if command_line_profile:
        return None
    name = kvconform_settings.current().profile
    if name:
        return name
    if project_default:
        check_profile_name(project_default, "kvconform_profile (pytest ini option)")
        return project_default
    # Hypothesis loads its own "ci" profile when it detects CI; keep that choice.
    return "ci" if settings.get_current_profile_name() == "ci" else "default"


def check_profile_name(name: str, what: str = "--hypothesis-profile") -> None:
    """Raise ``ValueError`` naming the valid profiles when profile ``name`` (given as ``what``) is not registered."""
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    try:
        settings.get_profile(name)
    except InvalidArgument:
        registered = sorted(getattr(settings, "_profiles", {}) or PROFILE_EXAMPLES)
        raise ValueError(f"{what}={name!r} is not a registered Hypothesis profile; "
                         f"use one of {', '.join(registered)}") from None


def current_profile_name() -> str:
    """The loaded profile's name without suffixes Hypothesis adds for ``--hypothesis-verbosity``."""
    from hypothesis import settings

    return settings.get_current_profile_name().split("-with-")[0]

