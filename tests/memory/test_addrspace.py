"""Tests for memexpose.memory.addrspace: loads, stores and byte transfers."""

from __future__ import annotations

import pytest

from memexpose.errors import InvalidAccessError
from memexpose.memory import (
    ADDR_SPACE_END,
    IOMMU_NONE,
    IOMMU_RO,
    IOMMU_RW,
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    MEMTX_OK,
    AccessConstraints,
    AddressSpace,
    Endianness,
    HostMemory,
    IOMMUMemoryRegion,
    IOMMUTLBEntry,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    MemTxAttrs,
    Owner,
    UnassignedIOOps,
)

KB = 1024


class Regs(MemoryRegionOps):
    """Registers held as bytes in the device's own byte order; calls recorded."""

    def __init__(self, size: int = 0x100, big: bool = False) -> None:
        self.mem = bytearray(size)
        self.order = "big" if big else "little"
        self.calls: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.calls.append(("r", offset, size))
        return int.from_bytes(self.mem[offset:offset + size], self.order)

    def write(self, offset: int, value: int, size: int) -> None:
        self.calls.append(("w", offset, value, size))
        self.mem[offset:offset + size] = value.to_bytes(size, self.order)


def regs(endianness=Endianness.NATIVE, valid=None, impl=None,
         *, big: bool = False, size: int = 0x100) -> Regs:
    cls = type("Dev", (Regs,), {"endianness": endianness, "valid": valid or AccessConstraints(),
                                "impl": impl or AccessConstraints()})
    return cls(size, big)


class Edu(MemoryRegionOps):
    """QEMU's edu BAR0: valid 4..8, impl 4..8, native; ~0 for non-4-byte reads below 0x80."""

    valid = AccessConstraints(4, 8)
    impl = AccessConstraints(4, 8)

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.calls.append((offset, size))
        if offset < 0x80 and size != 4:
            return (1 << 64) - 1
        return {0: 0x010000ED}.get(offset, 0)


def machine(big_endian: bool = False):
    sysmem = MemorySystem("m", big_endian=big_endian)
    system = MemoryRegion.init_container("system", ADDR_SPACE_END)
    as_ = AddressSpace(system, "memory", system=sysmem)
    return sysmem, system, as_


@pytest.fixture
def backing():
    with HostMemory.anonymous("backing", 64 * KB) as mem:
        yield mem


# -- RAM ---------------------------------------------------------------------------


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("size", range(1, 9))
def test_ram_loads_and_stores_in_target_order(backing, big: bool, size: int) -> None:
    _, system, as_ = machine(big)
    ram = MemoryRegion.init_ram("ram", 0x1000, hostmem=backing, hostmem_offset=0x800)
    system.add_subregion(0x10000, ram)
    value = int.from_bytes(bytes(range(0xA1, 0xA1 + size)), "big")
    assert as_.write(0x10003, value, size) == MEMTX_OK
    order = "big" if big else "little"
    assert bytes(backing.view[0x803:0x803 + size]) == value.to_bytes(size, order)
    assert as_.read(0x10003, size) == (value, MEMTX_OK)
    data, res = as_.read_bytes(0x10003, size)
    assert res == MEMTX_OK and data == value.to_bytes(size, order)
    # Only the low `size` bytes of the value are stored.
    assert as_.write(0x10010, (1 << 72) - 1, size) == MEMTX_OK
    assert as_.read(0x10010, 8)[0] == int.from_bytes(b"\xff" * size + bytes(8 - size), order)


def test_ram_byte_transfers(backing) -> None:
    _, system, as_ = machine()
    system.add_subregion(0x2000, MemoryRegion.init_ram("ram", 0x1000, hostmem=backing))
    assert as_.write_bytes(0x2100, b"hello world") == MEMTX_OK
    assert as_.read_bytes(0x2100, 11) == (b"hello world", MEMTX_OK)
    buf = bytearray(5)
    assert as_.read_into(0x2106, buf) == MEMTX_OK and buf == b"world"
    assert as_.read_bytes(0x2100, 0) == (b"", MEMTX_OK)
    assert as_.write_bytes(0x2100, b"") == MEMTX_OK


