"""The MSI capability: message address/data in config space, sent as a DMA write.

QEMU's ``hw/pci/msi.c``: 32- or 64-bit address, 1..32 vectors (a power of
two), optional per-vector masking with a pending register. Sending vector
``v`` writes the 32-bit little-endian ``data`` (its low bits replaced by
``v`` when several vectors are enabled) to ``address`` through the device's
bus-master address space, with the device's requester id: an interrupt is
just a memory write, and whatever sits at that address (an interrupt
controller, or RAM in a test) receives it.

Bad input, and what happens:

* the guest enables more vectors than the function has: the count is
  clamped to the maximum (QEMU does the same);
* a notify while MSI is disabled: nothing is sent (QEMU leaves this to the
  device, which must use INTx instead); ``notify`` returns False;
* a notify of a vector the guest did not enable: QEMU aborts on an
  assertion; here it is dropped, logged once as a guest error, counted in
  ``dropped``, and ``notify`` returns False;
* a vector beyond what the function supports is a device-model bug:
  ``HwModelError``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from memexpose.errors import HwModelError
from memexpose.hw.pci import regs as R
from memexpose.memory import MEMTX_OK

if TYPE_CHECKING:
    from memexpose.hw.pci.device import PCIDevice

__all__ = ["MSICap"]

log = logging.getLogger(__name__)


def _msi_cap_size(msi64bit: bool, maskbit: bool) -> int:
    return {(False, False): 0x0A, (True, False): 0x0E,
            (False, True): 0x14, (True, True): 0x18}[(msi64bit, maskbit)]


class MSICap:
    """The MSI capability of one function (QEMU's ``msi_init`` and friends).

    Args:
        dev: the function; its ``msi`` attribute is set to this object.
        nr_vectors: vectors supported, a power of two in 1..32.
        msi64bit: 64-bit message address.
        per_vector_mask: the mask and pending registers exist.
        offset: capability offset (0: first free space).

    Invariants:
        * the flags' enabled-vector count never exceeds the supported count
          once a config write has been processed;
        * a pending bit is set only for a vector that was masked when notified.
    """

    def __init__(self, dev: PCIDevice, *, nr_vectors: int = 1, msi64bit: bool = True,
                 per_vector_mask: bool = False, offset: int = 0) -> None:
        if nr_vectors < 1 or nr_vectors > R.PCI_MSI_VECTORS_MAX or nr_vectors & (nr_vectors - 1):
            raise HwModelError(f"{dev.type_name}: MSI supports 1, 2, 4, 8, 16 or 32 vectors, "
                               f"not {nr_vectors}")
        if dev.msi is not None:
            raise HwModelError(f"{dev.type_name} already has an MSI capability")
        self.dev = dev
        self.max_vectors = nr_vectors
        self.msi64bit = msi64bit
        self.per_vector_mask = per_vector_mask
        self.sent = 0
        """Messages written (statistics)."""
        self.dropped = 0
        """Notifications dropped: vector not enabled (statistics)."""
        self.failed = 0
        """Messages whose write failed (statistics)."""
        cfg = dev.config
        flags = (nr_vectors.bit_length() - 1) << 1
        if msi64bit:
            flags |= R.PCI_MSI_FLAGS_64BIT
        if per_vector_mask:
            flags |= R.PCI_MSI_FLAGS_MASKBIT
        self.cap_size = _msi_cap_size(msi64bit, per_vector_mask)
        self.offset = cfg.add_capability(R.PCI_CAP_ID_MSI, self.cap_size, offset)
        base = self.offset
        self._flags_off = base + R.PCI_MSI_FLAGS
        self._addr_lo_off = base + R.PCI_MSI_ADDRESS_LO
        self._addr_hi_off = base + R.PCI_MSI_ADDRESS_HI
        self._data_off = base + (R.PCI_MSI_DATA_64 if msi64bit else R.PCI_MSI_DATA_32)
        self._mask_off = base + (R.PCI_MSI_MASK_64 if msi64bit else R.PCI_MSI_MASK_32)
        self._pending_off = base + (R.PCI_MSI_PENDING_64 if msi64bit else R.PCI_MSI_PENDING_32)
        cfg.set(self._flags_off, flags, 2)
        cfg.set_wmask(self._flags_off, R.PCI_MSI_FLAGS_QSIZE | R.PCI_MSI_FLAGS_ENABLE, 2)
        cfg.set_wmask(self._addr_lo_off, R.PCI_MSI_ADDRESS_LO_MASK, 4)
        if msi64bit:
            cfg.set_wmask(self._addr_hi_off, 0xFFFFFFFF, 4)
        cfg.set_wmask(self._data_off, 0xFFFF, 2)
        if per_vector_mask:
            cfg.set_wmask(self._mask_off, 0xFFFFFFFF >> (R.PCI_MSI_VECTORS_MAX - nr_vectors), 4)
        dev.msi = self

    # -- state ------------------------------------------------------------------------

    @property
    def flags(self) -> int:
        """The message control word."""
        return self.dev.config.get_word(self._flags_off)

    @property
    def enabled(self) -> bool:
        """Whether the guest enabled MSI."""
        return bool(self.flags & R.PCI_MSI_FLAGS_ENABLE)

    @property
    def nr_vectors(self) -> int:
        """Vectors the guest enabled (1 when it wrote 0)."""
        return 1 << ((self.flags & R.PCI_MSI_FLAGS_QSIZE) >> 4)

    def message(self, vector: int) -> tuple[int, int]:
        """Return ``(address, data)`` the message for ``vector`` would write."""
        cfg = self.dev.config
        address = cfg.get_quad(self._addr_lo_off) if self.msi64bit else \
            cfg.get_long(self._addr_lo_off)
        data = cfg.get_word(self._data_off)
        n = self.nr_vectors
        if n > 1:
            data = (data & ~(n - 1)) | vector
        return address, data

    def is_masked(self, vector: int) -> bool:
        """Whether ``vector`` is masked (never, without per-vector masking)."""
        if not self.per_vector_mask:
            return False
        return bool(self.dev.config.get_long(self._mask_off) >> vector & 1)

    @property
    def pending(self) -> int:
        """The pending bits (0 without per-vector masking)."""
        return self.dev.config.get_long(self._pending_off) if self.per_vector_mask else 0

    # -- sending ----------------------------------------------------------------------

    def notify(self, vector: int = 0) -> bool:
        """Send ``vector``, or mark it pending if masked (``msi_notify``; docs/pci.md P11).

        Returns True when the message was written (or left pending), False
        when MSI is disabled, the vector is not enabled, or the write failed
        (see the device's ``last_dma_fault``). Machine lock held.

        Raises:
            HwModelError: ``vector`` is beyond what the function supports.
        """
        if not 0 <= vector < self.max_vectors:
            raise HwModelError(f"{self.dev.type_name}: MSI vector {vector} does not exist "
                               f"(the function supports {self.max_vectors})")
        if not self.enabled:
            return False
        if vector >= self.nr_vectors:
            if not self.dropped:
                log.warning("%s: guest error: MSI vector %d notified but only %d enabled; "
                            "dropped", self.dev.type_name, vector, self.nr_vectors)
            self.dropped += 1
            return False
        if self.is_masked(vector):
            cfg = self.dev.config
            cfg.set(self._pending_off, cfg.get_long(self._pending_off) | 1 << vector, 4)
            return True
        return self._send(vector)

    def _send(self, vector: int) -> bool:
        address, data = self.message(vector)
        result = self.dev.dma_write(address, data.to_bytes(4, "little"))
        if result != MEMTX_OK:
            self.failed += 1
            return False
        self.sent += 1
        return True

    # -- config hooks -----------------------------------------------------------------

    def write_config(self, offset: int, value: int, size: int) -> None:
        """Follow a config write that may touch the capability (QEMU's ``msi_write_config``)."""
        if not (offset < self.offset + self.cap_size and self.offset < offset + size):
            return
        flags = self.flags
        if not flags & R.PCI_MSI_FLAGS_ENABLE:
            return
        self.dev.deassert_intx()
        log_num = (flags & R.PCI_MSI_FLAGS_QSIZE) >> 4
        log_max = (flags & R.PCI_MSI_FLAGS_QMASK) >> 1
        if log_num > log_max:
            flags = (flags & ~R.PCI_MSI_FLAGS_QSIZE) | log_max << 4
            self.dev.config.set(self._flags_off, flags, 2)
        if not self.per_vector_mask:
            return
        cfg = self.dev.config
        n = self.nr_vectors
        pending = cfg.get_long(self._pending_off) & (0xFFFFFFFF >> (R.PCI_MSI_VECTORS_MAX - n))
        cfg.set(self._pending_off, pending, 4)
        for vector in range(n):
            if self.is_masked(vector) or not pending >> vector & 1:
                continue
            cfg.set(self._pending_off, cfg.get_long(self._pending_off) & ~(1 << vector), 4)
            self._send(vector)

    def reset(self) -> None:
        """Disable MSI and clear address, data, mask and pending (QEMU's ``msi_reset``)."""
        cfg = self.dev.config
        cfg.set(self._flags_off,
                self.flags & ~(R.PCI_MSI_FLAGS_QSIZE | R.PCI_MSI_FLAGS_ENABLE), 2)
        cfg.set(self._addr_lo_off, 0, 4)
        if self.msi64bit:
            cfg.set(self._addr_hi_off, 0, 4)
        cfg.set(self._data_off, 0, 2)
        if self.per_vector_mask:
            cfg.set(self._mask_off, 0, 4)
            cfg.set(self._pending_off, 0, 4)

    def statistics(self) -> dict[str, int]:
        """Return ``{"sent", "dropped", "failed"}``."""
        return {"sent": self.sent, "dropped": self.dropped, "failed": self.failed}

    def __repr__(self) -> str:
        return (f"<MSICap at {self.offset:#x} {'on' if self.enabled else 'off'} "
                f"{self.nr_vectors}/{self.max_vectors} vectors>")
