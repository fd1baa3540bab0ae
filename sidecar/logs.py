"""Structured logs: one event per line with fields, as JSON (default) or text. Never a value."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_LOGGER_NAME = "sidecar"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()} {fields}".rstrip()


class EventLogger:
    """`log.info("file_written", output=path, bytes=812)`: an event name and fields."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def get_logger(component: str) -> EventLogger:
    return EventLogger(logging.getLogger(f"{_LOGGER_NAME}.{component}"))


def configure(log_format: str, log_level: str, stream: TextIO | None = None) -> None:
    """Route the sidecar's events (and uvicorn's, reformatted) to stdout in one format."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger(_LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(log_level.upper())
    root.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.setLevel(max(logging.WARNING, root.level))
        other.propagate = False
    # Access logs would record lookup paths, which are key names; they are noise at info level.
    logging.getLogger("uvicorn.access").disabled = True
