"""Output directory trouble: the last good file stays, the error is counted, /ready says so, and
the file recovers by itself once the disk does."""

from __future__ import annotations

import json
import resource
import shutil

from polling import wait_until

BIG = "x" * 8192


def test_file_size_limit_keeps_the_last_good_file_and_recovers(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/a", "1")
    out = tmp_path / "out" / "c.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()
    before = out.read_bytes()
    # RLIMIT_FSIZE stands in for a full disk: writes beyond it fail with EFBIG (Python ignores
    # SIGXFSZ, as it must for this to be an error rather than a kill).
    resource.prlimit(sidecar.pid, resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    etcd.ctl.put("/app/big", BIG)
    wait_until(lambda: sidecar.metric("etcd_sidecar_errors_total", stage="write") >= 1, timeout=10)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.json"]  # no temp file left
    ready = sidecar.get("/ready")
    assert ready.status_code == 503 and "cannot write" in ready.text
    assert BIG not in sidecar.logs()

    # The disk is fine again; etcd does not change; the retry writes the file by itself.
    resource.prlimit(sidecar.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    wait_until(lambda: json.loads(out.read_text()) == {"a": "1", "big": BIG}, timeout=10)
    sidecar.wait_ready()


def test_missing_output_directory_recovers_when_recreated(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/a", "1")
    out = tmp_path / "out" / "c.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()
    shutil.rmtree(out.parent)
    etcd.ctl.put("/app/a", "2")
    wait_until(lambda: sidecar.get("/ready").status_code == 503, timeout=10)
    assert sidecar.get("/health").status_code == 200
    out.parent.mkdir()
    wait_until(lambda: out.exists() and json.loads(out.read_text()) == {"a": "2"}, timeout=10)
    sidecar.wait_ready()
