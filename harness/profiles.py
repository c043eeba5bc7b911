"""Hypothesis settings profiles for kvconform runs.

``default`` is fast (25 examples), ``ci`` runs 100, ``thorough`` 1000.  All
print the ``@reproduce_failure(...)`` blob of a failure (``print_blob``), have
no deadline (allocating tensors on CPU is slow and uneven) and suppress the
``too_slow`` health check.  Failing examples are saved to
``.hypothesis/examples`` under the directory pytest was started from, or to
``$KVCONFORM_HYPOTHESIS_DB``, so a rerun of the same test replays them first.

Select a profile with Hypothesis's ``--hypothesis-profile NAME`` or with
``KVCONFORM_PROFILE=NAME``; without either, ``default`` is loaded (or ``ci``
when Hypothesis detected a CI environment).  ``harness.pytest_plugin``
registers the profiles when it is imported; Hypothesis is imported lazily here
so the CLI can read these names before pytest starts.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Profile name -> max_examples.
PROFILE_EXAMPLES: dict[str, int] = {"default": 25, "ci": 100, "thorough": 1000}
#: Environment variable selecting the profile (``--hypothesis-profile`` wins).
PROFILE_ENV_VAR = "KVCONFORM_PROFILE"
#: Environment variable overriding the example database directory.
DATABASE_ENV_VAR = "KVCONFORM_HYPOTHESIS_DB"


def database_directory(base: Path | str | None = None) -> Path:
    """``$KVCONFORM_HYPOTHESIS_DB``, else ``<base or cwd>/.hypothesis/examples``."""
    override = os.environ.get(DATABASE_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
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

    Raises ``ValueError`` naming the valid profiles for an unknown ``$KVCONFORM_PROFILE``.
    """
    from hypothesis import settings

    if command_line_profile:
        return None
    name = os.environ.get(PROFILE_ENV_VAR, "").strip()
    if name:
        if name not in PROFILE_EXAMPLES:
            raise ValueError(
                f"{PROFILE_ENV_VAR}={name!r} is not a kvconform profile; use one of {', '.join(PROFILE_EXAMPLES)}."
            )
        return name
    # Hypothesis loads its own "ci" profile when it detects CI; keep that choice.
    return "ci" if settings.get_current_profile_name() == "ci" else "default"


def current_profile_name() -> str:
    """The loaded profile's name without suffixes Hypothesis adds for ``--hypothesis-verbosity``."""
    from hypothesis import settings

    return settings.get_current_profile_name().split("-with-")[0]

