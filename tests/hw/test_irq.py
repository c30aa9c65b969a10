"""IrqLine and SharedIrqLine: levels, listeners, OR-ed sharing."""

from __future__ import annotations

import pytest

from memexpose.errors import HwModelError
from memexpose.hw import IrqLine, SharedIrqLine


def test_listeners_see_changes_only() -> None:
    line = IrqLine("l")
    seen: list[bool] = []
    line.add_listener(seen.append)
    line.set_level(1)
    line.set_level(True)
    line.raise_irq()
    line.lower_irq()
    line.lower_irq()
    assert seen == [True, False]
    assert line.raises == 1
    line.pulse()
    assert seen == [True, False, True, False]
    assert line.statistics() == {"level": False, "raises": 2, "listeners": 1}


def test_remove_listener() -> None:
    line = IrqLine("l")
    seen: list[bool] = []
    line.add_listener(seen.append)
    line.remove_listener(seen.append)
    line.raise_irq()
    assert seen == []
    with pytest.raises(HwModelError, match="not registered"):
        line.remove_listener(seen.append)
    with pytest.raises(TypeError):
        line.add_listener(42)  # type: ignore[arg-type]


def test_connect_forwards_current_and_future_levels() -> None:
    src, sink = IrqLine("src"), IrqLine("sink")
    src.raise_irq()
    src.connect(sink)
    assert sink.level
    src.lower_irq()
    assert not sink.level
    with pytest.raises(HwModelError):
        src.connect(src)


def test_shared_line_is_or_of_inputs() -> None:
    shared = SharedIrqLine("gsi")
    a, b = shared.new_input("a"), shared.new_input()
    edges: list[bool] = []
    shared.add_listener(edges.append)
    a.raise_irq()
    b.raise_irq()
    assert shared.level and shared.asserted == 2
    a.lower_irq()
    assert shared.level
    b.lower_irq()
    assert not shared.level
    assert edges == [True, False]
    assert [i.name for i in shared.inputs] == ["a", "gsi[1]"]
    shared._check_invariants()
    with pytest.raises(HwModelError, match="OR of its inputs"):
        shared.set_level(1)
    assert "low" in repr(shared)
