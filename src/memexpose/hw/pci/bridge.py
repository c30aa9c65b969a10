"""A PCI-to-PCI bridge: a type 1 header, a secondary bus, and forwarding windows.

QEMU's ``hw/pci/pci_bridge.c`` (the device is like QEMU's ``pci-bridge``,
1b36:0001, without its SHPC and MSI). The bridge owns a secondary bus with
its own memory space (``pci_bridge_pci``, 2**64) and I/O space
(``pci_bridge_io``, 4 GiB). Three windows show parts of them upstream, as
aliases in the parent bus's spaces at priority 1:

* ``pci_bridge_io``: ``[IO base, IO limit | 0xfff]``, while I/O decoding is on;
* ``pci_bridge_mem``: ``[memory base, memory limit | 0xfffff]``;
* ``pci_bridge_pref_mem``: the prefetchable window (64-bit capable).

A window whose limit is below its base, or whose decoding is off, is an
alias of size 0 (QEMU keeps it in the tree). Config cycles for bus numbers
in ``[secondary, subordinate]`` are forwarded; setting the secondary bus
reset bit (0 -> 1) resets every device behind the bridge.
"""

from __future__ import annotations

from memexpose.errors import HwModelError
from memexpose.hw.pci import regs as R
from memexpose.hw.pci.bus import PCIBus
from memexpose.hw.pci.device import PCIBar, PCIDevice
from memexpose.memory import MemoryRegion

__all__ = ["PCIBridge"]

_STATUS_W1C = (R.PCI_STATUS_PARITY | R.PCI_STATUS_SIG_TARGET_ABORT
               | R.PCI_STATUS_REC_TARGET_ABORT | R.PCI_STATUS_REC_MASTER_ABORT
               | R.PCI_STATUS_SIG_SYSTEM_ERROR | R.PCI_STATUS_DETECTED_PARITY)


