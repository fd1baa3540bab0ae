"""Targets, the printed/markdown table, the latency plot and the docs section."""

from __future__ import annotations

import re
from pathlib import Path

Row = tuple[str, str, str, str, str]


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fig(s: dict | None, digits: int = 1, scale: float = 1.0) -> str:
    """`median [min-max]` of a spread."""
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s.get("runs", 0) <= 1:
        return _num(med, digits)
    return f"{_num(med, digits)} [{_num(lo, digits)}-{_num(hi, digits)}]"


def ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("median") is None or not b.get("median"):
        return "-"
    return f"{a['median'] / b['median']:.2f}x"


def _med(s: dict | None) -> float | None:
    return None if not s else s.get("median")


def evaluate_targets(results: dict) -> list[dict]:
    """Every target of the issue, judged from the figures (medians over runs)."""
    targets: list[dict] = []

    def add(name: str, measured: str, met: bool | None, note: str = "") -> None:
        targets.append({"target": name, "measured": measured, "met": met, "note": note})

    latency = results.get("latency", {})
    for count in [k for k in latency if k.isdigit()]:
        entry = latency[count]
        floor_p99 = _med(entry.get("floor", {}).get("p99_ms"))
        d0 = entry.get("sidecar_debounce_0", {})
        d0_p99 = _med(d0.get("p99_ms"))
        full = all(not r["time_capped"] for r in d0.get("runs", []))
        if floor_p99 is not None and d0_p99 is not None:
            limit = 2 * floor_p99 + 5
            add(
                f"update p99 at --debounce 0 <= 2x floor p99 + 5 ms ({int(count):,} keys)",
                f"{d0_p99:.1f} ms vs limit {limit:.1f} ms",
                d0_p99 <= limit,
                "" if full else "runs were time-capped (fewer than 500 puts)",
            )
        default = entry.get("sidecar_debounce_default", {})
        dd_p99 = _med(default.get("p99_ms"))
        full = all(not r["time_capped"] for r in default.get("runs", []))
        if dd_p99 is not None:
            add(
                f"update p99 at the default debounce < 100 ms ({int(count):,} keys)",
                f"{dd_p99:.1f} ms",
                dd_p99 < 100,
                "" if full else "runs were time-capped (fewer than 500 puts)",
            )
    sync = results.get("initial_sync", {}).get("100000")
    if sync:
        side, ctl = _med(sync["sidecar"]["seconds"]), _med(sync["etcdctl"]["seconds"])
        if side is not None and ctl:
            add(
                "100,000-key initial sync < 3 s and < 2x etcdctl",
                f"{side:.2f} s vs etcdctl {ctl:.2f} s ({side / ctl:.2f}x)",
                side < 3 and side < 2 * ctl,
            )
    idle = results.get("idle", {}).get("sidecar")
    if idle:
        rss, cpu = _med(idle["rss_mb"]), _med(idle["cpu_percent"])
        # MB read strictly as 10^6 bytes (60 MB = 57.2 MiB), the stricter of the two readings.
        mb = None if rss is None else rss * 2**20 / 1e6
        add(
            "idle RSS < 60 MB with 10,000 keys",
            "-" if mb is None else f"{mb:.1f} MB ({rss:.1f} MiB)",
            mb is not None and mb < 60,
        )
        add("idle CPU < 0.5% of a core", f"{cpu:.3f}%", cpu is not None and cpu < 0.5)
    burst = results.get("burst", {}).get("sidecar")
    if burst:
        conv, writes = _med(burst["converge_ms"]), _med(burst["file_writes"])
        add(
            "burst converges <= 1 s after the last put, <= 100 file writes",
            f"{_num(conv)} ms, {_num(writes, 0)} writes",
            conv is not None and writes is not None and conv <= 1000 and writes <= 100,
        )
    health = results.get("http", {}).get("/health")
    if health:
        p99 = _med(health["p99_ms"])
        add("/health p99 < 10 ms under load", f"{p99:.2f} ms", p99 is not None and p99 < 10)
    relist = results.get("relist_health")
    if relist:
        p99 = _med(relist["p99_ms"])
        add(
            f"/health p99 < 50 ms during a {relist['keys']:,}-key relist",
            f"{_num(p99, 2)} ms",
            p99 is not None and p99 < 50,
        )
    return targets


