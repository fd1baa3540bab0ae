"""Kubernetes Events on the sidecar's own Pod, against the stand-in API server (k8s_standin.py).

The planner's timing rules are unit-tested with a fake clock; the rest runs real sidecar processes
(or the real client in-process) against the stand-in, which validates what it receives the way the
API server does; every recorded Event is also checked against the Kubernetes schema.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
from etcd_harness import free_port
from k8s_standin import StandIn
from polling import Deadline, wait_until
from sidecar_proc import ROOT, Sidecar

from sidecar.k8s_events import (
    NOTE_LIMIT,
    OUTAGE_THRESHOLD,
    RATE_INTERVAL,
    SERIES_IDLE,
    ApiSender,
    EventPlanner,
    EventRecorder,
    PodRef,
    micro_time,
    output_failed_note,
)
from sidecar.metrics import create_metrics
from sidecar.settings import EtcdSettings, OutputSettings, Settings
from sidecar.syncer import build_state

POD = PodRef("shop-0", "shop", "0f6c3d1e-9a51-4c1b-8f3e-2f9a7c1d5e44")
SCHEMA_VERSION = kubernetes_validate.utils.latest_version()
MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
# The Events' `regarding` carries the Pod's uid (POD_UID from the downward API): kubectl describe
# pod selects Events by uid as well as by name.
EXPECTED_UID = POD.uid


@pytest.fixture
def standin() -> StandIn:
    api = StandIn().start()
    try:
        yield api
    finally:
        api.close()


def events_env(api: StandIn, tmp_path: Path) -> dict[str, str]:
    """The sidecar's environment for `--kubernetes-events on` outside a cluster: the downward-API
    variables and a kubeconfig for the stand-in. KUBERNETES_SERVICE_HOST is set empty so that the
    in-cluster credentials are never used, even when the tests themselves run in a pod."""
    return {
        "POD_NAME": POD.name,
        "POD_NAMESPACE": POD.namespace,
        "POD_UID": POD.uid or "",
        "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace=POD.namespace)),
        "KUBERNETES_SERVICE_HOST": "",
        "KUBERNETES_SERVICE_PORT": "",
    }


def env_output_args(out: Path) -> list[str]:
    # env format: two keys that give the same NAME fail the output, an easy render error to cause.
    return ["--prefix", "/apps/shop/", "--output", str(out), "--format", "env"]


def assert_valid_event(
    event: dict, reason: str, type_: str, uid: str | None = EXPECTED_UID
) -> None:
    """Schema-valid, about this Pod, from this sidecar, with the reason and type expected."""
    kubernetes_validate.validate(event, SCHEMA_VERSION, strict=True)
    regarding = {"apiVersion": "v1", "kind": "Pod", "name": POD.name, "namespace": POD.namespace}
    if uid:
        regarding["uid"] = uid
    assert event["regarding"] == regarding
    assert event["metadata"]["namespace"] == POD.namespace
    assert event["reason"] == reason
    assert event["type"] == type_
    assert event["reportingController"] == "etcd-config-sidecar"
    assert event["reportingInstance"] == POD.name
    assert event["action"]
    assert event["note"]


def wait_for_creates(
    api: StandIn, reason: str, sidecar: Sidecar | None = None, timeout: float = 15
) -> list:
    return wait_until(
        lambda: api.event_calls(reason, "POST"),
        timeout=timeout,
        message=lambda: (
            f"no {reason} Event; calls: {[(c.method, c.status) for c in api.calls]}"
            + ("\n" + sidecar.logs() if sidecar else "")
        ),
    )


# --- the planner, with a fake clock ---------------------------------------------------------------


def planner() -> EventPlanner:
    return EventPlanner(POD, outputs=1, names=iter(f"shop-0.{n}" for n in range(100)).__next__)


WALL0 = 1_700_000_000.0


def test_an_outage_shorter_than_the_threshold_sends_nothing() -> None:
    plan = planner()
    plan.observe("synced", {"revision": 5}, 0.0, WALL0)
    assert [c.reason for c in plan.due(0.0)] == ["ConfigSynced"]
    for t in (1.0, 2.0, 4.0, 8.0):
        plan.observe("etcd_failed", {"reason": "unavailable"}, t, WALL0 + t)
        plan.tick(t)
    # The watch resuming (no relist needed) ends an outage as a successful read does.
    end = OUTAGE_THRESHOLD + 0.9
    plan.observe("watching", {"revision": 6}, end, WALL0 + end)
    plan.tick(1000.0)
    assert plan.due(1000.0) == []
    assert plan.next_wakeup() is None


def test_an_outage_is_reported_once_when_it_crosses_the_threshold_then_its_end() -> None:
    plan = planner()
    plan.observe("synced", {"revision": 5}, 0.0, WALL0)
    plan.due(0.0)
    plan.observe("etcd_failed", {"reason": "unavailable"}, 100.0, WALL0 + 100)
    assert plan.next_wakeup() == 100.0 + OUTAGE_THRESHOLD
    plan.tick(100.0 + OUTAGE_THRESHOLD - 0.01)
    assert plan.due(100.0 + OUTAGE_THRESHOLD - 0.01) == []
    plan.tick(100.0 + OUTAGE_THRESHOLD)
    (unavailable,) = plan.due(100.0 + OUTAGE_THRESHOLD)
    assert (unavailable.kind, unavailable.reason) == ("create", "EtcdUnavailable")
    assert unavailable.body["type"] == "Warning"
    assert unavailable.body["eventTime"] == micro_time(WALL0 + 100 + OUTAGE_THRESHOLD)
    assert "unavailable" in unavailable.body["note"]
    # More failed attempts in the same outage report nothing more.
    for t in (115.0, 120.0, 125.0):
        plan.observe("etcd_failed", {"reason": "unavailable"}, t, WALL0 + t)
        plan.tick(t)
    assert plan.due(125.0) == []
    plan.observe("sync_incomplete", {"revision": 9}, 126.0, WALL0 + 126)
    (recovered,) = plan.due(126.0)
    assert (recovered.reason, recovered.body["type"]) == ("EtcdRecovered", "Normal")


def test_an_outage_noticed_late_is_still_reported_before_its_recovery() -> None:
    # The sender thread may be busy when the threshold passes; the recovery's timestamp decides.
    plan = planner()
    plan.observe("etcd_failed", {"reason": "stalled"}, 0.0, WALL0)
    plan.observe("synced", {"revision": 3}, 25.0, WALL0 + 25)
    assert [c.reason for c in plan.due(25.0)] == [
        "EtcdUnavailable",
        "EtcdRecovered",
        "ConfigSynced",
    ]


def test_config_synced_is_sent_for_the_first_sync_only() -> None:
    plan = planner()
    for t in range(5):
        plan.observe("synced", {"revision": 10 + t}, float(t), WALL0 + t)
    (call,) = plan.due(4.0)
    assert call.reason == "ConfigSynced"
    assert "revision 10" in call.body["note"]
    assert plan.due(1000.0) == []


def test_repeats_become_one_series_and_each_reason_calls_at_most_once_a_minute() -> None:
    plan = planner()
    failed = {"outputs": ["/config/app.json"], "revision": 7}
    plan.observe("output_failed", failed, 0.0, WALL0)
    (create,) = plan.due(0.0)
    assert create.kind == "create" and "series" not in create.body
    plan.done(create, ok=True)
    for t in (1.0, 2.0, 30.0):
        plan.observe("output_failed", failed, t, WALL0 + t)
        assert plan.due(t) == []
    # Another output failing is another series, under the same reason and the same budget.
    plan.observe("output_failed", {"outputs": ["/config/other.json"]}, 31.0, WALL0 + 31)
    assert plan.due(59.9) == []
    assert plan.next_wakeup() == RATE_INTERVAL
    (patch,) = plan.due(RATE_INTERVAL)
    assert patch.kind == "patch" and patch.name == create.name
    assert patch.body == {"series": {"count": 4, "lastObservedTime": micro_time(WALL0 + 30)}}
    plan.done(patch, ok=True)
    (other,) = plan.due(2 * RATE_INTERVAL)
    assert other.kind == "create" and "/config/other.json" in other.body["note"]
    assert plan.due(10 * RATE_INTERVAL) == []


def test_a_series_idle_for_six_minutes_ends_and_a_gone_event_is_created_again() -> None:
    plan = planner()
    failed = {"outputs": ["/config/app.json"]}
    plan.observe("output_failed", failed, 0.0, WALL0)
    (first,) = plan.due(0.0)
    plan.done(first, ok=True)
    plan.observe("output_failed", failed, SERIES_IDLE + 1, WALL0 + SERIES_IDLE + 1)
    (second,) = plan.due(SERIES_IDLE + 1)
    assert second.kind == "create" and second.name != first.name
    plan.done(second, ok=True)
    plan.observe("output_failed", failed, SERIES_IDLE + 2, WALL0 + SERIES_IDLE + 2)
    (patch,) = plan.due(SERIES_IDLE + 1 + RATE_INTERVAL)
    plan.done(patch, ok=False, status=404)  # the API server's event TTL removed it
    (again,) = plan.due(SERIES_IDLE + 1 + 2 * RATE_INTERVAL)
    assert again.kind == "create"
    assert again.body["series"]["count"] == 2


def test_notes_fit_the_api_limit_and_name_outputs_only() -> None:
    paths = [f"/config/{'x' * 80}-{n}.json" for n in range(40)]
    note = output_failed_note(paths)
    assert len(note.encode()) <= NOTE_LIMIT
    assert paths[0] in note and re.search(r"and \d+ more", note)
    assert MICRO_TIME.match(micro_time(WALL0))  # a whole second still has its six digits


# --- the real client in-process, against the stand-in -------------------------------------------


def test_series_updates_are_strategic_merge_patches_the_api_server_accepts(
    standin: StandIn, tmp_path: Path
) -> None:
    from kubernetes import config

    kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig")
    settings = Settings(etcd=EtcdSettings(), outputs=(OutputSettings(path="/config/app.json"),))
    metrics = create_metrics(build_state(settings), 0)
    interval = 0.5
    plan = EventPlanner(POD, outputs=1, threshold=1.0, rate_interval=interval)
    recorder = EventRecorder(
        plan,
        metrics,
        lambda: ApiSender(config.new_client_from_config(str(kubeconfig), persist_config=False)),
    ).start()
    try:
        failed = {"outputs": ["/config/app.json"], "revision": 3}
        recorder.notify("output_failed", failed)
        (create,) = wait_for_creates(standin, "OutputFailed")
        for _ in range(4):
            recorder.notify("output_failed", failed)
        patch = wait_until(lambda: standin.event_calls("OutputFailed", "PATCH"), timeout=5)[0]
    finally:
        recorder.stop()
    assert create.status == 201 and create.content_type == "application/json"
    assert patch.status == 200
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert set(patch.body) == {"series"} and patch.body["series"]["count"] == 5
    # Spaced by the interval as the sender issues them; arrival adds a little jitter either way.
    assert patch.at - create.at >= interval * 0.9
    assert_valid_event(patch.stored, "OutputFailed", "Warning", uid=POD.uid)
    assert patch.stored["series"]["count"] == 5
    assert metrics.registry.get_sample_value(
        "etcd_sidecar_errors_total", {"stage": "k8s_events"}
    ) == (0.0)


def test_the_feature_off_or_outside_a_cluster_does_not_import_the_client(tmp_path: Path) -> None:
    script = """
