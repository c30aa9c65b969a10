"""``info pci`` text, line for line in the format of QEMU 7.2's HMP command.

For each function of the root bus, in devfn order (functions behind a
bridge follow the bridge, when its secondary bus number is set)::

      Bus  0, device   4, function 0:
        Class 0255: PCI device 1234:11e8
          PCI subsystem 1af4:1100
          IRQ 11, pin A
          BAR0: 32 bit memory at 0xfe000000 [0xfe0fffff].
          id ""

Classes QEMU knows print their name ("Host bridge"), others ``Class NNNN``
with the 16-bit class in *decimal*. An unmapped BAR prints its address as
``0xffffffffffffffff`` and its end as ``addr + size - 1`` wrapped to 64
bits, exactly as QEMU does. The IRQ is ``PCI_INTERRUPT_LINE`` (what
firmware wrote), shown when the function has an interrupt pin.
"""

from __future__ import annotations

from memexpose.hw.pci import regs as R
from memexpose.hw.pci.bridge import PCIBridge
from memexpose.hw.pci.bus import PCIBus
from memexpose.hw.pci.device import PCIDevice, pci_func, pci_slot
from memexpose.hw.pci.host import PCIHost

__all__ = ["PCI_CLASS_NAMES", "format_info_pci"]

PCI_CLASS_NAMES: dict[int, str] = {
    0x0001: "VGA controller", 0x0100: "SCSI controller", 0x0101: "IDE controller",
    0x0102: "Floppy controller", 0x0103: "IPI controller", 0x0104: "RAID controller",
    0x0106: "SATA controller", 0x0107: "SAS controller", 0x0180: "Storage controller",
    0x0200: "Ethernet controller", 0x0201: "Token Ring controller",
    0x0202: "FDDI controller", 0x0203: "ATM controller", 0x0280: "Network controller",
    0x0300: "VGA controller", 0x0301: "XGA controller", 0x0302: "3D controller",
    0x0380: "Display controller", 0x0400: "Video controller", 0x0401: "Audio controller",
    0x0402: "Phone", 0x0403: "Audio controller", 0x0480: "Multimedia controller",
    0x0500: "RAM controller", 0x0501: "Flash controller", 0x0580: "Memory controller",
    0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0602: "EISA bridge", 0x0603: "MC bridge",
    0x0604: "PCI bridge", 0x0605: "PCMCIA bridge", 0x0606: "NUBUS bridge",
    0x0607: "CARDBUS bridge", 0x0608: "RACEWAY bridge", 0x0680: "Bridge",
    0x0700: "Serial port", 0x0701: "Parallel port", 0x0800: "Interrupt controller",
    0x0801: "DMA controller", 0x0802: "Timer", 0x0803: "RTC", 0x0900: "Keyboard",
    0x0901: "Pen", 0x0902: "Mouse", 0x0A00: "Dock station", 0x0B00: "i386 cpu",
    0x0C00: "Firewire controller", 0x0C01: "Access bus controller",
    0x0C02: "SSA controller", 0x0C03: "USB controller", 0x0C04: "Fibre channel controller",
    0x0C05: "SMBus",
}
"""QEMU's ``pci_class_descriptions`` (class and subclass to the name ``info pci`` prints)."""

_U64 = (1 << 64) - 1


def _device_lines(dev: PCIDevice, bus_num: int, out: list[str]) -> None:
    cfg = dev.config
    out.append(f"  Bus {bus_num:2d}, device {pci_slot(dev.devfn):3d}, "
               f"function {pci_func(dev.devfn)}:")
    klass = cfg.get_word(R.PCI_CLASS_DEVICE)
    desc = PCI_CLASS_NAMES.get(klass, f"Class {klass:04d}")
    out.append(f"    {desc}: PCI device {cfg.get_word(R.PCI_VENDOR_ID):04x}:"
               f"{cfg.get_word(R.PCI_DEVICE_ID):04x}")
    header = cfg.get_byte(R.PCI_HEADER_TYPE) & ~R.PCI_HEADER_TYPE_MULTI_FUNCTION
    if header == R.PCI_HEADER_TYPE_NORMAL:
        out.append(f"      PCI subsystem {cfg.get_word(R.PCI_SUBSYSTEM_VENDOR_ID):04x}:"
                   f"{cfg.get_word(R.PCI_SUBSYSTEM_ID):04x}")
    pin = cfg.get_byte(R.PCI_INTERRUPT_PIN)
    if pin:
        out.append(f"      IRQ {cfg.get_byte(R.PCI_INTERRUPT_LINE)}, pin {chr(ord('A') + pin - 1)}")
    child: PCIBus | None = None
    if isinstance(dev, PCIBridge):
        secondary = cfg.get_byte(R.PCI_SECONDARY_BUS)
        out.append(f"      BUS {cfg.get_byte(R.PCI_PRIMARY_BUS)}.")
        out.append(f"      secondary bus {secondary}.")
        out.append(f"      subordinate bus {cfg.get_byte(R.PCI_SUBORDINATE_BUS)}.")
        out.append(f"      IO range [0x{dev.io_base():04x}, 0x{dev.io_limit():04x}]")
        out.append(f"      memory range [0x{dev.mem_base():08x}, 0x{dev.mem_limit():08x}]")
        out.append(f"      prefetchable memory range [0x{dev.pref_base():08x}, "
                   f"0x{dev.pref_limit():08x}]")
        if secondary and dev.bus is not None:
            child = dev.bus.find_bus(secondary)
    for bar in dev.bars:
        if bar is None:
            continue
        last = (bar.addr + bar.size - 1) & _U64
        if bar.is_io:
            out.append(f"      BAR{bar.index}: I/O at 0x{bar.addr:04x} [0x{last:04x}].")
        else:
            out.append(f"      BAR{bar.index}: {64 if bar.is_64 else 32} bit"
                       f"{' prefetchable' if bar.prefetchable else ''} memory at "
                       f"0x{bar.addr:08x} [0x{last:08x}].")
    out.append(f'      id "{dev.id or ""}"')
    if child is not None:
        for sub in child.iter_devices():
            _device_lines(sub, child.number, out)


def format_info_pci(where: PCIHost | PCIBus | list[PCIHost]) -> str:
    """Return the ``info pci`` text for one host (or bus), or several hosts in order."""
    hosts_or_buses = where if isinstance(where, list) else [where]
    out: list[str] = []
    for item in hosts_or_buses:
        bus = item.bus if isinstance(item, PCIHost) else item
        for dev in bus.iter_devices():
            _device_lines(dev, bus.number, out)
    return "\n".join(out) + ("\n" if out else "")
