"""``memexpose demo``: a small, real scenario of the memory layer.

It builds a board-like memory map (RAM, a ROM, an MMIO counter, an alias
window and an overlapping higher-priority region), performs accesses through
the address space, checks what it reads, and prints ``info mtree`` and
``info mtree -f``. Exit status 0 only if every check holds.
"""

from __future__ import annotations

import sys

import click

from memexpose.cli.main import cli
from memexpose.memory import (
    MEMTX_DECODE_ERROR,
    MEMTX_OK,
    AccessConstraints,
    AddressSpace,
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
    MemoryRegionSection,
    Owner,
    format_mtree,
)

__all__ = ["demo"]


class CounterOps(MemoryRegionOps):
    """A 4-byte register that counts its reads; writing sets the counter."""

    valid = AccessConstraints(4, 4)

    def __init__(self) -> None:
        self.count = 0

    def read(self, offset: int, size: int) -> int:
        """Return the counter, then increment it."""
        value = self.count
        self.count += 1
        return value

    def write(self, offset: int, value: int, size: int) -> None:
        """Set the counter."""
        self.count = value


class PrintingListener(MemoryListener):
    """Logs map changes the way a CPU or a peer would learn about them."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def region_add(self, section: MemoryRegionSection) -> None:
        """Record an added range."""
        self.events.append(f"add {section.offset_within_address_space:#x}+{section.size:#x} "
                           f"{section.mr.name}")

    def region_del(self, section: MemoryRegionSection) -> None:
        """Record a removed range."""
        self.events.append(f"del {section.offset_within_address_space:#x}+{section.size:#x} "
                           f"{section.mr.name}")


def run_memory_demo(echo: object = click.echo) -> bool:
    """Build the demo board, access it, print mtree; return whether all checks held."""
    say = echo  # type: ignore[assignment]
    board = Owner("dev", path="/machine/demo-board")
    system = MemoryRegion.init_container("system", 1 << 64)
    ram = MemoryRegion.init_ram("board.ram", 0x10_0000, owner=board)
    rom = MemoryRegion.init_rom("board.rom", 0x1_0000, owner=board)
    counter_ops = CounterOps()
    counter = MemoryRegion.init_io("counter", 0x1000, counter_ops, owner=board)
    window = MemoryRegion.init_alias("ram-window", ram, 0x8_0000, 0x1_0000, owner=board)
    overlay = MemoryRegion.init_io("overlay", 0x100, MemoryRegionOps(), owner=board)

    system.add_subregion(0x0, ram)
    system.add_subregion(0xFFFF_0000, rom)
    system.add_subregion(0x1000_0000, counter)
    system.add_subregion(0x2000_0000, window)
    as_ = AddressSpace(system, "memory")
    listener = PrintingListener()
    as_.register_listener(listener)
    # The overlay covers part of RAM with a higher priority: the flat view
    # shows RAM split around it.
    system.add_subregion_overlap(0x4000, overlay, 1)

    checks: list[tuple[str, bool]] = []
    as_.write_rom(0xFFFF_0000, b"\xea\x5b\xe0\x00")
    checks.append(("ROM loaded by write_rom reads back",
                   as_.read(0xFFFF_0000, 4) == (0x00E05BEA, MEMTX_OK)))
    checks.append(("a normal write to ROM is refused",
                   as_.write(0xFFFF_0000, 0, 4) == MEMTX_DECODE_ERROR
                   and as_.read(0xFFFF_0000, 4)[0] == 0x00E05BEA))
    as_.write(0x8_0010, 0xCAFEF00D, 4)
    checks.append(("RAM written at 0x80010 is seen through the alias at 0x20000010",
                   as_.read(0x2000_0010, 4) == (0xCAFEF00D, MEMTX_OK)))
    checks.append(("the same bytes are in host memory (zero copy)",
                   bytes(ram.hostmem.view[0x8_0010:0x8_0014]) == b"\x0d\xf0\xfe\xca"))  # type: ignore[union-attr]
    first = as_.read(0x1000_0000, 4)[0]
    second = as_.read(0x1000_0000, 4)[0]
    checks.append(("the MMIO counter counts reads", (first, second) == (0, 1)))
    checks.append(("a 2-byte read of the 4-byte-only counter is refused",
                   as_.read(0x1000_0000, 2) == (0, MEMTX_DECODE_ERROR)))
    checks.append(("a hole reads 0 with DECODE_ERROR",
                   as_.read(0x3000_0000, 4) == (0, MEMTX_DECODE_ERROR)))
    with as_.transaction():
        counter.set_address(0x1800_0000)
        window.set_enabled(False)
    checks.append(("the moved counter answers at its new address",
                   as_.read(0x1800_0000, 4) == (2, MEMTX_OK)))
    checks.append(("the disabled window is gone",
                   as_.read(0x2000_0010, 4) == (0, MEMTX_DECODE_ERROR)))

    say("== accesses ==")
    for text, ok in checks:
        say(f"  [{'ok' if ok else 'FAIL'}] {text}")
    say("== listener events (one transaction moved the counter and hid the window) ==")
    for event in listener.events:
        say(f"  {event}")
    say("== info mtree ==")
    say(format_mtree(as_.system), nl=False)  # type: ignore[call-arg]
    say("== info mtree -f ==")
    say(format_mtree(as_.system, flatview=True), nl=False)  # type: ignore[call-arg]
    ok = all(ok for _, ok in checks)
    say(f"verdict: {'PASS' if ok else 'FAIL'} ({sum(ok for _, ok in checks)}/{len(checks)} "
        "checks)")
    as_.unregister_listener(listener)
    as_.destroy()
    return ok


@cli.command()
def demo() -> None:
    """Run the demo scenario and exit 0 only if every check passes.

    It builds a board-like memory map with RAM, a ROM, an MMIO counter, an
    alias window and an overlapping region, accesses it, and prints
    `info mtree` and `info mtree -f` exactly as QEMU would.
    """
    if not run_memory_demo():
        sys.exit(1)