import json, sys
from sidecar import k8s_events
from sidecar.metrics import create_metrics
from sidecar.settings import EtcdSettings, OutputSettings, Settings
from sidecar.syncer import build_state
k8s_events.SERVICE_TOKEN_FILE = sys.argv[1]
def start(mode, name):
    settings = Settings(etcd=EtcdSettings(), outputs=(OutputSettings(path="/config/app.json"),),
                        kubernetes_events=mode, pod_name=name, pod_namespace=name and "shop")
    metrics = create_metrics(build_state(settings), 0)
    handle = k8s_events.start_events(settings, metrics)
    errors = metrics.registry.get_sample_value("etcd_sidecar_errors_total", {"stage": "k8s_events"})
    return {"started": handle is not None, "errors": errors}
result = {"off": start("off", "shop-0"), "auto": start("auto", "shop-0"),
          "auto_no_pod": start("auto", None), "on_no_pod": start("on", None)}
result["imported"] = "kubernetes" in sys.modules
print(json.dumps(result))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "no-token")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    quiet = {"started": False, "errors": None}
    assert found["off"] == found["auto"] == found["auto_no_pod"] == quiet
    # `on` without the downward-API variables is a misconfiguration: said and counted.
    assert found["on_no_pod"] == {"started": False, "errors": 1.0}
    assert "k8s_events_unavailable" in result.stderr
    assert found["imported"] is False


