"""Kubernetes Events on the sidecar's own Pod: ConfigSynced, EtcdUnavailable, EtcdRecovered, ..."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sidecar.logs import get_logger
from sidecar.metrics import Metrics
from sidecar.settings import Settings

log = get_logger("k8s_events")

# Shown as the Event's reporter in `kubectl describe pod` / `kubectl events`; a qualified name,
# as the API server requires for reportingController.
REPORTING_CONTROLLER = "etcd-config-sidecar"
# etcd restarts, leader changes and rolling upgrades make the sidecar retry for a few seconds all
# the time; only an outage that outlasts them is worth a Warning on the Pod. The sync loop's own
# backoff is capped at 5 s, so 10 s means at least two failed attempts in a row after the first.
OUTAGE_THRESHOLD = 10.0
# At most one API call per reason per minute, whatever etcd does: Events are read by people in
# `kubectl describe`, and the API server is shared by the whole cluster. Repeats inside the minute
# are counted and sent as one Event series update when the minute is over.
RATE_INTERVAL = 60.0
# client-go's events library closes a series after 6 minutes without a repeat; a later repeat then
# starts a new Event, so that an outage today is not reported as the 5th of last week's.
SERIES_IDLE = 360.0
# (connect, read) seconds per API call: the sender thread must not hang on a dead API server.
REQUEST_TIMEOUT = (3.0, 5.0)
# Notifications waiting for the sender thread; beyond this they are dropped (Events are
# best-effort), so that a wedged API server can never make the sidecar grow without bound.
MAX_PENDING = 1000
# The API server rejects longer notes (events.k8s.io/v1: note at most 1 kB).
NOTE_LIMIT = 1024
# What `auto` looks for before importing the client: kubelet mounts the service account token
# here when the pod may talk to the API (the chart mounts it into the sidecar only when enabled).
SERVICE_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
STOP_TIMEOUT = 1.0


class EventsHandle(Protocol):
    def notify(self, event: str, fields: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class PodRef:
    """The Pod the Events are about. `uid` is what `kubectl describe pod` matches Events on."""

    name: str
    namespace: str
    uid: str | None = None

    def regarding(self) -> dict[str, str]:
        ref = {"apiVersion": "v1", "kind": "Pod", "name": self.name, "namespace": self.namespace}
        if self.uid:
            ref["uid"] = self.uid
        return ref


@dataclass(frozen=True)
class Occurrence:
    """One thing worth telling the Pod's readers. Equal occurrences form one Event series, so the
    note holds only what stays the same between repeats (the API server forbids changing it)."""

    reason: str
    type: str  # Normal or Warning
    action: str
    note: str


@dataclass
class _Series:
    occurrence: Occurrence
    first_wall: float
    last_wall: float
    last_seen: float  # monotonic
    count: int = 1
    name: str | None = None  # set once the API server has the Event
    dirty: bool = True  # has observations the API server has not been told about


@dataclass(frozen=True)
class Call:
    """One API request the planner wants made: create an Event or patch its series."""

    kind: str  # "create" or "patch"
    reason: str
    name: str
    body: dict[str, Any]
    count: int
    series: _Series


def micro_time(wall: float) -> str:
    """A metav1.MicroTime. The client re-serialises a create body through its model with
    datetime.isoformat(), which drops the fraction when it is zero, and the API server's parser
    then rejects the value; a non-zero microsecond keeps it in the exact format it expects."""
    stamp = datetime.fromtimestamp(wall, UTC)
    if stamp.microsecond == 0:
        stamp = stamp.replace(microsecond=1)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def output_failed_note(outputs: Sequence[str]) -> str:
    """Names the outputs (paths are not secret), never a value or an error text."""
    paths = sorted(set(outputs)) or ["(unknown)"]
    tail = "; the last good file is kept (details in the sidecar's log)"
    listed = list(paths)
    while True:
        more = len(paths) - len(listed)
        text = f"could not render or write {', '.join(listed)}"
        text += f" and {more} more{tail}" if more else tail
        if len(text.encode()) <= NOTE_LIMIT or len(listed) == 1:
            break
        listed.pop()
    return text.encode()[:NOTE_LIMIT].decode(errors="ignore")


class EventPlanner:
    """Turns sync-loop notifications into Event API calls: outage timing, series, rate limits.
    Pure: it is given the time, makes no calls itself, and so is tested with a fake clock."""

    def __init__(
        self,
        pod: PodRef,
        outputs: int,
        *,
        threshold: float = OUTAGE_THRESHOLD,
        rate_interval: float = RATE_INTERVAL,
        series_idle: float = SERIES_IDLE,
        names: Callable[[], str] | None = None,
    ) -> None:
        self.pod = pod
        self._outputs = outputs
        self.threshold = threshold
        self.rate_interval = rate_interval
        self.series_idle = series_idle
        self._names = names or (lambda: f"{pod.name[:200]}.{time.time_ns():x}")
        self._synced_once = False
        self._outage_since: tuple[float, float] | None = None  # (monotonic, wall)
        self._outage_reason = ""
        self._outage_reported = False
        self._series: dict[Occurrence, _Series] = {}
        self._last_call: dict[str, float] = {}

    # --- input ------------------------------------------------------------------------------------

    def observe(self, event: str, fields: dict[str, Any], now: float, wall: float) -> None:
        """A notification from the sync loop, with the time it was emitted."""
        if event in ("synced", "sync_incomplete", "watching"):
            # A full read succeeded or a watch is established: etcd answers again, whatever
            # happened to the files.
            self.tick(now)
            if self._outage_reported:
                self._occur(
                    Occurrence(
                        "EtcdRecovered", "Normal", "Sync", "etcd answers again; syncing resumed"
                    ),
                    now,
                    wall,
                )
            self._outage_since = None
            self._outage_reported = False
            if event == "synced" and not self._synced_once:
                self._synced_once = True
                note = (
                    f"all {self._outputs} output(s) written from etcd revision "
                    f"{fields.get('revision', 0)}"
                )
                self._occur(Occurrence("ConfigSynced", "Normal", "Sync", note), now, wall)
        elif event == "etcd_failed":
            if self._outage_since is None:
                self._outage_since = (now, wall)
                self._outage_reason = str(fields.get("reason") or "error")
        elif event == "output_failed":
            note = output_failed_note([str(p) for p in fields.get("outputs") or ()])
            self._occur(Occurrence("OutputFailed", "Warning", "Write", note), now, wall)

    def tick(self, now: float) -> None:
        """Report an outage once it has lasted `threshold`, dated when it crossed it."""
        if self._outage_since is None or self._outage_reported:
            return
        since, since_wall = self._outage_since
        if now - since < self.threshold:
            return
        self._outage_reported = True
        note = (
            f"etcd has not answered for {self.threshold:g}s ({self._outage_reason}); "
            "the outputs keep their last good content"
        )
        occurrence = Occurrence("EtcdUnavailable", "Warning", "Sync", note)
        self._occur(occurrence, since + self.threshold, since_wall + self.threshold)

    def _occur(self, occurrence: Occurrence, now: float, wall: float) -> None:
        series = self._series.get(occurrence)
        if series is not None and now - series.last_seen <= self.series_idle:
            series.count += 1
            series.last_wall = wall
            series.last_seen = now
            series.dirty = True
            return
        self._series[occurrence] = _Series(occurrence, wall, wall, now)
        # Finished series are only kept to be continued; forget them so memory stays flat.
        for key in [k for k, s in self._series.items() if now - s.last_seen > self.series_idle]:
            if not self._series[key].dirty:
                del self._series[key]

    # --- output -----------------------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """When `tick`/`due` next have something to do (monotonic), or None."""
        times = []
        if self._outage_since is not None and not self._outage_reported:
            times.append(self._outage_since[0] + self.threshold)
        for series in self._series.values():
            if series.dirty:
                last = self._last_call.get(series.occurrence.reason)
                times.append(series.last_seen if last is None else last + self.rate_interval)
        return min(times, default=None)

    def due(self, now: float) -> list[Call]:
        """The calls allowed now: at most one per reason, the longest-waiting series first."""
        calls = []
        pending = sorted((s for s in self._series.values() if s.dirty), key=lambda s: s.last_seen)
        for series in pending:
            reason = series.occurrence.reason
            last = self._last_call.get(reason)
            if last is not None and now - last < self.rate_interval:
                continue
            self._last_call[reason] = now
            series.dirty = False
            calls.append(self._call(series))
        return calls

    def done(self, call: Call, ok: bool, status: int | None = None) -> None:
        """The outcome of a call. A failed call is not retried by itself (Events are best-effort);
        the next repeat carries the whole count. A series whose Event has gone (expired after the
        API server's event TTL, or deleted) starts again as a new Event."""
        series = call.series
        if ok and call.kind == "create":
            series.name = call.name
        elif not ok and call.kind == "patch" and status == 404:
            series.name = None
            series.dirty = True

    def _call(self, series: _Series) -> Call:
        occurrence = series.occurrence
        if series.name is None:
            name = self._names()
            body: dict[str, Any] = {
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": self.pod.namespace},
                "eventTime": micro_time(series.first_wall),
                "reportingController": REPORTING_CONTROLLER,
                "reportingInstance": self.pod.name[:128],
                "action": occurrence.action,
                "reason": occurrence.reason,
                "type": occurrence.type,
                "note": occurrence.note,
                "regarding": self.pod.regarding(),
            }
            if series.count >= 2:
                body["series"] = self._series_body(series)
            return Call("create", occurrence.reason, name, body, series.count, series)
        body = {"series": self._series_body(series)}
        return Call("patch", occurrence.reason, series.name, body, series.count, series)

    @staticmethod
    def _series_body(series: _Series) -> dict[str, Any]:
        return {"count": series.count, "lastObservedTime": micro_time(series.last_wall)}


class SendError(Exception):
    """An API call that did not succeed. `status` is the HTTP status, None when there was none."""

    def __init__(self, summary: str, status: int | None = None) -> None:
        super().__init__(summary)
        self.status = status


class Sender(Protocol):
    def create(self, namespace: str, body: dict[str, Any]) -> None: ...

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...


class ApiSender:
    """events.k8s.io/v1 through the official client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes.client import EventsV1Api

        self._api = EventsV1Api(api_client)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        # This client version sends a create without a Content-Type (its _content_type is
        # ignored there); the API server would assume JSON, but say it rather than rely on that.
        self._call(
            self._api.create_namespaced_event,
            namespace,
            body,
            _headers={"Content-Type": "application/json"},
        )

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        # Strategic merge, as client-go's event recorder sends series updates; explicit, because
        # this client's default patch type depends on the body's Python type.
        self._call(
            self._api.patch_namespaced_event,
            name,
            namespace,
            body,
            _content_type="application/strategic-merge-patch+json",
        )

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            # Raw response: nothing here needs the Event back, and skipping the model keeps a
            # newer API server's extra fields from ever failing a call that succeeded.
            response = method(
                *args, _request_timeout=REQUEST_TIMEOUT, _preload_content=False, **kwargs
            )
        except ApiException as exc:
            raise SendError(f"{exc.status} {exc.reason}".strip(), exc.status or None) from None
        except Exception as exc:  # connection refused, timeouts, TLS: the API is unreachable
            raise SendError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        response.read()
        response.release_conn()


def connect(mode: str) -> Sender | None:
    """An API client for the Events: in-cluster credentials, or (mode `on` only) the kubeconfig
    the standard loader finds (KUBECONFIG, else ~/.kube/config) — which is how the feature runs
    outside a cluster and in the tests. None when `auto` finds no in-cluster credentials (or no
    client installed: `auto` is a default and stays quiet about it)."""
    try:
        from kubernetes import client, config
    except ImportError:
        if mode != "on":
            return None
        raise RuntimeError(
            "the Kubernetes client is not installed: pip install 'etcd-config-sidecar[kubernetes]'"
        ) from None
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        source = "in-cluster"
    except config.ConfigException:
        if mode != "on":
            return None
        # persist_config=False: never rewrite the user's kubeconfig from a sidecar.
        config.load_kube_config(client_configuration=configuration, persist_config=False)
        source = "kubeconfig"
    # One retry covers a pooled connection the API server closed; more would only delay the
    # report of a real outage.
    configuration.retries = 1
    log.info("k8s_events_client", source=source, host=configuration.host)
    return ApiSender(client.ApiClient(configuration))


class EventRecorder:
    """The handle the sync loop notifies. `notify` only queues (it runs on the sync thread); the
    `k8s-events` thread imports the client, plans and sends, so that neither a slow API server nor
    the client's import time ever touches syncing or readiness."""

    def __init__(
        self,
        planner: EventPlanner,
        metrics: Metrics,
        connect: Callable[[], Sender | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.planner = planner
        self._metrics = metrics
        self._connect = connect
        self._clock = clock
        self._wall = wall
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any], float, float] | None]
        self._queue = queue.SimpleQueue()
        self._closed = False
        self._failing = False
        self._thread = threading.Thread(target=self._main, name="k8s-events", daemon=True)
        # The series exists (at 0) as soon as the feature is on, so alerts can use rate().
        metrics.errors.labels(stage="k8s_events")

    def start(self) -> EventRecorder:
        self._thread.start()
        return self

    def notify(self, event: str, fields: dict[str, Any]) -> None:
        if self._closed or self._queue.qsize() >= MAX_PENDING:
            return
        self._queue.put((event, dict(fields), self._clock(), self._wall()))

    def stop(self) -> None:
        """Stop sending; waits briefly, since shutdown has a 5 s budget and Events are optional."""
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT)

    # --- the k8s-events thread --------------------------------------------------------------------

    def _main(self) -> None:
        try:
            sender = self._connect()
        except Exception as exc:
            self._closed = True
            self._metrics.errors.labels(stage="k8s_events").inc()
            log.error("k8s_events_unavailable", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        if sender is None:
            self._closed = True
            log.info("k8s_events_off", reason="no in-cluster credentials or no client installed")
            return
        try:
            self._loop(sender)
        except Exception as exc:
            # A bug here must not take the sidecar with it: syncing goes on without Events.
            self._closed = True
            self._metrics.errors.labels(stage="k8s_events").inc()
            log.error("k8s_events_crashed", error=type(exc).__name__)

    def _loop(self, sender: Sender) -> None:
        while True:
            wake = self.planner.next_wakeup()
            timeout = None if wake is None else max(0.0, wake - self._clock())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = ()
            while item is not None:
                if item:
                    self.planner.observe(*item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if item is None:
                return
            now = self._clock()
            self.planner.tick(now)
            for call in self.planner.due(now):
                self._send(sender, call)

    def _send(self, sender: Sender, call: Call) -> None:
        namespace = self.planner.pod.namespace
        try:
            if call.kind == "create":
                sender.create(namespace, call.body)
            else:
                sender.patch(namespace, call.name, call.body)
        except SendError as exc:
            self.planner.done(call, ok=False, status=exc.status)
            self._metrics.errors.labels(stage="k8s_events").inc()
            fields = {"reason": call.reason, "call": call.kind, "error": str(exc)}
            if self._failing:
                log.debug("k8s_event_failed", **fields)
            else:
                # Logged once per failure streak: missing RBAC would otherwise log every minute.
                self._failing = True
                log.warning("k8s_event_failed", **fields)
            return
        self.planner.done(call, ok=True)
        if self._failing:
            self._failing = False
            log.info("k8s_events_recovered")
        log.info("k8s_event_sent", reason=call.reason, call=call.kind, count=call.count)


def start_events(settings: Settings, metrics: Metrics) -> EventsHandle | None:
    """The Events handle for `run`, or None when the feature is off. Never raises: a sidecar that
    cannot report Events still syncs."""
    mode = settings.kubernetes_events
    if mode == "off":
        return None
    if not settings.pod_name or not settings.pod_namespace:
        if mode == "on":
            metrics.errors.labels(stage="k8s_events").inc()
            log.error(
                "k8s_events_unavailable",
                error="POD_NAME and POD_NAMESPACE are not set; set them from the downward API",
            )
        return None
    if mode == "auto" and not os.path.isfile(SERVICE_TOKEN_FILE):
        # Not in a cluster (or no token mounted): no need to import the client to know that.
        return None
    # POD_UID (downward API metadata.uid) lets `kubectl describe pod` find the Events.
    pod = PodRef(settings.pod_name, settings.pod_namespace, settings.pod_uid)
    planner = EventPlanner(pod, len(settings.outputs))
    return EventRecorder(planner, metrics, lambda: connect(mode)).start()