def test_ram_through_alias_with_offset(backing) -> None:
    _, system, as_ = machine()
    ram = MemoryRegion.init_ram("ram", 0x1000, hostmem=backing)
    system.add_subregion(0, ram)
    system.add_subregion(0x8000, MemoryRegion.init_alias("win", ram, 0x400, 0x100))
    as_.write(0x8010, 0xCAFE, 2)
    assert backing.view[0x410] == 0xFE and as_.read(0x410, 2) == (0xCAFE, MEMTX_OK)


def test_load_across_two_ram_ranges(backing) -> None:
    # Adjacent RAM of two regions: the byte path walks across the boundary.
    _, system, as_ = machine()
    system.add_subregion(0x0, MemoryRegion.init_ram("a", 0x100, hostmem=backing))
    system.add_subregion(0x100, MemoryRegion.init_ram("b", 0x100, hostmem=backing,
                                                      hostmem_offset=0x1000))
    assert as_.write_bytes(0xFE, b"\x01\x02\x03\x04") == MEMTX_OK
    assert bytes(backing.view[0xFE:0x100]) == b"\x01\x02"
    assert bytes(backing.view[0x1000:0x1002]) == b"\x03\x04"
    assert as_.read_bytes(0xFE, 4) == (b"\x01\x02\x03\x04", MEMTX_OK)


def test_load_store_crossing_the_end_of_a_ram_range_is_not_split(backing) -> None:
    # Reference 4.2: ld*/st* translate once; a RAM range shorter than the
    # access is not direct, so the whole access goes to the RAM region's
    # (unassigned) ops: 0 and DECODE_ERROR, the store dropped. Never split.
    _, system, as_ = machine()
    system.add_subregion(0x0, MemoryRegion.init_ram("a", 0x100, hostmem=backing))
    system.add_subregion(0x100, MemoryRegion.init_ram("b", 0x100, hostmem=backing,
                                                      hostmem_offset=0x1000))
    backing.view[0xFE:0x100] = b"\x01\x02"
    backing.view[0x1000:0x1002] = b"\x03\x04"
    assert as_.read(0xFE, 4) == (0, MEMTX_DECODE_ERROR)
    assert as_.write(0xFE, 0xFFFFFFFF, 4) == MEMTX_DECODE_ERROR
    assert bytes(backing.view[0xFE:0x100]) == b"\x01\x02"
    assert bytes(backing.view[0x1000:0x1002]) == b"\x03\x04"
    # Inside one range it is direct as usual; RAM followed by a hole likewise fails.
    assert as_.read(0xFC, 4) == (0x0201_0000, MEMTX_OK)
    assert as_.read(0x1FE, 4) == (0, MEMTX_DECODE_ERROR)


# -- ROM ---------------------------------------------------------------------------


def test_rom_write_is_dropped_with_decode_error(backing) -> None:
    _, system, as_ = machine()
    rom = MemoryRegion.init_rom("pc.bios", 0x100, hostmem=backing)
    system.add_subregion(0xFFF00, rom)
    backing.view[0xF0] = 0xEA
    assert as_.read(0xFFFF0, 1) == (0xEA, MEMTX_OK)
    assert as_.write(0xFFFF0, 0x12, 1) == MEMTX_DECODE_ERROR
    assert as_.write_bytes(0xFFFF0, b"\x12\x34") == MEMTX_DECODE_ERROR
    assert backing.view[0xF0] == 0xEA and backing.view[0xF1] == 0


