"""TLS, client certificates and etcd authentication against real etcd; secrets never leak."""

from __future__ import annotations

import json
import os
import shutil

from etcd_harness import make_tls_files
from polling import wait_until

PASSWORD = "reader-pa55word-xyz"


def test_tls_with_client_certificate(make_etcd, make_sidecar, tls_files, tmp_path):
    member = make_etcd(tls=tls_files, client_cert_auth=True)
    assert member.client_url.startswith("https://")
    member.ctl.put("/app/a", "1")
    out = tmp_path / "out" / "c.json"
    sidecar = make_sidecar(
        [
            "--prefix",
            "/app/",
            "--output",
            str(out),
            "--etcd-endpoints",
            member.client_url,
            "--etcd-ca-file",
            tls_files.ca_file,
            "--etcd-cert-file",
            tls_files.client_cert_file,
            "--etcd-key-file",
            tls_files.client_key_file,
        ]
    )
    sidecar.wait_ready()
    assert json.loads(out.read_text()) == {"a": "1"}
    member.ctl.put("/app/b", "2")
    wait_until(lambda: json.loads(out.read_text()) == {"a": "1", "b": "2"}, timeout=10)

    # A rotated certificate (a mounted Secret updated in place) is picked up: reconnect, no gap.
    os.utime(tls_files.client_cert_file)
    wait_until(
        lambda: sidecar.metric("etcd_sidecar_watch_restarts_total", reason="tls_rotated") >= 1,
        timeout=15,
    )
    member.ctl.put("/app/c", "3")
    wait_until(lambda: json.loads(out.read_text()).get("c") == "3", timeout=10)


def _failing_tls(make_sidecar, member, out, extra):
    sidecar = make_sidecar(
        ["--prefix", "/app/", "--output", str(out), "--etcd-endpoints", member.client_url, *extra]
    )
    wait_until(lambda: sidecar.metric("etcd_sidecar_errors_total", stage="etcd") >= 2, timeout=20)
    ready = sidecar.get("/ready")
    assert ready.status_code == 503
    assert not out.exists()
    return sidecar


def test_wrong_ca_fails_clearly_and_recovers_when_the_file_is_fixed(
    make_etcd, make_sidecar, tls_files, tmp_path
):
    member = make_etcd(tls=tls_files, client_cert_auth=True)
    member.ctl.put("/app/a", "1")
    other = make_tls_files(tmp_path / "other-ca")
    ca = tmp_path / "mounted-ca.crt"
    shutil.copy(other.ca_file, ca)
    out = tmp_path / "out" / "c.json"
    sidecar = _failing_tls(
        make_sidecar,
        member,
        out,
        [
            "--etcd-ca-file",
            str(ca),
            "--etcd-cert-file",
            tls_files.client_cert_file,
            "--etcd-key-file",
            tls_files.client_key_file,
        ],
    )
    logs = sidecar.logs()
    assert '"event": "etcd_failed"' in logs
    assert "access_denied" in logs or "unavailable" in logs
    # The mounted CA is corrected in place: the next reconnect reads it, no restart needed.
    shutil.copy(tls_files.ca_file, ca)
    sidecar.wait_ready(timeout=30)
    assert json.loads(out.read_text()) == {"a": "1"}


def test_missing_client_certificate_is_refused(make_etcd, make_sidecar, tls_files, tmp_path):
    member = make_etcd(tls=tls_files, client_cert_auth=True)
    member.ctl.put("/app/a", "1")
    _failing_tls(
        make_sidecar, member, tmp_path / "out" / "c.json", ["--etcd-ca-file", tls_files.ca_file]
    )


def test_password_auth_with_a_read_only_role_and_revocation(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/db/password", "in-etcd-secret-value")
    etcd.ctl.put("/other/x", "1")
    etcd.ctl.add_user_with_prefix("reader", PASSWORD, "/app/", permission="read")
    etcd.ctl.enable_auth()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    out = tmp_path / "out" / "c.json"
    sidecar = make_sidecar(
        [
            "--prefix",
            "/app/",
            "--output",
            str(out),
            "--etcd-username",
            "reader",
            "--etcd-password-file",
            str(password_file),
        ]
    )
    sidecar.wait_ready()
    assert json.loads(out.read_text()) == {"db/password": "in-etcd-secret-value"}
    etcd.ctl.put("/app/db/host", "h")
    wait_until(lambda: json.loads(out.read_text()).get("db/host") == "h", timeout=10)

    before = out.read_bytes()
    etcd.ctl.run("user", "revoke-role", "reader", "reader-role")
    wait_until(lambda: sidecar.get("/ready").status_code == 503, timeout=30)
    body = sidecar.get("/ready").json()
    assert any("refuses access" in reason for reason in body["missing"]), body
    assert out.read_bytes() == before
    assert sidecar.get("/health").status_code == 200

    etcd.ctl.user_grant_role("reader", "reader-role")
    sidecar.wait_ready(timeout=30)
    logs = sidecar.logs()
    for secret in (PASSWORD, "in-etcd-secret-value"):
        assert secret not in logs
        assert secret not in sidecar.get("/metrics").text


def test_wrong_password_is_access_denied(etcd, make_sidecar, tmp_path):
    etcd.ctl.put("/app/a", "1")
    etcd.ctl.add_user_with_prefix("reader", PASSWORD, "/app/", permission="read")
    etcd.ctl.enable_auth()
    sidecar = make_sidecar(
        [
            "--prefix",
            "/app/",
            "--output",
            str(tmp_path / "out" / "c.json"),
            "--etcd-username",
            "reader",
            "--etcd-password",
            "wrong-guess-123",
        ]
    )
    wait_until(lambda: "refuses access" in sidecar.get("/ready").text, timeout=20)
    assert "wrong-guess-123" not in sidecar.logs()
