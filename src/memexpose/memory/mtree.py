"""``info mtree`` text, byte for byte as QEMU 7.2 prints it.

``format_mtree`` prints the tree (``info mtree [-o] [-D]``) or the flat
views (``info mtree -f [-d] [-o]``) of a memory system. QEMU prints blocks in
hash-table order; we print them in address-space registration order, which
is one of the orders QEMU can produce. Compare blocks as sets
(``split_blocks``).

Addresses are printed as 64-bit numbers, wrapping like QEMU's ``hwaddr``;
a region whose range wraps gets QEMU's ``[DETECTED OVERFLOW!]`` prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from memexpose.memory.flatview import FlatView

if TYPE_CHECKING:
    from memexpose.memory.addrspace import AddressSpace
    from memexpose.memory.region import MemoryRegion
    from memexpose.memory.system import MemorySystem

__all__ = ["format_mtree", "normalize_blocks", "split_blocks"]

_MASK64 = (1 << 64) - 1
_INDENT = "  "
_PAGE = 4096


def _mr_last(size: int) -> int:
    """QEMU's MR_SIZE: size - 1, or 0 for an empty region."""
    return size - 1 if size else 0


def _owner_suffix(mr: MemoryRegion) -> str:
    owner = mr.owner
    parent = mr.parent_object
    if owner is None and parent is None:
        return " orphan"
    text = ""
    if owner is not None:
        text += " owner:" + owner.describe()
    if parent is not None and parent != owner:
        text += " parent:" + parent.describe()
    return text


def _print_region(mr: MemoryRegion, level: int, base: int, alias_queue: list[MemoryRegion],
                  owner: bool, disabled: bool, out: list[str]) -> None:
    cur_start = (base + mr.addr) & _MASK64
    cur_end = (cur_start + _mr_last(mr.size)) & _MASK64
    prefix = "[DETECTED OVERFLOW!] " if cur_start < base or cur_end < cur_start else ""
    show = mr.enabled or disabled
    nv = "nv-" if mr.nonvolatile else ""
    target = mr.alias_target
    line = None
    if target is not None:
        if not any(queued is target for queued in alias_queue):
            alias_queue.append(target)
        if show:
            line = (f"{_INDENT * level}{cur_start:016x}-{cur_end:016x} (prio {mr.priority}, "
                    f"{nv}{mr.kind_name()}): alias {mr.name} @{target.name} "
                    f"{mr.alias_offset:016x}-{(mr.alias_offset + _mr_last(mr.size)) & _MASK64:016x}"
                    f"{'' if mr.enabled else ' [disabled]'}")
    elif show:
        line = (f"{_INDENT * level}{cur_start:016x}-{cur_end:016x} (prio {mr.priority}, "
                f"{nv}{mr.kind_name()}): {mr.name}{'' if mr.enabled else ' [disabled]'}")
    if line is not None:
        out.append(prefix + line + (_owner_suffix(mr) if owner else ""))
    elif prefix:
        # QEMU prints the overflow warning even for a hidden line.
        out.append(prefix.rstrip(" ") + " ")
    # Children print by address, then priority (high first), then list order.
    children: list[MemoryRegion] = []
    for sub in mr.subregions:
        for i, queued in enumerate(children):
            if sub.addr < queued.addr or (sub.addr == queued.addr
                                          and sub.priority > queued.priority):
                children.insert(i, sub)
                break
        else:
            children.append(sub)
    for sub in children:
        _print_region(sub, level + 1, cur_start, alias_queue, owner, disabled, out)


def _format_tree(spaces: list[AddressSpace], owner: bool, disabled: bool) -> str:
    groups: dict[int, tuple[MemoryRegion, list[AddressSpace]]] = {}
    for as_ in spaces:
        if as_.root is None:
            continue
        groups.setdefault(id(as_.root), (as_.root, []))[1].append(as_)
    out: list[str] = []
    alias_queue: list[MemoryRegion] = []
    for root, members in groups.values():
        for name in sorted(as_.name for as_ in members):
            out.append(f"address-space: {name}")
        _print_region(root, 1, 0, alias_queue, owner, disabled, out)
        out.append("")
    i = 0
    while i < len(alias_queue):
        mr = alias_queue[i]
        out.append(f"memory-region: {mr.name}")
        _print_region(mr, 1, 0, alias_queue, owner, disabled, out)
        out.append("")
        i += 1
    return "\n".join(out) + "\n" if out else ""


