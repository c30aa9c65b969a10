"""``memexpose-pci`` beyond the seed's tests: what its qtest never covered.

Identity and BARs as a guest finds them; ENABLE readback, disable and
re-enable; INTx and MSI delivery; reset; a peer that dies. Two-process
tests put VM "a" in the test process (listening) and VM "b" in a child.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from memexpose.devices import (
    MEMEXPOSE_PCI_DEVICE_ID,
    MEMEXPOSE_PCI_VENDOR_ID,
    MemexposePCI,
    MemexposeStatus,
    memexpose_pci_from_options,
)
from memexpose.errors import ConfigError
from memexpose.hw import MiniPC
from memexpose.link import Exposure, TcpTransport, UnixTransport
from memexpose.memory import MemorySystem
from tests.devices.memexpose_vm import (
    MSI_ADDR,
    MSI_DATA,
    WINDOW,
    R,
    enable_both,
    receive_interrupt,
    send_interrupt,
    wait_for,
)

S = MemexposeStatus
CONNECTED = S.ENABLED | S.CONNECTED


# -- one VM ------------------------------------------------------------------------------


def test_guest_finds_identity_bars_and_msi(vms) -> None:
    a = vms("a", remote=False, listen=True)
    info = a.call("setup")
    assert info == {"class": 0x0500, "revision": 2, "pin": 1, "bar0_size": 0x1000,
                    "bar1_size": WINDOW, "bar1_type": 0x4, "msi_cap": info["msi_cap"]}
    assert info["msi_cap"] >= 0x40
    dev = a.vm.dev
    assert (dev.vendor_id, dev.device_id) == (MEMEXPOSE_PCI_VENDOR_ID, MEMEXPOSE_PCI_DEVICE_ID)
    assert dev.bar(0).addr == 0xC000_0000 and dev.bar(1).addr == 0x80_0000_0000
    assert dev.bar(1).is_64 and not dev.bar(1).prefetchable
    assert a.call("reg_read", R.WINDOW_SIZE) == WINDOW
    assert a.call("reg_read", R.STATUS) == 0
    assert "RAM controller: PCI device 1af4:1111" in a.vm.pc.info_pci()
    assert "BAR1: 64 bit memory at 0x8000000000 [0x800fffffff]." in a.vm.pc.info_pci()
    a.call("check")


def test_enable_without_a_peer_does_not_freeze(vms) -> None:
    a = vms("a", remote=False, listen=False, connect_timeout=0.3)
    a.call("setup")
    t0 = time.monotonic()
    a.call("reg_write", R.ENABLE, 1)
    assert time.monotonic() - t0 < 0.1
    assert a.call("reg_read", R.STATUS) == S.ENABLED | S.CONNECTING
    wait_for(lambda: a.call("reg_read", R.STATUS) == S.ENABLED | S.CONNECT_FAILED, 3.0,
             "CONNECT_FAILED")
    assert a.call("reg_read", R.ENABLE) == 0
    assert a.call("win_read", 0, 4)[1] != 0


def test_quick_enable_toggle_neither_freezes_nor_loses_the_enable(vms) -> None:
    b = vms("b", remote=False, listen=False, connect_timeout=1.5)
    b.call("setup")
    for value in (1, 0, 1):  # ENABLE = 0 cancels the first connect; the second starts at once
        t0 = time.monotonic()
        b.call("reg_write", R.ENABLE, value)
        assert time.monotonic() - t0 < 0.1
    assert b.call("reg_read", R.STATUS) == S.ENABLED | S.CONNECTING
    assert b.call("state") == "CONNECTING"
    # The cancelled connect ends within milliseconds, without touching the new attempt.
    wait_for(lambda: len([t for t in threading.enumerate() if t.name == "b-connect"]) == 1,
             0.5, "the cancelled connect to end")
    assert b.call("state") == "CONNECTING"
    assert b.call("reg_read", R.STATUS) == S.ENABLED | S.CONNECTING
    a = vms("a", remote=True, listen=True)
    a.call("setup")
    a.call("reg_write", R.ENABLE, 1)
    for vm in (a, b):
        wait_for(lambda vm=vm: vm.call("reg_read", R.ENABLE) == 1, 5.0, "ENABLE to read 1")
    assert b.call("stats")["enables"] == 2 and b.call("stats")["link"]["connects"] == 1


def test_device_and_bus_must_share_the_machine_lock(tmp_path) -> None:
    pc = MiniPC(ram_size=1 << 20)
    other = MemorySystem("other")
    dev = MemexposePCI(str(tmp_path / "s"), lock=other.lock, window_size=0x1000)
    with pytest.raises(ConfigError, match="lock"):
        pc.add(dev, slot=3)
    dev.close()


def test_build_from_options(tmp_path) -> None:
    pc = MiniPC(ram_size=1 << 20)
    path = str(tmp_path / "s")
    dev = memexpose_pci_from_options(
        {"socket": path, "listen": "on", "shm_size": "0x100000", "role": "1",
         "expose_start": "0x1000", "expose_size": "0x2000", "readonly": "on",
         "connect_timeout": "0.5", "id": "mx0"}, address_space=pc.memory)
    ep = dev.endpoint
    assert isinstance(ep.transport, UnixTransport) and ep.transport.listen
    assert ep.role == 1 and ep.connect_timeout == 0.5
    assert ep.exporter is not None
    assert ep.exporter.exposure == Exposure.range(pc.memory, 0x1000, 0x2000, readonly=True)
    assert dev.core.window_size == 0x10_0000 and dev.id == "mx0"
    pc.add(dev, slot=5)
    dev.close()
    # Defaults: connect, negotiated role, the whole address space exposed.
    dev = memexpose_pci_from_options({"tcp": "127.0.0.1:7999"}, address_space=pc.memory)
    assert isinstance(dev.endpoint.transport, TcpTransport)
    assert not dev.endpoint.transport.listen
    assert dev.endpoint.exporter.exposure.size == 1 << 64
    dev.close()
    # No address space: nothing exposed, the lock given.
    dev = memexpose_pci_from_options({"socket": path}, lock=pc.system.lock)
    assert dev.endpoint.exporter is None
    dev.close()
    for options, match in (
            ({"socket": path, "colour": "red"}, "unknown option 'colour'"),
            ({}, "exactly one"),
            ({"socket": path, "tcp": "h:1"}, "exactly one"),
            ({"socket": path, "shm_size": "big"}, "shm_size"),
            ({"socket": path, "shm_size": "0x1800"}, "power of two"),
            ({"socket": path, "role": "2"}, "role"),
            ({"socket": path, "listen": "maybe"}, "on or off"),
            ({"socket": path, "listen": "on", "server": "on"}, "same option"),
            ({"socket": path, "timeout": "-1"}, "seconds"),
            ({"socket": path, "expose": "off", "expose_size": "0x1000"}, "expose=on")):
        with pytest.raises(ConfigError, match=match):
            memexpose_pci_from_options(options, address_space=pc.memory)
    with pytest.raises(ConfigError, match="address space"):
        memexpose_pci_from_options({"socket": path, "expose": "on"}, lock=pc.system.lock)
    assert not os.path.exists(path)


def test_bar64_off_and_msi_off_for_stock_qemu(tmp_path) -> None:
    pc = MiniPC(ram_size=1 << 20)
    path = str(tmp_path / "s")
    dev = memexpose_pci_from_options({"socket": path, "shm_size": "0x80000000",
                                      "bar64": "off", "msi": "off"}, lock=pc.system.lock)
    assert dev.msi is None and dev.bars[2] is None
    assert not dev.bar(1).is_64 and dev.bar(1).size == 0x8000_0000
    pc.add(dev, slot=5)
    assert dev.do_config_read(0x14, 4) == 0  # 32-bit, not prefetchable
    assert not dev.do_config_read(0x06, 2) & 0x10  # no capability list
    dev.do_config_write(0x14, 0xFFFF_FFFF, 4)
    assert dev.do_config_read(0x14, 4) == 0x8000_0000
    assert dev.do_config_read(0x18, 4) == 0  # no upper half
    dev.close()
    # The defaults stay as the spec: a 64-bit BAR1 and MSI.
    dev = memexpose_pci_from_options({"socket": path, "bar64": "on"}, lock=pc.system.lock)
    assert dev.bar(1).is_64 and dev.msi is not None
    dev.close()
    with pytest.raises(ConfigError, match="does not fit a 32-bit BAR1"):
        MemexposePCI(path, lock=pc.system.lock, window_size=1 << 32, bar64=False)
    with pytest.raises(ConfigError, match="bar64='2': expected on or off"):
        memexpose_pci_from_options({"socket": path, "bar64": "2"}, lock=pc.system.lock)


# -- two VMs, two processes ------------------------------------------------------------


def test_enable_readback_disable_and_reenable(pci_pair) -> None:
    a, b = pci_pair()
    for vm in (a, b):
        assert vm.call("reg_read", R.ENABLE) == 1
        assert vm.call("reg_read", R.STATUS) == CONNECTED
        assert vm.call("reg_read", R.WINDOW_LIMIT) == 128 << 20  # the peer exposes its RAM
    # a disables: it reads 0 at once; b sees the BYE as a lost peer.
    a.call("reg_write", R.ENABLE, 0)
    assert a.call("reg_read", R.ENABLE) == 0
    assert a.call("reg_read", R.STATUS) == 0
    wait_for(lambda: b.call("reg_read", R.STATUS) == S.ENABLED | S.PEER_LOST, 5.0, "PEER_LOST")
    assert b.call("reg_read", R.ENABLE) == 0
    assert b.call("reg_read", R.WINDOW_LIMIT) == 0
    send_interrupt(b, 5, 5)
    assert b.call("reg_read", R.STATUS) & S.SEND_FAILED
    assert b.call("win_read", 0x1000, 4)[1] != 0
    # Both enable again: the link, memory and interrupts work again.
    enable_both(a, b)
    assert b.call("reg_read", R.STATUS) == CONNECTED | S.SEND_FAILED  # until a SEND works
    send_interrupt(b, 6, 6)
    assert not b.call("reg_read", R.STATUS) & S.SEND_FAILED
    assert receive_interrupt(a) == (1, 6, 6)
    a.call("ram_write", 0x2000, 0x600D)
    assert b.call("win_read", 0x2000, 4) == (0x600D, 0)
    assert a.call("stats")["link"]["connects"] == 2
    a.call("check")
    b.call("check")


def test_intx_follows_the_queue(pci_pair) -> None:
    a, b = pci_pair()
    assert not b.call("intx")
    send_interrupt(a, 1, 10)
    send_interrupt(a, 2, 20)
    wait_for(lambda: b.call("intx"), 5.0, "INTx high")
    wait_for(lambda: b.call("reg_read", R.PENDING) == 2, 5.0, "two pending")
    assert b.call("reg_read", R.STATUS) == CONNECTED | S.IRQ
    assert b.call("reg_read", R.RECV + 4, 4) == 0  # inert high half: nothing popped
    assert b.call("reg_read", R.RECV, 4) == 1
    assert b.call("intx")  # one entry left
    assert b.call("reg_read", R.RECV) == 1
    assert not b.call("intx")
    assert b.call("reg_read", R.STATUS) == CONNECTED
    assert b.call("msi_messages") == 0
    # A 4-byte SEND at the high half sends nothing; at the low half, once.
    a.call("reg_write", R.SEND + 4, 1, 4)
    a.call("reg_write", R.SEND, 1, 4)
    assert a.call("stats")["sends"] == 3
    wait_for(lambda: b.call("intx"), 5.0, "INTx high again")
    assert b.call("reg_read", R.PENDING) == 1
    b.call("check")


def test_msi_one_message_per_empty_to_non_empty(pci_pair) -> None:
    a, b = pci_pair()
    b.call("enable_msi")
    b.call("ram_write", MSI_ADDR, 0)
    send_interrupt(a, 1, 1)
    wait_for(lambda: b.call("ram_read", MSI_ADDR) == MSI_DATA, 5.0, "the MSI write in RAM")
    assert b.call("msi_messages") == 1
    assert not b.call("intx")
    # Queue already non-empty: the second arrival sends no message.
    b.call("ram_write", MSI_ADDR, 0)
    send_interrupt(a, 2, 2)
    wait_for(lambda: b.call("reg_read", R.PENDING) == 2, 5.0, "two pending")
    time.sleep(0.05)
    assert b.call("msi_messages") == 1 and b.call("ram_read", MSI_ADDR) == 0
    # Drain, then a new arrival is a new transition: a new message.
    while b.call("reg_read", R.RECV):
        pass
    send_interrupt(a, 3, 3)
    wait_for(lambda: b.call("ram_read", MSI_ADDR) == MSI_DATA, 5.0, "the second MSI")
    assert b.call("msi_messages") == 2
    # MSI off with an entry waiting: INTx takes over the level.
    assert not b.call("intx")
    b.call("enable_msi", False)
    assert b.call("intx")
    assert b.call("reg_read", R.RECV) == 1
    assert not b.call("intx")
    assert b.call("stats")["irq_raises"] == 2
    b.call("check")


def test_reset_disables_and_clears(pci_pair) -> None:
    a, b = pci_pair()
    for i in range(3):
        send_interrupt(a, i, i)
    wait_for(lambda: b.call("intx"), 5.0, "INTx high")
    b.call("reg_write", R.TX_TYPE, 0x77)
    b.call("reset")
    # A reset unmaps the BARs, as for any PCI function: the guest sets it up again.
    b.call("setup")
    assert b.call("reg_read", R.ENABLE) == 0
    assert b.call("reg_read", R.STATUS) == 0
    assert b.call("reg_read", R.PENDING) == 0
    assert b.call("reg_read", R.TX_TYPE) == 0
    assert not b.call("intx")
    wait_for(lambda: a.call("reg_read", R.STATUS) == S.ENABLED | S.PEER_LOST, 5.0,
             "PEER_LOST at a")
    enable_both(a, b)
    send_interrupt(b, 9, 99)
    assert receive_interrupt(a) == (1, 9, 99)
    b.call("check")


def test_peer_dies_then_a_new_peer_connects(pci_pair, vms) -> None:
    a, b = pci_pair()
    a.call("ram_write", 0x3000, 0x1111)
    assert b.call("win_read", 0x3000, 4) == (0x1111, 0)
    b.kill()
    wait_for(lambda: a.call("reg_read", R.STATUS) == S.ENABLED | S.PEER_LOST, 5.0,
             "PEER_LOST")
    assert a.call("reg_read", R.ENABLE) == 0
    t0 = time.monotonic()
    assert a.call("win_read", 0x3000, 4)[1] != 0  # fails at once, never hangs
    assert time.monotonic() - t0 < 0.5
    assert a.call("stats")["link"]["link_errors"] == 1
    # A new peer process on the same socket; a enables again.
    c = vms("c", remote=True, listen=False)
    c.call("setup")
    enable_both(a, c)
    a.call("ram_write", 0x3000, 0x2222)
    assert c.call("win_read", 0x3000, 4) == (0x2222, 0)
    send_interrupt(c, 4, 44)
    assert receive_interrupt(a) == (1, 4, 44)
    a.call("check")
