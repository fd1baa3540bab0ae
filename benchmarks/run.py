"""Benchmark entry point: `bash scripts/bench.sh` (or `.venv/bin/python benchmarks/run.py`).

Starts its own etcd on loopback, loads the data sets, runs every scenario of docs/performance.md
against the sidecar as a real process and, side by side, against the floor (benchmarks/floor.py)
or etcdctl, then prints a table and writes benchmarks/results.json, benchmarks/latency.png and
the results section of docs/performance.md. `--quick` is a smaller smoke run whose results go to
benchmarks/.work/ and leave the published ones alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' etcd harness starts etcd

import report  # noqa: E402
import scenarios  # noqa: E402
from etcd_harness import ETCD_BIN, EtcdMember  # noqa: E402
from scenarios import Context, Plan  # noqa: E402

SCENARIOS = ("sync", "latency", "burst", "idle", "relist", "footprint")


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    version = subprocess.run([ETCD_BIN, "--version"], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": version.splitlines()[0] if version else "unknown",
    }


def loadavg() -> str:
    """1, 5 and 15 minute load averages: other work on the machine shows up here."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the sidecar against the floor.")
    parser.add_argument("--quick", action="store_true", help="small smoke run (about 2 minutes)")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only these scenarios (repeatable)"
    )
    parser.add_argument(
        "--product",
        type=Path,
        default=ROOT,
        help="source tree whose sidecar package is benchmarked (default: this repository)",
    )
    parser.add_argument("--output-dir", type=Path, help="where results.json/latency.png go")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: print the table, plot and docs section of an earlier results.json",
    )
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        return publish(results, args.from_json.parent, update_doc=not args.no_docs)

    plan = Plan.quick() if args.quick else Plan.full()
    selected = args.only or list(SCENARIOS)
    partial = args.quick or args.only is not None or args.product.resolve() != ROOT
    out_dir = args.output_dir or (BENCH / ".work" if partial else BENCH)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = BENCH / ".work" / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    results: dict = {
        "machine": machine(),
        "plan": asdict(plan),
        "mode": "quick" if args.quick else "full",
        "product": str(args.product.resolve()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": loadavg(),
    }
    log(f"machine: {results['machine']}")
    # etcd: one member on loopback, as the tests start it (10 ms heartbeat, --unsafe-no-fsync).
    member = EtcdMember(work / "etcd", extra_args=["--quota-backend-bytes=4294967296"])
    member.start()
    try:
        ctx = Context(plan, member.client_url, work, args.product.resolve())
        log(f"etcd {member.client_url}; loading data sets {plan.dataset_sizes()}")
        results["load_seconds"] = scenarios.load_datasets(ctx)
        steps = [
            ("sync", "initial_sync", scenarios.scenario_initial_sync),
            ("latency", "latency", scenarios.scenario_latency),
            ("burst", "burst", scenarios.scenario_burst),
            ("relist", "relist_health", scenarios.scenario_relist_health),
            ("footprint", "footprint", scenarios.scenario_footprint),
        ]
        for name, key, function in steps[:3]:
            if name in selected:
                log(f"scenario {name}")
                results[key] = function(ctx, log)
        if "idle" in selected:
            log("scenario idle + http")
            results["idle"], results["http"] = scenarios.scenario_idle_and_http(ctx, log)
        for name, key, function in steps[3:]:
            if name in selected:
                log(f"scenario {name}")
                results[key] = function(ctx, log)
    finally:
        member.close()
    results["elapsed_seconds"] = time.monotonic() - started
    results["loadavg_end"] = loadavg()
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return publish(results, out_dir, update_doc=not partial and not args.no_docs)


def publish(results: dict, out_dir: Path, update_doc: bool) -> int:
    """Judge the targets, print the table, write results.json, the plot and the docs section."""
    results["targets"] = report.evaluate_targets(results)
    rows = report.table_rows(results)
    print()
    print(report.text_table(rows))
    print()
    print(report.targets_text(results["targets"]))
    print(f"\ntotal {results['elapsed_seconds']:.0f} s")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plotted = report.plot_latency(results, out_dir / "latency.png")
    print(
        f"wrote {out_dir / 'results.json'}" + (f" and {out_dir / 'latency.png'}" if plotted else "")
    )
    if update_doc:
        m = results["machine"]
        section = "\n".join(
            [
                f"Measured {results['started']} in {results['elapsed_seconds']:.0f} s on "
                f"{m['nproc']} x {m['cpu_model']} ({m['memory_gib']} GiB, Linux {m['kernel']}), "
                f"Python {m['python']}, {m['etcd']}; load average {results['loadavg_start']} at "
                f"the start and {results['loadavg_end']} at the end.",
                "",
                report.markdown_table(rows),
                "",
                report.targets_markdown(results["targets"]),
            ]
        )
        if report.update_docs(ROOT / "docs" / "performance.md", section):
            print("updated docs/performance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
