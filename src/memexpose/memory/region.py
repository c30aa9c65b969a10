"""Memory regions: the nodes of a machine's memory map (QEMU's MemoryRegion).

A region is one of: container, RAM, ROM, ROM device, MMIO (with an ops
object), alias (a window onto another region) or IOMMU. Regions nest: a
container (or any terminating region) holds subregions at an address with a
signed priority. How a tree becomes a flat map is owned by ``flatview.py``;
this module only keeps the tree and announces changes to its
``MemorySystem`` (see ``system.py``), which re-renders at the outermost
transaction commit.

A region belongs to at most one ``MemorySystem``. It joins one when it is
added under a region that belongs to it, when an address space is rooted at
it, or when an alias in the system points at it; its subregions and alias
targets join with it. A region of no system can be built freely; nothing
renders it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memexpose.errors import (
    MemoryModelError,
    RegionCycleError,
    RegionInUseError,
    RegionSizeError,
)
from memexpose.memory.flatview import find_alias_loops
from memexpose.memory.hostmem import HostMemory
from memexpose.memory.ops import MemoryRegionOps, UnassignedOps
from memexpose.memory.types import ADDR_SPACE_END, MemTxAttrs

if TYPE_CHECKING:
    from memexpose.memory.addrspace import AddressSpace
    from memexpose.memory.system import MemorySystem

__all__ = [
    "IOMMU_NONE",
    "IOMMU_RO",
    "IOMMU_RW",
    "IOMMU_WO",
    "IOMMUMemoryRegion",
    "IOMMUTLBEntry",
    "MemoryRegion",
    "Owner",
]

_UNASSIGNED_OPS = UnassignedOps()
_PRIORITY_MIN = -(1 << 31)
_PRIORITY_MAX = (1 << 31) - 1


class Owner:
    """The object that owns a region, as ``info mtree -o`` describes it.

    QEMU prints ``owner:{dev id=ID}``, ``owner:{dev path=PATH}`` or
    ``owner:{obj path=PATH}`` (``type=NAME`` when there is no path). Devices
    (``kind == "dev"``) also carry QEMU's MMIO re-entrancy guard.

    Args:
        kind: ``"dev"`` for a device, ``"obj"`` for any other object.
        path: canonical path (``/machine/...``).
        id: the user-given device id (printed instead of the path).
        type_name: the type name, printed when there is neither id nor path.
    """

    __slots__ = ("engaged_in_io", "id", "kind", "path", "type_name")

    def __init__(self, kind: str = "dev", *, path: str | None = None, id: str | None = None,
                 type_name: str | None = None) -> None:
        if kind not in ("dev", "obj"):
            raise ValueError(f"owner kind must be 'dev' or 'obj', not {kind!r}")
        if path is None and id is None and type_name is None:
            raise ValueError("an owner needs a path, an id or a type_name")
        self.kind = kind
        self.path = path
        self.id = id if kind == "dev" else None
        self.type_name = type_name
        self.engaged_in_io = False

    @property
    def is_device(self) -> bool:
        """Whether the owner is a device (and so has a re-entrancy guard)."""
        return self.kind == "dev"

    def describe(self) -> str:
        """Return the ``{dev path=...}`` text QEMU prints for this owner."""
        if self.id is not None:
            return f"{{{self.kind} id={self.id}}}"
        if self.path is not None:
            return f"{{{self.kind} path={self.path}}}"
        return f"{{{self.kind} type={self.type_name}}}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Owner):
            return NotImplemented
        return (self.kind, self.path, self.id, self.type_name) == (
            other.kind, other.path, other.id, other.type_name)

    def __hash__(self) -> int:
        return hash((self.kind, self.path, self.id, self.type_name))

    def __repr__(self) -> str:
        return f"Owner({self.describe()})"


Owner.UNATTACHED = Owner("obj", path="/machine/unattached")  # type: ignore[attr-defined]
"""The QOM parent QEMU gives regions created without an owner."""

IOMMU_NONE = 0
IOMMU_RO = 1
IOMMU_WO = 2
IOMMU_RW = 3


@dataclass(frozen=True, slots=True)
class IOMMUTLBEntry:
    """One IOMMU translation (QEMU's IOMMUTLBEntry).

    The access continues in ``target_as`` at
    ``(translated_addr & ~addr_mask) | (addr & addr_mask)``, clamped to the
    page the mask describes. ``perm`` is a mask of ``IOMMU_RO``/``IOMMU_WO``;
    an access without the permission reaches nothing (DECODE_ERROR).
    """

    target_as: AddressSpace | None
    translated_addr: int
    addr_mask: int
    perm: int


def _check_size(name: str, size: int, *, allow_zero: bool) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise RegionSizeError(f"region {name!r}: size must be an int, not {type(size).__name__}")
    if size < 0 or size > ADDR_SPACE_END:
        raise RegionSizeError(f"region {name!r}: size {size:#x} is outside 0..2**64")
    if size == 0 and not allow_zero:
        raise RegionSizeError(
            f"region {name!r}: RAM, ROM and ROM devices cannot have size 0 (QEMU refuses a "
            "0-byte RAM block)")
    return size


class MemoryRegion:
    """A node of the memory map. Create one with a class method.

    ``init_container``, ``init_io`` (alias ``init_mmio``), ``init_reservation``,
    ``init_ram``, ``init_rom``, ``init_rom_device`` and ``init_alias`` (QEMU's names);
    IOMMUs subclass ``IOMMUMemoryRegion``.

    Attributes are read-only properties; change them with the ``set_*`` and
    ``add_subregion*``/``del_subregion`` methods, which validate first and
    leave the region unchanged when they raise.

    Invariants:
        * ``subregions`` is sorted by priority, highest first; among equal
          priorities the most recently added comes first (``_subregions``
          holds the reverse of that order);
        * every subregion's ``container`` is this region;
        * the graph of subregion and alias edges has no cycle;
        * every region reachable from a region of a system is in that system.
    """

    __slots__ = (
        "_addr",
        "_alias",
        "_alias_offset",
        "_container",
        "_enabled",
        "_nonvolatile",
        "_owns_hostmem",
        "_priority",
        "_readonly",
        "_romd_mode",
        "_size",
        "_subregions",
        "_system",
        "__weakref__",
        "disable_reentrancy_guard",
        "hostmem",
        "hostmem_offset",
        "is_iommu",
        "name",
        "ops",
        "owner",
        "parent_object",
        "ram",
        "rom_device",
        "terminates",
    )

    def __init__(self, name: str, size: int, *, owner: Owner | None = None,
                 parent_object: Owner | None = None) -> None:
        """Create a pure container; prefer ``MemoryRegion.init_container``."""
        self.name = name
        self._size = _check_size(name, size, allow_zero=True)
        self.owner = owner
        # QEMU's QOM parent: the owner, else /machine/unattached.
        self.parent_object = parent_object if parent_object is not None else (
            owner if owner is not None else Owner.UNATTACHED)  # type: ignore[attr-defined]
        self._addr = 0
        self._priority = 0
        self._container: MemoryRegion | None = None
        self._enabled = True
        self._readonly = False
        self._nonvolatile = False
        self._romd_mode = True
        self._alias: MemoryRegion | None = None
        self._alias_offset = 0
        self._subregions: list[MemoryRegion] = []
        self._system: MemorySystem | None = None
        self.terminates = False
        self.ram = False
        self.rom_device = False
        self.is_iommu = False
        self.ops: MemoryRegionOps = _UNASSIGNED_OPS
        self.hostmem: HostMemory | None = None
        self.hostmem_offset = 0
        # Whether ``hostmem`` was created here (close() releases only that).
        self._owns_hostmem = False
        self.disable_reentrancy_guard = False

    # -- constructors -----------------------------------------------------

    @classmethod
    def init_container(cls, name: str, size: int, *, owner: Owner | None = None) -> MemoryRegion:
        """Create a container: renders only its subregions; its holes stay holes."""
        return cls(name, size, owner=owner)

    @classmethod
    def init_io(cls, name: str, size: int, ops: MemoryRegionOps | None, *,
             owner: Owner | None = None) -> MemoryRegion:
        """Create an MMIO (or port I/O) region served by ``ops``.

        With ``ops=None`` the region is a reservation: it terminates (covers
        what is below it) but every access gives ``MEMTX_DECODE_ERROR``.
        """
        mr = cls(name, size, owner=owner)
        mr.terminates = True
        if ops is not None:
            if not isinstance(ops, MemoryRegionOps):
                raise TypeError(f"region {name!r}: ops must be a MemoryRegionOps instance, "
                                f"not {type(ops).__name__}")
            mr.ops = ops
        return mr

    init_mmio = init_io

    @classmethod
    def init_reservation(cls, name: str, size: int, *, owner: Owner | None = None) -> MemoryRegion:
        """Create a region that claims addresses but answers nothing (DECODE_ERROR)."""
        return cls.init_io(name, size, None, owner=owner)

    @classmethod
    def init_ram(cls, name: str, size: int, *, hostmem: HostMemory | None = None,
            hostmem_offset: int = 0, owner: Owner | None = None) -> MemoryRegion:
        """Create RAM backed by ``hostmem`` (a new memfd when None).

        ``hostmem_offset`` selects where in the backing the region starts; the
        backing must hold ``size`` bytes from there. The region does not own a
        ``hostmem`` passed in; it owns one it created (``close`` releases it).

        Raises:
            RegionSizeError: size 0, or the backing is too small.
        """
        _check_size(name, size, allow_zero=False)
        if size >= ADDR_SPACE_END:
            raise RegionSizeError(f"region {name!r}: RAM of {size:#x} bytes cannot be backed")
        mr = cls(name, size, owner=owner)
        mr.terminates = True
        mr.ram = True
        mr._attach_hostmem(hostmem, hostmem_offset)
        return mr

    @classmethod
    def init_rom(cls, name: str, size: int, *, hostmem: HostMemory | None = None,
            hostmem_offset: int = 0, owner: Owner | None = None) -> MemoryRegion:
        """Create ROM: RAM that reads directly and refuses ordinary writes.

        Load its contents with ``AddressSpace.write_rom`` or through ``hostmem``.
        """
        mr = cls.init_ram(name, size, hostmem=hostmem, hostmem_offset=hostmem_offset, owner=owner)
        mr._readonly = True
        return mr

    @classmethod
    def init_rom_device(cls, name: str, size: int, ops: MemoryRegionOps, *,
                   hostmem: HostMemory | None = None, hostmem_offset: int = 0,
                   owner: Owner | None = None) -> MemoryRegion:
        """Create a ROM device (flash): direct reads in romd mode, writes to ``ops``.

        ``rom_device_set_romd(False)`` sends reads to ``ops`` too.
        """
        _check_size(name, size, allow_zero=False)
        mr = cls.init_io(name, size, ops, owner=owner)
        mr.rom_device = True
        mr._attach_hostmem(hostmem, hostmem_offset)
        return mr

    @classmethod
    def init_alias(cls, name: str, target: MemoryRegion, offset: int, size: int, *,
              owner: Owner | None = None) -> MemoryRegion:
        """Create a window of ``size`` bytes onto ``target`` starting at ``offset``.

        The alias shows ``target`` bytes ``[offset, offset + size)``. It may be
        placed anywhere, any number of aliases may share a target, and an alias
        may point at another alias or a container. Subregions of an alias are
        ignored by rendering (as in QEMU).

        Raises:
            RegionSizeError: size outside 0..2**64.
            MemoryModelError: offset negative, or target of another system.
        """
        if not isinstance(target, MemoryRegion):
            raise TypeError(f"alias {name!r}: target must be a MemoryRegion")
        if offset < 0 or offset >= ADDR_SPACE_END:
            raise MemoryModelError(f"alias {name!r}: offset {offset:#x} outside 0..2**64")
        mr = cls(name, size, owner=owner)
        mr._alias = target
        mr._alias_offset = offset
        if target._system is not None:
            target._system._adopt(mr)
        return mr

    def _attach_hostmem(self, hostmem: HostMemory | None, offset: int) -> None:
        if hostmem is None:
            if offset:
                raise MemoryModelError(f"region {self.name!r}: hostmem_offset without hostmem")
            hostmem = HostMemory.memfd(self.name, self._size)
            self._owns_hostmem = True
        elif offset < 0 or offset + self._size > hostmem.size:
            raise RegionSizeError(
                f"region {self.name!r}: {self._size:#x} bytes at offset {offset:#x} do not fit "
                f"in host memory {hostmem.name!r} of {hostmem.size:#x} bytes")
        self.hostmem = hostmem
        self.hostmem_offset = offset

    # -- read-only view of the state --------------------------------------

    @property
    def size(self) -> int:
        """Size in bytes (up to 2**64)."""
        return self._size

    @property
    def addr(self) -> int:
        """Offset of this region inside its container (0 when it has none)."""
        return self._addr

    @property
    def priority(self) -> int:
        """Signed priority among its siblings (0 for plain ``add_subregion``)."""
        return self._priority

    @property
    def container(self) -> MemoryRegion | None:
        """The region this one is a subregion of, if any."""
        return self._container

    @property
    def enabled(self) -> bool:
        """Whether the region (and its subtree) is rendered."""
        return self._enabled

    @property
    def readonly(self) -> bool:
        """The region's own read-only flag (inherited by everything below it)."""
        return self._readonly

    @property
    def nonvolatile(self) -> bool:
        """The region's own non-volatile flag (printed ``nv-``)."""
        return self._nonvolatile

    @property
    def romd_mode(self) -> bool:
        """For ROM devices: reads are direct (True) or go to the ops (False)."""
        return self._romd_mode

    @property
    def alias_target(self) -> MemoryRegion | None:
        """The region an alias shows, or None for a non-alias."""
        return self._alias

    @property
    def alias_offset(self) -> int:
        """Offset into the alias target where the window starts."""
        return self._alias_offset

    @property
    def is_alias(self) -> bool:
        """Whether this region is an alias."""
        return self._alias is not None

    @property
    def subregions(self) -> tuple[MemoryRegion, ...]:
        """Subregions in rendering order (priority high to low, newest first)."""
        return tuple(reversed(self._subregions))

    @property
    def system(self) -> MemorySystem | None:
        """The memory system the region belongs to, if it joined one."""
        return self._system

    @property
    def is_romd(self) -> bool:
        """A ROM device in romd mode (direct reads)."""
        return self.rom_device and self._romd_mode

    @property
    def is_rom(self) -> bool:
        """RAM with the read-only flag (a ROM)."""
        return self.ram and self._readonly

    def kind_name(self) -> str:
        """Return the type word ``info mtree`` prints: ram, rom, romd, i/o.

        An alias prints its (final) target's kind.
        """
        mr = self
        while mr._alias is not None:
            mr = mr._alias
        if mr.rom_device and mr._romd_mode:
            return "romd"
        if mr.ram:
            return "rom" if mr._readonly else "ram"
        return "i/o"

    def walk(self) -> Iterator[MemoryRegion]:
        """Yield this region and all below it (subregions, then alias targets)."""
        seen: set[int] = set()
        stack = [self]
        while stack:
            mr = stack.pop()
            if id(mr) in seen:
                continue
            seen.add(id(mr))
            yield mr
            stack.extend(mr._subregions)
            if mr._alias is not None:
                stack.append(mr._alias)

    # -- mutation ---------------------------------------------------------

    def add_subregion(self, offset: int, child: MemoryRegion) -> None:
        """Place ``child`` at ``offset`` with priority 0.

        Overlaps are allowed (QEMU 7.2 never checks): among equal priorities
        the most recently added wins. Use ``add_subregion_overlap`` to choose.

        Raises:
            RegionInUseError: ``child`` already has a container.
            RegionCycleError: ``child`` contains this region, or an alias below it
                would show its own window endlessly.
            MemoryModelError: offset outside 0..2**64, or another system.
        """
        self._add_subregion(offset, child, 0)

    def add_subregion_overlap(self, offset: int, child: MemoryRegion, priority: int) -> None:
        """Place ``child`` at ``offset`` with a signed 32-bit ``priority``.

        Higher priority wins where siblings overlap; the region's own content
        (if it terminates) is below every subregion whatever its priority.
        Raises as ``add_subregion``.
        """
        if not _PRIORITY_MIN <= priority <= _PRIORITY_MAX:
            raise MemoryModelError(
                f"priority {priority} of {child.name!r} is not a signed 32-bit number")
        self._add_subregion(offset, child, priority)

    def _add_subregion(self, offset: int, child: MemoryRegion, priority: int) -> None:
        if not isinstance(child, MemoryRegion):
            raise TypeError(f"subregion of {self.name!r} must be a MemoryRegion")
        if child._container is not None:
            raise RegionInUseError(
                f"region {child.name!r} is already a subregion of {child._container.name!r} at "
                f"{child._addr:#x}; remove it with del_subregion first, or create an alias to "
                f"show it in {self.name!r} too")
        if not 0 <= offset < ADDR_SPACE_END:
            raise MemoryModelError(
                f"cannot place {child.name!r} in {self.name!r} at {offset:#x}: outside 0..2**64")
        ancestor: MemoryRegion | None = self
        while ancestor is not None:
            if ancestor is child:
                raise RegionCycleError(
                    f"adding {child.name!r} to {self.name!r} would make {child.name!r} contain "
                    "itself")
            ancestor = ancestor._container
        if any(mr is self for mr in child.walk()):
            self._refuse_endless_alias_loop(offset, child, priority)
        system = self._system
        if system is not None and child._system is not None and child._system is not system:
            raise MemoryModelError(
                f"region {child.name!r} belongs to memory system {child._system.name!r}, "
                f"{self.name!r} to {system.name!r}; a region lives in one system")
        if system is None and child._system is not None:
            # Joining the child's system: this region (and whatever it holds)
            # becomes part of it.
            system = child._system
            system._adopt(self)
        if system is None:
            self._insert_child(offset, child, priority)
            return
        with system.transaction():
            system._adopt(child)
            self._insert_child(offset, child, priority)
            if self._enabled and child._enabled:
                system._topology_changed()

    def _refuse_endless_alias_loop(self, offset: int, child: MemoryRegion,
                                   priority: int) -> None:
        """Raise if placing ``child`` (which reaches this region) loops forever (R8).

        The child reaches this region through an alias, so the alias will show
        its own container. QEMU renders that when each pass shifts the window;
        a trial render of this region with the child in place tells.
        """
        old_addr, old_priority = child._addr, child._priority
        self._insert_child(offset, child, priority)
        try:
            loops = find_alias_loops(self)
        finally:
            self._remove_child(child)
            child._addr, child._priority = old_addr, old_priority
        if loops:
            names = ", ".join(sorted({mr.name for mr in loops}))
            raise RegionCycleError(
                f"adding {child.name!r} to {self.name!r} at {offset:#x} makes alias {names} "
                f"show its own window again and again (no shift between passes): rendering "
                "would never end; place the alias where its window moves, or alias a "
                "region that does not contain it")

    def _insert_child(self, offset: int, child: MemoryRegion, priority: int) -> None:
        child._container = self
        child._addr = offset
        child._priority = priority
        # Stored in reverse rendering order (lowest priority first, oldest
        # first among equals) so the common case, adding at the same or a
        # higher priority, is an append.
        subs = self._subregions
        j = len(subs)
        while j and subs[j - 1]._priority > priority:
            j -= 1
        subs.insert(j, child)

    def del_subregion(self, child: MemoryRegion) -> None:
        """Remove ``child`` from this container (it keeps its system).

        Raises:
            MemoryModelError: ``child`` is not a subregion of this region.
        """
        if child._container is not self:
            where = child._container.name if child._container is not None else "no container"
            raise MemoryModelError(
                f"region {child.name!r} is not a subregion of {self.name!r} (it is in {where})")
        system = self._system
        if system is None:
            self._remove_child(child)
            return
        with system.transaction():
            self._remove_child(child)
            if self._enabled and child._enabled:
                system._topology_changed()

    def _remove_child(self, child: MemoryRegion) -> None:
        self._subregions.remove(child)
        child._container = None

    def _mutate(self, apply: object, *, always: bool) -> None:
        """Run ``apply()`` inside a transaction, marking the topology changed."""
        system = self._system
        if system is None:
            apply()  # type: ignore[operator]
            return
        with system.transaction():
            apply()  # type: ignore[operator]
            if always or self._enabled:
                system._topology_changed()

    def set_enabled(self, enabled: bool) -> None:
        """Show or hide the region and its subtree."""
        enabled = bool(enabled)
        if enabled == self._enabled:
            return
        self._mutate(lambda: setattr(self, "_enabled", enabled), always=True)

    def set_readonly(self, readonly: bool) -> None:
        """Set the read-only flag (inherited by the subtree and alias targets shown)."""
        readonly = bool(readonly)
        if readonly == self._readonly:
            return
        self._mutate(lambda: setattr(self, "_readonly", readonly), always=False)

    def set_nonvolatile(self, nonvolatile: bool) -> None:
        """Set the non-volatile flag."""
        nonvolatile = bool(nonvolatile)
        if nonvolatile == self._nonvolatile:
            return
        self._mutate(lambda: setattr(self, "_nonvolatile", nonvolatile), always=False)

    def rom_device_set_romd(self, romd_mode: bool) -> None:
        """Switch a ROM device between direct reads (romd) and reads through ops.

        Raises:
            MemoryModelError: the region is not a ROM device.
        """
        if not self.rom_device:
            raise MemoryModelError(f"region {self.name!r} is not a ROM device")
        romd_mode = bool(romd_mode)
        if romd_mode == self._romd_mode:
            return
        self._mutate(lambda: setattr(self, "_romd_mode", romd_mode), always=False)

    def set_size(self, size: int) -> None:
        """Change the size (containers, MMIO and aliases; RAM cannot grow).

        Raises:
            RegionSizeError: a size outside 0..2**64, or a RAM region.
        """
        _check_size(self.name, size, allow_zero=not (self.ram or self.rom_device))
        if self.hostmem is not None and self.hostmem_offset + size > self.hostmem.size:
            raise RegionSizeError(
                f"region {self.name!r}: cannot grow to {size:#x}; its host memory "
                f"{self.hostmem.name!r} holds {self.hostmem.size:#x} bytes")
        if size == self._size:
            return
        self._mutate(lambda: setattr(self, "_size", size), always=True)

    def set_address(self, addr: int) -> None:
        """Move the region inside its container (QEMU: delete, then re-add).

        The region moves to the front of its equal-priority group.
        """
        if addr == self._addr:
            return
        # Fix: validate before every branch (a region in a container of no
        # system used to accept any address).
        if not 0 <= addr < ADDR_SPACE_END:
            raise MemoryModelError(f"address {addr:#x} of {self.name!r} outside 0..2**64")
        container = self._container
        if container is None:
            self._addr = addr
            return
        system = container._system
        if system is None:
            container._remove_child(self)
            container._insert_child(addr, self, self._priority)
            return
        with system.transaction():
            container.del_subregion(self)
            container._add_subregion(addr, self, self._priority)

    def set_alias_offset(self, offset: int) -> None:
        """Move an alias's window inside its target.

        Raises:
            MemoryModelError: not an alias, or a negative offset.
        """
        if self._alias is None:
            raise MemoryModelError(f"region {self.name!r} is not an alias")
        if not 0 <= offset < ADDR_SPACE_END:
            raise MemoryModelError(f"alias {self.name!r}: offset {offset:#x} outside 0..2**64")
        if offset == self._alias_offset:
            return
        self._mutate(lambda: setattr(self, "_alias_offset", offset), always=False)

    def revoke_direct(self, ops: MemoryRegionOps) -> None:
        """Stop direct access to this RAM region now: serve it through ``ops`` (M11).

        For a peer's RAM that must not be touched any more while the map
        cannot change yet (a commit is running, so ``del_subregion`` would
        raise ``ListenerMutationError``). The region becomes an MMIO region
        served by ``ops``; every range of the current flat views that shows it
        stops being direct. Nothing is re-rendered and listeners are not
        called: remove the region after the commit. Allowed during a commit
        and from inside listeners. Machine lock held.

        Raises:
            MemoryModelError: the region is not RAM or a ROM device.
            TypeError: ``ops`` is not a ``MemoryRegionOps``.
        """
        if not (self.ram or self.rom_device):
            raise MemoryModelError(f"region {self.name!r} has no direct access to revoke")
        if not isinstance(ops, MemoryRegionOps):
            raise TypeError(f"region {self.name!r}: ops must be a MemoryRegionOps instance")
        self.ops = ops
        self.ram = False
        self.rom_device = False
        self._readonly = False
        system = self._system
        if system is not None:
            views = {id(as_._flatview): as_._flatview for as_ in system._address_spaces}
            views.update((id(view), view) for view in system._incoming_views)
            for view in views.values():
                for fr in view.ranges:
                    if fr.mr is self:
                        fr._drop_direct()

    def close(self) -> None:
        """Release host memory this region created; the region must be unmapped.

        Raises:
            MemoryModelError: the region is still a subregion of a container.
        """
        if self._container is not None:
            raise MemoryModelError(
                f"region {self.name!r} is still in {self._container.name!r}; del_subregion first")
        # Fix: a hostmem passed in belongs to the caller (init_ram's contract);
        # closing it here broke other regions sharing the same backing.
        if self.hostmem is not None and self._owns_hostmem:
            self.hostmem.close()

    def _check_invariants(self) -> None:
        """Assert the class invariants for this region's subtree (tests call this)."""
        for mr in self.walk():
            prios = [c._priority for c in mr._subregions]
            assert prios == sorted(prios), f"{mr.name}: subregions out of order"
            for c in mr._subregions:
                assert c._container is mr, f"{c.name}: container link broken"
                assert c._system is mr._system or mr._system is None, f"{c.name}: system"
            if mr._alias is not None and mr._system is not None:
                assert mr._alias._system is mr._system, f"{mr.name}: alias target system"

    def __repr__(self) -> str:
        if self._alias is not None:
            what = f"alias @{self._alias.name}+{self._alias_offset:#x}"
        else:
            what = self.kind_name()
        return (f"<MemoryRegion {self.name!r} {what} size={self._size:#x} "
                f"addr={self._addr:#x} prio={self._priority}"
                f"{'' if self._enabled else ' disabled'}>")


class IOMMUMemoryRegion(MemoryRegion):
    """A region that translates accesses into another address space.

    Subclass and override ``translate``. Accesses that reach the region are
    re-issued at the translated address in the entry's ``target_as``.
    """

    __slots__ = ()

    def __init__(self, name: str, size: int, *, owner: Owner | None = None) -> None:
        super().__init__(name, size, owner=owner)
        self.terminates = True
        self.is_iommu = True

    def translate(self, offset: int, is_write: bool, attrs: MemTxAttrs) -> IOMMUTLBEntry:
        """Translate ``offset`` (relative to this region) for a read or write.

        The base class denies everything: an IOMMU with no mappings.
        """
        return IOMMUTLBEntry(None, 0, 0xFFF, IOMMU_NONE)
