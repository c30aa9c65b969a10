"""Rebuild a memory model from QEMU 7.2 ``info mtree`` text (the real-QEMU oracle).

``parse_mtree(tree_text, hints_text)`` reads the tree of ``info mtree -o -D``
and builds the same region graph with ``memexpose.memory``; one
``MemorySystem`` holds an ``AddressSpace`` per ``address-space:`` line.
Rendering that model must give QEMU's own ``info mtree -f`` text: the test
of the memory layer against the real thing.

How the tree text maps to regions
---------------------------------

* Each region line gives name, absolute range (hence ``addr`` inside the
  printed parent, and ``size``), signed priority, ``nv-``, kind, alias target
  name and offset range, ``[disabled]`` and (with ``-o``) owner and QOM parent.
* A region can be printed several times: under its address-space root, as
  the top of a ``memory-region:`` block (one per alias target), and inside
  the subtree of another such block. Copies are unified by *shape*: name,
  owner text, ``addr``, size, priority, flags, alias reference and the
  shapes of all children. Copies inside one block are never unified (a
  region has one container), two address-space roots are never unified
  (QEMU groups address spaces by root), nor are two ``memory-region:``
  tops (one block per target).
* Aliases resolve by target name through the ``memory-region:`` blocks;
  when two blocks share a name, the one whose kind and size fit is taken.
* Kinds: ``ram`` -> ``init_ram``, ``rom`` -> ``init_rom``, ``romd`` ->
  ``init_rom_device`` (romd mode on), ``i/o`` -> ``init_io`` with a plain
  ``MemoryRegionOps()`` when it terminates, else ``init_container``.
  ``ramd`` (VFIO RAM devices) is refused. All RAM shares one lazily
  allocated memfd (the parse never touches the bytes).
* A printed ``X-X`` is size 1 or size 0 (QEMU prints both alike). We take
  1 (QEMU refuses 0-byte RAM, and empty regions are rare) unless the flat
  hints prove 0: see H4.
* ``-D`` matters: without it the children of a hidden disabled region are
  printed under the wrong parent, and the parse cannot tell. Always give
  ``info mtree -o -D`` text.

Hints from the same capture's ``info mtree -f -o`` (reference doc §7.3)
----------------------------------------------------------------------

The tree lacks a few facts; ``hints_text`` supplies them:

H1. *Terminates.* An ``i/o`` region produces content (MMIO, so its own ops
    fill its holes) iff its (name, owner) appears as a flat range; otherwise
    it is a pure container. Exact, except when a container and an MMIO
    region share name and owner (``usb_dwc3`` on Xilinx boards): a range
    then goes to the one placed (through containers and aliases) where the
    range says the region starts (``start - @offset``).
H2. *Insertion order* among equal-priority siblings. Same address: the tree
    prints newest first, exact. Different addresses: we assume ascending
    address is insertion order (the higher address is newer and wins an
    overlap), which boards do. A heuristic; if the flat view still differs,
    H5 tries the other order.
H3. *Read-only aliases and containers* (the tree prints an alias's target
    kind, so ``pam-rom`` shows ``ram``). Inferred, not named: flat ranges
    printed ``rom`` that our model renders writable are *wanted*. Every
    enabled region above such a range's region (containers and aliases,
    nearest first; the terminal itself unless it is RAM) is tried as
    read-only, and kept iff the wanted bytes shrink and no byte outside a
    flat ``rom`` range turns read-only. Renders use the memory layer, the
    one owner of rendering rules.
H4. *Size 0.* A region printed ``X-X`` (not RAM/ROM) is tried at size 0 when
    the flat view differs; kept iff the difference shrinks.
H5. *Order fallback.* When the flat view still differs, each overlapping
    pair of equal-priority siblings at different addresses is tried in the
    other order (re-adding the older one makes it newest); kept iff the
    difference shrinks.
H6. *Address-space order* is the order of the `` AS`` lines in the flat
    text (registration order within a view); names the flat text lacks
    follow in tree order. An `` AS`` line pairs with the tree root of the same
    name and root name; when several roots share both (one
    ``tz-mpc-blocked-io`` per MPC), with the one whose subtree holds the most
    of the view's (name, owner) pairs.

Without hints: an ``i/o`` region terminates iff it has no subregions, and
nothing is inferred.

An alias placed inside the region it shows (ARMSSE boards:
``alias 3 @arm-sse-cpu-container0`` inside that container) renders as in
QEMU: clipping ends the recursion (docs/memory.md R8). ``ParsedMtree.notes``
lists every inferred fact and ``ParsedMtree.flat_mismatch`` how many flat
lines still differ (0 when the model reproduces the hints).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from memexpose.errors import MemexposeError, MtreeParseError
from memexpose.memory import (
    AddressSpace,
    HostMemory,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    Owner,
    format_mtree,
    normalize_blocks,
)

__all__ = [
    "FlatHintRange",
    "FlatHintSpace",
    "FlatHints",
    "ParsedMtree",
    "diff_mtree",
    "parse_flat_hints",
    "parse_mtree",
    "render_qemu_flat",
    "render_qemu_tree",
]

_MASK64 = (1 << 64) - 1
_SPACE = 1 << 64
_PRIO_MIN = -(1 << 31)
_PRIO_MAX = (1 << 31) - 1
_OVERFLOW = "[DETECTED OVERFLOW!] "
_ALIAS_HOPS = 16

_RANGE = (r"(?P<start>[0-9a-f]{16})-(?P<last>[0-9a-f]{16}) "
          r"\(prio (?P<prio>-?\d+), (?P<nv>nv-)?(?P<kind>ramd|romd|ram|rom|i/o)\): (?P<rest>.*)")
_TREE_LINE = re.compile(r"(?P<indent>(?:  )+)" + _RANGE)
_FLAT_LINE = re.compile(r"  " + _RANGE)
_OWNER_SUFFIX = re.compile(
    r"(?P<suffix>(?: owner:\{(?:dev|obj) (?:path|id|type)=[^{}]*\})?"
    r"(?: parent:\{(?:dev|obj) (?:path|id|type)=[^{}]*\})?| orphan)$")
_OWNER_PART = re.compile(r" (?P<role>owner|parent):\{(?P<kind>dev|obj) (?P<key>path|id|type)="
                         r"(?P<value>[^{}]*)\}")
_ALIAS_RANGE = re.compile(r" (?P<ostart>[0-9a-f]{16})-(?P<olast>[0-9a-f]{16})$")
_FLAT_OFFSET = re.compile(r" @(?P<off>[0-9a-f]{16})$")
_AS_LINE = re.compile(r' AS "(?P<name>.*)", root: (?P<root>.*?)(?:, alias (?P<alias>.*))?')


# -- flat hints ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlatHintRange:
    """One range line of ``info mtree -f [-o]``.

    Attributes:
        start, end: absolute range (``end`` exclusive; it may be 2**64).
        priority: the terminal region's own priority.
        kind: ``ram``, ``rom``, ``romd``, ``ramd`` or ``i/o`` (``rom`` also
            for any range made read-only by an alias or container).
        nonvolatile: printed ``nv-``.
        name: the terminal region's name.
        offset: offset inside the terminal region (``@...``; 0 when absent).
        owner_text: the ``-o`` suffix (``" owner:{...}"``...), None without ``-o``.
    """

    start: int
    end: int
    priority: int
    kind: str
    nonvolatile: bool
    name: str
    offset: int
    owner_text: str | None


@dataclass(frozen=True, slots=True)
class FlatHintSpace:
    """One `` AS`` line of ``info mtree -f`` and the ranges of its view.

    Attributes:
        name: the address-space name (not unique: intel-iommu makes one
            ``vtd-root`` per PCI function).
        root: the name of the address space's root region.
        ranges: the range lines of the view (shared views repeat them).
    """

    name: str
    root: str
    ranges: tuple[FlatHintRange, ...]


@dataclass(frozen=True, slots=True)
class FlatHints:
    """What the hints parser keeps of ``info mtree -f [-o]`` text.

    Attributes:
        spaces: one entry per `` AS`` line, in the order they appear.
        has_owners: whether the text was printed with ``-o``.
        text: the text itself (LF line endings), for comparisons.
    """

    spaces: tuple[FlatHintSpace, ...]
    has_owners: bool
    text: str


def _split_owner(rest: str) -> tuple[str, str | None]:
    """Split ``rest`` into the text before the ``-o`` suffix and the suffix (None if absent)."""
    m = _OWNER_SUFFIX.search(rest)
    assert m is not None  # the suffix may be empty, so the end always matches
    suffix = m.group("suffix")
    return rest[:m.start()], (suffix or None)


def parse_flat_hints(text: str) -> FlatHints:
    """Parse ``info mtree -f [-o]`` text (``-d`` dispatch dumps are skipped).

    Args:
        text: the monitor output; CRLF is accepted.

    Returns:
        The address-space order and the range lines of every view.

    Raises:
        MtreeParseError: a line that fits no part of the format (with its number).
    """
    text = text.replace("\r\n", "\n")
    spaces: list[FlatHintSpace] = []
    has_owners = False
    block_as: list[tuple[str, str]] = []
    block_ranges: list[FlatHintRange] = []
    in_dispatch = False

    def flush() -> None:
        ranges = tuple(block_ranges)
        spaces.extend(FlatHintSpace(name, root, ranges) for name, root in block_as)

    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            flush()
            block_as, block_ranges, in_dispatch = [], [], False
            continue
        if in_dispatch:
            continue
        if line.startswith("FlatView #") or line.startswith(" Root memory region: ") \
                or line == "  No rendered FlatView":
            continue
        if line == "  Dispatch":
            in_dispatch = True
            continue
        m = _AS_LINE.fullmatch(line)
        if m is not None:
            block_as.append((m.group("name"), m.group("root")))
            continue
        m = _FLAT_LINE.fullmatch(line)
        if m is None:
            raise MtreeParseError(f"not a line of `info mtree -f` output: {line!r}",
                                  line_number=number)
        rest = m.group("rest").removesuffix(" kvm")
        rest, owner_text = _split_owner(rest)
        has_owners = has_owners or owner_text is not None
        offset = 0
        off = _FLAT_OFFSET.search(rest)
        if off is not None:
            offset = int(off.group("off"), 16)
            rest = rest[:off.start()]
        start = int(m.group("start"), 16)
        last = int(m.group("last"), 16)
        block_ranges.append(FlatHintRange(
            start=start, end=last + 1, priority=int(m.group("prio")), kind=m.group("kind"),
            nonvolatile=m.group("nv") is not None, name=rest, offset=offset,
            owner_text=owner_text))
    flush()
    return FlatHints(tuple(spaces), has_owners, text)


def diff_mtree(ours: str, theirs: str, *, ours_label: str = "ours",
               theirs_label: str = "qemu") -> str:
    """Compare two ``info mtree`` texts block by block, as multisets (reference §6.4).

    Block order is ignored (QEMU's is random); inside a block, line order
    counts. Flat blocks drop ``FlatView #N`` and sort their `` AS`` lines.

    Args:
        ours, theirs: the two texts (CRLF accepted).
        ours_label, theirs_label: names for the diff headers.

    Returns:
        "" when the block multisets are equal; otherwise a readable report:
        a unified diff for each pair of differing blocks with the same first
        line, then the blocks found on one side only.
    """
    mine = Counter(normalize_blocks(ours))
    other = Counter(normalize_blocks(theirs))
    if mine == other:
        return ""
    extra = sorted((mine - other).elements())
    missing = sorted((other - mine).elements())
    out = [f"{len(missing)} block(s) of {theirs_label} differ from {len(extra)} of {ours_label}"]
    for block in list(missing):
        head = block.split("\n", 1)[0]
        match = next((b for b in extra if b.split("\n", 1)[0] == head), None)
        if match is None:
            continue
        missing.remove(block)
        extra.remove(match)
        out.append("")
        out.extend(difflib.unified_diff(block.split("\n"), match.split("\n"), theirs_label,
                                        ours_label, lineterm="", n=2))
    for label, blocks in ((theirs_label, missing), (ours_label, extra)):
        for block in blocks:
            out.append("")
            out.append(f"only in {label}:")
            out.extend("  " + line for line in block.split("\n"))
    return "\n".join(out) + "\n"


# -- tree text ------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Node:
    """One printed region line, placed in its block's printed tree."""

    number: int
    text: str
    depth: int
    block: int
    start: int
    last: int
    priority: int
    nonvolatile: bool
    kind: str
    name: str
    disabled: bool
    owner_text: str | None
    alias_text: str | None = None  # "NAME @TARGET" before the split
    alias_start: int = 0
    alias_last: int = 0
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)
    addr: int = 0
    size: int = 0
    target_name: str = ""
    sig: int = 0
    proto: _Proto | None = None


