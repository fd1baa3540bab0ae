"""Typed, frozen settings: parsing and validation of flags, environment and the YAML file."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

FORMATS = ("json", "yaml", "env", "properties", "raw", "template")
LOOKUP_ACCESS = ("local", "any", "off")
KUBERNETES_EVENTS = ("auto", "on", "off")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_REDACT = ("*password*", "*secret*", "*token*", "*credential*")
ENV_PREFIX = "SIDECAR_"


class SettingsError(Exception):
    """One invalid setting. str() is the one line printed before exiting with code 2."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd. Every endpoint is used, with failover, because a sidecar must survive the
    loss of any single member."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.endpoints[0].startswith("https://")

    def host_ports(self) -> list[tuple[str, int]]:
        result = []
        for url in self.endpoints:
            parts = urlsplit(url)
            result.append((parts.hostname or "", parts.port or 2379))
        return result


@dataclass(frozen=True)
class ActionSettings:
    """What to do after an output's file changed. Several may be set; each runs and retries on its
    own."""

    signal: str | None = None
    url: str | None = None
    exec: str | None = None

    def configured(self) -> list[tuple[str, str]]:
        return [(name, value) for name, value in self.items() if value]

    def items(self) -> list[tuple[str, str | None]]:
        return [("signal", self.signal), ("url", self.url), ("exec", self.exec)]


@dataclass(frozen=True)
class OutputSettings:
    """One file the sidecar keeps equal to a selection of etcd keys."""

    path: str
    prefixes: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    format: str = "json"
    template: str | None = None
    mode: int = 0o644
    on_change: ActionSettings = ActionSettings()


@dataclass(frozen=True)
class Settings:
    """Everything `run`, `once` and `check` need, built once from flags, environment and file."""

    etcd: EtcdSettings
    outputs: tuple[OutputSettings, ...]
    # 50 ms coalesces the events of a typical multi-key rollout into one write and one reload while
    # keeping a single change well inside the 100 ms freshness promise.
    debounce: float = 0.05
    # A full re-read is a safety net against anything the watch could miss; five minutes costs etcd
    # one range per prefix per pod, which is negligible.
    resync_interval: float = 300.0
    max_staleness: float = 0.0
    allow_empty: bool = False
    listen_host: str = "0.0.0.0"
    listen_port: int = 9180
    lookup_access: str = "local"
    redact: tuple[str, ...] = DEFAULT_REDACT
    timeout: float = 30.0
    kubernetes_events: str = "auto"
    log_format: str = "json"
    log_level: str = "info"
    # Downward-API identity of the sidecar's own pod, for Kubernetes Events.
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


# --- the table of settings -------------------------------------------------------------------
# Each scalar setting has one name; its flag is --name-with-dashes, its environment variable
# SIDECAR_NAME_WITH_UNDERSCORES, and its YAML key name_with_underscores (under `etcd:` for etcd_*).


@dataclass(frozen=True)
class _Spec:
    name: str  # python-ish name, e.g. "etcd_endpoints"
    is_list: bool = False
    is_bool: bool = False
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def yaml_path(self) -> tuple[str, ...]:
        if self.name.startswith("etcd_"):
            return ("etcd", self.name[len("etcd_") :])
        return (self.name,)

    @property
    def yaml_name(self) -> str:
        return ".".join(self.yaml_path)


