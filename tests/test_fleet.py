"""`fleet` through the stand-in API server's port-forward (k8s_standin.py) to real sidecars.

Each "pod" is a real `etcd-config-sidecar run` process on loopback; the stand-in lists the pods by
label and forwards each one's port 9180 to that process, over the same WebSocket protocol the API
server speaks, so the command runs exactly as it would against a cluster.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_harness import free_port
from k8s_standin import StandIn
from sidecar_proc import Sidecar, run_cli

NAMESPACE = "shop"
SECRET = "pa55-Never-Printed-7d1e"
OTHER_SECRET = "pa55-Canary-Never-Printed-90aa"


@pytest.fixture
def standin() -> Iterator[StandIn]:
    api = StandIn().start()
    try:
        yield api
    finally:
        api.close()


def start_pods(
    make_sidecar: Callable[..., Sidecar],
    api: StandIn,
    tmp_path: Path,
    prefixes: list[str],
) -> list[Sidecar]:
    """One sidecar per prefix, started together, registered as pods shop-0, shop-1, ... with the
    label app=shop; plus a pod of another app that the selector must leave out."""
    sidecars = [
        make_sidecar(
            ["--prefix", prefix, "--output", str(tmp_path / f"pod{i}" / "app.json")], start=False
        )
        for i, prefix in enumerate(prefixes)
    ]
    for sidecar in sidecars:
        sidecar.start(wait_healthy=False)
    for i, sidecar in enumerate(sidecars):
        sidecar.wait_ready()
        api.add_pod(f"shop-{i}", NAMESPACE, {"app": "shop", "tier": "web"}, {9180: sidecar.port})
    api.add_pod("billing-0", NAMESPACE, {"app": "billing"}, {9180: sidecars[0].port})
    return sidecars


def put_config(etcd, prefix: str, host: str, password: str) -> None:
    etcd.ctl.put(f"{prefix}db/host", host)
    etcd.ctl.put(f"{prefix}db/password", password)


def fleet(api: StandIn, tmp_path: Path, *args: str, context: bool = True):
    """Run the real command with a kubeconfig whose current context points nowhere: only
    --context stand-in reaches the stand-in, as a user's kubeconfig with several clusters would."""
    kubeconfig = api.write_kubeconfig(
        tmp_path / "kubeconfig", dead_current_context=f"http://127.0.0.1:{free_port()}"
    )
    extra = ["--context", "stand-in"] if context else []
    return run_cli(
        "fleet", "--kubeconfig", str(kubeconfig), *extra, "--timeout", "10", *args, timeout=60
    )


def rows(stdout: str) -> dict[str, list[str]]:
    """The table as {pod: cells}, cells split where the columns are (two spaces or more)."""
    lines = stdout.splitlines()
    return {cells[0]: cells for line in lines[1:-1] if (cells := re.split(r"\s{2,}", line.strip()))}


def short_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_all_pods_agree_exit_0_with_their_revision_hash_and_value(
    etcd, make_sidecar, standin: StandIn, tmp_path: Path
) -> None:
    put_config(etcd, "/apps/shop/", "db.internal", SECRET)
    start_pods(make_sidecar, standin, tmp_path, ["/apps/shop/"] * 3)

    result = fleet(standin, tmp_path, "-n", NAMESPACE, "-l", "app=shop", "/apps/shop/db/host")

    assert result.returncode == 0, result.stdout + result.stderr
    header, *_ = result.stdout.splitlines()
    assert header.split() == ["POD", "REVISION", "app.json", "/apps/shop/db/host", "STATE", "ERROR"]
    table = rows(result.stdout)
    assert sorted(table) == ["shop-0", "shop-1", "shop-2"]
    sha = short_sha(tmp_path / "pod0" / "app.json")
    revision = str(etcd.ctl.revision())
    for cells in table.values():
        assert cells[1:] == [revision, sha, "db.internal", "ok"]
    assert result.stdout.splitlines()[-1] == "3 pod(s); all agree"
    # Only the selected pods were port-forwarded to, each once.
    forwarded = sorted(c.path.split("/")[-2] for c in standin.calls if "portforward" in c.path)
    assert forwarded == ["shop-0", "shop-1", "shop-2"]


