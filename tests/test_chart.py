"""The Helm chart: lint, schema, Kubernetes validation and checks over the rendered objects."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from k8s_render import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    NEWEST,
    all_containers,
    container,
    env_values,
    helm,
    listen_port,
    of_kind,
    one,
    pod_spec,
    probe_port,
    render,
    render_fails,
    run,
    tool,
    validate,
)

CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
SIDECAR = "etcd-config-sidecar"
SHARED_VOLUME = "etcd-config"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def ci(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Every ci/*-values.yaml rendered once for the newest Kubernetes."""
    return {name: render([path]) for name, path in zip(CI_IDS, CI_VALUES, strict=True)}


def test_every_feature_has_ci_values():
    for feature in ("default", "classic", "tls-auth", "outputs", "memory", "monitoring"):
        assert ci(feature).is_file(), f"ci/{feature}-values.yaml is missing"
    for feature in ("networkpolicy", "events", "signal", "template"):
        assert ci(feature).is_file(), f"ci/{feature}-values.yaml is missing"


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_helm_lint_strict(values: Path):
    proc = helm("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_objects_are_valid_kubernetes(values: Path, version: str):
    docs = render([values], kube_version=version)
    assert of_kind(docs, "Deployment"), "no Deployment rendered"
    assert validate(docs, version) == []


def test_validation_is_strict():
    """A guard for the test above: an unknown field must be reported."""
    docs = render()
    deployment = one(docs, "Deployment")
    pod_spec(deployment)["containers"][0]["imagePullPolicyy"] = "Always"
    errors = validate([deployment], NEWEST)
    assert errors and "imagePullPolicyy" in errors[0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicas": "2"}, "additional properties 'replicas' not allowed"),
        ({"config.prefixs": '["/a/"]'}, "additional properties 'prefixs' not allowed"),
        ({"sidecar.port": '"9180"'}, "got string, want integer"),
        ({"sidecar.mode": '"sidecar"'}, "sidecar/mode"),
        ({"etcd.endpoints": '"http://etcd:2379"'}, "got string, want array"),
        ({"etcd.endpoints": '["etcd:2379"]'}, "etcd/endpoints/0"),
        ({"volume.medium": '"memory"'}, "volume/medium"),
        ({"config.fileMode": "644"}, "got number, want string"),
        ({"config.outputs": '[{"path": "a.json"}]'}, "config/outputs/0"),
        ({"config.outputs": '[{"path": "a.json", "prefix": "/a/", "fromat": "json"}]'}, "fromat"),
        ({"templates": '{"a/b.j2": "x"}'}, "'a/b.j2' does not match pattern"),
        ({"serviceMonitor.enabled": '"yes"'}, "got string, want boolean"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_schema_rejects_unknown_keys_and_wrong_types(values: dict, expected: str):
    stderr = render_fails(set_values=values)
    assert "schema" in stderr
    assert expected in stderr


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"config.prefixes": "[]"}, "set config.prefixes or config.keys"),
        ({"config.format": '"template"'}, "config.template"),
        ({"config.format": '"template"', "config.template": '"missing.j2"'}, "missing.j2"),
        ({"app.image.tag": '""'}, "image busybox: set a tag or a digest"),
    ],
)
def test_inconsistent_values_fail_with_a_message(values: dict, expected: str):
    assert expected in render_fails(set_values=values)


def test_selectors_never_contain_changing_labels(rendered):
    for name, docs in rendered.items():
        selectors = []
        for doc in docs:
            spec = doc.get("spec", {})
            if doc["kind"] in ("Deployment", "ServiceMonitor", "PodMonitor"):
                selectors.append(spec["selector"]["matchLabels"])
            elif doc["kind"] == "Service":
                selectors.append(spec["selector"])
            elif doc["kind"] == "NetworkPolicy":
                selectors.append(spec["podSelector"]["matchLabels"])
        assert selectors, name
        for selector in selectors:
            assert set(selector) <= {
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            }, f"{name}: selector {selector}"
        deployment = one(docs, "Deployment")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        for service in of_kind(docs, "Service"):
            assert service["spec"]["selector"].items() <= pod_labels.items()


def check_hardened(where: str, ctx: dict) -> None:
    assert ctx, f"{where}: empty securityContext"
    assert ctx.get("runAsNonRoot") is True, where
    assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, where
    assert ctx.get("readOnlyRootFilesystem") is True, where
    assert ctx.get("allowPrivilegeEscalation") is False, where
    assert ctx.get("privileged") in (None, False), where
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
    assert not ctx.get("capabilities", {}).get("add"), where
    assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where


