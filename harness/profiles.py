"""Hypothesis settings profiles for kvconform runs.

``default`` is fast (25 examples), ``ci`` runs 100, ``thorough`` 1000.  All
print the ``@reproduce_failure(...)`` blob of a failure (``print_blob``), have
no deadline (allocating tensors on CPU is slow and uneven) and suppress the
``too_slow`` health check.  Failing examples are saved to
``.hypothesis/examples`` under the directory pytest was started from, or to
``$KVCONFORM_HYPOTHESIS_DB``, so a rerun of the same test replays them first.

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

#: Profile name -> max_examples.
PROFILE_EXAMPLES: dict[str, int] = {"default": 25, "ci": 100, "thorough": 1000}


def database_directory(base: Path | str | None = None) -> Path:
    """``$KVCONFORM_HYPOTHESIS_DB``, else ``<base or cwd>/.hypothesis/examples``."""
    from harness import settings  # settings imports this module's names

    override = settings.current().hypothesis_db
    return override if override is not None else database_directory_default(base)


def database_directory_default(base: Path | str | None = None) -> Path:
    """``<base or cwd>/.hypothesis/examples``, whatever the environment says."""
    return Path(base if base is not None else os.getcwd()).resolve() / ".hypothesis" / "examples"


def register_profiles(database_dir: Path) -> None:
    """(Re)register the kvconform profiles with their examples saved under ``database_dir``.

    Re-registering the currently loaded profile reloads it (Hypothesis does so).
    """
    from hypothesis import HealthCheck, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    database = DirectoryBasedExampleDatabase(str(database_dir))
    for name, examples in PROFILE_EXAMPLES.items():
        settings.register_profile(
            name,
            max_examples=examples,
            deadline=None,
            print_blob=True,
            derandomize=False,
            suppress_health_check=[HealthCheck.too_slow],
            database=database,
        )


def selected_profile(command_line_profile: str | None) -> str | None:
    """The kvconform profile to load, or ``None`` when ``--hypothesis-profile`` already chose one.

    ``$KVCONFORM_PROFILE`` was validated by ``harness.settings``.
    """
    from hypothesis import settings

    from harness import settings as kvconform_settings

    if command_line_profile:
        return None
    name = kvconform_settings.current().profile
    if name:
        return name
    # Hypothesis loads its own "ci" profile when it detects CI; keep that choice.
    return "ci" if settings.get_current_profile_name() == "ci" else "default"


def check_profile_name(name: str) -> None:
    """Raise ``ValueError`` naming the valid profiles when ``--hypothesis-profile NAME`` is not registered."""
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    try:
        settings.get_profile(name)
    except InvalidArgument:
        registered = sorted(getattr(settings, "_profiles", {}) or PROFILE_EXAMPLES)
        raise ValueError(f"--hypothesis-profile={name!r} is not a registered Hypothesis profile; "
                         f"use one of {', '.join(registered)}") from None


def current_profile_name() -> str:
    """The loaded profile's name without suffixes Hypothesis adds for ``--hypothesis-verbosity``."""
    from hypothesis import settings

    return settings.get_current_profile_name().split("-with-")[0]

