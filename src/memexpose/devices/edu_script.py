"""One edu test script, run unchanged against stock QEMU and against our model.

``run_edu_script(driver)`` plays a driver for an ``edu`` at ``00:slot.0``
with nothing but qtest's verbs: config space through ports 0xCF8/0xCFC,
MMIO through ``readl``/``writeq``/..., RAM through ``read``/``write``, time
through ``clock_step`` and the INTx line through ``irq_level``. It returns
a transcript, a list of ``(step, value)`` pairs. Run it with
``memexpose.qemu.QtestClient`` (QEMU 7.2, ``-M q35 -device edu,addr=4``)
and with ``memexpose.hw.QtestLikeDriver`` over ``MiniPC`` + ``EduDevice``:
the two transcripts must be equal.

What it covers: a config-space dump, BAR and ROM sizing, write masks and
write-1-to-clear, odd-sized and unaligned port accesses, BAR programming,
moving and disabling; identification and liveness (with every access size);
factorials (with and without interrupt); raise/ack with INTx, INTx disable
and MSI (the message lands in RAM); DMA both ways, clamping, frozen
registers while running, and DMA with bus mastering off.

Only what a driver can observe is recorded, and never how many polls a wait
took, so real-time QEMU and virtual-time models compare equal.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["EduScriptDriver", "run_edu_script"]


class EduScriptDriver(Protocol):
    """The qtest verbs the script uses."""

    def readb(self, addr: int) -> int: ...
    def readw(self, addr: int) -> int: ...
    def readl(self, addr: int) -> int: ...
    def readq(self, addr: int) -> int: ...
    def writew(self, addr: int, value: int) -> None: ...
    def writel(self, addr: int, value: int) -> None: ...
    def writeq(self, addr: int, value: int) -> None: ...
    def inb(self, port: int) -> int: ...
    def inw(self, port: int) -> int: ...
    def inl(self, port: int) -> int: ...
    def outb(self, port: int, value: int) -> None: ...
    def outw(self, port: int, value: int) -> None: ...
    def outl(self, port: int, value: int) -> None: ...
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def clock_step(self, ns: int | None = None) -> None: ...
    def irq_intercept_in(self, name: str) -> None: ...
    def irq_level(self, n: int) -> bool: ...


def run_edu_script(drv: EduScriptDriver, *, slot: int = 4, bar0: int = 0xFE000000,
                   ram: int = 0x10000, msi_addr: int = 0x8000, gsi: int = 20,
                   poll_ns: int = 10_000_000, max_polls: int = 200) -> list[tuple[str, object]]:
    """Drive the edu at ``00:slot.0``; return the transcript of what the driver saw.

    Args:
        drv: a qtest-like driver (QEMU's or ours).
        slot: the edu's slot on bus 0.
        bar0: where to program BAR0 (inside the PCI hole, outside RAM).
        ram: a free RAM address for DMA buffers (uses 16 KiB).
        msi_addr: a free RAM address MSI messages are aimed at.
        gsi: the interrupt line the edu's INTA reaches (20 for slot 4 on q35).
        poll_ns: virtual time to advance between polls.
        max_polls: give up waiting after this many polls (recorded as a timeout).
    """
    out: list[tuple[str, object]] = []

    def rec(step: str, value: object) -> None:
        out.append((step, value))

    def sel(reg: int) -> None:
        drv.outl(0xCF8, 0x80000000 | slot << 11 | (reg & 0xFC))

    def cfg_read(reg: int) -> int:
        sel(reg)
        return drv.inl(0xCFC)

    def cfg_write(reg: int, value: int) -> None:
        sel(reg)
        drv.outl(0xCFC, value)

    def wait(addr: int, mask: int, want_clear: bool = True) -> bool:
        for _ in range(max_polls):
            value = drv.readl(addr)
            if (not value & mask) if want_clear else bool(value & mask):
                return True
            drv.clock_step(poll_ns)
        return False

    # 1. Config space as the machine left it.
    for reg in range(0, 0x100, 4):
        rec(f"cfg[{reg:#04x}]", cfg_read(reg))

    # 2. Sizing every BAR and the ROM: write all-ones, read, restore.
    for reg in range(0x10, 0x28, 4):
        old = cfg_read(reg)
        cfg_write(reg, 0xFFFFFFFF)
        rec(f"size[{reg:#04x}]", cfg_read(reg))
        cfg_write(reg, old)
    cfg_write(0x30, 0xFFFFF800)
    rec("size[rom]", cfg_read(0x30))
    cfg_write(0x30, 0)

    # 3. Write masks, read-only fields, write-1-to-clear, odd sizes.
    for reg, value in ((0x00, 0xFFFFFFFF), (0x04, 0xFFFFFFFF), (0x08, 0xFFFFFFFF),
                       (0x0C, 0xFFFFFFFF), (0x2C, 0xFFFFFFFF), (0x34, 0xFFFFFFFF),
                       (0x3C, 0xFFFFFFFF), (0x40, 0xFFFFFFFE), (0x44, 0xFFFFFFFF),
                       (0x48, 0xFFFFFFFF), (0x4C, 0xFFFFFFFF), (0x50, 0x12345678)):
        old = cfg_read(reg)
        cfg_write(reg, value)
        rec(f"mask[{reg:#04x}]", cfg_read(reg))
        cfg_write(reg, old)
    sel(0x00)
    rec("inw 0xcfe", drv.inw(0xCFE))
    rec("inb 0xcfd", drv.inb(0xCFD))
    rec("inl 0xcfd (unaligned)", drv.inl(0xCFD))
    drv.outl(0xCF8, 0x80000000 | slot << 11 | 0x02)
    rec("inl 0xcfc, latch low bits 2", drv.inl(0xCFC))
    drv.outw(0xCF8, 0x1234)
    rec("outw 0xcf8 ignored", drv.inl(0xCF8))
    drv.outl(0xCF8, 0x00000000)
    rec("inl 0xcfc, enable bit clear", drv.inl(0xCFC))
    drv.outl(0xCF8, 0x80000000 | 9 << 11)
    rec("inl 0xcfc, empty slot", drv.inl(0xCFC))
    sel(0xFC)
    rec("inw 0xcfe at 0xfe", drv.inw(0xCFE))

    # 4. Place BAR0 and turn on memory decoding.
    cfg_write(0x10, bar0)
    cfg_write(0x04, 0x0002)
    rec("bar0", cfg_read(0x10))
    rec("cmd/status", cfg_read(0x04))

    # 5. Identification, with every size and the buffer.
    rec("readl id", drv.readl(bar0))
    rec("readq id", drv.readq(bar0))
    rec("readw id", drv.readw(bar0))
    rec("readb id+1", drv.readb(bar0 + 1))
    rec("read id 4 bytes", drv.read(bar0, 4).hex())
    rec("read id+2 4 bytes", drv.read(bar0 + 2, 4).hex())
    rec("readl 0x0c", drv.readl(bar0 + 0x0C))
    rec("readl buffer 0x40000", drv.readl(bar0 + 0x40000))
    rec("readl last", drv.readl(bar0 + 0xFFFFC))
    rec("readq 0x24", drv.readq(bar0 + 0x24))

    # 6. Liveness.
    for value in (0, 0x12345678, 0xFFFFFFFF):
        drv.writel(bar0 + 4, value)
        rec(f"liveness {value:#x}", drv.readl(bar0 + 4))
    drv.writew(bar0 + 4, 0x1111)
    rec("liveness after writew", drv.readl(bar0 + 4))
    drv.writeq(bar0 + 0x20, 0xFFFFFFFFFFFFFFFF)
    rec("status after writeq", drv.readl(bar0 + 0x20))

    # 7. Factorial, polling the computing bit.
    for n in (0, 1, 5, 12, 13, 20, 40):
        drv.writel(bar0 + 8, n)
        rec(f"fact {n} done", wait(bar0 + 0x20, 0x01))
        rec(f"fact {n}", drv.readl(bar0 + 8))
        rec(f"fact {n} status", drv.readl(bar0 + 0x20))

    # 8. Factorial with interrupt (INTx).
    drv.irq_intercept_in("ioapic")
    drv.writel(bar0 + 0x20, 0x80)
    drv.writel(bar0 + 8, 4)
    rec("fact irq done", wait(bar0 + 0x20, 0x01))
    rec("fact irq raised", wait(bar0 + 0x24, 0x01, want_clear=False))
    rec("fact irq value", drv.readl(bar0 + 8))
    rec("fact irq status", drv.readl(bar0 + 0x24))
    rec("fact irq line", drv.irq_level(gsi))
    rec("fact irq cfg status", cfg_read(0x04))
    drv.writel(bar0 + 0x64, 0x01)
    rec("fact irq after ack line", drv.irq_level(gsi))
    rec("fact irq after ack cfg", cfg_read(0x04))
    drv.writel(bar0 + 0x20, 0)

    # 9. Raise and acknowledge; INTx disable.
    drv.writel(bar0 + 0x60, 0x1234)
    rec("raise status", drv.readl(bar0 + 0x24))
    rec("raise line", drv.irq_level(gsi))
    cfg_write(0x04, 0x0402)
    rec("intx disabled line", drv.irq_level(gsi))
    rec("intx disabled cfg", cfg_read(0x04))
    cfg_write(0x04, 0x0002)
    rec("intx enabled line", drv.irq_level(gsi))
    drv.writel(bar0 + 0x64, 0x1000)
    rec("partial ack status", drv.readl(bar0 + 0x24))
    rec("partial ack line", drv.irq_level(gsi))
    drv.writel(bar0 + 0x64, 0xFFFFFFFF)
    rec("ack status", drv.readl(bar0 + 0x24))
    rec("ack line", drv.irq_level(gsi))
    drv.writel(bar0 + 0x60, 0)
    rec("raise 0 line", drv.irq_level(gsi))

    # 10. DMA: RAM -> buffer -> RAM, with bus mastering on.
    cfg_write(0x04, 0x0006)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(64))
    drv.write(ram, pattern)
    drv.writeq(bar0 + 0x80, ram)
    drv.writeq(bar0 + 0x88, 0x40000)
    drv.writeq(bar0 + 0x90, 64)
    drv.writeq(bar0 + 0x98, 0x5)
    rec("dma running cmd", drv.readq(bar0 + 0x98))
    drv.writeq(bar0 + 0x80, 0x5555)
    rec("dma src frozen", drv.readq(bar0 + 0x80))
    rec("dma to buffer done", wait(bar0 + 0x98, 0x01))
    rec("dma cmd after", drv.readq(bar0 + 0x98))
    rec("dma irq status", drv.readl(bar0 + 0x24))
    rec("dma irq line", drv.irq_level(gsi))
    drv.writel(bar0 + 0x64, 0x100)
    rec("dma irq after ack", drv.irq_level(gsi))
    for src, dst, count, label in ((0x40000, ram + 0x1000, 64, "whole"),
                                   (0x40010, ram + 0x2000, 16, "part"),
                                   (0x40000, ram + 0x2100 + (1 << 28), 8, "clamped")):
        drv.writeq(bar0 + 0x80, src)
        drv.writeq(bar0 + 0x88, dst)
        drv.writeq(bar0 + 0x90, count)
        drv.writeq(bar0 + 0x98, 0x3)
        rec(f"dma {label} done", wait(bar0 + 0x98, 0x01))
    rec("ram whole", drv.read(ram + 0x1000, 64).hex())
    rec("ram part", drv.read(ram + 0x2000, 16).hex())
    rec("ram clamped", drv.read(ram + 0x2100, 8).hex())
    drv.writel(bar0 + 0x80, 0x12345678)
    rec("dma src writel", drv.readq(bar0 + 0x80))
    drv.writel(bar0 + 0x84, 0x1)
    rec("dma src+4 writel", drv.readq(bar0 + 0x80))
    rec("readl 0x84", drv.readl(bar0 + 0x84))
    drv.writeq(bar0 + 0x98, 0x6)
    rec("dma cmd without start", drv.readq(bar0 + 0x98))

    # 11. DMA with bus mastering off: nothing reaches RAM, reads fill zeros.
    cfg_write(0x04, 0x0002)
    drv.write(ram + 0x3000, bytes(16))
    for src, dst, count, cmd in ((0x40000, ram + 0x3000, 16, 0x3), (ram, 0x40008, 4, 0x1)):
        drv.writeq(bar0 + 0x80, src)
        drv.writeq(bar0 + 0x88, dst)
        drv.writeq(bar0 + 0x90, count)
        drv.writeq(bar0 + 0x98, cmd)
        rec(f"dma no master {cmd:#x} done", wait(bar0 + 0x98, 0x01))
    rec("ram after no-master write", drv.read(ram + 0x3000, 16).hex())
    cfg_write(0x04, 0x0006)
    drv.writeq(bar0 + 0x80, 0x40000)
    drv.writeq(bar0 + 0x88, ram + 0x3000)
    drv.writeq(bar0 + 0x90, 16)
    drv.writeq(bar0 + 0x98, 0x3)
    rec("dma readback done", wait(bar0 + 0x98, 0x01))
    rec("buffer after no-master read", drv.read(ram + 0x3000, 16).hex())

    # 12. MSI: the message is a write of the data to the address.
    cfg_write(0x44, msi_addr)
    cfg_write(0x48, 0)
    cfg_write(0x4C, 0x4321)
    cfg_write(0x40, 0x00010005)
    rec("msi cap", cfg_read(0x40))
    drv.write(msi_addr, bytes(4))
    drv.writel(bar0 + 0x60, 0x8)
    rec("msi message", drv.read(msi_addr, 4).hex())
    rec("msi irq status", drv.readl(bar0 + 0x24))
    rec("msi line", drv.irq_level(gsi))
    drv.write(msi_addr, bytes(4))
    drv.writel(bar0 + 0x60, 0x10)
    rec("msi second message", drv.read(msi_addr, 4).hex())
    drv.write(msi_addr, bytes(4))
    drv.writel(bar0 + 0x64, 0xFFFFFFFF)
    rec("msi ack sends nothing", drv.read(msi_addr, 4).hex())
    drv.writel(bar0 + 0x60, 0)
    rec("msi raise 0 sends nothing", drv.read(msi_addr, 4).hex())
    cfg_write(0x40, 0x00000005)
    rec("msi disabled cap", cfg_read(0x40))

    # 13. Moving and disabling BAR0.
    cfg_write(0x04, 0x0000)
    rec("decoding off readl", drv.readl(bar0))
    cfg_write(0x10, bar0 - 0x1000000)
    cfg_write(0x04, 0x0002)
    rec("moved readl", drv.readl(bar0 - 0x1000000))
    rec("old place readl", drv.readl(bar0))
    cfg_write(0x10, 0xFFFFFFFF)
    rec("sizing value keeps it unmapped", drv.readl(bar0 - 0x1000000))
    cfg_write(0x10, bar0)
    rec("back readl", drv.readl(bar0))
    rec("final cfg dump", [cfg_read(reg) for reg in range(0, 0x60, 4)])
    return out