class PCIBridge(PCIDevice):
    """A PCI-to-PCI bridge with a conventional PCI secondary bus.

    Args:
        vendor_id, device_id: default QEMU's pci-bridge, 1b36:0001.
        bus_name: name of the secondary bus (default ``<id or type>.bus``).
        Other arguments as ``PCIDevice``.

    Invariants:
        * ``secondary_bus`` exists while the bridge is on a bus;
        * each window alias matches the bridge's registers and command bits
          after every config write (``_update_windows``).
    """

    header_type = R.PCI_HEADER_TYPE_BRIDGE

    def __init__(self, type_name: str = "pci-bridge", *,
                 vendor_id: int = R.PCI_VENDOR_ID_REDHAT, device_id: int = 0x0001,
                 revision: int = 0, bus_name: str | None = None, express: bool = False,
                 multifunction: bool = False, id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(type_name, vendor_id=vendor_id, device_id=device_id, revision=revision,
                         class_code=R.PCI_CLASS_BRIDGE_PCI, interrupt_pin=1, express=express,
                         multifunction=multifunction, id=id, path=path)
        self.bus_name = bus_name or f"{id or type_name}.bus"
        cfg = self.config
        # QEMU's pci_bridge_initfn + pci_init_mask_bridge.
        status = R.PCI_STATUS_66MHZ | R.PCI_STATUS_FAST_BACK
        cfg.set(R.PCI_STATUS, cfg.get_word(R.PCI_STATUS) | status, 2)
        cfg.set(R.PCI_SEC_STATUS, status, 2)
        cfg.set_w1cmask(R.PCI_SEC_STATUS, _STATUS_W1C, 2)
        cfg.set_wmask(R.PCI_PRIMARY_BUS, 0xFFFFFFFF, 4)
        cfg.wmask[R.PCI_IO_BASE] = R.PCI_IO_RANGE_MASK & 0xFF
        cfg.wmask[R.PCI_IO_LIMIT] = R.PCI_IO_RANGE_MASK & 0xFF
        cfg.set_wmask(R.PCI_MEMORY_BASE, R.PCI_MEMORY_RANGE_MASK & 0xFFFF, 2)
        cfg.set_wmask(R.PCI_MEMORY_LIMIT, R.PCI_MEMORY_RANGE_MASK & 0xFFFF, 2)
        cfg.set_wmask(R.PCI_PREF_MEMORY_BASE, R.PCI_PREF_RANGE_MASK & 0xFFFF, 2)
        cfg.set_wmask(R.PCI_PREF_MEMORY_LIMIT, R.PCI_PREF_RANGE_MASK & 0xFFFF, 2)
        cfg.set_wmask(R.PCI_PREF_BASE_UPPER32, 0xFFFFFFFFFFFFFFFF, 8)
        cfg.config[R.PCI_IO_BASE] |= R.PCI_IO_RANGE_TYPE_16
        cfg.config[R.PCI_IO_LIMIT] |= R.PCI_IO_RANGE_TYPE_16
        cfg.set(R.PCI_PREF_MEMORY_BASE, R.PCI_PREF_RANGE_TYPE_64, 2)
        cfg.set(R.PCI_PREF_MEMORY_LIMIT, R.PCI_PREF_RANGE_TYPE_64, 2)
        # Parity .. discard-SERR, except discard-status, which is write-1-to-clear.
        cfg.set_wmask(R.PCI_BRIDGE_CONTROL, 0x0BFF, 2)
        cfg.set_w1cmask(R.PCI_BRIDGE_CONTROL, R.PCI_BRIDGE_CTL_DISCARD_STATUS, 2)
        self.secondary_bus: PCIBus | None = None
        self.sec_mem: MemoryRegion | None = None
        self.sec_io: MemoryRegion | None = None
        self._windows: list[tuple[MemoryRegion, MemoryRegion]] = []

    # -- windows -----------------------------------------------------------------------

    def io_base(self) -> int:
        """Start of the I/O window (QEMU's ``pci_bridge_get_base`` for I/O)."""
        return self._io_value(R.PCI_IO_BASE, R.PCI_IO_BASE_UPPER16)

    def io_limit(self) -> int:
        """Last address of the I/O window (inclusive)."""
        return self._io_value(R.PCI_IO_LIMIT, R.PCI_IO_LIMIT_UPPER16) | 0xFFF

    def _io_value(self, reg: int, upper: int) -> int:
        cfg = self.config
        value = (cfg.get_byte(reg) & R.PCI_IO_RANGE_MASK & 0xFF) << 8
        if cfg.get_byte(reg) & R.PCI_IO_RANGE_TYPE_32:
            value |= cfg.get_word(upper) << 16
        return value

    def mem_base(self) -> int:
        """Start of the non-prefetchable memory window."""
        return (self.config.get_word(R.PCI_MEMORY_BASE) & 0xFFF0) << 16

    def mem_limit(self) -> int:
        """Last address of the non-prefetchable memory window (inclusive)."""
        return (self.config.get_word(R.PCI_MEMORY_LIMIT) & 0xFFF0) << 16 | 0xFFFFF

    def pref_base(self) -> int:
        """Start of the prefetchable memory window."""
        return self._pref_value(R.PCI_PREF_MEMORY_BASE, R.PCI_PREF_BASE_UPPER32)

    def pref_limit(self) -> int:
        """Last address of the prefetchable memory window (inclusive)."""
        return self._pref_value(R.PCI_PREF_MEMORY_LIMIT, R.PCI_PREF_LIMIT_UPPER32) | 0xFFFFF

    def _pref_value(self, reg: int, upper: int) -> int:
        word = self.config.get_word(reg)
        value = (word & 0xFFF0) << 16
        if word & R.PCI_PREF_RANGE_TYPE_64:
            value |= self.config.get_long(upper) << 32
        return value

    def secondary_in_range(self, bus_num: int) -> bool:
        """Whether config cycles for ``bus_num`` go through this bridge."""
        cfg = self.config
        return not cfg.get_word(R.PCI_BRIDGE_CONTROL) & R.PCI_BRIDGE_CTL_BUS_RESET and \
            cfg.get_byte(R.PCI_SECONDARY_BUS) <= bus_num <= cfg.get_byte(R.PCI_SUBORDINATE_BUS)

    def _update_windows(self) -> None:
        """Re-create the three window aliases (QEMU's ``pci_bridge_update_mappings``)."""
        bus = self.bus
        if bus is None or self.sec_mem is None or self.sec_io is None:
            return
        cmd = self.config.get_word(R.PCI_COMMAND)
        io_on = bool(cmd & R.PCI_COMMAND_IO)
        mem_on = bool(cmd & R.PCI_COMMAND_MEMORY)
        specs = (
            ("pci_bridge_io", self.sec_io, bus.io_space, self.io_base(), self.io_limit(), io_on),
            ("pci_bridge_mem", self.sec_mem, bus.mem_space, self.mem_base(), self.mem_limit(),
             mem_on),
            ("pci_bridge_pref_mem", self.sec_mem, bus.mem_space, self.pref_base(),
             self.pref_limit(), mem_on),
        )
        with bus.system.transaction():
            for alias, parent in self._windows:
                parent.del_subregion(alias)
            self._windows = []
            for name, target, parent, base, limit, enabled in specs:
                # As QEMU: the alias sits at ``base`` even when empty or past the
                # parent's end (rendering clips it).
                size = limit + 1 - base if enabled and limit >= base else 0
                alias = MemoryRegion.init_alias(name, target, base, size, owner=self.owner)
                parent.add_subregion_overlap(base, alias, 1)
                self._windows.append((alias, parent))

    @property
    def windows(self) -> tuple[MemoryRegion, ...]:
        """The three window aliases (I/O, memory, prefetchable memory)."""
        return tuple(alias for alias, _ in self._windows)

    # -- hooks ---------------------------------------------------------------------------

    def realize(self) -> None:
        """Create the secondary bus and its spaces, and the (empty) windows."""
        bus = self.bus
        assert bus is not None
        self.sec_mem = MemoryRegion.init_container("pci_bridge_pci", 1 << 64, owner=self.owner)
        self.sec_io = MemoryRegion.init_container("pci_bridge_io", 1 << 32, owner=self.owner)
        self.secondary_bus = PCIBus(self.bus_name, system=bus.system, mem_space=self.sec_mem,
                                    io_space=self.sec_io, parent_bridge=self,
                                    express=self.config.express)
        bus.children.append(self.secondary_bus)
        self._update_windows()

    def unrealize(self) -> None:
        """Unplug everything behind the bridge and drop the windows."""
        bus = self.bus
        sec = self.secondary_bus
        if sec is not None:
            for dev in list(sec.iter_devices()):
                sec.remove_device(dev)
            if bus is not None and sec in bus.children:
                bus.children.remove(sec)
        if bus is not None:
            with bus.system.transaction():
                for alias, parent in self._windows:
                    parent.del_subregion(alias)
        self._windows = []
        self.secondary_bus = None

    def do_config_write(self, offset: int, value: int, size: int) -> None:
        """Default config write, then windows and secondary reset (``pci_bridge_write_config``)."""
        old_ctl = self.config.get_word(R.PCI_BRIDGE_CONTROL)
        super().do_config_write(offset, value, size)
        end = offset + size

        def hit(reg: int, n: int) -> bool:
            return offset < reg + n and reg < end

        if hit(R.PCI_COMMAND, 2) or hit(R.PCI_IO_BASE, 2) or hit(R.PCI_MEMORY_BASE, 20) or \
                hit(R.PCI_BRIDGE_CONTROL, 2):
            self._update_windows()
        new_ctl = self.config.get_word(R.PCI_BRIDGE_CONTROL)
        if ~old_ctl & new_ctl & R.PCI_BRIDGE_CTL_BUS_RESET and self.secondary_bus is not None:
            self.secondary_bus.reset()

    def device_reset(self) -> None:
        """Reset bus numbers, windows and bridge control (QEMU's ``pci_bridge_reset``)."""
        cfg = self.config
        for reg in (R.PCI_PRIMARY_BUS, R.PCI_SECONDARY_BUS, R.PCI_SUBORDINATE_BUS,
                    R.PCI_SEC_LATENCY_TIMER):
            cfg.config[reg] = 0
        cfg.config[R.PCI_IO_BASE] &= ~(R.PCI_IO_RANGE_MASK & 0xFF) & 0xFF
        cfg.config[R.PCI_IO_LIMIT] &= ~(R.PCI_IO_RANGE_MASK & 0xFF) & 0xFF
        for reg in (R.PCI_MEMORY_BASE, R.PCI_MEMORY_LIMIT, R.PCI_PREF_MEMORY_BASE,
                    R.PCI_PREF_MEMORY_LIMIT):
            cfg.set(reg, cfg.get_word(reg) & ~0xFFF0, 2)
        cfg.set(R.PCI_PREF_BASE_UPPER32, 0, 4)
        cfg.set(R.PCI_PREF_LIMIT_UPPER32, 0, 4)
        cfg.set(R.PCI_BRIDGE_CONTROL, 0, 2)
        self._update_windows()
        if self.secondary_bus is not None:
            self.secondary_bus.reset()

    def register_bar(self, index: int, region: MemoryRegion, *, io: bool = False,
                     mem64: bool = False, prefetchable: bool = False,
                     size: int | None = None) -> PCIBar:
        """As ``PCIDevice.register_bar``, for BAR0 and BAR1 only (type 1 header)."""
        if index > 1:
            raise HwModelError(f"{self.type_name}: a bridge has BAR0 and BAR1 only")
        return super().register_bar(index, region, io=io, mem64=mem64,
                                    prefetchable=prefetchable, size=size)
