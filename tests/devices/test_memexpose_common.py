"""The memexpose register block (``MemexposeCore``) in one process, without a peer.

Interrupts are pushed straight into the endpoint's receive queue (what the
link's interrupt thread does), so the register semantics can be checked
deterministically; tests/devices/test_memexpose_seed.py and
test_memexpose_pci.py run the same registers over a real link.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from memexpose.devices import (
    MEMEXPOSE_REGS_SIZE,
    MemexposeCore,
    MemexposeReg,
    MemexposeStatus,
    make_transport,
)
from memexpose.errors import ConfigError
from memexpose.link import Exposure, TcpTransport, UnixTransport
from memexpose.memory import (
    MEMTX_OK,
    AddressSpace,
    MemoryRegion,
    MemorySystem,
)

R = MemexposeReg
S = MemexposeStatus
REGS = 0x1000
RAM = 0x10_0000


class Block:
    """A core mapped at REGS in a small memory system, with a level log."""

    def __init__(self, path: str, **kwargs: object) -> None:
        self.system = MemorySystem("blk")
        self.lock = self.system.lock
        self.root = MemoryRegion.init_container("root", 1 << 64)
        self.ram = MemoryRegion.init_ram("ram", 0x10000)
        self.as_ = AddressSpace(self.root, "memory", system=self.system)
        self.levels: list[bool] = []
        self.core = MemexposeCore("blk", path, exposure=Exposure.range(self.as_, RAM, 0x10000),
                                  irq_handler=self.levels.append, **kwargs)
        with self.system.transaction():
            self.root.add_subregion(RAM, self.ram)
            self.root.add_subregion(REGS, self.core.regs)
            self.root.add_subregion(1 << 32, self.core.window)

    def read(self, offset: int, size: int = 8) -> int:
        with self.lock:
            value, result = self.as_.read(REGS + offset, size)
        assert result == MEMTX_OK
        return value

    def write(self, offset: int, value: int, size: int = 8) -> None:
        with self.lock:
            assert self.as_.write(REGS + offset, value, size) == MEMTX_OK

    def push(self, itype: int, data: bytes = b"") -> bool:
        """Queue an arrival as the link's interrupt thread would."""
        q = self.core.endpoint.interrupt_queue
        ok = q.push(itype, data.ljust(128, b"\0"))
        with self.lock:
            q.update_level()
        return ok

    def close(self) -> None:
        self.core.close()


@pytest.fixture
def block():
    path = tempfile.mkdtemp(prefix="mxc-", dir="/tmp")
    blocks: list[Block] = []

    def make(**kwargs: object) -> Block:
        b = Block(os.path.join(path, f"s{len(blocks)}"), **kwargs)
        blocks.append(b)
        return b

    yield make
    for b in blocks:
        b.close()
    assert not os.listdir(path)
    os.rmdir(path)


def test_power_on_values(block) -> None:
    b = block(window_size=0x10_0000)
    assert b.core.regs.size == MEMEXPOSE_REGS_SIZE == 0x1000
    assert b.core.window.size == 0x10_0000
    assert b.read(R.ENABLE) == 0
    assert b.read(R.STATUS) == 0
    assert b.read(R.DROPPED) == b.read(R.PENDING) == b.read(R.WINDOW_LIMIT) == 0
    assert b.read(R.WINDOW_SIZE) == 0x10_0000
    assert b.read(R.RECV) == 0
    assert b.read(R.RX_TYPE) == b.read(R.TX_TYPE) == 0
    b.core._check_invariants()


def test_recv_pops_one_entry_per_access_at_its_first_byte(block) -> None:
    b = block()
    for i in range(4):
        assert b.push(0x100 + i, bytes([i]) * 128)
    assert b.read(R.PENDING) == 4
    # The high half is inert, at any size.
    assert b.read(R.RECV + 4, 4) == 0
    assert b.read(R.RECV + 1, 1) == 0
    assert b.read(R.PENDING) == 4
    # One 8-byte read pops exactly one; so does a 4-byte read of the low half.
    assert b.read(R.RECV, 8) == 1
    assert (b.read(R.RX_TYPE), b.read(R.RX_DATA)) == (0x100, 0)
    assert b.read(R.RECV, 4) == 1
    assert b.read(R.RX_TYPE) == 0x101
    assert b.read(R.RX_DATA) == 0x0101010101010101
    assert b.read(R.RX_DATA + 120) == 0x0101010101010101
    assert b.read(R.PENDING) == 2
    assert b.core.statistics().receives == 2


def test_rx_is_read_only_and_survives_an_empty_recv(block) -> None:
    b = block()
    b.push(7, b"\xaa" * 128)
    assert b.read(R.RECV) == 1
    b.write(R.RX_TYPE, 0x55)
    b.write(R.RX_DATA, 0x55)
    assert b.read(R.RX_TYPE) == 7
    assert b.read(R.RX_DATA) == 0xAAAAAAAAAAAAAAAA
    assert b.read(R.RECV) == 0  # empty: RX unchanged
    assert b.read(R.RX_TYPE) == 7
    assert b.core.statistics().ignored_writes == 2
    assert b.core.statistics().empty_receives == 1


def test_level_follows_the_queue(block) -> None:
    b = block()
    b.push(1)
    b.push(2)
    assert b.levels == [True]
    assert b.read(R.STATUS) & S.IRQ
    b.read(R.RECV)
    assert b.levels == [True]
    b.read(R.RECV)
    assert b.levels == [True, False]
    assert not b.read(R.STATUS) & S.IRQ
    b.push(3)
    assert b.levels == [True, False, True]
    assert b.core.statistics().irq_raises == 2


