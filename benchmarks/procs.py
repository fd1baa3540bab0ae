"""The processes under test: the sidecar (`python -m sidecar run`), the floor, and etcdctl."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from common import free_port, wait_for

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable


_CHILDREN: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_children() -> None:
    """Last resort (an exception or Ctrl-C mid-scenario): no sidecar or floor outlives the run."""
    for proc in _CHILDREN:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, minus anything that would choose the protobuf
    implementation for it (that is the product's own decision)."""
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    env.update(extra or {})
    return env


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Sidecar:
    """`python -m sidecar run` on a free loopback port, started from the product tree `product`
    (its `sidecar` package is found first on sys.path), logs in `workdir`."""

    def __init__(
        self,
        product: Path,
        workdir: Path,
        endpoint: str,
        prefix: str,
        output: Path,
        debounce: float | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.product = product
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.output = output
        self.log_path = workdir / f"sidecar-{self.port}.log"
        self.args = [
            "run",
            "--etcd-endpoints",
            endpoint,
            "--prefix",
            prefix,
            "--output",
            str(output),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--kubernetes-events",
            "off",
            "--log-format",
            "json",
            *(["--debounce", f"{debounce:g}"] if debounce is not None else []),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Sidecar:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "sidecar", *self.args],
                cwd=self.product,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        _CHILDREN.append(self.proc)
        return self

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return _http_get(self.url + path, timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.tail()}")
            return self.get("/ready", 1.0)[0] == 200

        if not wait_for(ready, timeout, 0.02):
            raise RuntimeError(f"sidecar not ready after {timeout:g}s: {self.tail()}")

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 when absent)."""
        status, body = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.compile(
            rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.eE+-]+|NaN)$", re.MULTILINE
        )
        for match in pattern.finditer(body.decode()):
            found = ",".join(sorted((match.group(1) or "").split(","))) if match.group(1) else ""
            if found == wanted:
                return float(match.group(2))
        return 0.0

    def log_events(self) -> list[dict]:
        events = []
        with contextlib.suppress(OSError), open(self.log_path, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Floor:
    """benchmarks/floor.py as a child process."""

    def __init__(self, workdir: Path, endpoint: str, prefix: str, output: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.log_path = workdir / f"floor-{os.getpid()}-{time.monotonic_ns()}.log"
        self.command = [
            PYTHON,
            str(BENCH_DIR / "floor.py"),
            "--endpoint",
            endpoint,
            "--prefix",
            prefix,
            "--output",
            str(output),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.counts: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Floor:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        _CHILDREN.append(self.proc)
        return self

    def _lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"floor exited with {self.proc.returncode}: {self._lines()}")
            return "ready" in self._lines()

        if not wait_for(ready, timeout, 0.02):
            raise RuntimeError(f"floor not ready after {timeout:g}s: {self._lines()[-20:]}")

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for line in reversed(self._lines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.counts = json.loads(line)
                    break
        return self.counts


# Runs a command with stdout to a file and prints "seconds peak_rss_kb exit_code". A child's
# ru_maxrss counts the memory of the process it was forked from, so the command is spawned from
# this small interpreter rather than from the (large) benchmark process.
_MEASURE = """
import os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
started = time.perf_counter()
actions = [(os.POSIX_SPAWN_DUP2, out, 1)]
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=actions)
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_measured(command: Sequence[str], stdout_path: Path, timeout: float) -> tuple[float, int]:
    """Run a command with stdout to a file; (wall seconds from spawn to exit, peak RSS in KiB)."""
    result = subprocess.run(
        [PYTHON, "-c", _MEASURE, str(stdout_path), *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    try:
        seconds, maxrss, code = result.stdout.split()
    except ValueError:
        raise RuntimeError(f"measuring {command[0]} failed: {result.stderr[-1000:]}") from None
    if int(code) != 0:
        raise RuntimeError(f"{command[0]} exited with {code}")
    return float(seconds), int(maxrss)
