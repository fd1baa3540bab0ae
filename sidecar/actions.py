"""On-change actions (signal a process, POST a URL, run a command), each retried with backoff."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.logs import get_logger
from sidecar.loopback import urlopen
from sidecar.metrics import Metrics

log = get_logger("actions")

URL_TIMEOUT = 10.0
EXEC_TIMEOUT = 30.0
RETRY_INITIAL = 0.5
RETRY_CAP = 30.0


class ActionFailed(Exception):
    """Why an action did not succeed; never contains a value of a key."""


@dataclass(frozen=True)
class WriteNotice:
    """What an action may know about the batch that triggered it: files, hashes, no content."""

    revision: int
    files: tuple[tuple[str, str, int], ...]  # (path, sha256, bytes) of each file rewritten

    @property
    def outputs(self) -> str:
        return ",".join(path for path, _, _ in self.files)


def _signal_processes(spec: str, notice: WriteNotice, timeout: float) -> None:
    signame, _, name = spec.partition(":")
    signum = signal.Signals["SIG" + signame]
    pids = find_processes(name)
    if not pids:
        raise ActionFailed(f"no process named {name}")
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        except PermissionError:
            raise ActionFailed(f"not permitted to signal {name} (pid {pid})") from None


def find_processes(name: str) -> list[int]:
    """PIDs whose command name or argv[0] basename is `name` (what pkill/pidof match)."""
    own = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().strip().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        # comm is cut to 15 characters by the kernel, so longer names match on argv[0] only.
        if comm == name or os.path.basename(argv0) == name:
            found.append(int(entry))
    return found


def _post_url(url: str, notice: WriteNotice, timeout: float) -> None:
    body = json.dumps(
        {
            "revision": notice.revision,
            "outputs": [
                {"path": path, "sha256": digest, "bytes": size}
                for path, digest, size in notice.files
            ],
        }
    ).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise ActionFailed(f"POST answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ActionFailed(f"POST failed: {type(reason).__name__}") from None
    if not 200 <= status < 300:
        raise ActionFailed(f"POST answered {status}")


def _run_command(command: str, notice: WriteNotice, timeout: float) -> None:
    try:
        # Output is discarded, not logged: a command may print configuration values.
        result = subprocess.run(
            shlex.split(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ActionFailed(f"timed out after {timeout:g}s") from None
    except OSError as exc:
        raise ActionFailed(f"cannot start: {exc.strerror}") from None
    if result.returncode != 0:
        raise ActionFailed(f"exited with code {result.returncode}")


# Each action is time-limited so that a hung reload endpoint or command cannot pile up behind.
TIMEOUTS = {"signal": 5.0, "url": URL_TIMEOUT, "exec": EXEC_TIMEOUT}
_PERFORMERS: dict[str, Callable[[str, WriteNotice, float], None]] = {
    "signal": _signal_processes,
    "url": _post_url,
    "exec": _run_command,
}


class ActionRunner:
    """Runs one action after each written batch, on its own thread so that a slow
    reload never delays the sync loop. A failure is retried with capped exponential backoff until
    it succeeds or a newer write arrives, which then runs instead (once)."""

    def __init__(
        self, kind: str, spec: str, metrics: Metrics, timeout: float | None = None
    ) -> None:
        self.kind = kind
        self._timeout = TIMEOUTS[kind] if timeout is None else timeout
        self._spec = spec
        self._metrics = metrics
        self._perform = _PERFORMERS[kind]
        self._cond = threading.Condition()
        self._pending: WriteNotice | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"action-{kind}", daemon=True)
        self._thread.start()

    def trigger(self, notice: WriteNotice) -> None:
        with self._cond:
            self._pending = notice
            self._cond.notify()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        delay = RETRY_INITIAL
        while True:
            with self._cond:
                while self._pending is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                notice, self._pending = self._pending, None
            try:
                self._perform(self._spec, notice, self._timeout)
            except Exception as exc:
                # Any failure, expected (ActionFailed) or not (a malformed HTTP answer), is
                # counted and retried: an unexpected exception must not drop a reload.
                error = str(exc) if isinstance(exc, ActionFailed) else type(exc).__name__
                self._metrics.reloads.labels(action=self.kind, result="failure").inc()
                self._metrics.errors.labels(stage="reload").inc()
                log.warning(
                    "action_failed",
                    action=self.kind,
                    outputs=notice.outputs,
                    revision=notice.revision,
                    error=error,
                    retry_in=round(delay, 2),
                )
                with self._cond:
                    # Wait out the backoff unless a newer write arrives; retry the newest.
                    self._cond.wait_for(lambda: self._pending is not None or self._stopped, delay)
                    if self._pending is None:
                        self._pending = notice
                delay = min(RETRY_CAP, delay * 2) * random.uniform(0.8, 1.0)
                continue
            delay = RETRY_INITIAL
            self._metrics.reloads.labels(action=self.kind, result="success").inc()
            log.info(
                "action_done", action=self.kind, outputs=notice.outputs, revision=notice.revision
            )
