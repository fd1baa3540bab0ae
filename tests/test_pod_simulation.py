"""The chart and the program agree: rendered pods run as real local processes against real etcd.

No cluster exists here, so a small simulator plays kubelet's part for one pod of the rendered
Deployment: every volume becomes a temporary directory (paths under a container's mounts are
rewritten to it, in env, args and ConfigMap files), ConfigMaps and Secrets are written into their
volumes, the downward API and secretKeyRef are resolved, and each container's command, args and
env are the rendered ones. The sidecar image's ENTRYPOINT (read from the Dockerfile) is replaced
by the venv's `etcd-config-sidecar`; the demo app's `/bin/sh -c` script runs under the local
shell. Init containers run in order, and a native sidecar (restartPolicy Always) holds the next
containers back until its startupProbe's path answers 200 — what kubelet does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from etcd_harness import free_port, make_tls_files
from k8s_render import (
    CHART,
    CI_VALUES,
    DEPLOY,
    Doc,
    container,
    env_values,
    image_entrypoint_and_cmd,
    kustomize,
    of_kind,
    one,
    pod_spec,
    probe_port,
    render,
)
from polling import wait_until

SIDECAR_BIN = Path(sys.executable).with_name("etcd-config-sidecar")
SIDECAR_IMAGE = "etcd-config-sidecar"
POD_NAME = "demo-7d9c6b5f4-x2x9q"
NAMESPACE = "shop"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class PodSimulator:
    """One pod of a rendered workload, run as local processes (see the module docstring)."""

    def __init__(
        self,
        docs: list[Doc],
        root: Path,
        *,
        secrets: Mapping[str, Mapping[str, bytes]] | None = None,
        cluster_configmaps: Mapping[str, Mapping[str, str]] | None = None,
        workload: Doc | None = None,
    ) -> None:
        self.spec = pod_spec(workload or one(docs, "Deployment"))
        # ConfigMaps the cluster provides (kube-root-ca.crt), then the rendered ones.
        self.configmaps = dict(cluster_configmaps or {})
        self.configmaps |= {
            d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")
        }
        self.secrets = secrets or {}
        self.root = root
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.volume_dirs = {}
        for name in self.volumes:
            self.volume_dirs[name] = root / "volumes" / name
            self.volume_dirs[name].mkdir(parents=True)
        self.processes: list[Process] = []

    # --- the container's view of the filesystem --------------------------------------------------

    def mounts(self, c: Doc) -> list[tuple[str, Path]]:
        table = []
        for mount in c.get("volumeMounts", []):
            assert "subPath" not in mount, f"{c['name']}: subPath mounts never see file updates"
            table.append((mount["mountPath"].rstrip("/"), self.volume_dirs[mount["name"]]))
        return sorted(table, key=lambda entry: len(entry[0]), reverse=True)

    def host_path(self, c: Doc, path: str) -> Path:
        for mount, directory in self.mounts(c):
            if path == mount or path.startswith(mount + "/"):
                return directory / path[len(mount) :].lstrip("/")
        raise AssertionError(
            f"{path} is not on a volume of {c['name']} (read-only root filesystem)"
        )

    def translate(self, c: Doc, text: str) -> str:
        """Rewrite absolute paths under the container's mounts to the volumes' directories."""
        for mount, directory in self.mounts(c):
            text = re.sub(
                rf"(?<![\w./-]){re.escape(mount)}(?=/|$|[\s\"',:;])", str(directory), text
            )
        return text

    def populate(self, c: Doc) -> None:
        """Write ConfigMap and Secret items into the volumes this container mounts."""
        for mount in c.get("volumeMounts", []):
            volume = self.volumes[mount["name"]]
            directory = self.volume_dirs[mount["name"]]
            if "configMap" in volume:
                data = {
                    k: v.encode() for k, v in self.configmaps[volume["configMap"]["name"]].items()
                }
                items = volume["configMap"].get("items")
            elif "secret" in volume:
                data = dict(self.secrets[volume["secret"]["secretName"]])
                items = volume["secret"].get("items")
            elif "projected" in volume:
                data, items = self.projected(volume["projected"])
            else:
                assert "emptyDir" in volume, f"volume {mount['name']} is not simulated"
                continue
            for item in items or [{"key": key, "path": key} for key in data]:
                target = directory / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                content = data[item["key"]]
                if "configMap" in volume:
                    content = self.translate(c, content.decode()).encode()
                target.write_bytes(content)

    def projected(self, projected: Doc) -> tuple[dict[str, bytes], list[dict[str, str]]]:
        """A projected volume (the API token for Kubernetes Events) as files."""
        data: dict[str, bytes] = {}
        for source in projected["sources"]:
            if "serviceAccountToken" in source:
                data[source["serviceAccountToken"]["path"]] = b"simulated-service-account-token"
            elif "configMap" in source:
                configmap = self.configmaps[source["configMap"]["name"]]
                for item in source["configMap"]["items"]:
                    data[item["path"]] = configmap[item["key"]].encode()
            elif "downwardAPI" in source:
                for item in source["downwardAPI"]["items"]:
                    data[item["path"]] = self.field(item["fieldRef"]["fieldPath"]).encode()
            else:
                raise AssertionError(f"projected source {source} is not simulated")
        return data, [{"key": key, "path": key} for key in data]

    @staticmethod
    def field(path: str) -> str:
        return {
            "metadata.name": POD_NAME,
            "metadata.namespace": NAMESPACE,
            "metadata.uid": "0b6b3c5e-5d1c-4f7e-9a57-2f1d4c9b8a10",
        }[path]

    # --- process ---------------------------------------------------------------------------------

    def environment(self, c: Doc) -> dict[str, str]:
        # A clean environment, as in a container: only PATH from here (for the local shell tools).
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for source in c.get("envFrom", []):
            for key, value in self.configmaps[source["configMapRef"]["name"]].items():
                env[key] = self.translate(c, value)
        for entry in c.get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.translate(c, expand(entry["value"], env))
                continue
            ref = entry["valueFrom"]
            if "fieldRef" in ref:
                env[entry["name"]] = self.field(ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref:
                secret = ref["secretKeyRef"]
                env[entry["name"]] = self.secrets[secret["name"]][secret["key"]].decode()
            else:
                raise AssertionError(f"env source {ref} is not simulated")
        return env

    def argv(self, c: Doc, env: Mapping[str, str]) -> list[str]:
        if is_sidecar_image(c["image"]):
            entrypoint, cmd = image_entrypoint_and_cmd()
        else:
            entrypoint, cmd = [], []
        # Kubernetes: `command` replaces ENTRYPOINT and drops CMD; `args` replaces CMD.
        command = c.get("command") or entrypoint
        args = c["args"] if "args" in c else ([] if c.get("command") else cmd)
        argv = [self.translate(c, expand(word, env)) for word in [*command, *args]]
        assert argv, f"{c['name']}: nothing to run"
        if argv[0] == "etcd-config-sidecar":
            argv[0] = str(SIDECAR_BIN)
        return argv

    def start(self, c: Doc) -> Process:
        self.populate(c)
        env = self.environment(c)
        log = self.root / f"{c['name']}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                self.argv(c, env),
                env=env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a container's PID namespace
            )
        process = Process(c["name"], popen, log)
        self.processes.append(process)
        return process

    def probe(self, c: Doc, kind: str) -> int | None:
        """HTTP status of the container's probe (its path and port), or None when refused."""
        http = c[kind]["httpGet"]
        url = f"http://127.0.0.1:{probe_port(c, c[kind])}{http['path']}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def wait_started(self, c: Doc, process: Process, timeout: float = 20) -> None:
        """kubelet's startupProbe loop: wait for 200, failing early if the process died."""

        def started() -> bool:
            assert process.popen.poll() is None, f"{c['name']} exited:\n{process.output()}"
            return self.probe(c, "startupProbe") == 200

        wait_until(started, timeout=timeout, message=lambda: process.output()[-3000:])

    def run_to_completion(self, c: Doc, timeout: float = 30) -> int:
        process = self.start(c)
        return process.popen.wait(timeout=timeout)

    def terminate(self, process: Process, timeout: float = 5) -> int:
        """SIGTERM to the container's main process, as kubelet sends it; its exit code."""
        process.popen.send_signal(signal.SIGTERM)
        return process.popen.wait(timeout=timeout)

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)


