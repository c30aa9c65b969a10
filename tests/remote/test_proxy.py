"""remote-pci: our machines' proxy for a device served in another thread or process."""

from __future__ import annotations

import socket
import time

import pytest

from memexpose.devices import EduDevice, run_edu_script
from memexpose.errors import ConfigError, LinkBusyError, LinkClosedError
from memexpose.hw import MiniPC, PCIDevice, format_info_pci
from memexpose.memory import AccessConstraints, HostMemory, MemoryRegion, MemoryRegionOps
from memexpose.remote import RemotePCIDevice, RemotePlatform, RemoteState, register_remote_device

from .helpers import SleepingDriver, served

pytestmark = pytest.mark.timeout(30)


class _IdOps(MemoryRegionOps):
    valid = AccessConstraints(1, 4)

    def read(self, offset: int, size: int) -> int:
        return 0xA0 + offset


class _BarsDevice(PCIDevice):
    """An I/O BAR and a 64-bit prefetchable RAM BAR (what QEMU's proxy gets wrong)."""

    def __init__(self) -> None:
        super().__init__("test-bars", vendor_id=0x1B36, device_id=0x00F0, revision=2,
                         class_code=0x0580, interrupt_pin=1)
        self.register_bar(0, MemoryRegion.init_io("test-io", 32, _IdOps(), owner=self.owner),
                          io=True)
        self.ram = MemoryRegion.init_ram("test-ram", 1 << 20, owner=self.owner)
        self.register_bar(2, self.ram, mem64=True, prefetchable=True)


def _make_bars(platform: RemotePlatform, options: object) -> PCIDevice:
    return _BarsDevice()


register_remote_device("test-bars", _make_bars, description="test device")


def test_edu_script_through_the_proxy_equals_a_local_edu() -> None:
    pc = MiniPC()
    with served() as s:
        proxy = pc.add(RemotePCIDevice(s.vm_end), slot=4)
        assert isinstance(proxy, RemotePCIDevice) and proxy.connected
        # The device's clock is wall time: let the driver's waits sleep.
        remote = run_edu_script(SleepingDriver(pc.memory, pc.io_as, clock=pc.clock,
                                               irqs=pc.gsi))
        stats = proxy.statistics()
        proxy._check_invariants()
        s.server._check_invariants()
        proxy.close()
        assert proxy.state is RemoteState.CLOSED and proxy.bus is None
    local_pc = MiniPC()
    local_pc.add(EduDevice(local_pc.clock), slot=4)
    local = run_edu_script(local_pc.driver())
    diffs = [(step, mine, theirs) for (step, mine), (_, theirs) in zip(local, remote)
             if mine != theirs]
    assert [step for step, _ in remote] == [step for step, _ in local]
    assert not diffs, diffs  # INTx, MSI and DMA included
    assert stats["state"] == "connected" and stats["failed_requests"] == 0
    assert stats["ram_map"] == [(0, 128 << 20, 0)]


def test_probe_understands_io_and_64_bit_bars() -> None:
    local_pc = MiniPC()
    local_pc.add(_BarsDevice(), slot=5)
    local_pc.enumerate()
    pc = MiniPC()
    with served("test-bars") as s:
        proxy = pc.add(RemotePCIDevice(s.vm_end), slot=5)
        assert [(b.index, b.size, b.is_io, b.is_64, b.prefetchable)
                for b in proxy.bars if b is not None] == \
            [(0, 32, True, False, False), (2, 1 << 20, False, True, True)]
        pc.enumerate()
        assert pc.info_pci() == local_pc.info_pci()
        io_base = proxy.bars[0].addr  # type: ignore[union-attr]
        ram_base = proxy.bars[2].addr  # type: ignore[union-attr]
        assert ram_base >= 1 << 32
        assert pc.io_as.read(io_base + 4, 1) == (0xA4, 0)
        pc.memory.write(ram_base + 8, 0x1122334455667788, 8)  # forwarded whole
        assert s.device.ram.hostmem.view[8:16].tobytes() == \
            (0x1122334455667788).to_bytes(8, "little")
        assert pc.memory.read(ram_base + 8, 8)[0] == 0x1122334455667788
        proxy.close()


def test_ram_sync_follows_the_map_and_skips_unshareable_ram(
        caplog: pytest.LogCaptureFixture) -> None:
    pc = MiniPC(ram_size=16 << 20)
    with served() as s:
        pc.add(RemotePCIDevice(s.vm_end), slot=4)
        s.sync()
        assert s.platform.ram_map() == [(0, 16 << 20, 0)]
        extra = MemoryRegion.init_ram("hotplug", 1 << 20)
        with pc.system.transaction():
            pc.sysmem.add_subregion(0x4000_0000, extra)
        private = MemoryRegion.init_ram("private", 1 << 20,
                                        hostmem=HostMemory.anonymous("private", 1 << 20))
        with pc.system.transaction():
            pc.sysmem.add_subregion(0x5000_0000, private)
        deadline = time.monotonic() + 2
        while len(s.platform.ram_map()) < 2 and time.monotonic() < deadline:
            s.sync()
        assert s.platform.ram_map() == [(0, 16 << 20, 0), (0x4000_0000, 1 << 20, 0)]
        assert "not shareable" in caplog.text


