"""A firmware-like PCI enumerator: scan, number buses, size and place BARs, enable.

What SeaBIOS and UEFI do before an OS boots, usable from Python against
any ``ConfigAccess`` (the host's Python path, ECAM in an address space, or
ports 0xCF8/0xCFC):

1. **Scan** each bus: slot by slot, function 0, then functions 1..7 when
   function 0 has the multi-function bit. Behind each bridge give the next
   bus number (primary, secondary, subordinate = 0xff while scanning, then
   the highest number found).
2. **Size** every BAR with decoding off: save, write all-ones, read back,
   restore; a 64-bit BAR sizes both halves; the ROM is sized with
   ``0xfffff800`` (enable bit clear). Size = ``~mask + 1``.
3. **Place** resources largest alignment first, naturally aligned, in the
   windows given: I/O BARs in ``io_window``; 32-bit memory BARs and ROMs
   in ``mem_window``; 64-bit BARs in ``mem64_window`` when given. Behind a
   bridge, resources are packed into the bridge's I/O (4 KiB granules),
   memory and prefetchable (1 MiB granules) windows, which are placed like
   BARs one level up and programmed into the bridge.
4. **Enable** I/O and memory decoding (and bus mastering if asked) and
   write ``PCI_INTERRUPT_LINE`` from ``irq_for`` if given. ROMs stay
   disabled (firmware enables them only to run them).

Windows must not overlap ``reserved`` ranges (RAM): ``PCIResourceError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from memexpose.errors import PCIResourceError
from memexpose.hw.pci import regs as R
from memexpose.hw.pci.host import ConfigAccess

__all__ = ["AssignedBar", "EnumeratedFunction", "EnumerationResult", "PCIEnumerator"]

_IO_GRANULE = 0x1000
_MEM_GRANULE = 0x100000


@dataclass(slots=True)
class AssignedBar:
    """One BAR as the enumerator found and placed it.

    Attributes:
        index: 0..5, or 6 for the ROM.
        io: an I/O BAR.
        is_64: a 64-bit memory BAR.
        prefetchable: the prefetchable bit.
        size: bytes (from sizing).
        addr: the address written, or None when it could not be placed.
    """

    index: int
    io: bool
    is_64: bool
    prefetchable: bool
    size: int
    addr: int | None = None

    @property
    def kind(self) -> str:
        """``io``, ``mem32``, ``mem64`` or ``rom``."""
        if self.index == R.PCI_ROM_SLOT:
            return "rom"
        return "io" if self.io else ("mem64" if self.is_64 else "mem32")


@dataclass(slots=True)
class EnumeratedFunction:
    """A function found by the scan."""

    bus: int
    devfn: int
    vendor_id: int
    device_id: int
    class_code: int
    header_type: int
    interrupt_pin: int
    bars: list[AssignedBar] = field(default_factory=list)
    secondary_bus: int | None = None
    subordinate_bus: int | None = None
    interrupt_line: int | None = None
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    """For bridges: ``{"io"|"mem"|"pref": (base, limit)}`` of the enabled windows."""

    @property
    def slot(self) -> int:
        """The slot number."""
        return self.devfn >> 3

    @property
    def function(self) -> int:
        """The function number."""
        return self.devfn & 7

    @property
    def is_bridge(self) -> bool:
        """A PCI-to-PCI bridge (type 1 header)."""
        return self.header_type & 0x7F == R.PCI_HEADER_TYPE_BRIDGE

    @property
    def address(self) -> str:
        """``bus:slot.function`` in hex."""
        return f"{self.bus:02x}:{self.slot:02x}.{self.function}"


@dataclass(slots=True)
class EnumerationResult:
    """Everything the enumerator found and did."""

    functions: list[EnumeratedFunction]
    last_bus: int

    def find(self, bus: int, slot: int, function: int = 0) -> EnumeratedFunction | None:
        """Return the function at ``bus``/``slot``/``function``, or None."""
        for fn in self.functions:
            if (fn.bus, fn.slot, fn.function) == (bus, slot, function):
                return fn
        return None

    def __str__(self) -> str:
        lines = []
        for fn in self.functions:
            lines.append(f"{fn.address} {fn.vendor_id:04x}:{fn.device_id:04x} "
                         f"class {fn.class_code:04x}"
                         + (f" bridge to buses {fn.secondary_bus}..{fn.subordinate_bus}"
                            if fn.is_bridge else ""))
            for bar in fn.bars:
                where = f"{bar.addr:#x}" if bar.addr is not None else "unassigned"
                lines.append(f"  {'ROM ' if bar.kind == 'rom' else f'BAR{bar.index}'} "
                             f"{bar.kind:5} size {bar.size:#x} at {where}")
            for name, (base, limit) in fn.windows.items():
                lines.append(f"  window {name:4} [{base:#x}, {limit:#x}]")
        return "\n".join(lines)


class _Resource:
    """Something to place: a BAR, or a bridge window holding resources."""

    __slots__ = ("align", "bar", "children", "fn", "kind", "size", "window")

    def __init__(self, kind: str, size: int, align: int, fn: EnumeratedFunction,
                 bar: AssignedBar | None = None, children: list[_Resource] | None = None,
                 window: str = "") -> None:
        self.kind = kind  # where it is placed: io, mem, pref or mem64
        self.size = size
        self.align = align
        self.fn = fn
        self.bar = bar
        self.children = children or []
        self.window = window  # for a bridge window: io, mem or pref

    def label(self) -> str:
        if self.bar is None:
            return f"{self.window} window"
        return "ROM" if self.bar.index == R.PCI_ROM_SLOT else f"BAR{self.bar.index}"


def _pack(resources: list[_Resource]) -> list[_Resource]:
    return sorted(resources, key=lambda r: (-r.align, -r.size))


class PCIEnumerator:
    """Enumerate and program the PCI tree behind one host bridge.

    Args:
        access: how to reach config space.
        mem_window: ``(base, size)`` for 32-bit memory BARs (below 4 GiB).
        io_window: ``(base, size)`` for I/O BARs, or None to leave them unassigned.
        mem64_window: ``(base, size)`` for 64-bit BARs, or None to use ``mem_window``.
        reserved: ``(base, size)`` ranges no window may overlap (RAM, ECAM).
        enable_bus_master: also set ``PCI_COMMAND_MASTER`` everywhere.
        irq_for: ``(bus, devfn, pin) -> line`` written to ``PCI_INTERRUPT_LINE``
            (pin is 1..4), or None to leave it.
        root_bus: the number of the host's root bus.

    Raises:
        PCIResourceError: a window overlaps a reserved range (at construction).
    """

    def __init__(self, access: ConfigAccess, *, mem_window: tuple[int, int],
                 io_window: tuple[int, int] | None = None,
                 mem64_window: tuple[int, int] | None = None,
                 reserved: Sequence[tuple[int, int]] = (), enable_bus_master: bool = False,
                 irq_for: Callable[[int, int, int], int | None] | None = None,
                 root_bus: int = 0) -> None:
        self.access = access
        self.windows: dict[str, tuple[int, int]] = {"mem": mem_window}
        if io_window is not None:
            self.windows["io"] = io_window
        if mem64_window is not None:
            self.windows["mem64"] = mem64_window
        for name, (base, size) in self.windows.items():
            if size <= 0 or base < 0:
                raise PCIResourceError(f"{name} window ({base:#x}, {size:#x}) is empty",
                                       what="window")
            if name == "io":
                continue
            for rbase, rsize in reserved:
                if base < rbase + rsize and rbase < base + size:
                    raise PCIResourceError(
                        f"{name} window [{base:#x}, {base + size - 1:#x}] overlaps the reserved "
                        f"range [{rbase:#x}, {rbase + rsize - 1:#x}] (RAM?); BARs placed there "
                        "would be shadowed or shadow memory", what="window")
        self.enable_bus_master = enable_bus_master
        self.irq_for = irq_for
        self.root_bus = root_bus
        self._next_bus = root_bus
        self._functions: list[EnumeratedFunction] = []
        self._bridge_children: dict[int, list[EnumeratedFunction]] = {}

    # -- config helpers ---------------------------------------------------------------

    def _r(self, fn: EnumeratedFunction | tuple[int, int], offset: int, size: int) -> int:
        bus, devfn = (fn.bus, fn.devfn) if isinstance(fn, EnumeratedFunction) else fn
        return self.access.config_read(bus, devfn, offset, size)

    def _w(self, fn: EnumeratedFunction, offset: int, value: int, size: int) -> None:
        self.access.config_write(fn.bus, fn.devfn, offset, value, size)

    # -- 1 and 2: scan, number, size ---------------------------------------------------------

    def run(self) -> EnumerationResult:
        """Scan, number, size, place and enable; return what was found and done.

        Raises:
            PCIResourceError: a resource does not fit its window.
        """
        self._functions = []
        self._next_bus = self.root_bus
        top = self._scan_bus(self.root_bus)
        resources = self._collect(top, root=True)
        self._place_root(resources)
        for fn in self._functions:
            self._enable(fn)
        return EnumerationResult(list(self._functions), self._next_bus)

    def _scan_bus(self, bus: int) -> list[EnumeratedFunction]:
        found: list[EnumeratedFunction] = []
        for slot in range(R.PCI_SLOT_MAX):
            vendor = self._r((bus, slot << 3), R.PCI_VENDOR_ID, 2)
            if vendor in (0xFFFF, 0x0000):
                continue
            header = self._r((bus, slot << 3), R.PCI_HEADER_TYPE, 1)
            nfuncs = R.PCI_FUNC_MAX if header & R.PCI_HEADER_TYPE_MULTI_FUNCTION else 1
            for function in range(nfuncs):
                devfn = slot << 3 | function
                if function and self._r((bus, devfn), R.PCI_VENDOR_ID, 2) in (0xFFFF, 0):
                    continue
                fn = self._probe(bus, devfn)
                found.append(fn)
        return found

    def _probe(self, bus: int, devfn: int) -> EnumeratedFunction:
        ids = self._r((bus, devfn), R.PCI_VENDOR_ID, 4)
        fn = EnumeratedFunction(
            bus=bus, devfn=devfn, vendor_id=ids & 0xFFFF, device_id=ids >> 16,
            class_code=self._r((bus, devfn), R.PCI_CLASS_DEVICE, 2),
            header_type=self._r((bus, devfn), R.PCI_HEADER_TYPE, 1),
            interrupt_pin=self._r((bus, devfn), R.PCI_INTERRUPT_PIN, 1))
        self._functions.append(fn)
        cmd = self._r(fn, R.PCI_COMMAND, 2)
        self._w(fn, R.PCI_COMMAND, cmd & ~(R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY), 2)
        nbars = 2 if fn.is_bridge else 6
        index = 0
        while index < nbars:
            bar = self._size_bar(fn, index)
            if bar is not None:
                fn.bars.append(bar)
            index += 2 if bar is not None and bar.is_64 else 1
        rom = self._size_rom(fn)
        if rom is not None:
            fn.bars.append(rom)
        self._w(fn, R.PCI_COMMAND, cmd, 2)
        if fn.is_bridge:
            self._next_bus += 1
            secondary = self._next_bus
            lat = self._r(fn, R.PCI_SEC_LATENCY_TIMER, 1)
            self._w(fn, R.PCI_PRIMARY_BUS, bus | secondary << 8 | 0xFF << 16 | lat << 24, 4)
            children = self._scan_bus(secondary)
            self._w(fn, R.PCI_SUBORDINATE_BUS, self._next_bus, 1)
            fn.secondary_bus = secondary
            fn.subordinate_bus = self._next_bus
            self._bridge_children[id(fn)] = children
        return fn

    def _size_bar(self, fn: EnumeratedFunction, index: int) -> AssignedBar | None:
        reg = R.PCI_BASE_ADDRESS_0 + 4 * index
        old = self._r(fn, reg, 4)
        self._w(fn, reg, 0xFFFFFFFF, 4)
        val = self._r(fn, reg, 4)
        self._w(fn, reg, old, 4)
        if val in (0, 0xFFFFFFFF):
            return None
        if val & R.PCI_BASE_ADDRESS_SPACE_IO:
            mask = val & 0xFFFFFFFC
            if not mask >> 16:
                mask |= 0xFFFF0000  # 16-bit decoders answer with the upper half clear
            return AssignedBar(index, True, False, False, (~mask + 1) & 0xFFFFFFFF)
        prefetch = bool(val & R.PCI_BASE_ADDRESS_MEM_PREFETCH)
        if val & 0x6 == R.PCI_BASE_ADDRESS_MEM_TYPE_64:
            old_hi = self._r(fn, reg + 4, 4)
            self._w(fn, reg + 4, 0xFFFFFFFF, 4)
            hi = self._r(fn, reg + 4, 4)
            self._w(fn, reg + 4, old_hi, 4)
            mask = hi << 32 | (val & 0xFFFFFFF0)
            return AssignedBar(index, False, True, prefetch, (~mask + 1) & ((1 << 64) - 1))
        return AssignedBar(index, False, False, prefetch, (~(val & 0xFFFFFFF0) + 1) & 0xFFFFFFFF)

    def _size_rom(self, fn: EnumeratedFunction) -> AssignedBar | None:
        reg = R.PCI_ROM_ADDRESS1 if fn.is_bridge else R.PCI_ROM_ADDRESS
        old = self._r(fn, reg, 4)
        self._w(fn, reg, R.PCI_ROM_ADDRESS_MASK & 0xFFFFFFFF, 4)
        val = self._r(fn, reg, 4) & (R.PCI_ROM_ADDRESS_MASK & 0xFFFFFFFF)
        self._w(fn, reg, old, 4)
        if not val:
            return None
        return AssignedBar(R.PCI_ROM_SLOT, False, False, False, (~val + 1) & 0xFFFFFFFF)

    # -- 3: place ------------------------------------------------------------------------

    def _collect(self, functions: list[EnumeratedFunction], root: bool) -> list[_Resource]:
        """Turn functions into resources: BARs, and bridges' windows with their children."""
        out: list[_Resource] = []
        for fn in functions:
            for bar in fn.bars:
                if bar.io:
                    kind = "io"
                elif root:
                    kind = "mem64" if bar.is_64 and "mem64" in self.windows else "mem"
                else:
                    kind = "pref" if bar.prefetchable else "mem"
                out.append(_Resource(kind, bar.size, max(bar.size, 4), fn, bar))
            if fn.is_bridge:
                children = self._collect(self._bridge_children.get(id(fn), []), root=False)
                for kind, granule in (("io", _IO_GRANULE), ("mem", _MEM_GRANULE),
                                      ("pref", _MEM_GRANULE)):
                    inner = _pack([c for c in children if c.kind == kind])
                    if not inner:
                        continue
                    size = 0
                    for child in inner:
                        size = -(-size // child.align) * child.align + child.size
                    size = -(-size // granule) * granule
                    align = max([granule] + [c.align for c in inner])
                    outer = kind
                    if kind == "pref" and root:
                        # The prefetchable window is 64-bit capable: above 4 GiB only if
                        # everything in it is a 64-bit BAR.
                        all64 = all(c.bar is None or c.bar.is_64 for c in inner)
                        outer = "mem64" if all64 and "mem64" in self.windows else "mem"
                    out.append(_Resource(outer, size, align, fn, None, inner, window=kind))
        return out

    def _place_root(self, resources: list[_Resource]) -> None:
        for kind in ("io", "mem", "mem64"):
            items = [r for r in resources if r.kind == kind]
            if not items:
                continue
            if kind not in self.windows:
                continue  # no I/O window: I/O BARs stay unassigned
            base, size = self.windows[kind]
            self._place(items, base, base + size, f"{kind} window")

    def _place(self, items: list[_Resource], start: int, end: int, where: str) -> None:
        pos = start
        for res in _pack(items):
            pos = -(-pos // res.align) * res.align
            if pos + res.size > end:
                raise PCIResourceError(
                    f"{res.fn.address} {res.label()} ({res.size:#x} bytes, aligned "
                    f"{res.align:#x}) does not fit in the {where} [{start:#x}, {end - 1:#x}]; "
                    "give a larger window", device=res.fn.address, what=res.label())
            self._assign(res, pos)
            pos += res.size

    def _assign(self, res: _Resource, addr: int) -> None:
        fn = res.fn
        bar = res.bar
        if bar is not None:
            bar.addr = addr
            if bar.index == R.PCI_ROM_SLOT:
                reg = R.PCI_ROM_ADDRESS1 if fn.is_bridge else R.PCI_ROM_ADDRESS
                self._w(fn, reg, addr & 0xFFFFF800, 4)
            else:
                reg = R.PCI_BASE_ADDRESS_0 + 4 * bar.index
                self._w(fn, reg, addr & 0xFFFFFFFF, 4)
                if bar.is_64:
                    self._w(fn, reg + 4, addr >> 32, 4)
            return
        window = res.window
        last = addr + res.size - 1
        self._place(res.children, addr, addr + res.size, f"{window} window of {fn.address}")
        fn.windows[window] = (addr, last)
        if window == "io":
            self._w(fn, R.PCI_IO_BASE, ((addr >> 8) & 0xF0) | ((last >> 8) & 0xF0) << 8, 2)
            self._w(fn, R.PCI_IO_BASE_UPPER16, (addr >> 16) | (last >> 16) << 16, 4)
        elif window == "mem":
            self._w(fn, R.PCI_MEMORY_BASE,
                    ((addr >> 16) & 0xFFF0) | ((last >> 16) & 0xFFF0) << 16, 4)
        else:
            self._w(fn, R.PCI_PREF_MEMORY_BASE,
                    ((addr >> 16) & 0xFFF0) | ((last >> 16) & 0xFFF0) << 16, 4)
            self._w(fn, R.PCI_PREF_BASE_UPPER32, addr >> 32, 4)
            self._w(fn, R.PCI_PREF_LIMIT_UPPER32, last >> 32, 4)

    # -- 4: enable -------------------------------------------------------------------------

    def _enable(self, fn: EnumeratedFunction) -> None:
        if fn.is_bridge:
            for window, reg in (("io", R.PCI_IO_BASE), ("mem", R.PCI_MEMORY_BASE),
                                ("pref", R.PCI_PREF_MEMORY_BASE)):
                if window in fn.windows:
                    continue
                # Close the window: base above limit.
                if window == "io":
                    self._w(fn, reg, 0x00F0, 2)
                else:
                    self._w(fn, reg, 0x0000FFF0, 4)
            if "pref" not in fn.windows:
                self._w(fn, R.PCI_PREF_BASE_UPPER32, 0, 4)
                self._w(fn, R.PCI_PREF_LIMIT_UPPER32, 0, 4)
        cmd = self._r(fn, R.PCI_COMMAND, 2) | R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY
        if self.enable_bus_master:
            cmd |= R.PCI_COMMAND_MASTER
        self._w(fn, R.PCI_COMMAND, cmd, 2)
        if fn.interrupt_pin and self.irq_for is not None:
            line = self.irq_for(fn.bus, fn.devfn, fn.interrupt_pin)
            if line is not None:
                self._w(fn, R.PCI_INTERRUPT_LINE, line & 0xFF, 1)
                fn.interrupt_line = line & 0xFF
