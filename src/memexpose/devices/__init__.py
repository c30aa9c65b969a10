"""Concrete device models on the hw layer.

* ``EduDevice``: QEMU's ``edu`` teaching device, as QEMU 7.2 runs it (the
  reference device for DMA and, later, remote devices);
* ``PL011``: the ARM PrimeCell UART, for bare-metal consoles;
* ``Serial16550``: a 16550A UART for x86 port I/O; ``PCISerial`` puts one
  behind a PCI I/O BAR (QEMU's ``pci-serial``);
* ``MemexposePCI`` (``memexpose-pci``, 1af4:1111) and ``MemexposePlatform``
  (``memexpose-platform``, a sysbus device with a device-tree node): the
  memexpose register block and window over a link endpoint
  (docs/memexpose-devices.md); ``MemexposeCore`` is the shared block,
  ``MemexposeReg``/``MemexposeStatus`` its offsets and STATUS bits;
  ``memexpose_pci_from_options`` builds the PCI device from string options
  (``serve-device``);
* ``run_edu_script``: one driver script for an edu, run against stock QEMU
  (``memexpose.qemu.QtestClient``) and against ``EduDevice``
  (``memexpose.hw.QtestLikeDriver``) to compare.
"""

from memexpose.devices.edu import EduDevice, factorial32
from memexpose.devices.edu_script import EduScriptDriver, run_edu_script
from memexpose.devices.memexpose_common import (
    MEMEXPOSE_REGS_SIZE,
    MemexposeCore,
    MemexposeReg,
    MemexposeStatistics,
    MemexposeStatus,
    make_transport,
)
from memexpose.devices.memexpose_pci import (
    MEMEXPOSE_PCI_DEVICE_ID,
    MEMEXPOSE_PCI_OPTIONS,
    MEMEXPOSE_PCI_VENDOR_ID,
    MemexposePCI,
    memexpose_pci_from_options,
)
from memexpose.devices.memexpose_platform import (
    MEMEXPOSE_COMPATIBLE,
    DeviceTreeNode,
    MemexposePlatform,
)
from memexpose.devices.uart import PL011, PCISerial, Serial16550

__all__ = [
    "MEMEXPOSE_COMPATIBLE",
    "MEMEXPOSE_PCI_DEVICE_ID",
    "MEMEXPOSE_PCI_OPTIONS",
    "MEMEXPOSE_PCI_VENDOR_ID",
    "MEMEXPOSE_REGS_SIZE",
    "PL011",
    "DeviceTreeNode",
    "EduDevice",
    "EduScriptDriver",
    "MemexposeCore",
    "MemexposePCI",
    "MemexposePlatform",
    "MemexposeReg",
    "MemexposeStatistics",
    "MemexposeStatus",
    "PCISerial",
    "Serial16550",
    "factorial32",
    "make_transport",
    "memexpose_pci_from_options",
    "run_edu_script",
]