# --- real sidecar processes against the stand-in -------------------------------------------------


def test_first_sync_records_config_synced_and_a_failed_output_names_only_its_path(
    etcd, make_sidecar, standin: StandIn, tmp_path: Path
) -> None:
    etcd.ctl.put("/apps/shop/db/host", "db.internal")
    out = tmp_path / "out" / "app.env"
    sidecar = make_sidecar(
        [*env_output_args(out), "--kubernetes-events", "on"], env=events_env(standin, tmp_path)
    )
    sidecar.wait_ready()
    (synced,) = wait_for_creates(standin, "ConfigSynced")
    assert synced.status == 201
    assert_valid_event(synced.stored, "ConfigSynced", "Normal")
    assert MICRO_TIME.match(synced.body["eventTime"].replace("+00:00", "Z"))

    # db-host and db/host both give DB_HOST: the env output fails and keeps its last good file.
    secret = "hunter2-must-never-reach-the-api"
    etcd.ctl.put("/apps/shop/db-host", secret)
    (failed,) = wait_for_creates(standin, "OutputFailed")
    assert failed.status == 201
    assert_valid_event(failed.stored, "OutputFailed", "Warning")
    assert str(out) in failed.body["note"]
    assert all(secret.encode() not in call.raw for call in standin.calls)
    assert secret not in sidecar.logs()
    assert out.read_text() == "DB_HOST='db.internal'\n"
    assert sidecar.metric("etcd_sidecar_errors_total", stage="k8s_events") == 0
    assert len(standin.event_calls("ConfigSynced")) == 1