@dataclass(slots=True, eq=False)
class _Block:
    """A blank-line separated block: its header and its top region line."""

    number: int
    header: str
    as_names: list[str]
    region_header: str | None
    top: _Node | None = None


@dataclass(slots=True, eq=False)
class _Proto:
    """One distinct region, unified from its printed copies."""

    node: _Node
    children: list[_Proto] = field(default_factory=list)
    container: _Proto | None = None
    print_index: int = 0
    is_as_root: bool = False
    is_block_top: bool = False
    target: _Proto | None = None
    mr: MemoryRegion | None = None
    copies: list[_Node] = field(default_factory=list)


def _err(node_or_number: _Node | int, line: str, message: str) -> MtreeParseError:
    number = node_or_number.number if isinstance(node_or_number, _Node) else node_or_number
    return MtreeParseError(f"{message}: {line!r}", line_number=number)


def _parse_tree_blocks(text: str) -> list[_Block]:
    """Split tree text into blocks of parsed, nested region lines."""
    blocks: list[_Block] = []
    block: _Block | None = None
    stack: list[_Node] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            if block is not None and block.top is None:
                raise _err(block.number, block.header, "block has a header but no region line")
            block = None
            continue
        if line.startswith("address-space: "):
            if block is None:
                block = _Block(number, line, [], None)
                blocks.append(block)
            elif block.top is not None or block.region_header is not None:
                raise _err(number, line, "address-space header inside a block")
            block.as_names.append(line[len("address-space: "):])
            continue
        if line.startswith("memory-region: "):
            if block is not None:
                raise _err(number, line, "memory-region header inside a block")
            block = _Block(number, line, [], line[len("memory-region: "):])
            blocks.append(block)
            continue
        if block is None:
            raise _err(number, line, "region line outside a block (expected an "
                       "'address-space:' or 'memory-region:' header first)")
        node = _parse_region_line(number, line, len(blocks) - 1)
        if node.depth == 1:
            if block.top is not None:
                raise _err(number, line, "second top-level region in one block")
            block.top = node
            stack = [node]
            continue
        if block.top is None or node.depth > len(stack) + 1:
            raise _err(number, line, "indentation skips a level")
        del stack[node.depth - 1:]
        node.parent = stack[-1]
        stack[-1].children.append(node)
        stack.append(node)
    if block is not None and block.top is None:
        raise _err(block.number, block.header, "block has a header but no region line")
    return blocks


