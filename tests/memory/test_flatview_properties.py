"""Property tests for memexpose.memory.flatview (and the commit protocol).

Random region trees are rendered by the model and compared, address by
address, with a deliberately naive reference written here from the QEMU 7.2
rules (reference section 3): for every address it walks the tree on its
own, the way render_memory_region would claim that one byte. The merged
ranges must then be exactly the maximal runs of mergeable bytes (R6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memexpose.errors import RegionCycleError, RegionInUseError
from memexpose.memory import (
    AddressSpace,
    FlatView,
    HostMemory,
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    flatview_root,
    render_flatview,
)

SPAN = 256  # root sizes stay around this; offsets and sizes up to MAX_SIZE
MAX_SIZE = 300
CHECK_END = 2 * SPAN + 2 * MAX_SIZE  # every range of every view lies below this
PRIORITIES = st.sampled_from([0, 1, -1, 0, 2, -2, 2**31 - 1, -(2**31)])
_MOSTLY_TRUE = st.sampled_from([True, True, True, True, True, False])  # Hypothesis favours index 0


def _numbers(low: int, high: int):
    """Mostly multiples of 16, so that windows touch, nest and line up (adjacent
    ranges of one region are what merging is about), plus arbitrary values."""
    k_low, k_high = -(-low // 16), high // 16
    if k_low > k_high:
        return st.integers(low, high)
    return st.one_of(st.integers(k_low, k_high).map(lambda k: 16 * k), st.integers(low, high))


TERMINAL = ("ram", "rom", "io")
KINDS = ("ram", "rom", "io", "io", "cont", "cont", "iocont", "alias", "alias")
PROFILE = settings(max_examples=200, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_BACKING = HostMemory.anonymous("prop-backing", 1024)


@dataclass
class Node:
    """One region of a generated tree, as plain data (the reference never looks at the model)."""

    kind: str
    size: int
    enabled: bool = True
    readonly: bool = False
    nonvolatile: bool = False
    target: int | None = None  # aliases
    alias_offset: int = 0
    children: list[tuple[int, int, int]] = field(default_factory=list)  # (idx, addr, prio)
    addr: int = 0
    parent: int | None = None


def _place(draw, nodes: list[Node], parent: int, child: int, addr: int | None = None,
           prio: int | None = None) -> None:
    if addr is None:  # mostly fitting inside the parent, sometimes sticking out
        if draw(_MOSTLY_TRUE):
            addr = draw(_numbers(0, max(nodes[parent].size - nodes[child].size, 0)))
        else:
            addr = draw(_numbers(0, SPAN - 1))
    prio = draw(PRIORITIES) if prio is None else prio
    nodes[parent].children.append((child, addr, prio))
    nodes[child].addr = addr
    nodes[child].parent = parent


def _flags(draw, node: Node, *, always_enabled: bool = False) -> Node:
    node.enabled = always_enabled or draw(_MOSTLY_TRUE)
    node.readonly = node.kind == "rom" or not draw(_MOSTLY_TRUE)
    node.nonvolatile = not draw(_MOSTLY_TRUE)
    return node


def draw_tree(draw) -> list[Node]:
    """Draw nodes bottom-up; the last one is the root. Returns the node list.

    Besides single regions, a "pair" is a container holding two aliases that
    show adjacent windows of one earlier region side by side, each with its
    own flags: the case merging (R6) is about.
    """
    count = draw(st.integers(2, 14))
    nodes: list[Node] = []
    unplaced: list[int] = []
    while len(nodes) < count:
        kind = draw(st.sampled_from(KINDS + ("pair", "pair") if nodes else KINDS[:7]))
        if kind == "pair":
            leaves = [k for k, n in enumerate(nodes) if n.kind in TERMINAL]
            target = draw(st.sampled_from(leaves or range(len(nodes))))
            offset = draw(_numbers(0, max(nodes[target].size - 1, 0)))
            room = max((nodes[target].size - offset) // 2, 1)
            s1 = draw(_numbers(1, room))
            s2 = draw(_numbers(1, room))
            first = len(nodes)
            for size, off in ((s1, offset), (s2, offset + s1)):
                alias = Node("alias", size, target=target, alias_offset=off)
                alias.readonly = draw(st.booleans())
                alias.nonvolatile = draw(st.booleans())
                nodes.append(alias)
            nodes.append(_flags(draw, Node("cont", s1 + s2)))
            _place(draw, nodes, first + 2, first, 0)
            _place(draw, nodes, first + 2, first + 1, s1)
            unplaced.append(first + 2)
            continue
        i = len(nodes)
        # Leaves mostly smaller than the root, so several of them show.
        top = MAX_SIZE if kind in ("cont", "iocont") else draw(st.sampled_from([96, MAX_SIZE]))
        size = draw(_numbers(1 if kind in ("ram", "rom") else 0, top))
        node = _flags(draw, Node(kind, size))
        if kind == "alias":
            node.target = draw(st.integers(0, i - 1))
            inside = max(nodes[node.target].size - 1, 0)
            node.alias_offset = draw(st.one_of(st.just(0), _numbers(0, inside),
                                               _numbers(0, MAX_SIZE)))
        nodes.append(node)
        # Containers (and, rarely, MMIO or aliases: alias subregions are ignored)
        # take some of the unplaced earlier nodes as subregions.
        takes = kind in ("cont", "iocont") or not draw(_MOSTLY_TRUE)
        if takes and unplaced:
            for c in draw(st.lists(st.sampled_from(unplaced), unique=True, min_size=1,
                                   max_size=4)):
                unplaced.remove(c)
                _place(draw, nodes, i, c)
        unplaced.append(i)
    root = len(nodes)
    kind = draw(st.sampled_from(["cont", "cont", "iocont"]))
    nodes.append(_flags(draw, Node(kind, draw(st.sampled_from([SPAN, SPAN, 200, MAX_SIZE]))),
                        always_enabled=True))
    for c in unplaced:
        if draw(_MOSTLY_TRUE):
            _place(draw, nodes, root, c)
    return nodes


def build(nodes: list[Node]) -> list[MemoryRegion]:
    """Create the model regions for ``nodes`` (same indices)."""
    regions: list[MemoryRegion] = []
    for i, n in enumerate(nodes):
        name = f"n{i}"
        if n.kind == "ram":
            mr = MemoryRegion.init_ram(name, n.size, hostmem=_BACKING)
        elif n.kind == "rom":
            mr = MemoryRegion.init_rom(name, n.size, hostmem=_BACKING)
        elif n.kind == "io":
            mr = MemoryRegion.init_io(name, n.size, MemoryRegionOps())
        elif n.kind == "cont":
            mr = MemoryRegion.init_container(name, n.size)
        elif n.kind == "iocont":
            mr = MemoryRegion.init_io(name, n.size, MemoryRegionOps())
        else:
            mr = MemoryRegion.init_alias(name, regions[n.target], n.alias_offset, n.size)
        for c, addr, prio in n.children:
            mr.add_subregion_overlap(addr, regions[c], prio)
        if n.readonly:
            mr.set_readonly(True)
        if n.nonvolatile:
            mr.set_nonvolatile(True)
        regions.append(mr)
    for mr, n in zip(regions, nodes):
        if not n.enabled:
            mr.set_enabled(False)
    return regions


# -- the naive reference ------------------------------------------------------------


def naive_claim(nodes: list[Node], idx: int, base: int, lo: int, hi: int, a: int,
                ro: bool, nv: bool) -> tuple[int, int, bool, bool] | None:
    """Which terminal region claims address ``a`` below node ``idx``, per QEMU's walk."""
    n = nodes[idx]
    if not n.enabled:
        return None
    base += n.addr
    ro = ro or n.readonly
    nv = nv or n.nonvolatile
    lo = max(lo, base)
    hi = min(hi, base + n.size)
    if not lo <= a < hi:
        return None
    if n.kind == "alias":
        t = nodes[n.target]
        return naive_claim(nodes, n.target, base - t.addr - n.alias_offset, lo, hi, a, ro, nv)
    # Priority high to low; among equals the one added last first.
    order = sorted(range(len(n.children)), key=lambda k: (-n.children[k][2], -k))
    for k in order:
        got = naive_claim(nodes, n.children[k][0], base, lo, hi, a, ro, nv)
        if got is not None:
            return got
    if n.kind in TERMINAL or n.kind == "iocont":
        return (idx, a - base, ro, nv)
    return None


