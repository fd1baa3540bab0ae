"""The mirrored keys, their revision and the sync status everyone else reads; pure, no I/O."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sidecar.etcd import Event, KeyRange, KeyValue


@dataclass
class OutputStatus:
    """What is known about one output file."""

    path: str
    format: str
    bytes: int | None = None
    sha256: str | None = None
    revision: int | None = None  # the revision the file on disk reflects, once written this run
    last_write: float | None = None  # wall clock of the last actual rewrite
    current: bool = False  # rendered from etcd this run and on disk (written or already equal)
    last_error: str | None = None
    last_error_time: float | None = None


@dataclass
class SyncStatus:
    """Connection and freshness facts for /health, /ready, /v1/status and the metrics collector."""

    endpoints: tuple[str, ...] = ()
    endpoint: str | None = None
    connected: bool = False
    last_sync: float | None = None  # wall clock when every output was last confirmed current
    last_sync_monotonic: float | None = None
    heartbeat: float | None = None  # monotonic; the sync loop touches it every iteration
    loop_alive: bool = True
    access_denied: str | None = None  # set while etcd refuses us; cleared on the next success
    watch_restarts: int = 0


@dataclass
class MirrorState:
    """Keys selected by the configured ranges, as of `revision`. Mutated by the sync loop only;
    readers on other threads take `lock` and copy what they need."""

    ranges: Sequence[KeyRange]
    revision: int = 0
    kvs: dict[bytes, KeyValue] = field(default_factory=dict)
    outputs: list[OutputStatus] = field(default_factory=list)
    sync: SyncStatus = field(default_factory=SyncStatus)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    ignored_events: int = 0
    # Keys changed since take_changes() (value, or None when deleted); None means everything.
    changes: dict[bytes, bytes | None] | None = None

    def selected(self, key: bytes) -> bool:
        return any(r.contains(key) for r in self.ranges)

    def replace(self, revision: int, kvs: Iterable[KeyValue]) -> None:
        """Adopt a full read: whatever it lacks was deleted."""
        if len(self.ranges) == 1 and self.ranges[0].end not in (b"", b"\0"):
            # One prefix, the common case: the same test as selected(), inline (a call per key
            # is a noticeable part of a 100,000-key relist).
            start, end = self.ranges[0].start, self.ranges[0].end
            fresh = {kv.key: kv for kv in kvs if start <= kv.key < end}
        else:
            fresh = {kv.key: kv for kv in kvs if self.selected(kv.key)}
        with self.lock:
            self.kvs = fresh
            self.revision = revision
            self.changes = None

    def apply(self, events: Sequence[Event]) -> bool:
        """Apply one watch response as a whole. Events at or below the applied revision are stale
        (a resumed or duplicated stream) and are ignored; returns whether anything changed."""
        fresh = [e for e in events if e.mod_revision > self.revision]
        self.ignored_events += len(events) - len(fresh)
        if not fresh:
            return False
        changed = False
        with self.lock:
            for event in fresh:
                if not self.selected(event.key):
                    continue
                if event.value is None:
                    if self.kvs.pop(event.key, None) is None:
                        continue
                else:
                    self.kvs[event.key] = KeyValue(event.key, event.value, event.mod_revision)
                changed = True
                if self.changes is not None:
                    self.changes[event.key] = event.value
            self.revision = max(self.revision, fresh[-1].mod_revision)
        return changed

    @property
    def outputs_revision(self) -> int:
        """The etcd revision every output reflects (the oldest among them; 0 before any)."""
        revisions = [o.revision for o in self.outputs]
        if not revisions or None in revisions:
            return 0
        return min(r for r in revisions if r is not None)

    def fingerprint(self) -> list[tuple[int, int]]:
        """(key count, newest mod_revision) per range, as EtcdClient.fingerprint reports them."""
        result = []
        for key_range in self.ranges:
            revisions = [kv.mod_revision for key, kv in self.kvs.items() if key_range.contains(key)]
            result.append((len(revisions), max(revisions, default=0)))
        return result

    def take_changes(self) -> dict[bytes, bytes | None] | None:
        """The keys changed since the last call (None: everything may have), and forget them."""
        changes, self.changes = self.changes, {}
        return changes

    def values(self) -> dict[bytes, bytes]:
        return {key: kv.value for key, kv in self.kvs.items()}

    def copy_kvs(self) -> tuple[int, list[KeyValue]]:
        """A consistent copy for readers on other threads, sorted by key."""
        with self.lock:
            revision, kvs = self.revision, list(self.kvs.values())
        kvs.sort(key=lambda kv: kv.key)
        return revision, kvs

    def get(self, key: bytes) -> tuple[int, KeyValue | None]:
        with self.lock:
            return self.revision, self.kvs.get(key)

    def missing_for_ready(self, now_monotonic: float, max_staleness: float) -> list[str]:
        """Why /ready should fail, in words without values; empty means ready."""
        reasons = []
        if self.sync.access_denied:
            reasons.append("etcd refuses access: " + self.sync.access_denied)
        for output in self.outputs:
            if not output.current:
                why = output.last_error or "not yet written from etcd"
                reasons.append(f"output {output.path}: {why}")
        if max_staleness > 0 and not reasons:
            last = self.sync.last_sync_monotonic
            if last is None or now_monotonic - last > max_staleness:
                reasons.append(f"outputs not confirmed current within {max_staleness:g}s")
        return reasons
