"""The test infrastructure itself, against real etcd 3.5 processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import etcd_harness
import grpc
import pytest
from etcd_harness import (
    EtcdCluster,
    Etcdctl,
    EtcdctlError,
    EtcdMember,
    PortInUseError,
    free_port,
    free_ports,
    prefix_range_end,
)
from polling import wait_until
from tcp_proxy import TcpProxy

# -- helpers ---------------------------------------------------------------------------------


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _http_get_health(sock: socket.socket) -> None:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")


def _recv_http_response(sock: socket.socket, timeout: float) -> bytes:
    """Read one small HTTP response (headers + a short JSON body) or raise socket.timeout."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


# -- polling ---------------------------------------------------------------------------------


def test_wait_until_returns_value_and_reports_timeout() -> None:
    calls = []

    def flaky() -> str | None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return "done"

    assert wait_until(flaky, timeout=2, interval=0.001) == "done"
    assert len(calls) == 3

    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.1s: never true \(last value: 0\)"):
        wait_until(lambda: 0, timeout=0.1, interval=0.01, message=lambda: "never true")
    assert time.monotonic() - start < 2


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_prefix_range_end() -> None:
    assert prefix_range_end("/a/") == b"/a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end("") == b"\0"


# -- single member ---------------------------------------------------------------------------


def test_member_is_real_etcd_on_loopback(etcd: EtcdMember) -> None:
    with open(f"/proc/{etcd.pid}/comm") as f:
        assert f.read().strip() == "etcd"
    assert etcd.client_url.startswith("http://127.0.0.1:")
    assert etcd.is_healthy()
    status = etcd.status()
    assert status["leader"] == status["member_id"] == etcd.member_id != 0
    assert etcd.log_path.exists() and etcd.log_path.stat().st_size > 0


def test_put_get_delete_roundtrip(etcd: EtcdMember) -> None:
    ctl = etcd.ctl
    r1 = ctl.put("/app/a", "one")
    r2 = ctl.put("/app/multi", "line1\nline2\n")
    r3 = ctl.put("/app/bin", b"\xff\x00\x01")
    r4 = ctl.put("-dash", "--not-a-flag")
    r5 = ctl.put("/other", "x")
    assert r1 < r2 < r3 < r4 < r5 == ctl.revision()

    assert ctl.get("/app/a") == "one"
    assert ctl.get("/missing") is None
    assert ctl.get("-dash") == "--not-a-flag"
    assert ctl.get_bytes("/app/bin") == b"\xff\x00\x01"
    assert ctl.get_prefix("/app/") == {
        "/app/a": "one",
        "/app/bin": b"\xff\x00\x01".decode("utf-8", "surrogateescape"),
        "/app/multi": "line1\nline2\n",
    }
    assert set(ctl.get_prefix("")) == {"/app/a", "/app/bin", "/app/multi", "-dash", "/other"}
    revision, kvs = ctl.get_kvs("/app/a")
    assert revision == r5 and kvs[0]["mod_revision"] == r1 and kvs[0]["version"] == 1

    assert ctl.delete("/app/a") == 1
    assert ctl.delete("/app/a") == 0
    assert ctl.delete_prefix("/app/") == 2
    assert ctl.get_prefix("/app/") == {}
    assert ctl.get_prefix("") == {"-dash": "--not-a-flag", "/other": "x"}
    assert ctl.revision() == r5 + 2


def test_txn_is_atomic_and_compare_works(etcd: EtcdMember) -> None:
    ctl = etcd.ctl
    ctl.put("/t/old", "gone soon")
    res = ctl.txn([("put", "/t/a", "1"), ("put", "/t/b", b"\x00"), ("delete", "/t/old")])
    assert res.succeeded
    revision, kvs = ctl.get_kvs("/t/", prefix=True)
    assert revision == res.revision
    assert {kv["key"]: kv["mod_revision"] for kv in kvs} == {
        b"/t/a": res.revision,
        b"/t/b": res.revision,
    }

    failed = ctl.txn(
        [("put", "/t/a", "never")],
        compare=[("version", "/t/a", "==", 0)],
        failure=[("put", "/t/failure-branch", "yes")],
    )
    assert not failed.succeeded
    assert ctl.get("/t/a") == "1"
    assert ctl.get("/t/failure-branch") == "yes"

    ok = ctl.txn([("delete_prefix", "/t/")], compare=[("value", "/t/a", "==", "1")])
    assert ok.succeeded and ctl.get_prefix("/t/") == {}


