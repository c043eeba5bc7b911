"""Routing a request by its KV receiver: staged or plain path.

Receivers come from many transfer backends (Mooncake, NIXL, fake, ...) and
the staging flag is optional: a class may lack it, declare it in ``__slots__``
without setting it, compute it in a property, or be a test double.  Reading
``receiver.require_staging`` unguarded crashed decode registration once
(SGLang PR #22153); every read goes through :func:`requires_staging`.
"""

from __future__ import annotations

from typing import Any


def requires_staging(receiver: Any) -> bool:
    """True only when ``receiver.require_staging`` exists and is truthy.

    Never raises: a missing attribute, or one whose lookup or truth test
    fails, means the plain path.
    """
    try:
        return bool(getattr(receiver, "require_staging", False))
    except Exception:  # a receiver must never break registration
        return False
