"""Loopback addresses: who counts as this pod, and requests to it that bypass HTTP proxies."""

from __future__ import annotations

import ipaddress
import urllib.request
from typing import Any
from urllib.parse import urlsplit

# Pods and workstations often carry HTTP_PROXY; urllib honours it for 127.0.0.1 too unless
# NO_PROXY says otherwise, and a proxy cannot reach this pod's loopback (a reload endpoint, or a
# `kubectl port-forward`). Loopback requests therefore go direct; others follow the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_loopback(host: str | None) -> bool:
    """Whether an address is this pod itself (kubectl port-forward and the main container both
    arrive on loopback)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def urlopen(request: urllib.request.Request | str, timeout: float) -> Any:
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    if is_loopback(urlsplit(url).hostname):
        return _DIRECT.open(request, timeout=timeout)
    return urllib.request.urlopen(request, timeout=timeout)