def naive_root(nodes: list[Node], idx: int | None) -> int | None:
    """QEMU's memory_region_get_flatview_root on the plain data."""
    while idx is not None and nodes[idx].enabled:
        n = nodes[idx]
        if n.kind == "alias":
            if n.alias_offset == 0 and n.size >= nodes[n.target].size:
                idx = n.target
                continue
        elif n.kind == "cont":
            live = [(c, addr) for c, addr, _ in n.children if nodes[c].enabled]
            if not live:
                return None
            if len(live) == 1 and live[0][1] == 0 and n.size >= nodes[live[0][0]].size:
                idx = live[0][0]
                continue
        return idx
    return None


def naive_ranges(nodes: list[Node], root: int | None) -> list[tuple]:
    """Maximal runs of mergeable bytes: (start, end, idx, offset, ro, nv)."""
    if root is None:
        return []
    runs: list[list] = []
    for a in range(CHECK_END):
        got = naive_claim(nodes, root, 0, 0, 1 << 64, a, False, False)
        if got is None:
            continue
        idx, off, ro, nv = got
        last = runs[-1] if runs else None
        if (last is not None and last[1] == a and last[2] == idx and last[3] + (a - last[0]) == off
                and last[4] == ro and last[5] == nv):
            last[1] = a + 1
        else:
            runs.append([a, a + 1, idx, off, ro, nv])
    return [tuple(r) for r in runs]


