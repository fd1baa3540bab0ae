"""The real `etcd-config-sidecar` as a child process, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from etcd_harness import free_port
from polling import wait_until
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def sidecar_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidecar", *args]


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command (check, once, get) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        sidecar_command(*args),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


class Sidecar:
    """`etcd-config-sidecar run` on 127.0.0.1 and a free port; logs go to files in `workdir`."""

    def __init__(
        self, workdir: Path, args: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._stdout = workdir / "sidecar.stdout"
        self._stderr = workdir / "sidecar.stderr"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait_healthy: bool = True) -> Sidecar:
        command = sidecar_command("run", *self.args, "--listen", f"127.0.0.1:{self.port}")
        with open(self._stdout, "ab") as out, open(self._stderr, "ab") as err:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=err, env={**os.environ, **self.env}, cwd=ROOT
            )
        if wait_healthy:
            wait_until(
                self._healthy, timeout=20, message=lambda: "sidecar not healthy\n" + self.logs()
            )
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}\n{self.logs()}")
        return self.get("/health").status_code == 200

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def wait_ready(self, timeout: float = 20) -> None:
        wait_until(
            lambda: self.get("/ready").status_code == 200,
            timeout=timeout,
            message=lambda: "sidecar not ready: " + self.get("/ready").text + "\n" + self.logs(),
        )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.get("/metrics").text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the series does not exist (yet)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def status(self) -> dict:
        return self.get("/v1/status").json()

    def wait_revision(self, revision: int, timeout: float = 10) -> None:
        """Until the sidecar's outputs reflect at least `revision`."""
        wait_until(
            lambda: self.metric("etcd_sidecar_revision") >= revision,
            timeout=timeout,
            message=lambda: f"sidecar did not reach revision {revision}\n{self.logs()}",
        )

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def logs(self) -> str:
        parts = []
        for path in (self._stdout, self._stderr):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)