def test_security_settings(rendered):
    for name, docs in rendered.items():
        pods = [pod_spec(one(docs, "Deployment"))]
        pods += [p["spec"] for p in of_kind(docs, "Pod")]  # the helm test hook
        for spec in pods:
            pod_ctx = spec["securityContext"]
            assert pod_ctx["runAsNonRoot"] is True, name
            assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault", name
            assert spec["automountServiceAccountToken"] is False, name
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
            for c in all_containers(spec):
                check_hardened(f"{name}/{c['name']}", c.get("securityContext"))
        for sa in of_kind(docs, "ServiceAccount"):
            assert sa["automountServiceAccountToken"] is False, name


def test_no_default_resources():
    spec = pod_spec(one(render(), "Deployment"))
    for c in all_containers(spec):
        assert "resources" not in c, c["name"]


def test_values_have_no_empty_security_context():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["sidecar"]["securityContext"]
    assert values["app"]["securityContext"]
    assert values["podSecurityContext"]
    text = (CHART / "values.yaml").read_text() + "".join(
        p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file()
    )
    assert not re.search(r"securityContext:\s*\{\}", text)


def sidecar_of(docs: list[dict]) -> tuple[dict, dict]:
    spec = pod_spec(one(docs, "Deployment"))
    return spec, container(spec, SIDECAR)


