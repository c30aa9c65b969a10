"""``memexpose pci``: build a small PCI bus, enumerate it like firmware, print ``info pci``."""

from __future__ import annotations

import click

from memexpose.cli.main import cli
from memexpose.devices import EduDevice, PCISerial
from memexpose.hw import MiniPC, PCIBridge
from memexpose.memory import format_mtree

__all__ = ["pci"]


@cli.command(short_help="Show an example PCI bus (edu, UART, bridge) as `info pci`.")
@click.option("--no-enumerate", is_flag=True,
              help="Print the bus as the machine leaves it, before firmware sized and placed "
                   "the BARs (they show as unmapped, as in QEMU before boot).")
@click.option("--no-bridge", is_flag=True, help="Leave out the PCI bridge and the edu behind it.")
@click.option("--bus-master", is_flag=True, help="Let the enumerator enable bus mastering too.")
@click.option("--mtree", "show_mtree", is_flag=True,
              help="Also print the flat view of system memory and I/O (`info mtree -f`).")
@click.option("--summary", is_flag=True, help="Also print what the enumerator assigned.")
def pci(no_enumerate: bool, no_bridge: bool, bus_master: bool, show_mtree: bool,
        summary: bool) -> None:
    """Build a q35-shaped PCI bus and print it like QEMU's `info pci`.

    The bus holds the host bridge (00.0), QEMU's edu teaching device (00.4),
    a 16550 UART behind an I/O BAR (QEMU's pci-serial, 00.5) and, unless
    --no-bridge, a PCI-to-PCI bridge (00.6) with a second edu behind it. A
    firmware-like enumerator then numbers the buses, sizes every BAR, places
    them in q35's windows and enables decoding, through ECAM at 0xb0000000.

    \b
    Examples:
      memexpose pci
      memexpose pci --no-enumerate
      memexpose pci --summary --mtree
    """
    pc = MiniPC()
    pc.add(EduDevice(pc.clock), slot=4)
    pc.add(PCISerial(), slot=5)
    if not no_bridge:
        bridge = PCIBridge(id="bridge0")
        pc.add(bridge, slot=6)
        assert bridge.secondary_bus is not None
        bridge.secondary_bus.add_device(EduDevice(pc.clock, id="edu1"), 1)
    if not no_enumerate:
        result = pc.enumerate(enable_bus_master=bus_master)
        if summary:
            click.echo(str(result))
            click.echo()
    click.echo(pc.info_pci(), nl=False)
    if show_mtree:
        click.echo()
        click.echo(format_mtree([pc.memory, pc.io_as], flatview=True), nl=False)
