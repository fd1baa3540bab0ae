"""Turn the keys of one output into the bytes of its file, in each supported format."""

from __future__ import annotations

import bisect
import functools
import json
import re
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

# jinja2 and PyYAML are imported where the template and yaml formats need them: together they
# are about 2.5 MiB of memory that a sidecar writing json never uses.
if TYPE_CHECKING:
    import jinja2
    import yaml

FORMATS = ("json", "yaml", "env", "properties", "raw", "template")

# Error messages list key names; a long list would drown the log line, so it is cut here.
_MAX_NAMES_IN_MESSAGE = 10


class RenderError(Exception):
    """A value, name or template problem for one output.

    str() names the key names involved, never a value: values may be passwords, and this message
    ends up in logs, /v1/status and Kubernetes Events.
    """


class TemplateLoadError(Exception):
    """A template file cannot be read or does not compile; the message names the file and line."""


def _more(count: int, what: str) -> str:
    return f" ({count - 1} more {what})" if count > 1 else ""


def _names_text(names: Iterable[str]) -> str:
    ordered = sorted(names)
    shown = ", ".join(repr(n) for n in ordered[:_MAX_NAMES_IN_MESSAGE])
    if len(ordered) > _MAX_NAMES_IN_MESSAGE:
        shown += f" and {len(ordered) - _MAX_NAMES_IN_MESSAGE} more"
    return shown


def output_names(
    keys: Mapping[bytes, bytes], prefixes: Sequence[str], exact_keys: Sequence[str]
) -> dict[str, bytes]:
    """Select the keys that belong to one output and name them as SPEC.md says, sorted by name.

    A repeated prefix counts once, so `--prefix /a/ --prefix /a/` still names keys relative to
    `/a/`. A key whose name comes out empty (the key equals the single prefix, or is only slashes)
    is skipped: no format can represent an empty name sensibly (an empty env NAME, a `tree` entry
    with no path), and the prefix key itself is a directory marker for tools like etcdkeeper
    rather than configuration.
    """
    named, _ = _select(keys, prefixes, exact_keys)
    return dict(sorted(named.items()))


def _select(
    keys: Mapping[bytes, bytes], prefixes: Sequence[str], exact_keys: Sequence[str]
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """output_names' work, unsorted, with the key each name came from."""
    wanted_prefixes = sorted({p.encode() for p in prefixes})
    wanted_keys = {k.encode() for k in exact_keys}
    # With one prefix (and no exact keys) names are relative to it. The prefix is whole UTF-8
    # characters, so decoding the rest alone gives the same name as decoding the whole key.
    cut = len(wanted_prefixes[0]) if len(wanted_prefixes) == 1 and not wanted_keys else 0
    starts = tuple(wanted_prefixes)

    named: dict[str, bytes] = {}
    source: dict[str, bytes] = {}
    bad: list[str] = []
    collisions: list[tuple[str, str, str]] = []
    for raw_key, value in keys.items():
        if not raw_key.startswith(starts) and raw_key not in wanted_keys:
            continue
        try:
            name = raw_key[cut:].decode("utf-8").lstrip("/")
        except UnicodeDecodeError:
            bad.append(repr(raw_key))
            continue
        if not name:
            continue
        if name in named:
            collisions.append((name, source[name].decode(), raw_key.decode()))
            continue
        named[name] = value
        source[name] = raw_key

    if bad:
        raise RenderError(
            f"etcd keys that are not valid UTF-8 cannot be named: {', '.join(sorted(bad))}; "
            "rename them or narrow the prefix"
        )
    if collisions:
        first = sorted(collisions)[0]
        raise RenderError(
            f"etcd keys {first[1]!r} and {first[2]!r} both give the name {first[0]!r}"
            f"{_more(len(collisions), 'such clashes')}; rename one of them or use exact keys"
        )
    return named, source


def load_template(path: str) -> jinja2.Template:
    """Read and compile a Jinja2 template file; nothing is rendered.

    The only loader serves this one file, so `{% include %}` and `{% import %}` of other files
    fail at render time: rendering stays free of I/O and `check` has compiled everything there is.
    """
    import jinja2

    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except UnicodeDecodeError as exc:
        raise TemplateLoadError(
            f"template {path}: not valid UTF-8 at byte {exc.start}; save it as UTF-8"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TemplateLoadError(f"template {path}: cannot read it: {reason}") from None

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: (source, path, lambda: True) if name == path else None
        ),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        # Output is a config file, not HTML: escaping would corrupt values containing & or <.
        autoescape=False,
    )
    try:
        return env.get_template(path)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateLoadError(
            f"template {path} line {exc.lineno}: syntax error: {exc.message}"
        ) from None


