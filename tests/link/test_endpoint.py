"""memexpose.link.endpoint: lifecycle, states, TCP, statistics, configuration errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memexpose.errors import ConfigError, ConnectError, LinkClosedError, LinkStateError
from memexpose.link import (
    Exposure,
    LinkState,
    LinkStatistics,
    MemexposeEndpoint,
    UnixTransport,
)
from memexpose.memory import MEMTX_OK, AddressSpace, MemoryRegion, MemorySystem
from tests.link.peer import ANON, COUNTER, RAM, SWITCH, WINDOW_BASE, default_spec, run_in_thread

pytestmark = pytest.mark.timeout(60)

TRUSTED_TOML = Path(__file__).resolve().parents[2] / "examples" / "trusted.toml"


def _threads_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_enable_disable_and_enable_again(pair) -> None:
    me, other = pair()
    assert me.ep.state is LinkState.CONNECTED and me.ep.connected
    info = me.ep.peer
    assert info.version == (1, 0) and info.fd_passing and info.block
    assert info.exposed_size == 0x20_0000
    assert {info.sub_priority, other.call("stats") and 1 - info.sub_priority} == {0, 1}
    assert _threads_named("local-")
    other.send("wait_state", "DISCONNECTED")
    me.ep.disable()
    assert other.result() == "DISCONNECTED"
    state, why = other.call("state")
    assert "the peer disabled the link" in why
    assert me.ep.state is LinkState.DISABLED and not _threads_named("local-")
    other.send("enable")
    me.ep.enable()
    assert other.result() == "CONNECTED"
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    assert me.ep.statistics().connects == 2


def test_enable_without_a_peer_fails_cleanly(sockdir, local) -> None:
    me = local(default_spec("lonely", ("unix", os.path.join(sockdir, "s"), True)))
    with pytest.raises(ConnectError, match="could not connect") as info:
        me.ep.enable(timeout=0.3)
    assert "no peer connected" in str(info.value.__cause__)
    assert me.ep.state is LinkState.DISABLED and me.ep.last_error is info.value.__cause__
    assert not _threads_named("lonely-")


def test_enable_nowait_connects_in_the_background(sockdir, local, peer) -> None:
    path = os.path.join(sockdir, "s")
    me = local(default_spec("bg", ("unix", path, True)))
    me.ep.enable_nowait()
    assert me.ep.state is LinkState.CONNECTING
    me.ep.enable_nowait()  # no-op while connecting
    with pytest.raises(LinkStateError, match="already connecting"):
        me.ep.enable()
    other = peer(default_spec("peer", ("unix", path, False)))
    assert other.call("enable") == "CONNECTED"
    assert me.do_wait_state("CONNECTED") == "CONNECTED"
    assert me.as_.read(WINDOW_BASE + COUNTER, 4) == (1, MEMTX_OK)


def test_disable_cancels_a_background_connect(sockdir, local) -> None:
    me = local(default_spec("bg", ("unix", os.path.join(sockdir, "s"), True),
                            connect_timeout=0.5))
    me.ep.enable_nowait()
    with me.lock:  # as a device register write would
        me.ep.disable()
    assert me.ep.state is LinkState.DISABLED
    me.ep.close()
    assert me.ep.state is LinkState.CLOSED
    assert not _threads_named("bg-")
    with pytest.raises(LinkStateError, match="closed; create a new endpoint"):
        me.ep.enable()


def test_disable_from_the_peer_side_completes_waiters_and_statistics_show_it(pair) -> None:
    me, other = pair()
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    other.call("disable")
    assert me.do_wait_state("DISCONNECTED") == "DISCONNECTED"
    assert isinstance(me.ep.last_error, LinkClosedError)
    deadline = time.monotonic() + 2
    while me.ep.importer.mappings and time.monotonic() < deadline:
        time.sleep(0.01)
    st = me.ep.statistics()
    assert isinstance(st, LinkStatistics) and st.state == "DISCONNECTED"
    assert st.direct_mappings == 0 and st.mappings_removed == 1
    assert st.as_dict()["forwarded_reads"] == 1


def test_tcp_forwards_everything_both_ways(local, peer) -> None:
    me = local(default_spec("tcp-local", ("tcp", "127.0.0.1", 0, True)))
    me.ep.transport.open()
    port = me.ep.transport.address[1]
    other = peer(default_spec("tcp-peer", ("tcp", "127.0.0.1", port, False)))
    other.send("enable")
    me.ep.enable()
    assert other.result() == "CONNECTED"
    assert not me.ep.peer.fd_passing and me.ep.peer.name.startswith("tcp:127.0.0.1:")
    for _ in range(3):
        assert me.as_.read(WINDOW_BASE + RAM + 4, 4) == (0x11111111, MEMTX_OK)
    assert me.as_.write(WINDOW_BASE + ANON, 0xABCD, 2) == MEMTX_OK
    assert other.call("read", ANON, 2) == (0xABCD, MEMTX_OK)
    me.as_.write(RAM, 0x600DF00D, 4)
    assert other.call("read", WINDOW_BASE + RAM, 4) == (0x600DF00D, MEMTX_OK)
    # Bulk over blocks (more than one).
    pattern = os.urandom(0x10000)
    assert me.ep.write_bytes(RAM, pattern) == MEMTX_OK
    assert me.ep.read_bytes(RAM, 0x10000) == (pattern, MEMTX_OK)
    st = me.ep.statistics()
    assert st.forwarded_reads == 3 and st.direct_mappings == 0 and st.shares_received == 0
    assert st.forwarded_block_writes >= 1
    assert other.call("stats")["direct_mappings"] == 0
    assert other.call("send_irq", 3, b"tcp")
    deadline = time.monotonic() + 5
    while me.ep.pending_interrupts == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert me.ep.pop_interrupt().data[:3] == b"tcp"


def test_configuration_errors_are_caught_up_front(sockdir) -> None:
    path = os.path.join(sockdir, "s")
    system = MemorySystem("m")
    as_ = AddressSpace(MemoryRegion.init_container("root", 1 << 32), "m", system=system)
    exposure = Exposure.range(as_, 0, 0x1000)
    with pytest.raises(ConfigError, match="role=2"):
        MemexposeEndpoint("e", UnixTransport(path, listen=True), role=2)
    with pytest.raises(ConfigError, match="transport must be"):
        MemexposeEndpoint("e", path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not the exposure's machine lock"):
        MemexposeEndpoint("e", UnixTransport(path, listen=True), exposure=exposure,
                          lock=threading.RLock())
    with pytest.raises(ConfigError, match="readonly_share"):
        MemexposeEndpoint("e", UnixTransport(path, listen=True), exposure=exposure,
                          readonly_share="maybe")
    with pytest.raises(ConfigError, match="longer than 107"):
        UnixTransport("/tmp/" + "x" * 200, listen=True)
    with pytest.raises(LinkStateError, match="no import window"):
        MemexposeEndpoint("e", UnixTransport(path, listen=True)).read_bytes(0, 4)


def test_a_window_in_a_system_with_another_lock_is_refused_at_enable(sockdir) -> None:
    ep = MemexposeEndpoint("e", UnixTransport(os.path.join(sockdir, "s"), listen=True),
                           window_size=0x1000, lock=threading.RLock())
    root = MemoryRegion.init_container("root", 1 << 32)
    AddressSpace(root, "other")
    root.add_subregion(0, ep.window)
    with pytest.raises(ConnectError, match="whose lock is not the endpoint's"):
        ep.enable(timeout=0.2)
    ep.close()


def test_a_device_handler_served_for_the_peer_may_disable_the_link(pair) -> None:
    me, other = pair()
    theirs = other.call("fds")
    # Our write reaches the peer's "switch" register, whose handler disables the
    # link on the peer's server thread, in the middle of serving us.
    assert me.as_.write(WINDOW_BASE + SWITCH, 1, 4) != MEMTX_OK
    assert other.call("state")[0] == "DISABLED"
    assert me.do_wait_state("DISCONNECTED") == "DISCONNECTED"
    # Sockets, epoll and pipe are all released, the last two as the peer's
    # server thread (which ran disable() itself) exits.
    deadline = time.monotonic() + 5
    while other.call("fds") > theirs - 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other.call("fds") <= theirs - 5
    other.send("enable")
    me.ep.enable()
    assert other.result() == "CONNECTED"
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.002)


def test_enable_nowait_after_disable_mid_handshake_neither_freezes_nor_is_lost(
        sockdir, local, peer) -> None:
    # A device's ENABLE 1, 0, 1 while the first connect is in its handshake:
    # the second write must not wait for the first connect (it held the
    # machine lock for up to connect_timeout), and the first connect's
    # failure must not turn the second's CONNECTING into DISABLED.
    path = os.path.join(sockdir, "s")
    me = local(default_spec("tog", ("unix", path, True), connect_timeout=5.0))
    me.ep.enable_nowait()
    stuck = peer(default_spec("stuck", ("unix", path, False)), raw=True)
    stuck.call("connect_silent")
    assert "Hello" in stuck.call("recv")  # accepted; now waiting for the peer's HELLO
    t0 = time.monotonic()
    with me.lock:  # as the register writes do
        me.ep.disable()
        me.ep.enable_nowait()
    assert time.monotonic() - t0 < 0.1
    assert me.ep.state is LinkState.CONNECTING
    assert stuck.call("is_closed", 1.0)  # the cancelled connect hung up at once
    _wait_for(lambda: _threads_named("tog-connect") == ["tog-connect"], 0.5,
              "the cancelled connect to end")
    assert me.ep.state is LinkState.CONNECTING and me.ep.last_error is None
    other = peer(default_spec("peer", ("unix", path, False)))
    assert other.call("enable") == "CONNECTED"
    assert me.do_wait_state("CONNECTED") == "CONNECTED"
    assert me.as_.read(WINDOW_BASE + COUNTER, 4) == (1, MEMTX_OK)
    assert me.ep.statistics().connects == 1


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["accept", "handshake-listening", "connect-retry",
                                   "handshake-connecting", "tcp-connect-retry"])
def test_close_during_a_pending_connect_returns_at_once(where, sockdir, local, peer) -> None:
    path = os.path.join(sockdir, "s")
    listen = where in ("accept", "handshake-listening")
    transport = ("tcp", "127.0.0.1", _free_tcp_port(), False) if where.startswith("tcp") \
        else ("unix", path, listen)
    me = local(default_spec("pend", transport, connect_timeout=5.0))
    if where == "handshake-connecting":
        stuck = peer(default_spec("stuck", ("unix", path, True)), raw=True)
        stuck.call("listen_silent")  # never accepts: our HELLO waits in its backlog
    me.ep.enable_nowait()
    if where == "handshake-listening":
        stuck = peer(default_spec("stuck", ("unix", path, False)), raw=True)
        stuck.call("connect_silent")
        assert "Hello" in stuck.call("recv")
    else:
        time.sleep(0.1)
    assert me.ep.state is LinkState.CONNECTING
    t0 = time.monotonic()
    me.ep.close()
    assert time.monotonic() - t0 < 0.1
    assert me.ep.state is LinkState.CLOSED and not _threads_named("pend-")
    assert not os.path.exists(path) or where == "handshake-connecting"  # the peer's file


def test_disable_ends_a_blocking_enable_at_once(sockdir, local) -> None:
    me = local(default_spec("blk", ("unix", os.path.join(sockdir, "s"), False),
                            connect_timeout=5.0))
    thread, out = run_in_thread(me.ep.enable)
    time.sleep(0.1)
    t0 = time.monotonic()
    me.ep.disable()
    thread.join(1.0)
    assert time.monotonic() - t0 < 0.1
    assert isinstance(out[0], ConnectError) and "disabled while connecting" in str(out[0])
    assert me.ep.state is LinkState.DISABLED


def test_ctrl_c_on_a_vm_waiting_for_its_peer_exits_at_once(sockdir, tmp_path) -> None:
    # `memexpose run examples/trusted.toml` with no rich VM: its device listens
    # (connect_timeout 60 s). Ctrl-C used to wait for that deadline.
    text = TRUSTED_TOML.read_text()
    firmware = (TRUSTED_TOML.parent / "../firmware/build/trusted-aarch64.elf").resolve()
    sock = os.path.join(sockdir, "vm.sock")
    for old, new in (('firmware = "../firmware/build/trusted-aarch64.elf"',
                      f'firmware = "{firmware}"'),
                     ('socket = "flagship.sock"', f'socket = "{sock}"')):
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "trusted.toml"
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-c", "from memexpose.cli.main import main; main()",
                             "run", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, 20.0,
                  "the VM to listen")
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
        elapsed = time.monotonic() - t0
        output = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert code == 0 and "shutdown: signal SIGINT" in output, output
    assert elapsed < 2.0
    assert not os.path.exists(sock)
