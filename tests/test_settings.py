"""Settings: precedence, the YAML file, secrets from files, and one-line errors with exit 2."""

from __future__ import annotations

import os

import pytest
import yaml
from sidecar_proc import run_cli

from sidecar.__main__ import _parse
from sidecar.settings import SettingsError, build_settings


def settings_for(argv: list[str], env: dict[str, str] | None = None):
    return build_settings(_parse(argv), env or {})


def test_defaults(tmp_path):
    s = settings_for(["run", "--prefix", "/app/"])
    assert s.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert s.outputs[0].path == "/config/config.json"
    assert s.outputs[0].format == "json"
    assert s.outputs[0].mode == 0o644
    assert (s.debounce, s.resync_interval, s.max_staleness, s.timeout) == (0.05, 300, 0, 30)
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 9180)
    assert s.lookup_access == "local"
    assert s.redact == ("*password*", "*secret*", "*token*", "*credential*")
    assert (s.allow_empty, s.kubernetes_events, s.log_format, s.log_level) == (
        False,
        "auto",
        "json",
        "info",
    )


def test_flag_beats_environment_beats_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"debounce": 3, "resync_interval": 30, "max_staleness": 9, "prefix": "/file/"}
        )
    )
    env = {"SIDECAR_CONFIG": str(config), "SIDECAR_DEBOUNCE": "2", "SIDECAR_RESYNC_INTERVAL": "20"}
    s = settings_for(["run", "--debounce", "1"], env)
    assert s.debounce == 1  # flag
    assert s.resync_interval == 20  # environment
    assert s.max_staleness == 9  # file
    assert s.outputs[0].prefixes == ("/file/",)


def test_environment_lists_and_repeated_flags():
    s = settings_for(
        ["run", "--prefix", "/a/", "--prefix", "/b/", "--key", "/c"],
        {"SIDECAR_ETCD_ENDPOINTS": "http://10.0.0.1:2379, http://10.0.0.2:2379"},
    )
    assert s.outputs[0].prefixes == ("/a/", "/b/")
    assert s.outputs[0].keys == ("/c",)
    assert s.etcd.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    s = settings_for(["run"], {"SIDECAR_PREFIX": "/x/,/y/", "SIDECAR_ALLOW_EMPTY": "yes"})
    assert s.outputs[0].prefixes == ("/x/", "/y/")
    assert s.allow_empty is True


def test_yaml_file_with_several_outputs(tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("{{ revision }}")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"""
etcd:
  endpoints: [https://etcd-0:2379, https://etcd-1:2379]
  username: reader
  password_file: {tmp_path / "pw"}
file_mode: "0600"
on_change_url: http://127.0.0.1:8080/-/reload
outputs:
  - path: {tmp_path / "app.json"}
    prefix: /apps/shop/
  - path: {tmp_path / "nginx.conf"}
    prefix: [/apps/shop/nginx/, /apps/common/]
    keys: [/global/flag]
    format: template
    template: {template}
    mode: 0640
    on_change: {{signal: "HUP:nginx"}}
"""
    )
    (tmp_path / "pw").write_text("s3cret\n")
    s = settings_for(["run", "--config", str(config), "--prefix", "/ignored/"])
    assert s.etcd.endpoints == ("https://etcd-0:2379", "https://etcd-1:2379")
    assert (s.etcd.username, s.etcd.password) == ("reader", "s3cret")
    first, second = s.outputs
    assert first.prefixes == ("/apps/shop/",) and first.mode == 0o600
    assert first.on_change.url == "http://127.0.0.1:8080/-/reload"
    assert second.prefixes == ("/apps/shop/nginx/", "/apps/common/")
    assert second.keys == ("/global/flag",)
    assert second.format == "template" and second.mode == 0o640
    assert second.on_change.signal == "HUP:nginx" and second.on_change.url is None


def test_password_never_in_repr(tmp_path):
    s = settings_for(
        ["run", "--prefix", "/a/", "--etcd-username", "u", "--etcd-password", "hunter2"]
    )
    assert "hunter2" not in repr(s)


def test_password_flag_overrides_password_file_from_environment(tmp_path):
    (tmp_path / "pw").write_text("from-file")
    s = settings_for(
        ["run", "--prefix", "/a/", "--etcd-username", "u", "--etcd-password", "from-flag"],
        {"SIDECAR_ETCD_PASSWORD_FILE": str(tmp_path / "pw")},
    )
    assert s.etcd.password == "from-flag"
    s = settings_for(
        ["run", "--prefix", "/a/", "--etcd-username", "u"],
        {"SIDECAR_ETCD_PASSWORD_FILE": str(tmp_path / "pw")},
    )
    assert s.etcd.password == "from-file"


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--prefix", "/a/", "--format", "xml"], "--format"),
        ([], "--prefix"),
        (["--prefix", "/a/", "--etcd-endpoints", "etcd:2379"], "--etcd-endpoints"),
        (["--prefix", "/a/", "--etcd-endpoints", "http://etcd"], "--etcd-endpoints"),
        (["--prefix", "/a/", "--debounce", "soon"], "--debounce"),
        (["--prefix", "/a/", "--file-mode", "rw"], "--file-mode"),
        (["--prefix", "/a/", "--listen", "nowhere"], "--listen"),
        (["--prefix", "/a/", "--lookup-access", "everyone"], "--lookup-access"),
        (["--prefix", "/a/", "--on-change-signal", "nginx"], "--on-change-signal"),
        (["--prefix", "/a/", "--format", "template"], "--template"),
        (["--prefix", "/a/", "--format", "raw"], "--format"),
        (["--prefix", "/a/", "--etcd-username", "u"], "--etcd-password"),
        (["--prefix", "/a/", "--allow-empty", "perhaps"], "--allow-empty"),
    ],
)
def test_invalid_values_name_the_setting(argv, setting):
    with pytest.raises(SettingsError) as info:
        settings_for(["run", *argv])
    assert info.value.setting == setting