def test_write_rom_fills_rom_and_skips_mmio_and_holes(backing) -> None:
    _, system, as_ = machine()
    rom = MemoryRegion.init_rom("rom", 0x10, hostmem=backing)
    dev = regs()
    system.add_subregion(0x0, rom)
    system.add_subregion(0x10, MemoryRegion.init_io("dev", 0x10, dev))
    # 0x20..0x2f: hole; then RAM
    system.add_subregion(0x30, MemoryRegion.init_ram("ram", 0x10, hostmem=backing,
                                                     hostmem_offset=0x100))
    data = bytes(range(1, 0x41))
    assert as_.write_rom(0, data) == MEMTX_OK
    assert bytes(backing.view[0:0x10]) == data[0:0x10]
    assert bytes(backing.view[0x100:0x110]) == data[0x30:0x40]
    assert dev.calls == [] and dev.mem == bytearray(0x100)
    assert as_.read_bytes(0, 0x10) == (data[:0x10], MEMTX_OK)


def test_write_rom_fills_a_rom_device_in_romd_mode() -> None:
    _, system, as_ = machine()
    ops = regs()
    flash = MemoryRegion.init_rom_device("flash", 0x100, ops)
    system.add_subregion(0x1000, flash)
    assert as_.write_rom(0x1000, b"\xde\xad") == MEMTX_OK
    assert as_.read(0x1000, 2) == (0xADDE, MEMTX_OK)
    assert ops.calls == []  # romd reads are direct
    # Writes go to the device's ops, not to the backing.
    assert as_.write(0x1000, 0x1234, 2) == MEMTX_OK
    assert ops.calls == [("w", 0, 0x1234, 2)]
    assert as_.read(0x1000, 2) == (0xADDE, MEMTX_OK)
    flash.rom_device_set_romd(False)  # now reads reach the ops too
    assert as_.read(0x1000, 2) == (0x1234, MEMTX_OK)
    assert as_.read_bytes(0x1000, 2) == (b"\x34\x12", MEMTX_OK)


# -- holes -------------------------------------------------------------------------


def test_holes_read_zero_with_decode_error() -> None:
    _, system, as_ = machine()
    assert as_.read(0xF0000000, 4) == (0, MEMTX_DECODE_ERROR)
    assert as_.read(0xF0000000, 8) == (0, MEMTX_DECODE_ERROR)
    assert as_.read_bytes(0xF0000001, 13) == (bytes(13), MEMTX_DECODE_ERROR)
    assert as_.write(0xF0000000, 1, 4) == MEMTX_DECODE_ERROR
    assert as_.write_bytes(0xF0000000, b"abc") == MEMTX_DECODE_ERROR


def test_empty_address_space() -> None:
    as_ = AddressSpace(None, "nothing")
    assert as_.flatview.ranges == []
    assert as_.read(0, 1) == (0, MEMTX_DECODE_ERROR)


# -- MMIO validity: edu ------------------------------------------------------------


def test_edu_like_device_valid_and_impl_4_to_8() -> None:
    _, system, as_ = machine()
    edu = Edu()
    EDU = 0xFEA00000
    system.add_subregion(EDU, MemoryRegion.init_io("edu-mmio", 0x100000, edu))
    assert as_.read(EDU, 1) == (0, MEMTX_DECODE_ERROR)
    assert as_.read(EDU, 2) == (0, MEMTX_DECODE_ERROR)
    assert as_.read_bytes(EDU, 1) == (b"\0", MEMTX_DECODE_ERROR)
    assert as_.read_bytes(EDU, 2) == (b"\0\0", MEMTX_DECODE_ERROR)
    assert as_.read_bytes(EDU, 3) == (b"\0\0\0", MEMTX_DECODE_ERROR)  # 2 + 1, both invalid
    assert edu.calls == []
    assert as_.read_bytes(EDU, 4) == (b"\xed\x00\x00\x01", MEMTX_OK)
    assert as_.read(EDU, 4) == (0x010000ED, MEMTX_OK)
    # 8 bytes at an aligned address: one 8-byte access.
    edu.calls.clear()
    assert as_.read_bytes(EDU, 8) == (b"\xff" * 8, MEMTX_OK)
    assert edu.calls == [(0, 8)]
    # +2: alignment cuts it into 2-byte pieces, each invalid.
    edu.calls.clear()
    assert as_.read_bytes(EDU + 2, 4) == (bytes(4), MEMTX_DECODE_ERROR)
    assert as_.read(EDU + 2, 4) == (0, MEMTX_DECODE_ERROR)
    assert edu.calls == []
    assert as_.read(EDU + 8, 4) == (0, MEMTX_OK)


