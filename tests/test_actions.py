"""On-change actions: once per written batch, after the file is in place, retried, never for
unchanged bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from polling import wait_until
from prometheus_client import CollectorRegistry

from sidecar.actions import ActionRunner, WriteNotice, find_processes
from sidecar.metrics import Metrics


class ReloadEndpoint:
    """A real HTTP server on 127.0.0.1 that fails the first `failures` POSTs, then succeeds, and
    records what the output file held when each POST arrived."""

    def __init__(self, output=None, failures: int = 0) -> None:
        self.failures = failures
        self.output = output
        self.posts: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = endpoint.output.read_text() if endpoint.output else None
                failed = len(endpoint.posts) < endpoint.failures
                endpoint.posts.append({"body": body, "file": seen, "ok": not failed})
                self.send_response(500 if failed else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/-/reload"

    def successes(self) -> list[dict]:
        return [p for p in self.posts if p["ok"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def reload_endpoint():
    made: list[ReloadEndpoint] = []

    def make(**kwargs) -> ReloadEndpoint:
        endpoint = ReloadEndpoint(**kwargs)
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        endpoint.close()


def test_failing_endpoint_is_retried_and_gets_one_success_per_batch(
    etcd, make_sidecar, tmp_path, reload_endpoint
):
    out = tmp_path / "out" / "c.json"
    endpoint = reload_endpoint(output=out, failures=2)
    etcd.ctl.put("/app/a", "1")
    sidecar = make_sidecar(
        ["--prefix", "/app/", "--output", str(out), "--on-change-url", endpoint.url]
    )
    sidecar.wait_ready()
    wait_until(lambda: len(endpoint.successes()) == 1, timeout=15)
    assert [p["ok"] for p in endpoint.posts] == [False, False, True]
    # The action runs after the file is in place: the endpoint saw the new content.
    assert json.loads(endpoint.posts[0]["file"]) == {"a": "1"}
    assert [o["path"] for o in endpoint.posts[-1]["body"]["outputs"]] == [str(out)]

    revision = etcd.ctl.put("/app/a", "2")
    wait_until(lambda: len(endpoint.successes()) == 2, timeout=10)
    assert endpoint.posts[-1]["body"]["revision"] == revision
    assert json.loads(endpoint.posts[-1]["file"]) == {"a": "2"}
    assert sidecar.metric("etcd_sidecar_reloads_total", action="url", result="failure") == 2
    assert sidecar.metric("etcd_sidecar_reloads_total", action="url", result="success") == 2
    # Nothing more arrives: one success per batch.
    sidecar.stop()
    assert len(endpoint.successes()) == 2


def test_a_burst_of_100_puts_within_the_debounce_window_causes_one_reload(
    etcd, make_sidecar, tmp_path, reload_endpoint
):
    out = tmp_path / "out" / "c.json"
    endpoint = reload_endpoint(output=out)
    etcd.ctl.put("/app/k000", "start")
    sidecar = make_sidecar(
        [
            "--prefix",
            "/app/",
            "--output",
            str(out),
            "--on-change-url",
            endpoint.url,
            "--debounce",
            "1",
        ]
    )
    wait_until(lambda: len(endpoint.successes()) == 1, timeout=10)
    writes = sidecar.metric("etcd_sidecar_file_writes_total", output=str(out))

    client = etcd.ctl.client()
    started = time.monotonic()
    for i in range(100):
        client.put(f"/app/k{i:03d}", f"v{i}")
    burst = time.monotonic() - started
    assert burst < 1, f"the loader took {burst:.2f}s, longer than the debounce window"
    expected = {f"k{i:03d}": f"v{i}" for i in range(100)}
    wait_until(lambda: out.exists() and json.loads(out.read_text()) == expected, timeout=10)
    wait_until(lambda: len(endpoint.successes()) == 2, timeout=10)
    assert sidecar.metric("etcd_sidecar_file_writes_total", output=str(out)) == writes + 1
    assert len(endpoint.posts) == 2


def test_unchanged_bytes_at_startup_and_on_re_put_run_no_action(
    etcd, make_sidecar, tmp_path, reload_endpoint
):
    out = tmp_path / "out" / "c.json"
    out.parent.mkdir()
    out.write_text('{\n  "a": "1"\n}\n')  # exactly what the sidecar would write
    endpoint = reload_endpoint(output=out)
    etcd.ctl.put("/app/a", "1")
    sidecar = make_sidecar(
        ["--prefix", "/app/", "--output", str(out), "--on-change-url", endpoint.url]
    )
    sidecar.wait_ready()
    revision = etcd.ctl.put("/app/a", "1")
    sidecar.wait_revision(revision)
    assert sidecar.metric("etcd_sidecar_file_writes_total", output=str(out)) == 0
    assert endpoint.posts == []
    etcd.ctl.put("/app/a", "2")
    wait_until(lambda: len(endpoint.successes()) == 1, timeout=10)


HUP_CATCHER = r"""
import signal, sys, pathlib
log = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGHUP, lambda *_: log.open("a").write("HUP\n"))
log.with_suffix(".ready").write_text("ready")
while True:
    signal.pause()
