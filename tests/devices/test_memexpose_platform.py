"""``memexpose-platform``: the register block and window on a board, an IRQ line, its DT node.

The two-process tests pair a PCI VM "a" (MiniPC, this process, listening)
with a ``virt`` machine "b" in a child process whose memexpose slot holds
the platform device: the pairing the seed built for (x86 rich OS, ARM
trusted OS).
"""

from __future__ import annotations

import struct

import pytest

from memexpose.devices import (
    MEMEXPOSE_COMPATIBLE,
    MemexposePlatform,
    MemexposeStatus,
)
from memexpose.errors import ConfigError, MachineError
from memexpose.link import Exposure
from memexpose.machine import FdtNode, StopKind, build_fdt, get_board, parse_fdt
from tests.devices.memexpose_vm import (
    RAM_SIZE,
    R,
    enable_both,
    receive_interrupt,
    send_interrupt,
    wait_for,
)

S = MemexposeStatus
VIRT = get_board("virt")


@pytest.fixture
def virt(tmp_path):
    machines = []

    def make(**kwargs):
        m = VIRT.build(ram_size=16 << 20)
        machines.append(m)
        dev = MemexposePlatform(str(tmp_path / f"s{len(machines)}"),
                                exposure=Exposure.range(m.address_space, VIRT.ram_base,
                                                        m.ram_size), **kwargs)
        return m, dev

    yield make
    for m in machines:
        m.close()


def test_plug_places_both_regions_and_wires_the_irq(virt) -> None:
    m, dev = virt(window_size=0x10_0000)
    line = dev.plug(m)
    assert line is m.slot_irq and m.slot_device is dev
    regs, window = VIRT.slot.regs_addr, VIRT.slot.window_addr
    with m.lock:
        assert m.address_space.read(regs + R.WINDOW_SIZE, 8) == (0x10_0000, 0)
        assert m.address_space.read(regs + R.STATUS, 8) == (0, 0)
        assert m.address_space.read(window, 4)[1] != 0  # no link: nothing behind it
        dev.core._on_level(True)  # what the link reports when an interrupt arrives
    assert dev.irq_line.level and m.slot_irq.level and m.cpu_irq.level
    with m.lock:
        dev.core._on_level(False)
    assert not m.cpu_irq.level
    assert dev.mmio(0) is dev.regs and dev.mmio(1) is dev.window
    dev._check_invariants()