def render(
    fmt: str,
    names: Mapping[str, bytes],
    revision: int,
    template: jinja2.Template | None = None,
) -> bytes:
    """Return the file bytes for `names` (name -> value) in `fmt`, one of FORMATS.

    Same input, same bytes: the caller compares bytes to skip unchanged writes. An unknown format,
    or `template` format without a template, is a programming error (ValueError): settings
    validation rules those out before anything is rendered.
    """
    if fmt == "raw":
        return _render_raw(names)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "template" and template is None:
        raise ValueError("format 'template' needs a compiled template")

    texts = _decode_values(names)
    if fmt == "json":
        return _render_json(texts)
    if fmt == "yaml":
        return _render_yaml(texts)
    if fmt == "env":
        return _render_env(texts)
    if fmt == "properties":
        return _render_properties(texts)
    assert template is not None
    return _render_template(template, texts, revision)


def _decode_values(names: Mapping[str, bytes]) -> dict[str, str]:
    # Text formats cannot carry arbitrary bytes faithfully; refusing (and keeping the last good
    # file) beats writing mojibake or a lossy replacement the application would silently use.
    try:
        return {name: value.decode("utf-8") for name, value in sorted(names.items())}
    except UnicodeDecodeError:
        pass
    bad = []
    for name, value in names.items():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(name)
    raise RenderError(
        f"values of keys {_names_text(bad)} are not valid UTF-8; "
        "text formats cannot hold them (use format 'raw' for binary values)"
    )


def _render_raw(names: Mapping[str, bytes]) -> bytes:
    if len(names) != 1:
        listed = f": {_names_text(names)}" if names else ""
        raise RenderError(f"raw format needs exactly one key, found {len(names)}{listed}")
    (value,) = names.values()
    return bytes(value)


# The C string encoder json.dumps uses with ensure_ascii=False.
_quote = json.encoder.encode_basestring


def _json_bytes(lines: Iterable[str]) -> bytes:
    # The bytes of json.dumps(texts, sort_keys=True, ensure_ascii=False, indent=2) + "\n" from its
    # sorted '"name": "value"' lines: with an indent json.dumps runs its pure-Python encoder, which
    # was most of the cost of a flush with many keys.
    body = ",\n  ".join(lines)
    return ("{\n  " + body + "\n}\n").encode() if body else b"{}\n"


def _render_json(texts: dict[str, str]) -> bytes:
    return _json_bytes([f"{_quote(name)}: {_quote(text)}" for name, text in sorted(texts.items())])


class JsonDocument:
    """The json file of one output, kept up to date key by key.

    A flush after a watch event re-renders only the keys that changed, not all of them: with
    100,000 keys that is milliseconds instead of a few hundred. Names and bytes are exactly those
    of output_names() and render("json", ...). A change that cannot be applied on its own (a value
    or key that is not UTF-8, two keys with one name) returns False from update(); the caller then
    rebuilds from every key, which raises the RenderError that explains it.
    """

    def __init__(self, prefixes: Sequence[str], exact_keys: Sequence[str]) -> None:
        self._prefixes = prefixes
        self._exact_keys = exact_keys
        wanted = sorted({p.encode() for p in prefixes})
        self._starts = tuple(wanted)
        self._wanted_keys = {k.encode() for k in exact_keys}
        self._cut = len(wanted[0]) if len(wanted) == 1 and not self._wanted_keys else 0
        self._lines: dict[str, str] = {}  # name -> '"name": "value"'
        self._names: dict[bytes, str] = {}  # etcd key -> name
        self._order: list[str] = []  # the names, sorted
        self.valid = False

    def __len__(self) -> int:
        return len(self._lines)

    def rebuild(self, keys: Mapping[bytes, bytes]) -> None:
        """From every key; raises RenderError as render() would (and stays invalid)."""
        self.valid = False
        named, source = _select(keys, self._prefixes, self._exact_keys)
        try:
            self._lines = {
                name: f"{_quote(name)}: {_quote(named[name].decode('utf-8'))}"
                for name in sorted(named)
            }
        except UnicodeDecodeError:
            _decode_values(named)  # raises the RenderError that names the keys
            raise
        self._order = list(self._lines)
        self._names = {key: name for name, key in source.items()}
        self.valid = True

    def update(self, changes: Mapping[bytes, bytes | None]) -> bool:
        """Apply changed keys (None: deleted). False when a rebuild is needed."""
        if not self.valid:
            return False
        for key, value in changes.items():
            if key not in self._wanted_keys and not key.startswith(self._starts):
                continue
            try:
                name = (key[self._cut :] if self._cut else key).decode("utf-8").lstrip("/")
                text = None if value is None else value.decode("utf-8")
            except UnicodeDecodeError:
                self.valid = False
                return False
            if not name:
                continue
            known = key in self._names
            if text is None:
                if known:
                    del self._names[key], self._lines[name]
                    del self._order[bisect.bisect_left(self._order, name)]
                continue
            if not known:
                if name in self._lines:  # another key already has this name
                    self.valid = False
                    return False
                self._names[key] = name
                bisect.insort(self._order, name)
            self._lines[name] = f"{_quote(name)}: {_quote(text)}"
        return True

    def render(self) -> bytes:
        return _json_bytes(map(self._lines.__getitem__, self._order))


