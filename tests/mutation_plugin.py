"""pytest plugin for the mutation run (``tox -e mutation``, docs/mutation.md): the loaded Hypothesis profile
(the gate) without its shrink and explain phases.

A mutant is killed by its first failing example; shrinking that example (up to hundreds of reruns of a
torch-heavy test) and explaining it change no verdict, so the mutation run skips both.  Generation is
untouched: the same derandomized examples as ``--profile gate``, hence the same killed/survived verdicts.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)  # after harness.pytest_plugin selected and (re)registered the profile
def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import Phase, settings

    name = settings.get_current_profile_name()
    current = settings.get_profile(name)
    settings.register_profile(name, parent=current,
                              phases=tuple(p for p in current.phases if p not in (Phase.shrink, Phase.explain)))
    settings.load_profile(name)
