"""The bytes of one PCI function's configuration space, with QEMU's masks.

A config space is 256 bytes (4 KiB for PCI Express) plus two masks of the
same size, as in QEMU's ``PCIDevice``:

* ``wmask``: bits the guest may write; every other bit keeps its value
  (read-only fields: vendor and device ids, class, header type, BAR type
  bits, capability headers);
* ``w1cmask``: bits a guest write of 1 clears (status error bits).

A guest write of ``value`` to a byte does
``config = (config & ~wmask) | (value & wmask)``, then
``config &= ~(value & w1cmask)``. No bit is in both masks.

This module knows bytes and masks only. What a write *means* (a BAR moved,
MSI enabled) is up to ``PCIDevice``.
"""

from __future__ import annotations

from memexpose.errors import HwModelError, PCIConfigAccessError
from memexpose.hw.pci import regs as R

__all__ = ["PCIConfigSpace"]


def _check(offset: int, size: int, limit: int) -> None:
    if size not in (1, 2, 4):
        raise PCIConfigAccessError(
            f"config access of {size} bytes at {offset:#x}: sizes are 1, 2 or 4 "
            "(split 8-byte accesses into two dwords)", offset=offset, size=size)
    if offset < 0 or offset + size > limit:
        raise PCIConfigAccessError(
            f"config access of {size} bytes at {offset:#x} is outside the {limit:#x}-byte "
            "config space", offset=offset, size=size)
    if offset & (size - 1):
        raise PCIConfigAccessError(
            f"config access of {size} bytes at {offset:#x} is not naturally aligned; "
            f"use offset {offset & ~(size - 1):#x}", offset=offset, size=size)