_SPECS = (
    _Spec("etcd_endpoints", is_list=True, help="comma-separated http(s)://host:port"),
    _Spec("etcd_username", help="etcd user"),
    _Spec("etcd_password", help="etcd password (prefer --etcd-password-file)"),
    _Spec("etcd_password_file", help="file holding the etcd password"),
    _Spec("etcd_ca_file", help="CA bundle for https endpoints"),
    _Spec("etcd_cert_file", help="client certificate"),
    _Spec("etcd_key_file", help="client key"),
    _Spec("prefix", is_list=True, help="key prefix to mirror (repeatable)"),
    _Spec("key", is_list=True, help="exact key to mirror (repeatable)"),
    _Spec("output", help="output file"),
    _Spec("format", help="json, yaml, env, properties, raw or template"),
    _Spec("template", help="Jinja2 template file for --format template"),
    _Spec("file_mode", help="octal mode of the output file"),
    _Spec("debounce", help="seconds to coalesce bursts of changes"),
    _Spec("resync_interval", help="seconds between full re-reads (0 = off)"),
    _Spec("max_staleness", help="seconds before /ready fails when not confirmed current"),
    _Spec("allow_empty", is_bool=True, help="write outputs that have no keys"),
    _Spec("listen", help="HTTP address host:port"),
    _Spec("lookup_access", help="who may call /v1/*: local, any, off"),
    _Spec("redact", is_list=True, help="glob patterns of key names whose values /v1 hides"),
    _Spec("on_change_signal", help="SIGNAL:process-name to signal after a write"),
    _Spec("on_change_url", help="URL to POST after a write"),
    _Spec("on_change_exec", help="command to run after a write"),
    _Spec("timeout", help="seconds `once` may take"),
    _Spec("kubernetes_events", help="auto, on or off"),
    _Spec("log_format", help="json or text"),
    _Spec("log_level", help="debug, info, warning or error"),
)
_SPEC_BY_NAME = {spec.name: spec for spec in _SPECS}
_YAML_ETCD_KEYS = {spec.yaml_path[1] for spec in _SPECS if spec.yaml_path[0] == "etcd"}
_YAML_TOP_KEYS = {spec.name for spec in _SPECS if spec.yaml_path[0] != "etcd"} | {"etcd", "outputs"}
_YAML_OUTPUT_KEYS = {"path", "prefix", "keys", "format", "template", "mode", "on_change"}
_YAML_ACTION_KEYS = {"signal", "url", "exec"}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add every setting's flag; defaults are None so that precedence can see what was given."""
    parser.add_argument("--config", help="YAML settings file (env SIDECAR_CONFIG)")
    for spec in _SPECS:
        if spec.is_list and spec.name in ("prefix", "key"):
            parser.add_argument(spec.flag, action="append", help=spec.help)
        elif spec.is_bool:
            parser.add_argument(spec.flag, nargs="?", const="true", metavar="BOOL", help=spec.help)
        else:
            parser.add_argument(spec.flag, help=spec.help)


@dataclass
class _Source:
    """Where a raw value came from, so that errors name the setting as the user wrote it."""

    value: Any
    origin: str


def _yaml_loader() -> type:
    """SafeLoader that reads only plain decimal numbers as integers. YAML 1.1 would read `0644` as
    octal 420 and `0123` as 83, silently changing a file mode or a password; here such scalars stay
    strings and each setting parses its own text."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    int_tag = "tag:yaml.org,2002:int"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != int_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        int_tag, re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789")
    )
    return Loader


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_yaml_loader())  # a SafeLoader subclass: no objects
    except OSError as exc:
        raise SettingsError("--config", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError("--config", f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError("--config", f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError("--config", f"{path} must hold a mapping at the top level")
    unknown = sorted(set(map(str, data)) - _YAML_TOP_KEYS)
    if unknown:
        raise SettingsError(f"{unknown[0]} (in {path})", "unknown key; check its spelling")
    etcd = data.get("etcd") or {}
    if not isinstance(etcd, dict):
        raise SettingsError(f"etcd (in {path})", "must be a mapping")
    unknown = sorted(set(map(str, etcd)) - _YAML_ETCD_KEYS)
    if unknown:
        raise SettingsError(f"etcd.{unknown[0]} (in {path})", "unknown key; check its spelling")
    return data


def _layers(
    args: argparse.Namespace, environ: Mapping[str, str], file_data: Mapping[str, Any], file: str
) -> dict[str, _Source]:
    """Pick each setting's raw value by precedence: flag > environment > file."""
    chosen: dict[str, _Source] = {}
    for spec in _SPECS:
        flag_value = getattr(args, spec.name, None)
        if flag_value is not None:
            chosen[spec.name] = _Source(flag_value, spec.flag)
            continue
        env_value = environ.get(spec.env)
        if env_value is not None and env_value != "":
            chosen[spec.name] = _Source(env_value, spec.env)
            continue
        node: Any = file_data
        for part in spec.yaml_path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            chosen[spec.name] = _Source(node, f"{spec.yaml_name} (in {file})")
    # The password and its file are one logical setting: the highest layer that names either wins,
    # so a password file mounted by the chart is not shadowed by a stale value in the YAML file.
    pw, pw_file = chosen.get("etcd_password"), chosen.get("etcd_password_file")
    if pw and pw_file:
        rank = {"flag": 0, "env": 1, "file": 2}

        def level(src: _Source) -> int:
            if src.origin.startswith("--"):
                return rank["flag"]
            if src.origin.startswith(ENV_PREFIX):
                return rank["env"]
            return rank["file"]

        if level(pw) == level(pw_file):
            raise SettingsError(
                pw_file.origin, f"conflicts with {pw.origin}; give the password one way only"
            )
        if level(pw) < level(pw_file):
            del chosen["etcd_password_file"]
        else:
            del chosen["etcd_password"]
    return chosen


