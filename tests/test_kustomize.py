"""The kustomize manifests in deploy/: they render, validate and wire the sidecar like the chart."""

from __future__ import annotations

import re

import pytest
from k8s_render import (
    DEPLOY,
    KUBE_VERSIONS,
    all_containers,
    container,
    kustomize,
    listen_port,
    of_kind,
    one,
    pod_spec,
    probe_port,
    render,
    validate,
)

BASE = DEPLOY
DEV = DEPLOY / "overlays" / "dev-etcd"


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return kustomize(DEV)


def settings(docs: list[dict]) -> dict[str, str]:
    """The sidecar's SIDECAR_* settings: the generated ConfigMap its envFrom names."""
    side = container(pod_spec(one(docs, "Deployment")), "etcd-config-sidecar")
    [source] = side["envFrom"]
    name = source["configMapRef"]["name"]
    [configmap] = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == name]
    return configmap["data"]


@pytest.mark.parametrize("path", [BASE, DEV], ids=["base", "dev-etcd"])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_are_valid_kubernetes(path, version):
    docs = kustomize(path)
    assert docs
    assert validate(docs, version) == []


def test_base_runs_a_native_sidecar(base):
    spec = pod_spec(one(base, "Deployment"))
    [side] = spec["initContainers"]
    assert side["name"] == "etcd-config-sidecar"
    assert side["restartPolicy"] == "Always"
    assert side["startupProbe"]["httpGet"]["path"] == "/ready"
    assert side["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert side["livenessProbe"]["httpGet"]["path"] == "/health"
    port = listen_port(settings(base)["SIDECAR_LISTEN"])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe_port(side, side[kind]) == port
    assert one(base, "Service")["spec"]["ports"][0]["targetPort"] == port
    assert settings(base)["SIDECAR_KUBERNETES_EVENTS"] == "off"


def test_base_app_mounts_the_shared_directory(base):
    spec = pod_spec(one(base, "Deployment"))
    side = container(spec, "etcd-config-sidecar")
    app = container(spec, "app")
    output = settings(base)["SIDECAR_OUTPUT"]
    [side_mount] = side["volumeMounts"]
    [app_mount] = app["volumeMounts"]
    assert side_mount["name"] == app_mount["name"]
    assert output.rsplit("/", 1)[0] == side_mount["mountPath"]
    assert app_mount["readOnly"] is True
    for c in all_containers(spec):
        assert all("subPath" not in m for m in c.get("volumeMounts", []))
    assert {"name": "CONFIG_FILE", "value": output} in app["env"]


def test_security_settings(base, dev):
    for workload in [
        *of_kind(dev, "Deployment"),
        *of_kind(dev, "StatefulSet"),
        *of_kind(dev, "Job"),
    ]:
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in all_containers(spec):
            ctx = c["securityContext"]
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
            assert re.search(r":v?\d+\.\d+\.\d+$", c["image"]), f"{where}: unpinned {c['image']}"
            assert "resources" not in c or c["resources"], where


def test_selectors_match_pods(base, dev):
    for docs in (base, dev):
        for workload in [*of_kind(docs, "Deployment"), *of_kind(docs, "StatefulSet")]:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items()
            assert "app.kubernetes.io/part-of" not in selector, (
                "selectors are immutable; keep them small"
            )
        for service in of_kind(docs, "Service"):
            pods = [
                w["spec"]["template"]["metadata"]["labels"]
                for w in [*of_kind(docs, "Deployment"), *of_kind(docs, "StatefulSet")]
            ]
            assert any(service["spec"]["selector"].items() <= p.items() for p in pods), service


def test_base_and_chart_agree_on_the_sidecar(base):
    """Both ways of deploying give the sidecar the same port, paths, probes and hardening."""
    chart_side = container(pod_spec(one(render(), "Deployment")), "etcd-config-sidecar")
    base_side = container(pod_spec(one(base, "Deployment")), "etcd-config-sidecar")
    for key in (
        "ports",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "restartPolicy",
        "args",
    ):
        assert base_side[key] == chart_side[key], key
    assert base_side["securityContext"] == chart_side["securityContext"]
    chart_env = {e["name"]: e.get("value") for e in chart_side["env"]}
    for name, value in settings(base).items():
        assert chart_env[name] == value, name


def test_dev_overlay_runs_a_three_member_etcd(dev):
    statefulset = one(dev, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    [headless] = [
        s for s in of_kind(dev, "Service") if s["metadata"]["name"] == spec["serviceName"]
    ]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    [etcd] = pod_spec(statefulset)["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in etcd["args"])
    name, service = statefulset["metadata"]["name"], spec["serviceName"]
    members = [f"{name}-{i}" for i in range(3)]
    assert args["initial-cluster"] == ",".join(f"{m}=http://{m}.{service}:2380" for m in members)
    assert args["initial-cluster-state"] == "new"
    assert args["data-dir"].startswith(etcd["volumeMounts"][0]["mountPath"] + "/")
    endpoints = settings(dev)["SIDECAR_ETCD_ENDPOINTS"].split(",")
    assert endpoints == [f"http://{m}.{service}:2379" for m in members]
    assert one(dev, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    seed = one(dev, "Job")
    prefix = settings(dev)["SIDECAR_PREFIX"]
    for c in all_containers(pod_spec(seed)):
        assert c["args"][c["args"].index("put") + 1].startswith(prefix)
        assert c["args"][0] == "--endpoints=" + ",".join(endpoints)
