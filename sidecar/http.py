"""The HTTP surface: /health, /ready, /metrics and the /v1 lookups, read from in-memory state."""

from __future__ import annotations

import base64
import fnmatch
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar import __version__
from sidecar.etcd import KeyValue
from sidecar.loopback import is_loopback
from sidecar.metrics import Metrics
from sidecar.settings import Settings
from sidecar.state import MirrorState

# The sync loop wakes at least every half second; a minute without a heartbeat means it is wedged
# (a large relist takes seconds, not minutes). Kubelet then restarts the container, which is the
# right cure for a stuck loop and harmless for the app: the last good file stays on the volume.
STUCK_AFTER = 60.0
REDACTED = "<redacted>"


def lookup_allowed(access: str, client_host: str | None) -> bool:
    if access == "any":
        return True
    if access == "local":
        return is_loopback(client_host)
    return False


def is_redacted(key: str, patterns: Sequence[str]) -> bool:
    lowered = key.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def _decode(data: bytes) -> tuple[str, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def key_entry(kv: KeyValue, patterns: Sequence[str]) -> dict[str, Any]:
    """One key as /v1 shows it. A value that is not UTF-8 is shown base64-encoded with
    "value_encoding": "base64"; a key name that is not UTF-8 gets replacement characters."""
    key = kv.key.decode("utf-8", errors="replace")
    entry: dict[str, Any] = {"key": key}
    if is_redacted(key, patterns):
        entry["value"] = REDACTED
    else:
        value, encoding = _decode(kv.value)
        entry["value"] = value
        if encoding:
            entry["value_encoding"] = encoding
    entry["mod_revision"] = kv.mod_revision
    return entry


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def create_app(settings: Settings, state: MirrorState, metrics: Metrics) -> Starlette:
    """The app for one sidecar. Handlers only read memory, so a slow etcd or disk never slows a
    probe."""

    async def health(request: Request) -> JSONResponse:
        """Liveness. 503 makes kubelet restart the container: only when the sync loop is dead or
        has not ticked for STUCK_AFTER seconds. etcd being down is not a reason: a restart would
        not bring it back, and the last good file keeps the app working."""
        sync = state.sync
        beat = sync.heartbeat
        if not sync.loop_alive:
            return JSONResponse({"status": "dead", "reason": "sync loop stopped"}, 503)
        if beat is not None and time.monotonic() - beat > STUCK_AFTER:
            stale = round(time.monotonic() - beat)
            return JSONResponse({"status": "stuck", "reason": f"no heartbeat for {stale}s"}, 503)
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        """Readiness and startup. 503 keeps the pod out of Service endpoints (and, as a native
        sidecar's startupProbe, holds the app container back) until every output is current."""
        missing = state.missing_for_ready(time.monotonic(), settings.max_staleness)
        if missing:
            return JSONResponse({"status": "not ready", "missing": missing}, 503)
        return JSONResponse({"status": "ready", "revision": state.outputs_revision})

    async def metrics_endpoint(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(metrics.registry), headers={"Content-Type": content_type})

    def refused(request: Request) -> JSONResponse | None:
        client = request.client.host if request.client else None
        if lookup_allowed(settings.lookup_access, client):
            return None
        why = "off" if settings.lookup_access == "off" else "local (loopback clients only)"
        return JSONResponse({"error": f"lookups are {why}; see --lookup-access"}, 403)

    def list_keys(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        prefix = request.query_params.get("prefix", "").encode()
        revision, kvs = state.copy_kvs()
        entries = [key_entry(kv, settings.redact) for kv in kvs if kv.key.startswith(prefix)]
        return JSONResponse({"revision": revision, "keys": entries})

    async def get_key(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        key = "/" + request.path_params["path"]
        revision, kv = state.get(key.encode())
        if kv is None:
            return JSONResponse({"error": f"key {key} is not mirrored", "revision": revision}, 404)
        return JSONResponse({**key_entry(kv, settings.redact), "revision": revision})

    def status(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        sync = state.sync
        return JSONResponse(
            {
                "version": __version__,
                "endpoints": list(sync.endpoints),
                "endpoint": sync.endpoint,
                "connected": sync.connected,
                "revision": state.outputs_revision,
                "keys": len(state.kvs),
                "last_sync": _iso(sync.last_sync),
                "last_sync_timestamp": sync.last_sync,
                "watch_restarts": sync.watch_restarts,
                "ready": not state.missing_for_ready(time.monotonic(), settings.max_staleness),
                "outputs": [
                    {
                        "path": o.path,
                        "format": o.format,
                        "bytes": o.bytes,
                        "sha256": o.sha256,
                        "revision": o.revision,
                        "current": o.current,
                        "last_write": _iso(o.last_write),
                        "last_error": o.last_error,
                    }
                    for o in state.outputs
                ],
            }
        )

    routes = [
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics_endpoint),
        Route("/v1/keys", list_keys),
        Route("/v1/keys/{path:path}", get_key),
        Route("/v1/status", status),
    ]
    return Starlette(routes=routes)
