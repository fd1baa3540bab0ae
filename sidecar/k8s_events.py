"""Kubernetes Events on the sidecar's own Pod (placeholder until the feature lands)."""

from __future__ import annotations

from typing import Any, Protocol

from sidecar.metrics import Metrics
from sidecar.settings import Settings


class EventsHandle(Protocol):
    def notify(self, event: str, fields: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


def start_events(settings: Settings, metrics: Metrics) -> EventsHandle | None:
    return None
