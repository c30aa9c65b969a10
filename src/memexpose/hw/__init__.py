"""The hw layer: interrupt lines, a virtual clock, sysbus, and PCI.

* ``IrqLine``/``SharedIrqLine``: level lines with listeners; OR-ed sharing;
* ``VirtualClock``/``Timer``: deterministic virtual time for device timers;
* ``SysBusDevice``: MMIO regions and IRQ outputs a board places and wires;
* PCI (``hw/pci/``): ``PCIConfigSpace`` (masks, w1c, capabilities),
  ``PCIDevice`` (BARs mapped where the guest programs them, INTx, DMA
  through the bus-master address space), ``MSICap``/``MSIXCap``, ``PCIBus``,
  ``PCIBridge``, ``PCIHost`` (ECAM and 0xCF8/0xCFC), ``PCIEnumerator`` (what
  firmware does), ``format_info_pci`` (QEMU's ``info pci`` text);
* ``explain_access``/``DmaFault``: why a failed access failed;
* ``QtestLikeDriver``: qtest's verbs against our models; ``MiniPC``: a
  PC-shaped memory map around a PCI host, for tests and examples;
* ``pci_regs``: the config-space register names (a module).

docs/pci.md describes the model. This layer imports only ``memexpose.memory``
(and ``memexpose.errors``).
"""

from memexpose.hw.clock import Timer, VirtualClock
from memexpose.hw.dma import DmaFault, explain_access
from memexpose.hw.irq import IrqLine, IrqListener, SharedIrqLine
from memexpose.hw.minipc import MiniPC
from memexpose.hw.pci import regs as pci_regs
from memexpose.hw.pci.bridge import PCIBridge
from memexpose.hw.pci.bus import PCIBus
from memexpose.hw.pci.config import PCIConfigSpace
from memexpose.hw.pci.device import (
    PCI_BAR_UNMAPPED,
    PCIBar,
    PCIDevice,
    pci_devfn,
    pci_func,
    pci_slot,
)
from memexpose.hw.pci.enumerate import (
    AssignedBar,
    EnumeratedFunction,
    EnumerationResult,
    PCIEnumerator,
)
from memexpose.hw.pci.host import (
    ConfigAccess,
    EcamConfigAccess,
    LegacyConfigAccess,
    PCIHost,
    PCIHostBridgeDevice,
    q35_map_irq,
    swizzle_map_irq,
)
from memexpose.hw.pci.info import PCI_CLASS_NAMES, format_info_pci
from memexpose.hw.pci.msi import MSICap
from memexpose.hw.pci.msix import MSIXCap, msix_init_exclusive_bar
from memexpose.hw.qtestlike import QtestLikeDriver
from memexpose.hw.sysbus import SysBusDevice, device_owner

__all__ = [
    "PCI_BAR_UNMAPPED",
    "PCI_CLASS_NAMES",
    "AssignedBar",
    "ConfigAccess",
    "DmaFault",
    "EcamConfigAccess",
    "EnumeratedFunction",
    "EnumerationResult",
    "IrqLine",
    "IrqListener",
    "LegacyConfigAccess",
    "MSICap",
    "MSIXCap",
    "MiniPC",
    "PCIBar",
    "PCIBridge",
    "PCIBus",
    "PCIConfigSpace",
    "PCIDevice",
    "PCIEnumerator",
    "PCIHost",
    "PCIHostBridgeDevice",
    "QtestLikeDriver",
    "SharedIrqLine",
    "SysBusDevice",
    "Timer",
    "VirtualClock",
    "device_owner",
    "explain_access",
    "format_info_pci",
    "msix_init_exclusive_bar",
    "pci_devfn",
    "pci_func",
    "pci_regs",
    "pci_slot",
    "q35_map_irq",
    "swizzle_map_irq",
]