class PCIConfigSpace:
    """Config bytes, write masks and the capability list of one function.

    Args:
        size: 256 (conventional PCI) or 4096 (PCI Express).

    Invariants:
        * ``config``, ``wmask``, ``w1cmask`` and ``used`` all have ``size`` bytes;
        * no bit is set in both ``wmask`` and ``w1cmask``;
        * ``used`` marks the header and every capability (rounded up to 4
          bytes); capabilities never overlap;
        * the capability list is reachable from ``PCI_CAPABILITY_LIST`` and
          ``PCI_STATUS_CAP_LIST`` is set iff the list is not empty.
    """

    __slots__ = ("config", "size", "used", "w1cmask", "wmask")

    def __init__(self, size: int = R.PCI_CONFIG_SPACE_SIZE) -> None:
        if size not in (R.PCI_CONFIG_SPACE_SIZE, R.PCIE_CONFIG_SPACE_SIZE):
            raise HwModelError(f"config space size must be 256 or 4096 bytes, not {size}")
        self.size = size
        self.config = bytearray(size)
        self.wmask = bytearray(size)
        self.w1cmask = bytearray(size)
        self.used = bytearray(size)
        self.used[:R.PCI_CONFIG_HEADER_SIZE] = b"\xff" * R.PCI_CONFIG_HEADER_SIZE
        # QEMU's pci_init_wmask / pci_init_w1cmask for every function.
        self.wmask[R.PCI_CACHE_LINE_SIZE] = 0xFF
        self.wmask[R.PCI_INTERRUPT_LINE] = 0xFF
        self.set_wmask(R.PCI_COMMAND, R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY
                       | R.PCI_COMMAND_MASTER | R.PCI_COMMAND_INTX_DISABLE
                       | R.PCI_COMMAND_SERR, 2)
        self.wmask[R.PCI_CONFIG_HEADER_SIZE:] = b"\xff" * (size - R.PCI_CONFIG_HEADER_SIZE)
        self.set_w1cmask(R.PCI_STATUS, R.PCI_STATUS_PARITY | R.PCI_STATUS_SIG_TARGET_ABORT
                         | R.PCI_STATUS_REC_TARGET_ABORT | R.PCI_STATUS_REC_MASTER_ABORT
                         | R.PCI_STATUS_SIG_SYSTEM_ERROR | R.PCI_STATUS_DETECTED_PARITY, 2)

    @property
    def express(self) -> bool:
        """Whether this is a 4 KiB PCI Express config space."""
        return self.size == R.PCIE_CONFIG_SPACE_SIZE

    # -- raw access (no masks) -------------------------------------------------

    def get(self, offset: int, size: int) -> int:
        """Return ``size`` bytes at ``offset`` as a little-endian number (no checks)."""
        return int.from_bytes(self.config[offset:offset + size], "little")

    def set(self, offset: int, value: int, size: int) -> None:
        """Store ``value`` in ``size`` bytes at ``offset``, ignoring the masks (device side)."""
        self.config[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")

    def get_byte(self, offset: int) -> int:
        """Return the byte at ``offset``."""
        return self.config[offset]

    def get_word(self, offset: int) -> int:
        """Return the 16-bit little-endian value at ``offset``."""
        return self.config[offset] | self.config[offset + 1] << 8

    def get_long(self, offset: int) -> int:
        """Return the 32-bit little-endian value at ``offset``."""
        return int.from_bytes(self.config[offset:offset + 4], "little")

    def get_quad(self, offset: int) -> int:
        """Return the 64-bit little-endian value at ``offset``."""
        return int.from_bytes(self.config[offset:offset + 8], "little")

    def set_wmask(self, offset: int, mask: int, size: int) -> None:
        """Set which bits of ``size`` bytes at ``offset`` the guest may write."""
        self.wmask[offset:offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")
        w1c = int.from_bytes(self.w1cmask[offset:offset + size], "little") & ~mask
        self.w1cmask[offset:offset + size] = w1c.to_bytes(size, "little")

    def set_w1cmask(self, offset: int, mask: int, size: int) -> None:
        """Set which bits of ``size`` bytes at ``offset`` a guest write of 1 clears.

        Those bits leave ``wmask`` (a bit is writable or write-1-to-clear).
        """
        self.w1cmask[offset:offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")
        wm = int.from_bytes(self.wmask[offset:offset + size], "little") & ~mask
        self.wmask[offset:offset + size] = wm.to_bytes(size, "little")

    # -- guest-visible access ----------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """Return ``size`` (1, 2 or 4) bytes at ``offset``, little-endian.

        Raises:
            PCIConfigAccessError: illegal size, alignment, or outside the space.
        """
        _check(offset, size, self.size)
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write(self, offset: int, value: int, size: int) -> None:
        """Apply a guest write of ``size`` bytes through ``wmask`` and ``w1cmask``.

        Raises:
            PCIConfigAccessError: illegal size, alignment, or outside the space.
        """
        _check(offset, size, self.size)
        self.write_unchecked(offset, value, size)

    def write_unchecked(self, offset: int, value: int, size: int) -> None:
        """As ``write``, for callers that already know the access is legal (docs/pci.md P1)."""
        config, wmask, w1c = self.config, self.wmask, self.w1cmask
        for i in range(offset, offset + size):
            byte = value & 0xFF
            value >>= 8
            m = wmask[i]
            config[i] = ((config[i] & ~m) | (byte & m)) & ~(byte & w1c[i]) & 0xFF

    # -- capabilities -------------------------------------------------------------

    def _find_space(self, size: int) -> int:
        """QEMU's ``pci_find_space``: first run of ``size`` unused bytes after the header."""
        start = R.PCI_CONFIG_HEADER_SIZE
        for i in range(R.PCI_CONFIG_HEADER_SIZE, R.PCI_CONFIG_SPACE_SIZE):
            if self.used[i]:
                start = i + 1
            elif i - start + 1 == size:
                return start
        return 0

    def add_capability(self, cap_id: int, size: int, offset: int = 0) -> int:
        """Add a capability of ``size`` bytes; return its offset (QEMU's ``pci_add_capability``).

        The capability is prepended to the list, its bytes become read-only
        (``wmask`` cleared), and ``PCI_STATUS_CAP_LIST`` is set.

        Args:
            cap_id: the capability id (``PCI_CAP_ID_MSI``, ...).
            size: its length in bytes (at least 2).
            offset: where to put it (dword aligned, 0x40..0xff); 0 picks the
                first free space, as QEMU does.

        Raises:
            HwModelError: no room, a bad offset, or an overlap with another capability.
        """
        if not 2 <= size <= R.PCI_CONFIG_SPACE_SIZE - R.PCI_CONFIG_HEADER_SIZE:
            raise HwModelError(f"capability {cap_id:#x}: size {size} is not in 2..192")
        if offset == 0:
            offset = self._find_space(size)
            if offset == 0:
                raise HwModelError(
                    f"no room for a {size}-byte capability {cap_id:#x} in the 256-byte "
                    "config space; remove another capability or give a smaller one")
        else:
            if offset & 3 or offset < R.PCI_CONFIG_HEADER_SIZE or \
                    offset + size > R.PCI_CONFIG_SPACE_SIZE:
                raise HwModelError(
                    f"capability {cap_id:#x} at {offset:#x}: offsets are dword aligned and the "
                    f"capability must fit in 0x40..0xff ({size} bytes)")
            for other_id, other in self.capabilities():
                other_end = other + self._cap_extent(other)
                if offset < other_end and other < offset + size:
                    raise HwModelError(
                        f"capability {cap_id:#x} at {offset:#x} (+{size}) overlaps capability "
                        f"{other_id:#x} at {other:#x}")
            if any(self.used[offset:offset + size]):
                raise HwModelError(f"capability {cap_id:#x} at {offset:#x} overlaps bytes "
                                   "already in use")
        config = self.config
        config[offset + R.PCI_CAP_LIST_ID] = cap_id
        config[offset + R.PCI_CAP_LIST_NEXT] = config[R.PCI_CAPABILITY_LIST]
        config[R.PCI_CAPABILITY_LIST] = offset
        config[R.PCI_STATUS] |= R.PCI_STATUS_CAP_LIST
        aligned = (size + 3) & ~3
        self.used[offset:offset + aligned] = b"\xff" * aligned
        self.wmask[offset:offset + size] = bytes(size)
        return offset

    def _cap_extent(self, offset: int) -> int:
        end = offset
        while end < R.PCI_CONFIG_SPACE_SIZE and self.used[end]:
            end += 1
        return max(end - offset, 2)

    def capabilities(self) -> list[tuple[int, int]]:
        """Return ``[(cap_id, offset), ...]`` in list order (a loop in the list ends the walk)."""
        result: list[tuple[int, int]] = []
        if not self.config[R.PCI_STATUS] & R.PCI_STATUS_CAP_LIST:
            return result
        seen: set[int] = set()
        offset = self.config[R.PCI_CAPABILITY_LIST] & ~3
        while offset and offset not in seen and offset < R.PCI_CONFIG_SPACE_SIZE - 1:
            seen.add(offset)
            result.append((self.config[offset], offset))
            offset = self.config[offset + R.PCI_CAP_LIST_NEXT] & ~3
        return result

    def find_capability(self, cap_id: int) -> int | None:
        """Return the offset of the first capability ``cap_id``, or None."""
        for found, offset in self.capabilities():
            if found == cap_id:
                return offset
        return None

    # -- PCI Express extended capabilities -----------------------------------------

    def add_ext_capability(self, cap_id: int, version: int, offset: int, size: int) -> None:
        """Append an extended capability at ``offset`` (>= 0x100) of ``size`` bytes.

        QEMU's ``pcie_add_capability``: the first one must sit at 0x100; later
        ones are linked from the last. The bytes become read-only.

        Raises:
            HwModelError: not a PCI Express space, or a bad offset, size or order.
        """
        if not self.express:
            raise HwModelError("extended capabilities need a 4 KiB (PCI Express) config space")
        if offset < R.PCI_EXT_CAP_START or offset & 3 or size < 8 or offset + size > self.size:
            raise HwModelError(f"extended capability {cap_id:#x} at {offset:#x} (+{size}) must "
                               "be dword aligned, at least 8 bytes, within 0x100..0xfff")
        if any(self.used[offset:offset + size]):
            raise HwModelError(f"extended capability {cap_id:#x} at {offset:#x} overlaps another")
        caps = self.ext_capabilities()
        if not caps and offset != R.PCI_EXT_CAP_START:
            raise HwModelError("the first extended capability must be at 0x100")
        if caps:
            last = caps[-1][1]
            header = self.get_long(last)
            self.set(last, (header & 0x000FFFFF) | (offset << 20), 4)
        self.set(offset, (cap_id & 0xFFFF) | (version & 0xF) << 16, 4)
        self.used[offset:offset + size] = b"\xff" * size
        self.wmask[offset:offset + size] = bytes(size)
        self.w1cmask[offset:offset + size] = bytes(size)

    def ext_capabilities(self) -> list[tuple[int, int]]:
        """Return ``[(cap_id, offset), ...]`` of the extended capability list."""
        result: list[tuple[int, int]] = []
        if not self.express:
            return result
        offset = R.PCI_EXT_CAP_START
        seen: set[int] = set()
        while offset and offset not in seen and offset < self.size:
            header = self.get_long(offset)
            if header == 0 or header == 0xFFFFFFFF:
                break
            seen.add(offset)
            result.append((header & 0xFFFF, offset))
            offset = (header >> 20) & 0xFFC
        return result

    def _check_invariants(self) -> None:
        """Assert the class invariants (tests call this)."""
        assert len(self.config) == len(self.wmask) == len(self.w1cmask) == self.size
        assert not any(a & b for a, b in zip(self.wmask, self.w1cmask)), "wmask & w1cmask"
        caps = self.capabilities()
        if self.config[R.PCI_STATUS] & R.PCI_STATUS_CAP_LIST:
            assert caps, "PCI_STATUS_CAP_LIST set but the list is empty"
        for _, offset in caps:
            assert self.used[offset], f"capability at {offset:#x} not marked used"

    def __repr__(self) -> str:
        vendor = self.get_word(R.PCI_VENDOR_ID)
        device = self.get_word(R.PCI_DEVICE_ID)
        return f"<PCIConfigSpace {vendor:04x}:{device:04x} {self.size} bytes>"
