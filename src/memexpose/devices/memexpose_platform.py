"""``memexpose-platform``: the memexpose register block and window as a system-bus device.

The seed's ``memexpose-memdev`` for boards without PCI (arm ``virt``):

* MMIO 0: the 0x1000-byte register block (``memexpose_common``; the same
  layout as ``memexpose-pci`` BAR0);
* MMIO 1: the window onto the peer's exposed memory (``window_size``
  bytes). Unlike the seed, it is a sysbus region like the registers, so a
  board places both (``plug``, or ``mmio_map``);
* IRQ 0: a level line, high while the RX queue is non-empty.

``fdt_node`` describes the device for a device tree (compatible
``"memexpose-memregion"``, two ``reg`` pairs, ``interrupts``); the board
adds it to its tree.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from memexpose.devices.memexpose_common import (
    MEMEXPOSE_REGS_SIZE,
    MemexposeCore,
    MemexposeStatistics,
)
from memexpose.hw import IrqLine, SysBusDevice
from memexpose.link import Exposure, MemexposeEndpoint, Transport
from memexpose.memory import MemoryRegion

__all__ = ["MEMEXPOSE_COMPATIBLE", "DeviceTreeNode", "MemexposePlatform"]

MEMEXPOSE_COMPATIBLE = ("memexpose-memregion", "memexpose,platform")
"""The ``compatible`` strings of the device-tree node: the seed's, then ours."""

FdtValue = int | str | bytes | list[int] | list[str]


@dataclass(frozen=True)
class DeviceTreeNode:
    """A device-tree node a board can include: name and properties, in order.

    Property values are what ``memexpose.machine.FdtNode`` takes: ``int``
    (one cell), ``list[int]`` (cells), ``str``, ``list[str]``, ``bytes``.
    A board adds it with ``root.children.append(FdtNode(node.name,
    dict(node.props)))``.

    Attributes:
        name: ``"memexpose@<register base in hex>"``.
        props: property name (``"reg-names"``) to value.
    """

    name: str
    props: dict[str, FdtValue] = field(default_factory=dict)

    def dts(self, indent: str = "\t") -> str:
        """Return the node as device-tree source text (``name { ... };``)."""
        lines = [f"{self.name} {{"]
        for key, value in self.props.items():
            lines.append(f"{indent}{key} = {_dts_value(value)};")
        lines.append("};")
        return "\n".join(lines) + "\n"


def _dts_value(value: FdtValue) -> str:
    if isinstance(value, int):
        return f"<{value:#x}>"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bytes):
        return "[" + " ".join(f"{b:02x}" for b in value) + "]"
    if all(isinstance(v, str) for v in value):
        return ", ".join(f'"{v}"' for v in value)
    return "<" + " ".join(f"{v:#x}" for v in value) + ">"  # type: ignore[str-format]


def _cells(value: int, count: int) -> list[int]:
    return [(value >> (32 * (count - 1 - i))) & 0xFFFF_FFFF for i in range(count)]


