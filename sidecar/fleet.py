"""`fleet`: compare the sidecars of matching pods through the Kubernetes API's port-forward."""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

EXIT_AGREE, EXIT_DRIFT, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
# Pods are read in parallel, but not all at once: each one is a WebSocket through the API server.
PARALLEL = 8
SHORT_SHA = 12
VALUE_WIDTH = 60
PROG = "etcd-config-sidecar fleet"


class _UsageError(Exception):
    pass


class _ApiError(Exception):
    pass


@dataclass
class PodResult:
    """What one pod's sidecar said, or why it could not be asked."""

    name: str
    revision: int | None = None
    outputs: list[tuple[str, str | None]] = field(default_factory=list)  # (path, sha256 or None)
    found: bool | None = None  # KEY present in the mirror (None: no KEY asked)
    value: str | None = None
    problems: list[str] = field(default_factory=list)  # not fatal: outputs not current, not ready
    error: str | None = None  # fatal: the sidecar could not be read

    @property
    def reachable(self) -> bool:
        return self.error is None

    def fingerprint(self) -> tuple[Any, ...]:
        """What must be equal across pods for them to agree: the bytes of each output on disk
        (its sha256), output by output in the order the sidecar is configured with, and, with
        KEY, the value as the sidecar shows it. Not the revision: a sidecar's revision only moves
        when its own keys change or it re-reads etcd, so pods with identical files routinely
        report different revisions. Not the paths: pods of one workload share them anyway."""
        return (tuple(sha for _, sha in self.outputs), self.found, self.value)


def fleet_command(args: argparse.Namespace) -> int:
    """Print one row per pod and return the SPEC's exit status: 0 all agree, 1 drift, 2 usage
    error, 3 a pod (or the API server) could not be reached."""
    try:
        key = _check_args(args)
        core, portforward = _api(args)
        pods = _list_pods(core, args.namespace, args.selector, args.timeout)
    except _UsageError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    except _ApiError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_UNREACHABLE
    if not pods:
        sys.stderr.write(
            f"{PROG}: --selector {args.selector!r} matches no pod in namespace {args.namespace}\n"
        )
        return EXIT_USAGE
    results = _read_all(core, portforward, pods, args.namespace, args.port, key, args.timeout)
    drifted = find_drift(results)
    print_table(results, drifted, key, sys.stdout)
    if drifted:
        return EXIT_DRIFT
    if any(not r.reachable for r in results):
        return EXIT_UNREACHABLE
    return EXIT_AGREE


def _check_args(args: argparse.Namespace) -> str | None:
    if not args.namespace.strip():
        raise _UsageError("--namespace must not be empty")
    if not args.selector.strip():
        raise _UsageError("--selector must not be empty; e.g. app=shop")
    if not 0 < args.port < 65536:
        raise _UsageError(f"--port {args.port} is not a TCP port (1-65535)")
    if not args.timeout > 0:
        raise _UsageError(f"--timeout {args.timeout} must be more than 0 seconds")
    if args.key is None:
        return None
    if not args.key.strip("/"):
        raise _UsageError(f"KEY {args.key!r} must name a key, e.g. /apps/shop/db/host")
    return "/" + args.key.lstrip("/")


def _api(args: argparse.Namespace) -> tuple[Any, Any]:
    """The user's credentials, found the way kubectl finds them: --kubeconfig, else KUBECONFIG,
    else ~/.kube/config, else (inside a pod) the pod's service account."""
    try:
        import websocket
        from kubernetes import client, config
        from kubernetes.stream import portforward
    except ImportError:
        raise _UsageError(
            "needs the Kubernetes client: pip install 'etcd-config-sidecar[kubernetes]'"
        ) from None
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=args.kubeconfig,
            context=args.context,
            client_configuration=configuration,
            persist_config=False,
        )
    except Exception as exc:
        if args.kubeconfig or args.context:
            raise _UsageError(f"cannot use the kubeconfig: {_one_line(exc)}") from None
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            raise _UsageError(
                f"no kubeconfig found ({_one_line(exc)}); give --kubeconfig or set KUBECONFIG"
            ) from None
    configuration.retries = 1
    # The client opens port-forward WebSockets without a timeout of its own; a global default is
    # fine in this short-lived command and keeps a dead API server from hanging it.
    websocket.setdefaulttimeout(args.timeout)
    return client.CoreV1Api(client.ApiClient(configuration)), portforward