@functools.cache
def _yaml_dumper() -> type[yaml.SafeDumper]:
    import yaml

    class _YamlDumper(yaml.SafeDumper):
        """SafeDumper that writes multi-line values as literal blocks, so PEM files and scripts
        stay readable and diffable. The emitter itself falls back to a quoted style whenever a
        block could not reproduce the string exactly (trailing spaces, special characters)."""

    _YamlDumper.add_representer(str, _represent_str)
    return _YamlDumper


# PyYAML writes these line breaks raw in plain, single-quoted and block scalars, and its loader
# then folds them into spaces; double quotes make the emitter write them as \N, \L and \P.
_YAML_UNICODE_BREAKS = re.compile("[\x85\u2028\u2029]")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if _YAML_UNICODE_BREAKS.search(data):
        style = '"'
    elif "\n" in data:
        style = "|"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _render_yaml(texts: dict[str, str]) -> bytes:
    # An empty mapping comes out as "{}\n", which loads back as an empty mapping rather than
    # the null an empty file would give.
    import yaml

    text = yaml.dump(
        texts,
        Dumper=_yaml_dumper(),
        default_flow_style=False,
        allow_unicode=True,
        sort_keys=True,
        # Folding long values at 80 columns is legal YAML but makes diffs and grep harder.
        width=sys.maxsize,
    )
    return text.encode()


_ENV_NAME_INVALID = re.compile(r"[^A-Za-z0-9_]")


def _env_name(name: str) -> str:
    """The variable name `name` gets in the env format (`db/host` -> `DB_HOST`)."""
    # Substituting before upper-casing keeps it one character in, one character out:
    # str.upper() would turn 'ß' into 'SS'.
    var = _ENV_NAME_INVALID.sub("_", name).upper()
    # A shell variable cannot start with a digit; a leading '_' keeps it a valid assignment.
    return "_" + var if var[:1].isdigit() else var


def _render_env(texts: dict[str, str]) -> bytes:
    by_var: dict[str, list[str]] = {}
    for name in texts:
        by_var.setdefault(_env_name(name), []).append(name)
    clashes = {var: names for var, names in by_var.items() if len(names) > 1}
    if clashes:
        var = min(clashes)
        raise RenderError(
            f"keys {_names_text(clashes[var])} all give the env name {var}"
            f"{_more(len(clashes), 'clashing env names')}; rename a key or use another format"
        )
    with_nul = [name for name, value in texts.items() if "\0" in value]
    if with_nul:
        raise RenderError(
            f"values of keys {_names_text(with_nul)} contain a NUL character, "
            "which a shell variable cannot hold"
        )
    lines = []
    for var in sorted(by_var):
        value = texts[by_var[var][0]]
        # Inside single quotes a POSIX shell treats every character literally, newlines included;
        # only the quote itself needs closing, escaping and reopening.
        quoted = value.replace("'", "'\\''")
        lines.append(f"{var}='{quoted}'\n")
    return "".join(lines).encode()


# Characters Properties.store escapes with a backslash regardless of position.
_PROPERTIES_ESCAPES = {
    "\\": "\\\\",
    "\t": "\\t",
    "\n": "\\n",
    "\r": "\\r",
    "\f": "\\f",
    "=": "\\=",
    ":": "\\:",
    "#": "\\#",
    "!": "\\!",
}


