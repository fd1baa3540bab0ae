"""A small TCP proxy for fault injection between a client and etcd (gRPC over HTTP/2).

One selector thread forwards bytes both ways for every connection. The faults it can inject:

* ``freeze()``: the network path stops answering but nothing is closed. While frozen the proxy
  neither reads, writes nor accepts, so bytes pile up in kernel socket buffers (and the small
  user-space buffers) and the peers see a silent, still-open connection, like a blackholed route.
  New connection attempts complete the TCP handshake in the kernel backlog but get no data through.
* ``unfreeze()``: forwarding resumes. Held bytes are NOT dropped: everything sent during the
  freeze is delivered afterwards, in order (as TCP retransmission would after a path heals), and
  connections that queued in the backlog are accepted then.
* ``cut()``: every current connection is reset (RST, SO_LINGER 0) on both sides. The listener
  stays open, so clients can reconnect right away.
* ``retarget(host, port)``: new connections go to another upstream (optionally cutting old ones).

``close()`` stops the thread and closes every socket it owns; it leaks neither threads nor fds.
All control methods run their effect inside the proxy thread and return once it took effect, so
a test can rely on "after ``freeze()`` returns, no byte goes through".
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["TcpProxy"]

_RECV = 65536
_MAX_BUFFER = 1 << 20  # stop reading one side while the other side's backlog exceeds this


def _set_nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Side:
    __slots__ = ("eof", "out", "shut", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()  # bytes waiting to be written to this socket
        self.eof = False  # read EOF from this socket
        self.shut = False  # we shut down writing to this socket


class _Conn:
    __slots__ = ("client", "connecting", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = _Side(client)
        self.upstream = _Side(upstream)
        self.connecting = True


class TcpProxy:
    """Listen on 127.0.0.1:<random port> and forward every connection to (target_host, port)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target: tuple[str, int] = (target_host, int(target_port))
        self._listen_addr = (listen_host, listen_port)
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], threading.Event, list[Any]]]
        self._commands = queue.SimpleQueue()
        self._conns: dict[socket.socket, _Conn] = {}
        self._registered: dict[socket.socket, int] = {}
        self._frozen = False
        self._stopping = False
        self._closed = False
        self.accepted_total = 0
        self.bytes_to_upstream = 0
        self.bytes_to_client = 0

    # -- public API -----------------------------------------------------------------------

    def start(self) -> TcpProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self._listen_addr)
            listener.listen(128)
            listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._listener = listener
        self._address = listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=f"TcpProxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("proxy not started")
        return self._address

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; use :meth:`url_for` for https."""
        return self.url_for("http")

    def url_for(self, scheme: str) -> str:
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Stop forwarding in both directions and stop accepting; close nothing."""
        self._call(lambda: setattr(self, "_frozen", True))

    def unfreeze(self) -> None:
        """Resume forwarding; bytes held during the freeze are delivered (not dropped)."""
        self._call(lambda: setattr(self, "_frozen", False))

    def cut(self) -> int:
        """Reset every current connection (both sides); return how many were cut."""
        return self._call(self._cut_all)

    def retarget(self, host: str, port: int, *, cut: bool = False) -> None:
        """Send new connections to (host, port); with ``cut=True`` also reset current ones."""

        def apply() -> None:
            self.target = (host, int(port))
            if cut:
                self._cut_all()

        self._call(apply)

    def active_connections(self) -> int:
        return self._call(lambda: len(self._conns) // 2)

    def close(self) -> None:
        """Stop the thread and close every socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stopping = True
            self._wake()
            thread.join(10)
            if thread.is_alive():  # pragma: no cover - would be a bug in _run
                raise RuntimeError("TcpProxy thread did not stop")
        self._cleanup()

    def __enter__(self) -> TcpProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._address is not None else "unstarted"
        return f"<TcpProxy {where} -> {self.target[0]}:{self.target[1]} frozen={self._frozen}>"

    # -- command plumbing -----------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return fn()
        done = threading.Event()
        box: list[Any] = []
        self._commands.put((fn, done, box))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError("TcpProxy thread did not answer")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def _run_commands(self) -> None:
        while True:
            try:
                fn, done, box = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                box.append(fn())
            except BaseException as exc:
                box.append(exc)
            finally:
                done.set()

    # -- event loop -----------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._selector
        assert sel is not None
        try:
            while not self._stopping:
                self._update_interest()
                for key, mask in sel.select(timeout=1.0):
                    sock = key.fileobj
                    if sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                        continue
                    if sock is self._listener:
                        self._accept()
                        continue
                    conn = self._conns.get(sock)  # type: ignore[arg-type]
                    if conn is None:
                        continue  # closed earlier in this batch
                    self._handle(conn, sock, mask)  # type: ignore[arg-type]
                self._run_commands()
        finally:
            self._run_commands()

    def _update_interest(self) -> None:
        sel = self._selector
        assert sel is not None and self._listener is not None
        self._set_interest(self._listener, 0 if self._frozen else selectors.EVENT_READ)
        for conn in list({id(c): c for c in self._conns.values()}.values()):
            if conn.connecting:
                self._set_interest(conn.upstream.sock, selectors.EVENT_WRITE)
                self._set_interest(conn.client.sock, 0)
                continue
            for side, other in ((conn.client, conn.upstream), (conn.upstream, conn.client)):
                events = 0
                if not self._frozen:
                    if not side.eof and len(other.out) < _MAX_BUFFER:
                        events |= selectors.EVENT_READ
                    if side.out:
                        events |= selectors.EVENT_WRITE
                self._set_interest(side.sock, events)

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        sel = self._selector
        assert sel is not None
        current = self._registered.get(sock, 0)
        if events == current:
            return
        if current == 0:
            sel.register(sock, events)
        elif events == 0:
            sel.unregister(sock)
        else:
            sel.modify(sock, events)
        if events:
            self._registered[sock] = events
        else:
            self._registered.pop(sock, None)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._frozen:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted_total += 1
            client.setblocking(False)
            _set_nodelay(client)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            _set_nodelay(upstream)
            err = upstream.connect_ex(self.target)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                _abort(upstream)
                _abort(client)
                continue
            conn = _Conn(client, upstream)
            self._conns[client] = conn
            self._conns[upstream] = conn

    def _handle(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        if conn.connecting:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._drop(conn, reset=True)
                return
            conn.connecting = False
            return
        if self._frozen:
            return
        side, other = (
            (conn.client, conn.upstream)
            if sock is conn.client.sock
            else (conn.upstream, conn.client)
        )
        try:
            if mask & selectors.EVENT_READ:
                data = side.sock.recv(_RECV)
                if data:
                    other.out += data
                    if side is conn.client:
                        self.bytes_to_upstream += len(data)
                    else:
                        self.bytes_to_client += len(data)
                    self._flush(other, side)
                else:
                    side.eof = True
                    self._flush(other, side)
            if mask & selectors.EVENT_WRITE:
                self._flush(side, other)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(conn, reset=True)
            return
        if (
            conn.client.shut
            and conn.upstream.shut
            and not conn.client.out
            and not conn.upstream.out
        ):
            self._drop(conn, reset=False)

    @staticmethod
    def _flush(dest: _Side, source: _Side) -> None:
        """Write ``dest.out`` to ``dest``; propagate a half-close once drained."""
        if dest.out:
            try:
                sent = dest.sock.send(dest.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            del dest.out[:sent]
        if source.eof and not dest.out and not dest.shut:
            dest.shut = True
            with contextlib.suppress(OSError):
                dest.sock.shutdown(socket.SHUT_WR)

    def _drop(self, conn: _Conn, *, reset: bool) -> None:
        for side in (conn.client, conn.upstream):
            self._set_interest(side.sock, 0)
            self._conns.pop(side.sock, None)
            if reset:
                _abort(side.sock)
            else:
                with contextlib.suppress(OSError):
                    side.sock.close()

    def _cut_all(self) -> int:
        conns = list({id(c): c for c in self._conns.values()}.values())
        for conn in conns:
            self._drop(conn, reset=True)
        return len(conns)

    def _cleanup(self) -> None:
        self._cut_all()
        if self._selector is not None:
            with contextlib.suppress(Exception):
                self._selector.close()
            self._selector = None
        self._registered.clear()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._wake_r = self._wake_w = None
