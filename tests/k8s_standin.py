"""A stand-in Kubernetes API server on 127.0.0.1: pod lists, events.k8s.io/v1 Events, port-forward.

No cluster can run on the test machine, so the Kubernetes features are verified against this: it
speaks exactly the HTTP and WebSocket protocols the official `kubernetes` client uses for

- ``GET /api/v1/namespaces/NS/pods?labelSelector=...``: equality- and set-based label selectors,
  400 ``BadRequest`` for a selector the API server would not parse;
- ``POST``/``PATCH /apis/events.k8s.io/v1/namespaces/NS/events[/NAME]``: every call is recorded
  (``StandIn.calls``); creates and updates are checked like the API server's events.k8s.io/v1
  validation does (required fields, lengths, immutable fields, series rules, MicroTime format) and
  refused with 422 ``Invalid`` otherwise; patches are applied as merge / strategic-merge patches;
- ``GET /api/v1/namespaces/NS/pods/NAME/portforward?ports=P`` over WebSocket, subprotocol
  ``v4.channel.k8s.io``: per port a data and an error channel, each opened with the port number
  (2 bytes, little-endian), frames prefixed with their channel byte; the bytes go to a real TCP
  port on loopback (the pod's "network namespace" is a port map), a refused connection is reported
  on the error channel as kubelet does, and the WebSocket closes when the pod side closes.

Requests need ``Authorization: Bearer <token>`` (401 otherwise); ``StandIn(forbidden=True)``
answers 403 ``Forbidden`` to everything, like an API server without the RBAC for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from polling import wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

PORT_FORWARD_PROTOCOL = "v4.channel.k8s.io"
# Go's time.Parse with metav1.RFC3339Micro ("2006-01-02T15:04:05.000000Z07:00"): exactly six
# fractional digits and a zone; anything else fails to decode on a real API server.
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_EVENT_IMMUTABLE = (
    "regarding",
    "related",
    "reason",
    "note",
    "type",
    "eventTime",
    "action",
    "reportingController",
    "reportingInstance",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
)


@dataclass
class Call:
    """One request as the stand-in received it, and what it answered."""

    method: str
    path: str
    query: str
    content_type: str | None
    body: Any  # parsed JSON, or None
    raw: bytes
    status: int = 0
    at: float = 0.0  # time.monotonic() on arrival
    stored: dict[str, Any] | None = None  # the Event as stored after this call


@dataclass
class StandInPod:
    name: str
    namespace: str
    labels: dict[str, str]
    forward: dict[int, int]  # port in the pod -> real port on 127.0.0.1
    phase: str = "Running"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_api(self, index: int) -> dict[str, Any]:
        return {
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "labels": dict(self.labels),
                "resourceVersion": "1",
                "creationTimestamp": "2024-01-01T00:00:00Z",
            },
            "spec": {
                "containers": [
                    {"name": "app", "image": "example/app:1"},
                    {
                        "name": "etcd-config-sidecar",
                        "image": "example/etcd-config-sidecar:1",
                        "ports": [{"containerPort": p, "protocol": "TCP"} for p in self.forward],
                    },
                ]
            },
            "status": {"phase": self.phase, "podIP": f"10.0.0.{index + 10}"},
        }


class SelectorError(ValueError):
    pass


def parse_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """A label selector as the API server reads it: ``a=b``, ``a==b``, ``a!=b``, ``a in (b,c)``,
    ``a notin (b)``, ``a``, ``!a``, joined by commas. Returns (key, operator, values) triples."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    requirements = []
    for part in parts:
        part = part.strip()
        if not part:
            if text.strip():
                raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
            continue
        if match := re.fullmatch(r"!\s*(\S+)", part):
            requirements.append((_key(match.group(1)), "!", ()))
        elif match := re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", part):
            key, op, value = match.groups()
            requirements.append((_key(key), "!=" if op == "!=" else "=", (_value(value),)))
        elif match := re.fullmatch(r"(\S+)\s+(in|notin)\s*\(([^()]*)\)", part):
            key, op, values = match.groups()
            items = tuple(_value(v.strip()) for v in values.split(","))
            requirements.append((_key(key), op, items))
        elif re.fullmatch(r"[^\s!=(),]+", part):
            requirements.append((_key(part), "exists", ()))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return requirements


def _key(key: str) -> str:
    if not _QUALIFIED_NAME.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
    return value


def selector_matches(requirements: list[tuple[str, str, tuple[str, ...]]], labels: dict) -> bool:
    for key, op, values in requirements:
        present = key in labels
        if op == "=" and labels.get(key) != values[0]:
            return False
        if op == "!=" and present and labels[key] == values[0]:
            return False
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