def model_ranges(view: FlatView, regions: list[MemoryRegion]) -> list[tuple]:
    index = {id(mr): i for i, mr in enumerate(regions)}
    return [(fr.start, fr.end, index[id(fr.mr)], fr.offset_in_region, fr.readonly,
             fr.nonvolatile) for fr in view.ranges]


def check_view_invariants(view: FlatView) -> None:
    view._check_invariants()
    ranges = view.ranges
    for p, r in zip(ranges, ranges[1:]):
        assert p.end <= r.start
        mergeable = (p.end == r.start and p.mr is r.mr
                     and p.offset_in_region + p.size == r.offset_in_region
                     and p.readonly == r.readonly and p.nonvolatile == r.nonvolatile
                     and p.romd_mode == r.romd_mode)
        assert not mergeable, f"{p!r} and {r!r} should have been merged (R6)"


@st.composite
def trees(draw) -> list[Node]:
    return draw_tree(draw)


@PROFILE
@given(trees())
def test_render_matches_naive_reference(nodes: list[Node]) -> None:
    regions = build(nodes)
    root = len(nodes) - 1
    view = render_flatview(regions[root])
    check_view_invariants(view)
    assert model_ranges(view, regions) == naive_ranges(nodes, root)
    assert all(fr.end <= CHECK_END for fr in view.ranges)


@PROFILE
@given(trees(), st.data())
def test_address_space_view_matches_naive_reference(nodes: list[Node], data) -> None:
    regions = build(nodes)
    sysmem = MemorySystem("prop")
    # The tree's root, and any other node as the root of a second address space.
    roots = [len(nodes) - 1, data.draw(st.integers(0, len(nodes) - 1))]
    spaces = [AddressSpace(regions[r], f"as{r}", system=sysmem) for r in roots]
    for root, as_ in zip(roots, spaces):
        fv_root = naive_root(nodes, root)
        assert flatview_root(regions[root]) is (None if fv_root is None else regions[fv_root])
        check_view_invariants(as_.flatview)
        assert model_ranges(as_.flatview, regions) == naive_ranges(nodes, fv_root)
        # Lookups agree with the ranges at every address.
        for a in range(0, CHECK_END, 7):
            fr = as_.flatview.lookup(a)
            hit = [r for r in as_.flatview.ranges if r.start <= a < r.end]
            assert (fr is None and not hit) or [fr] == hit
    # Views are shared exactly when the flat-view roots are the same region.
    same_root = naive_root(nodes, roots[0]) == naive_root(nodes, roots[1])
    assert (spaces[0].flatview is spaces[1].flatview) == same_root