def _list_pods(core: Any, namespace: str, selector: str, timeout: float) -> list[Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        listing = core.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=timeout
        )
    except ApiException as exc:
        message = _status_message(exc)
        if exc.status == 400:
            raise _UsageError(f"--selector {selector!r}: {message}") from None
        raise _ApiError(f"cannot list pods in namespace {namespace}: {message}") from None
    except Exception as exc:
        raise _ApiError(f"cannot reach the Kubernetes API: {_one_line(exc)}") from None
    return sorted(listing.items, key=lambda pod: pod.metadata.name)


def _status_message(exc: Any) -> str:
    """The API server's Status message (it names the resource and the verb that was refused)."""
    try:
        status = json.loads(exc.body)
        return f"{exc.status} {status.get('reason') or exc.reason}: {status['message']}"
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def _read_all(
    core: Any,
    portforward: Any,
    pods: Sequence[Any],
    namespace: str,
    port: int,
    key: str | None,
    timeout: float,
) -> list[PodResult]:
    results = [PodResult(pod.metadata.name) for pod in pods]
    slots = threading.Semaphore(PARALLEL)

    def work(pod: Any, result: PodResult) -> None:
        with slots:
            _read_pod(core, portforward, pod, namespace, port, key, timeout, result)

    # Daemon threads and a deadline: a pod that hangs past its timeout is reported, not waited on.
    threads = [
        threading.Thread(target=work, args=(pod, result), name=f"fleet-{pod.metadata.name}")
        for pod, result in zip(pods, results, strict=True)
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    waves = (len(pods) + PARALLEL - 1) // PARALLEL
    deadline = time.monotonic() + timeout * waves + 1.0
    for thread, result in zip(threads, results, strict=True):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            result.error = f"no answer within {timeout:g}s"
    return results


def _read_pod(
    core: Any,
    portforward: Any,
    pod: Any,
    namespace: str,
    port: int,
    key: str | None,
    timeout: float,
    result: PodResult,
) -> None:
    phase = pod.status.phase if pod.status else None
    if phase != "Running":
        result.error = f"pod is {phase or 'in an unknown phase'}"
        return
    try:
        forward = portforward(
            core.connect_get_namespaced_pod_portforward,
            pod.metadata.name,
            namespace,
            ports=str(port),
        )
    except Exception as exc:
        result.error = f"port-forward refused: {_handshake_error(exc)}"
        return
    connection = _ForwardedConnection(forward.socket(port), timeout)
    try:
        status = _get_json(connection, "/v1/status", last=key is None)
        _take_status(status, result)
        if key is not None:
            path = "/v1/keys" + urllib.parse.quote(key, safe="/")
            entry = _get_json(connection, path, last=True, allow_404=True)
            result.found = "value" in entry
            if result.found:
                value = str(entry["value"])
                encoding = entry.get("value_encoding")
                result.value = f"{encoding}:{value}" if encoding else value
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # The forward's error channel says why the pod's port could not be reached (e.g.
        # connection refused inside the pod); that beats the bare EOF the socket sees.
        reason = forward.error(port) or _one_line(exc) or type(exc).__name__
        result.error = f"cannot reach port {port}: {_one_line(reason)}"
    finally:
        connection.close()
        forward.close()


def _handshake_error(exc: Any) -> str:
    text = _one_line(getattr(exc, "reason", None) or exc)
    match = re.search(r"Handshake status (\d{3}) ([A-Za-z ]+?)(?: -\+-|$)", text)
    if match:
        code = match.group(1)
        hint = " (needs RBAC pods/portforward)" if code == "403" else ""
        return f"{code} {match.group(2).strip()}{hint}"
    return text


class _ForwardedConnection(http.client.HTTPConnection):
    """HTTP over the port-forward's socket instead of a TCP connection of its own."""

    def __init__(self, sock: Any, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._forwarded = sock

    def connect(self) -> None:
        self._forwarded.settimeout(self.timeout)
        self.sock = self._forwarded


class _SidecarAnswer(ValueError):
    pass


def _get_json(
    connection: http.client.HTTPConnection, path: str, *, last: bool, allow_404: bool = False
) -> dict[str, Any]:
    # Both requests share one forwarded connection: each WebSocket forwards one TCP stream.
    headers = {"Connection": "close"} if last else {}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status == 200 or (allow_404 and response.status == 404):
        data = json.loads(body)
        if not isinstance(data, dict):
            raise _SidecarAnswer(f"{path} answered {type(data).__name__}, not an object")
        return data
    if response.status == 403:
        raise _SidecarAnswer(f"{path} refused (403); the sidecar's --lookup-access is off")
    raise _SidecarAnswer(f"{path} answered {response.status}")


def _take_status(status: dict[str, Any], result: PodResult) -> None:
    result.revision = status.get("revision")
    for output in status.get("outputs") or []:
        path = str(output.get("path"))
        result.outputs.append((path, output.get("sha256")))
        if output.get("last_error"):
            result.problems.append(f"{path}: {output['last_error']}")
    if status.get("ready") is False:
        result.problems.insert(0, "not ready")


def find_drift(results: Sequence[PodResult]) -> set[str]:
    """Names of the pods that differ from the majority of the pods that answered. Without a
    majority (a tie), every pod that answered is flagged: there is no way to tell which is right."""
    answered = [r for r in results if r.reachable]
    groups = Counter(r.fingerprint() for r in answered)
    if len(groups) <= 1:
        return set()
    (top, top_count), (_, second_count) = groups.most_common(2)
    if top_count == second_count:
        return {r.name for r in answered}
    return {r.name for r in answered if r.fingerprint() != top}


def print_table(
    results: Sequence[PodResult], drifted: set[str], key: str | None, out: TextIO
) -> None:
    columns = max((len(r.outputs) for r in results), default=0)
    header = ["POD", "REVISION", *(_output_header(results, i) for i in range(columns))]
    if key is not None:
        header.append(key)
    header += ["STATE", "ERROR"]
    rows = [header]
    for r in results:
        row = [r.name, "-" if r.revision is None else str(r.revision)]
        for index in range(columns):
            if not r.reachable:
                row.append("-")
            elif index >= len(r.outputs):
                row.append("(no such output)")
            else:
                sha = r.outputs[index][1]
                row.append(sha[:SHORT_SHA] if sha else "(not written)")
        if key is not None:
            row.append(_show_value(r))
        if not r.reachable:
            # Not clipped: the last column, and kubelet's errors say what matters at their end.
            row += ["UNREACHABLE", r.error or ""]
        else:
            row += ["DRIFT" if r.name in drifted else "ok", "; ".join(r.problems)]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")
    out.write(_summary(results, drifted) + "\n")


def _output_header(results: Sequence[PodResult], index: int) -> str:
    """The output's path when every pod has it there, else its file name, else its position."""
    paths = {r.outputs[index][0] for r in results if index < len(r.outputs)}
    if len(paths) == 1:
        return paths.pop()
    names = {path.rsplit("/", 1)[-1] for path in paths}
    return names.pop() if len(names) == 1 else f"output {index + 1}"


def _show_value(r: PodResult) -> str:
    if not r.reachable:
        return "-"
    if not r.found:
        return "(not found)"
    # One line per pod whatever the value holds; the sidecar has already applied --redact.
    shown = json.dumps(r.value, ensure_ascii=False)[1:-1]
    return _clip(shown, VALUE_WIDTH)


def _summary(results: Sequence[PodResult], drifted: set[str]) -> str:
    unreachable = [r.name for r in results if not r.reachable]
    parts = [f"{len(results)} pod(s)"]
    if drifted:
        parts.append(f"drift: {', '.join(sorted(drifted))}")
    if unreachable:
        parts.append(f"unreachable: {', '.join(unreachable)}")
    if not drifted and not unreachable:
        parts.append("all agree")
    revisions = {r.revision for r in results if r.reachable}
    if not drifted and len(revisions) > 1:
        parts.append("revisions differ but every output is identical (not drift)")
    return "; ".join(parts)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())
