"""`run`: the sync loop on its own thread and the HTTP server on the main thread, until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import uvicorn

from sidecar.http import create_app
from sidecar.logs import get_logger
from sidecar.metrics import create_metrics
from sidecar.settings import Settings
from sidecar.syncer import Syncer, build_state

log = get_logger("service")

# The sync loop and the HTTP server share the GIL. While a relist or a large render holds it, the
# server gets it back only every switch interval, and one request needs it several times: the
# default 5 ms makes /health take tens of milliseconds during a relist. 0.5 ms keeps probes fast
# for a few percent of throughput on the busy thread.
SWITCH_INTERVAL = 0.0005
# Kubernetes waits terminationGracePeriodSeconds (30 s by default); the SPEC promises 5 s.
SHUTDOWN_GRACE = 3.0


class _Server(uvicorn.Server):
    """uvicorn re-raises the captured signal after its shutdown, which would turn a clean SIGTERM
    into exit status 143; the Service owns signal handling instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """One sidecar process: state, metrics, the sync loop and the HTTP server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = build_state(settings)
        self.metrics = create_metrics(self.state, settings.max_staleness)
        self.syncer = Syncer(settings, self.state, self.metrics)
        self.app = create_app(settings, self.state, self.metrics)
        self._crashed = False
        # Kubernetes Events are optional and import the heavy client only when enabled.
        from sidecar.k8s_events import start_events

        self.events = start_events(settings, self.metrics)
        if self.events is not None:
            self.syncer.listeners.append(self.events.notify)

    def _sync_main(self, loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
        try:
            self.syncer.run()
        except BaseException as exc:
            # A dead sync loop must not leave a process serving stale data as if all were well.
            self._crashed = True
            log.error("sync_loop_crashed", error=type(exc).__name__)
            raise
        finally:
            self.state.sync.loop_alive = False
            loop.call_soon_threadsafe(done.set)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status (0 after a clean shutdown)."""
        # Bind before anything else starts, so that a busy port fails fast and cleanly, before
        # any file is written by a process that is about to exit.
        try:
            listener = _bind(self.settings.listen_host, self.settings.listen_port)
        except OSError as exc:
            log.error("listen_failed", listen=self.settings.listen, error=exc.strerror)
            return 1
        with listener:
            sys.setswitchinterval(SWITCH_INTERVAL)
            # Everything imported and built so far lives as long as the process. Frozen, the
            # garbage collector's full collections, which hold the GIL, stop walking it again and
            # again: with 100,000 keys a full collection during a relist otherwise takes tens of ms.
            gc.freeze()
            return asyncio.run(self._serve(listener))

    async def _serve(self, listener: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        config = uvicorn.Config(
            self.app,
            host=self.settings.listen_host,
            port=self.settings.listen_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
        server = _Server(config)

        def on_signal(signum: int, frame: object) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            loop.call_soon_threadsafe(done.set)

        # Signals are handled here, explicitly, and the previous handlers restored on the way out
        # so that embedding (tests, `python -m`) sees the process as it was.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        sync_thread = threading.Thread(
            target=self._sync_main, args=(loop, done), name="sync-loop", daemon=True
        )
        serving = asyncio.create_task(server.serve(sockets=[listener]), name="http-server")
        try:
            sync_thread.start()
            log.info(
                "started",
                listen=self.settings.listen,
                outputs=len(self.settings.outputs),
                endpoints=",".join(self.settings.etcd.endpoints),
            )
            waiter = asyncio.create_task(done.wait(), name="shutdown-wait")
            await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if serving.done() and not done.is_set():
                # The server stopped by itself: it crashed.
                self.syncer.stop()
                await asyncio.to_thread(sync_thread.join, SHUTDOWN_GRACE)
                log.error("http_server_stopped", listen=self.settings.listen)
                return 1
            waiter.cancel()
            self.syncer.stop()
            server.should_exit = True
            await asyncio.to_thread(sync_thread.join, SHUTDOWN_GRACE)
            with contextlib.suppress(SystemExit):
                await serving
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.events is not None:
                self.events.stop()
        log.info("stopped", crashed=self._crashed)
        return 1 if self._crashed else 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol must be named: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and
    # without it every keep-alive response waits 40 ms for a delayed ACK (Nagle).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.set_inheritable(True)
    except OSError:
        listener.close()
        raise
    return listener
