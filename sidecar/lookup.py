"""`get`: look one key up in a running sidecar over HTTP (for example through port-forward)."""

from __future__ import annotations

import base64
import binascii
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from sidecar.loopback import urlopen

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def get_command(key: str, url: str, timeout: float) -> int:
    """Print the key's value and return the SPEC's exit status: 0 found, 1 not found, 2 usage,
    3 sidecar unreachable (or answering something other than the key or a 404)."""
    if not key.strip("/"):
        sys.stderr.write("etcd-config-sidecar get: KEY must name a key, e.g. /apps/shop/db/host\n")
        return EXIT_USAGE
    if not timeout > 0:
        sys.stderr.write("etcd-config-sidecar get: --timeout must be more than 0 seconds\n")
        return EXIT_USAGE
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        sys.stderr.write(f"etcd-config-sidecar get: --url {url!r} must be http://host:port\n")
        return EXIT_USAGE
    path = urllib.parse.quote("/" + key.lstrip("/"), safe="/")
    target = url.rstrip("/") + "/v1/keys" + path
    try:
        with urlopen(target, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            sys.stderr.write(f"etcd-config-sidecar get: key {key} not found\n")
            return EXIT_NOT_FOUND
        sys.stderr.write(f"etcd-config-sidecar get: {url} answered {exc.code}\n")
        return EXIT_UNREACHABLE
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        sys.stderr.write(f"etcd-config-sidecar get: cannot reach {url}: {reason}\n")
        return EXIT_UNREACHABLE
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, str):
        sys.stderr.write(f"etcd-config-sidecar get: {url} did not answer like a sidecar\n")
        return EXIT_UNREACHABLE
    if body.get("value_encoding") == "base64":
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            sys.stderr.write(f"etcd-config-sidecar get: {url} sent a malformed value\n")
            return EXIT_UNREACHABLE
        # Not UTF-8: print the bytes as they are in etcd, with no newline added.
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        return EXIT_FOUND
    sys.stdout.write(value if value.endswith("\n") else value + "\n")
    return EXIT_FOUND