def table_rows(results: dict) -> list[Row]:
    """(scenario, metric, sidecar, floor or etcdctl, ratio) rows."""
    rows: list[Row] = []
    latency = results.get("latency", {})
    for count in [k for k in latency if k.isdigit()]:
        entry = latency[count]
        floor = entry.get("floor", {})
        for system, label in (
            ("sidecar_debounce_0", "debounce 0"),
            ("sidecar_debounce_default", "default debounce"),
        ):
            side = entry.get(system, {})
            n = "/".join(str(x) for x in side.get("samples_per_run", []))
            for metric in ("p50_ms", "p99_ms", "max_ms"):
                rows.append(
                    (
                        f"update latency, {int(count):,} keys",
                        f"{label} {metric[:-3]} ms (n={n})"
                        if metric == "p50_ms"
                        else f"{label} {metric[:-3]} ms",
                        fig(side.get(metric), 2),
                        fig(floor.get(metric), 2),
                        ratio(side.get(metric), floor.get(metric)),
                    )
                )
    for size, entry in results.get("initial_sync", {}).items():
        side, ctl = entry["sidecar"], entry["etcdctl"]
        rows.append(
            (
                f"initial sync, {int(size):,} keys",
                "time to file s (etcdctl: to exit)",
                fig(side["seconds"], 2),
                fig(ctl["seconds"], 2),
                ratio(side["seconds"], ctl["seconds"]),
            )
        )
        rows.append(
            (
                f"initial sync, {int(size):,} keys",
                "peak RSS MiB",
                fig(side["peak_rss_mb"]),
                fig(ctl["peak_rss_mb"]),
                ratio(side["peak_rss_mb"], ctl["peak_rss_mb"]),
            )
        )
    burst = results.get("burst", {})
    if burst.get("sidecar"):
        side, floor = burst["sidecar"], burst["floor"]
        rows.append(
            (
                f"burst, {results['plan']['burst_puts']:,} puts",
                "loader puts/s",
                fig(side["puts_per_second"], 0),
                fig(floor["puts_per_second"], 0),
                "",
            )
        )
        rows.append(
            (
                "",
                "last put -> file final ms",
                fig(side["converge_ms"], 1),
                fig(floor["converge_ms"], 1),
                ratio(side["converge_ms"], floor["converge_ms"]),
            )
        )
        rows.append(
            (
                "",
                "file writes",
                fig(side["file_writes"], 0),
                fig(floor["file_writes"], 0),
                ratio(side["file_writes"], floor["file_writes"]),
            )
        )
        rows.append(("", "reloads (--on-change-url)", fig(side["reloads"], 0), "-", ""))
    idle = results.get("idle", {})
    if idle.get("sidecar"):
        side, floor = idle["sidecar"], idle["floor"]
        label = f"idle {idle['seconds']:g} s, {idle['keys']:,} keys"
        rows.append(
            (
                label,
                "RSS MiB",
                fig(side["rss_mb"]),
                fig(floor["rss_mb"]),
                ratio(side["rss_mb"], floor["rss_mb"]),
            )
        )
        rows.append(
            (
                "",
                "CPU s (% of a core)",
                f"{fig(side['cpu_seconds'], 3)} ({fig(side['cpu_percent'], 3)}%)",
                f"{fig(floor['cpu_seconds'], 3)} ({fig(floor['cpu_percent'], 3)}%)",
                ratio(side["cpu_seconds"], floor["cpu_seconds"]),
            )
        )
    http = results.get("http", {})
    for label in ("/health", "/metrics", "/v1/keys/<k>"):
        if label in http:
            entry = http[label]
            rows.append(
                (
                    f"HTTP {label}, {http['connections']} conns ({http['generator']})",
                    "req/s ; p99 ms",
                    f"{fig(entry['rps'], 0)} ; {fig(entry['p99_ms'], 2)}",
                    "-",
                    "",
                )
            )
    relist = results.get("relist_health")
    if relist:
        rows.append(
            (
                f"/health during a {relist['keys']:,}-key relist",
                "p99 ms ; max ms ; relist s",
                f"{fig(relist['p99_ms'], 2)} ; {fig(relist['max_ms'], 2)} ; "
                f"{fig(relist['relist_seconds'], 2)}",
                "-",
                "",
            )
        )
    foot = results.get("footprint")
    if foot:
        rows.append(
            (
                "footprint (Dockerfile venv)",
                "site-packages MiB (deps only)",
                f"{foot['site_packages_mb']:.1f} ({foot['dependencies_mb']:.1f})",
                "-",
                "",
            )
        )
        rows.append(
            (
                "",
                "import sidecar.__main__ / sidecar.service ms",
                f"{fig(foot['import_sidecar_main_wall_s'], 0, 1000)} / "
                f"{fig(foot['import_sidecar_service_wall_s'], 0, 1000)}",
                "-",
                "",
            )
        )
        us = foot["importtime_cumulative_us"]
        rows.append(
            (
                "",
                "-X importtime: sidecar / sidecar.service ms",
                f"{_num((us.get('sidecar') or 0) / 1000)} / "
                f"{_num((us.get('sidecar.service') or 0) / 1000)}",
                "-",
                "",
            )
        )
    return rows


