"""Several outputs in every format from one revision; a bad template keeps the last good file."""

from __future__ import annotations

import json
import subprocess

import javaproperties
import yaml
from polling import wait_until

TRICKY = 'it\'s a "test" with $HOME, `cmd`, back\\slash,\nnew line and ünïcode'


def _config(tmp_path, etcd_url: str, template: str) -> str:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "page.j2").write_text(template)
    config = {
        "etcd": {"endpoints": [etcd_url]},
        "debounce": 0.01,
        "outputs": [
            {"path": str(out / "app.json"), "prefix": "/app/"},
            {"path": str(out / "app.yaml"), "prefix": "/app/", "format": "yaml"},
            {"path": str(out / "app.env"), "prefix": "/app/", "format": "env"},
            {"path": str(out / "app.properties"), "prefix": "/app/", "format": "properties"},
            {"path": str(out / "cert.pem"), "keys": ["/app/tls/cert"], "format": "raw"},
            {
                "path": str(out / "page.txt"),
                "prefix": "/app/",
                "format": "template",
                "template": str(tmp_path / "page.j2"),
                "mode": "0600",
            },
        ],
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_every_format_is_written_from_one_revision(etcd, make_sidecar, tmp_path):
    values = {"/app/db/host": "db.internal", "/app/tricky": TRICKY, "/app/tls/cert": "PEM\x00\n"}
    revision = etcd.ctl.txn_put(values)
    config = _config(tmp_path, etcd.client_url, "host={{ tree.db.host }} rev={{ revision }}\n")
    sidecar = make_sidecar(["--config", config])
    out = tmp_path / "out"
    names = {"db/host": "db.internal", "tricky": TRICKY, "tls/cert": "PEM\x00\n"}

    # The env format cannot carry NUL, so that output fails while the others are written.
    def env_error() -> str | None:
        by_path = {o["path"]: o for o in sidecar.status()["outputs"]}
        return by_path[str(out / "app.env")]["last_error"]

    assert "NUL" in wait_until(env_error, timeout=10)
    assert not (out / "app.env").exists()
    assert json.loads((out / "app.json").read_text()) == names
    assert sidecar.get("/ready").status_code == 503
    etcd.ctl.put("/app/tls/cert", "PEM\n")
    names["tls/cert"] = "PEM\n"
    sidecar.wait_ready()

    assert json.loads((out / "app.json").read_text()) == names
    assert yaml.safe_load((out / "app.yaml").read_text()) == names
    assert javaproperties.loads((out / "app.properties").read_text()) == {
        k.replace("/", "."): v for k, v in names.items()
    }
    assert (out / "cert.pem").read_bytes() == b"PEM\n"
    assert (out / "page.txt").read_text() == f"host=db.internal rev={etcd.ctl.revision()}\n"
    assert (out / "page.txt").stat().st_mode & 0o777 == 0o600
    sourced = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; printf "%s" "$TRICKY"', "sh", str(out / "app.env")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sourced.stdout == TRICKY

    # Every output reflects the same revision.
    status = sidecar.status()
    assert {o["revision"] for o in status["outputs"]} == {status["revision"]}
    assert status["revision"] > revision


def test_undefined_template_variable_keeps_the_last_good_file(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/feature", "on")
    etcd.ctl.put("/app/tls/cert", "x")
    config = _config(tmp_path, etcd.client_url, "feature={{ keys['feature'] }}\n")
    sidecar = make_sidecar(["--config", config])
    sidecar.wait_ready()
    page = tmp_path / "out" / "page.txt"
    assert page.read_text() == "feature=on\n"
    errors = sidecar.metric("etcd_sidecar_errors_total", stage="render")

    etcd.ctl.delete("/app/feature")
    wait_until(
        lambda: sidecar.metric("etcd_sidecar_errors_total", stage="render") > errors, timeout=10
    )
    assert page.read_text() == "feature=on\n"
    assert json.loads((tmp_path / "out" / "app.json").read_text()) == {"tls/cert": "x"}
    body = sidecar.get("/ready").json()
    assert any("page.txt" in reason for reason in body["missing"]), body

    etcd.ctl.put("/app/feature", "off")
    wait_until(lambda: page.read_text() == "feature=off\n", timeout=10)
    sidecar.wait_ready()


def test_empty_prefix_keeps_the_file_and_is_not_ready_unless_allowed(etcd, make_sidecar, tmp_path):
    out = tmp_path / "out" / "c.json"
    sidecar = make_sidecar(["--prefix", "/nothing/", "--output", str(out)])
    wait_until(lambda: sidecar.metric("etcd_sidecar_errors_total", stage="empty") >= 1)
    assert not out.exists()
    assert sidecar.get("/ready").status_code == 503

    allowed = make_sidecar(
        ["--prefix", "/nothing/", "--output", str(tmp_path / "out2" / "c.json"), "--allow-empty"]
    )
    allowed.wait_ready()
    assert json.loads((tmp_path / "out2" / "c.json").read_text()) == {}


def test_invalid_utf8_value_is_reported_not_crashing(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/good", "1")
    out = tmp_path / "out" / "c.json"
    sidecar = make_sidecar(["--prefix", "/app/", "--output", str(out)])
    sidecar.wait_ready()
    etcd.ctl.put("/app/bad", b"\xff\xfe secret-bytes")
    wait_until(lambda: sidecar.metric("etcd_sidecar_errors_total", stage="render") >= 1)
    assert json.loads(out.read_text()) == {"good": "1"}
    assert sidecar.get("/health").status_code == 200
    assert "secret-bytes" not in sidecar.logs()
    entry = sidecar.get("/v1/keys/app/bad").json()
    assert entry["value_encoding"] == "base64"
    etcd.ctl.delete("/app/bad")
    sidecar.wait_ready()