def _parse_region_line(number: int, line: str, block: int) -> _Node:
    body = line.removeprefix(_OVERFLOW)
    m = _TREE_LINE.fullmatch(body)
    if m is None:
        raise _err(number, line, "not a region line of `info mtree` output")
    prio = int(m.group("prio"))
    if not _PRIO_MIN <= prio <= _PRIO_MAX:
        raise _err(number, line, f"priority {prio} is not a signed 32-bit number")
    rest, owner_text = _split_owner(m.group("rest"))
    disabled = rest.endswith(" [disabled]")
    rest = rest.removesuffix(" [disabled]")
    node = _Node(number=number, text=line, depth=len(m.group("indent")) // 2, block=block,
                 start=int(m.group("start"), 16), last=int(m.group("last"), 16),
                 priority=prio, nonvolatile=m.group("nv") is not None, kind=m.group("kind"),
                 name=rest, disabled=disabled, owner_text=owner_text)
    if rest.startswith("alias "):
        am = _ALIAS_RANGE.search(rest)
        if am is None or " @" not in rest:
            raise _err(number, line, "alias line without '@TARGET START-LAST'")
        node.alias_text = rest[len("alias "):am.start()]
        node.alias_start = int(am.group("ostart"), 16)
        node.alias_last = int(am.group("olast"), 16)
        if (node.alias_last - node.alias_start) & _MASK64 != (node.last - node.start) & _MASK64:
            raise _err(number, line, "alias offset range and address range differ in size")
    return node


