"""What kubelet, Prometheus and a person with port-forward see, against a real sidecar and etcd."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest
from etcd_harness import EtcdMember, free_port
from polling import wait_until
from sidecar_proc import run_cli

from sidecar.http import create_app, lookup_allowed
from sidecar.loopback import is_loopback
from sidecar.metrics import create_metrics
from sidecar.settings import EtcdSettings, OutputSettings, Settings
from sidecar.syncer import build_state

SECRET = "pa55-w0rd-that-must-not-leak"


def test_ready_waits_for_the_first_sync_and_health_does_not(make_sidecar, tmp_path):
    member = EtcdMember(tmp_path / "late-etcd", client_port=free_port(), peer_port=free_port())
    try:
        sidecar = make_sidecar(
            [
                "--prefix",
                "/app/",
                "--output",
                str(tmp_path / "out" / "c.json"),
                "--etcd-endpoints",
                member.client_url,
            ]
        )
        ready = sidecar.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready" and ready.json()["missing"]
        assert sidecar.get("/health").json() == {"status": "ok"}
        assert sidecar.metric("etcd_sidecar_ready") == 0

        member.start()
        member.ctl.put("/app/a", "1")
        sidecar.wait_ready(timeout=30)
        assert sidecar.get("/health").status_code == 200
        assert sidecar.metric("etcd_sidecar_ready") == 1
    finally:
        member.close()


def test_lookups_return_what_etcd_holds_with_redaction(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/db/host", "db.internal")
    etcd.ctl.put("/app/db/password", SECRET)
    etcd.ctl.put("/app/feature/flag", "on")
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(tmp_path / "out" / "c.json")])
    sidecar.wait_ready()
    revision = etcd.ctl.revision()
    _, kvs = etcd.ctl.get_kvs("/app/", prefix=True)
    mod = {kv["key"].decode(): kv["mod_revision"] for kv in kvs}

    body = sidecar.get("/v1/keys").json()
    assert body["revision"] == revision
    assert body["keys"] == [
        {"key": "/app/db/host", "value": "db.internal", "mod_revision": mod["/app/db/host"]},
        {"key": "/app/db/password", "value": "<redacted>", "mod_revision": mod["/app/db/password"]},
        {"key": "/app/feature/flag", "value": "on", "mod_revision": mod["/app/feature/flag"]},
    ]
    narrowed = sidecar.get("/v1/keys?prefix=/app/feature/").json()
    assert [k["key"] for k in narrowed["keys"]] == ["/app/feature/flag"]

    one = sidecar.get("/v1/keys/app/db/host").json()
    assert one == {
        "key": "/app/db/host",
        "value": "db.internal",
        "mod_revision": mod["/app/db/host"],
        "revision": revision,
    }
    assert sidecar.get("/v1/keys/app/db/password").json()["value"] == "<redacted>"
    missing = sidecar.get("/v1/keys/app/nope")
    assert missing.status_code == 404 and "error" in missing.json()

    status = sidecar.status()
    assert status["revision"] == revision and status["connected"] is True
    assert status["endpoint"] == etcd.client_url and status["endpoints"] == [etcd.client_url]
    assert status["outputs"][0]["sha256"] and status["outputs"][0]["bytes"] > 0

    # The secret is in the file (the app needs it) but nowhere the sidecar reports.
    assert SECRET in (tmp_path / "out" / "c.json").read_text()
    assert SECRET not in sidecar.get("/metrics").text
    assert SECRET not in sidecar.get("/v1/status").text
    sidecar.stop()
    assert SECRET not in sidecar.logs()


def test_metrics_follow_writes_revision_and_keys(etcd, make_sidecar, tmp_path):
    out = tmp_path / "out" / "c.json"
    etcd.ctl.put("/app/k0", "0")
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out), "--debounce", "0"])
    sidecar.wait_ready()
    writes = sidecar.metric("etcd_sidecar_file_writes_total", output=str(out))
    rewrites = 0
    for i in range(1, 11):
        unchanged = i in (3, 7)  # re-put the current value: a new revision, the same bytes
        if unchanged:
            revision = etcd.ctl.put("/app/k0", "0")
        else:
            revision = etcd.ctl.put(f"/app/k{i}", str(i))
            rewrites += 1
        sidecar.wait_revision(revision)
    assert sidecar.metric("etcd_sidecar_file_writes_total", output=str(out)) == writes + rewrites
    assert sidecar.metric("etcd_sidecar_revision") == etcd.ctl.revision()
    assert sidecar.metric("etcd_sidecar_keys") == len(etcd.ctl.get_prefix("/app/"))
    assert sidecar.metric("etcd_sidecar_etcd_connected") == 1
    assert sidecar.metric("etcd_sidecar_update_latency_seconds_count") >= rewrites
    assert sidecar.metric("etcd_sidecar_build_info", version="0.1.0") == 1
    assert sidecar.metric("etcd_sidecar_last_sync_timestamp_seconds") > time.time() - 60


def test_metrics_speak_openmetrics_when_asked(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/a", "1")
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(tmp_path / "o" / "c.json")])
    response = httpx.get(
        sidecar.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    plain = sidecar.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")


def test_probes_stay_fast_while_20000_keys_are_synced(etcd, make_sidecar, tmp_path):
    etcd.ctl.bulk_put({f"/big/{i:05d}": "x" * 100 for i in range(20_000)}, chunk=1000)
    sidecar = make_sidecar(
        ["--prefix", "/big/", "--output", str(tmp_path / "out" / "c.json")], start=False
    )
    sidecar.start(wait_healthy=False)
    latencies: list[float] = []
    with httpx.Client(base_url=sidecar.url, timeout=5) as client:
        wait_until(lambda: client.get("/health").status_code == 200, timeout=20)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            if client.get("/ready").status_code == 200:
                break
    assert sidecar.metric("etcd_sidecar_keys") == 20_000
    worst = max(latencies)
    print(
        f"/health during a 20,000-key sync: n={len(latencies)} "
        f"median={statistics.median(latencies) * 1000:.1f} ms max={worst * 1000:.1f} ms"
    )
    assert len(latencies) >= 3
    # The target is 100 ms; the assertion leaves room for a loaded CI machine.
    assert worst < 0.5


def test_get_command_exit_codes(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/db/host", "db.internal")
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(tmp_path / "o" / "c.json")])
    sidecar.wait_ready()
    found = run_cli("get", "/app/db/host", "--url", sidecar.url)
    assert (found.returncode, found.stdout) == (0, "db.internal\n")
    missing = run_cli("get", "/app/nope", "--url", sidecar.url)
    assert missing.returncode == 1 and "not found" in missing.stderr
    nobody = run_cli("get", "/app/db/host", "--url", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 3 and "cannot reach" in nobody.stderr
    usage = run_cli("get")
    assert usage.returncode == 2


# --- --lookup-access: the decision, and the real app with a non-loopback client address --------
# Every server in this test suite binds 127.0.0.1 only, so a real TCP client from a non-loopback
# address cannot reach it; the app is driven through httpx's ASGI transport instead, which passes
# the client address the server would see.


@pytest.mark.parametrize(
    ("access", "host", "allowed"),
    [
        ("local", "127.0.0.1", True),
        ("local", "127.1.2.3", True),
        ("local", "::1", True),
        ("local", "::ffff:127.0.0.1", True),
        ("local", "10.1.2.3", False),
        ("local", "192.168.0.9", False),
        ("local", None, False),
        ("local", "not-an-ip", False),
        ("any", "10.1.2.3", True),
        ("off", "127.0.0.1", False),
    ],
)
def test_lookup_access_decision(access, host, allowed):
    assert lookup_allowed(access, host) is allowed
    assert is_loopback(host) is (host is not None and host.startswith(("127.", "::1", "::ffff:")))


def _app(lookup_access: str):
    settings = Settings(
        etcd=EtcdSettings(),
        outputs=(OutputSettings(path="/tmp/x.json", prefixes=("/app/",)),),
        lookup_access=lookup_access,
    )
    state = build_state(settings)
    return create_app(settings, state, create_metrics(state, 0))


@pytest.mark.parametrize(
    ("access", "client", "expected"),
    [
        ("local", "10.9.8.7", 403),
        ("local", "127.0.0.1", 200),
        ("any", "10.9.8.7", 200),
        ("off", "127.0.0.1", 403),
    ],
)
def test_lookup_access_enforced_by_the_app(access, client, expected):
    async def call() -> list[int]:
        transport = httpx.ASGITransport(app=_app(access), client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as http:
            codes = [(await http.get(path)).status_code for path in ("/v1/keys", "/v1/status")]
            codes.append((await http.get("/v1/keys/app/a")).status_code)
            # Probes and metrics are never subject to lookup access.
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
            return codes

    codes = asyncio.run(call())
    assert codes[:2] == [expected, expected]
    assert codes[2] == (403 if expected == 403 else 404)


def test_keep_alive_requests_are_not_delayed(etcd, make_sidecar, tmp_path):
    """Responses on a reused connection must not wait for a delayed ACK (Nagle): kubelet and
    Prometheus reuse connections, and 40 ms per probe adds up."""
    etcd.ctl.put("/app/a", "1")
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(tmp_path / "o" / "c.json")])
    with httpx.Client(base_url=sidecar.url, timeout=5) as client:
        client.get("/health")
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
    assert statistics.median(latencies) < 0.02, latencies
