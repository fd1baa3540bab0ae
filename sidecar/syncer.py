"""The sync loop: list, write, watch, apply whole responses, relist on trouble, back off."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable

from sidecar.actions import ActionRunner, WriteNotice
from sidecar.etcd import (
    AccessDenied,
    Compacted,
    EtcdClient,
    EtcdError,
    KeyRange,
    Progress,
    Unavailable,
    WatchBatch,
    WatchCanceled,
    WatchStalled,
    WatchStream,
    enclosing_range,
)
from sidecar.logs import get_logger
from sidecar.metrics import Metrics
from sidecar.outputs import OutputWriter
from sidecar.settings import Settings
from sidecar.state import MirrorState, OutputStatus

log = get_logger("syncer")

# An idle watch is asked for a progress response this often; the answer proves the stream (and the
# path to the member) is alive and is what confirms the outputs current for --max-staleness.
PROGRESS_INTERVAL = 5.0
# No answer at all this long after asking: the path is frozen. 5 + 8 s stays well inside the 30 s
# the SPEC allows for abandoning a connection that stopped answering.
STALL_TIMEOUT = 8.0
# The loop wakes at least this often, to notice shutdown and to prove to /health it is not stuck.
TICK = 0.5
BACKOFF_INITIAL = 0.1
BACKOFF_CAP = 5.0
TLS_CHECK_INTERVAL = 5.0
# How often the mirror is compared with etcd by (key count, newest mod_revision) per range. It
# catches a watch that is alive but silently incomplete, and revoked read permission, which etcd
# does not apply to watches already open.
VERIFY_INTERVAL = 10.0
# A write that failed (disk full, read-only or missing directory) is retried this often without
# waiting for etcd to change, so that the file recovers as soon as the disk does.
WRITE_RETRY_INTERVAL = 2.0


def selector_ranges(settings: Settings) -> list[KeyRange]:
    ranges: dict[KeyRange, None] = {}
    for output in settings.outputs:
        for prefix in output.prefixes:
            ranges[KeyRange.for_prefix(prefix)] = None
        for key in output.keys:
            ranges[KeyRange.for_key(key)] = None
    return list(ranges)


class Backoff:
    """Exponential backoff with jitter, so that a fleet of sidecars does not retry in step."""

    def __init__(self, initial: float = BACKOFF_INITIAL, cap: float = BACKOFF_CAP) -> None:
        self._initial = initial
        self._cap = cap
        self._next = initial

    def reset(self) -> None:
        self._next = self._initial

    def next(self) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._cap, self._next * 2)
        return delay


class _Restart(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Syncer:
    """Keeps every output equal to etcd. `run()` blocks until `stop()`; `once()` syncs once."""

    def __init__(
        self,
        settings: Settings,
        state: MirrorState,
        metrics: Metrics,
        client: EtcdClient | None = None,
        start_actions: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.state = state
        self._metrics = metrics
        self.client = client or EtcdClient(settings.etcd)
        self._clock = clock
        self._ranges = list(state.ranges)
        self._watch_range = enclosing_range(self._ranges)
        self._stopping = threading.Event()
        self._backoff = Backoff()
        # A continuous stream of changes still reaches the file at least this often.
        self._max_delay = max(1.0, 10 * settings.debounce)
        # Each progress answer re-confirms the outputs; ask often enough that a healthy, idle
        # sidecar never looks stale to a short --max-staleness.
        self._progress_interval = PROGRESS_INTERVAL
        if settings.max_staleness > 0:
            self._progress_interval = min(PROGRESS_INTERVAL, max(0.5, settings.max_staleness / 3))
        state.sync.endpoints = settings.etcd.endpoints
        self.writers = [
            OutputWriter(o, status, metrics, settings.allow_empty)
            for o, status in zip(settings.outputs, state.outputs, strict=True)
        ]
        # One runner per distinct action: outputs that share an action (the --on-change-* defaults
        # apply to every output) trigger it once per written batch, not once per file.
        self._runners: dict[tuple[str, str], ActionRunner] = {}
        self._actions_of: list[list[ActionRunner]] = []
        for output in settings.outputs:
            runners = []
            if start_actions:
                for kind, spec in output.on_change.configured():
                    if (kind, spec) not in self._runners:
                        self._runners[kind, spec] = ActionRunner(kind, spec, metrics)
                    runners.append(self._runners[kind, spec])
            self._actions_of.append(runners)
        self.listeners: list[Callable[[str, dict], None]] = []

    # --- public ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def once(self, timeout: float) -> bool:
        """Write every output from one revision; retry until `timeout`. True on success."""
        deadline = self._clock() + timeout
        while not self._stopping.is_set() and self._clock() < deadline:
            try:
                if self._relist(deadline):
                    return True
            except EtcdError as exc:
                self._etcd_failed(exc)
            remaining = deadline - self._clock()
            if remaining > 0:
                self._stopping.wait(min(self._backoff.next(), remaining))
        return False

    def run(self) -> None:
        """List, then watch. When the stream breaks, move to the next endpoint and resume the watch
        from the last applied revision (the cheap path, which still misses nothing); relist when
        etcd can no longer serve that revision (compaction), canceled the watch, refused access,
        or when the resync, drift check or a certificate rotation asks for it."""
        need_relist = True
        try:
            while not self._stopping.is_set():
                self._beat()
                try:
                    if need_relist:
                        self._relist(None)
                        need_relist = False
                    need_relist = self._watch()
                except (Compacted, WatchCanceled) as exc:
                    need_relist = True
                    self._etcd_failed(exc)
                except EtcdError as exc:
                    need_relist = need_relist or isinstance(exc, AccessDenied)
                    self._etcd_failed(exc)
                    self._stopping.wait(self._backoff.next())
        finally:
            self.state.sync.connected = False
            self.client.close()
            for runner in self._runners.values():
                runner.stop()

    # --- internals -------------------------------------------------------------------------------

    def _beat(self) -> None:
        self.state.sync.heartbeat = time.monotonic()

    def _emit(self, event: str, **fields: object) -> None:
        for listener in self.listeners:
            listener(event, fields)

    def _relist(self, deadline: float | None) -> bool:
        """Full read at one revision replacing the state, then every output written from it."""
        started = self._clock()
        snapshot = self.client.snapshot(self._ranges, deadline)
        if snapshot.revision < self.state.revision:
            # A member that restarted from an old snapshot or lags behind must not take the outputs
            # back in time; another member will answer with the current revision.
            raise Unavailable(
                f"{self.client.endpoint}: at revision {snapshot.revision}, behind the "
                f"{self.state.revision} already written"
            )
        self._backoff.reset()
        self.state.sync.access_denied = None
        self.state.sync.endpoint = self.client.endpoint
        self.state.replace(snapshot.revision, snapshot.kvs)
        log.info(
            "snapshot_read",
            endpoint=self.client.endpoint,
            revision=snapshot.revision,
            keys=len(self.state.kvs),
            seconds=round(self._clock() - started, 3),
        )
        ok = self._flush(None)
        self._emit("synced" if ok else "sync_incomplete", revision=snapshot.revision)
        return ok

    def _flush(self, arrival: float | None) -> bool:
        changes = self.state.take_changes()
        # Every key is copied only when a writer needs them all (a relist, a format other than
        # json, or a change the json document cannot apply by itself).
        values = functools.cache(self.state.values)
        revision = self.state.revision
        ok = True
        batch: dict[ActionRunner, list[tuple[str, str, int]]] = {}
        for writer, runners in zip(self.writers, self._actions_of, strict=True):
            ok &= writer.sync(values, revision, arrival, changes)
            if writer.written is not None:
                for runner in runners:
                    batch.setdefault(runner, []).append((writer.settings.path, *writer.written))
        for runner, files in batch.items():
            runner.trigger(WriteNotice(revision, tuple(files)))
        if ok:
            self._confirm()
        else:
            failed = [w.settings.path for w in self.writers if not w.status.current]
            self._emit("output_failed", outputs=failed, revision=revision)
        return ok

    def _confirm(self) -> None:
        if all(w.status.current for w in self.writers):
            self.state.sync.last_sync = time.time()
            self.state.sync.last_sync_monotonic = time.monotonic()

    def _watch(self) -> bool:
        """Watch from the revision after the applied one until stopped (returns False) or until a
        relist is due (returns True). Raises EtcdError when the stream breaks."""
        stream = self.client.watch(self._watch_range, self.state.revision + 1)
        log.info("watch_requested", endpoint=stream.endpoint, revision=self.state.revision + 1)
        try:
            self._consume(stream)
            return False
        except _Restart as restart:
            self._restarted(restart.reason)
            return True
        except EtcdError as exc:
            self._restarted(exc.reason)
            raise
        finally:
            self.state.sync.connected = False
            stream.close()

    def _established(self, stream: WatchStream) -> None:
        """etcd confirmed the watch: from here on nothing is missed until the stream breaks."""
        sync = self.state.sync
        recovered = sync.endpoint != stream.endpoint or not sync.connected
        sync.connected = True
        sync.endpoint = stream.endpoint
        sync.access_denied = None
        self._backoff.reset()
        log.info("watch_established", endpoint=stream.endpoint, revision=self.state.revision)
        if recovered:
            self._emit("watching", revision=self.state.revision)

    def _consume(self, stream: WatchStream) -> None:
        settings = self._settings
        now = self._clock()
        resync_at = now + settings.resync_interval if settings.resync_interval > 0 else None
        tls_check_at = now + TLS_CHECK_INTERVAL
        verify_at = now + VERIFY_INTERVAL
        retry_at = now + WRITE_RETRY_INTERVAL
        suspect: list[tuple[int, int]] | None = None  # etcd's fingerprint at the last mismatch
        last_response = now
        progress_asked: float | None = None
        pending_since: float | None = None  # first unflushed change (monotonic)
        last_change = 0.0
        first_arrival: float | None = None
        while not self._stopping.is_set():
            self._beat()
            timeout = TICK
            if pending_since is not None:
                due = min(last_change + settings.debounce, pending_since + self._max_delay)
                timeout = min(timeout, max(0.0, due - self._clock()))
            item = stream.next(timeout)
            now = self._clock()
            if item is not None:
                last_response = now
                progress_asked = None
                if not self.state.sync.connected and stream.created:
                    self._established(stream)
            if isinstance(item, WatchBatch):
                before = self.state.ignored_events
                changed = self.state.apply(item.events)
                if self.state.ignored_events != before:
                    self._metrics.ignored_events.inc(self.state.ignored_events - before)
                if changed:
                    if pending_since is None:
                        pending_since, first_arrival = now, item.received
                    last_change = now
            elif isinstance(item, Progress) and pending_since is None:
                self._confirm()
            if pending_since is not None and now >= min(
                last_change + settings.debounce, pending_since + self._max_delay
            ):
                self._flush(first_arrival)
                pending_since = first_arrival = None
            if progress_asked is None and now - last_response >= self._progress_interval:
                stream.request_progress()
                progress_asked = now
            elif progress_asked is not None and now - progress_asked >= STALL_TIMEOUT:
                raise WatchStalled(f"{stream.endpoint}: no answer for {now - last_response:.0f}s")
            if pending_since is None and now >= retry_at:
                retry_at = now + WRITE_RETRY_INTERVAL
                if any(w.failed_stage == "write" for w in self.writers):
                    self._flush(None)
            if pending_since is None and now >= verify_at:
                suspect = self._verify(suspect)
                verify_at = self._clock() + VERIFY_INTERVAL
            if resync_at is not None and now >= resync_at:
                raise _Restart("resync")
            if now >= tls_check_at:
                tls_check_at = now + TLS_CHECK_INTERVAL
                if self.client.tls_files_changed():
                    self.client.reconnect()
                    raise _Restart("tls_rotated")
        if pending_since is not None:
            self._flush(first_arrival)

    def _verify(self, suspect: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        """Compare the mirror with etcd's fingerprint. A mismatch may be events still in flight, so
        only the same mismatch seen twice in a row, with etcd unchanged in between, forces a
        relist. Returns the fingerprint to remember as suspect, or None when all agree."""
        remote = self.client.fingerprint(self._ranges)
        local = self.state.fingerprint()
        if remote == local:
            self._confirm()
            return None
        if suspect == remote:
            log.warning("mirror_drift", revision=self.state.revision)
            raise _Restart("drift")
        return remote

    def _restarted(self, reason: str) -> None:
        self.state.sync.watch_restarts += 1
        self._metrics.watch_restarts.labels(reason=reason).inc()
        log.info("watch_restarting", reason=reason, revision=self.state.revision)

    def _etcd_failed(self, exc: EtcdError) -> None:
        self._metrics.errors.labels(stage="etcd").inc()
        if isinstance(exc, AccessDenied):
            self.state.sync.access_denied = str(exc)
        log.warning(
            "etcd_failed",
            reason=exc.reason,
            error=str(exc),
            endpoint=self.client.endpoint,
            revision=self.state.revision,
        )
        self._emit("etcd_failed", reason=exc.reason)
        # Compaction and cancellation are answers from a healthy member: relist there. Anything
        # else may be this member's fault, so the next attempt goes to the next endpoint.
        if not isinstance(exc, Compacted | WatchCanceled):
            self.client.fail_over()


def build_state(settings: Settings) -> MirrorState:
    return MirrorState(
        ranges=selector_ranges(settings),
        outputs=[OutputStatus(path=o.path, format=o.format) for o in settings.outputs],
    )
