"""``memexpose demo``: the flagship, and the memory-layer scenario.

``memexpose demo`` runs the flagship (docs/flagship.md): a rich OS on an
x86_64 VM makes secure calls to a trusted OS on an AArch64 VM, two
processes connected by memexpose, started from ``examples/rich.toml`` and
``examples/trusted.toml``. It prints both consoles, a summary and a
verdict that is computed, not assumed (``memexpose.cli.flagship``); exit
status 0 only on PASS.

``memexpose demo --memory-only`` runs the memory layer's small real
scenario instead: it builds a board-like memory map (RAM, a ROM, an MMIO
counter, an alias window and an overlapping higher-priority region),
performs accesses through the address space, checks what it reads, and
prints ``info mtree`` and ``info mtree -f``. Exit status 0 only if every
check holds.

``memexpose flagship-vm FILE`` (hidden) runs one VM of the flagship pair and
writes its report; the demo starts two of them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from memexpose.cli.flagship import run_flagship
from memexpose.cli.main import cli
from memexpose.errors import ConfigError, MachineError
from memexpose.machine import run_flagship_vm
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

__all__ = ["demo", "flagship_vm"]


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
@click.option("--memory-only", is_flag=True,
              help="Run the memory-layer scenario (mtree, accesses) instead of the flagship.")
@click.option("--rich", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The rich VM's machine file (default: examples/rich.toml).")
@click.option("--trusted", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The trusted VM's machine file (default: examples/trusted.toml).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds the rich VM may run before both VMs are stopped.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the checked figures as JSON to this file.")
def demo(memory_only: bool, rich: Path | None, trusted: Path | None, timeout: float,
         json_path: str | None) -> None:
    """Run the flagship: secure calls from an x86_64 VM to an AArch64 VM over memexpose.

    Two processes, one per VM, linked by a memexpose UNIX socket: the rich
    VM's guest finds its memexpose-pci device and calls the trusted OS
    (VERSION, STORE, LOAD, SIGN over buffers up to 64 KiB); the trusted OS
    reaches the rich buffers by their physical addresses through its window.
    Prints both consoles, a summary, and a verdict checked against a model
    of the trusted OS with the key read from the trusted VM's RAM. Exit
    status 0 only on PASS.

    With --memory-only: the memory-layer scenario (a board-like memory map,
    checked accesses, `info mtree` and `info mtree -f` exactly as QEMU).
    """
    if memory_only:
        if not run_memory_demo():
            sys.exit(1)
        return
    code = run_flagship(rich, trusted, echo=click.echo, timeout=timeout, json_path=json_path)
    if code:
        sys.exit(code)


@cli.command("flagship-vm", hidden=True)
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--socket", default=None, help="Replace the memexpose device's socket path.")
@click.option("--report", default=None, help="Write the VM's JSON report here.")
@click.option("--timeout", type=float, default=None, help="Seconds (default: the file's).")
@click.option("--freeze-on-call", type=int, default=None,
              help="Test aid: SIGSTOP this process when call N arrives.")
def flagship_vm(config: str, socket: str | None, report: str | None, timeout: float | None,
                freeze_on_call: int | None) -> None:
    """Run one VM of the flagship pair (the demo starts two) and report on it."""
    # Plain log lines (the demo prefixes them); the runner itself says when the link ends.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("memexpose.link").setLevel(logging.ERROR)
    try:
        result = run_flagship_vm(config, socket=socket, timeout=timeout,
                                 freeze_on_call=freeze_on_call)
    except (ConfigError, MachineError) as exc:
        click.echo(f"memexpose flagship-vm: {exc}", err=True)
        sys.exit(2)
    if report is not None:
        tmp = f"{report}.tmp"
        Path(tmp).write_text(result.to_json())
        Path(tmp).replace(report)
    sys.exit(result.exit_code)