def test_txn_put_and_bulk_put(etcd: EtcdMember) -> None:
    ctl = etcd.ctl
    many = {f"/bulk/{i:04d}": f"value {i}" for i in range(1000)}
    rev = ctl.txn_put(many)  # one transaction, above etcd's default 128-op limit
    revision, kvs = ctl.get_kvs("/bulk/", prefix=True)
    assert revision == rev and len(kvs) == 1000
    assert {kv["mod_revision"] for kv in kvs} == {rev}

    more = {f"/more/{i}": str(i) for i in range(300)}
    last = ctl.bulk_put(more)
    assert last == rev + 3  # chunks of 128: 3 transactions
    assert ctl.get_prefix("/more/") == more


def test_compact(etcd: EtcdMember) -> None:
    ctl = etcd.ctl
    old = ctl.put("/c", "v1")
    new = ctl.put("/c", "v2")
    assert ctl.run("get", f"--rev={old}", "/c").stdout.splitlines()[1] == b"v1"
    ctl.compact(new)
    proc = ctl.run("get", f"--rev={old}", "/c", check=False)
    assert proc.returncode != 0 and b"compacted" in proc.stderr
    assert ctl.get("/c") == "v2"


def test_restart_keeps_data_ports_and_dir(etcd: EtcdMember) -> None:
    rev = etcd.ctl.put("/keep", "me")
    url, old_pid = etcd.client_url, etcd.pid

    assert etcd.stop() is not None  # graceful
    assert not etcd.running and not _pid_alive(old_pid)
    etcd.restart()
    assert etcd.client_url == url and etcd.pid != old_pid
    assert etcd.ctl.get("/keep") == "me"

    pid2 = etcd.pid
    assert etcd.kill() == -9
    assert not _pid_alive(pid2) and not etcd.is_healthy()
    etcd.restart()
    assert etcd.ctl.get("/keep") == "me"
    assert etcd.ctl.revision() == rev


def test_pause_and_resume(etcd: EtcdMember) -> None:
    etcd.ctl.put("/p", "1")
    etcd.pause()
    assert _proc_state(etcd.pid) == "T"
    frozen = etcd.ctl.with_endpoints(etcd.client_url)
    frozen.command_timeout = frozen.dial_timeout = 0.5
    with pytest.raises(subprocess.CalledProcessError):
        frozen.get("/p")
    etcd.resume()
    assert _proc_state(etcd.pid) != "T"
    assert wait_until(lambda: etcd.ctl.get("/p") == "1", timeout=5, message="etcd after SIGCONT")


def test_stop_of_paused_member_does_not_hang(etcd: EtcdMember) -> None:
    pid = etcd.pid
    etcd.pause()
    etcd.stop(timeout=5)
    assert not _pid_alive(pid)