# -- byte-path splitting (access_size) ---------------------------------------------


def test_byte_path_cuts_by_alignment_and_valid_max() -> None:
    _, system, as_ = machine()
    dev = regs()
    system.add_subregion(0x1000, MemoryRegion.init_io("dev", 0x100, dev))
    dev.mem[:16] = bytes(range(16))
    assert as_.read_bytes(0x1001, 11) == (bytes(range(1, 12)), MEMTX_OK)
    assert dev.calls == [("r", 1, 1), ("r", 2, 2), ("r", 4, 4), ("r", 8, 4)]
    dev.calls.clear()
    assert as_.read_bytes(0x1006, 5) == (bytes(range(6, 11)), MEMTX_OK)
    assert dev.calls == [("r", 6, 2), ("r", 8, 2), ("r", 10, 1)]
    dev.calls.clear()
    assert as_.read_bytes(0x1000, 8) == (bytes(range(8)), MEMTX_OK)  # valid.max 0 -> 4
    assert dev.calls == [("r", 0, 4), ("r", 4, 4)]
    dev.calls.clear()
    assert as_.write_bytes(0x1003, b"\xaa\xbb\xcc") == MEMTX_OK
    assert dev.calls == [("w", 3, 0xAA, 1), ("w", 4, 0xCCBB, 2)]
    assert dev.mem[3:6] == b"\xaa\xbb\xcc"


def test_byte_path_impl_unaligned_lifts_the_alignment_limit() -> None:
    _, system, as_ = machine()
    dev = regs(valid=AccessConstraints(1, 8, unaligned=True),
               impl=AccessConstraints(1, 8, unaligned=True))
    dev.mem[:16] = bytes(range(16))
    system.add_subregion(0x1000, MemoryRegion.init_io("dev", 0x100, dev))
    assert as_.read_bytes(0x1001, 11) == (bytes(range(1, 12)), MEMTX_OK)
    assert dev.calls == [("r", 1, 8), ("r", 9, 2), ("r", 11, 1)]


def test_byte_path_walks_ram_mmio_hole(backing) -> None:
    _, system, as_ = machine()
    system.add_subregion(0x000, MemoryRegion.init_ram("ram", 0x100, hostmem=backing))
    dev = regs()
    system.add_subregion(0x100, MemoryRegion.init_io("dev", 0x10, dev))
    backing.view[0xF8:0x100] = b"RAMRAMRA"
    dev.mem[:16] = bytes(range(0x40, 0x50))
    data, res = as_.read_bytes(0xF8, 0x20)
    assert data == b"RAMRAMRA" + bytes(range(0x40, 0x50)) + bytes(8)
    assert res == MEMTX_DECODE_ERROR
    assert dev.calls == [("r", 0, 4), ("r", 4, 4), ("r", 8, 4), ("r", 12, 4)]
    assert as_.read_bytes(0xF8, 0x18) == (b"RAMRAMRA" + bytes(range(0x40, 0x50)), MEMTX_OK)
    dev.calls.clear()
    assert as_.write_bytes(0xFE, b"\x01\x02\x03\x04\x05\x06\x07\x08") == MEMTX_OK
    assert bytes(backing.view[0xFE:0x100]) == b"\x01\x02"
    assert dev.calls == [("w", 0, 0x06050403, 4), ("w", 4, 0x0807, 2)]
    assert as_.write_bytes(0x10E, b"\x00" * 4) == MEMTX_DECODE_ERROR  # runs into the hole


# -- MMIO not clamped to its flat range ---------------------------------------------