def _format_dispatch(view: FlatView, out: list[str]) -> None:
    # QEMU dumps its page-table dispatch here; we print the section list,
    # which follows from the flat view, with QEMU's fixed first sections.
    # Subpage helper sections and the node dump are QEMU internals.
    out.append("  Dispatch")
    out.append("    Physical sections")
    out.append(f"      #0 @{0:016x}..{_MASK64:016x} (noname) [unassigned]")
    labels = {1: " [not dirty]", 2: " [ROM]", 3: " [watch]"}
    for n, fr in enumerate(view.ranges, start=1):
        last = (fr.start + fr.size - 1) & _MASK64
        out.append(f"      #{n} @{fr.start:016x}..{last:016x} {fr.mr.name}{labels.get(n, '')}")


def _format_flat(spaces: list[AddressSpace], dispatch: bool, owner: bool) -> str:
    groups: dict[int, tuple[FlatView, list[AddressSpace]]] = {}
    for as_ in spaces:
        view = as_.flatview
        groups.setdefault(id(view), (view, []))[1].append(as_)
    out: list[str] = []
    for counter, (view, members) in enumerate(groups.values()):
        out.append(f"FlatView #{counter}")
        for as_ in members:
            root = as_.root
            line = f' AS "{as_.name}", root: {root.name if root is not None else "(none)"}'
            if root is not None and root.alias_target is not None:
                line += f", alias {root.alias_target.name}"
            out.append(line)
        out.append(f" Root memory region: {view.root.name if view.root is not None else '(none)'}")
        if not view.ranges:
            out.append(f"{_INDENT}No rendered FlatView")
            out.append("")
            continue
        for fr in view.ranges:
            mr = fr.mr
            start = fr.start & _MASK64
            end = (fr.start + _mr_last(fr.size)) & _MASK64
            kind = "rom" if fr.readonly else mr.kind_name()
            line = (f"{_INDENT}{start:016x}-{end:016x} (prio {mr.priority}, "
                    f"{'nv-' if fr.nonvolatile else ''}{kind}): {mr.name}")
            if fr.offset_in_region:
                line += f" @{fr.offset_in_region & _MASK64:016x}"
            if owner:
                line += _owner_suffix(mr)
            out.append(line)
        if dispatch:
            _format_dispatch(view, out)
        out.append("")
    return "\n".join(out) + "\n" if out else ""


def format_mtree(spaces: MemorySystem | Iterable[AddressSpace], *, flatview: bool = False,
                 dispatch: bool = False, owner: bool = False, disabled: bool = False) -> str:
    """Return ``info mtree`` text for a memory system (or some of its address spaces).

    Args:
        spaces: a ``MemorySystem`` (all its address spaces, in registration
            order) or address spaces to print.
        flatview: ``-f``: print the flat views instead of the tree.
        dispatch: ``-d`` (with ``-f``): add the dispatch section list.
        owner: ``-o``: print owners and QOM parents.
        disabled: ``-D``: print disabled regions (tree only).

    Returns:
        The text with LF line endings (QEMU's monitor sends CRLF).
    """
    as_list = list(spaces.address_spaces) if hasattr(spaces, "address_spaces") else list(spaces)
    if flatview:
        return _format_flat(as_list, dispatch, owner)
    return _format_tree(as_list, owner, disabled)


def split_blocks(text: str) -> list[str]:
    """Split ``info mtree`` text into its blank-line separated blocks (CRLF tolerated)."""
    text = text.replace("\r\n", "\n")
    return [block for block in text.split("\n\n") if block.strip()]


def normalize_blocks(text: str) -> list[str]:
    """Return the blocks in a canonical form for comparing two ``info mtree`` outputs.

    Drops the ``FlatView #N`` line, sorts the `` AS`` lines inside a flat
    block, strips trailing blank lines, and sorts the blocks (QEMU's block
    order is random; the line order inside a block is significant).
    """
    blocks = []
    for block in split_blocks(text):
        lines = [line for line in block.split("\n") if line]
        if lines and lines[0].startswith("FlatView #"):
            lines = lines[1:]
            as_lines = sorted(line for line in lines if line.startswith(' AS "'))
            rest = [line for line in lines if not line.startswith(' AS "')]
            lines = as_lines + rest
        blocks.append("\n".join(lines))
    return sorted(blocks)