# --- converters ----------------------------------------------------------------------------------


def _as_list(src: _Source) -> list[str]:
    value = src.value
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise SettingsError(src.origin, "must be a list of strings")
            # A repeated flag may still carry commas, as the environment form does.
            items.extend(item.split(",") if src.origin.startswith("--") else [item])
    else:
        raise SettingsError(src.origin, "must be a string or a list of strings")
    return [item.strip() for item in items if item.strip()]


def _as_str(src: _Source) -> str:
    if isinstance(src.value, bool) or not isinstance(src.value, str | int | float):
        raise SettingsError(src.origin, "must be a string")
    return str(src.value)


def _as_float(src: _Source, minimum: float = 0.0) -> float:
    if isinstance(src.value, bool):
        raise SettingsError(src.origin, f"{src.value!r} is not a number of seconds")
    try:
        number = float(src.value)
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(src.origin, f"{src.value!r} is not a number of seconds") from None
    if not number >= minimum or number == float("inf"):
        raise SettingsError(src.origin, f"{src.value!r} must be a finite number >= {minimum:g}")
    return number


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _as_bool(src: _Source) -> bool:
    if isinstance(src.value, bool):
        return src.value
    text = str(src.value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(src.origin, f"{src.value!r} is not a boolean (true or false)")


def _as_choice(src: _Source, choices: Sequence[str]) -> str:
    text = _as_str(src).strip().lower()
    if text not in choices:
        raise SettingsError(src.origin, f"{src.value!r} is not one of {', '.join(choices)}")
    return text


def _as_mode(src: _Source) -> int:
    # Like chmod, digits are octal whether written 0644, "0644" or 644 (the YAML loader keeps
    # leading-zero numbers as text, so 644 is the only form that arrives as an integer).
    if isinstance(src.value, bool):
        raise SettingsError(src.origin, f"{src.value!r} is not an octal mode like 0644")
    try:
        mode = int(str(src.value), 8)
    except ValueError:
        raise SettingsError(src.origin, f"{src.value!r} is not an octal mode like 0644") from None
    if not 0 <= mode <= 0o777:
        raise SettingsError(src.origin, f"{src.value!r} is not a file mode between 0000 and 0777")
    if not mode & stat.S_IRUSR:
        raise SettingsError(src.origin, f"{oct(mode)} would make the file unreadable to its owner")
    return mode


def _without_userinfo(url: str) -> str:
    """A URL as safe to print: credentials embedded in it are cut out."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://***@{host}"


def _check_endpoint(url: str, origin: str) -> str:
    if "@" in url:
        raise SettingsError(
            origin,
            f"{_without_userinfo(url)!r} must not carry credentials; use --etcd-username and "
            "--etcd-password-file",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise SettingsError(origin, f"{url!r} must start with http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(origin, f"{url!r} has an invalid port") from None
    if not parts.hostname or port is None:
        raise SettingsError(origin, f"{url!r} must be http(s)://host:port")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise SettingsError(origin, f"{url!r} must be only scheme://host:port")
    return f"{parts.scheme}://{parts.netloc}"


def _parse_listen(src: _Source) -> tuple[str, int]:
    text = _as_str(src).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(src.origin, f"{text!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise SettingsError(src.origin, f"{text!r} needs an IP address or localhost") from None
    return host, int(port_text)


def _check_signal_action(value: str, origin: str) -> str:
    name, sep, process = value.partition(":")
    if not sep or not process.strip():
        raise SettingsError(origin, f"{value!r} must be SIGNAL:process-name, e.g. HUP:nginx")
    signame = name.strip().upper()
    signame = signame if signame.startswith("SIG") else "SIG" + signame
    if not hasattr(signal.Signals, signame) or signame in ("SIGKILL", "SIGSTOP"):
        raise SettingsError(origin, f"{name!r} is not a usable signal name")
    return f"{signame[3:]}:{process.strip()}"


def _check_url_action(value: str, origin: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = _without_userinfo(value)
        raise SettingsError(origin, f"{shown!r} must be an http:// or https:// URL")
    return value


def _check_exec_action(value: str, origin: str) -> str:
    import shlex

    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise SettingsError(origin, f"cannot be split into a command: {exc}") from None
    if not argv:
        raise SettingsError(origin, "is empty")
    return value


def _readable_file(path: str, origin: str) -> str:
    if not os.path.isfile(path):
        raise SettingsError(origin, f"{path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise SettingsError(origin, f"{path} is not readable")
    return path


# --- outputs -------------------------------------------------------------------------------------


def _actions_from_yaml(raw: Any, origin: str, default: ActionSettings) -> ActionSettings:
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise SettingsError(origin, "must be a mapping with signal, url and/or exec")
    unknown = sorted(set(map(str, raw)) - _YAML_ACTION_KEYS)
    if unknown:
        raise SettingsError(f"{origin}.{unknown[0]}", "unknown key; use signal, url or exec")
    values = {}
    for key in _YAML_ACTION_KEYS:
        if raw.get(key) is not None:
            values[key] = _as_str(_Source(raw[key], f"{origin}.{key}"))
    return _checked_actions(values, {k: f"{origin}.{k}" for k in values})


def _checked_actions(values: Mapping[str, str], origins: Mapping[str, str]) -> ActionSettings:
    checks = {"signal": _check_signal_action, "url": _check_url_action, "exec": _check_exec_action}
    return ActionSettings(**{k: checks[k](v, origins[k]) for k, v in values.items()})


def _check_prefix_or_key(value: str, origin: str) -> str:
    if not value:
        raise SettingsError(origin, "must not be empty")
    if "\x00" in value:
        raise SettingsError(origin, "must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingsError(origin, "must be valid UTF-8") from None
    return value


def _check_path(value: str, origin: str) -> str:
    if "\x00" in value or "\n" in value:
        raise SettingsError(origin, "must not contain NUL or newline characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingsError(origin, "must be valid UTF-8") from None
    return value


def _outputs_from_yaml(
    raw: Any, file: str, default_mode: int, default_actions: ActionSettings
) -> list[OutputSettings]:
    if not isinstance(raw, list) or not raw:
        raise SettingsError(f"outputs (in {file})", "must be a non-empty list of outputs")
    outputs = []
    for index, item in enumerate(raw):
        origin = f"outputs[{index}] (in {file})"
        if not isinstance(item, dict):
            raise SettingsError(origin, "must be a mapping with path, prefix/keys and format")
        unknown = sorted(set(map(str, item)) - _YAML_OUTPUT_KEYS)
        if unknown:
            raise SettingsError(f"outputs[{index}].{unknown[0]} (in {file})", "unknown key")

        def where(key: str, index: int = index) -> str:
            return f"outputs[{index}].{key} (in {file})"

        if not item.get("path"):
            raise SettingsError(where("path"), "is required")
        prefixes = _as_list(_Source(item["prefix"], where("prefix"))) if item.get("prefix") else []
        keys = _as_list(_Source(item["keys"], where("keys"))) if item.get("keys") else []
        fmt = (
            _as_choice(_Source(item["format"], where("format")), FORMATS)
            if item.get("format")
            else "json"
        )
        template = (
            _as_str(_Source(item["template"], where("template"))) if item.get("template") else None
        )
        mode = _as_mode(_Source(item["mode"], where("mode"))) if "mode" in item else default_mode
        outputs.append(
            _checked_output(
                path=_check_path(_as_str(_Source(item["path"], where("path"))), where("path")),
                prefixes=[_check_prefix_or_key(p, where("prefix")) for p in prefixes],
                keys=[_check_prefix_or_key(k, where("keys")) for k in keys],
                fmt=fmt,
                template=template,
                mode=mode,
                actions=_actions_from_yaml(
                    item.get("on_change"), where("on_change"), default_actions
                ),
                where=where,
            )
        )
    return outputs


def _checked_output(
    *,
    path: str,
    prefixes: Sequence[str],
    keys: Sequence[str],
    fmt: str,
    template: str | None,
    mode: int,
    actions: ActionSettings,
    where: Any,
) -> OutputSettings:
    if not prefixes and not keys:
        raise SettingsError(where("prefix"), "an output needs at least one prefix or key")
    if fmt == "template" and not template:
        raise SettingsError(where("template"), "format template needs a template file")
    if fmt != "template" and template:
        raise SettingsError(where("template"), f"is only used with format template, not {fmt}")
    if fmt == "raw" and (prefixes or len(keys) != 1):
        raise SettingsError(where("format"), "raw writes exactly one key: give one key, no prefix")
    return OutputSettings(
        path=os.path.abspath(path),
        prefixes=tuple(dict.fromkeys(prefixes)),
        keys=tuple(dict.fromkeys(keys)),
        format=fmt,
        template=os.path.abspath(template) if template else None,
        mode=mode,
        on_change=actions,
    )


# --- the builder ---------------------------------------------------------------------------------


def build_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Build and validate Settings from parsed flags and an environment mapping. Raises
    SettingsError naming the first offending setting. Reads the files the settings name (YAML,
    password file) but contacts no server."""
    config_file = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG") or None
    file_data = _read_yaml(config_file) if config_file else {}
    chosen = _layers(args, environ, file_data, config_file or "")

    def get(name: str) -> _Source | None:
        return chosen.get(name)

    etcd = _build_etcd(get)
    values: dict[str, Any] = {}
    if (src := get("debounce")) is not None:
        values["debounce"] = _as_float(src)
    if (src := get("resync_interval")) is not None:
        values["resync_interval"] = _as_float(src)
        if 0 < values["resync_interval"] < 1:
            raise SettingsError(src.origin, "must be 0 (off) or at least 1 second")
    if (src := get("max_staleness")) is not None:
        values["max_staleness"] = _as_float(src)
    if (src := get("allow_empty")) is not None:
        values["allow_empty"] = _as_bool(src)
    if (src := get("listen")) is not None:
        values["listen_host"], values["listen_port"] = _parse_listen(src)
    if (src := get("lookup_access")) is not None:
        values["lookup_access"] = _as_choice(src, LOOKUP_ACCESS)
    if (src := get("redact")) is not None:
        values["redact"] = tuple(p.lower() for p in _as_list(src))
    if (src := get("timeout")) is not None:
        values["timeout"] = _as_float(src)
        if values["timeout"] <= 0:
            raise SettingsError(src.origin, "must be more than 0 seconds")
    if (src := get("kubernetes_events")) is not None:
        values["kubernetes_events"] = _as_choice(src, KUBERNETES_EVENTS)
    if (src := get("log_format")) is not None:
        values["log_format"] = _as_choice(src, LOG_FORMATS)
    if (src := get("log_level")) is not None:
        values["log_level"] = _as_choice(src, LOG_LEVELS)

    default_mode = _as_mode(src) if (src := get("file_mode")) is not None else 0o644
    action_values = {}
    action_origins = {}
    for action in ("signal", "url", "exec"):
        if (src := get(f"on_change_{action}")) is not None:
            action_values[action] = _as_str(src)
            action_origins[action] = src.origin
    default_actions = _checked_actions(action_values, action_origins)

    if "outputs" in file_data and file_data["outputs"] is not None:
        outputs = _outputs_from_yaml(
            file_data["outputs"], config_file or "", default_mode, default_actions
        )
    else:
        outputs = [_single_output(get, default_mode, default_actions)]

    if values.get("kubernetes_events") == "on" and not (
        environ.get("POD_NAME") and environ.get("POD_NAMESPACE")
    ):
        raise SettingsError(
            get("kubernetes_events").origin,
            "on needs POD_NAME and POD_NAMESPACE from the downward API (or use auto)",
        )
    paths = [o.path for o in outputs]
    duplicate = next((p for p in paths if paths.count(p) > 1), None)
    if duplicate:
        raise SettingsError("outputs", f"{duplicate} is written by more than one output")

    return Settings(
        etcd=etcd,
        outputs=tuple(outputs),
        pod_name=environ.get("POD_NAME") or None,
        pod_namespace=environ.get("POD_NAMESPACE") or None,
        pod_uid=environ.get("POD_UID") or None,
        **values,
    )


def _single_output(get: Any, default_mode: int, actions: ActionSettings) -> OutputSettings:
    prefix_src, key_src = get("prefix"), get("key")
    prefixes = (
        [_check_prefix_or_key(p, prefix_src.origin) for p in _as_list(prefix_src)]
        if (prefix_src)
        else []
    )
    keys = [_check_prefix_or_key(k, key_src.origin) for k in _as_list(key_src)] if key_src else []
    if not prefixes and not keys:
        raise SettingsError(
            "--prefix", "nothing to mirror: give --prefix, --key or a --config file with outputs"
        )
    fmt_src = get("format")
    fmt = _as_choice(fmt_src, FORMATS) if fmt_src else "json"
    template_src = get("template")
    output_src = get("output")
    origins = {
        "prefix": prefix_src.origin if prefix_src else "--prefix",
        "template": template_src.origin if template_src else "--template",
        "format": fmt_src.origin if fmt_src else "--format",
    }
    return _checked_output(
        path=_check_path(_as_str(output_src), output_src.origin)
        if output_src
        else "/config/config.json",
        prefixes=prefixes,
        keys=keys,
        fmt=fmt,
        template=_as_str(template_src) if template_src else None,
        mode=default_mode,
        actions=actions,
        where=lambda key: origins.get(key, "--" + key),
    )


def _build_etcd(get: Any) -> EtcdSettings:
    values: dict[str, Any] = {}
    if (src := get("etcd_endpoints")) is not None:
        endpoints = [_check_endpoint(url, src.origin) for url in _as_list(src)]
        if not endpoints:
            raise SettingsError(src.origin, "needs at least one endpoint")
        schemes = {url.split(":", 1)[0] for url in endpoints}
        if len(schemes) > 1:
            raise SettingsError(src.origin, "mixes http:// and https:// endpoints")
        values["endpoints"] = tuple(dict.fromkeys(endpoints))
    for name in ("username", "ca_file", "cert_file", "key_file"):
        if (src := get("etcd_" + name)) is not None:
            values[name] = _as_str(src)
            if name.endswith("_file"):
                _readable_file(values[name], src.origin)
    if (src := get("etcd_password")) is not None:
        values["password"] = _as_str(src)
    elif (src := get("etcd_password_file")) is not None:
        path = _readable_file(_as_str(src), src.origin)
        try:
            with open(path, encoding="utf-8") as f:
                values["password"] = f.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            raise SettingsError(src.origin, f"cannot read {path} as UTF-8 text") from None
    if ("password" in values) != ("username" in values):
        missing = "--etcd-password" if "username" in values else "--etcd-username"
        raise SettingsError(missing, "etcd authentication needs both a username and a password")
    if ("cert_file" in values) != ("key_file" in values):
        missing = "--etcd-key-file" if "cert_file" in values else "--etcd-cert-file"
        raise SettingsError(missing, "a client certificate needs both --etcd-cert-file and key")
    settings = EtcdSettings(**values)
    if not settings.uses_tls and (settings.ca_file or settings.cert_file):
        raise SettingsError(
            "--etcd-endpoints", "TLS files are set but the endpoints use http://; use https://"
        )
    return settings


def check_outputs_writable(settings: Settings) -> None:
    """The checks `check` and startup share: output directories exist and are writable, templates
    compile. Raises SettingsError."""
    from sidecar.render import TemplateLoadError, load_template

    for index, output in enumerate(settings.outputs):
        directory = os.path.dirname(output.path) or "."
        name = "--output" if len(settings.outputs) == 1 else f"outputs[{index}].path"
        if not os.path.isdir(directory):
            raise SettingsError(name, f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise SettingsError(name, f"directory {directory} is not writable")
        if os.path.isdir(output.path):
            raise SettingsError(name, f"{output.path} is a directory; name a file")
        if output.template:
            tname = "--template" if len(settings.outputs) == 1 else f"outputs[{index}].template"
            _readable_file(output.template, tname)
            try:
                load_template(output.template)
            except TemplateLoadError as exc:
                raise SettingsError(tname, str(exc)) from None
