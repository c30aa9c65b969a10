"""Our VM side (``remote-pci``) against QEMU's own C device server (``-machine x-remote``).

The same wire format both ways: our proxy probes, sizes, maps and drives
a ``pci-testdev`` that stock QEMU serves, and sends it our RAM map.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from memexpose.hw import MiniPC
from memexpose.remote import RemotePCIDevice, RemoteState

pytestmark = [pytest.mark.qemu, pytest.mark.integration, pytest.mark.timeout(30)]


def test_remote_pci_drives_qemus_x_remote() -> None:
    binary = shutil.which("qemu-system-x86_64")
    assert binary is not None
    vm_end, dev_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    qemu = subprocess.Popen([binary, "-machine", "x-remote", "-nodefaults", "-display", "none",
                             "-device", "pci-testdev,id=dev0", "-object",
                             f"x-remote-object,id=robj0,devid=dev0,fd={dev_end.fileno()}"],
                            pass_fds=[dev_end.fileno()], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    dev_end.close()
    try:
        pc = MiniPC(ram_size=16 << 20)
        proxy = pc.add(RemotePCIDevice(vm_end, id="testdev"), slot=4)
        assert (proxy.vendor_id, proxy.device_id) == (0x1B36, 0x0005)
        assert [(b.index, b.size, b.is_io) for b in proxy.bars if b is not None] == \
            [(0, 0x1000, False), (1, 0x100, True)]
        pc.enumerate()
        drv = pc.driver()
        assert drv.readl(proxy.bars[0].addr) == 0  # type: ignore[union-attr]
        assert drv.inb(proxy.bars[1].addr) == 0  # type: ignore[union-attr]
        assert "PCI device 1b36:0005" in pc.info_pci() and 'id "testdev"' in pc.info_pci()
        stats = proxy.statistics()
        assert stats["state"] == "connected" and stats["ram_map"] == [(0, 16 << 20, 0)]
        assert qemu.poll() is None  # it took our SYNC_SYSMEM and SET_IRQFD
        proxy.close()
        assert proxy.state is RemoteState.CLOSED
        out, _ = qemu.communicate(timeout=10)  # x-remote shuts down at end of stream
        assert qemu.returncode == 0, out.decode()
    finally:
        vm_end.close()
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        if qemu.stdout is not None:
            qemu.stdout.close()