def test_intx_follows_the_remote_line() -> None:
    pc = MiniPC()
    drv = pc.driver()  # takes the machine lock per access, as a CPU does
    with served() as s:
        proxy = pc.add(RemotePCIDevice(s.vm_end), slot=4)
        pc.enumerate()
        bar = proxy.bars[0].addr  # type: ignore[union-attr]
        gsi = pc.gsi[pc.gsi_of(proxy)]  # type: ignore[index]
        drv.writel(bar + 0x60, 0x1)  # raise: seen as soon as the write returns
        assert gsi.level and proxy.irq_level()
        drv.writel(bar + 0x64, 0x1)  # ack: the proxy reads the status and drops it
        assert not gsi.level
        # Asynchronous: a factorial completing later raises it (watcher thread).
        drv.writel(bar + 0x20, 0x80)
        drv.writel(bar + 0x08, 5)
        deadline = time.monotonic() + 3
        while not gsi.level and time.monotonic() < deadline:
            time.sleep(0.005)
        assert gsi.level
        assert drv.readl(bar + 0x08) == 120
        drv.writel(bar + 0x64, 0x1)
        assert not gsi.level
        proxy.close()


def test_a_dead_remote_is_reported_and_reads_all_ones(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    pc = MiniPC()
    drv = pc.driver()
    with served() as s:
        proxy = pc.add(RemotePCIDevice(s.vm_end), slot=4)
        pc.enumerate()
        bar = proxy.bars[0].addr  # type: ignore[union-attr]
        assert drv.readl(bar) == 0x010000ED
        s.server.close()  # the device process goes away
        s.thread.join(5)
        assert drv.readl(bar) == 0xFFFFFFFF
        assert proxy.state is RemoteState.DISCONNECTED
        proxy._check_invariants()
        assert "device process is gone" in caplog.text and "BAR0 read" in caplog.text
        assert "reconnect()" in caplog.text
        assert pc.host.config_read(0, proxy.devfn, 0, 4) == 0xFFFFFFFF
        drv.writel(bar + 4, 1)  # dropped, no exception
        assert proxy.statistics()["failed_requests"] >= 2
        assert caplog.text.count("device process is gone") == 1  # said once
        # A restarted server: reconnect replays the BARs and the command register.
        with served() as s2:
            proxy.reconnect(s2.vm_end)
            assert proxy.connected and proxy.last_error is None
            assert drv.readl(bar) == 0x010000ED
            drv.writel(bar + 4, 5)
            assert drv.readl(bar + 4) == 0xFFFFFFFA
            assert s2.platform.ram_map() == [(0, 128 << 20, 0)]
            proxy.close()
        with pytest.raises(LinkClosedError, match="closed"):
            proxy.reconnect(socket.socket(socket.AF_UNIX))


def test_reconnect_refuses_another_device() -> None:
    pc = MiniPC()
    with served() as s, served("test-bars") as other:
        proxy = pc.add(RemotePCIDevice(s.vm_end), slot=4)
        with pytest.raises(ConfigError, match="not 1234:11e8"):
            proxy.reconnect(other.vm_end)
        assert proxy.state is RemoteState.DISCONNECTED
        proxy.close()


def test_probe_times_out_on_a_silent_remote(caplog: pytest.LogCaptureFixture) -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(LinkClosedError, match="no reply within 0.2 s"):
            RemotePCIDevice(a, timeout=0.2)
    finally:
        b.close()
    assert a.fileno() == -1  # the proxy closed its socket
    with pytest.raises(ConfigError, match="timeout must be positive"):
        RemotePCIDevice(b, timeout=0)


def test_two_users_of_one_socket_raise() -> None:
    pc = MiniPC()
    with served() as s:
        proxy = pc.add(RemotePCIDevice(s.vm_end), slot=4)
        proxy._busy = True
        with pytest.raises(LinkBusyError, match="two threads"):
            proxy.config_read(0, 4)
        proxy._busy = False
        assert proxy.config_read(0, 4) == 0x11E81234
        assert "connected" in repr(proxy)
        proxy.close()
        proxy.close()  # idempotent


def test_info_pci_shows_the_remote_identity() -> None:
    pc = MiniPC()
    with served() as s:
        proxy = pc.add(RemotePCIDevice(s.vm_end, id="r0"), slot=4)
        text = format_info_pci(pc.host)
        assert "PCI device 1234:11e8" in text and 'id "r0"' in text
        proxy.close()