def test_overflow_is_counted_and_reset_clears(block) -> None:
    b = block()
    for i in range(20):
        b.push(i)
    assert b.read(R.PENDING) == 16
    assert b.read(R.DROPPED) == 4
    b.write(R.TX_TYPE, 0x1234)
    with b.lock:
        b.core.reset()
    assert b.read(R.PENDING) == b.read(R.DROPPED) == 0
    assert b.read(R.TX_TYPE) == 0
    assert b.levels == [True, False]
    b.push(99)
    assert b.read(R.DROPPED) == 0 and b.read(R.PENDING) == 1
    b.core._check_invariants()


def test_tx_and_info_registers_are_bytes(block) -> None:
    b = block(window_size=0x2_0000_0000)
    b.write(R.TX_TYPE, 0x1122334455667788)
    assert b.read(R.TX_TYPE, 4) == 0x55667788
    assert b.read(R.TX_TYPE + 4, 4) == 0x11223344
    assert b.read(R.TX_TYPE + 7, 1) == 0x11
    b.write(R.TX_DATA + 127, 0xEE, 1)
    b.write(R.TX_DATA + 124, 0xDD, 1)
    assert b.read(R.TX_DATA + 120) == 0xEE0000DD_00000000
    assert b.read(R.WINDOW_SIZE, 4) == 0
    assert b.read(R.WINDOW_SIZE + 4, 4) == 2


def test_reserved_offsets_read_zero_and_ignore_writes(block) -> None:
    b = block()
    for offset in (0x030, 0x100, 0x3F8, 0x490, 0x7F8, 0x890, 0xFF8):
        b.write(offset, 0xFFFF_FFFF_FFFF_FFFF)
        assert b.read(offset) == 0, hex(offset)
    assert b.core.statistics().ignored_writes == 7


def test_unaligned_register_access_is_refused(block) -> None:
    b = block()
    with b.lock:
        assert b.as_.read(REGS + R.TX_TYPE + 2, 4)[1] != MEMTX_OK
        assert b.as_.write(REGS + R.ENABLE + 1, 1, 2) != MEMTX_OK
    assert b.read(R.STATUS) == 0


def test_send_without_link_sets_send_failed(block) -> None:
    b = block()
    b.write(R.SEND + 4, 1, 4)  # the high half is inert: no send at all
    assert b.core.statistics().sends == 0
    b.write(R.SEND, 1, 4)
    assert b.read(R.STATUS) == S.SEND_FAILED
    stats = b.core.statistics()
    assert (stats.sends, stats.sends_failed) == (1, 1)
    assert stats.link.interrupts_sent == 0


def test_enable_high_half_is_inert_and_enable_never_waits(block) -> None:
    b = block(connect_timeout=0.3)  # connects to a socket nobody listens on
    b.write(R.ENABLE + 4, 1, 4)
    assert b.read(R.STATUS) == 0
    t0 = time.monotonic()
    b.write(R.ENABLE, 1, 4)
    assert time.monotonic() - t0 < 0.1
    assert b.read(R.STATUS) == S.ENABLED | S.CONNECTING
    assert b.read(R.ENABLE) == 0
    deadline = time.monotonic() + 3.0
    while b.read(R.STATUS) & S.CONNECTING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.read(R.STATUS) == S.ENABLED | S.CONNECT_FAILED
    assert b.read(R.ENABLE) == 0
    with b.lock:
        value, result = b.as_.read((1 << 32) + 0x10, 4)
    assert result != MEMTX_OK  # the window reaches nothing while disconnected
    b.write(R.ENABLE, 0, 8)
    assert b.read(R.STATUS) == 0
    assert b.core.statistics().enables == 1 and b.core.statistics().disables == 1


def test_window_size_and_lock_are_checked(tmp_path) -> None:
    path = str(tmp_path / "s")
    system = MemorySystem("x")
    for bad in (0, 0x800, 0x3000, 1 << 64, True):
        with pytest.raises(ConfigError, match="window_size"):
            MemexposeCore("c", path, window_size=bad, lock=system.lock)
    with pytest.raises(ConfigError, match="lock="):
        MemexposeCore("c", path)


def test_make_transport() -> None:
    t = make_transport("/tmp/x.sock", listen=True)
    assert isinstance(t, UnixTransport) and t.listen and t.path == "/tmp/x.sock"
    t = make_transport("unix:/tmp/y.sock", listen=False)
    assert isinstance(t, UnixTransport) and t.path == "/tmp/y.sock" and not t.listen
    t = make_transport("tcp:127.0.0.1:7000", listen=False)
    assert isinstance(t, TcpTransport) and t.address == ("127.0.0.1", 7000)
    t = make_transport("tcp:[::1]:7001", listen=True)
    assert isinstance(t, TcpTransport) and t.address == ("::1", 7001)
    assert make_transport(t, listen=False) is t
    with pytest.raises(ConfigError, match="tcp:HOST:PORT"):
        make_transport("tcp:localhost", listen=False)
    with pytest.raises(ConfigError, match="empty"):
        make_transport("unix:", listen=False)


def test_status_bits_and_offsets_are_documented_values() -> None:
    assert [int(r) for r in R] == [0x000, 0x008, 0x010, 0x018, 0x020, 0x028, 0x400, 0x408,
                                   0x410, 0x800, 0x808, 0x810]
    assert [int(s) for s in S] == [1, 2, 4, 8, 16, 32, 64]