def _ldr_x(rt: int, rn: int, offset: int) -> int:
    return 0xF940_0000 | (offset // 8) << 10 | rn << 5 | rt


def _str_x(rt: int, rn: int, offset: int) -> int:
    return 0xF900_0000 | (offset // 8) << 10 | rn << 5 | rt


def _ldr_w(rt: int, rn: int, offset: int) -> int:
    return 0xB940_0000 | (offset // 4) << 10 | rn << 5 | rt


def test_guest_code_accesses_act_once(virt) -> None:
    """Real AArch64 loads and stores on the virt CPU: an 8-byte access is one access."""
    m, dev = virt(window_size=0x10_0000)
    dev.plug(m)
    code = [_ldr_x(1, 0, R.WINDOW_SIZE), _str_x(2, 0, R.TX_TYPE), _ldr_x(3, 0, R.TX_TYPE),
            _ldr_w(4, 0, R.TX_TYPE + 4), _ldr_x(5, 0, R.RECV), _ldr_w(6, 0, R.RECV + 4),
            0xD440_0000]  # hlt #0
    m.address_space.write_rom(VIRT.image_addr, b"".join(struct.pack("<I", c) for c in code))
    m.cpu.pc = VIRT.image_addr
    m.cpu.write_register("x0", VIRT.slot.regs_addr)
    m.cpu.write_register("x2", 0x1122_3344_5566_7788)
    stop = m.run(timeout=10)
    assert stop.kind is StopKind.HALT, stop.describe()
    values = [m.cpu.read_register(f"x{n}") for n in (1, 3, 4, 5, 6)]
    assert values == [0x10_0000, 0x1122_3344_5566_7788, 0x1122_3344, 0, 0]
    assert dev.statistics().empty_receives == 1  # RECV acted once; its high half not at all


def test_window_must_fit_the_slot(virt) -> None:
    m, dev = virt(window_size=128 << 30)
    with pytest.raises(MachineError, match="slot window"):
        dev.plug(m)
    dev.close()
    with pytest.raises(ConfigError, match="window_size"):
        virt(window_size=0x1800)


def test_device_tree_node(virt) -> None:
    m, dev = virt(window_size=0x10_0000)
    node = dev.fdt_node(0x0C00_0000, 0x80_0000_0000, interrupts=[0, 10, 4])
    assert node.name == "memexpose@c000000"
    assert node.dts() == (
        "memexpose@c000000 {\n"
        '\tcompatible = "memexpose-memregion", "memexpose,platform";\n'
        "\treg = <0x0 0xc000000 0x0 0x1000 0x80 0x0 0x0 0x100000>;\n"
        '\treg-names = "registers", "window";\n'
        "\tinterrupts = <0x0 0xa 0x4>;\n"
        "};\n")
    assert list(MEMEXPOSE_COMPATIBLE) == node.props["compatible"]
    # A board includes it in its tree; the blob reads back.
    root = FdtNode("", {"#address-cells": 2, "#size-cells": 2})
    root.children.append(FdtNode(node.name, dict(node.props)))
    back = parse_fdt(build_fdt(root)).find("/memexpose@c000000")
    assert back is not None
    assert back.props["compatible"] == b"memexpose-memregion\0memexpose,platform\0"
    assert back.props["reg"] == bytes.fromhex("00000000 0c000000 00000000 00001000"
                                              "00000080 00000000 00000000 00100000")
    assert back.props["interrupts"] == bytes.fromhex("00000000 0000000a 00000004")
    # Without an interrupt controller the property is left out; one-cell addresses work.
    small = dev.fdt_node(0x1000, 0x2000_0000, address_cells=1, size_cells=1)
    assert "interrupts" not in small.props
    assert small.props["reg"] == [0x1000, 0x1000, 0x2000_0000, 0x10_0000]
    dev.close()


# -- two processes: PCI "a" and platform "b" --------------------------------------------


def pair(vms):
    a = vms("a", remote=False, listen=True)
    b = vms("b", remote=True, listen=False, kind="platform")
    a.call("setup")
    enable_both(a, b)
    return a, b


def test_platform_and_pci_share_memory_both_ways(vms) -> None:
    a, b = pair(vms)
    assert b.call("reg_read", R.STATUS) == S.ENABLED | S.CONNECTED
    assert b.call("reg_read", R.WINDOW_LIMIT) == RAM_SIZE
    # b's window offset x is a's RAM address x.
    a.call("ram_write", 0x40_0000, 0xA11CE)
    assert b.call("win_read", 0x40_0000, 4) == (0xA11CE, 0)
    assert b.call("win_write", 0x40_0004, 0xB0B, 4) == 0
    assert a.call("ram_read", 0x40_0004) == 0xB0B
    # a's window offset x is b's RAM at 0x4000_0000 + x (b exposes its RAM only).
    b.call("ram_write", 0x4000_0000 + 0x1_0000, 0xCAFE)
    assert a.call("win_read", 0x1_0000, 4) == (0xCAFE, 0)
    assert a.call("win_write", 0x1_0008, 0xF00D, 4) == 0
    assert b.call("ram_read", 0x4000_0000 + 0x1_0008) == 0xF00D
    assert b.call("stats")["link"]["direct_mappings"] == 1
    assert a.call("stats")["link"]["direct_mappings"] == 1
    b.call("check")


def test_platform_irq_line_follows_the_queue(vms) -> None:
    a, b = pair(vms)
    assert b.call("irq") == (False, False)
    send_interrupt(a, 0x51, 0x5EC)
    send_interrupt(a, 0x52, 0x5ED)
    wait_for(lambda: b.call("irq") == (True, True), 5.0, "the platform IRQ line")
    wait_for(lambda: b.call("reg_read", R.PENDING) == 2, 5.0, "two pending")
    assert receive_interrupt(b) == (1, 0x51, 0x5EC)
    assert b.call("irq") == (True, True)
    assert receive_interrupt(b) == (1, 0x52, 0x5ED)
    assert b.call("irq") == (False, False)
    # The other direction, with the full payload.
    b.call("reg_write", R.TX_TYPE, 0xC0DE)
    for i in range(0, 128, 8):
        b.call("reg_write", R.TX_DATA + i, 0x0101_0101_0101_0101 * (i // 8))
    b.call("reg_write", R.SEND, 1)
    assert receive_interrupt(a)[:2] == (1, 0xC0DE)
    assert [a.call("reg_read", R.RX_DATA + i) for i in range(0, 128, 8)] == \
        [0x0101_0101_0101_0101 * k for k in range(16)]
    b.call("check")


def test_platform_reset(vms) -> None:
    a, b = pair(vms)
    send_interrupt(a, 1, 1)
    wait_for(lambda: b.call("irq") == (True, True), 5.0, "the platform IRQ line")
    b.call("reset")
    assert b.call("irq") == (False, False)
    assert b.call("reg_read", R.ENABLE) == 0 and b.call("reg_read", R.STATUS) == 0
    assert b.call("reg_read", R.PENDING) == 0
    wait_for(lambda: a.call("reg_read", R.STATUS) == S.ENABLED | S.PEER_LOST, 5.0,
             "PEER_LOST at a")
    enable_both(a, b)
    send_interrupt(a, 2, 2)
    assert receive_interrupt(b) == (1, 2, 2)