def _status(code: int, reason: str, message: str, causes: list[dict] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if causes:
        body["details"] = {"causes": causes}
    return JSONResponse(body, status_code=code)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386. For an Event's fields a strategic merge patch means the same (no patch keys)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def validate_event(event: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The API server's events.k8s.io/v1 checks (ValidateEventCreate / ValidateEventUpdate),
    as field paths with what is wrong. Empty when the object would be accepted."""
    errors = []
    meta = event.get("metadata") or {}
    name = meta.get("name") or ""
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: invalid DNS subdomain {name!r}")
    if event.get("apiVersion") != "events.k8s.io/v1" or event.get("kind") != "Event":
        errors.append("apiVersion/kind: must be events.k8s.io/v1 Event")
    for path in ("eventTime",):
        if not _MICRO_TIME.match(str(event.get(path) or "")):
            errors.append(f"{path}: Required value or not a MicroTime: {event.get(path)!r}")
    if event.get("type") not in ("Normal", "Warning"):
        errors.append(f"type: has invalid value: {event.get('type')!r}")
    controller = event.get("reportingController") or ""
    if not controller or not _QUALIFIED_NAME.match(controller) or len(controller) > 316:
        errors.append(f"reportingController: invalid qualified name {controller!r}")
    for path, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
        value = event.get(path) or ""
        if not value or len(value) > limit:
            errors.append(f"{path}: required, at most {limit} characters")
    if len((event.get("note") or "").encode()) > 1024:
        errors.append("note: can have at most 1024 characters")
    regarding = event.get("regarding") or {}
    if regarding.get("namespace") != meta.get("namespace"):
        errors.append("regarding.namespace: does not match event.namespace")
    for path in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedSource"):
        if event.get(path):
            errors.append(f"{path}: needs to be unset")
    if event.get("deprecatedCount"):
        errors.append("deprecatedCount: needs to be unset")
    series = event.get("series")
    if series is not None and (old is None or series != old.get("series")):
        if not isinstance(series.get("count"), int) or series["count"] < 2:
            errors.append("series.count: should be at least 2")
        if not _MICRO_TIME.match(str(series.get("lastObservedTime") or "")):
            errors.append("series.lastObservedTime: Required value or not a MicroTime")
    if old is not None:
        for path in _EVENT_IMMUTABLE:
            if event.get(path) != old.get(path):
                errors.append(f"{path}: field is immutable")
    return errors


class StandIn:
    """The stand-in API server. ``with StandIn() as api: api.add_pod(...); api.url``."""

    def __init__(self, *, forbidden: bool = False, token: str = "stand-in-token") -> None:
        self.forbidden = forbidden
        self.token = token
        self.pods: dict[tuple[str, str], StandInPod] = {}
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/api/v1/namespaces/{ns}/pods", self._list_pods, methods=["GET"]),
                Route("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod, methods=["GET"]),
                WebSocketRoute("/api/v1/namespaces/{ns}/pods/{name}/portforward", self._forward),
                Route(
                    "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                    self._events,
                    methods=["GET", "POST"],
                ),
                Route(
                    "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                    self._event,
                    methods=["GET", "PATCH"],
                ),
                Route(
                    "/{path:path}",
                    self._not_found,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )

    # --- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_pod(
        self,
        name: str,
        namespace: str,
        labels: dict[str, str],
        forward: dict[int, int] | None = None,
        phase: str = "Running",
    ) -> StandInPod:
        pod = StandInPod(name, namespace, dict(labels), dict(forward or {}), phase)
        with self._lock:
            self.pods[(namespace, name)] = pod
        return pod

    def start(self) -> StandIn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="k8s-standin", daemon=True
        )
        self._thread.start()
        wait_until(lambda: self._server.started, timeout=10, message="stand-in did not start")
        return self

    def close(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_kubeconfig(
        self, path: Path, *, namespace: str = "default", dead_current_context: str | None = None
    ) -> Path:
        """A kubeconfig whose context ``stand-in`` points here with the bearer token. With
        ``dead_current_context=URL`` the *current* context is another one pointing at URL, so that
        only ``--context stand-in`` reaches the stand-in."""
        doc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "stand-in-user", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "stand-in",
                    "context": {
                        "cluster": "stand-in",
                        "user": "stand-in-user",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "stand-in",
        }
        if dead_current_context:
            doc["clusters"].append({"name": "dead", "cluster": {"server": dead_current_context}})
            doc["contexts"].append(
                {"name": "dead", "context": {"cluster": "dead", "user": "stand-in-user"}}
            )
            doc["current-context"] = "dead"
        path.write_text(yaml.safe_dump(doc))
        return path

    # --- what happened ---------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def event_calls(self, reason: str | None = None, method: str | None = None) -> list[Call]:
        """Event creates (POST) and patches (PATCH), optionally of one reason (for a patch, the
        reason of the Event it patched)."""
        found = []
        for call in self.calls:
            if "/apis/events.k8s.io/" not in call.path or call.method not in ("POST", "PATCH"):
                continue
            if method is not None and call.method != method:
                continue
            event_reason = (call.stored or call.body or {}).get("reason")
            if reason is None or event_reason == reason:
                found.append(call)
        return found

    def stored_events(self, reason: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            events = [copy.deepcopy(e) for e in self.events.values()]
        return [e for e in events if reason is None or e.get("reason") == reason]

    # --- HTTP ------------------------------------------------------------------------------------

    def _refusal(self, headers: Any, path: str) -> JSONResponse | None:
        if self.forbidden:
            return _status(
                403,
                "Forbidden",
                f'{path} is forbidden: User "system:serviceaccount:test:stand-in" cannot access '
                "this resource",
            )
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            return _status(401, "Unauthorized", "Unauthorized")
        return None

    async def _record(self, request: Request) -> Call:
        raw = await request.body()
        body = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        call = Call(
            request.method,
            request.url.path,
            request.url.query,
            request.headers.get("content-type"),
            body,
            raw,
            at=time.monotonic(),
        )
        with self._lock:
            self._calls.append(call)
        return call

    def _answer(self, call: Call, response: JSONResponse) -> JSONResponse:
        call.status = response.status_code
        return response

    async def _not_found(self, request: Request) -> JSONResponse:
        call = await self._record(request)
        refusal = self._refusal(request.headers, request.url.path)
        return self._answer(call, refusal or _status(404, "NotFound", "the server could not find"))

    async def _list_pods(self, request: Request) -> JSONResponse:
        call = await self._record(request)
        if refusal := self._refusal(request.headers, request.url.path):
            return self._answer(call, refusal)
        namespace = request.path_params["ns"]
        try:
            requirements = parse_selector(request.query_params.get("labelSelector", ""))
        except SelectorError as exc:
            return self._answer(call, _status(400, "BadRequest", str(exc)))
        with self._lock:
            pods = [p for (ns, _), p in sorted(self.pods.items()) if ns == namespace]
        items = [
            pod.to_api(index)
            for index, pod in enumerate(pods)
            if selector_matches(requirements, pod.labels)
        ]
        listing = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }
        return self._answer(call, JSONResponse(listing))

    async def _get_pod(self, request: Request) -> JSONResponse:
        call = await self._record(request)
        if refusal := self._refusal(request.headers, request.url.path):
            return self._answer(call, refusal)
        key = (request.path_params["ns"], request.path_params["name"])
        with self._lock:
            pod = self.pods.get(key)
        if pod is None:
            return self._answer(call, _status(404, "NotFound", f'pods "{key[1]}" not found'))
        pod_object = {"kind": "Pod", "apiVersion": "v1", **pod.to_api(0)}
        return self._answer(call, JSONResponse(pod_object))

    async def _events(self, request: Request) -> JSONResponse:
        call = await self._record(request)
        if refusal := self._refusal(request.headers, request.url.path):
            return self._answer(call, refusal)
        namespace = request.path_params["ns"]
        if request.method == "GET":
            with self._lock:
                items = [e for (ns, _), e in self.events.items() if ns == namespace]
            listing = {"kind": "EventList", "apiVersion": "events.k8s.io/v1", "items": items}
            return self._answer(call, JSONResponse(listing))
        content_type = (call.content_type or "application/json").split(";")[0].strip()
        if content_type != "application/json" or not isinstance(call.body, dict):
            return self._answer(call, _status(415, "UnsupportedMediaType", content_type))
        event = copy.deepcopy(call.body)
        meta = event.setdefault("metadata", {})
        if meta.setdefault("namespace", namespace) != namespace:
            message = "the namespace of the provided object does not match the namespace sent"
            return self._answer(call, _status(400, "BadRequest", message))
        if errors := validate_event(event):
            return self._answer(call, self._invalid(meta.get("name"), errors))
        with self._lock:
            if (namespace, meta["name"]) in self.events:
                message = f'events.events.k8s.io "{meta["name"]}" already exists'
                return self._answer(call, _status(409, "AlreadyExists", message))
            meta.update(uid=str(uuid.uuid4()), resourceVersion="1")
            meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.events[(namespace, meta["name"])] = event
            call.stored = copy.deepcopy(event)
        return self._answer(call, JSONResponse(event, status_code=201))

    async def _event(self, request: Request) -> JSONResponse:
        call = await self._record(request)
        if refusal := self._refusal(request.headers, request.url.path):
            return self._answer(call, refusal)
        key = (request.path_params["ns"], request.path_params["name"])
        with self._lock:
            old = copy.deepcopy(self.events.get(key))
        if old is None:
            message = f'events.events.k8s.io "{key[1]}" not found'
            return self._answer(call, _status(404, "NotFound", message))
        if request.method == "GET":
            return self._answer(call, JSONResponse(old))
        content_type = (call.content_type or "").split(";")[0].strip()
        if content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            # JSON patch and server-side apply exist on a real API server; nothing here uses them.
            return self._answer(call, _status(415, "UnsupportedMediaType", content_type))
        if not isinstance(call.body, dict):
            return self._answer(call, _status(400, "BadRequest", "patch body is not an object"))
        event = _merge_patch(old, call.body)
        if errors := validate_event(event, old):
            return self._answer(call, self._invalid(key[1], errors))
        event["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        with self._lock:
            self.events[key] = event
            call.stored = copy.deepcopy(event)
        return self._answer(call, JSONResponse(event))

    @staticmethod
    def _invalid(name: str | None, errors: list[str]) -> JSONResponse:
        causes = [{"reason": "FieldValueInvalid", "message": e} for e in errors]
        message = f'Event.events.k8s.io "{name}" is invalid: {"; ".join(errors)}'
        return _status(422, "Invalid", message, causes)

    # --- port-forward ----------------------------------------------------------------------------

    async def _forward(self, websocket: WebSocket) -> None:
        path = websocket.url.path
        call = Call("GET", path, websocket.url.query, None, None, b"", at=time.monotonic())
        with self._lock:
            self._calls.append(call)
        if refusal := self._refusal(websocket.headers, path):
            return await self._deny(websocket, call, refusal)
        key = (websocket.path_params["ns"], websocket.path_params["name"])
        with self._lock:
            pod = self.pods.get(key)
        if pod is None:
            return await self._deny(
                websocket, call, _status(404, "NotFound", f'pods "{key[1]}" not found')
            )
        offered = [
            p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        ]
        if PORT_FORWARD_PROTOCOL not in offered:
            message = f"none of the offered subprotocols {offered} is {PORT_FORWARD_PROTOCOL}"
            return await self._deny(websocket, call, _status(400, "BadRequest", message))
        try:
            ports = [
                int(p)
                for value in websocket.query_params.getlist("ports")
                for p in value.split(",")
            ]
            if not ports or not all(0 < p < 65536 for p in ports):
                raise ValueError
        except ValueError:
            message = "query parameter ports: a list of port numbers is required"
            return await self._deny(websocket, call, _status(400, "BadRequest", message))
        await websocket.accept(subprotocol=PORT_FORWARD_PROTOCOL)
        call.status = 101
        await self._pump(websocket, pod, ports)

    async def _deny(self, websocket: WebSocket, call: Call, response: JSONResponse) -> None:
        call.status = response.status_code
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1008)

    async def _pump(self, websocket: WebSocket, pod: StandInPod, ports: list[int]) -> None:
        for index, port in enumerate(ports):
            prefix = port.to_bytes(2, "little")
            await websocket.send_bytes(bytes([2 * index]) + prefix)
            await websocket.send_bytes(bytes([2 * index + 1]) + prefix)
        writers: dict[int, asyncio.StreamWriter] = {}
        readers: list[asyncio.Task[None]] = []
        for index, port in enumerate(ports):
            try:
                target = pod.forward.get(port)
                if target is None:
                    raise ConnectionRefusedError(111, "Connection refused")
                reader, writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError as exc:
                # kubelet's words for a port nothing listens on inside the pod.
                why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                message = (
                    f"error forwarding port {port} to pod {pod.uid}, uid : failed to connect to "
                    f"localhost:{port} inside namespace: dial tcp4 127.0.0.1:{port}: connect: {why}"
                )
                await websocket.send_bytes(bytes([2 * index + 1]) + message.encode())
                continue
            writers[index] = writer
            readers.append(asyncio.create_task(self._from_pod(websocket, index, reader)))
        if not writers:
            await websocket.close()
            return
        from_client = asyncio.create_task(self._from_client(websocket, writers))
        # Like kubelet: done when every pod-side stream has ended, or when the client goes away.
        all_readers = asyncio.gather(*readers)
        await asyncio.wait({from_client, all_readers}, return_when=asyncio.FIRST_COMPLETED)
        for task in (from_client, all_readers):
            task.cancel()
        for writer in writers.values():
            writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()

    @staticmethod
    async def _from_pod(websocket: WebSocket, index: int, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while chunk := await reader.read(65536):
                await websocket.send_bytes(bytes([2 * index]) + chunk)

    @staticmethod
    async def _from_client(websocket: WebSocket, writers: dict[int, asyncio.StreamWriter]) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            if not data or data[0] % 2:
                continue  # nothing, or a write to an error channel, which is read-only
            writer = writers.get(data[0] // 2)
            if writer is not None:
                writer.write(data[1:])
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