# -- mutations, transactions and listener shadow maps --------------------------------


class Shadow(MemoryListener):
    """Keeps a dict of what it was told and checks the commit protocol as it goes."""

    def __init__(self) -> None:
        self.map: dict[int, tuple] = {}
        self.phase = "idle"
        self.last_addr = -1

    @staticmethod
    def _key(section) -> tuple:
        return (section.offset_within_address_space + section.size, id(section.mr),
                section.offset_within_region, section.readonly, section.nonvolatile)

    def begin(self) -> None:
        assert self.phase == "idle"
        self.phase = "del"
        self.last_addr = -1

    def commit(self) -> None:
        assert self.phase != "idle"
        self.phase = "idle"

    def region_del(self, section) -> None:
        assert self.phase == "del", "region_del after region_add/nop in one commit"
        start = section.offset_within_address_space
        assert start > self.last_addr
        self.last_addr = start
        assert self.map.pop(start) == self._key(section)

    def _enter_add_phase(self, start: int) -> None:
        if self.phase == "del":
            self.phase = "add"
            self.last_addr = -1
        assert self.phase == "add"
        assert start > self.last_addr
        self.last_addr = start

    def region_add(self, section) -> None:
        start = section.offset_within_address_space
        self._enter_add_phase(start)
        assert start not in self.map
        end = start + section.size
        for s, value in self.map.items():
            assert value[0] <= start or end <= s, "region_add overlaps a live range"
        self.map[start] = self._key(section)

    def region_nop(self, section) -> None:
        start = section.offset_within_address_space
        self._enter_add_phase(start)
        assert self.map[start] == self._key(section)


def shadow_of(view: FlatView) -> dict[int, tuple]:
    return {fr.start: (fr.end, id(fr.mr), fr.offset_in_region, fr.readonly, fr.nonvolatile)
            for fr in view.ranges}


def structure(regions: list[MemoryRegion]) -> list[tuple]:
    return [(mr.container, mr.addr, mr.priority, mr.size, mr.enabled, mr.readonly,
             mr.nonvolatile, mr.alias_offset, mr.subregions) for mr in regions]


def draw_op(data, nodes: list[Node], regions: list[MemoryRegion]) -> tuple:
    i = data.draw(st.integers(0, len(regions) - 1))
    mr = regions[i]
    what = data.draw(st.sampled_from(
        ["enable", "readonly", "nonvolatile", "size", "move", "del", "add", "add", "alias"]))
    if what == "enable":
        return ("enable", i, data.draw(st.booleans()))
    if what in ("readonly", "nonvolatile"):
        return (what, i, data.draw(st.booleans()))
    if what == "size":
        low = 1 if nodes[i].kind in ("ram", "rom") else 0
        return ("size", i, data.draw(st.integers(low, MAX_SIZE)))
    if what == "move" and mr.container is not None:
        return ("move", i, data.draw(st.integers(0, SPAN - 1)))
    if what == "del" and mr.container is not None:
        return ("del", i)
    if what == "alias" and mr.is_alias:
        return ("alias", i, data.draw(st.integers(0, MAX_SIZE)))
    parent = data.draw(st.integers(0, len(regions) - 1))
    return ("add", parent, i, data.draw(st.integers(0, SPAN - 1)), data.draw(PRIORITIES))