def test_mmio_access_is_not_clamped_to_its_flat_range() -> None:
    # x86: pci-conf-idx 0xcf8..0xcfb, piix3-reset-control at 0xcf9 (prio 1).
    sysmem = MemorySystem("pc")
    io_root = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
    io_as = AddressSpace(io_root, "I/O", system=sysmem)
    conf = regs(Endianness.LITTLE)
    conf.mem[:4] = (0x8000005C).to_bytes(4, "little")
    reset = regs(Endianness.LITTLE)
    io_root.add_subregion(0xCF8, MemoryRegion.init_io("pci-conf-idx", 4, conf))
    io_root.add_subregion_overlap(0xCF9, MemoryRegion.init_io("piix3-reset-control", 1, reset),
                                  1)
    assert io_as.find_flat_range(0xCF9).mr.name == "piix3-reset-control"
    assert io_as.read(0xCF8, 4) == (0x8000005C, MEMTX_OK)
    assert io_as.read(0xCF8, 2) == (0x005C, MEMTX_OK)
    assert io_as.read(0xCF9, 1) == (0x00, MEMTX_OK)
    assert io_as.read_bytes(0xCF8, 4) == (b"\x5c\x00\x00\x80", MEMTX_OK)
    assert conf.calls == [("r", 0, 4), ("r", 0, 2), ("r", 0, 4)]
    assert reset.calls == [("r", 0, 1)]
    assert io_as.write(0xCF8, 0x80000000, 4) == MEMTX_OK
    assert conf.calls[-1] == ("w", 0, 0x80000000, 4) and len(reset.calls) == 1


def test_x86_io_root_unassigned_io_ops() -> None:
    io_root = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
    rtc = regs()
    io_root.add_subregion(0x70, MemoryRegion.init_io("rtc", 2, rtc))
    io_as = AddressSpace(io_root, "I/O")
    assert io_as.read(0x1234, 1) == (0xFF, MEMTX_OK)
    assert io_as.read(0x1234, 2) == (0xFFFF, MEMTX_OK)
    assert io_as.read(0x1234, 4) == (0xFFFFFFFF, MEMTX_OK)
    assert io_as.write(0x1234, 0, 4) == MEMTX_OK
    # The root's own ops fill the holes; rtc gets the rest unclamped (4 bytes).
    assert io_as.read_bytes(0x6E, 6) == (b"\xff\xff\0\0\0\0", MEMTX_OK)
    assert rtc.calls == [("r", 0, 4)]
    assert io_as.read_bytes(0x72, 2) == (b"\xff\xff", MEMTX_OK)
    assert io_as.read(0x10000 - 1, 1) == (0xFF, MEMTX_OK)
    assert io_as.read(0x10000, 1) == (0, MEMTX_DECODE_ERROR)


# -- endianness ----------------------------------------------------------------------


def test_big_endian_device_on_little_endian_target() -> None:
    _, system, as_ = machine(big_endian=False)
    dev = regs(Endianness.BIG, big=True)
    dev.mem[:4] = b"\x12\x34\x56\x78"  # register value 0x12345678
    system.add_subregion(0x1000, MemoryRegion.init_io("be", 0x100, dev))
    assert as_.read(0x1000, 4) == (0x78563412, MEMTX_OK)  # load in target order
    assert as_.read_bytes(0x1000, 4) == (b"\x12\x34\x56\x78", MEMTX_OK)  # device order
    assert as_.read(0x1000, 1) == (0x12, MEMTX_OK)
    assert as_.write(0x1004, 0x11223344, 4) == MEMTX_OK
    assert dev.calls[-1] == ("w", 4, 0x44332211, 4)
    assert as_.write_bytes(0x1008, b"\x12\x34\x56\x78") == MEMTX_OK
    assert dev.calls[-1] == ("w", 8, 0x12345678, 4)


@pytest.mark.parametrize(("endianness", "swapped"), [
    (Endianness.NATIVE, False), (Endianness.BIG, False), (Endianness.LITTLE, True)])
