"""Concrete device models on the hw layer.

* ``EduDevice``: QEMU's ``edu`` teaching device, as QEMU 7.2 runs it (the
  reference device for DMA and, later, remote devices);
* ``PL011``: the ARM PrimeCell UART, for bare-metal consoles;
* ``Serial16550``: a 16550A UART for x86 port I/O; ``PCISerial`` puts one
  behind a PCI I/O BAR (QEMU's ``pci-serial``);
* ``run_edu_script``: one driver script for an edu, run against stock QEMU
  (``memexpose.qemu.QtestClient``) and against ``EduDevice``
  (``memexpose.hw.QtestLikeDriver``) to compare.
"""

from memexpose.devices.edu import EduDevice, factorial32
from memexpose.devices.edu_script import EduScriptDriver, run_edu_script
from memexpose.devices.uart import PL011, PCISerial, Serial16550

__all__ = [
    "PL011",
    "EduDevice",
    "EduScriptDriver",
    "PCISerial",
    "Serial16550",
    "factorial32",
    "run_edu_script",
]