def _split_alias(node: _Node, targets: set[str]) -> None:
    """Split "NAME @TARGET" where the target is a known memory-region block."""
    text = node.alias_text or ""
    splits = [i for i in range(len(text)) if text.startswith(" @", i)]
    if not splits:
        raise _err(node, node.text, "alias line without '@TARGET'")
    chosen = next((i for i in splits if text[i + 2:] in targets), splits[0])
    node.name = text[:chosen]
    node.target_name = text[chosen + 2:]


def _region_size(start: int, last: int) -> int:
    """Size from a printed range: X-X gives 1 (could be 0, see H4)."""
    return ((last - start) & _MASK64) + 1


def _shape_pass(blocks: list[_Block], targets: set[str]) -> None:
    """Set addr, size and an interned shape signature on every printed node."""
    interned: dict[tuple[object, ...], int] = {}

    def visit(node: _Node, parent_start: int) -> int:
        node.addr = (node.start - parent_start) & _MASK64
        node.size = _region_size(node.start, node.last)
        if node.alias_text is not None:
            _split_alias(node, targets)
        child_sigs = tuple(visit(child, node.start) for child in node.children)
        key = (node.name, node.owner_text, node.addr, node.size, node.priority,
               node.nonvolatile, node.kind, node.disabled, node.alias_text is not None,
               node.target_name, node.alias_start, child_sigs)
        node.sig = interned.setdefault(key, len(interned))
        return node.sig

    for block in blocks:
        assert block.top is not None
        visit(block.top, 0)


def _unify(blocks: list[_Block]) -> list[_Proto]:
    """Map printed copies to distinct regions (module docstring)."""
    protos: list[_Proto] = []
    by_sig: dict[int, list[_Proto]] = {}
    seen_in_block: dict[int, set[int]] = {}

    def claim(proto: _Proto, block: int) -> None:
        stack = [proto]
        mine = seen_in_block.setdefault(block, set())
        while stack:
            p = stack.pop()
            mine.add(id(p))
            stack.extend(p.children)

    def place(node: _Node, parent: _Proto | None, index: int, as_root: bool,
              block_top: bool) -> _Proto:
        mine = seen_in_block.setdefault(node.block, set())
        for proto in by_sig.get(node.sig, ()):
            if id(proto) in mine:
                continue
            if parent is not None and proto.container is not None:
                continue
            if (as_root and proto.is_as_root) or (block_top and proto.is_block_top):
                continue
            if parent is not None:
                proto.container = parent
                proto.print_index = index
            proto.is_as_root |= as_root
            proto.is_block_top |= block_top
            claim(proto, node.block)
            _map_copy(node, proto)
            return proto
        proto = _Proto(node=node, container=parent, print_index=index,
                       is_as_root=as_root, is_block_top=block_top)
        protos.append(proto)
        by_sig.setdefault(node.sig, []).append(proto)
        mine.add(id(proto))
        node.proto = proto
        proto.copies.append(node)
        proto.children = [place(child, proto, i, False, False)
                          for i, child in enumerate(node.children)]
        return proto

    # Address-space blocks first: their roots anchor the memory-region copies.
    ordered = ([b for b in blocks if b.region_header is None]
               + [b for b in blocks if b.region_header is not None])
    for block in ordered:
        assert block.top is not None
        place(block.top, None, 0, block.region_header is None, block.region_header is not None)
    return protos


def _map_copy(node: _Node, proto: _Proto) -> None:
    node.proto = proto
    proto.copies.append(node)
    for child, sub in zip(node.children, proto.children):
        _map_copy(child, sub)


def _resolve_aliases(blocks: list[_Block], protos: list[_Proto]) -> None:
    tops: dict[str, list[_Proto]] = {}
    for block in blocks:
        if block.region_header is not None:
            assert block.top is not None and block.top.proto is not None
            tops.setdefault(block.region_header, []).append(block.top.proto)
    for proto in protos:
        node = proto.node
        if node.alias_text is None:
            continue
        found = tops.get(node.target_name, [])
        if not found:
            raise _err(node, node.text, f"alias target {node.target_name!r} has no "
                       "'memory-region:' block")
        fitting = [t for t in found if t.node.kind == node.kind
                   and node.alias_start + node.size <= t.node.size]
        proto.target = (fitting or found)[0]


# -- building the model -------------------------------------------------------


