"""memexpose across stock QEMU: our memexpose-pci behind ``x-pci-proxy-dev``, our VM its peer.

Three processes besides the test (docs/remote.md, docs/memexpose-devices.md):

* stock QEMU 7.2 (``-M q35 -S``, RAM in a shared memfd backend) with
  ``-device x-pci-proxy-dev,fd=N`` at 00:04.0, driven over qtest as its
  guest would be: CF8/CFC config cycles, then BAR accesses;
* ``memexpose serve-device memexpose-pci --fd N --opt socket=... --opt
  bar64=off --opt msi=off``: the device, exposing QEMU's RAM as
  ``SYNC_SYSMEM`` mapped it into the server process;
* our VM (``tests/devices/memexpose_vm.py``: a MiniPC with a
  ``memexpose-pci`` in a child process), listening on the link socket.

The seed's four cases (RFC §5.3) run in both directions: the QEMU guest
reaches our VM's RAM through its BAR1 (each access a proxy round trip; the
server forwards the first over the link, then uses the fd it got), and our
VM reaches the QEMU guest's RAM through its window, directly over QEMU's
own memfd after the first access. On the QEMU side every 8-byte register
access arrives as two 4-byte ones (QEMU's proxy splits them); the device
acts once per access that starts at ENABLE, RECV or SEND, and the test
checks that a 4-byte access to either half does what the rules say.
A new RAM map from QEMU invalidates what our VM mapped of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from memexpose.devices import MemexposeStatus
from memexpose.qemu import QemuVM, remote_device_pair, serve_device_argv
from tests.devices.memexpose_vm import (
    R,
    RemoteVm,
    receive_interrupt,
    send_interrupt,
    wait_for,
)

pytestmark = [pytest.mark.qemu, pytest.mark.integration, pytest.mark.timeout(45)]

SLOT = 4
BAR0 = 0xFE00_0000
BAR1 = 0xE000_0000  # a 32-bit BAR in q35's PCI hole
WINDOW = 256 << 20  # the seed's shm_size
OFFSET = 0x400_0000  # 64 MiB, as the seed
PCI_STATUS_INTERRUPT = 0x08


def _cfg(vm: QemuVM, reg: int, value: int | None = None) -> int:
    """A config dword of 00:SLOT.0 through CF8/CFC (read, or write ``value``)."""
    vm.outl(0xCF8, 0x8000_0000 | SLOT << 11 | reg)
    if value is None:
        return vm.inl(0xCFC)
    vm.outl(0xCFC, value)
    return value


class QemuGuest:
    """The stock QEMU guest's memexpose-pci, driven over qtest like a guest driver.

    Answers the harness's ``call``s (``reg_read``/``reg_write``,
    ``win_read``/``win_write``, ``ram_read``/``ram_write``), so the seed
    helpers run on it. qtest shows no transaction result: window accesses
    report 0.
    """

    _READ = {1: "readb", 2: "readw", 4: "readl", 8: "readq"}
    _WRITE = {1: "writeb", 2: "writew", 4: "writel", 8: "writeq"}

    def __init__(self, vm: QemuVM) -> None:
        self.vm = vm

    def call(self, cmd: str, *args: Any) -> Any:
        return getattr(self, f"do_{cmd}")(*args)

    def setup(self) -> dict[str, int]:
        """Check the identity, size both BARs, place them, enable decoding."""
        vm = self.vm
        sizes = []
        for reg in (0x10, 0x14, 0x18):
            _cfg(vm, reg, 0xFFFF_FFFF)
            sizes.append(_cfg(vm, reg))
        _cfg(vm, 0x10, BAR0)
        _cfg(vm, 0x14, BAR1)
        _cfg(vm, 0x04, 0x0006)  # MEMORY | MASTER
        return {"ids": _cfg(vm, 0x00), "class_rev": _cfg(vm, 0x08),
                "status": _cfg(vm, 0x04) >> 16, "pin": _cfg(vm, 0x3C) >> 8 & 0xFF,
                "bar0": sizes[0], "bar1": sizes[1], "bar2": sizes[2]}

    def intx(self) -> bool:
        """The device's INTx, as its PCI_STATUS (answered by the remote) shows it."""
        return bool(_cfg(self.vm, 0x04) >> 16 & PCI_STATUS_INTERRUPT)

    def do_reg_read(self, offset: int, size: int = 8) -> int:
        return getattr(self.vm, self._READ[size])(BAR0 + offset)

    def do_reg_write(self, offset: int, value: int, size: int = 8) -> None:
        getattr(self.vm, self._WRITE[size])(BAR0 + offset, value)

    def do_win_read(self, offset: int, size: int = 4) -> tuple[int, int]:
        return getattr(self.vm, self._READ[size])(BAR1 + offset), 0

    def do_win_write(self, offset: int, value: int, size: int = 4) -> int:
        getattr(self.vm, self._WRITE[size])(BAR1 + offset, value)
        return 0

    def do_ram_read(self, addr: int, size: int = 4) -> int:
        return getattr(self.vm, self._READ[size])(addr)

    def do_ram_write(self, addr: int, value: int, size: int = 4) -> None:
        getattr(self.vm, self._WRITE[size])(addr, value)


