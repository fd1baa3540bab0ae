"""Deadline-based polling for tests: the only sanctioned way to wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["Deadline", "wait_until"]


class Deadline:
    """A monotonic deadline: ``Deadline(5).remaining()``, ``.expired()``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Exceptions raised by ``predicate`` count as "not yet" (the last one is reported). When
    ``timeout`` seconds pass without success, raise AssertionError with ``message`` (a string or a
    callable evaluated lazily, e.g. to include a log tail). The predicate is always tried at least
    once, and once more right at the deadline, so a slow machine cannot make a true condition fail
    merely because the last poll came early.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: object = None
    while True:
        final = time.monotonic() >= deadline
        try:
            value = predicate()
        except Exception as exc:  # a predicate that raises is "not yet"
            last_exc = exc
        else:
            if value:
                return value
            last_value = value
            last_exc = None
        if final:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    text = message() if callable(message) else message
    detail = f"last error: {last_exc!r}" if last_exc is not None else f"last value: {last_value!r}"
    raise AssertionError(f"timed out after {timeout:g}s: {text} ({detail})")