def test_first_start_retries_when_port_is_taken(tmp_path, monkeypatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        real = etcd_harness.free_ports
        calls = []

        def racy_free_ports(n: int) -> list[int]:
            calls.append(n)
            ports = real(n)
            return [taken, *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(etcd_harness, "free_ports", racy_free_ports)
        member = EtcdMember(tmp_path / "m")
        try:
            member.start()
            assert len(calls) == 2 and member.client_port != taken
            assert member.ctl.put("/x", "y") > 1
        finally:
            member.close()

        fixed = EtcdMember(tmp_path / "fixed", client_port=taken, peer_port=free_port())
        with pytest.raises(PortInUseError):
            fixed.start()
        assert not fixed.running


def test_start_failure_reports_log(tmp_path) -> None:
    member = EtcdMember(tmp_path / "bad", extra_args=["--no-such-flag"])
    with pytest.raises(etcd_harness.EtcdStartError, match="no-such-flag"):
        member.start()
    assert not member.running


# -- auth and TLS ----------------------------------------------------------------------------


def test_auth_helpers(etcd: EtcdMember) -> None:
    admin = etcd.ctl
    admin.put("/apps/shop/db", "pg")
    admin.put("/apps/other/db", "secret")
    admin.add_user_with_prefix("reader", "reader-pass", "/apps/shop/", "read")
    admin.enable_auth("root-pass")
    assert admin.user == "root"

    anonymous = Etcdctl([etcd.client_url])
    with pytest.raises(subprocess.CalledProcessError):
        anonymous.get("/apps/shop/db")
    reader = anonymous.with_user("reader", "reader-pass")
    assert reader.get_prefix("/apps/shop/") == {"/apps/shop/db": "pg"}
    with pytest.raises(EtcdctlError, match="permission denied"):
        reader.get("/apps/other/db")
    with pytest.raises(EtcdctlError, match="permission denied"):
        reader.put("/apps/shop/db", "hacked")

    assert admin.txn([("put", "/apps/shop/db", "mysql")]).succeeded  # python client, authed
    assert reader.get("/apps/shop/db") == "mysql"
    assert etcd.is_healthy()  # /health keeps working with auth on
    reader.close()


def test_tls_member_with_client_cert_auth(make_etcd, tls_files) -> None:
    member = make_etcd(tls=tls_files, client_cert_auth=True)
    assert member.client_url.startswith("https://127.0.0.1:")
    assert member.is_healthy()
    assert member.ctl.put("/tls", "ok") > 1
    assert member.ctl.get("/tls") == "ok"
    assert member.ctl.txn_put({"/tls/a": "1", "/tls/b": "2"}) > 1  # python client over TLS
    no_cert = Etcdctl([member.client_url], tls=tls_files.client(with_cert=False))
    no_cert.command_timeout = no_cert.dial_timeout = 1
    with pytest.raises(subprocess.CalledProcessError):
        no_cert.get("/tls")


# -- cluster ---------------------------------------------------------------------------------


def test_cluster_elects_leader_and_survives_leader_kill(etcd_cluster: EtcdCluster) -> None:
    members = etcd_cluster.members
    assert len(members) == 3
    assert etcd_cluster.endpoints == ",".join(m.client_url for m in members)
    assert len({m.member_id for m in members}) == 3
    assert len(etcd_cluster.ctl.member_list()) == 3

    leader = etcd_cluster.leader()
    etcd_cluster.ctl.put("/before", "1")
    leader.kill()
    follower = next(m for m in members if m is not leader)

    new_leader = etcd_cluster.leader(timeout=10, exclude=leader)
    assert new_leader is not leader
    wait_until(
        lambda: follower.ctl.put("/after", "2"),
        timeout=10,
        message="put via a surviving member after leader kill",
    )
    assert follower.ctl.get_prefix("/") == {"/before": "1", "/after": "2"}

    leader.restart()  # same data dir and ports: rejoins and catches up
    assert wait_until(
        lambda: leader.ctl.get("/after") == "2", timeout=10, message="old leader catches up"
    )
    etcd_cluster.wait_healthy()
    assert etcd_cluster.leader() in members


def test_cluster_survives_paused_leader_and_stop_all(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    leader.pause()
    new_leader = etcd_cluster.leader(timeout=10, exclude=leader)
    assert new_leader.ctl.put("/while-paused", "x") > 1
    leader.resume()
    assert wait_until(
        lambda: leader.ctl.get("/while-paused") == "x", timeout=10, message="resumed member"
    )
    pids = [m.pid for m in etcd_cluster.members]
    etcd_cluster.stop_all()
    assert not any(_pid_alive(p) for p in pids)


# -- proxy -----------------------------------------------------------------------------------


def test_proxy_forwards_etcdctl_traffic(etcd: EtcdMember, make_proxy) -> None:
    proxy = make_proxy(etcd)
    assert proxy.url.startswith("http://127.0.0.1:") and proxy.port != etcd.client_port
    via = etcd.ctl.with_endpoints(proxy.url)
    rev = via.put("/via/proxy", "hello\nworld")
    assert etcd.ctl.get("/via/proxy") == "hello\nworld"
    assert via.get_prefix("/via/") == {"/via/proxy": "hello\nworld"}
    assert via.revision() == rev
    assert proxy.accepted_total >= 3
    assert proxy.bytes_to_upstream > 0 and proxy.bytes_to_client > 0


def test_proxy_freeze_keeps_grpc_connection_open_and_unfreeze_restores(
    etcd: EtcdMember, make_proxy
) -> None:
    proxy = make_proxy(etcd)
    via = etcd.ctl.with_endpoints(proxy.url)
    try:
        assert via.txn_put({"/f/a": "1"}) > 1  # opens one long-lived gRPC (HTTP/2) connection
        assert proxy.active_connections() == 1
        accepted = proxy.accepted_total

        proxy.freeze()
        assert proxy.frozen
        via.command_timeout = 0.5
        with pytest.raises(grpc.RpcError) as info:
            via.txn_put({"/f/b": "2"})
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert proxy.active_connections() == 1  # nothing was closed
        assert etcd.ctl.get("/f/b") is None  # the request never reached etcd

        proxy.unfreeze()
        via.command_timeout = 5
        assert via.txn_put({"/f/c": "3"}) > 1
        assert proxy.accepted_total == accepted  # the same connection carried on
        assert proxy.active_connections() == 1
    finally:
        via.close()


def test_proxy_freeze_makes_new_etcdctl_time_out(etcd: EtcdMember, make_proxy) -> None:
    proxy = make_proxy(etcd)
    via = etcd.ctl.with_endpoints(proxy.url)
    assert via.put("/g", "1") > 1
    proxy.freeze()
    via.command_timeout = via.dial_timeout = 0.5
    start = time.monotonic()
    with pytest.raises(subprocess.CalledProcessError):
        via.get("/g")
    assert time.monotonic() - start < 5
    proxy.unfreeze()
    via.command_timeout = via.dial_timeout = 2
    assert via.get("/g") == "1"


def test_proxy_freeze_holds_bytes_and_delivers_them_after_unfreeze(
    etcd: EtcdMember, make_proxy
) -> None:
    proxy = make_proxy(etcd)
    with socket.create_connection(proxy.address, timeout=5) as sock:
        _http_get_health(sock)
        assert b'"health":"true"' in _recv_http_response(sock, 5)
        proxy.freeze()
        _http_get_health(sock)
        with pytest.raises(TimeoutError):
            _recv_http_response(sock, 0.3)  # no answer, and no EOF/RST either
        proxy.unfreeze()
        assert b'"health":"true"' in _recv_http_response(sock, 5)  # held, then delivered


def test_proxy_cut_resets_connections_and_accepts_new_ones(etcd: EtcdMember, make_proxy) -> None:
    proxy = make_proxy(etcd)
    with socket.create_connection(proxy.address, timeout=5) as sock:
        _http_get_health(sock)
        _recv_http_response(sock, 5)
        assert proxy.cut() == 1
        with pytest.raises(ConnectionError):
            _http_get_health(sock)
            _recv_http_response(sock, 5)
    assert proxy.active_connections() == 0
    assert etcd.ctl.with_endpoints(proxy.url).put("/after-cut", "ok") > 1


def test_proxy_retarget(etcd: EtcdMember, make_etcd, make_proxy) -> None:
    other = make_etcd()
    etcd.ctl.put("/who", "first")
    other.ctl.put("/who", "second")
    proxy = make_proxy(etcd)
    via = etcd.ctl.with_endpoints(proxy.url)
    assert via.get("/who") == "first"
    proxy.retarget("127.0.0.1", other.client_port, cut=True)
    assert via.get("/who") == "second"


def test_proxy_to_dead_target_resets_client(make_proxy) -> None:
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connecting to it is refused
        proxy = make_proxy("127.0.0.1", dead.getsockname()[1])
        # the RST can already surface in connect() (Python's connect with a timeout reads
        # SO_ERROR after the handshake), or later in send/recv
        with pytest.raises(ConnectionError):
            with socket.create_connection(proxy.address, timeout=5) as sock:
                sock.sendall(b"x")
                if sock.recv(1) == b"":
                    raise ConnectionError("closed")
        wait_until(lambda: proxy.accepted_total == 1, timeout=5, message="proxy accepted")
        assert proxy.accepted_total == 1
        assert proxy.active_connections() == 0


def test_proxy_close_leaks_no_threads_or_fds(etcd: EtcdMember) -> None:
    threads_before = set(threading.enumerate())
    fds_before = _fd_count()
    proxy = TcpProxy("127.0.0.1", etcd.client_port).start()
    assert any(t.name.startswith("TcpProxy") for t in threading.enumerate())
    assert etcd.ctl.with_endpoints(proxy.url).put("/leak", "check") > 1
    held = socket.create_connection(proxy.address, timeout=5)
    try:
        _http_get_health(held)
        _recv_http_response(held, 5)
        proxy.freeze()
        assert proxy.active_connections() == 1
    finally:
        proxy.close()
        held.close()
    proxy.close()  # idempotent
    assert set(threading.enumerate()) <= threads_before
    assert _fd_count() == fds_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1).close()
