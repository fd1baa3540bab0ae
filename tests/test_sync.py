"""The core promise against a real etcd: the file always equals etcd, written atomically."""

from __future__ import annotations

import json
import os
import threading
import time

from polling import wait_until
from sidecar_proc import run_cli


def _read_json(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _wait_file(path, expected: dict, timeout: float = 10, sidecar=None) -> None:
    wait_until(
        lambda: _read_json(path) == expected,
        timeout=timeout,
        message=lambda: (
            f"file {path} is {_read_json(path)!r}, want {expected!r}"
            + ("\n" + sidecar.logs() if sidecar else "")
        ),
    )


def test_put_delete_and_transaction_reach_the_file(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/db/host", "db1")
    out = tmp_path / "out" / "config.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()
    assert json.loads(out.read_text()) == {"db/host": "db1"}

    etcd.ctl.put("/app/db/port", "5432")
    _wait_file(out, {"db/host": "db1", "db/port": "5432"}, sidecar=sidecar)

    etcd.ctl.delete("/app/db/host")
    _wait_file(out, {"db/port": "5432"}, sidecar=sidecar)

    batch = {f"/app/batch/{i:02d}": f"v{i}" for i in range(50)}
    etcd.ctl.txn_put(batch)
    expected = {"db/port": "5432", **{k.removeprefix("/app/"): v for k, v in batch.items()}}
    _wait_file(out, expected, sidecar=sidecar)
    # Keys outside the prefix never appear.
    etcd.ctl.put("/other/x", "1")
    etcd.ctl.put("/app/last", "1")
    _wait_file(out, {**expected, "last": "1"}, sidecar=sidecar)


def test_reader_never_sees_a_partial_file_or_half_a_transaction(etcd, make_sidecar, tmp_path):
    """1,000 transactions, each setting all 50 keys to one new value, while a reader re-reads and
    parses the file as fast as it can: every version it sees is whole JSON, and the 50 keys always
    carry one value (all of a transaction or none of it)."""
    out = tmp_path / "out" / "config.json"
    keys = [f"/tx/k{i:02d}" for i in range(50)]
    etcd.ctl.txn_put(dict.fromkeys(keys, "0"))
    sidecar = make_sidecar(["--prefix", "/tx/", "--output", str(out), "--debounce", "0"])
    sidecar.wait_ready()

    problems: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = out.read_text()
            except FileNotFoundError:
                problems.append("file missing")
                continue
            try:
                data = json.loads(text)
            except ValueError:
                problems.append(f"unparseable file of {len(text)} bytes")
                continue
            values = {data.get(k.removeprefix("/tx/")) for k in keys}
            if len(values) != 1 or None in values:
                problems.append(f"mixed transaction values {sorted(map(str, values))[:4]}")
            versions.add(next(iter(values)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 1001):
            etcd.ctl.txn_put(dict.fromkeys(keys, str(i)))
        _wait_file(out, {k.removeprefix("/tx/"): "1000" for k in keys}, sidecar=sidecar)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    # The reader really raced the writer: it saw many distinct versions.
    assert len(versions) > 20, versions
    # Atomic writes leave no temp files behind.
    assert sorted(os.listdir(out.parent)) == ["config.json"]


def test_unchanged_value_does_not_rewrite_the_file(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/a", "1")
    out = tmp_path / "out" / "config.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()
    writes = sidecar.metric("etcd_sidecar_file_writes_total", output=str(out))
    assert writes == 1
    mtime = out.stat().st_mtime_ns

    revision = etcd.ctl.put("/app/a", "1")  # same value, new revision
    sidecar.wait_revision(revision)
    assert out.stat().st_mtime_ns == mtime
    assert sidecar.metric("etcd_sidecar_file_writes_total", output=str(out)) == writes

    revision = etcd.ctl.put("/app/a", "2")
    _wait_file(out, {"a": "2"}, sidecar=sidecar)
    assert sidecar.metric("etcd_sidecar_file_writes_total", output=str(out)) == writes + 1


def test_file_is_kept_while_etcd_is_down_and_updates_resume_after_restart(
    etcd, make_sidecar, tmp_path
):
    etcd.ctl.put("/app/a", "1")
    out = tmp_path / "out" / "config.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()
    before = out.read_bytes()

    etcd.stop()
    wait_until(lambda: sidecar.metric("etcd_sidecar_etcd_connected") == 0, timeout=20)
    # Let the sidecar fail a few reconnects against the dead endpoint.
    wait_until(lambda: sidecar.metric("etcd_sidecar_errors_total", stage="etcd") >= 2, timeout=20)
    assert out.read_bytes() == before
    assert sidecar.get("/health").status_code == 200

    etcd.restart()
    etcd.ctl.put("/app/b", "2")
    _wait_file(out, {"a": "1", "b": "2"}, timeout=20, sidecar=sidecar)
    wait_until(lambda: sidecar.metric("etcd_sidecar_etcd_connected") == 1, timeout=10)


def test_compaction_while_the_sidecar_is_frozen_converges(etcd, make_sidecar, tmp_path):
    etcd.ctl.bulk_put({f"/app/k{i:03d}": "init" for i in range(100)})
    out = tmp_path / "out" / "config.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()

    sidecar.pause()
    try:
        for i in range(200):
            if i % 3 == 0:
                etcd.ctl.delete(f"/app/k{i % 100:03d}")
            else:
                etcd.ctl.put(f"/app/k{i % 100:03d}", f"v{i}")
        etcd.ctl.put("/app/new", "yes")
        etcd.ctl.compact(etcd.ctl.revision())
    finally:
        sidecar.resume()
    expected = {k.removeprefix("/app/"): v for k, v in etcd.ctl.get_prefix("/app/").items()}
    _wait_file(out, expected, timeout=30, sidecar=sidecar)


def test_once_writes_the_files_and_exits_zero(etcd, tmp_path):
    etcd.ctl.put("/app/a", "1")
    etcd.ctl.put("/other/b", "2")
    (tmp_path / "out").mkdir()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        json.dumps(
            {
                "etcd": {"endpoints": [etcd.client_url]},
                "outputs": [
                    {"path": str(tmp_path / "out" / "a.json"), "prefix": "/app/"},
                    {"path": str(tmp_path / "out" / "b.env"), "prefix": "/other/", "format": "env"},
                ],
            }
        )
    )
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads((tmp_path / "out" / "a.json").read_text()) == {"a": "1"}
    assert (tmp_path / "out" / "b.env").read_text() == "B='2'\n"
    assert "once_done" in result.stdout


def test_once_exits_one_within_the_timeout_when_etcd_is_down(etcd, tmp_path):
    url = etcd.client_url
    etcd.stop()
    (tmp_path / "out").mkdir()
    started = time.monotonic()
    result = run_cli(
        "once",
        "--etcd-endpoints",
        url,
        "--prefix",
        "/app/",
        "--output",
        str(tmp_path / "out" / "c.json"),
        "--timeout",
        "2",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 2 + 4  # the timeout plus interpreter start-up
    assert not (tmp_path / "out" / "c.json").exists()


def test_run_exits_zero_promptly_on_sigterm(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/a", "1")
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(tmp_path / "out" / "c.json")])
    sidecar.wait_ready()
    code, seconds = sidecar.stop()
    assert code == 0, sidecar.logs()
    assert seconds < 5


def test_stale_temp_files_are_removed_and_an_old_file_is_kept_until_replaced(
    etcd, make_sidecar, tmp_path
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "config.json"
    out.write_text('{"from": "before the restart"}\n')
    leftover = out_dir / ".config.json.sidecar-tmp-deadbeef"
    leftover.write_text("half a file")
    url = etcd.client_url
    etcd.stop()
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out), "--etcd-endpoints", url])
    wait_until(lambda: not leftover.exists(), timeout=10)
    # etcd is down: the file from before stays, and the sidecar is not ready.
    assert json.loads(out.read_text()) == {"from": "before the restart"}
    assert sidecar.get("/ready").status_code == 503
    etcd.restart()
    etcd.ctl.put("/app/a", "1")
    _wait_file(out, {"a": "1"}, timeout=20, sidecar=sidecar)