class _Owners:
    """Intern owners: one ``Owner`` per printed owner, shared by its regions."""

    def __init__(self) -> None:
        self._by_text: dict[tuple[str, str, str], Owner] = {}

    def get(self, kind: str, key: str, value: str) -> Owner:
        owner = self._by_text.get((kind, key, value))
        if owner is None:
            if key == "path":
                owner = Owner(kind, path=value)
            elif key == "id":
                owner = Owner(kind, id=value) if kind == "dev" else Owner(kind, type_name=value)
            else:
                owner = Owner(kind, type_name=value)
            self._by_text[(kind, key, value)] = owner
        return owner

    def apply(self, mr: MemoryRegion, owner_text: str | None) -> None:
        """Set ``mr.owner``/``mr.parent_object`` from a ``-o`` suffix."""
        if owner_text is None:
            return
        if owner_text == " orphan":
            mr.owner = None
            mr.parent_object = None
            return
        owner = parent = None
        for part in _OWNER_PART.finditer(owner_text):
            value = self.get(part.group("kind"), part.group("key"), part.group("value"))
            if part.group("role") == "owner":
                owner = value
            else:
                parent = value
        mr.owner = owner
        mr.parent_object = parent if parent is not None else owner


def _match_spaces(blocks: list[_Block], hints: FlatHints | None
                  ) -> list[tuple[str, _Proto, FlatHintSpace | None]]:
    """H6: pair every tree address space with its `` AS`` line, in the flat order.

    Pairs by name and root name. Several roots can share both (one
    ``tz-mpc-blocked-io`` per MPC): then the root whose subtree holds the
    most of the view's (name, owner) pairs wins. Tree address spaces that
    the flat text lacks follow, in tree order.
    """
    pending: list[tuple[str, _Proto]] = []
    for block in blocks:
        if block.region_header is None:
            assert block.top is not None and block.top.proto is not None
            pending += [(name, block.top.proto) for name in block.as_names]
    matched: list[tuple[str, _Proto, FlatHintSpace | None]] = []
    for space in hints.spaces if hints is not None else ():
        found = [i for i, (name, root) in enumerate(pending)
                 if name == space.name and root.node.name == space.root]
        if not found:
            continue
        if len(found) > 1:
            wanted = {(r.name, r.owner_text) for r in space.ranges}

            def score(i: int, wanted: set[tuple[str, str | None]] = wanted) -> int:
                below = _reachable(pending[i][1])
                return len(wanted & {(p.node.name, p.node.owner_text) for p in below})

            found.sort(key=score, reverse=True)
        name, root = pending.pop(found[0])
        matched.append((name, root, space))
    return matched + [(name, root, None) for name, root in pending]


def _reachable(root: _Proto) -> list[_Proto]:
    """Return ``root`` and every region below it, through subregions and alias targets."""
    seen: set[int] = set()
    out: list[_Proto] = []
    stack = [root]
    while stack:
        proto = stack.pop()
        if id(proto) in seen:
            continue
        seen.add(id(proto))
        out.append(proto)
        stack.extend(proto.children)
        if proto.target is not None:
            stack.append(proto.target)
    return out


def _terminating(protos: list[_Proto],
                 spaces: list[tuple[str, _Proto, FlatHintSpace | None]],
                 hints: FlatHints | None) -> set[int]:
    """H1: return the ids of the ``i/o`` regions that terminate (MMIO, not containers).

    A region terminates iff its (name, owner) has a flat range. When several
    ``i/o`` regions share name and owner (a device's container and its MMIO
    inside), a range goes to the region placed, in that address space, exactly
    where the range says it starts (``start - @offset``); failing that, to
    every one of them big enough to hold it.
    """
    io = [p for p in protos if p.node.alias_text is None and p.node.kind == "i/o"]
    if hints is None:
        return {id(p) for p in io if not p.node.children}
    use_owner = hints.has_owners and any(p.node.owner_text is not None for p in protos)

    def key(name: str, owner_text: str | None) -> tuple[str, str | None]:
        return (name, owner_text if use_owner else None)

    groups: dict[tuple[str, str | None], list[_Proto]] = {}
    for proto in io:
        groups.setdefault(key(proto.node.name, proto.node.owner_text), []).append(proto)
    seen: dict[tuple[str, str | None], list[tuple[_Proto, FlatHintRange]]] = {}
    for _, root, space in spaces:
        for r in space.ranges if space is not None else ():
            seen.setdefault(key(r.name, r.owner_text), []).append((root, r))
    placements: dict[int, dict[int, set[int]]] = {}

    def placed_at(proto: _Proto, root: _Proto, addr: int) -> bool:
        where = placements.get(id(root))
        if where is None:
            where = placements[id(root)] = _placements(root)
        return addr in where.get(id(proto), ())

    result: set[int] = set()
    for k, group in groups.items():
        found = seen.get(k)
        if not found:
            continue
        if len(group) == 1:
            result.add(id(group[0]))
            continue
        for root, r in found:
            addr = (r.start - r.offset) & _MASK64
            owners = [p for p in group if placed_at(p, root, addr)] or [
                p for p in group if r.offset + (r.end - r.start) <= p.node.size]
            result.update(id(p) for p in owners)
    return result