def test_devices_on_big_endian_target(endianness: Endianness, swapped: bool) -> None:
    _, system, as_ = machine(big_endian=True)
    dev_big = endianness is not Endianness.LITTLE
    dev = regs(endianness, big=dev_big)
    dev.mem[:4] = (0x12345678).to_bytes(4, "big" if dev_big else "little")
    system.add_subregion(0x1000, MemoryRegion.init_io("d", 0x100, dev))
    assert as_.read(0x1000, 4) == (0x78563412 if swapped else 0x12345678, MEMTX_OK)
    expected = b"\x12\x34\x56\x78" if dev_big else b"\x78\x56\x34\x12"
    assert as_.read_bytes(0x1000, 4) == (expected, MEMTX_OK)
    as_.write(0x1000, 0xAABBCCDD, 4)
    assert dev.calls[-1] == ("w", 0, 0xDDCCBBAA if swapped else 0xAABBCCDD, 4)


@pytest.mark.parametrize("target_big", [False, True])
@pytest.mark.parametrize("dev_end", [Endianness.LITTLE, Endianness.BIG])
@pytest.mark.parametrize(("imin", "imax"), [(1, 1), (1, 2), (4, 4), (8, 8), (0, 0)])
def test_byte_path_round_trips_registers_whatever_impl(target_big, dev_end, imin, imax) -> None:
    # A device whose registers are bytes in its own order reads back exactly
    # those bytes through the byte path, however accesses are split or joined.
    _, system, as_ = machine(target_big)
    dev = regs(dev_end, impl=AccessConstraints(imin, imax), big=dev_end is Endianness.BIG)
    dev.mem[:] = bytes((i * 7 + 3) & 0xFF for i in range(0x100))
    system.add_subregion(0x1000, MemoryRegion.init_io("d", 0x100, dev))
    for size in (1, 2, 4, 8):
        data, res = as_.read_bytes(0x1010, size)
        assert res == MEMTX_OK and data == bytes(dev.mem[0x10:0x10 + size])
    # Loads: the same bytes interpreted in the target's order.
    for size in (1, 2, 4, 8):
        value, res = as_.read(0x1020, size)
        assert value == int.from_bytes(dev.mem[0x20:0x20 + size],
                                       "big" if target_big else "little")


def test_impl_split_on_the_load_path() -> None:
    _, system, as_ = machine()
    dev = regs(Endianness.LITTLE, impl=AccessConstraints(1, 1))
    dev.mem[:4] = b"\x01\x02\x03\x04"
    system.add_subregion(0x1000, MemoryRegion.init_io("d", 0x100, dev))
    assert as_.read(0x1000, 4) == (0x04030201, MEMTX_OK)
    assert dev.calls == [("r", 0, 1), ("r", 1, 1), ("r", 2, 1), ("r", 3, 1)]


def test_impl_widening_quirk_through_the_address_space() -> None:
    class Wide(MemoryRegionOps):
        impl = AccessConstraints(4, 4)
        endianness = Endianness.BIG

        def __init__(self) -> None:
            self.calls: list = []

        def read(self, offset, size):
            self.calls.append((offset, size))
            return 0xAABBCCDD

    _, system, as_ = machine()
    ops = Wide()
    system.add_subregion(0x1000, MemoryRegion.init_io("w", 0x100, ops))
    assert as_.read_bytes(0x1001, 1) == (b"\xaa", MEMTX_OK)
    assert ops.calls == [(1, 4)]


# -- attributes, re-entrancy ---------------------------------------------------------