HEADERS = ("scenario", "metric", "sidecar median [min-max]", "floor / etcdctl", "ratio")


def text_table(rows: list[Row]) -> str:
    widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def targets_text(targets: list[dict]) -> str:
    out = []
    for t in targets:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"{verdict:<8} {t['target']}: {t['measured']}{note}")
    return "\n".join(out)


def targets_markdown(targets: list[dict]) -> str:
    out = ["| target | measured | verdict |", "|---|---|---|"]
    for t in targets:
        verdict = {True: "met", False: "**not met**", None: "n/a"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"| {t['target']} | {t['measured']}{note} | {verdict} |")
    return "\n".join(out)


def plot_latency(results: dict, path: Path) -> bool:
    """ECDF of every update latency sample, one panel per mirrored key count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    latency = results.get("latency", {})
    counts = [k for k in latency if k.isdigit()]
    if not counts:
        return False
    fig_, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 4), sharey=True)
    if len(counts) == 1:
        axes = [axes]
    styles = {
        "floor": ("floor (etcd3 watch + write/fsync/rename)", "black"),
        "sidecar_debounce_0": ("sidecar --debounce 0", "tab:blue"),
        "sidecar_debounce_default": ("sidecar default debounce", "tab:orange"),
    }
    for ax, count in zip(axes, counts, strict=True):
        for system, (label, color) in styles.items():
            samples = sorted(
                s
                for run in latency[count].get(system, {}).get("runs", [])
                for s in run["samples_ms"]
            )
            if not samples:
                continue
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.step(samples, ys, where="post", label=f"{label} (n={len(samples)})", color=color)
        ax.axvline(100, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("put -> file holds the value (ms, log)")
        ax.set_title(f"{int(count):,} keys mirrored")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of updates")
    axes[0].legend(loc="lower right", fontsize=8)
    fig_.suptitle("Update latency, all runs (dotted: the 100 ms freshness promise)")
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    plt.close(fig_)
    return True


BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def update_docs(doc: Path, section: str) -> bool:
    """Replace the generated section of docs/performance.md (between the markers)."""
    try:
        text = doc.read_text()
    except OSError:
        return False
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        return False
    doc.write_text(pattern.sub(lambda _: f"{BEGIN}\n{section}\n{END}", text))
    return True