def _placements(root: _Proto) -> dict[int, set[int]]:
    """Return every absolute start of each region below ``root``, through aliases.

    Positions only (no clipping, priorities or enabled flags): ``addr`` adds
    up along containers, and an alias places its target at its own start
    minus the alias offset. Alias hops are bounded, so an alias into its own
    container ends.
    """
    found: dict[int, set[int]] = {}
    stack = [(root, root.node.addr, 0)]
    while stack:
        proto, start, hops = stack.pop()
        starts = found.setdefault(id(proto), set())
        if start in starts:
            continue
        starts.add(start)
        if proto.target is not None:
            if hops < _ALIAS_HOPS:
                stack.append((proto.target, (start - proto.node.alias_start) & _MASK64,
                              hops + 1))
            continue
        stack.extend((child, (start + child.node.addr) & _MASK64, hops)
                     for child in proto.children)
    return found


def _create(proto: _Proto, terminating: set[int], hostmem: HostMemory | None) -> MemoryRegion:
    """Create the (non-alias) region of ``proto`` from its kind."""
    node = proto.node
    size = node.size
    if node.kind == "ramd":
        raise _err(node, node.text, "RAM device regions (ramd, VFIO) are not supported")
    if node.kind in ("ram", "rom", "romd") and size >= _SPACE:
        raise _err(node, node.text, "RAM, ROM or ROM device of 2**64 bytes cannot exist")
    if node.kind == "ram":
        return MemoryRegion.init_ram(node.name, size, hostmem=hostmem)
    if node.kind == "rom":
        return MemoryRegion.init_rom(node.name, size, hostmem=hostmem)
    if node.kind == "romd":
        return MemoryRegion.init_rom_device(node.name, size, MemoryRegionOps(), hostmem=hostmem)
    if id(proto) in terminating:
        return MemoryRegion.init_io(node.name, size, MemoryRegionOps())
    return MemoryRegion.init_container(node.name, size)


def _build_regions(protos: list[_Proto], terminating: set[int],
                   hostmem: HostMemory | None) -> None:
    """Create every region, then aliases, flags and owners, then the containment.

    Raises:
        MtreeParseError: naming the line whose region the memory model refuses.
    """
    owners = _Owners()

    def build_alias(proto: _Proto, chain: list[_Proto]) -> MemoryRegion:
        if proto.mr is not None:
            return proto.mr
        if any(p is proto for p in chain):
            raise _err(proto.node, proto.node.text, "alias cycle through "
                       + " -> ".join(p.node.name for p in chain))
        target = proto.target
        assert target is not None
        target_mr = build_alias(target, [*chain, proto])
        node = proto.node
        proto.mr = MemoryRegion.init_alias(node.name, target_mr, node.alias_start, node.size)
        return proto.mr

    def setup(proto: _Proto) -> None:
        node = proto.node
        if node.alias_text is None:
            proto.mr = _create(proto, terminating, hostmem)
            return
        build_alias(proto, [])

    def flags(proto: _Proto) -> None:
        node, mr = proto.node, proto.mr
        assert mr is not None
        owners.apply(mr, node.owner_text)
        if node.nonvolatile:
            mr.set_nonvolatile(True)
        if node.disabled:
            mr.set_enabled(False)
        if proto.container is None and node.addr:
            # Shown only as a block top: keep its own addr, which QEMU prints.
            mr.set_address(node.addr)

    def place(proto: _Proto) -> None:
        # H2: ascending address; same address: reverse print order (oldest first).
        container = proto.mr
        assert container is not None
        for child in sorted(proto.children, key=lambda c: (c.node.addr, -c.print_index)):
            assert child.mr is not None
            try:
                container.add_subregion_overlap(child.node.addr, child.mr, child.node.priority)
            except MemexposeError as exc:
                raise _err(child.node, child.node.text,
                           f"the memory model refuses this region: {exc}") from exc

    for step in (setup, flags, place):
        for proto in [p for p in protos if p.node.alias_text is None] + [
                p for p in protos if p.node.alias_text is not None]:
            try:
                step(proto)
            except MtreeParseError:
                raise
            except MemexposeError as exc:
                raise _err(proto.node, proto.node.text,
                           f"the memory model refuses this region: {exc}") from exc


# -- the parse result and inference --------------------------------------------