def test_memory_only_attribute_refuses_mmio(backing) -> None:
    _, system, as_ = machine()
    system.add_subregion(0, MemoryRegion.init_ram("ram", 0x100, hostmem=backing))
    dev = regs()
    system.add_subregion(0x100, MemoryRegion.init_io("dev", 0x100, dev))
    system.add_subregion(0x200, MemoryRegion.init_ram("ram2", 0x100, hostmem=backing))
    flash = MemoryRegion.init_rom_device("flash", 0x100, regs())
    system.add_subregion(0x300, flash)
    mem_only = MemTxAttrs(memory=True)
    backing.view[0:4] = b"\x01\x02\x03\x04"
    assert as_.read(0, 4, mem_only) == (0x04030201, MEMTX_OK)
    assert as_.read(0x100, 4, mem_only) == (0, MEMTX_ACCESS_ERROR)
    assert as_.read(0x300, 4, mem_only) == (0, MEMTX_ACCESS_ERROR)  # a ROM device is not RAM
    assert as_.write(0x100, 1, 4, mem_only) == MEMTX_ACCESS_ERROR
    assert as_.write(0, 0x11, 1, mem_only) == MEMTX_OK
    backing.view[0xFE:0x100] = b"\x55\x66"
    assert as_.read_bytes(0xFE, 4, mem_only) == (b"\x55\x66\0\0", MEMTX_ACCESS_ERROR)
    # The refused MMIO chunk is not clamped to its range, so it swallows the
    # rest of the transfer, ram2 included (QEMU flatview_read_continue).
    data, res = as_.read_bytes(0xFE, 0x112, mem_only)
    assert res == MEMTX_ACCESS_ERROR and data == b"\x55\x66" + bytes(0x110)
    assert as_.read_bytes(0x200, 4, mem_only) == (b"\x11\x02\x03\x04", MEMTX_OK)
    assert as_.write_bytes(0x100, b"abcd", mem_only) == MEMTX_ACCESS_ERROR
    assert dev.calls == []


def test_reentrant_mmio_through_the_address_space() -> None:
    _, system, as_ = machine()
    owner = Owner("dev", path="/machine/peripheral/dev0")
    seen: list = []

    class Doorbell(MemoryRegionOps):
        def read(self, offset, size):
            seen.append(as_.read(0x2000, 4))  # the same device's other BAR
            seen.append(as_.read(0x3000, 4))  # another device
            return 0x1234

    bar1 = regs()
    bar1.mem[:4] = b"\x78\x56\x34\x12"
    other = regs()
    other.mem[:4] = b"\x01\0\0\0"
    system.add_subregion(0x1000, MemoryRegion.init_io("bar0", 0x100, Doorbell(), owner=owner))
    system.add_subregion(0x2000, MemoryRegion.init_io("bar1", 0x100, bar1, owner=owner))
    system.add_subregion(0x3000, MemoryRegion.init_io(
        "other", 0x100, other, owner=Owner("dev", path="/machine/peripheral/dev1")))
    assert as_.read(0x1000, 4) == (0x1234, MEMTX_OK)
    assert seen == [(0, MEMTX_ACCESS_ERROR), (1, MEMTX_OK)]
    assert bar1.calls == []
    assert as_.read(0x2000, 4) == (0x12345678, MEMTX_OK)


# -- IOMMU ------------------------------------------------------------------------


class PageIOMMU(IOMMUMemoryRegion):
    """Maps 4 KiB page n of the window to page n + 16 of ``target``; page 0 read-only."""

    __slots__ = ("calls", "perms", "target")

    def __init__(self, name: str, size: int, target: AddressSpace, perms: dict[int, int]):
        super().__init__(name, size)
        self.target = target
        self.perms = perms
        self.calls: list = []

    def translate(self, offset, is_write, attrs):
        self.calls.append((offset, is_write))
        page = offset >> 12
        return IOMMUTLBEntry(self.target, (page + 16) << 12, 0xFFF,
                             self.perms.get(page, IOMMU_NONE))