"""


def test_signal_action_reaches_a_process_by_name(etcd, make_sidecar, tmp_path):
    name = f"hup-catcher-{int(time.time() * 1000) % 100000}"
    log = tmp_path / "hups.log"
    catcher = subprocess.Popen([name, "-c", HUP_CATCHER, str(log)], executable=sys.executable)
    try:
        wait_until(lambda: log.with_suffix(".ready").exists(), timeout=10)
        assert find_processes(name) == [catcher.pid]
        etcd.ctl.put("/app/a", "1")
        out = tmp_path / "out" / "c.json"
        sidecar = make_sidecar(
            ["--prefix", "/app/", "--output", str(out), "--on-change-signal", f"HUP:{name}"]
        )
        wait_until(lambda: log.exists() and log.read_text().count("HUP") == 1, timeout=10)
        etcd.ctl.put("/app/a", "2")
        wait_until(lambda: log.read_text().count("HUP") == 2, timeout=10)
        assert sidecar.metric("etcd_sidecar_reloads_total", action="signal", result="success") == 2
        assert catcher.poll() is None
    finally:
        catcher.kill()
        catcher.wait()


def test_exec_action_runs_once_per_write(etcd, make_sidecar, tmp_path):
    marks = tmp_path / "marks"
    etcd.ctl.put("/app/a", "1")
    out = tmp_path / "out" / "c.json"
    make_sidecar(
        [
            "--prefix",
            "/app/",
            "--output",
            str(out),
            "--on-change-exec",
            f"sh -c 'cat {out} >> {marks}'",
        ]
    )
    wait_until(lambda: marks.exists() and marks.read_text().count('"a"') == 1, timeout=10)
    etcd.ctl.put("/app/a", "2")
    wait_until(lambda: marks.read_text().count('"a"') == 2, timeout=10)
    assert '"2"' in marks.read_text().split("}")[-2]


def _runner(kind: str, spec: str, timeout: float | None = None):
    metrics = Metrics(CollectorRegistry())
    return ActionRunner(kind, spec, metrics, timeout=timeout), metrics


def test_exec_action_is_time_limited_and_failures_are_counted():
    runner, metrics = _runner("exec", "sleep 30", timeout=0.3)
    started = time.monotonic()
    try:
        runner.trigger(WriteNotice(5, (("/tmp/out", "ab", 2),)))
        wait_until(
            lambda: metrics.registry.get_sample_value(
                "etcd_sidecar_reloads_total", {"action": "exec", "result": "failure"}
            ),
            timeout=5,
        )
    finally:
        runner.stop()
    assert time.monotonic() - started < 5


def test_newer_write_supersedes_a_failing_retry(tmp_path):
    script = tmp_path / "fail-until"
    flag = tmp_path / "ok"
    seen = tmp_path / "seen"
    # Fails until the flag file exists; records each attempt.
    script.write_text(f"#!/bin/sh\necho attempt >> {seen}\ntest -e {flag}\n")
    script.chmod(0o755)
    runner, metrics = _runner("exec", str(script))
    try:
        runner.trigger(WriteNotice(1, (("/tmp/out", "aa", 1),)))
        wait_until(lambda: seen.exists() and seen.read_text().count("attempt") >= 2, timeout=10)
        flag.write_text("")
        runner.trigger(WriteNotice(2, (("/tmp/out", "bb", 1),)))
        wait_until(
            lambda: (
                metrics.registry.get_sample_value(
                    "etcd_sidecar_reloads_total", {"action": "exec", "result": "success"}
                )
                == 1
            ),
            timeout=10,
        )
    finally:
        runner.stop()
    # The newer write ran at once instead of waiting out the backoff, and only once succeeded.
    assert (
        metrics.registry.get_sample_value(
            "etcd_sidecar_reloads_total", {"action": "exec", "result": "success"}
        )
        == 1
    )


def test_outputs_sharing_an_action_trigger_it_once_per_batch(
    etcd, make_sidecar, tmp_path, reload_endpoint
):
    endpoint = reload_endpoint()
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "etcd": {"endpoints": [etcd.client_url]},
                "on_change_url": endpoint.url,
                "outputs": [
                    {"path": str(out / "a.json"), "prefix": "/app/a/"},
                    {"path": str(out / "b.json"), "prefix": "/app/b/"},
                ],
            }
        )
    )
    etcd.ctl.txn_put({"/app/a/x": "1", "/app/b/y": "1"})
    make_sidecar(["--config", str(config)])
    wait_until(lambda: len(endpoint.successes()) == 1, timeout=10)
    revision = etcd.ctl.txn_put({"/app/a/x": "2", "/app/b/y": "2"})
    wait_until(lambda: len(endpoint.successes()) == 2, timeout=10)
    body = endpoint.posts[-1]["body"]
    assert body["revision"] == revision
    assert sorted(o["path"] for o in body["outputs"]) == [str(out / "a.json"), str(out / "b.json")]
    etcd.ctl.put("/app/b/y", "3")
    wait_until(lambda: len(endpoint.successes()) == 3, timeout=10)
    assert [o["path"] for o in endpoint.posts[-1]["body"]["outputs"]] == [str(out / "b.json")]


def test_loopback_requests_ignore_an_http_proxy_in_the_environment(
    etcd, make_sidecar, tmp_path, reload_endpoint
):
    """Pods often carry HTTP_PROXY; a proxy cannot reach this pod's loopback, so the reload POST
    (and `get` through port-forward) must go direct. The proxy here listens nowhere."""
    from etcd_harness import free_port
    from sidecar_proc import run_cli

    dead_proxy = {"HTTP_PROXY": f"http://127.0.0.1:{free_port()}", "http_proxy": "", "NO_PROXY": ""}
    dead_proxy["http_proxy"] = dead_proxy["HTTP_PROXY"]
    out = tmp_path / "out" / "c.json"
    endpoint = reload_endpoint(output=out)
    etcd.ctl.put("/app/a", "1")
    sidecar = make_sidecar(
        ["--prefix", "/app/", "--output", str(out), "--on-change-url", endpoint.url],
        env=dead_proxy,
    )
    wait_until(lambda: len(endpoint.successes()) == 1, timeout=10, message=sidecar.logs)
    found = run_cli("get", "/app/a", "--url", sidecar.url, env=dead_proxy)
    assert (found.returncode, found.stdout) == (0, "1\n"), found.stderr