def _properties_escape(text: str, is_key: bool) -> str:
    # Mirrors java.util.Properties.saveConvert with escUnicode=true, so the file is pure ASCII
    # and Properties.load(InputStream), which reads ISO-8859-1, sees exactly these strings.
    out = []
    for i, ch in enumerate(text):
        if ch == " ":
            out.append("\\ " if is_key or i == 0 else " ")
        elif ch in _PROPERTIES_ESCAPES:
            out.append(_PROPERTIES_ESCAPES[ch])
        elif " " < ch <= "~":
            out.append(ch)
        else:
            # Java strings are UTF-16: a character above U+FFFF is written as its surrogate pair.
            units = ch.encode("utf-16-be")
            for j in range(0, len(units), 2):
                out.append(f"\\u{units[j]:02X}{units[j + 1]:02X}")
    return "".join(out)


def _render_properties(texts: dict[str, str]) -> bytes:
    by_key: dict[str, list[str]] = {}
    for name in texts:
        by_key.setdefault(name.replace("/", "."), []).append(name)
    clashes = {key: names for key, names in by_key.items() if len(names) > 1}
    if clashes:
        key = min(clashes)
        raise RenderError(
            f"keys {_names_text(clashes[key])} all give the properties key {key!r}"
            f"{_more(len(clashes), 'clashing properties keys')}; rename a key or use another format"
        )
    lines = []
    # Java 18+ Properties.store sorts by String.compareTo, which compares UTF-16 code units.
    for key in sorted(by_key, key=lambda k: k.encode("utf-16-be")):
        value = texts[by_key[key][0]]
        lines.append(
            f"{_properties_escape(key, is_key=True)}={_properties_escape(value, is_key=False)}\n"
        )
    return "".join(lines).encode("ascii")


@functools.cache
def _tree_conflict() -> type[jinja2.UndefinedError]:
    import jinja2

    class _TreeConflict(jinja2.UndefinedError):
        """Raised when a template touches `tree` while a name is both a leaf and a parent."""

    return _TreeConflict


def _build_tree(texts: dict[str, str]) -> dict | jinja2.StrictUndefined:
    import jinja2

    conflicts = []
    for name in texts:
        parts = name.split("/")
        conflicts.extend(
            (parent, name)
            for parent in ("/".join(parts[:i]) for i in range(1, len(parts)))
            if parent in texts
        )
    if conflicts:
        parent, child = min(conflicts)
        # Failing only when the template touches `tree` keeps templates that use `keys` working.
        return jinja2.StrictUndefined(
            exc=_tree_conflict(),
            hint=(
                f"'tree' is unavailable: key {parent!r} is both a value and the parent of"
                f" {child!r}{_more(len(conflicts), 'such conflicts')}; use 'keys' instead"
            ),
        )
    tree: dict = {}
    for name, value in texts.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    # Jinja rewrites tracebacks so that template frames carry the template's file and line.
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _undefined_detail(message: str, texts: dict[str, str]) -> str | None:
    # An undefined-variable message quotes the name that was looked up, and a template can look up
    # a value or a piece of one (`keys[keys.other]`, `tree[keys.other[:8]]`): withhold the detail
    # whenever a value, or a quoted piece of a value, shows up in it. Over-withholding only costs
    # a hint; the file, line and error type are still reported.
    quoted = [a or b for a, b in _QUOTED.findall(message)]
    for value in texts.values():
        if not value:
            continue
        if repr(value) in message or (len(value) >= 4 and value in message):
            return None
        if any(len(piece) >= 4 and piece in value for piece in quoted):
            return None
    return message


def _render_template(template: jinja2.Template, texts: dict[str, str], revision: int) -> bytes:
    import jinja2

    try:
        text = template.render(keys=texts, tree=_build_tree(texts), revision=revision)
        return text.encode("utf-8")
    except Exception as exc:
        where = f"template {template.filename or template.name}"
        line = _template_line(exc, template.filename)
        if line is not None:
            where += f" line {line}"
        # Only the exception type in general: messages such as int()'s or a KeyError's quote
        # the offending string, which here is a value.
        detail = type(exc).__name__
        if isinstance(exc, _tree_conflict()):
            # Our own message, built from names only.
            detail = str(exc)
        elif isinstance(exc, jinja2.TemplateNotFound):
            detail += ": a template cannot include or import other files"
        elif isinstance(exc, jinja2.UndefinedError):
            message = _undefined_detail(str(exc), texts)
            detail += f": {message}" if message else " (detail withheld: it quotes a value)"
        # `from None`: a logged traceback would otherwise print the original message.
        raise RenderError(f"{where}: {detail}") from None
