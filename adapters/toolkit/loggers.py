"""Loggers with the ``*_once`` methods engines patch onto theirs at package import.

SGLang and vLLM add ``warning_once`` (vLLM also ``info_once``, ``debug_once``)
to their loggers when their package initialises; borrowed code skipping that
initialiser gets this instead.  Invariant upheld: each distinct message is
emitted once per logger; everything else is the standard logger.
"""

from __future__ import annotations

import logging
from typing import Any


class OnceLogger:
    """A ``logging.Logger`` wrapper adding ``warning_once``, ``info_once`` and ``debug_once``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)
        self._seen: set[tuple[int, str]] = set()

    def _once(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if (level, msg) not in self._seen:
            self._seen.add((level, msg))
            self._logger.log(level, msg, *args, **kwargs)

    def warning_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._once(logging.WARNING, msg, *args, **kwargs)

    def info_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._once(logging.INFO, msg, *args, **kwargs)

    def debug_once(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._once(logging.DEBUG, msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)
