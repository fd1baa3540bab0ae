"""Helpers for the Kubernetes packaging tests: helm/kubectl, rendering, schema validation."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "etcd-config-sidecar"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
DEPLOY = REPO / "deploy"
TOOLS_BIN = REPO / ".tools" / "bin"

# The oldest Kubernetes the native sidecar needs, and the newest kubernetes-validate knows.
OLDEST = "1.29.0"
NEWEST = kv_utils.latest_version()
KUBE_VERSIONS = (OLDEST, NEWEST)

# Kinds whose schema comes from a CRD (prometheus-operator), which kubernetes-validate cannot know.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}

Doc = dict[str, Any]


def tool(name: str) -> str:
    """Path of helm/kubectl in .tools/bin; a missing tool fails the test (it is never skipped)."""
    path = TOOLS_BIN / name
    assert path.is_file() and os.access(path, os.X_OK), (
        f"{name} not found at {path}: run scripts/install-tools.sh first "
        "(CI's test command runs it before pytest)"
    )
    return str(path)


def run(
    args: list[str], *, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([tool("helm"), *args], check=check)


def template_args(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, str] | None = None,
    *,
    kube_version: str | None = NEWEST,
    chart: Path = CHART,
    release: str = "demo",
    namespace: str = "shop",
) -> list[str]:
    args = [tool("helm"), "template", release, str(chart), "--namespace", namespace]
    if kube_version:
        args += ["--kube-version", kube_version]
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set-json", f"{key}={value}"]
    return args


def render(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> list[Doc]:
    """`helm template` output as objects; set_values are JSON: {"sidecar.port": "9190"}."""
    proc = run(template_args(values_files, set_values, **kwargs))
    return load_docs(proc.stdout)


def render_fails(values_files: Iterable[Path] = (), set_values=None, **kwargs: Any) -> str:
    """stderr of a `helm template` that must fail."""
    proc = run(template_args(values_files, set_values, **kwargs), check=False)
    assert proc.returncode != 0, f"helm template succeeded but should have failed:\n{proc.stdout}"
    return proc.stderr


def kustomize(path: Path) -> list[Doc]:
    return load_docs(run([tool("kubectl"), "kustomize", str(path)]).stdout)


def load_docs(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate(docs: Iterable[Doc], version: str) -> list[str]:
    """Strict schema errors (empty when valid) against one Kubernetes version."""
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}@{version}"
        if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
            errors += [f"{where}: {e}" for e in check_monitor(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kv_utils.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{where}: {path}: {exc.message}")
        except kv_utils.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


def check_monitor(doc: Doc) -> list[str]:
    """The prometheus-operator fields the chart uses, checked by hand (no CRD schema offline)."""
    spec = doc.get("spec", {})
    endpoints_key = "endpoints" if doc["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
    allowed_spec = {"selector", "namespaceSelector", endpoints_key, "jobLabel"}
    allowed_endpoint = {
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
    }
    errors = [f"unknown spec field {k}" for k in set(spec) - allowed_spec]
    if not spec.get("selector", {}).get("matchLabels"):
        errors.append("no selector.matchLabels")
    endpoints = spec.get(endpoints_key) or []
    if not endpoints:
        errors.append(f"no {endpoints_key}")
    for endpoint in endpoints:
        errors += [f"unknown endpoint field {k}" for k in set(endpoint) - allowed_endpoint]
        if not isinstance(endpoint.get("port"), str):
            errors.append("endpoint port must be a port name")
    return errors


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: Iterable[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def container(spec: Doc, name: str) -> Doc:
    found = [c for c in all_containers(spec) if c["name"] == name]
    assert len(found) == 1, (
        f"no single container {name} in {[c['name'] for c in all_containers(spec)]}"
    )
    return found[0]


def env_values(c: Doc) -> dict[str, str]:
    """Plain `value` entries of a container's env (valueFrom entries map to None)."""
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def probe_port(c: Doc, probe: Doc) -> int:
    """The numeric port of an httpGet probe, resolving a port name against the container's ports."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
    assert port in named, f"probe port {port!r} is not a port of container {c['name']}"
    return named[port]


def listen_port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# --- the Dockerfile -------------------------------------------------------------------------------

DOCKERFILE = REPO / "Dockerfile"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def dockerfile_stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Global ARG defaults, and the stages: {"base", "name", "instructions"}, ARGs substituted."""
    global_args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0]
            )
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"base": base, "name": name, "instructions": []})
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1]["instructions"].append((keyword, rest))
    return global_args, stages


def image_entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD (exec form) of the Dockerfile's final stage."""
    _, stages = dockerfile_stages()
    found = {k: json.loads(v) for k, v in stages[-1]["instructions"] if k in ("ENTRYPOINT", "CMD")}
    return found["ENTRYPOINT"], found["CMD"]