def test_a_pod_on_a_different_prefix_state_is_flagged_exit_1(
    etcd, make_sidecar, standin: StandIn, tmp_path: Path
) -> None:
    put_config(etcd, "/apps/shop/", "db.internal", SECRET)
    put_config(etcd, "/apps/canary/", "db-canary.internal", SECRET)
    start_pods(make_sidecar, standin, tmp_path, ["/apps/shop/", "/apps/shop/", "/apps/canary/"])

    result = fleet(standin, tmp_path, "-n", NAMESPACE, "-l", "app=shop,tier in (web,api)")

    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    good, canary = (
        short_sha(tmp_path / "pod0" / "app.json"),
        short_sha(tmp_path / "pod2" / "app.json"),
    )
    assert good != canary
    assert table["shop-0"][2:] == [good, "ok"]
    assert table["shop-1"][2:] == [good, "ok"]
    assert table["shop-2"][2:] == [canary, "DRIFT"]
    assert result.stdout.splitlines()[-1] == "3 pod(s); drift: shop-2"


def test_an_unreachable_pod_is_reported_exit_3(
    etcd, make_sidecar, standin: StandIn, tmp_path: Path
) -> None:
    put_config(etcd, "/apps/shop/", "db.internal", SECRET)
    sidecars = start_pods(make_sidecar, standin, tmp_path, ["/apps/shop/"] * 3)
    code, _ = sidecars[1].stop()
    assert code == 0

    result = fleet(standin, tmp_path, "--namespace", NAMESPACE, "--selector", "app=shop")

    assert result.returncode == 3, result.stdout + result.stderr
    table = rows(result.stdout)
    assert table["shop-0"][-1] == table["shop-2"][-1] == "ok"
    assert table["shop-1"][1:4] == ["-", "-", "UNREACHABLE"]
    # kubelet's own words, from the port-forward's error channel.
    assert "connection refused" in table["shop-1"][4]
    assert result.stdout.splitlines()[-1] == "3 pod(s); unreachable: shop-1"


def test_no_redacted_value_ever_appears_in_the_output(
    etcd, make_sidecar, standin: StandIn, tmp_path: Path
) -> None:
    put_config(etcd, "/apps/shop/", "db.internal", SECRET)
    put_config(etcd, "/apps/canary/", "db.internal", OTHER_SECRET)
    start_pods(make_sidecar, standin, tmp_path, ["/apps/shop/", "/apps/shop/", "/apps/canary/"])

    agree = fleet(standin, tmp_path, "-n", NAMESPACE, "-l", "app=shop", "/apps/shop/db/password")
    # The canary's file differs only by its password: drift shows, the password does not.
    drift = fleet(standin, tmp_path, "-n", NAMESPACE, "-l", "app=shop")

    assert agree.returncode == 1 and drift.returncode == 1
    for result in (agree, drift):
        for text in (result.stdout, result.stderr):
            assert SECRET not in text and OTHER_SECRET not in text
    table = rows(agree.stdout)
    assert table["shop-0"][3] == table["shop-1"][3] == "<redacted>"
    assert table["shop-2"][3:] == ["(not found)", "DRIFT"]
    assert SECRET in (tmp_path / "pod0" / "app.json").read_text()  # it was there to leak


def test_usage_errors_exit_2_and_an_api_that_refuses_exits_3(tmp_path: Path) -> None:
    with StandIn() as api:
        bad_port = fleet(api, tmp_path, "-n", NAMESPACE, "-l", "app=shop", "--port", "0")
        no_match = fleet(api, tmp_path, "-n", NAMESPACE, "-l", "app=nothing")
        bad_selector = fleet(api, tmp_path, "-n", NAMESPACE, "-l", "app in (a")
        wrong_context = fleet(api, tmp_path, "-n", NAMESPACE, "-l", "app=shop", context=False)
    missing = run_cli("fleet", "-n", NAMESPACE, "-l", "a=b", "--kubeconfig", str(tmp_path / "no"))
    with StandIn(forbidden=True) as api:
        refused = fleet(api, tmp_path, "-n", NAMESPACE, "-l", "app=shop")

    for result, words in (
        (bad_port, "--port 0"),
        (no_match, "matches no pod"),
        (bad_selector, "--selector"),
        (missing, "kubeconfig"),
    ):
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and len(result.stderr.splitlines()) == 1
        assert result.stdout == ""
    # The kubeconfig's current context points at nothing: the API cannot be reached.
    assert wrong_context.returncode == 3 and "cannot reach" in wrong_context.stderr
    assert refused.returncode == 3
    assert "403 Forbidden" in refused.stderr and "cannot list pods" in refused.stderr
