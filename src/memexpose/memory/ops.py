"""MMIO callbacks and their dispatch: validity, size adjustment, byte order.

This module owns what QEMU does between "an access reached region R at offset
O" and "the device callback ran" (docs/memory.md rules M6-M9):

* ``valid`` says what the *device* accepts; an access outside it reads 0 (or
  drops the write) and returns ``MEMTX_DECODE_ERROR`` without calling the
  device;
* ``impl`` says what the *callbacks* implement; a valid access of another
  size is split into, or widened to, legal callback sizes and reassembled in
  the device's byte order;
* the re-entrancy guard refuses a nested access to the same device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from memexpose.memory.types import (
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    MEMTX_OK,
    Endianness,
    MemTxAttrs,
    MemTxResult,
)

if TYPE_CHECKING:
    from memexpose.memory.region import MemoryRegion

__all__ = [
    "AccessConstraints",
    "MemoryRegionOps",
    "UnassignedIOOps",
    "UnassignedOps",
    "dispatch_read",
    "dispatch_write",
    "swap_bytes",
]

log = logging.getLogger(__name__)

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))


@dataclass(frozen=True, slots=True)
class AccessConstraints:
    """Access sizes (in bytes) and alignment, as in QEMU's ops ``valid``/``impl``.

    A ``max_access_size`` of 0 means "unspecified": for ``valid`` every size is
    accepted; for ``impl`` the callbacks take 1..4 bytes.

    Raises:
        ValueError: sizes that are not 0, 1, 2, 4 or 8, or min > max.
    """

    min_access_size: int = 0
    max_access_size: int = 0
    unaligned: bool = False

    def __post_init__(self) -> None:
        for size in (self.min_access_size, self.max_access_size):
            if size not in (0, 1, 2, 4, 8):
                raise ValueError(f"access size {size} is not one of 0 (unspecified), 1, 2, 4, 8")
        if self.max_access_size and self.min_access_size > self.max_access_size:
            raise ValueError(
                f"min_access_size {self.min_access_size} > max_access_size "
                f"{self.max_access_size}")


class MemoryRegionOps:
    """The callbacks of an MMIO region (or of a ROM device's writes).

    Subclass and override ``read``/``write`` (plain: always ``MEMTX_OK``), or
    ``read_with_attrs``/``write_with_attrs`` when the device needs the access
    attributes or reports errors. Set the class attributes ``endianness``,
    ``valid`` and ``impl`` to describe the registers. Offsets are relative to
    the region; values are the device's numeric register values.

    Callbacks run with the machine lock held and must not raise: a guest
    access that fails is reported by returning an error result.

    The base class reads as zero and ignores writes.
    """

    endianness: ClassVar[Endianness] = Endianness.NATIVE
    valid: ClassVar[AccessConstraints] = AccessConstraints()
    impl: ClassVar[AccessConstraints] = AccessConstraints()
    # Filled in by __init_subclass__: whether the attrs-taking variants are
    # overridden (so dispatch can skip a layer of calls on the common path).
    _read_uses_attrs: ClassVar[bool] = False
    _write_uses_attrs: ClassVar[bool] = False
    _checks_accepts: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        base = MemoryRegionOps
        cls._read_uses_attrs = cls.read_with_attrs is not base.read_with_attrs
        cls._write_uses_attrs = cls.write_with_attrs is not base.write_with_attrs
        cls._checks_accepts = cls.accepts is not base.accepts

    def accepts(self, offset: int, size: int, is_write: bool, attrs: MemTxAttrs) -> bool:
        """Return whether the device accepts this access at all (``valid.accepts``)."""
        return True

    def read(self, offset: int, size: int) -> int:
        """Return the register value at ``offset`` (``size`` bytes, per ``impl``)."""
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        """Store ``value`` (``size`` bytes, per ``impl``) at ``offset``."""

    def read_with_attrs(self, offset: int, size: int,
                        attrs: MemTxAttrs) -> tuple[int, MemTxResult]:
        """Read with the access attributes; return the value and a result."""
        return self.read(offset, size), MEMTX_OK

    def write_with_attrs(self, offset: int, value: int, size: int,
                         attrs: MemTxAttrs) -> MemTxResult:
        """Write with the access attributes; return a result."""
        self.write(offset, value, size)
        return MEMTX_OK


class UnassignedOps(MemoryRegionOps):
    """What a hole, a reservation region and a ROM write reach: nothing.

    Every access is invalid: reads give 0, writes are dropped, and the result
    is ``MEMTX_DECODE_ERROR`` (QEMU's ``io_mem_unassigned``).
    """

    def accepts(self, offset: int, size: int, is_write: bool, attrs: MemTxAttrs) -> bool:
        """Refuse everything."""
        return False


class UnassignedIOOps(MemoryRegionOps):
    """The x86 I/O port space's own ops: reads all-ones, writes ignored, OK."""

    def read(self, offset: int, size: int) -> int:
        """Return all-ones of the access size."""
        return _MASKS[size]


def swap_bytes(value: int, size: int) -> int:
    """Return ``value`` with its ``size`` low bytes in the opposite order."""
    return int.from_bytes(value.to_bytes(size, "little"), "big")


def _device_big_endian(ops: MemoryRegionOps, target_big_endian: bool) -> bool:
    end = ops.endianness
    if end is Endianness.NATIVE:
        return target_big_endian
    return end is Endianness.BIG


def _access_valid(ops: MemoryRegionOps, offset: int, size: int, is_write: bool,
                  attrs: MemTxAttrs) -> bool:
    if ops._checks_accepts and not ops.accepts(offset, size, is_write, attrs):
        return False
    valid = ops.valid
    if not valid.unaligned and offset & (size - 1):
        return False
    if not valid.max_access_size:
        return True
    return valid.min_access_size <= size <= valid.max_access_size


_warned_reentrancy: set[str] = set()


def _enter_guard(mr: MemoryRegion) -> bool | None:
    """Engage the owner's re-entrancy guard; None if the access must be refused."""
    owner = mr.owner
    if owner is None or not owner.is_device or mr.disable_reentrancy_guard or mr.ram \
            or mr.rom_device or mr.readonly:
        return False
    if owner.engaged_in_io:
        if mr.name not in _warned_reentrancy:
            _warned_reentrancy.add(mr.name)
            log.warning("Blocked re-entrant IO on MemoryRegion: %s", mr.name)
        return None
    owner.engaged_in_io = True
    return True


def dispatch_read(mr: MemoryRegion, offset: int, size: int, attrs: MemTxAttrs,
                  target_big_endian: bool) -> tuple[int, MemTxResult]:
    """Read ``size`` bytes at ``offset`` of ``mr`` through its ops.

    Returns the device's numeric value (no requester byte swap: callers that
    want another order use ``swap_bytes``) and the OR of all results.
    An invalid access returns ``(0, MEMTX_DECODE_ERROR)`` without calling the
    device.
    """
    ops = mr.ops
    if not _access_valid(ops, offset, size, False, attrs):
        return 0, MEMTX_DECODE_ERROR
    guard = _enter_guard(mr)
    if guard is None:
        return 0, MEMTX_ACCESS_ERROR
    try:
        impl = ops.impl
        step = size
        lo = impl.min_access_size or 1
        hi = impl.max_access_size or 4
        if step < lo:
            step = lo
        elif step > hi:
            step = hi
        if step == size:
            if ops._read_uses_attrs:
                value, result = ops.read_with_attrs(offset, size, attrs)
                return value & _MASKS[size], result
            return ops.read(offset, size) & _MASKS[size], MEMTX_OK
        mask = _MASKS[step]
        big = _device_big_endian(ops, target_big_endian)
        value = 0
        result = MEMTX_OK
        for i in range(0, size, step):
            if ops._read_uses_attrs:
                piece, res = ops.read_with_attrs(offset + i, step, attrs)
                result |= res
            else:
                piece = ops.read(offset + i, step)
            shift = (size - step - i) * 8 if big else i * 8
            piece &= mask
            value |= piece << shift if shift >= 0 else piece >> -shift
        return value & _MASKS[size], result
    finally:
        if guard:
            mr.owner.engaged_in_io = False  # type: ignore[union-attr]


def dispatch_write(mr: MemoryRegion, offset: int, value: int, size: int, attrs: MemTxAttrs,
                   target_big_endian: bool) -> MemTxResult:
    """Write ``value`` (the device's numeric value) of ``size`` bytes through ``mr``'s ops.

    An invalid access is dropped and returns ``MEMTX_DECODE_ERROR``.
    """
    ops = mr.ops
    if not _access_valid(ops, offset, size, True, attrs):
        return MEMTX_DECODE_ERROR
    guard = _enter_guard(mr)
    if guard is None:
        return MEMTX_ACCESS_ERROR
    try:
        impl = ops.impl
        step = size
        lo = impl.min_access_size or 1
        hi = impl.max_access_size or 4
        if step < lo:
            step = lo
        elif step > hi:
            step = hi
        value &= _MASKS[size]
        if step == size:
            if ops._write_uses_attrs:
                return ops.write_with_attrs(offset, value, size, attrs)
            ops.write(offset, value, size)
            return MEMTX_OK
        mask = _MASKS[step]
        big = _device_big_endian(ops, target_big_endian)
        result = MEMTX_OK
        for i in range(0, size, step):
            shift = (size - step - i) * 8 if big else i * 8
            piece = (value >> shift if shift >= 0 else value << -shift) & mask
            if ops._write_uses_attrs:
                result |= ops.write_with_attrs(offset + i, piece, step, attrs)
            else:
                ops.write(offset + i, piece, step)
        return result
    finally:
        if guard:
            mr.owner.engaged_in_io = False  # type: ignore[union-attr]


def device_big_endian(ops: MemoryRegionOps, target_big_endian: bool) -> bool:
    """Return whether ``ops`` registers are big-endian once NATIVE is resolved."""
    return _device_big_endian(ops, target_big_endian)