def test_unknown_yaml_key_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("prefix: /a/\ndebunce: 1\n")
    with pytest.raises(SettingsError) as info:
        settings_for(["run", "--config", str(config)])
    assert "debunce" in info.value.setting


def _one_line_error(result, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def out_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_check_accepts_a_valid_configuration_without_contacting_etcd(out_dir, tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("{{ keys | length }}\n")
    # Port 9 (discard) has no etcd: check must not try to reach it.
    result = run_cli(
        "check",
        "--prefix",
        "/a/",
        "--output",
        str(out_dir / "c.txt"),
        "--format",
        "template",
        "--template",
        str(template),
        "--etcd-endpoints",
        "http://127.0.0.1:9",
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "xml"], ["--format", "xml"]),
        (["--etcd-endpoints", "etcd.local:2379"], ["--etcd-endpoints", "http"]),
        (["--format", "template", "--template", "/nonexistent/t.j2"], ["--template", "t.j2"]),
    ],
)
def test_bad_settings_exit_2_with_one_line(out_dir, args, words):
    result = run_cli("check", "--prefix", "/a/", "--output", str(out_dir / "c.json"), *args)
    _one_line_error(result, *words)


def test_no_prefix_key_or_config_exits_2(out_dir):
    _one_line_error(run_cli("run", "--output", str(out_dir / "c.json")), "--prefix")


def test_missing_output_directory_exits_2(tmp_path):
    _one_line_error(
        run_cli("once", "--prefix", "/a/", "--output", str(tmp_path / "nope" / "c.json")),
        "--output",
        "does not exist",
    )


def test_unwritable_output_directory_exits_2(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # Root writes anywhere regardless of mode bits; /proc/sys refuses writes even to root.
    directory = "/proc/sys" if os.geteuid() == 0 else str(locked)
    assert not os.access(directory, os.W_OK)
    result = run_cli("check", "--prefix", "/a/", "--output", f"{directory}/c.json")
    _one_line_error(result, "--output", "not writable")


def test_malformed_yaml_exits_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("outputs:\n  - path: [unclosed\n")
    _one_line_error(run_cli("check", "--config", str(config)), "--config", "YAML")


def test_template_with_syntax_error_exits_2(out_dir, tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("{% for x in keys %}never closed\n")
    result = run_cli(
        "check",
        "--prefix",
        "/a/",
        "--output",
        str(out_dir / "c"),
        "--format",
        "template",
        "--template",
        str(template),
    )
    _one_line_error(result, "--template")


def test_unknown_flag_exits_2_with_one_line():
    _one_line_error(run_cli("run", "--prefix", "/a/", "--colour", "blue"), "--colour")


def test_kubernetes_events_on_needs_the_pod_identity():
    with pytest.raises(SettingsError) as info:
        settings_for(["run", "--prefix", "/a/", "--kubernetes-events", "on"])
    assert info.value.setting == "--kubernetes-events"
    env = {"POD_NAME": "shop-0", "POD_NAMESPACE": "shop", "POD_UID": "u-1"}
    s = settings_for(["run", "--prefix", "/a/", "--kubernetes-events", "on"], env)
    assert (s.pod_name, s.pod_namespace, s.pod_uid) == ("shop-0", "shop", "u-1")


def test_yaml_modes_are_octal_in_every_spelling(tmp_path):
    for spelling, expected in (("0644", 0o644), ('"0600"', 0o600), ("400", 0o400)):
        config = tmp_path / "c.yaml"
        config.write_text(f"prefix: /a/\nfile_mode: {spelling}\n")
        assert settings_for(["run", "--config", str(config)]).outputs[0].mode == expected


def test_leading_zero_password_in_yaml_stays_text(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("prefix: /a/\netcd: {username: u, password: 0123}\n")
    assert settings_for(["run", "--config", str(config)]).etcd.password == "0123"


def test_credentials_in_an_endpoint_url_are_refused_without_being_printed():
    with pytest.raises(SettingsError) as info:
        settings_for(["run", "--prefix", "/a/", "--etcd-endpoints", "http://u:hunter2@h:2379"])
    assert info.value.setting == "--etcd-endpoints"
    assert "hunter2" not in str(info.value)


def test_non_utf8_yaml_and_huge_numbers_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe: 1\n")
    _one_line_error(run_cli("check", "--config", str(bad)), "--config", "UTF-8")
    huge = tmp_path / "huge.yaml"
    huge.write_text("prefix: /a/\ndebounce: " + "9" * 400 + "\n")
    _one_line_error(run_cli("check", "--config", str(huge)), "debounce")


def test_flag_abbreviations_are_not_accepted():
    _one_line_error(run_cli("check", "--pre", "/a/"), "--pre")
