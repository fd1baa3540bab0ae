"""Unit tests for sidecar.render: naming, every format's round trip, errors and determinism."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess

import javaproperties
import pytest
import yaml

from sidecar.render import (
    FORMATS,
    RenderError,
    TemplateLoadError,
    load_template,
    output_names,
    render,
)

TEXT_FORMATS = ("json", "yaml", "env", "properties", "template")
SECRET = "hunter2-S3cr3t!"

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\nQUJD\n-----END CERTIFICATE-----\n"

# Values that trip up naive writers; the names stay distinct under every format's name mangling.
TRICKY = {
    "v/true": "true",
    "v/one": "1",
    "v/null": "null",
    "v/tilde": "~",
    "v/yes": "yes",
    "v/octal": "0755",
    "v/float": "1e3",
    "v/date": "2024-01-01",
    "v/empty": "",
    "v/spaces": "  leading and trailing  ",
    "v/newlines": "line one\nline two\n",
    "v/leadingnewline": "\nafter",
    "v/onlynewline": "\n",
    "v/crlf": "a\r\nb",
    "v/tab": "a\tb",
    "v/trailingspacelines": "a \n b \n",
    "v/pem": PEM,
    "v/unicode": "héllo wörld ✓ ключ 漢字 😀",
    "v/linesep": "a\u2028b\u2029c\x85d",
    "v/colon": "host: port",
    "v/hash": "# not a comment",
    "v/dash": "- item",
    "v/brace": "{a: [1, 2]}",
    "v/single": "it's",
    "v/double": 'say "hi"',
    "v/backslash": "C:\\path\\n\\",
    "v/dollar": "$HOME ${HOME} $(id) `id`",
    "v/shellish": "a; b && c | d > e < f * ? [x] ~root",
    "v/equals": "=a=b",
    "v/bang": "!important",
    "v/escape": "\x1b[31mred\x1b[0m\x7f",
}


def enc(mapping: dict[str, str]) -> dict[str, bytes]:
    return {name: value.encode() for name, value in mapping.items()}


def write_template(tmp_path, text: str, name: str = "t.j2") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- naming ---------------------------------------------------------------------------------

KEYS = {
    b"/apps/shop/db/host": b"db.local",
    b"/apps/shop/db/port": b"5432",
    b"/apps/shop/": b"directory marker",
    b"/apps/shopping/x": b"not under /apps/shop/",
    b"/apps/other/y": b"other",
    b"/global/flag": b"on",
    b"relative/key": b"no leading slash",
    b"/outside/\xff\xfe": b"a non-UTF-8 key no output asked for",
}


def test_single_prefix_names_are_relative_and_sorted():
    assert output_names(KEYS, ["/apps/shop/"], []) == {
        "db/host": b"db.local",
        "db/port": b"5432",
    }
    assert list(output_names(KEYS, ["/apps/shop/"], [])) == ["db/host", "db/port"]


def test_single_prefix_without_trailing_slash_strips_the_leading_slash():
    names = output_names(KEYS, ["/apps/shop"], [])
    assert names == {"db/host": b"db.local", "db/port": b"5432", "ping/x": b"not under /apps/shop/"}


def test_key_equal_to_the_prefix_is_skipped():
    names = output_names({b"/apps/shop": b"v", b"/apps/shop/a": b"1"}, ["/apps/shop"], [])
    assert names == {"a": b"1"}
    assert output_names({b"/apps/shop/": b"v"}, ["/apps/shop/"], []) == {}


def test_several_prefixes_use_whole_keys_without_leading_slash():
    assert output_names(KEYS, ["/apps/shop/", "/global/"], []) == {
        "apps/shop/": b"directory marker",
        "apps/shop/db/host": b"db.local",
        "apps/shop/db/port": b"5432",
        "global/flag": b"on",
    }


def test_exact_keys_use_whole_keys():
    assert output_names(KEYS, [], ["/global/flag", "relative/key", "/missing"]) == {
        "global/flag": b"on",
        "relative/key": b"no leading slash",
    }


def test_prefix_plus_exact_key_uses_whole_keys():
    assert output_names(KEYS, ["/apps/shop/db/"], ["/global/flag"]) == {
        "apps/shop/db/host": b"db.local",
        "apps/shop/db/port": b"5432",
        "global/flag": b"on",
    }


def test_repeated_prefix_counts_once():
    assert output_names(KEYS, ["/apps/shop/", "/apps/shop/"], []) == output_names(
        KEYS, ["/apps/shop/"], []
    )


def test_all_leading_slashes_are_stripped():
    assert output_names({b"//a//b": b"1"}, [], ["//a//b"]) == {"a//b": b"1"}


def test_non_utf8_key_in_the_output_is_an_error_naming_it():
    keys = {b"/apps/shop/ok": b"1", b"/apps/shop/\xff": SECRET.encode()}
    with pytest.raises(RenderError) as info:
        output_names(keys, ["/apps/shop/"], [])
    assert repr(b"/apps/shop/\xff") in str(info.value)
    assert SECRET not in str(info.value)


def test_two_keys_with_the_same_name_are_an_error_naming_both():
    keys = {b"/a": SECRET.encode(), b"a": b"2"}
    with pytest.raises(RenderError) as info:
        output_names(keys, [], ["/a", "a"])
    assert "'/a'" in str(info.value) and "'a'" in str(info.value)
    assert SECRET not in str(info.value)


# --- json and yaml --------------------------------------------------------------------------


def test_json_round_trips_exactly():
    out = render("json", enc(TRICKY), 7)
    assert json.loads(out) == TRICKY
    assert out.endswith(b"}\n")
    assert "😀".encode() in out, "non-ASCII is written as UTF-8, not \\u escapes"
    assert list(json.loads(out)) == sorted(TRICKY)


def test_json_layout():
    assert render("json", enc({"b": "2", "a": "1"}), 1) == b'{\n  "a": "1",\n  "b": "2"\n}\n'
    assert render("json", {}, 1) == b"{}\n"


def test_yaml_round_trips_exactly_as_strings():
    out = render("yaml", enc(TRICKY), 7)
    loaded = yaml.safe_load(out)
    assert loaded == TRICKY
    assert all(type(v) is str for v in loaded.values())
    assert list(loaded) == sorted(TRICKY)


def test_yaml_tricky_names_round_trip():
    names = {name: "x" for name in ("true", "1", "null", "a: b", "# c", "- d", "é/😀", "a\nb")}
    assert yaml.safe_load(render("yaml", enc(names), 1)) == names


def test_yaml_layout_is_a_readable_block_mapping():
    out = render("yaml", enc({"tls/cert": PEM, "flag": "true", "port": "8080"}), 1)
    assert out == (
        b"flag: 'true'\n"
        b"port: '8080'\n"
        b"tls/cert: |\n"
        b"  -----BEGIN CERTIFICATE-----\n"
        b"  MIIB\n"
        b"  QUJD\n"
        b"  -----END CERTIFICATE-----\n"
    )


def test_yaml_long_values_are_not_folded():
    value = " ".join(["word"] * 100)
    out = render("yaml", enc({"long": value}), 1)
    assert out == f"long: {value}\n".encode()


def test_yaml_empty_mapping():
    out = render("yaml", {}, 1)
    assert out == b"{}\n"
    assert yaml.safe_load(out) == {}


def test_yaml_and_json_round_trip_random_strings():
    # PyYAML has had quoting bugs around line breaks and indicators; sample the awkward space.
    pieces = [" ", "\n", "\t", "\r", "'", '"', "#", ": ", "- ", "|", ">", "\\", "é", "😀"]
    pieces += ["\x85", "\u2028", "\u2029", "\ufeff", "\x00", "\x1b", "\xa0", "true", "1", "~"]
    rng = random.Random(20240101)
    for _ in range(1500):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        name = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        mapping = {name: value, "other": value}
        assert yaml.safe_load(render("yaml", enc(mapping), 1)) == mapping, repr(mapping)
        assert json.loads(render("json", enc(mapping), 1)) == mapping, repr(mapping)


# --- env ------------------------------------------------------------------------------------


def _available_shells():
    return [shell for shell in ("sh", "dash", "bash") if shutil.which(shell)]


def _source_env_file(shell: str, tmp_path, content: bytes) -> dict[bytes, bytes]:
    (tmp_path / "app.env").write_bytes(content)
    done = subprocess.run(
        [shell, "-c", "set -a; . ./app.env; env -0"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=30,
    )
    pairs = (item.split(b"=", 1) for item in done.stdout.split(b"\0") if item)
    return {name: value for name, value in pairs}


@pytest.mark.parametrize("shell", _available_shells())
def test_env_file_sourced_by_a_real_shell_yields_every_value_exactly(shell, tmp_path):
    out = render("env", enc(TRICKY), 1)
    environ = _source_env_file(shell, tmp_path, out)
    for name, value in TRICKY.items():
        var = name.replace("/", "_").upper().encode()
        assert environ[var] == value.encode(), name


@pytest.mark.parametrize("shell", _available_shells())
def test_env_names_are_valid_for_a_real_shell(shell, tmp_path):
    names = {"db/host": "h", "9lives": "cat", "my key.with-dots": "k", "ключ/x": "u"}
    out = render("env", enc(names), 1)
    environ = _source_env_file(shell, tmp_path, out)
    expected = {b"DB_HOST": b"h", b"_9LIVES": b"cat", b"MY_KEY_WITH_DOTS": b"k", b"_____X": b"u"}
    assert {var: environ.get(var) for var in expected} == expected


def test_env_layout():
    out = render("env", enc({"b": "it's", "a/x": "1", "A": "2"}), 1)
    assert out == b"A='2'\nA_X='1'\nB='it'\\''s'\n"
    assert render("env", {}, 1) == b""


def test_env_names_that_collide_are_an_error_naming_both_keys():
    with pytest.raises(RenderError) as info:
        render("env", enc({"db/host": SECRET, "db.host": SECRET, "DB_HOST": "x"}), 1)
    message = str(info.value)
    assert "'db/host'" in message and "'db.host'" in message and "DB_HOST" in message
    assert SECRET not in message


def test_env_leading_digit_prefix_can_collide_too():
    with pytest.raises(RenderError, match="_1A"):
        render("env", enc({"1a": "x", "_1a": "y"}), 1)


def test_env_rejects_nul_in_a_value():
    with pytest.raises(RenderError) as info:
        render("env", enc({"k": f"{SECRET}\0tail"}), 1)
    assert "'k'" in str(info.value) and SECRET not in str(info.value)


# --- properties -----------------------------------------------------------------------------

PROPERTIES_CASES = {
    "db/host": "db.local",
    "key with spaces": "value with spaces",
    "a=b:c#d!e": "=:#! inside",
    " leading/key": "   three leading spaces",
    "back\\slash": "C:\\dir\\file",
    "tab\tand\nnewline": "line1\nline2\r\nline3\t\f",
    "ключ/😀": "emoji 😀 and 漢字 and é",
    "empty": "",
    "specials": "#hash !bang =equals :colon",
    "control": "\x00\x01\x1b\x7f\x80\xff",
    "bmp/edge": "\ue000\uffff",
}


def _expected_properties(cases: dict[str, str]) -> dict[str, str]:
    return {name.replace("/", "."): value for name, value in cases.items()}


def test_properties_load_back_exactly_with_a_properties_parser():
    out = render("properties", enc(PROPERTIES_CASES), 1)
    out.decode("ascii")  # pure ASCII, so the ISO-8859-1 reader of Properties.load sees it as is
    assert javaproperties.load(io.BytesIO(out)) == _expected_properties(PROPERTIES_CASES)


def test_properties_tricky_values_load_back_exactly():
    out = render("properties", enc(TRICKY), 1)
    assert javaproperties.loads(out.decode("ascii")) == _expected_properties(TRICKY)


def test_properties_layout_matches_properties_store():
    out = render("properties", enc({"z/a b": " x=y", "a": "é😀", "m": "a:b c"}), 1)
    assert out == b"a=\\u00E9\\uD83D\\uDE00\nm=a\\:b c\nz.a\\ b=\\ x\\=y\n"
    assert render("properties", {}, 1) == b""


def test_properties_keys_that_collide_are_an_error_naming_both():
    with pytest.raises(RenderError) as info:
        render("properties", enc({"a/b": SECRET, "a.b": SECRET}), 1)
    assert "'a/b'" in str(info.value) and "'a.b'" in str(info.value)
    assert SECRET not in str(info.value)


JAVA_LOADER = r"""
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;