def test_probes_match_listen_address(rendered):
    for name, docs in rendered.items():
        _, side = sidecar_of(docs)
        listen = env_values(side)["SIDECAR_LISTEN"]
        port = listen_port(listen)
        assert [p["containerPort"] for p in side["ports"]] == [port], name
        probes = {k: side[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes["startupProbe"]["httpGet"]["path"] == "/ready", name
        assert probes["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert probes["livenessProbe"]["httpGet"]["path"] == "/health", name
        for kind, probe in probes.items():
            assert probe_port(side, probe) == port, f"{name}: {kind}"
        for service in of_kind(docs, "Service"):
            assert service["spec"]["ports"][0]["targetPort"] == port, name


def test_ipv6_listen_address_is_bracketed(rendered):
    _, side = sidecar_of(rendered["ipv6"])
    assert env_values(side)["SIDECAR_LISTEN"] == "[::]:9190"


def test_app_mounts_the_shared_directory_without_subpath(rendered):
    for name, docs in rendered.items():
        spec, side = sidecar_of(docs)
        app = container(spec, "app")
        shared = [m for m in app["volumeMounts"] if m["name"] == SHARED_VOLUME]
        assert len(shared) == 1, name
        assert shared[0]["readOnly"] is True, name
        for c in all_containers(spec):
            for mount in c.get("volumeMounts", []):
                assert "subPath" not in mount and "subPathExpr" not in mount, f"{name}/{c['name']}"
        side_mount = next(m for m in side["volumeMounts"] if m["name"] == SHARED_VOLUME)
        env = env_values(side)
        if "SIDECAR_OUTPUT" in env:
            output = Path(env["SIDECAR_OUTPUT"])
            assert output.parent == Path(side_mount["mountPath"]), name
            app_file = env_values(app).get("CONFIG_FILE")
            assert app_file == str(Path(shared[0]["mountPath"]) / output.name), name
        volume = next(v for v in spec["volumes"] if v["name"] == SHARED_VOLUME)
        assert "emptyDir" in volume, name


def test_native_sidecar_by_default():
    spec, side = sidecar_of(render())
    assert side in spec["initContainers"]
    assert side not in spec["containers"]
    assert side["restartPolicy"] == "Always"
    assert side["startupProbe"]["httpGet"]["path"] == "/ready"
    assert [c["name"] for c in spec["initContainers"]] == [SIDECAR]
    assert side["args"] == ["run"]


def test_classic_sidecar_with_once_init_container(rendered):
    spec, side = sidecar_of(rendered["classic"])
    assert side in spec["containers"] and "restartPolicy" not in side
    once = container(spec, f"{SIDECAR}-once")
    assert spec["initContainers"] == [once]
    assert once["args"] == ["once"]
    assert once["env"] == side["env"]
    assert once["volumeMounts"] == side["volumeMounts"]
    assert "restartPolicy" not in once


def test_mode_auto_follows_the_kubernetes_version():
    spec, side = sidecar_of(render(kube_version="1.28.0"))
    assert side in spec["containers"], "auto must pick classic before 1.29"
    assert container(spec, f"{SIDECAR}-once")["args"] == ["once"]
    assert validate(render(kube_version="1.28.0"), "1.28.0") == []
    spec, side = sidecar_of(render(kube_version=NEWEST))
    assert side in spec["initContainers"]


def test_native_mode_on_an_old_cluster_fails_clearly():
    stderr = render_fails(set_values={"sidecar.mode": '"native"'}, kube_version="1.28.0")
    assert "needs Kubernetes 1.29" in stderr and "sidecar.mode=classic" in stderr


def test_kubernetes_events_off_by_default(rendered):
    docs = rendered["default"]
    spec, side = sidecar_of(docs)
    assert env_values(side)["SIDECAR_KUBERNETES_EVENTS"] == "off"
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    assert not [v for v in spec["volumes"] if "projected" in v]


def test_kubernetes_events_rbac_and_token_for_the_sidecar_only(rendered):
    docs = rendered["events"]
    spec, side = sidecar_of(docs)
    env = {e["name"]: e for e in side["env"]}
    assert env["SIDECAR_KUBERNETES_EVENTS"]["value"] == "on"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    role = one(docs, "Role")
    assert role["rules"] == [
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
    ]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "shop"}]
    assert spec["serviceAccountName"] == account
    assert spec["automountServiceAccountToken"] is False
    token = "/var/run/secrets/kubernetes.io/serviceaccount"
    [volume] = [v for v in spec["volumes"] if "projected" in v]
    sources = volume["projected"]["sources"]
    assert {"serviceAccountToken", "configMap", "downwardAPI"} == {k for s in sources for k in s}
    for c in all_containers(spec):
        mounted = [m for m in c.get("volumeMounts", []) if m["name"] == volume["name"]]
        if c is side:
            assert mounted == [{"name": volume["name"], "mountPath": token, "readOnly": True}]
        else:
            assert not mounted, f"{c['name']} must not get the API token"
    egress_ports = {
        p["port"] for r in one(docs, "NetworkPolicy")["spec"]["egress"] for p in r["ports"]
    }
    assert 443 in egress_ports


def test_signal_action_shares_the_process_namespace(rendered):
    assert "shareProcessNamespace" not in pod_spec(one(rendered["default"], "Deployment"))
    for name in ("signal", "outputs"):
        assert pod_spec(one(rendered[name], "Deployment"))["shareProcessNamespace"] is True, name
    _, side = sidecar_of(rendered["signal"])
    assert env_values(side)["SIDECAR_ON_CHANGE_SIGNAL"] == "HUP:nginx"


def test_tls_and_auth_come_from_mounted_secrets(rendered):
    spec, side = sidecar_of(rendered["tls-auth"])
    env = {e["name"]: e for e in side["env"]}
    assert "SIDECAR_ETCD_PASSWORD" not in env, "the password must be a file, never env"
    assert env["SIDECAR_ETCD_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "etcd-credentials",
        "key": "username",
    }
    mounts = {m["mountPath"]: m for m in side["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    expected = {
        "SIDECAR_ETCD_PASSWORD_FILE": ("etcd-credentials", "password"),
        "SIDECAR_ETCD_CA_FILE": ("etcd-client-tls", "ca.crt"),
        "SIDECAR_ETCD_CERT_FILE": ("etcd-client-tls", "tls.crt"),
        "SIDECAR_ETCD_KEY_FILE": ("etcd-client-tls", "tls.key"),
    }
    for var, (secret, key) in expected.items():
        path = Path(env[var]["value"])
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True
        source = volumes[mount["name"]]["secret"]
        assert source["secretName"] == secret
        assert {"key": key, "path": path.name} in source["items"], var
        assert source["defaultMode"] == 0o440
    app = container(spec, "app")
    app_volumes = {m["name"] for m in app["volumeMounts"]}
    assert app_volumes == {SHARED_VOLUME}, "the app must not see etcd credentials"
    assert env_values(side)["SIDECAR_ETCD_ENDPOINTS"].startswith("https://etcd-0.etcd:2379,")


def test_outputs_render_a_config_file(rendered):
    docs = rendered["outputs"]
    spec, side = sidecar_of(docs)
    env = env_values(side)
    assert "SIDECAR_PREFIX" not in env and "SIDECAR_OUTPUT" not in env
    configmap = one(docs, "ConfigMap")
    volume = next(v for v in spec["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in side["volumeMounts"] if m["name"] == volume["name"])
    items = {i["path"]: i["key"] for i in volume["configMap"]["items"]}
    files = {f"{mount['mountPath']}/{path}": configmap["data"][key] for path, key in items.items()}
    config = yaml.safe_load(files[env["SIDECAR_CONFIG"]])
    shared = next(m for m in side["volumeMounts"] if m["name"] == SHARED_VOLUME)["mountPath"]
    assert [o["path"] for o in config["outputs"]] == [
        f"{shared}/app.json",
        f"{shared}/app.env",
        f"{shared}/nginx.conf",
    ]
    template = config["outputs"][2]["template"]
    assert "worker_processes" in files[template], "the template path must point at the mounted file"
    assert config["outputs"][2]["on_change"] == {"signal": "HUP:nginx"}
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert "CONFIG_FILE" not in env_values(container(spec, "app"))


def test_single_template_output(rendered):
    docs = rendered["template"]
    spec, side = sidecar_of(docs)
    env = env_values(side)
    assert env["SIDECAR_FORMAT"] == "template"
    assert env["SIDECAR_ON_CHANGE_URL"] == "http://127.0.0.1:8080/-/reload"
    volume = next(v for v in spec["volumes"] if "configMap" in v)
    mount = next(m for m in side["volumeMounts"] if m["name"] == volume["name"])
    paths = {f"{mount['mountPath']}/{i['path']}" for i in volume["configMap"]["items"]}
    assert env["SIDECAR_TEMPLATE"] in paths


def test_memory_medium_for_secret_outputs(rendered):
    spec, side = sidecar_of(rendered["memory"])
    volume = next(v for v in spec["volumes"] if v["name"] == SHARED_VOLUME)
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Mi"}
    assert env_values(side)["SIDECAR_FILE_MODE"] == "0600"
    assert side["resources"]["limits"]["memory"] == "128Mi"


def test_monitors_point_at_the_sidecar_port(rendered):
    docs = rendered["monitoring"]
    _, side = sidecar_of(docs)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_monitor = one(docs, "PodMonitor")
    side_ports = {p["name"] for p in side["ports"]}
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= side_ports
    for endpoint in monitor["spec"]["endpoints"] + pod_monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["path"] == "/metrics"
    assert not of_kind(rendered["default"], "ServiceMonitor")
    assert not of_kind(rendered["default"], "PodMonitor")
    assert not of_kind(rendered["default"], "NetworkPolicy")


def test_network_policy(rendered):
    docs = rendered["networkpolicy"]
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    sidecar_rule, app_rule = policy["ingress"]
    assert sidecar_rule["ports"] == [{"port": 9180, "protocol": "TCP"}]
    test_pod = one(docs, "Pod")
    allowed = [p["podSelector"]["matchLabels"] for p in sidecar_rule["from"] if "podSelector" in p]
    assert any(sel.items() <= test_pod["metadata"]["labels"].items() for sel in allowed)
    assert app_rule == {"ports": [{"port": 8080, "protocol": "TCP"}]}
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["egress"]]
    assert egress_ports == [{53}, {2379}, {5432}]


def test_helm_test_hook_pod(rendered):
    docs = rendered["default"]
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [c] = pod["spec"]["containers"]
    assert re.fullmatch(r"[^:@]+(:\d+(\.\d+)+|@sha256:[0-9a-f]{64})", c["image"]), c["image"]
    service = one(docs, "Service")
    script = c["args"][0]
    assert f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}" in script
    assert "/ready" in script and "etcd_sidecar_ready" in script
    assert pod["spec"]["restartPolicy"] == "Never"


def test_images_are_pinned(rendered):
    for name, docs in rendered.items():
        spec = pod_spec(one(docs, "Deployment"))
        for c in all_containers(spec):
            assert not c["image"].endswith(":latest") and (
                ":" in c["image"] or "@" in c["image"]
            ), f"{name}/{c['name']}: {c['image']}"
    spec, side = sidecar_of(rendered["default"])
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert side["image"] == f"etcd-config-sidecar:{chart['appVersion']}"
    _, side = sidecar_of(rendered["digest"])
    assert side["image"].endswith("@sha256:" + "0" * 64)


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == "0.1.0"
    assert "kubeVersion" in chart


def test_notes_show_the_port_forward_lookup():
    proc = helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "shop")
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert (
        "kubectl --namespace shop port-forward deployment/demo-etcd-config-sidecar 9180:9180"
        in notes
    )
    assert "etcd-config-sidecar get /apps/demo/" in notes
    assert "--url http://127.0.0.1:9180" in notes


def schema_leaves(schema: dict, prefix: tuple = ()) -> set[tuple]:
    leaves = set()
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            leaves |= schema_leaves(sub, (*prefix, key))
        else:
            leaves.add((*prefix, key))
    return leaves


def values_key_lines() -> dict[tuple, int]:
    """Path of every mapping key in values.yaml (outside list items) -> its line number."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    paths: dict[tuple, int] = {}
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):( |$)", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        paths[tuple(k for _, k in stack)] = number
    return paths


def test_every_value_is_documented_and_in_the_schema():
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = values_key_lines()
    leaves = schema_leaves(SCHEMA) - {("global",)}
    missing = sorted(".".join(p) for p in leaves if p not in keys)
    assert not missing, f"in the schema but not in values.yaml: {missing}"
    undocumented = [
        ".".join(p) for p in sorted(leaves) if not lines[keys[p] - 1].strip().startswith("#")
    ]
    assert not undocumented, f"values without a comment: {undocumented}"
    values = yaml.safe_load("\n".join(lines))
    assert SCHEMA["additionalProperties"] is False
    assert set(values) <= set(SCHEMA["properties"])


def test_named_templates_can_be_included_by_another_chart(tmp_path: Path):
    """A parent chart puts the sidecar into its own pod with the named templates."""
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "etcd-config-sidecar")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\nappVersion: '2.0'\n"
        "dependencies:\n  - name: etcd-config-sidecar\n    version: 0.1.0\n"
    )
    (parent / "values.yaml").write_text(
        "etcd-config-sidecar:\n  deployment: {enabled: false}\n  tests: {enabled: false}\n"
        "  etcd: {endpoints: ['http://etcd.db:2379']}\n  templates: {shop.j2: 'x'}\n"
    )
    # The snippet docs/kubernetes.md shows.
    (parent / "templates" / "deployment.yaml").write_text(
        """\
{{- $sidecar := index .Subcharts "etcd-config-sidecar" }}
{{- $native := eq (include "etcd-config-sidecar.mode" $sidecar) "native" }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector:
    matchLabels:
      {{- include "etcd-config-sidecar.selectorLabels" $sidecar | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "etcd-config-sidecar.selectorLabels" $sidecar | nindent 8 }}
    spec:
      serviceAccountName: {{ include "etcd-config-sidecar.serviceAccountName" $sidecar }}
      automountServiceAccountToken: false
      initContainers:
        {{- if $native }}
        {{- include "etcd-config-sidecar.container" $sidecar | nindent 8 }}
        {{- else }}
        {{- include "etcd-config-sidecar.onceContainer" $sidecar | nindent 8 }}
        {{- end }}
      containers:
        {{- if not $native }}
        {{- include "etcd-config-sidecar.container" $sidecar | nindent 8 }}
        {{- end }}
        - name: shop
          image: shop:2.0
          volumeMounts:
            {{- include "etcd-config-sidecar.appVolumeMount" $sidecar | nindent 12 }}
      volumes:
        {{- include "etcd-config-sidecar.volumes" $sidecar | nindent 8 }}
"""
    )
    old = render(chart=parent, release="shop", kube_version="1.28.0")
    assert validate(old, "1.28.0") == []
    old_spec = pod_spec(one(old, "Deployment"))
    assert [c["name"] for c in old_spec["initContainers"]] == [f"{SIDECAR}-once"]
    assert [c["name"] for c in old_spec["containers"]] == [SIDECAR, "shop"]
    docs = render(chart=parent, release="shop")
    assert validate(docs, NEWEST) == []
    assert [d["metadata"]["name"] for d in of_kind(docs, "Deployment")] == ["shop"]
    spec = pod_spec(one(docs, "Deployment"))
    side = container(spec, SIDECAR)
    assert spec["initContainers"] == [side] and side["restartPolicy"] == "Always"
    assert side["image"] == "etcd-config-sidecar:0.1.0", "the sidecar chart's appVersion, not 2.0"
    assert env_values(side)["SIDECAR_ETCD_ENDPOINTS"] == "http://etcd.db:2379"
    configmap = one(docs, "ConfigMap")
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {
        configmap["metadata"]["name"]
    }
    assert spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(docs, "Service")["spec"]["selector"].items() <= pod_labels.items()


def test_helm_and_kubectl_come_from_the_install_script():
    for name in ("helm", "kubectl"):
        assert Path(tool(name)).is_file()
    assert "v4." in run([tool("helm"), "version", "--short"]).stdout
