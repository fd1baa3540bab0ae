"""Shared pieces of the benchmark: a raw etcd client, inotify, /proc readings, statistics.

The benchmark process talks to etcd with hand-encoded protobuf over plain gRPC, so that it needs no
protobuf runtime of its own and puts cost microseconds, not the pure-Python protobuf's
milliseconds. Everything binds or connects to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import socket
import statistics
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import grpc

# --------------------------------------------------------------------------------------------
# protobuf wire format, only what Put, Txn and their responses need


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterable[tuple[int, int | bytes]]:
    """(field number, value) of one message; varints as int, length-delimited as bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def put_request(key: bytes, value: bytes) -> bytes:
    return _field_bytes(1, key) + _field_bytes(2, value)


def txn_put_request(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    # TxnRequest.success (2) = RequestOp; RequestOp.request_put (2) = PutRequest
    return b"".join(_field_bytes(2, _field_bytes(2, put_request(k, v))) for k, v in items)


def header_revision(response: bytes) -> int:
    """ResponseHeader.revision (3) of a Put/Txn response's header (1)."""
    for number, value in _fields(response):
        if number == 1 and isinstance(value, bytes):
            for inner, revision in _fields(value):
                if inner == 3 and isinstance(revision, int):
                    return revision
    return 0


class RawEtcd:
    """Put and Txn over one gRPC channel, requests and responses as raw bytes."""

    def __init__(self, client_url: str, timeout: float = 10.0) -> None:
        target = client_url.split("://", 1)[-1]
        self.channel = grpc.insecure_channel(target)
        self._put = self.channel.unary_unary("/etcdserverpb.KV/Put")
        self._txn = self.channel.unary_unary("/etcdserverpb.KV/Txn")
        self.timeout = timeout

    def put(self, key: bytes, value: bytes) -> int:
        return header_revision(self._put(put_request(key, value), timeout=self.timeout))

    def bulk_put(self, items: Sequence[tuple[bytes, bytes]], chunk: int = 1000) -> int:
        """Many keys in transactions of `chunk` puts (etcd allows at most 1024 ops per txn)."""
        revision = 0
        for start in range(0, len(items), chunk):
            request = txn_put_request(items[start : start + chunk])
            revision = header_revision(self._txn(request, timeout=self.timeout))
        return revision

    def pipelined_puts(
        self, items: Sequence[tuple[bytes, bytes]], window: int = 64
    ) -> tuple[int, bytes, float]:
        """Single puts, `window` of them in flight on the one channel (each its own revision).
        Returns the highest revision, the value that got it and when its reply arrived
        (perf_counter) - all replies have arrived by then."""
        in_flight: deque[tuple[grpc.Future, bytes]] = deque()
        best = (0, b"")
        last_reply = time.perf_counter()

        def settle() -> None:
            nonlocal best, last_reply
            future, value = in_flight.popleft()
            revision = header_revision(future.result(timeout=self.timeout))
            last_reply = time.perf_counter()
            if revision > best[0]:
                best = (revision, value)

        for key, value in items:
            if len(in_flight) >= window:
                settle()
            in_flight.append(
                (self._put.future(put_request(key, value), timeout=self.timeout), value)
            )
        while in_flight:
            settle()
        return best[0], best[1], last_reply

    def close(self) -> None:
        self.channel.close()


def padded(marker: str, size: int = 100) -> bytes:
    """A unique value of exactly `size` bytes, so that data sets keep 100-byte values."""
    data = marker.encode()
    return data + b"x" * (size - len(data)) if len(data) < size else data


# --------------------------------------------------------------------------------------------
# inotify through ctypes (Linux); falls back to polling the file's mtime and size

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
_EVENT = struct.Struct("iIII")


class FileWatcher:
    """Tells when a file in one directory was replaced or rewritten. `wait(check, timeout)`
    returns the perf_counter time of the first change after which `check(content)` holds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(path) or "."
        self.name = os.fsencode(os.path.basename(path))
        self.fd = -1
        self.mode = "polling"
        self._last_stat: tuple[int, int, int] | None = None
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                mask = IN_MOVED_TO | IN_CLOSE_WRITE
                if libc.inotify_add_watch(fd, os.fsencode(self.directory), mask) >= 0:
                    self.fd, self.mode = fd, "inotify"
                else:
                    os.close(fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def _events(self, timeout: float) -> bool:
        """Wait up to `timeout` for a change of our file; True when there was one."""
        if self.fd >= 0:
            readable, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
            if not readable:
                return False
            hit = False
            with contextlib.suppress(BlockingIOError):
                data = os.read(self.fd, 65536)
                pos = 0
                while pos + _EVENT.size <= len(data):
                    _wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
                    name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                    pos += _EVENT.size + length
                    hit |= name == self.name
            return hit
        deadline = time.perf_counter() + timeout
        for _ in range(1_000_000):
            try:
                st = os.stat(self.path)
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp is not None and stamp != self._last_stat:
                self._last_stat = stamp
                return True
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.0002)
        return False

    def wait(self, check: Callable[[bytes], bool], timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        for _ in range(1_000_000):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            if self._events(remaining):
                seen = time.perf_counter()
                content = self.read()
                if content is not None and check(content):
                    return seen
        return None

    def drain(self) -> None:
        """Forget changes seen so far."""
        self._events(0)


# --------------------------------------------------------------------------------------------
# processes and /proc

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(1_000_000):
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return False


# --------------------------------------------------------------------------------------------
# statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, min and max over repeated runs (None entries are runs that gave no figure)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "runs": len(present),
    }