def test_iommu_translates_into_another_address_space(backing) -> None:
    sysmem, system, memory = machine()
    ram = MemoryRegion.init_ram("ram", 0x20000, hostmem=HostMemory.anonymous("r", 0x20000))
    system.add_subregion(0, ram)
    dev = regs()
    system.add_subregion(0x13000, MemoryRegion.init_io("dev", 0x100, dev))  # page 3 -> 0x13000
    dma_root = MemoryRegion.init_container("dma-root", ADDR_SPACE_END)
    iommu = PageIOMMU("dmar", 0x10000, memory, {0: IOMMU_RO, 1: IOMMU_RW, 3: IOMMU_RW})
    dma_root.add_subregion(0x100000, iommu)
    dma = AddressSpace(dma_root, "pci-dma", system=sysmem)
    ram.hostmem.view[0x10010:0x10014] = b"\x01\x02\x03\x04"
    assert dma.read(0x100010, 4) == (0x04030201, MEMTX_OK)
    assert iommu.calls[-1] == (0x10, False)
    # Read-only page: the write is refused and memory unchanged.
    assert dma.write(0x100010, 0xFFFFFFFF, 4) == MEMTX_DECODE_ERROR
    assert dma.write_bytes(0x100010, b"\xff") == MEMTX_DECODE_ERROR
    assert bytes(ram.hostmem.view[0x10010:0x10014]) == b"\x01\x02\x03\x04"
    # Read-write page.
    assert dma.write(0x101020, 0xBEEF, 2) == MEMTX_OK
    assert bytes(ram.hostmem.view[0x11020:0x11022]) == b"\xef\xbe"
    # A transfer across pages is translated page by page.
    ram.hostmem.view[0x10FFE:0x11002] = b"\xaa\xbb\xcc\xdd"
    assert dma.read_bytes(0x100FFE, 4) == (b"\xaa\xbb\xcc\xdd", MEMTX_OK)
    # A load is translated once: the page clamps it, so it is not direct (4.2).
    assert dma.read(0x100FFE, 4) == (0, MEMTX_DECODE_ERROR)
    assert dma.read(0x100FFC, 4) == (0xBBAA0000, MEMTX_OK)
    # No permission at all (page 2) and MMIO behind the IOMMU (page 3).
    assert dma.read(0x102000, 4) == (0, MEMTX_DECODE_ERROR)
    dev.mem[4:8] = b"\x11\x22\x33\x44"
    assert dma.read(0x103004, 4) == (0x44332211, MEMTX_OK)
    assert dev.calls == [("r", 4, 4)]


def test_iommu_translation_loop_is_reported() -> None:
    from memexpose.errors import MemoryModelError

    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", ADDR_SPACE_END)
    as_ = AddressSpace(root, "loop", system=sysmem)

    class Loop(IOMMUMemoryRegion):
        __slots__ = ()

        def translate(self, offset, is_write, attrs):
            return IOMMUTLBEntry(as_, offset, 0xFFF, IOMMU_RW)

    root.add_subregion(0, Loop("loop", 0x1000))
    with pytest.raises(MemoryModelError):
        as_.read(0x10, 4)


# -- invalid accesses ----------------------------------------------------------------


def test_invalid_access_sizes_and_addresses() -> None:
    _, system, as_ = machine()
    for size in (0, 9, -1):
        with pytest.raises(InvalidAccessError) as info:
            as_.read(0x1000, size)
        assert info.value.size == size and info.value.addr == 0x1000
        with pytest.raises(InvalidAccessError):
            as_.write(0x1000, 0, size)
    for addr, size in [(ADDR_SPACE_END, 1), (ADDR_SPACE_END - 4, 8), (-1, 1)]:
        with pytest.raises(InvalidAccessError):
            as_.read(addr, size)
        with pytest.raises(InvalidAccessError):
            as_.write(addr, 0, size)
    with pytest.raises(InvalidAccessError):
        as_.read_bytes(ADDR_SPACE_END - 1, 2)
    with pytest.raises(InvalidAccessError):
        as_.write_bytes(ADDR_SPACE_END - 1, b"ab")
    with pytest.raises(InvalidAccessError):
        as_.write_rom(ADDR_SPACE_END - 1, b"ab")
    # The last bytes of the space are fine.
    assert as_.read(ADDR_SPACE_END - 8, 8) == (0, MEMTX_DECODE_ERROR)
    assert as_.read_bytes(ADDR_SPACE_END - 1, 1) == (b"\0", MEMTX_DECODE_ERROR)