def is_sidecar_image(image: str) -> bool:
    repository = re.split(r"[@:]", image.rsplit("/", 1)[-1])[0]
    return repository == SIDECAR_IMAGE


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args."""
    return re.sub(
        r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Any]:
    made: list[PodSimulator] = []

    def make(docs: list[Doc], **kwargs: Any) -> PodSimulator:
        sim = PodSimulator(docs, tmp_path / f"pod{len(made)}", **kwargs)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


def local_values(etcd, port: int, **extra: Any) -> dict[str, str]:
    """The values that put the pod on this machine: etcd on loopback, the HTTP port on loopback."""
    values = {
        "etcd.endpoints": json.dumps([etcd.client_url]),
        "sidecar.listenAddress": json.dumps("127.0.0.1"),
        "sidecar.port": str(port),
        "service.port": str(port),
        # The demo app polls its file; a short interval keeps the test quick.
        "app.env": json.dumps([{"name": "POLL_SECONDS", "value": "0.05"}]),
    }
    values.update({key: json.dumps(value) for key, value in extra.items()})
    return values


def app_saw(app: Process, path: Path) -> bool:
    return f"sha256={sha256(path)}" in app.output()


def test_native_sidecar_pod_starts_the_app_after_ready_and_it_sees_updates(etcd, simulator):
    docs = render(set_values=local_values(etcd, free_port()))
    sim = simulator(docs)
    [side] = sim.spec["initContainers"]
    assert side["restartPolicy"] == "Always" and side["startupProbe"]["httpGet"]["path"] == "/ready"
    app_spec = container(sim.spec, "app")
    output = sim.host_path(side, env_values(side)["SIDECAR_OUTPUT"])

    sidecar = sim.start(side)
    # Nothing to write yet (no keys under the prefix): the gate stays shut, the app must wait.
    wait_until(lambda: sim.probe(side, "startupProbe") == 503, timeout=20, message=sidecar.output)
    assert not output.exists()
    assert sim.probe(side, "livenessProbe") == 200, "liveness must not depend on the data"

    etcd.ctl.put("/apps/demo/greeting", "hello")
    sim.wait_started(side, sidecar)
    assert read_json(output) == {"greeting": "hello"}

    app = sim.start(app_spec)  # kubelet starts the app only now
    app_file = sim.host_path(app_spec, env_values(app_spec)["CONFIG_FILE"])
    assert app_file == output, "the app reads the file the sidecar writes"
    wait_until(lambda: app_saw(app, output), timeout=10, message=app.output)

    etcd.ctl.put("/apps/demo/greeting", "bonjour")
    wait_until(lambda: read_json(output) == {"greeting": "bonjour"}, timeout=10)
    wait_until(lambda: app_saw(app, output), timeout=10, message=app.output)
    assert app.output().count("config changed") == 2

    assert sim.probe(side, "readinessProbe") == 200
    assert sim.probe(side, "livenessProbe") == 200
    # What the chart's `helm test` pod greps for.
    port = probe_port(side, side["readinessProbe"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        assert re.search(r"^etcd_sidecar_ready 1", response.read().decode(), re.MULTILINE)

    assert sim.terminate(sidecar) == 0, sidecar.output()  # within 5 s of SIGTERM
    assert output.exists(), "the last good file stays"


def test_classic_pod_runs_once_first(etcd, simulator):
    etcd.ctl.put("/apps/demo/db/host", "postgres")
    docs = render([CHART / "ci" / "classic-values.yaml"], local_values(etcd, free_port()))
    sim = simulator(docs)
    [once] = sim.spec["initContainers"]
    side = container(sim.spec, "etcd-config-sidecar")
    assert side in sim.spec["containers"]
    output = sim.host_path(side, env_values(side)["SIDECAR_OUTPUT"])

    assert sim.run_to_completion(once) == 0, sim.processes[-1].output()
    assert read_json(output) == {"db/host": "postgres"}

    # Classic containers start together; the file is already there for the app.
    processes = {c["name"]: sim.start(c) for c in sim.spec["containers"]}
    app = processes["app"]
    wait_until(lambda: app_saw(app, output), timeout=10, message=app.output)
    wait_until(lambda: sim.probe(side, "readinessProbe") == 200, timeout=20)

    etcd.ctl.put("/apps/demo/db/host", "postgres-2")
    wait_until(lambda: read_json(output) == {"db/host": "postgres-2"}, timeout=10)
    wait_until(lambda: app_saw(app, output), timeout=10, message=app.output)
    assert sim.terminate(processes["etcd-config-sidecar"]) == 0


def test_config_file_outputs_and_template_from_the_configmap(etcd, simulator):
    etcd.ctl.put("/apps/shop/greeting", "hello")
    values = local_values(
        etcd,
        free_port(),
        **{
            "config.outputs": [
                {"path": "app.json", "prefix": "/apps/shop/"},
                {
                    "path": "app.conf",
                    "prefix": "/apps/shop/",
                    "format": "template",
                    "template": "app.conf.j2",
                },
            ],
            "templates": {"app.conf.j2": "greeting={{ keys['greeting'] }}\n"},
            "app.env": [
                {"name": "POLL_SECONDS", "value": "0.05"},
                {"name": "CONFIG_FILE", "value": "/config/app.conf"},
            ],
        },
    )
    sim = simulator(render(set_values=values))
    [side] = sim.spec["initContainers"]
    sidecar = sim.start(side)
    sim.wait_started(side, sidecar)
    shared = next(m for m in side["volumeMounts"] if m["name"] == "etcd-config")["mountPath"]
    conf = sim.host_path(side, f"{shared}/app.conf")
    assert conf.read_text() == "greeting=hello\n"
    assert read_json(sim.host_path(side, f"{shared}/app.json")) == {"greeting": "hello"}

    app = sim.start(container(sim.spec, "app"))
    wait_until(lambda: app_saw(app, conf), timeout=10, message=app.output)
    etcd.ctl.put("/apps/shop/greeting", "hi")
    wait_until(lambda: conf.read_text() == "greeting=hi\n", timeout=10)
    wait_until(lambda: app_saw(app, conf), timeout=10, message=app.output)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """The Secrets the ci values name, with real PEM files."""
    tls = make_tls_files(tmp_path_factory.mktemp("tls"))
    return {
        "etcd-client-tls": {
            "ca.crt": Path(tls.ca_file).read_bytes(),
            "tls.crt": Path(tls.client_cert_file).read_bytes(),
            "tls.key": Path(tls.client_key_file).read_bytes(),
        },
        "etcd-credentials": {"username": b"shop", "password": b"not-a-real-password"},
    }


def rendered_for_check(name: str) -> tuple[list[Doc], Doc]:
    if name == "kustomize-base":
        docs = kustomize(DEPLOY)
    else:
        docs = render([CHART / "ci" / f"{name}-values.yaml"])
    return docs, one(docs, "Deployment")


@pytest.mark.parametrize(
    "name", [p.name.removesuffix("-values.yaml") for p in CI_VALUES] + ["kustomize-base"]
)
def test_program_accepts_every_rendered_configuration(name, simulator, secrets):
    """`etcd-config-sidecar check` with each rendered sidecar's env, files and volumes."""
    docs, workload = rendered_for_check(name)
    cluster = {"kube-root-ca.crt": {"ca.crt": secrets["etcd-client-tls"]["ca.crt"].decode()}}
    sim = simulator(docs, secrets=secrets, cluster_configmaps=cluster, workload=workload)
    containers = (*sim.spec.get("initContainers", []), *sim.spec["containers"])
    sidecars = [c for c in containers if is_sidecar_image(c["image"])]
    assert sidecars
    for c in sidecars:
        sim.populate(c)
        env = sim.environment(c)
        proc = subprocess.run(
            [str(SIDECAR_BIN), "check"], env=env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, f"{c['name']}: {proc.stdout}{proc.stderr}"