def apply_op(op: tuple, regions: list[MemoryRegion]) -> bool:
    """Apply ``op``; return whether QEMU would mark the topology pending (5.1)."""
    kind = op[0]
    mr = regions[op[1]]
    in_system = mr.system is not None
    if kind == "enable":
        pending = in_system and op[2] != mr.enabled
        mr.set_enabled(op[2])
    elif kind == "readonly":
        pending = in_system and op[2] != mr.readonly and mr.enabled
        mr.set_readonly(op[2])
    elif kind == "nonvolatile":
        pending = in_system and op[2] != mr.nonvolatile and mr.enabled
        mr.set_nonvolatile(op[2])
    elif kind == "size":
        pending = in_system and op[2] != mr.size
        mr.set_size(op[2])
    elif kind == "move":  # delete + add when it has a container
        c = mr.container
        pending = (c is not None and c.system is not None and op[2] != mr.addr
                   and c.enabled and mr.enabled)
        mr.set_address(op[2])
    elif kind == "del":
        c = mr.container
        if c is None:  # drawn earlier; an op before may have removed it
            return False
        pending = c.system is not None and c.enabled and mr.enabled
        c.del_subregion(mr)
    elif kind == "alias":
        pending = in_system and op[2] != mr.alias_offset and mr.enabled
        mr.set_alias_offset(op[2])
    else:
        parent, child = mr, regions[op[2]]
        before = structure(regions)
        try:
            parent.add_subregion_overlap(op[3], child, op[4])
        except (RegionCycleError, RegionInUseError):
            # Refused: nothing changed, not even inside a transaction.
            assert structure(regions) == before
            return False
        pending = parent.system is not None and parent.enabled and child.enabled
    return pending


@PROFILE
@given(trees(), st.data())
def test_listener_shadow_maps_follow_random_mutations(nodes: list[Node], data) -> None:
    regions = build(nodes)
    sysmem = MemorySystem("prop")
    root = regions[-1]
    spaces = [AddressSpace(root, "root", system=sysmem)]
    other = data.draw(st.integers(0, len(regions) - 1))
    spaces.append(AddressSpace(regions[other], "other", system=sysmem))
    spaces.append(AddressSpace(root, "root-again", system=sysmem))
    shadows = []
    for as_ in spaces:
        shadow = Shadow()
        as_.register_listener(shadow)
        shadows.append(shadow)
        assert shadow.map == shadow_of(as_.flatview)

    for _ in range(data.draw(st.integers(1, 6))):
        ops = [draw_op(data, nodes, regions) for _ in range(data.draw(st.integers(1, 5)))]
        mode = data.draw(st.sampled_from(["plain", "transaction", "nested"]))
        renders = sysmem.renders
        views = [as_.flatview for as_ in spaces]
        if mode == "plain":
            for op in ops:
                renders_before_op = sysmem.renders
                pending = apply_op(op, regions)
                # Each op commits alone: it renders (once per distinct flat-view
                # root) exactly when QEMU's pending rules say so.
                assert (sysmem.renders > renders_before_op) == pending, op
            rendered_last = pending
        else:
            pending = False
            with sysmem.transaction():
                for k, op in enumerate(ops):
                    if mode == "nested" and k % 2:
                        with sysmem.transaction():
                            pending |= apply_op(op, regions)
                    else:
                        pending |= apply_op(op, regions)
                    assert [as_.flatview for as_ in spaces] == views  # nothing renders yet
            # One commit: one render per distinct flat-view root, or none.
            roots = {id(flatview_root(as_.root)) for as_ in spaces}
            assert sysmem.renders - renders == (len(roots) if pending else 0), ops
            rendered_last = pending
        assert not sysmem.in_transaction
        if sysmem.renders == renders:
            # Nothing pending (QEMU 5.1): views untouched.
            assert [as_.flatview for as_ in spaces] == views
        for as_, shadow in zip(spaces, shadows):
            assert shadow.phase == "idle"
            assert shadow.map == shadow_of(as_.flatview)
            check_view_invariants(as_.flatview)
            if rendered_last:
                # Rendered after the last change: the view is the tree's. (Without a
                # render it may lag, as in QEMU: e.g. moving a view's root inside a
                # disabled container sets nothing pending.)
                fresh = render_flatview(flatview_root(as_.root))
                assert shadow_of(fresh) == shadow_of(as_.flatview), "stale flat view"
        assert spaces[0].flatview is spaces[2].flatview
        for mr in regions:
            mr._check_invariants()

    for as_, shadow in zip(spaces, shadows):
        as_.unregister_listener(shadow)
        assert shadow.map == {}


@pytest.fixture(scope="module", autouse=True)
def _close_backing():
    yield
    # Regions keep views of the backing alive; closing tolerates that.
    _BACKING.close()
