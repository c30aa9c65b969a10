"""Our memory model against real QEMU 7.2: every capture in ``shared/oracle/mtree``.

For each capture label L, ``L.tree-Do.txt`` (``info mtree -o -D``) is parsed
with the hints of ``L.flat-o.txt`` into a memexpose model. Then:

* our flat views must equal QEMU's ``L.flat.txt`` and, with owners,
  ``L.flat-o.txt``;
* our tree must equal ``L.tree-Do.txt`` (``-o -D``), ``L.tree.txt`` (no flags)
  and ``L.tree-D.txt`` (``-D``).

Blocks are compared as multisets (QEMU prints them in hash order); a
mismatch shows a unified diff of the differing blocks.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from memexpose.memory import format_mtree
from memexpose.qemu import diff_mtree, parse_mtree

ORACLE = Path("oracle") / "mtree"
# Labels are listed at collection time from the same folder the shared_dir
# fixture returns; test_every_capture_is_checked guards against drift.
_DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LABELS = sorted(p.name.removesuffix(".tree-Do.txt")
                for p in (_DEFAULT_SHARED / ORACLE).glob("*.tree-Do.txt"))

# QEMU file suffix -> the flags our printer needs (owner) or (owner, disabled).
FLAT_CASES = {"flat": False, "flat-o": True}
TREE_CASES = {"tree-Do": (True, True), "tree": (False, False), "tree-D": (False, True)}


@cache
def _ours(folder: Path, label: str) -> dict[str, str]:
    """Everything our model prints for one capture (parsed once per label)."""
    tree = (folder / f"{label}.tree-Do.txt").read_text()
    hints = (folder / f"{label}.flat-o.txt").read_text()
    with parse_mtree(tree, hints) as parsed:
        out = {name: parsed.format_flat(owner=owner) for name, owner in FLAT_CASES.items()}
        for name, (owner, disabled) in TREE_CASES.items():
            out[name] = format_mtree(parsed.system, owner=owner, disabled=disabled)
        out["notes"] = "\n".join(parsed.notes)
        out["mismatch"] = str(parsed.flat_mismatch)
    return out


def test_every_capture_is_checked(shared_dir: Path) -> None:
    found = sorted(p.name.removesuffix(".tree-Do.txt")
                   for p in (shared_dir / ORACLE).glob("*.tree-Do.txt"))
    assert found, f"no captures in {shared_dir / ORACLE}"
    assert found == LABELS, "captures changed since collection"
    for label in found:
        for suffix in ("tree-Do", "tree-D", "tree", "flat", "flat-o"):
            assert (shared_dir / ORACLE / f"{label}.{suffix}.txt").is_file(), (label, suffix)


@pytest.mark.parametrize("case", list(FLAT_CASES))
@pytest.mark.parametrize("label", LABELS)
def test_flat_view_matches_qemu(shared_dir: Path, label: str, case: str) -> None:
    folder = shared_dir / ORACLE
    ours = _ours(folder, label)
    diff = diff_mtree(ours[case], (folder / f"{label}.{case}.txt").read_text(),
                      ours_label=f"memexpose ({label})", theirs_label=f"{label}.{case}.txt")
    assert not diff, f"inferred: {ours['notes'] or 'nothing'}\n{diff}"
    assert ours["mismatch"] == "0"


@pytest.mark.parametrize("case", list(TREE_CASES))
@pytest.mark.parametrize("label", LABELS)
def test_tree_matches_qemu(shared_dir: Path, label: str, case: str) -> None:
    folder = shared_dir / ORACLE
    ours = _ours(folder, label)
    diff = diff_mtree(ours[case], (folder / f"{label}.{case}.txt").read_text(),
                      ours_label=f"memexpose ({label})", theirs_label=f"{label}.{case}.txt")
    assert not diff, diff


def test_readonly_inference_finds_only_pam_rom(shared_dir: Path) -> None:
    """H3 on the booted PC: the read-only aliases are the enabled pam-rom ones."""
    folder = shared_dir / ORACLE
    if not (folder / "pc-devices-booted.tree-Do.txt").is_file():
        pytest.skip("pc-devices-booted capture absent")
    notes = _ours(folder, "pc-devices-booted")["notes"].splitlines()
    assert notes, "the booted PC needs read-only aliases"
    assert all(n.startswith("H3 read-only: ram alias pam-rom ") for n in notes), notes