@dataclass(eq=False)
class ParsedMtree:
    """A memory model rebuilt from ``info mtree`` text.

    Attributes:
        system: the one ``MemorySystem`` holding every address space.
        address_spaces: one per ``address-space:`` line, in registration order (H6).
        regions: every distinct region, in first-printed order.
        notes: facts that were inferred rather than read (H3-H5), one per line.
        flat_mismatch: flat-view lines that differ from the hints (0: identical;
            0 also when no hints were given).
    """

    system: MemorySystem
    address_spaces: tuple[AddressSpace, ...]
    regions: tuple[MemoryRegion, ...]
    notes: list[str] = field(default_factory=list)
    flat_mismatch: int = 0
    hostmem: HostMemory | None = None
    _owns_hostmem: bool = False

    def address_space(self, name: str) -> AddressSpace:
        """Return the address space called ``name``.

        Raises:
            KeyError: no address space has that name.
        """
        for as_ in self.address_spaces:
            if as_.name == name:
                return as_
        raise KeyError(f"no address space {name!r}; have "
                       f"{', '.join(a.name for a in self.address_spaces)}")

    def regions_named(self, name: str) -> list[MemoryRegion]:
        """Return every region called ``name`` (names need not be unique)."""
        return [mr for mr in self.regions if mr.name == name]

    def format_flat(self, *, owner: bool = False) -> str:
        """Return our ``info mtree -f [-o]`` text for the model."""
        return format_mtree(self.system, flatview=True, owner=owner)

    def format_tree(self, *, owner: bool = True, disabled: bool = True) -> str:
        """Return our ``info mtree [-o] [-D]`` text for the model."""
        return format_mtree(self.system, owner=owner, disabled=disabled)

    def close(self) -> None:
        """Release the shared RAM backing (if the parse created it)."""
        if self._owns_hostmem and self.hostmem is not None:
            self.hostmem.close()

    def __enter__(self) -> ParsedMtree:
        return self

    def __repr__(self) -> str:
        return (f"<ParsedMtree address_spaces={len(self.address_spaces)} "
                f"regions={len(self.regions)} notes={len(self.notes)} "
                f"flat_mismatch={self.flat_mismatch}>")

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line_counter(text: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for block in normalize_blocks(text):
        lines = block.split("\n")
        head = "\n".join(line for line in lines if line.startswith(' AS "'))
        for line in lines:
            if not line.startswith(' AS "'):
                counts[(head, line)] += 1
    return counts


def _mismatch(system: MemorySystem, hints: FlatHints) -> int:
    ours = _line_counter(format_mtree(system, flatview=True, owner=hints.has_owners))
    theirs = _line_counter(hints.text)
    return sum(((ours - theirs) + (theirs - ours)).values())


def _merge_intervals(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(pairs):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _covered(intervals: list[tuple[int, int]], start: int, end: int) -> int:
    total = 0
    for a, b in intervals:
        if b <= start:
            continue
        if a >= end:
            break
        total += min(b, end) - max(a, start)
    return total


def _readonly_state(views: list[tuple[AddressSpace, list[tuple[int, int]]]]
                    ) -> tuple[int, int, list[MemoryRegion]]:
    """Return (wanted bytes, wrongly read-only bytes, regions of wanted bytes)."""
    wanted = wrong = 0
    regions: list[MemoryRegion] = []
    for as_, intervals in views:
        for fr in as_.flatview.ranges:
            covered = _covered(intervals, fr.start, fr.end)
            if fr.readonly:
                wrong += fr.size - covered
            elif covered:
                wanted += covered
                if not any(mr is fr.mr for mr in regions):
                    regions.append(fr.mr)
    return wanted, wrong, regions


def _infer_readonly(parsed: ParsedMtree, views: list[tuple[AddressSpace, FlatHintSpace]],
                    protos: list[_Proto]) -> None:
    """H3: mark read-only the regions that explain flat ``rom`` ranges."""
    rom = [(as_, _merge_intervals((r.start, r.end) for r in space.ranges if r.kind == "rom"))
           for as_, space in views]
    wanted, wrong, terminals = _readonly_state(rom)
    if not wanted:
        return
    above: dict[int, list[MemoryRegion]] = {}
    for proto in protos:
        mr = proto.mr
        assert mr is not None
        for lower in (mr.container, mr.alias_target):
            if lower is not None:
                above.setdefault(id(lower), []).append(mr)
    # Nearest first: breadth-first upwards from the regions of wanted bytes.
    order: list[MemoryRegion] = []
    seen: set[int] = set()
    queue = deque(terminals)
    while queue:
        mr = queue.popleft()
        if id(mr) in seen:
            continue
        seen.add(id(mr))
        order.append(mr)
        queue.extend(above.get(id(mr), ()))
    for mr in order:
        if not wanted:
            break
        if mr.ram or mr.readonly or not mr.enabled:
            continue  # RAM read-only would print "rom" in the tree too
        mr.set_readonly(True)
        now_wanted, now_wrong, _ = _readonly_state(rom)
        if now_wanted < wanted and now_wrong <= wrong:
            wanted, wrong = now_wanted, now_wrong
            where = f" in {mr.container.name}" if mr.container is not None else ""
            parsed.notes.append(f"H3 read-only: {mr.kind_name()}"
                                f"{' alias' if mr.is_alias else ''} {mr.name} at "
                                f"{mr.addr:#x}{where}")
        else:
            mr.set_readonly(False)


_Trial = tuple[str, Callable[[], None], Callable[[], None]]
"""(note, do, undo): one candidate fact for H4/H5."""


def _try_each(parsed: ParsedMtree, hints: FlatHints, trials: Iterable[_Trial]) -> None:
    """Apply each (note, do, undo) trial; keep it iff the flat mismatch shrinks."""
    for note, do, undo in trials:
        if not parsed.flat_mismatch:
            return
        do()
        now = _mismatch(parsed.system, hints)
        if now < parsed.flat_mismatch:
            parsed.flat_mismatch = now
            parsed.notes.append(note)
        else:
            undo()


def _zero_size_trials(protos: list[_Proto]) -> Iterable[_Trial]:
    """H4: regions printed X-X that could be empty."""
    for proto in protos:
        node, mr = proto.node, proto.mr
        assert mr is not None
        if node.size != 1 or (node.alias_text is None and node.kind in ("ram", "rom", "romd")):
            continue
        yield (f"H4 size 0: {node.name} at line {node.number}",
               lambda mr=mr: mr.set_size(0), lambda mr=mr: mr.set_size(1))


def _transaction(mr: MemoryRegion) -> AbstractContextManager[object]:
    return mr.system.transaction() if mr.system is not None else nullcontext()


def _readd(container: MemoryRegion, mr: MemoryRegion) -> None:
    """Remove and re-add ``mr``: it becomes the newest of its priority."""
    addr, priority = mr.addr, mr.priority
    with _transaction(container):
        container.del_subregion(mr)
        container.add_subregion_overlap(addr, mr, priority)


def _order_trials(protos: list[_Proto]) -> Iterable[_Trial]:
    """H5: overlapping equal-priority siblings at different addresses, other order."""
    for proto in protos:
        container = proto.mr
        assert container is not None
        subs = list(container.subregions)
        for i, newer in enumerate(subs):
            for older in subs[i + 1:]:
                if older.priority != newer.priority or older.addr == newer.addr:
                    continue
                if any(s is not older and s.addr == older.addr and s.priority == older.priority
                       for s in subs):
                    continue  # re-adding would reorder a same-address group the tree shows
                if older.addr < newer.addr + newer.size and newer.addr < older.addr + older.size:
                    state = list(container.subregions)

                    def undo(container: MemoryRegion = container,
                             state: list[MemoryRegion] = state) -> None:
                        # Re-add in the old order, oldest first.
                        with _transaction(container):
                            for mr in state:
                                container.del_subregion(mr)
                            for mr in reversed(state):
                                container.add_subregion_overlap(mr.addr, mr, mr.priority)

                    yield (f"H5 order: {older.name} at {older.addr:#x} added after "
                           f"{newer.name} at {newer.addr:#x} in {container.name}",
                           lambda c=container, m=older: _readd(c, m), undo)


def parse_mtree(tree_text: str, hints_text: str | None = None, *,
                hostmem: HostMemory | None = None, big_endian: bool = False) -> ParsedMtree:
    """Rebuild the memory model that QEMU printed as ``info mtree -o -D``.

    Args:
        tree_text: ``info mtree -o -D`` output (``-D`` is needed; ``-o`` is
            needed to tell same-named regions apart). CRLF is accepted.
        hints_text: ``info mtree -f -o`` output of the same QEMU at the same
            moment (H1-H6 in the module docstring); None to guess instead.
        hostmem: RAM backing shared by every RAM, ROM and ROM-device region;
            by default one lazily allocated memfd, released by ``close()``.
        big_endian: the target's byte order (for the ``MemorySystem``).

    Returns:
        The model; call ``close()`` (or use ``with``) to release its backing.

    Raises:
        MtreeParseError: malformed text (the message names the line and shows
            it), an alias target without a ``memory-region:`` block, an alias
            cycle, a ``ramd`` region, or text the memory model refuses.
    """
    text = tree_text.replace("\r\n", "\n")
    hints = parse_flat_hints(hints_text) if hints_text is not None else None
    blocks = _parse_tree_blocks(text)
    if not blocks:
        raise MtreeParseError("no address-space block in the tree text", line_number=1)
    targets = {b.region_header for b in blocks if b.region_header is not None}
    _shape_pass(blocks, targets)
    protos = _unify(blocks)
    _resolve_aliases(blocks, protos)
    spaces = _match_spaces(blocks, hints)

    owns = False
    if hostmem is None:
        ram_sizes = [p.node.size for p in protos
                     if p.node.alias_text is None and p.node.kind in ("ram", "rom", "romd")]
        if ram_sizes and max(ram_sizes) < _SPACE:
            hostmem = HostMemory.memfd("mtree-ram", max(ram_sizes))
            owns = True
    try:
        _build_regions(protos, _terminating(protos, spaces, hints), hostmem)

        system = MemorySystem("qemu-mtree", big_endian=big_endian)
        views: list[tuple[AddressSpace, FlatHintSpace]] = []
        address_spaces = []
        for name, root, space in spaces:
            assert root.mr is not None
            as_ = AddressSpace(root.mr, name, system=system)
            address_spaces.append(as_)
            if space is not None:
                views.append((as_, space))
        parsed = ParsedMtree(system, tuple(address_spaces),
                             tuple(p.mr for p in protos if p.mr is not None),
                             hostmem=hostmem, _owns_hostmem=owns)
        if hints is not None:
            _infer_readonly(parsed, views, protos)
            parsed.flat_mismatch = _mismatch(system, hints)
            _try_each(parsed, hints, _zero_size_trials(protos))
            _try_each(parsed, hints, _order_trials(protos))
        return parsed
    except BaseException:
        if owns and hostmem is not None:
            hostmem.close()
        raise


def render_qemu_flat(tree_text: str, hints_text: str | None, owner: bool = False) -> str:
    """Return the ``info mtree -f [-o]`` text our model renders from a QEMU capture.

    Args:
        tree_text: ``info mtree -o -D`` output.
        hints_text: ``info mtree -f -o`` output of the same capture (or None).
        owner: print owners, like ``info mtree -f -o``.

    Raises:
        MtreeParseError: as ``parse_mtree``.
    """
    with parse_mtree(tree_text, hints_text) as parsed:
        return parsed.format_flat(owner=owner)


def render_qemu_tree(tree_text: str, hints_text: str | None, *, owner: bool = True,
                     disabled: bool = True) -> str:
    """Return the ``info mtree [-o] [-D]`` text of the model rebuilt from a capture.

    Raises:
        MtreeParseError: as ``parse_mtree``.
    """
    with parse_mtree(tree_text, hints_text) as parsed:
        return parsed.format_tree(owner=owner, disabled=disabled)