class MemexposePlatform(SysBusDevice):
    """The ``memexpose-platform`` system-bus device.

    Args:
        transport: how to reach the peer: a ``Transport``, ``"unix:PATH"``,
            ``"tcp:HOST:PORT"``, or a UNIX socket path.
        listen: for a path or address: listen (True) or connect (False).
        exposure: what the peer may reach of this machine's memory; None
            exports nothing.
        window_size: bytes of MMIO 1, a power of two from 4 KiB.
        lock: the machine lock; default the exposure's. Required without an
            exposure.
        name: names the link, its threads and regions.
        role, timeout, connect_timeout, readonly_share, direct: as
            ``MemexposePCI``.
        path, id: as ``SysBusDevice``.

    Raises:
        ConfigError: a bad window size, no lock, or what the endpoint refuses.

    Invariants:
        * ``mmio(0)`` is ``core.regs`` and ``mmio(1)`` is ``core.window``;
        * ``irq(0).level == core.level``.
    """

    def __init__(self, transport: Transport | str | os.PathLike[str], *, listen: bool = False,
                 exposure: Exposure | None = None, window_size: int = 0x1000,
                 lock: threading.RLock | None = None, name: str = "memexpose-platform",
                 role: int | None = None, timeout: float = 2.0, connect_timeout: float = 5.0,
                 readonly_share: str = "seal", direct: bool = True, path: str | None = None,
                 id: str | None = None) -> None:
        super().__init__("memexpose-platform", path=path, id=id)
        self.irq_line = self.init_irq(f"{name}.irq")
        self.core = MemexposeCore(
            name, transport, listen=listen, exposure=exposure, window_size=window_size,
            lock=lock, irq_handler=self.irq_line.set_level, owner=self.owner, role=role,
            timeout=timeout, connect_timeout=connect_timeout, readonly_share=readonly_share,
            direct=direct)
        self.init_mmio(self.core.regs)
        self.init_mmio(self.core.window)

    @property
    def endpoint(self) -> MemexposeEndpoint:
        """The link endpoint."""
        return self.core.endpoint

    @property
    def regs(self) -> MemoryRegion:
        """MMIO 0, the register block."""
        return self.core.regs

    @property
    def window(self) -> MemoryRegion:
        """MMIO 1, the window onto the peer's memory."""
        return self.core.window

    def plug(self, machine: Any) -> IrqLine:
        """Put the device into ``machine``'s memexpose slot and wire its IRQ; return that line.

        ``machine`` is a ``memexpose.machine.Machine`` built by a board
        (``machine.board.plug_slot`` places MMIO 0 and 1). The device is
        closed with the machine.

        Raises:
            MachineError: the slot is taken or the window is too large for it.
        """
        line = machine.board.plug_slot(machine, self.core.regs, self.core.window, device=self)
        self.connect_irq(0, line)
        machine.add_device(self)
        machine.add_closer(self.close)
        return line

    def fdt_node(self, regs_addr: int, window_addr: int, *,
                 interrupts: list[int] | tuple[int, ...] | None = None,
                 address_cells: int = 2, size_cells: int = 2) -> DeviceTreeNode:
        """Describe the device at these addresses as a device-tree node.

        Args:
            regs_addr: where MMIO 0 (the registers) is mapped.
            window_addr: where MMIO 1 (the window) is mapped.
            interrupts: the ``interrupts`` cells, e.g. ``[0, 10, 4]`` for GIC
                SPI 10, level-high (the seed's); None leaves the property out
                (a board without an interrupt controller).
            address_cells, size_cells: the parent's ``#address-cells`` /
                ``#size-cells`` (2 and 2 on ``virt``).

        Returns:
            ``memexpose@<regs_addr>`` with ``compatible``, ``reg`` (registers,
            then window), ``reg-names``, and ``interrupts`` if given.
        """
        reg = (_cells(regs_addr, address_cells) + _cells(MEMEXPOSE_REGS_SIZE, size_cells)
               + _cells(window_addr, address_cells) + _cells(self.core.window_size, size_cells))
        props: dict[str, FdtValue] = {
            "compatible": list(MEMEXPOSE_COMPATIBLE),
            "reg": reg,
            "reg-names": ["registers", "window"],
        }
        if interrupts is not None:
            props["interrupts"] = list(interrupts)
        return DeviceTreeNode(f"memexpose@{regs_addr:x}", props)

    def reset(self) -> None:
        """Disable the link, clear the RX queue and the registers (IRQ drops)."""
        with self.core.lock:
            self.core.reset()

    def close(self) -> None:
        """Disconnect and release the transport. Final."""
        self.core.close()

    def statistics(self) -> MemexposeStatistics:
        """Return the device and link counters."""
        return self.core.statistics()

    def _check_invariants(self) -> None:
        assert self.mmio(0) is self.core.regs and self.mmio(1) is self.core.window
        assert self.irq_line.level == self.core.level
        self.core._check_invariants()

    def __repr__(self) -> str:
        level = "high" if self.irq_line.level else "low"
        return (f"<MemexposePlatform {self.core.name!r} {self.core.endpoint.state.name} "
                f"window={self.core.window_size:#x} irq={level}>")