public class Check {
    static String hex(String s) {
        StringBuilder b = new StringBuilder("x");
        for (byte x : s.getBytes(StandardCharsets.UTF_8)) b.append(String.format("%02x", x));
        return b.toString();
    }

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (InputStream in = new FileInputStream(args[0])) { p.load(in); }
        for (String k : new TreeSet<>(p.stringPropertyNames())) {
            System.out.println("L " + hex(k) + " " + hex(p.getProperty(k)));
        }
        ByteArrayOutputStream stored = new ByteArrayOutputStream();
        p.store(stored, null);
        for (String line : stored.toString(StandardCharsets.ISO_8859_1).split("\n")) {
            if (!line.startsWith("#")) System.out.println("S " + hex(line));
        }
    }
}
"""


def test_properties_match_java_util_properties(tmp_path):
    # scripts/test.sh installs a Java runtime when the machine has none.
    assert shutil.which("java"), "java is required: scripts/test.sh installs default-jre-headless"
    cases = PROPERTIES_CASES | TRICKY
    out = render("properties", enc(cases), 1)
    (tmp_path / "app.properties").write_bytes(out)
    (tmp_path / "Check.java").write_text(JAVA_LOADER)
    done = subprocess.run(
        ["java", "Check.java", "app.properties"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
        timeout=120,
    )
    loaded, stored = {}, []
    for line in done.stdout.decode().splitlines():
        kind, *fields = line.split(" ")
        texts = [bytes.fromhex(f[1:]).decode() for f in fields]
        if kind == "L":
            loaded[texts[0]] = texts[1]
        else:
            stored.append(texts[0] + "\n")
    assert loaded == _expected_properties(cases)
    # Properties.store escapes exactly as we do; Java 17 writes in hash order, so compare sorted.
    assert sorted(stored) == sorted(out.decode().splitlines(keepends=True))


# --- raw ------------------------------------------------------------------------------------


def test_raw_is_byte_exact_even_for_non_utf8():
    value = b"\x00\xff\xfe binary \r\n\x80"
    assert render("raw", {"blob": value}, 1) == value
    assert render("raw", {"empty": b""}, 1) == b""


@pytest.mark.parametrize("count", [0, 2, 12])
def test_raw_needs_exactly_one_key(count):
    names = {f"k{i:02}": SECRET.encode() for i in range(count)}
    with pytest.raises(RenderError) as info:
        render("raw", names, 1)
    message = str(info.value)
    assert message.startswith(f"raw format needs exactly one key, found {count}")
    assert SECRET not in message
    if count:
        assert "'k00'" in message and "'k01'" in message
    if count == 12:
        assert "and 2 more" in message


# --- template -------------------------------------------------------------------------------


def test_template_sees_keys_tree_and_revision(tmp_path):
    path = write_template(
        tmp_path,
        "rev={{ revision }} type={{ revision.__class__.__name__ }}\n"
        "host={{ tree.db.host }} port={{ keys['db/port'] }}\n"
        "{% for name, value in keys.items() %}{{ name }}={{ value }};{% endfor %}\n"
        "{% for section in tree %}[{{ section }}]{% endfor %}\n",
    )
    names = enc({"db/port": "5432", "db/host": "db.local", "app": "<shop & co>"})
    out = render("template", names, 4411, load_template(path))
    assert out == (
        b"rev=4411 type=int\n"
        b"host=db.local port=5432\n"
        b"app=<shop & co>;db/host=db.local;db/port=5432;\n"
        b"[app][db]\n"
    )


def test_template_output_is_utf8_and_keeps_trailing_newline(tmp_path):
    template = load_template(write_template(tmp_path, "{{ keys.u }} ✓\n\n"))
    assert render("template", enc({"u": "é😀"}), 1, template) == "é😀 ✓\n\n".encode()


def test_template_tree_keeps_empty_segments(tmp_path):
    template = load_template(write_template(tmp_path, "{{ tree.a[''].b }}|{{ tree.c[''] }}"))
    assert render("template", enc({"a//b": "1", "c/": "2"}), 1, template) == b"1|2"


def test_template_undefined_variable_is_an_error_with_the_line(tmp_path):
    path = write_template(tmp_path, "first line\n{{ keys.missing }}\n")
    with pytest.raises(RenderError) as info:
        render("template", enc({"present": SECRET}), 1, load_template(path))
    message = str(info.value)
    assert path in message and "line 2" in message and "UndefinedError" in message
    assert "missing" in message
    assert SECRET not in message


def test_template_undefined_detail_is_kept_when_it_quotes_no_value(tmp_path):
    template = load_template(write_template(tmp_path, "{{ tree.db.port }}"))
    with pytest.raises(RenderError) as info:
        render("template", enc({"db/host": "db.local", "flag": "1"}), 1, template)
    assert str(info.value).endswith("UndefinedError: 'dict object' has no attribute 'port'")


def test_template_undefined_top_level_name(tmp_path):
    template = load_template(write_template(tmp_path, "{{ nope }}"))
    with pytest.raises(RenderError, match="'nope' is undefined"):
        render("template", {}, 1, template)


def test_template_tree_conflict_fails_only_templates_that_use_tree(tmp_path):
    # "use keys" appears in a value too: the conflict message, made of names only, still shows.
    names = enc({"a": SECRET, "a/b": "use keys instead of tree", "c": "3"})
    uses_keys = load_template(write_template(tmp_path, "{{ keys.c }}", "keys.j2"))
    assert render("template", names, 1, uses_keys) == b"3"
    uses_tree = load_template(write_template(tmp_path, "{{ tree.c }}", "tree.j2"))
    with pytest.raises(RenderError) as info:
        render("template", names, 1, uses_tree)
    message = str(info.value)
    assert "'a'" in message and "'a/b'" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ keys[keys.password] }}",  # undefined lookup of a value
        "{{ tree[keys.password] }}",
        "{{ keys[keys.password ~ '-suffix'] }}",  # a value inside a longer name
        "{{ keys[keys.password[:6]] }}",  # a piece of a value
        "{{ keys.__getitem__(keys.password) }}",  # KeyError quoting the value
        "{{ keys.password | int + 1 }}{{ (keys.password ~ 1) - 1 }}",  # TypeError
        "{{ keys.password.encode('ascii') }}",  # UnicodeEncodeError quoting a character
        "{{ 1 / 0 }}",
        "{% include 'other.j2' %}",
    ],
)
def test_template_failures_never_quote_a_value(tmp_path, source):
    template = load_template(write_template(tmp_path, "ok\n" + source))
    names = enc({"password": SECRET + "é"})
    with pytest.raises(RenderError) as info:
        render("template", names, 1, template)
    message = str(info.value)
    assert SECRET not in message and "é" not in message
    assert "line 2" in message
    # The original exception (whose message may quote a value) is not chained into tracebacks.
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_template_include_is_not_supported(tmp_path):
    (tmp_path / "other.j2").write_text("other")
    template = load_template(write_template(tmp_path, "{% include 'other.j2' %}"))
    with pytest.raises(RenderError, match="cannot include or import other files"):
        render("template", {}, 1, template)


def test_template_does_not_autoescape(tmp_path):
    template = load_template(write_template(tmp_path, "{{ keys.x }}"))
    assert render("template", enc({"x": "<a href='&'>"}), 1, template) == b"<a href='&'>"


def test_load_template_missing_file(tmp_path):
    with pytest.raises(TemplateLoadError, match=r"missing\.j2"):
        load_template(str(tmp_path / "missing.j2"))


def test_load_template_directory(tmp_path):
    with pytest.raises(TemplateLoadError, match=str(tmp_path)):
        load_template(str(tmp_path))


def test_load_template_syntax_error_names_file_and_line(tmp_path):
    path = write_template(tmp_path, "a\nb\n{% for x in keys %}\n{{ x }\n")
    with pytest.raises(TemplateLoadError) as info:
        load_template(path)
    assert path in str(info.value) and "line 4" in str(info.value)


def test_load_template_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.j2"
    path.write_bytes(b"caf\xe9 {{ revision }}")
    with pytest.raises(TemplateLoadError, match="not valid UTF-8 at byte 3"):
        load_template(str(path))


# --- across formats -------------------------------------------------------------------------


@pytest.fixture
def simple_template(tmp_path):
    return load_template(write_template(tmp_path, "{{ keys | length }}"))


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_non_utf8_value_is_an_error_naming_only_the_key(fmt, simple_template):
    names = {"good": b"fine", "bin/secret": SECRET.encode() + b"\xff\xfe"}
    with pytest.raises(RenderError) as info:
        render(fmt, names, 1, simple_template)
    message = str(info.value)
    assert "'bin/secret'" in message and "'good'" not in message
    assert SECRET not in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_is_deterministic(fmt, simple_template):
    mapping = {"raw": "x"} if fmt == "raw" else TRICKY
    forward = enc(mapping)
    backward = dict(reversed(list(forward.items())))
    first = render(fmt, forward, 9, simple_template)
    assert render(fmt, forward, 9, simple_template) == first
    assert render(fmt, backward, 9, simple_template) == first


def test_unknown_format_and_missing_template_are_programming_errors():
    with pytest.raises(ValueError, match="toml"):
        render("toml", {}, 1)
    with pytest.raises(ValueError, match="template"):
        render("template", {}, 1)


@pytest.mark.parametrize(
    ("prefixes", "exact_keys"),
    [(["/app/"], []), (["/app/", "/other/"], ["/x"]), ([], ["/app/a", "/x"])],
)
def test_json_document_updates_match_a_full_render(prefixes, exact_keys):
    """The incremental json document gives exactly the bytes (or the error) of a full render
    after every watch response, over a seeded random walk with deletes, non-UTF-8 values and
    keys that collide on one name."""
    from sidecar.render import JsonDocument

    rng = random.Random(20261204)
    candidates = [
        b"/app/a",
        b"/app/b/c",
        b"/app//a",
        b"/app/",
        b"/other/z",
        b"/x",
        b"/y",
        b"/app/\xc3\xa9",
    ]
    values = [b"1", b"two words", b'q"uote\\', b"\xff\xfe", "ünï".encode(), b""]
    keys: dict[bytes, bytes] = {}
    document = JsonDocument(prefixes, exact_keys)
    for _ in range(3000):
        changes: dict[bytes, bytes | None] = {}
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(candidates)
            if key in keys and rng.random() < 0.3:
                del keys[key]
                changes[key] = None
            else:
                keys[key] = changes[key] = rng.choice(values)
        try:
            expected = render("json", output_names(keys, prefixes, exact_keys), 1)
        except RenderError as exc:
            expected = type(exc)
        try:
            if not document.update(changes):
                document.rebuild(keys)
            got = document.render()
        except RenderError as exc:
            got = type(exc)
        assert got == expected
