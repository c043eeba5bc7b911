"""Engine logging as adapters meet it: ``*_once`` loggers, and an engine's log as a failure reason.

Engines add ``warning_once`` (some also ``info_once``, ``debug_once``) to their
loggers when their package initialises; borrowed code skipping that
initialiser gets :class:`OnceLogger` instead.  Engines also turn exceptions in
their transfer code into a logged warning and a failed request; an adapter
keeps those lines with :class:`LogCapture` to say why.

Invariants upheld: each distinct message is emitted once per ``OnceLogger``,
everything else is the standard logger; a ``LogCapture`` holds exactly the
records at or above its level logged under its logger (or a child) while its
block runs, and is detached on exit.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator


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


class LogCapture(logging.Handler):
    """The messages (with any exception's type and text) logged under one logger during a block."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" [{type(error).__name__}: {error}]"
        self.lines.append(line)

    @contextlib.contextmanager
    def attached(self, logger_name: str) -> Iterator["LogCapture"]:
        """Capture what ``logger_name`` and its children log while the block runs."""
        logger = logging.getLogger(logger_name)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
