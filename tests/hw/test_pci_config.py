"""PCIConfigSpace: masks, write-1-to-clear, read-only fields, capability lists."""

from __future__ import annotations

import pytest

from memexpose.errors import HwModelError, PCIConfigAccessError
from memexpose.hw import PCIConfigSpace
from memexpose.hw import pci_regs as R


def test_default_masks_are_qemus() -> None:
    cfg = PCIConfigSpace()
    cfg.set(R.PCI_VENDOR_ID, 0x11E81234, 4)
    cfg.write(R.PCI_VENDOR_ID, 0xFFFFFFFF, 4)
    assert cfg.read(R.PCI_VENDOR_ID, 4) == 0x11E81234  # read-only
    cfg.write(R.PCI_COMMAND, 0xFFFF, 2)
    # IO | MEMORY | MASTER | SERR | INTX_DISABLE, as QEMU 7.2 answers.
    assert cfg.read(R.PCI_COMMAND, 2) == 0x0507
    cfg.write(R.PCI_CACHE_LINE_SIZE, 0xFFFFFFFF, 4)
    assert cfg.read(R.PCI_CACHE_LINE_SIZE, 4) == 0x000000FF  # latency, header, BIST RO
    cfg.write(R.PCI_INTERRUPT_LINE, 0xFFFF, 2)
    assert cfg.read(R.PCI_INTERRUPT_LINE, 2) == 0x00FF  # pin is read-only
    cfg.write(0x40, 0xDEADBEEF, 4)  # device-specific space is writable until a cap is added
    assert cfg.read(0x40, 4) == 0xDEADBEEF
    cfg._check_invariants()


def test_write_one_to_clear_status() -> None:
    cfg = PCIConfigSpace()
    cfg.set(R.PCI_STATUS, R.PCI_STATUS_SIG_SYSTEM_ERROR | R.PCI_STATUS_REC_MASTER_ABORT
            | R.PCI_STATUS_CAP_LIST, 2)
    cfg.write(R.PCI_STATUS, R.PCI_STATUS_REC_MASTER_ABORT, 2)
    assert cfg.read(R.PCI_STATUS, 2) == R.PCI_STATUS_SIG_SYSTEM_ERROR | R.PCI_STATUS_CAP_LIST
    cfg.write(R.PCI_STATUS, 0, 2)  # writing 0 clears nothing
    assert cfg.read(R.PCI_STATUS, 2) & R.PCI_STATUS_SIG_SYSTEM_ERROR
    cfg.write(R.PCI_COMMAND, 0xFFFF0000, 4)  # a dword write reaches status too
    assert cfg.read(R.PCI_STATUS, 2) == R.PCI_STATUS_CAP_LIST  # CAP_LIST is read-only


def test_set_masks_keep_them_disjoint() -> None:
    cfg = PCIConfigSpace()
    cfg.set_wmask(0x50, 0xFF, 1)
    cfg.set_w1cmask(0x50, 0x0F, 1)
    assert cfg.wmask[0x50] == 0xF0 and cfg.w1cmask[0x50] == 0x0F
    cfg.set(0x50, 0x0F, 1)
    cfg.write(0x50, 0xA5, 1)
    assert cfg.read(0x50, 1) == 0xA0 | (0x0F & ~0x05)
    cfg._check_invariants()


@pytest.mark.parametrize(("offset", "size"), [(0, 3), (1, 2), (2, 4), (0xFE, 4), (-1, 1),
                                              (0x100, 1), (0, 8)])
def test_illegal_api_accesses_raise(offset: int, size: int) -> None:
    cfg = PCIConfigSpace()
    with pytest.raises(PCIConfigAccessError) as info:
        cfg.read(offset, size)
    assert info.value.offset == offset and info.value.size == size
    with pytest.raises(PCIConfigAccessError):
        cfg.write(offset, 0, size)