class Pair:
    """The QEMU guest, our VM, and what connects them."""

    def __init__(self, qemu: QemuGuest, ours: RemoteVm, server: subprocess.Popen[bytes],
                 setup: dict[str, int]) -> None:
        self.qemu = qemu
        self.vm = qemu.vm
        self.ours = ours
        self.server = server
        self.setup = setup

    def ours_link(self) -> dict[str, Any]:
        return self.ours.call("stats")["link"]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Stock QEMU + ``serve-device memexpose-pci`` + our VM, set up and enabled.

    Teardown: our VM stops, QEMU quits over QMP and is reaped, the server
    then exits 0 on its own (the proxy's socket closed) and is reaped; the
    socket directory must be empty.
    """
    sockdir = tempfile.mkdtemp(prefix="mxq-", dir="/tmp")
    link = os.path.join(sockdir, "link")
    with tempfile.TemporaryFile() as log:
        qemu_end, dev_end = remote_device_pair()
        server = subprocess.Popen(
            serve_device_argv("memexpose-pci", dev_end.fileno(), {
                "socket": link, "shm_size": hex(WINDOW), "bar64": "off", "msi": "off",
                "name": "qemu.mx", "connect_timeout": "10"}),
            pass_fds=[dev_end.fileno()], stdout=log, stderr=subprocess.STDOUT)
        dev_end.close()
        ours: RemoteVm | None = None
        vm = QemuVM(["-device", f"x-pci-proxy-dev,id=mx,addr={SLOT},fd={qemu_end.fileno()}"],
                    accel="auto", pass_fds=[qemu_end.fileno()])
        try:
            ours = RemoteVm({"name": "ours", "listen": True, "socket": link,
                             "window": WINDOW, "connect_timeout": 10.0})
            vm.start()
            qemu_end.close()
            qemu = QemuGuest(vm)
            setup = qemu.setup()
            ours.call("setup")
            ours.call("reg_write", R.ENABLE, 1)  # ours listens: first
            qemu.call("reg_write", R.ENABLE, 1)  # a writeq: two writels, the high one inert
            for side in (ours, qemu):
                wait_for(lambda side=side: side.call("reg_read", R.ENABLE) == 1, 10.0,
                         "ENABLE to read 1")
            yield Pair(qemu, ours, server, setup)
        finally:
            qemu_end.close()
            if ours is not None:
                ours.stop()
            vm.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
            left = os.listdir(sockdir)
            shutil.rmtree(sockdir, ignore_errors=True)
    assert server.returncode == 0, output
    assert output == "", output  # nothing warned or failed on the way
    assert not left, f"socket files left behind: {left}"


def test_served_device_is_what_stock_qemu_understands(pair: Pair) -> None:
    s = pair.setup
    assert s["ids"] == 0x1111_1AF4
    assert s["class_rev"] == 0x0500_0002
    assert s["pin"] == 1
    assert not s["status"] & 0x10  # msi=off: no capability list, INTx only
    assert s["bar0"] == 0xFFFF_F000  # 4 KiB, 32-bit memory
    assert s["bar1"] == (-WINDOW) & 0xFFFF_F000  # 256 MiB, 32-bit (bar64=off), not prefetchable
    assert s["bar2"] == 0
    # QEMU's proxy sized them the same way: two memory BARs, nothing else.
    [dev] = [d for bus in pair.vm.qmp("query-pci") for d in bus["devices"]
             if d["slot"] == SLOT]
    bars = {r["bar"]: (r["type"], r["address"], r["size"]) for r in dev["regions"]}
    assert bars == {0: ("memory", BAR0, 0x1000), 1: ("memory", BAR1, WINDOW)}
    # When QEMU quits, the server says BYE to our VM and exits 0 (X5).
    pair.vm.close()
    assert pair.server.wait(timeout=10) == 0
    wait_for(lambda: pair.ours.call("reg_read", R.STATUS) & MemexposeStatus.PEER_LOST, 5.0,
             "PEER_LOST at our VM")
    assert pair.ours.call("reg_read", R.ENABLE) == 0


def test_memory_both_directions_direct_after_the_first(pair: Pair) -> None:
    qemu, ours = pair.qemu, pair.ours
    # Our VM's RAM, read by the QEMU guest through BAR1. The server forwards
    # the first access over the link and gets our RAM's fd with the reply.
    ours.call("ram_write", OFFSET, 0xDEADBEEF)
    before = pair.ours_link()
    assert qemu.call("win_read", OFFSET) == (0xDEADBEEF, 0)
    first = pair.ours_link()
    assert first["served_requests"] == before["served_requests"] + 1
    assert first["shares_sent"] == before["shares_sent"] + 1
    ours.call("ram_write", OFFSET, 0xBABA1510)
    assert qemu.call("win_read", OFFSET) == (0xBABA1510, 0)
    qemu.call("win_write", OFFSET, 0xAAAAAAAA)
    assert ours.call("ram_read", OFFSET) == 0xAAAAAAAA
    qemu.call("win_write", OFFSET, 0xBBBBBBBB)
    assert ours.call("ram_read", OFFSET) == 0xBBBBBBBB
    # ... and the later ones never reached our VM: the server used our fd.
    assert pair.ours_link()["served_requests"] == first["served_requests"]

    # The QEMU guest's RAM, reached by our VM through its window: the
    # first access is forwarded (to the server, which reads QEMU's RAM as
    # SYNC_SYSMEM mapped it) and brings QEMU's memfd along.
    qemu.call("ram_write", OFFSET, 0x0DDBA11)
    assert ours.call("win_read", OFFSET) == (0x0DDBA11, 0)
    mine = pair.ours_link()
    assert mine["forwarded_reads"] == 1 and mine["forwarded_writes"] == 0
    assert mine["shares_received"] == 1 and mine["direct_mappings"] == 1
    assert ours.call("win_write", OFFSET, 0xCAFEF00D) == 0
    assert qemu.call("ram_read", OFFSET) == 0xCAFEF00D
    qemu.call("ram_write", OFFSET + 4, 0x5EED5EED)
    assert ours.call("win_read", OFFSET + 4) == (0x5EED5EED, 0)
    after = pair.ours_link()
    assert after["forwarded_reads"] == 1 and after["forwarded_writes"] == 0
    # What our VM maps is QEMU's own guest RAM (its memory-backend-memfd).
    with open(f"/proc/{ours.call('pid')}/maps") as maps:
        assert "/memfd:memory-backend-memfd" in maps.read()
    ours.call("check")


def test_a_new_ram_map_from_qemu_invalidates_what_our_vm_mapped(pair: Pair) -> None:
    qemu, ours = pair.qemu, pair.ours
    qemu.call("ram_write", 0x8000, 0x11112222)
    assert ours.call("win_read", 0x8000) == (0x11112222, 0)
    mapped = pair.ours_link()
    assert mapped["direct_mappings"] == 1 and mapped["direct_bytes"] == 0xC0000  # [0, 0xc0000)
    # The guest opens 0xc0000-0xfffff as RAM (q35 PAM registers of 00:00.0): QEMU
    # sends a new map, one region [0, 256 MiB); the server's commit invalidates ours.
    for reg in range(0x90, 0x97):
        pair.vm.outl(0xCF8, 0x8000_0000 | reg & ~3)
        pair.vm.outb(0xCFC + (reg & 3), 0x30 if reg == 0x90 else 0x33)
    wait_for(lambda: pair.ours_link()["invalidations_received"] == 1, 5.0, "INVALIDATE")
    assert pair.ours_link()["direct_mappings"] == 0
    qemu.call("ram_write", 0xC8000, 0x33334444)
    assert ours.call("win_read", 0xC8000) == (0x33334444, 0)  # forwarded, then mapped
    remapped = pair.ours_link()
    assert remapped["direct_mappings"] == 1 and remapped["direct_bytes"] == 256 << 20
    assert ours.call("win_read", 0x8000) == (0x11112222, 0)
    assert pair.ours_link()["forwarded_reads"] == remapped["forwarded_reads"] == 2


def _sides(pair: Pair, direction: str) -> tuple[Any, Any]:
    return (pair.qemu, pair.ours) if direction == "qemu-to-ours" else (pair.ours, pair.qemu)


DIRECTIONS = pytest.mark.parametrize("direction", ["qemu-to-ours", "ours-to-qemu"])


@DIRECTIONS
def test_two_interrupts_in_order(pair: Pair, direction: str) -> None:
    sender, receiver = _sides(pair, direction)
    send_interrupt(sender, 0x1, 0xDEADBEA7)
    send_interrupt(sender, 0x2, 0xDEADBABA)
    assert receive_interrupt(receiver) == (1, 0x1, 0xDEADBEA7)
    assert receive_interrupt(receiver) == (1, 0x2, 0xDEADBABA)
    assert receiver.call("reg_read", R.RECV) == 0


@DIRECTIONS
def test_full_queue_keeps_first_16_and_counts_drops(pair: Pair, direction: str) -> None:
    sender, receiver = _sides(pair, direction)
    for i in range(16 + 10):
        send_interrupt(sender, i, i)
    # Let all 26 arrive before draining, so exactly 10 are dropped.
    wait_for(lambda: receiver.call("reg_read", R.PENDING)
             + receiver.call("reg_read", R.DROPPED) == 26, 10.0, "26 interrupts")
    assert receiver.call("reg_read", R.PENDING) == 16
    assert receiver.call("reg_read", R.DROPPED) == 10
    got = []
    while receiver.call("reg_read", R.RECV):
        got.append((receiver.call("reg_read", R.RX_TYPE), receiver.call("reg_read", R.RX_DATA)))
    assert got == [(i, i) for i in range(16)]
    assert receiver.call("reg_read", R.PENDING) == 0


@DIRECTIONS
def test_all_128_data_bytes_arrive(pair: Pair, direction: str) -> None:
    sender, receiver = _sides(pair, direction)
    sender.call("reg_write", R.TX_TYPE, 0)
    for i in range(0, 128, 8):
        sender.call("reg_write", R.TX_DATA + i, i << 32 | (0x80 + i))
    sender.call("reg_write", R.SEND, 1)
    assert receive_interrupt(receiver)[0] == 1
    # The receiver's RX_DATA, in 4-byte pieces (as the proxy delivers 8-byte reads).
    pieces = [receiver.call("reg_read", R.RX_DATA + i, 4) for i in range(0, 128, 4)]
    assert pieces == [v for i in range(0, 128, 8) for v in (0x80 + i, i)]
    assert receiver.call("reg_read", R.RX_TYPE) == 0
    assert receiver.call("reg_read", R.RECV) == 0  # SEND acted once


def test_4_byte_halves_act_once_and_intx_follows_the_queue(pair: Pair) -> None:
    qemu, ours = pair.qemu, pair.ours
    # QEMU sends with 4-byte writes: the low half of SEND sends; the high half is inert.
    qemu.call("reg_write", R.TX_TYPE, 7, 4)
    qemu.call("reg_write", R.TX_TYPE + 4, 0, 4)
    qemu.call("reg_write", R.TX_DATA, 0x11223344, 4)
    qemu.call("reg_write", R.SEND, 1, 4)
    qemu.call("reg_write", R.SEND + 4, 1, 4)
    qemu.call("reg_write", R.TX_TYPE, 8, 4)
    qemu.call("reg_write", R.SEND, 0, 4)  # any value sends
    # The link keeps order: a send from SEND+4 would sit between the two.
    assert receive_interrupt(ours) == (1, 7, 0x11223344)
    assert receive_interrupt(ours) == (1, 8, 0x11223344)
    assert ours.call("reg_read", R.RECV) == 0

    # Our VM sends; the QEMU side reads in 4-byte pieces.
    assert not qemu.intx()
    send_interrupt(ours, 0x1_0000_0009, 0xA5A5_5A5A_0102_0304)
    wait_for(lambda: qemu.call("reg_read", R.PENDING, 4) == 1, 5.0, "the interrupt at QEMU")
    assert qemu.intx()  # the remote's INTx is up while the queue is non-empty
    if pair.vm.accel == "kvm":  # ... and reached the in-kernel IOAPIC (q35 slot 4: GSI 20)
        wait_for(lambda: "IRR      20" in pair.vm.hmp("info pic"), 3.0, "IRR 20")
    else:
        warnings.warn("KVM is not usable here: INTx delivery through the irqfd was NOT "
                      "checked, only the device's PCI_STATUS", stacklevel=1)
    assert qemu.call("reg_read", R.RECV + 4, 4) == 0  # the high half pops nothing
    assert qemu.call("reg_read", R.PENDING, 4) == 1
    assert qemu.call("reg_read", R.RECV, 4) == 1  # the low half pops
    assert not qemu.intx()
    assert [qemu.call("reg_read", R.RX_TYPE + i, 4) for i in (0, 4)] == [9, 1]
    assert [qemu.call("reg_read", R.RX_DATA + i, 4) for i in (0, 4, 8)] == \
        [0x0102_0304, 0xA5A5_5A5A, 0]
    assert qemu.call("reg_read", R.RX_DATA + 1, 1) == 0x03
    assert qemu.call("reg_read", R.RX_DATA + 6, 2) == 0xA5A5
    assert qemu.call("reg_read", R.RECV, 4) == 0
    # ENABLE: the low half reads 1, the high half 0; a write of 0 to the high half is inert.
    qemu.call("reg_write", R.ENABLE + 4, 0, 4)
    assert [qemu.call("reg_read", R.ENABLE + i, 4) for i in (0, 4)] == [1, 0]
    time.sleep(0.05)
    assert ours.call("reg_read", R.ENABLE) == 1
    assert "PEER_LOST" not in ours.call("state") and ours.call("state") == "CONNECTED"
