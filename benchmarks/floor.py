"""The floor: the least a sidecar built on the etcd3 client library can do.

It watches one prefix with etcd3's own watch helper and, for every watch response, writes the value
of the response's last event to a file: write, fsync, rename (the SPEC's atomic write; the fsync
is required before the rename, so it is part of the floor). No listing, no state, no rendering, no
HTTP. Whatever the sidecar adds on top of this is its own cost.

    python benchmarks/floor.py --endpoint http://127.0.0.1:2379 --prefix /p/ --output /tmp/f

Prints "ready" once the watch is established; on SIGTERM/SIGINT (or after --max-seconds) prints
one JSON line {"responses": N, "writes": N} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

# etcd3 0.12's generated protobuf code only loads with the pure-Python protobuf implementation,
# exactly as in the sidecar; it has to be chosen before protobuf is first imported.
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

import etcd3


def write_atomic(path: str, data: bytes) -> None:
    temp = f"{path}.floor-tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()

    host, _, port = args.endpoint.split("://", 1)[-1].partition(":")
    client = etcd3.client(host=host, port=int(port), timeout=10)
    counts = {"responses": 0, "writes": 0}
    lock = threading.Lock()

    def on_response(response: object) -> None:
        events = getattr(response, "events", None)
        if not events:
            return  # an error or a progress notification
        write_atomic(args.output, events[-1].value)
        with lock:
            counts["responses"] += 1
            counts["writes"] += 1

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client.add_watch_prefix_callback(args.prefix, on_response)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stop.wait(args.max_seconds)
    with lock:
        sys.stdout.write(json.dumps(counts) + "\n")
    sys.stdout.flush()
    # The watcher thread is not a daemon in etcd3 0.12; leave without waiting for it.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