def test_capabilities_prepend_and_become_read_only() -> None:
    cfg = PCIConfigSpace()
    first = cfg.add_capability(R.PCI_CAP_ID_MSI, 0x0E)
    assert first == 0x40
    second = cfg.add_capability(R.PCI_CAP_ID_VNDR, 8)
    assert second == 0x50  # after 0x40 + 0x0e rounded up to 4
    assert cfg.read(R.PCI_STATUS, 2) & R.PCI_STATUS_CAP_LIST
    assert cfg.read(R.PCI_CAPABILITY_LIST, 1) == second
    assert cfg.capabilities() == [(R.PCI_CAP_ID_VNDR, 0x50), (R.PCI_CAP_ID_MSI, 0x40)]
    assert cfg.find_capability(R.PCI_CAP_ID_MSI) == 0x40
    assert cfg.find_capability(R.PCI_CAP_ID_MSIX) is None
    cfg.write(0x40, 0xFFFFFFFF, 4)
    cfg.write(0x50, 0xFFFFFFFF, 4)
    assert cfg.read(0x40, 2) == 0x0005  # id and next pointer are read-only
    assert cfg.read(0x50, 2) == 0x4009
    # QEMU clears wmask only over the capability's own bytes: 0x4e..0x4f stay writable.
    cfg.write(0x4C, 0xFFFFFFFF, 4)
    assert cfg.read(0x4C, 4) == 0xFFFF0000
    third = cfg.add_capability(R.PCI_CAP_ID_PM, 8, offset=0x80)
    assert third == 0x80
    cfg._check_invariants()


def test_capability_placement_errors() -> None:
    cfg = PCIConfigSpace()
    cfg.add_capability(R.PCI_CAP_ID_MSI, 0x18, offset=0x60)
    with pytest.raises(HwModelError, match="overlaps"):
        cfg.add_capability(R.PCI_CAP_ID_PM, 8, offset=0x70)
    with pytest.raises(HwModelError, match="dword aligned"):
        cfg.add_capability(R.PCI_CAP_ID_PM, 8, offset=0x42)
    with pytest.raises(HwModelError, match="dword aligned"):
        cfg.add_capability(R.PCI_CAP_ID_PM, 8, offset=0x20)
    with pytest.raises(HwModelError, match="size"):
        cfg.add_capability(R.PCI_CAP_ID_PM, 1)
    while True:
        try:
            cfg.add_capability(R.PCI_CAP_ID_VNDR, 0x20)
        except HwModelError as exc:
            assert "no room" in str(exc)
            break


def test_capability_walk_survives_a_loop() -> None:
    cfg = PCIConfigSpace()
    cfg.add_capability(R.PCI_CAP_ID_VNDR, 4)
    cfg.config[0x41] = 0x40  # a guest-made (impossible) loop, written by the device
    assert cfg.capabilities() == [(R.PCI_CAP_ID_VNDR, 0x40)]


def test_express_space_and_extended_capabilities() -> None:
    cfg = PCIConfigSpace(R.PCIE_CONFIG_SPACE_SIZE)
    assert cfg.express and cfg.read(0xFFC, 4) == 0
    with pytest.raises(HwModelError, match="0x100"):
        cfg.add_ext_capability(0x0001, 1, 0x140, 0x40)
    cfg.add_ext_capability(0x0001, 2, 0x100, 0x40)
    cfg.add_ext_capability(0x000B, 1, 0x180, 0x10)
    assert cfg.ext_capabilities() == [(0x0001, 0x100), (0x000B, 0x180)]
    assert cfg.read(0x100, 4) == 0x0001 | 2 << 16 | 0x180 << 20
    cfg.write(0x100, 0, 4)
    assert cfg.read(0x100, 4) >> 20 == 0x180  # read-only
    with pytest.raises(HwModelError, match="overlaps"):
        cfg.add_ext_capability(0x0002, 1, 0x180, 8)
    with pytest.raises(HwModelError):
        PCIConfigSpace().add_ext_capability(1, 1, 0x100, 8)
    with pytest.raises(HwModelError):
        PCIConfigSpace(512)