def hold_outage(sidecar: Sidecar, seconds: float) -> None:
    """Keep etcd unreachable for `seconds` (the outage's length is what is under test, so this
    waits on purpose), checking meanwhile that the last good file keeps the sidecar ready."""
    hold = Deadline(seconds)
    while not hold.expired():
        assert sidecar.get("/ready").status_code == 200
        time.sleep(min(0.5, hold.remaining()))


def test_a_short_outage_sends_nothing_and_a_long_one_one_unavailable_and_one_recovered(
    etcd, make_proxy, make_sidecar, standin: StandIn, tmp_path: Path
) -> None:
    etcd.ctl.put("/apps/shop/db/host", "db.internal")
    proxy = make_proxy(etcd)
    sidecar = make_sidecar(
        [
            *env_output_args(tmp_path / "out" / "app.env"),
            "--etcd-endpoints",
            proxy.url,
            "--kubernetes-events",
            "on",
        ],
        env=events_env(standin, tmp_path),
    )
    sidecar.wait_ready()
    wait_for_creates(standin, "ConfigSynced")
    nowhere = free_port()

    def outage(seconds: float) -> tuple[float, float]:
        failures = sidecar.metric("etcd_sidecar_errors_total", stage="etcd")
        started = time.monotonic()  # before the cut: the sidecar may notice it at once
        proxy.retarget("127.0.0.1", nowhere, cut=True)
        wait_until(
            lambda: sidecar.metric("etcd_sidecar_errors_total", stage="etcd") > failures,
            timeout=5,
            message="the sidecar did not notice the outage",
        )
        hold_outage(sidecar, seconds)
        proxy.retarget("127.0.0.1", etcd.client_port)
        ended = time.monotonic()
        wait_until(
            lambda: sidecar.metric("etcd_sidecar_etcd_connected") == 1,
            timeout=15,
            message=lambda: "the sidecar did not reconnect\n" + sidecar.logs(),
        )
        return started, ended

    outage(3)
    long_started, long_ended = outage(20)
    (recovered,) = wait_for_creates(standin, "EtcdRecovered", sidecar)

    # Exactly one of each, and both from the long outage: had the short one reported anything,
    # it would be here too (the sender keeps order), or have turned these into patched series.
    (unavailable,) = standin.event_calls("EtcdUnavailable")
    assert standin.event_calls("EtcdRecovered") == [recovered]
    assert long_started + OUTAGE_THRESHOLD <= unavailable.at < long_ended
    assert recovered.at >= long_ended
    assert_valid_event(unavailable.stored, "EtcdUnavailable", "Warning")
    assert_valid_event(recovered.stored, "EtcdRecovered", "Normal")
    assert unavailable.status == recovered.status == 201
    assert sidecar.metric("etcd_sidecar_errors_total", stage="k8s_events") == 0


def test_an_api_server_refusing_everything_leaves_syncing_and_readiness_alone(
    etcd, make_sidecar, tmp_path: Path
) -> None:
    etcd.ctl.put("/apps/shop/db/host", "db.internal")
    out = tmp_path / "out" / "app.env"
    with StandIn(forbidden=True) as api:
        sidecar = make_sidecar(
            [*env_output_args(out), "--kubernetes-events", "on"], env=events_env(api, tmp_path)
        )
        sidecar.wait_ready()
        wait_until(
            lambda: sidecar.metric("etcd_sidecar_errors_total", stage="k8s_events") == 1,
            timeout=15,
            message=lambda: "ConfigSynced was not attempted\n" + sidecar.logs(),
        )
        assert sidecar.get("/ready").status_code == 200

        etcd.ctl.put("/apps/shop/db/port", "5432")
        wait_until(lambda: "DB_PORT='5432'" in out.read_text(), timeout=5)
        # A second refusal (OutputFailed for a collision) is counted but not logged again.
        etcd.ctl.put("/apps/shop/db-port", "6543")
        wait_until(
            lambda: sidecar.metric("etcd_sidecar_errors_total", stage="k8s_events") == 2,
            timeout=10,
            message=lambda: "OutputFailed was not attempted\n" + sidecar.logs(),
        )
        etcd.ctl.delete("/apps/shop/db-port")
        sidecar.wait_ready(timeout=10)
        etcd.ctl.put("/apps/shop/db/name", "shop")
        wait_until(lambda: "DB_NAME='shop'" in out.read_text(), timeout=5)

        assert [c.status for c in api.event_calls()] == [403, 403]
    logged = [
        json.loads(line)
        for line in sidecar.logs().splitlines()
        if '"k8s_event_failed"' in line and line.startswith("{")
    ]
    assert len(logged) == 1
    assert logged[0]["level"] == "warning" and "403" in logged[0]["error"]
    assert sidecar.metric("etcd_sidecar_errors_total", stage="etcd") == 0
